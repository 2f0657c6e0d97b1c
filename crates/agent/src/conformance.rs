//! The conformance suite every [`Executor`] passes (enable this crate's `conformance` feature in
//! the executor's dev-dependencies and call [`run_all`] from one test). The executor's test gives
//! a [`TaskFactory`] that makes a task running a shell command, in whatever form that executor
//! needs (an image for Docker, a command for processes); the suite checks the behaviour the task
//! runner relies on. It also holds the fixtures of the executors' own tests of secret and config
//! files, whose layout differs between executors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dependencies::Dependencies;
use crate::{DependencyGetter, Executor, RuntimeState};

/// Makes a task for the executor under test: `name` (unique per call), a shell script to run
/// with `/bin/sh -c`, environment `KEY=value` entries, and the stop grace period.
pub trait TaskFactory {
    /// The task.
    fn task(&self, name: &str, script: &str, env: &[&str], grace: Duration) -> api::Task;
}

/// Longest any single step may take in the suite.
const STEP: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A controller for `task`, prepared and started.
async fn started(executor: &dyn Executor, task: &api::Task) -> Box<dyn crate::Controller> {
    let c = executor
        .controller(task, None, DependencyGetter::none())
        .expect("controller");
    bounded("prepare", c.prepare()).await.expect("prepare");
    bounded("start", c.start()).await.expect("start");
    c
}

/// Runs every check; panics on the first that fails.
pub async fn run_all(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    describes_the_node(executor).await;
    runs_to_completion_with_env(executor, tasks).await;
    reports_a_non_zero_exit(executor, tasks).await;
    reports_its_runtime_status(executor, tasks).await;
    steps_are_idempotent(executor, tasks).await;
    shutdown_stops_within_the_grace_period(executor, tasks).await;
    shutdown_kills_after_the_grace_period(executor, tasks).await;
    terminate_kills_at_once(executor, tasks).await;
    adopts_a_running_task_from_its_checkpoint(executor, tasks).await;
}

/// `describe` names the host and the platform.
pub async fn describes_the_node(executor: &dyn Executor) {
    let d = bounded("describe", executor.describe())
        .await
        .expect("describe");
    assert!(!d.hostname.is_empty(), "no hostname: {d:?}");
    let p = d.platform.expect("platform");
    assert!(!p.os.is_empty() && !p.architecture.is_empty(), "{p:?}");
    let r = d.resources.expect("resources");
    assert!(r.nano_cpus > 0 && r.memory_bytes > 0, "{r:?}");
}

/// A task that exits 0 reports success; env reaches it; remove leaves nothing.
pub async fn runs_to_completion_with_env(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    let task = tasks.task(
        &unique("env"),
        "test \"$GREETING\" = hello && exit 0; exit 9",
        &["GREETING=hello"],
        Duration::from_secs(10),
    );
    let c = executor
        .controller(&task, None, DependencyGetter::none())
        .expect("controller");
    assert_eq!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Absent)
    );
    bounded("prepare", c.prepare()).await.expect("prepare");
    bounded("start", c.start()).await.expect("start");
    let exit = bounded("wait", c.wait()).await.expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(matches!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Exited(e)) if e.success()
    ));
    bounded("remove", c.remove()).await.expect("remove");
    assert_eq!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Absent)
    );
    bounded("remove again", c.remove())
        .await
        .expect("removing twice is fine");
}

/// A task that exits 3 reports code 3 and SwarmKit's error text.
pub async fn reports_a_non_zero_exit(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    let task = tasks.task(&unique("exit3"), "exit 3", &[], Duration::from_secs(10));
    let c = started(executor, &task).await;
    let exit = bounded("wait", c.wait()).await.expect("wait");
    assert_eq!(exit.code, 3, "{exit:?}");
    assert_eq!(
        exit.error_message().as_deref(),
        Some("task: non-zero exit (3)")
    );
    // Waiting again gives the same answer.
    assert_eq!(bounded("wait again", c.wait()).await, Ok(exit));
    bounded("remove", c.remove()).await.expect("remove");
}

/// The runtime status names nothing before prepare, the PID while the task runs (and the same
/// container ID throughout, where there is one), and the exit code once it ended.
pub async fn reports_its_runtime_status(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    let task = tasks.task(
        &unique("status"),
        "sleep 0.5; exit 4",
        &[],
        Duration::from_secs(10),
    );
    let c = executor
        .controller(&task, None, DependencyGetter::none())
        .expect("controller");
    assert_eq!(
        bounded("runtime status", c.runtime_status()).await,
        Ok(None)
    );
    bounded("prepare", c.prepare()).await.expect("prepare");
    bounded("start", c.start()).await.expect("start");
    let running = bounded("runtime status", c.runtime_status())
        .await
        .expect("runtime status")
        .expect("a running task has a runtime status");
    assert!(running.pid > 0, "{running:?}");
    let exit = bounded("wait", c.wait()).await.expect("wait");
    assert_eq!(exit.code, 4, "{exit:?}");
    let ended = bounded("runtime status", c.runtime_status())
        .await
        .expect("runtime status")
        .expect("an ended task has a runtime status");
    assert_eq!(ended.exit_code, 4, "{ended:?}");
    assert_eq!(ended.pid, 0, "{ended:?}");
    assert_eq!(ended.container_id, running.container_id);
    bounded("remove", c.remove()).await.expect("remove");
}

/// Prepare and start may be called again; a second start does not run the task twice.
pub async fn steps_are_idempotent(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    let task = tasks.task(&unique("idem"), "sleep 30", &[], Duration::from_secs(5));
    let c = executor
        .controller(&task, None, DependencyGetter::none())
        .expect("controller");
    bounded("prepare", c.prepare()).await.expect("prepare");
    bounded("prepare again", c.prepare())
        .await
        .expect("prepare again");
    assert_eq!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Created)
    );
    bounded("start", c.start()).await.expect("start");
    bounded("start again", c.start())
        .await
        .expect("start again");
    assert_eq!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Running)
    );
    // A wait that is dropped leaves the task running.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.wait())
            .await
            .is_err()
    );
    assert_eq!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Running)
    );
    bounded("terminate", c.terminate())
        .await
        .expect("terminate");
    bounded("remove", c.remove()).await.expect("remove");
}

/// A task that honours its stop signal ends well within the grace period.
pub async fn shutdown_stops_within_the_grace_period(
    executor: &dyn Executor,
    tasks: &dyn TaskFactory,
) {
    // The shell exits on SIGTERM; `sleep` runs in the background so the trap fires at once.
    let task = tasks.task(
        &unique("term"),
        "trap 'exit 0' TERM; sleep 60 & wait",
        &[],
        Duration::from_secs(30),
    );
    let c = started(executor, &task).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bounded("shutdown", c.shutdown()).await.expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        bounded("inspect", c.inspect()).await,
        Ok(RuntimeState::Exited(_))
    ));
    bounded("remove", c.remove()).await.expect("remove");
}

/// A task that ignores its stop signal is killed once the grace period is over.
pub async fn shutdown_kills_after_the_grace_period(
    executor: &dyn Executor,
    tasks: &dyn TaskFactory,
) {
    let task = tasks.task(
        &unique("stubborn"),
        "trap '' TERM; while true; do sleep 1; done",
        &[],
        Duration::from_secs(2),
    );
    let c = started(executor, &task).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bounded("shutdown", c.shutdown()).await.expect("shutdown");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "shutdown took {took:?} with a 2s grace period"
    );
    match bounded("inspect", c.inspect()).await {
        Ok(RuntimeState::Exited(e)) => assert!(!e.success(), "{e:?}"),
        other => panic!("not exited: {other:?}"),
    }
    bounded("remove", c.remove()).await.expect("remove");
}

/// Terminate kills without waiting for a grace period.
pub async fn terminate_kills_at_once(executor: &dyn Executor, tasks: &dyn TaskFactory) {
    let task = tasks.task(
        &unique("kill"),
        "trap '' TERM; while true; do sleep 1; done",
        &[],
        Duration::from_secs(30),
    );
    let c = started(executor, &task).await;
    let started = Instant::now();
    bounded("terminate", c.terminate())
        .await
        .expect("terminate");
    let exit = bounded("wait", c.wait()).await.expect("wait");
    assert!(!exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    bounded("remove", c.remove()).await.expect("remove");
}

/// A new controller made from a running task's checkpoint adopts it: it reports it running,
/// `start` does not run it twice, and `wait` sees its end.
pub async fn adopts_a_running_task_from_its_checkpoint(
    executor: &dyn Executor,
    tasks: &dyn TaskFactory,
) {
    let task = tasks.task(
        &unique("adopt"),
        "sleep 2; exit 4",
        &[],
        Duration::from_secs(5),
    );
    let first = started(executor, &task).await;
    let checkpoint = first.checkpoint();
    drop(first);
    let second = executor
        .controller(&task, checkpoint, DependencyGetter::none())
        .expect("controller from checkpoint");
    assert_eq!(
        bounded("inspect", second.inspect()).await,
        Ok(RuntimeState::Running)
    );
    bounded("start adopted", second.start())
        .await
        .expect("start adopted");
    let exit = bounded("wait adopted", second.wait()).await.expect("wait");
    assert_eq!(exit.code, 4, "the adopted task's own exit: {exit:?}");
    bounded("remove", second.remove()).await.expect("remove");
}

/// The data of the secret [`dependencies`] holds.
pub const SECRET_DATA: &[u8] = b"s3cr3t-pass";
/// The data of the config [`dependencies`] holds.
pub const CONFIG_DATA: &[u8] = b"level=debug";

/// A node's secrets and configs: secret `s1` holding [`SECRET_DATA`] and config `c1` holding
/// [`CONFIG_DATA`].
pub fn dependencies() -> Arc<Dependencies> {
    let all = Arc::new(Dependencies::default());
    all.put_secret(api::Secret {
        id: "s1".into(),
        spec: Some(api::SecretSpec {
            data: SECRET_DATA.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    });
    all.put_config(api::Config {
        id: "c1".into(),
        spec: Some(api::ConfigSpec {
            data: CONFIG_DATA.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    });
    all
}

/// A file target.
pub fn target(name: &str, uid: &str, gid: &str, mode: u32) -> api::FileTarget {
    api::FileTarget {
        name: name.into(),
        uid: uid.into(),
        gid: gid.into(),
        mode,
    }
}

/// `task` (a container task) referencing secret `s1` (named `db_pass`) at `secret` and config
/// `c1` (named `app_conf`) at `config`.
pub fn with_files(
    mut task: api::Task,
    secret: api::FileTarget,
    config: api::FileTarget,
) -> api::Task {
    if let Some(api::task_spec::Runtime::Container(c)) =
        task.spec.as_mut().and_then(|s| s.runtime.as_mut())
    {
        c.secrets = vec![api::SecretReference {
            secret_id: "s1".into(),
            secret_name: "db_pass".into(),
            target: Some(api::secret_reference::Target::File(secret)),
        }];
        c.configs = vec![api::ConfigReference {
            config_id: "c1".into(),
            config_name: "app_conf".into(),
            target: Some(api::config_reference::Target::File(config)),
        }];
    }
    task
}
