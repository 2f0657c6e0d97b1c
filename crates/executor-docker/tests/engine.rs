//! The Docker executor against the real engine: the agent's conformance suite, a missing image,
//! adoption by a second executor (as after a swarmd restart), and no container left behind.
//!
//! The engine is `DOCKER_HOST` when it names a unix socket or tcp address, otherwise
//! `unix:///var/run/docker.sock`. Without an engine each test prints `skipped: no Docker engine
//! at ...` and passes; `.ci/run` makes a missing engine a failure before the tests run. The image
//! is `swarmkit-test/busybox:latest`, built by `scripts/test-image.sh` (nothing can be pulled).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agent::conformance::{self, TaskFactory};
use agent::{Executor, ExecutorError, RuntimeState};
use bollard::query_parameters::ListContainersOptionsBuilder;
use executor_docker::{DockerExecutor, SERVICE_NAME_LABEL};

const IMAGE: &str = "swarmkit-test/busybox:latest";

fn engine_addr() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") || h.starts_with("tcp://") => h,
        _ => "unix:///var/run/docker.sock".to_string(),
    }
}

/// The executor, or `None` (after saying so) when no engine answers.
async fn executor() -> Option<DockerExecutor> {
    let addr = engine_addr();
    let answers = match DockerExecutor::connect(&addr, None) {
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
    let docker = bollard::Docker::connect_with_host(&engine_addr())
        .expect("engine address")
        .negotiate_version()
        .await
        .expect("engine answers");
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
    let c = executor.controller(&t, None).expect("controller");
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
    let c = first.controller(&t, None).expect("controller");
    c.prepare().await.expect("prepare");
    c.start().await.expect("start");
    drop((c, first));

    // A second connection with no checkpoint, as a restarted swarmd would make.
    let second = DockerExecutor::connect(&engine_addr(), Some("renamed".into())).expect("connect");
    assert_eq!(
        second.describe().await.expect("describe").hostname,
        "renamed"
    );
    let c = second.controller(&t, None).expect("controller");
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
        .controller(&with_check("healthy", "true"), None)
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
        .controller(&with_check("sick", "false"), None)
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
    let c = executor.controller(&t, None).expect("controller");
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
