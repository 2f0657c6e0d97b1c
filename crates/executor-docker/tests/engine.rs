//! The Docker executor against the real engine: the agent's conformance suite, a missing image,
//! adoption by a second executor (as after a swarmd restart), secrets and configs bind-mounted
//! from a tmpfs, and no container left behind.
//!
//! The engine is `DOCKER_HOST` when it names a unix socket or tcp address, otherwise
//! `unix:///var/run/docker.sock`. Without an engine each test prints `skipped: no Docker engine
//! at ...` and passes; `.ci/run` makes a missing engine a failure before the tests run. The image
//! is `swarmkit-test/busybox:latest`, built by `scripts/test-image.sh` (nothing can be pulled).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::conformance::{self, TaskFactory, dependencies, target, with_files};
use agent::{DependencyGetter, Executor, ExecutorError, RuntimeState, TaskFiles};
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use executor_docker::{DockerExecutor, SERVICE_NAME_LABEL};
use tokio_stream::StreamExt;

const IMAGE: &str = "swarmkit-test/busybox:latest";

fn engine_addr() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") || h.starts_with("tcp://") => h,
        _ => "unix:///var/run/docker.sock".to_string(),
    }
}

/// A client of the test engine.
async fn engine() -> bollard::Docker {
    bollard::Docker::connect_with_host(&engine_addr())
        .expect("engine address")
        .negotiate_version()
        .await
        .expect("engine answers")
}

/// Task files for tests whose tasks have none: on disk, under cargo's scratch directory.
fn no_files() -> Arc<TaskFiles> {
    let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("executor-docker-engine");
    let none = Path::new("/nonexistent");
    Arc::new(TaskFiles::open_with(&state, none, none).expect("task files"))
}

/// The executor, or `None` (after saying so) when no engine answers.
async fn executor() -> Option<DockerExecutor> {
    executor_with(no_files()).await
}

/// The executor writing task files to `files`, or `None` when no engine answers.
async fn executor_with(files: Arc<TaskFiles>) -> Option<DockerExecutor> {
    let addr = engine_addr();
    let answers = match DockerExecutor::connect(&addr, files, None) {
        Ok(ex) => match tokio::time::timeout(Duration::from_secs(10), ex.describe()).await {
            Ok(Ok(_)) => Some(ex),
            _ => None,
        },
        Err(_) => None,
    };
    if answers.is_none() {
        println!("skipped: no Docker engine at {addr}");
    }
    answers
}

/// Builds the test image (the script does nothing when it exists).
fn ensure_test_image() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("running scripts/test-image.sh");
    assert!(
        out.status.success(),
        "scripts/test-image.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service name no other test (or earlier run) uses, so that its containers can be listed.
fn unique_service(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A task of `service` running `image` with `/bin/sh -c script`.
fn task(
    service: &str,
    id: &str,
    image: &str,
    script: &str,
    env: &[&str],
    grace: Duration,
) -> api::Task {
    api::Task {
        id: id.to_string(),
        service_id: format!("{service}-id"),
        node_id: "node-1".into(),
        slot: 1,
        service_annotations: Some(api::Annotations {
            name: service.to_string(),
            ..Default::default()
        }),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    image: image.to_string(),
                    command: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
                    env: env.iter().map(|e| e.to_string()).collect(),
                    stop_grace_period: Some(prost_types::Duration {
                        seconds: i64::try_from(grace.as_secs()).expect("small grace"),
                        nanos: i32::try_from(grace.subsec_nanos()).expect("below a second"),
                    }),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Busybox {
    service: String,
}

impl TaskFactory for Busybox {
    fn task(&self, name: &str, script: &str, env: &[&str], grace: Duration) -> api::Task {
        task(&self.service, name, IMAGE, script, env, grace)
    }
}

/// Fails if any container labelled with `service` still exists, running or not.
async fn assert_nothing_left(service: &str) {
    let docker = engine().await;
    let filters = HashMap::from([("label", vec![format!("{SERVICE_NAME_LABEL}={service}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let left = docker
        .list_containers(Some(options))
        .await
        .expect("listing containers");
    let names: Vec<_> = left.iter().map(|c| c.names.clone()).collect();
    assert!(left.is_empty(), "containers left behind: {names:?}");
}

#[tokio::test]
async fn conformance_suite_passes_and_leaves_no_container() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("conformance");
    conformance::run_all(
        &executor,
        &Busybox {
            service: service.clone(),
        },
    )
    .await;
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn a_missing_image_that_cannot_be_pulled_is_fatal_quickly() {
    let Some(executor) = executor().await else {
        return;
    };
    let service = unique_service("missing");
    let t = task(
        &service,
        "missing-image",
        "swarmkit-test/no-such-image:never",
        "true",
        &[],
        Duration::from_secs(1),
    );
    let c = executor
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), c.prepare())
        .await
        .expect("prepare gave up within a minute")
        .expect_err("prepare must fail");
    println!("prepare failed after {:?}: {err}", started.elapsed());
    let ExecutorError::Fatal(message) = err else {
        panic!("a missing image is fatal, got {err:?}");
    };
    // The engine's own words: a registry it cannot reach, or one that lacks the repository.
    assert!(
        [
            "registry",
            "pull access denied",
            "no-such-image",
            "not found"
        ]
        .iter()
        .any(|w| message.contains(w)),
        "not the engine's pull error: {message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(c.inspect().await, Ok(RuntimeState::Absent));
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn a_new_executor_adopts_a_running_container_by_name() {
    let Some(first) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("adopt");
    let t = task(
        &service,
        "adopted",
        IMAGE,
        "trap 'exit 0' TERM; sleep 60 & wait",
        &[],
        Duration::from_secs(5),
    );
    let c = first
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    drop((c, first));

    // A second connection with no checkpoint, as a restarted swarmd would make.
    let second = DockerExecutor::connect(&engine_addr(), no_files(), Some("renamed".into()))
        .expect("connect");
    assert_eq!(
        second.describe().await.expect("describe").hostname,
        "renamed"
    );
    let c = second
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Running));
    c.prepare().await.expect("prepare of an existing container");
    c.start().await.expect("start of a running container");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Running));
    c.shutdown().await.expect("shutdown");
    let exit = c.wait().await.expect("wait");
    assert!(exit.success(), "the trap exits 0: {exit:?}");
    c.remove().await.expect("remove");
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn start_waits_for_the_healthcheck() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("health");
    let with_check = |id: &str, check: &str| {
        let mut t = task(&service, id, IMAGE, "sleep 60", &[], Duration::from_secs(1));
        if let Some(api::task_spec::Runtime::Container(c)) =
            t.spec.as_mut().and_then(|s| s.runtime.as_mut())
        {
            c.healthcheck = Some(api::HealthConfig {
                test: vec!["CMD-SHELL".into(), check.into()],
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                retries: 1,
                ..Default::default()
            });
        }
        t
    };

    let healthy = executor
        .controller(
            &with_check("healthy", "true"),
            None,
            DependencyGetter::none(),
        )
        .expect("controller");
    healthy.prepare().await.expect("prepare");
    tokio::time::timeout(Duration::from_secs(30), healthy.start())
        .await
        .expect("healthy within 30s")
        .expect("start");
    assert_eq!(healthy.inspect().await, Ok(RuntimeState::Running));
    healthy.terminate().await.expect("terminate");
    healthy.remove().await.expect("remove");

    let sick = executor
        .controller(&with_check("sick", "false"), None, DependencyGetter::none())
        .expect("controller");
    sick.prepare().await.expect("prepare");
    let err = tokio::time::timeout(Duration::from_secs(30), sick.start())
        .await
        .expect("unhealthy within 30s")
        .expect_err("an unhealthy container fails its start");
    assert_eq!(
        err,
        ExecutorError::Fatal("dockerexec: unhealthy container".into())
    );
    assert!(
        matches!(sick.inspect().await, Ok(RuntimeState::Exited(_))),
        "an unhealthy container is stopped"
    );
    sick.remove().await.expect("remove");
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn a_created_container_that_never_started_shuts_down_and_is_removed() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("created");
    let t = task(
        &service,
        "never-started",
        IMAGE,
        "sleep 60",
        &[],
        Duration::from_secs(5),
    );
    let c = executor
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    c.prepare().await.expect("prepare");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Created));
    c.shutdown().await.expect("shutdown of a created container");
    c.terminate()
        .await
        .expect("terminate of a created container");
    c.remove().await.expect("remove");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Absent));
    assert!(
        matches!(c.start().await, Err(ExecutorError::Fatal(m)) if m.starts_with("No such container")),
        "start without a container"
    );
    assert_nothing_left(&service).await;
}

/// What the container `name` wrote to its stdout.
async fn output(name: &str) -> String {
    let docker = engine().await;
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut logs = docker.logs(name, Some(options));
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&chunk.expect("logs").to_string());
    }
    text
}

/// Removes the node's base directory (on a tmpfs, outside the test's state directory).
struct Cleanup(Arc<TaskFiles>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.base());
    }
}

#[tokio::test]
async fn secrets_and_configs_are_read_only_files_with_their_owner_and_mode() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = Arc::new(TaskFiles::open(state.path()).expect("task files"));
    let _cleanup = Cleanup(files.clone());
    if let Some(why) = files.not_tmpfs() {
        println!("skipped: no tmpfs for secrets on this host ({why})");
        return;
    }
    let Some(executor) = executor_with(files.clone()).await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("secrets");
    // Relative secret under /run/secrets, relative config under /; the mount is read-only.
    let script = "ls -ln /run/secrets/db_pass /app.conf; cat /run/secrets/db_pass; echo; \
                  cat /app.conf; echo; echo x 2>/dev/null > /run/secrets/db_pass || echo read-only";
    let t = with_files(
        task(
            &service,
            "reader",
            IMAGE,
            script,
            &[],
            Duration::from_secs(1),
        ),
        target("db_pass", "65534", "65534", 0o440),
        target("app.conf", "", "", 0o444),
    );
    let all = dependencies();
    let c = executor
        .controller(&t, None, all.restrict(&t))
        .expect("controller");
    c.prepare().await.expect("prepare");
    // The files go as with the tmpfs at a reboot between prepare and start: start writes them
    // again for the container it finds created.
    let root = files.base().join("reader");
    std::fs::remove_dir_all(&root).expect("drop the files");
    c.start().await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(30), c.wait())
        .await
        .expect("ends in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let text = output(&executor_docker::container_name(&t)).await;
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    // `ls -ln`: mode, links, uid, gid, size, date (3 fields), path; sorted by path.
    assert_eq!(
        (lines[0][0], lines[0][2], lines[0][3], lines[0][8]),
        ("-r--r--r--", "0", "0", "/app.conf"),
        "{text}"
    );
    assert_eq!(
        (lines[1][0], lines[1][2], lines[1][3], lines[1][8]),
        ("-r--r-----", "65534", "65534", "/run/secrets/db_pass"),
        "{text}"
    );
    assert_eq!(
        &lines[2..],
        [["s3cr3t-pass"], ["level=debug"], ["read-only"]]
    );
    assert!(root.join("run/secrets/db_pass").exists());
    c.remove().await.expect("remove");
    assert!(!root.exists(), "the task's files outlived its container");
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn without_a_tmpfs_a_task_with_secrets_fails_and_writes_nothing() {
    let Some(executor) = executor().await else {
        return;
    };
    let service = unique_service("no-tmpfs");
    let t = with_files(
        task(&service, "disk", IMAGE, "true", &[], Duration::from_secs(1)),
        target("db_pass", "", "", 0o400),
        target("app.conf", "", "", 0o444),
    );
    let all = dependencies();
    let c = executor
        .controller(&t, None, all.restrict(&t))
        .expect("controller");
    let err = c.prepare().await.expect_err("secrets on disk");
    let ExecutorError::Fatal(message) = err else {
        panic!("not fatal: {err:?}");
    };
    assert!(
        message.starts_with("dockerexec: secrets need a tmpfs on this node and none is usable"),
        "{message}"
    );
    let base = no_files();
    assert!(!base.base().join("disk").exists(), "a secret was written");
    assert_eq!(c.inspect().await, Ok(RuntimeState::Absent));
    assert_nothing_left(&service).await;
}

#[tokio::test]
async fn a_dotdot_target_is_refused() {
    let Some(executor) = executor().await else {
        return;
    };
    let t = with_files(
        task(
            "dotdot",
            "escape",
            IMAGE,
            "true",
            &[],
            Duration::from_secs(1),
        ),
        target("../../etc/shadow", "", "", 0o400),
        target("app.conf", "", "", 0o444),
    );
    match executor.controller(&t, None, dependencies().restrict(&t)) {
        Err(ExecutorError::Fatal(m)) => assert_eq!(
            m,
            "dockerexec: secret db_pass: target '../../etc/shadow' contains a '..' component"
        ),
        Err(e) => panic!("not fatal: {e:?}"),
        Ok(_) => panic!("a '..' target was accepted"),
    }
}

/// The (name, Docker ID) of each network on the engine labelled with the swarm network ID
/// `network_id`, sorted.
async fn labelled_networks(network_id: &str) -> Vec<(String, String)> {
    use bollard::query_parameters::ListNetworksOptionsBuilder;
    let filters = HashMap::from([(
        "label",
        vec![format!(
            "{}={network_id}",
            executor_docker::NETWORK_ID_LABEL
        )],
    )]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let mut found: Vec<(String, String)> = engine()
        .await
        .list_networks(Some(options))
        .await
        .expect("listing networks")
        .into_iter()
        .map(|n| (n.name.unwrap_or_default(), n.id.unwrap_or_default()))
        .collect();
    found.sort();
    found
}

/// The Docker IDs of the networks standing for the swarm network `network_id`.
async fn local_networks(network_id: &str) -> Vec<String> {
    labelled_networks(network_id)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// The names of the networks standing for the swarm network `network_id`, sorted.
async fn networks_named(network_id: &str) -> Vec<String> {
    labelled_networks(network_id)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// A swarm network ID and the first three octets (`10.x.y`) of a /24 that no network on the
/// engine has and no other test process picks: the process ID chooses `x` and `y` (distinct for
/// the PIDs of processes alive at once), a per-process counter moves on from there, and subnets
/// the engine already has (networks leaked by killed runs) are skipped.
async fn unique_network() -> (String, String) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let taken: Vec<String> = engine()
        .await
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .expect("listing networks")
        .into_iter()
        .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
        .filter_map(|c| c.subnet)
        .collect();
    let pid = std::process::id();
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot = pid.wrapping_add(k.wrapping_mul(7919)) % (32 * 256);
        let prefix = format!("10.{}.{}", 220 + slot / 256, slot % 256);
        if !taken.iter().any(|t| t == &format!("{prefix}.0/24")) {
            return (format!("dnet{pid}x{k}"), prefix);
        }
    }
}

/// `t` attached to the swarm network `id` named `name` with the subnet `n`.0/24 (`n` is `10.x.y`)
/// at the address `n`.`host`.
fn attached(mut t: api::Task, id: &str, name: &str, n: &str, host: u32) -> api::Task {
    t.networks = vec![api::NetworkAttachment {
        network: Some(api::Network {
            id: id.to_string(),
            spec: Some(api::NetworkSpec {
                annotations: Some(api::Annotations {
                    name: name.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ipam: Some(api::IpamOptions {
                configs: vec![api::IpamConfig {
                    family: api::ipam_config::AddressFamily::Ipv4 as i32,
                    subnet: format!("{n}.0/24"),
                    gateway: format!("{n}.1"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        addresses: vec![format!("{n}.{host}/24")],
        ..Default::default()
    }];
    t
}

/// The container's address on the local network `local`.
async fn address_on(container: &str, local: &str) -> Option<String> {
    engine()
        .await
        .inspect_container(container, None)
        .await
        .expect("inspect")
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(local).cloned())
        .and_then(|e| e.ip_address)
}

/// Removes containers, then networks, with the docker CLI when a test panics before it removed
/// them.
struct RemoveOnPanic {
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Drop for RemoveOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let docker = |args: &[&str]| {
                let _ = std::process::Command::new("docker")
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            };
            for c in &self.containers {
                docker(&["rm", "-f", c]);
            }
            for n in &self.networks {
                docker(&["network", "rm", n]);
            }
        }
    }
}

/// Two tasks of one service on one swarm network: each container has its allocated address on
/// the node's local network for it (made once, found again by a new executor), one reaches the
/// other by address and by task-name alias over TCP, and the network goes with the last task.
#[tokio::test]
async fn two_tasks_on_one_network_reach_each_other_and_share_one_local_network() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("dataplane");
    let (net_id, n) = unique_network().await;
    let local = executor_docker::local_network_name("backend", &net_id);
    let grace = Duration::from_secs(1);
    // The server answers every connection with a line naming itself.
    let server = attached(
        task(
            &service,
            "server",
            IMAGE,
            "trap 'exit 0' TERM; while true; do echo pong | nc -l -p 7000; done & wait",
            &[],
            grace,
        ),
        &net_id,
        "backend",
        &n,
        2,
    );
    let server_name = executor_docker::container_name(&server);
    let client_script = format!(
        "ip -o -4 addr show eth0; i=0; while [ $i -lt 100 ]; do \
           a=$(nc -w 1 {n}.2 7000 </dev/null); b=$(nc -w 1 {server_name} 7000 </dev/null); \
           if [ \"$a\" = pong ] && [ \"$b\" = pong ]; then echo reached; exit 0; fi; \
           i=$((i+1)); sleep 0.2; \
         done; echo unreachable; exit 1"
    );
    let mut client = attached(
        task(&service, "client", IMAGE, &client_script, &[], grace),
        &net_id,
        "backend",
        &n,
        3,
    );
    client.slot = 2;
    let client_name = executor_docker::container_name(&client);
    let _cleanup = RemoveOnPanic {
        containers: vec![server_name.clone(), client_name.clone()],
        networks: vec![local.clone()],
    };

    // Two executors (two swarmd on one engine, not under one lock) prepare at once: one
    // creates the network, the other finds it.
    let other = DockerExecutor::connect(&engine_addr(), no_files(), None).expect("connect");
    let s = executor
        .controller(&server, None, DependencyGetter::none())
        .expect("server controller");
    let c = other
        .controller(&client, None, DependencyGetter::none())
        .expect("client controller");
    let (ps, pc) = tokio::join!(s.prepare(), c.prepare());
    ps.expect("prepare server");
    pc.expect("prepare client");
    let networks = local_networks(&net_id).await;
    assert_eq!(networks.len(), 1, "one local network: {networks:?}");
    s.start().await.expect("start server");
    c.start().await.expect("start client");
    assert_eq!(
        address_on(&server_name, &local).await.as_deref(),
        Some(format!("{n}.2").as_str())
    );
    let exit = tokio::time::timeout(Duration::from_secs(60), c.wait())
        .await
        .expect("the client ends in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}: {}", output(&client_name).await);
    // The client saw its own address (it may have ended before the engine could be asked).
    let text = output(&client_name).await;
    assert!(
        text.contains(&format!("inet {n}.3/24")),
        "the client's address: {text}"
    );
    assert_eq!(text.lines().last(), Some("reached"), "{text}");

    // A new executor (a restarted swarmd) finds the same network, by its labels.
    let again = DockerExecutor::connect(&engine_addr(), no_files(), None).expect("connect");
    let s2 = again
        .controller(&server, None, DependencyGetter::none())
        .expect("controller");
    s2.prepare().await.expect("prepare again");
    assert_eq!(local_networks(&net_id).await, networks);
    assert_eq!(s2.inspect().await, Ok(RuntimeState::Running));

    // The stopped client still refers to the network: removing the server keeps it.
    s2.remove().await.expect("remove server");
    assert_eq!(
        local_networks(&net_id).await,
        networks,
        "removed while in use"
    );
    c.remove().await.expect("remove client");
    assert!(
        local_networks(&net_id).await.is_empty(),
        "the local network outlived its last task"
    );
    assert_nothing_left(&service).await;
}

/// A task on two swarm networks is created on the first and connected to the second before it
/// starts, with its address on each; both networks go with it.
#[tokio::test]
async fn a_task_on_two_networks_has_its_address_on_each() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("twonets");
    let (front_id, n) = unique_network().await;
    let (back_id, back_n) = unique_network().await;
    let front = executor_docker::local_network_name("front", &front_id);
    let back = executor_docker::local_network_name("back", &back_id);
    let mut t = attached(
        task(
            &service,
            "both",
            IMAGE,
            "ip -o -4 addr; trap 'exit 0' TERM; sleep 60 & wait",
            &[],
            Duration::from_secs(1),
        ),
        &front_id,
        "front",
        &n,
        4,
    );
    let second = attached(t.clone(), &back_id, "back", &back_n, 5).networks;
    t.networks.extend(second);
    let name = executor_docker::container_name(&t);
    let _cleanup = RemoveOnPanic {
        containers: vec![name.clone()],
        networks: vec![front.clone(), back.clone()],
    };
    let c = executor
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    c.prepare().await.expect("prepare");
    // A second prepare (a restarted task runner) finds everything in place.
    c.prepare().await.expect("prepare again");
    c.start().await.expect("start");
    assert_eq!(
        address_on(&name, &front).await.as_deref(),
        Some(format!("{n}.4").as_str())
    );
    assert_eq!(
        address_on(&name, &back).await.as_deref(),
        Some(format!("{back_n}.5").as_str())
    );
    c.remove().await.expect("remove");
    assert!(local_networks(&front_id).await.is_empty(), "front left");
    assert!(local_networks(&back_id).await.is_empty(), "back left");
    assert_nothing_left(&service).await;
}

/// A HOST-mode published port is bound on the node: the container answers on 127.0.0.1; a port
/// published as 0 gets one the engine picks, which the task's port status reports.
#[tokio::test]
async fn a_host_mode_port_is_published_on_the_node() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("published");
    let published = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        u32::from(l.local_addr().expect("address").port())
    };
    let mut t = task(
        &service,
        "web",
        IMAGE,
        "trap 'exit 0' TERM; while true; do echo hello | nc -l -p 8080; done & wait",
        &[],
        Duration::from_secs(1),
    );
    t.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![
            api::PortConfig {
                name: "web".into(),
                protocol: api::port_config::Protocol::Tcp as i32,
                target_port: 8080,
                published_port: published,
                publish_mode: api::port_config::PublishMode::Host as i32,
            },
            api::PortConfig {
                name: "any".into(),
                protocol: api::port_config::Protocol::Udp as i32,
                target_port: 5353,
                published_port: 0,
                publish_mode: api::port_config::PublishMode::Host as i32,
            },
        ],
        ..Default::default()
    }));
    let _cleanup = RemoveOnPanic {
        containers: vec![executor_docker::container_name(&t)],
        networks: Vec::new(),
    };
    let c = executor
        .controller(&t, None, DependencyGetter::none())
        .expect("controller");
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let got = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let addr = format!("127.0.0.1:{published}");
            let mut s = std::net::TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        })
        .await
        .expect("join");
        match got {
            Some(text) if !text.is_empty() => break text,
            _ if Instant::now() > deadline => panic!("nothing answered on port {published}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(answer.trim(), "hello");
    // The task's status reports the port as bound.
    let bound = c
        .port_status()
        .await
        .expect("port status")
        .expect("a container");
    // Both statuses from one inspect say the same as each alone.
    assert_eq!(
        c.statuses().await,
        (c.runtime_status().await, Ok(Some(bound.clone())))
    );
    let ports: Vec<(u32, u32)> = bound
        .ports
        .iter()
        .map(|p| (p.target_port, p.published_port))
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[1], (8080, published));
    // The engine's choice for the port published as 0, as the engine reports it.
    let (target, chosen) = ports[0];
    assert_eq!(target, 5353);
    assert_ne!(chosen, 0, "no port chosen");
    let engine_view = engine()
        .await
        .inspect_container(&executor_docker::container_name(&t), None)
        .await
        .expect("inspect")
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("5353/udp").cloned().flatten())
        .unwrap_or_default();
    assert!(
        engine_view
            .iter()
            .any(|b| b.host_port.as_deref() == Some(chosen.to_string().as_str())),
        "{engine_view:?}"
    );
    c.remove().await.expect("remove");
    assert_nothing_left(&service).await;
}

/// Runs the docker CLI, which must succeed.
fn docker_cli(args: &[&str]) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sweep removes our local networks that are old enough and that no container refers to,
/// and no other: not one just made (another swarmd on the engine may be about to put a
/// container on it), not one a created and never started container refers to (a prepared
/// task), not one without our marker. It sweeps only this test's networks (by their label), so
/// the tests beside it keep theirs.
#[tokio::test]
async fn the_sweep_removes_unused_local_networks_only() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let (net_id, n) = unique_network().await;
    let (_, used_n) = unique_network().await;
    let (_, theirs_n) = unique_network().await;
    let ours = format!("swarmd-left-{net_id}");
    let used = format!("swarmd-used-{net_id}");
    let theirs = format!("other-{net_id}");
    let holder = format!("holder-{net_id}");
    let _cleanup = RemoveOnPanic {
        containers: vec![holder.clone()],
        networks: vec![ours.clone(), used.clone(), theirs.clone()],
    };
    let docker = engine().await;
    let mut labels = HashMap::from([
        (
            executor_docker::NETWORK_ID_LABEL.to_string(),
            net_id.clone(),
        ),
        (
            executor_docker::LOCAL_NETWORK_LABEL.to_string(),
            "true".to_string(),
        ),
    ]);
    let create = |name: String, labels: HashMap<String, String>, subnet: String| {
        bollard::models::NetworkCreateRequest {
            name,
            driver: Some("bridge".into()),
            labels: Some(labels),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(subnet),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    for (name, prefix) in [(&ours, &n), (&used, &used_n)] {
        docker
            .create_network(create(
                name.clone(),
                labels.clone(),
                format!("{prefix}.0/24"),
            ))
            .await
            .expect("create ours");
    }
    // Not ours (no marker): left alone even though nothing uses it.
    labels.remove(executor_docker::LOCAL_NETWORK_LABEL);
    docker
        .create_network(create(theirs.clone(), labels, format!("{theirs_n}.0/24")))
        .await
        .expect("create theirs");
    docker_cli(&[
        "create",
        "--name",
        &holder,
        "--network",
        &used,
        IMAGE,
        "true",
    ]);
    let label = format!("{}={net_id}", executor_docker::NETWORK_ID_LABEL);
    let mut all = vec![ours.clone(), used.clone(), theirs.clone()];
    all.sort();

    // At executor start: all too young.
    executor
        .sweep_networks_where(executor_docker::SWEEP_MIN_AGE, Some(&label))
        .await
        .expect("sweep");
    assert_eq!(networks_named(&net_id).await, all, "a young network went");
    // Old enough: only the unused one of ours goes.
    executor
        .sweep_networks_where(Duration::ZERO, Some(&label))
        .await
        .expect("sweep");
    let left = networks_named(&net_id).await;
    docker_cli(&["rm", "-f", &holder]);
    docker_cli(&["network", "rm", &used, &theirs]);
    let mut want = vec![used, theirs];
    want.sort();
    assert_eq!(
        left, want,
        "ours should be gone, the used one and theirs kept"
    );
}

/// A task prepared (its container created, not started) on a network keeps it when another
/// task on it is removed, and starts on it. Should the network go all the same (the engine
/// lets it: nothing runs on it), start makes it again and the task has its address.
#[tokio::test]
async fn a_prepared_task_keeps_its_network_and_starts() {
    let Some(executor) = executor().await else {
        return;
    };
    ensure_test_image();
    let service = unique_service("prepared");
    let (net_id, n) = unique_network().await;
    let local = executor_docker::local_network_name("backend", &net_id);
    let script = "trap 'exit 0' TERM; sleep 60 & wait";
    let grace = Duration::from_secs(1);
    let a = attached(
        task(&service, "a", IMAGE, script, &[], grace),
        &net_id,
        "backend",
        &n,
        2,
    );
    let mut b = attached(
        task(&service, "b", IMAGE, script, &[], grace),
        &net_id,
        "backend",
        &n,
        3,
    );
    b.slot = 2;
    let a_name = executor_docker::container_name(&a);
    let _cleanup = RemoveOnPanic {
        containers: vec![a_name.clone(), executor_docker::container_name(&b)],
        networks: vec![local.clone()],
    };
    let ca = executor
        .controller(&a, None, DependencyGetter::none())
        .expect("controller");
    let cb = executor
        .controller(&b, None, DependencyGetter::none())
        .expect("controller");
    ca.prepare().await.expect("prepare a");
    cb.prepare().await.expect("prepare b");
    cb.start().await.expect("start b");
    cb.remove().await.expect("remove b");
    assert_eq!(
        networks_named(&net_id).await,
        std::slice::from_ref(&local),
        "the prepared task's network went"
    );
    ca.start().await.expect("start a");
    assert_eq!(ca.inspect().await, Ok(RuntimeState::Running));
    ca.remove().await.expect("remove a");
    assert!(networks_named(&net_id).await.is_empty(), "network left");

    // Prepared again, and its network removed behind the executor's back.
    ca.prepare().await.expect("prepare a again");
    engine()
        .await
        .remove_network(&local)
        .await
        .expect("the engine lets a network with no running container go");
    ca.start().await.expect("start a on its network made again");
    assert_eq!(
        address_on(&a_name, &local).await.as_deref(),
        Some(format!("{n}.2").as_str())
    );
    ca.remove().await.expect("remove a");
    assert!(networks_named(&net_id).await.is_empty(), "network left");
    assert_nothing_left(&service).await;
}
