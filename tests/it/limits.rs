//! SwarmKit's size limits through the real binaries: a write whose raft entry passes 1.5 MiB is
//! refused with SwarmKit's message, a large service that fits is stored and its tasks are listed
//! by our swarmctl however large the answer, and a request over 4 MiB answers RESOURCE_EXHAUSTED
//! on both listeners. With `SWARMKIT_REF_BIN`, SwarmKit's build answers the same.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Swarmd, ctl_with, tls_material, wait_for};
use crate::interop::swarmkit_bin;

const WAIT: Duration = Duration::from_secs(60);

/// SwarmKit's refusal of a raft entry over its transaction limit.
const TOO_LARGE: &str = "raft: raft message is too large and can't be sent";

/// `service create` arguments for service `name` carrying `envs` variables of 100 kB each.
fn big_service_args(name: &str, envs: usize, replicas: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "service",
        "create",
        "--name",
        name,
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        "-c,sleep 120 # swarmkit-it-limits",
        "--replicas",
        replicas,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(large_env(envs));
    args
}

/// `--env E<i>=<100 kB>` arguments for `count` variables: the way to a large task.
pub(crate) fn large_env(count: usize) -> Vec<String> {
    let value = "x".repeat(100_000);
    (0..count)
        .flat_map(|i| ["--env".to_string(), format!("E{i}={value}")])
        .collect()
}

fn run(swarmctl: &Path, d: &Swarmd, args: &[String]) -> crate::harness::Ctl {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctl_with(swarmctl, &d.socket(), &args, None)
}

/// A 1.6 MB service spec is refused with SwarmKit's message by `swarmctl` (ours or SwarmKit's, on
/// `d`), exit non-zero, and nothing is stored.
fn assert_huge_service_refused(swarmctl: &Path, d: &Swarmd) {
    let out = run(swarmctl, d, &big_service_args("huge", 16, "1"));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(TOO_LARGE), "{}", out.stderr);
    let ls = ctl_with(swarmctl, &d.socket(), &["service", "ls"], None);
    assert_eq!(ls.code, 0, "{ls:?}");
    assert!(
        !ls.stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("huge")),
        "nothing stored: {}",
        ls.stdout
    );
}

#[test]
fn a_service_over_the_transaction_limit_is_refused_with_swarmkits_message() {
    let d = Swarmd::start_with(&["--executor", "process"]);
    assert_huge_service_refused(Path::new(crate::harness::SWARMCTL), &d);
    // Ours prints the description alone, as for every gRPC error.
    let out = d.ctl(
        &big_service_args("huge", 16, "1")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.err().trim(), format!("Error: {TOO_LARGE}"));
    // Just under the limit is stored.
    let args = big_service_args("fits", 15, "0");
    d.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();

    let Some(bin) = swarmkit_bin() else {
        return;
    };
    let theirs = Swarmd::start_swarmkit(&bin, &[]);
    // SwarmKit's swarmctl prints the description alone too; the code travels as Unknown (a
    // plain error out of raft's proposal) from both.
    let out = run(
        &bin.join("swarmctl"),
        &theirs,
        &big_service_args("huge", 16, "1"),
    );
    assert_eq!(out.err().trim(), format!("Error: {TOO_LARGE}"));
    assert_huge_service_refused(Path::new(crate::harness::SWARMCTL), &theirs);
    assert_huge_service_refused(&bin.join("swarmctl"), &d);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for socket in [d.socket(), theirs.socket()] {
        let status = rt.block_on(huge_create(&socket));
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unknown, TOO_LARGE),
            "{}",
            socket.display()
        );
    }
}

/// CreateService of a 1.6 MB spec on the control socket `socket`: the status it answers.
async fn huge_create(socket: &Path) -> tonic::Status {
    let container = api::ContainerSpec {
        image: "busybox".into(),
        env: (0..16)
            .map(|i| format!("E{i}={}", "x".repeat(100_000)))
            .collect(),
        ..Default::default()
    };
    let spec = api::ServiceSpec {
        annotations: Some(api::Annotations {
            name: "huge-api".into(),
            ..Default::default()
        }),
        task: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
            ..Default::default()
        }),
        mode: Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas: 1 },
        )),
        ..Default::default()
    };
    refused_create(ca::control_channel(socket).expect("channel"), spec).await
}

/// CreateService of `spec` on `channel`, which must fail: the status it answers.
async fn refused_create(
    channel: tonic::transport::Channel,
    spec: api::ServiceSpec,
) -> tonic::Status {
    tokio::time::timeout(
        Duration::from_secs(20),
        api::control_client::ControlClient::new(channel)
            .create_service(api::CreateServiceRequest { spec: Some(spec) }),
    )
    .await
    .expect("answer in time")
    .expect_err("a refused request")
}

#[test]
fn a_large_service_with_replicas_is_listed_by_swarmctl() {
    let d = Swarmd::start_with(&["--executor", "process"]);
    // 1.4 MB: under the limit alone, 5.6 MB for its four tasks together.
    let args = big_service_args("big", 14, "4");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ctl(&args).ok();
    let rows = wait_for("four tasks listed", WAIT, || {
        let out = d.ctl(&["task", "ls", "-q"]);
        let ids: Vec<String> = out.ok().lines().map(str::to_string).collect();
        (ids.len() == 4).then_some(ids)
    });
    assert_eq!(rows.len(), 4);
    let ls = d.ctl(&["service", "ls"]);
    assert!(ls.ok().contains("big"), "{ls:?}");
    // Every task reaches its node and runs (the whole set is one 5.6 MB assignment).
    wait_for("four tasks running", WAIT, || {
        let out = d.ctl(&["task", "ls"]);
        let running = out.ok().lines().filter(|l| l.contains("RUNNING")).count();
        (running == 4).then_some(())
    });

    // SwarmKit's swarmctl reads at most 4 MiB, as against SwarmKit's own swarmd.
    if let Some(bin) = swarmkit_bin() {
        let out = ctl_with(&bin.join("swarmctl"), &d.socket(), &["task", "ls"], None);
        assert!(
            out.stderr
                .starts_with("Error: grpc: received message larger than max ("),
            "{out:?}"
        );
    }
}

/// A 5 MiB CreateService on `channel`: the status it answers.
async fn oversized_create(channel: tonic::transport::Channel) -> tonic::Status {
    let spec = api::ServiceSpec {
        annotations: Some(api::Annotations {
            name: "oversized".into(),
            labels: [("big".to_string(), "x".repeat(5 << 20))].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    refused_create(channel, spec).await
}

fn assert_resource_exhausted(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("grpc: received message larger than max (")
            && status.message().ends_with(" vs. 4194304)"),
        "{}",
        status.message()
    );
}

#[test]
fn an_oversized_request_answers_resource_exhausted_on_both_listeners() {
    let d = Swarmd::start_with(&["--executor", "process"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let local = rt.block_on(async {
        oversized_create(ca::control_channel(&d.socket()).expect("channel")).await
    });
    assert_resource_exhausted(&local);

    let material = tls_material(&d.state_dir());
    let remote = rt.block_on(async {
        let cfg = ca::mtls_client_config(
            &material.root_pem,
            Some((&material.cert_pem, &material.key_pem)),
        )
        .expect("client config");
        let channel = ca::tls_channel(&d.remote_addr(), cfg, "swarm-manager").expect("channel");
        oversized_create(channel).await
    });
    assert_resource_exhausted(&remote);
    // Nothing was stored, and the manager still answers.
    assert_eq!(d.ctl(&["service", "ls", "-q"]).ok().trim(), "");

    let Some(bin) = swarmkit_bin() else {
        return;
    };
    let theirs = Swarmd::start_swarmkit(&bin, &[]);
    let status = rt.block_on(async {
        oversized_create(ca::control_channel(&theirs.socket()).expect("channel")).await
    });
    assert_resource_exhausted(&status);
}
