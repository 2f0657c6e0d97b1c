//! The agent's executor conformance suite, run against the process executor with tasks whose
//! container spec command is `/bin/sh -c <script>`.

use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use agent::conformance::{TaskFactory, run_all};
use agent::{DependencyGetter, Executor, TaskFiles};
use executor_process::{ENGINE_LABEL, ProcessExecutor};

/// An executor with its logs and task files under `state` (the suite's tasks have no files).
fn executor(state: &Path, hostname: Option<String>) -> ProcessExecutor {
    let none = Path::new("/nonexistent");
    let files = TaskFiles::open_with(state, none, none).expect("task files");
    ProcessExecutor::new(state.to_path_buf(), Arc::new(files), hostname)
}

struct ShellTasks;

impl TaskFactory for ShellTasks {
    fn task(&self, name: &str, script: &str, env: &[&str], grace: Duration) -> api::Task {
        let container = api::ContainerSpec {
            image: "busybox:latest".into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: env.iter().map(|e| e.to_string()).collect(),
            stop_grace_period: Some(prost_types::Duration {
                seconds: i64::try_from(grace.as_secs()).expect("a short grace period"),
                nanos: i32::try_from(grace.subsec_nanos()).expect("below a second"),
            }),
            ..Default::default()
        };
        api::Task {
            id: name.into(),
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_executor_conforms() {
    let state = tempfile::tempdir().expect("tempdir");
    let executor = executor(state.path(), None);
    run_all(&executor, &ShellTasks).await;
    // Every task the suite ran was removed, and its log and task directory with it.
    for dir in ["process", "taskfiles"] {
        let left: Vec<_> = std::fs::read_dir(state.path().join(dir))
            .expect("dir")
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

#[tokio::test]
async fn describe_reports_the_override_and_the_engine_label() {
    let state = tempfile::tempdir().expect("tempdir");
    let executor = executor(state.path(), Some("worker-7".into()));
    let d = executor.describe().await.expect("describe");
    assert_eq!(d.hostname, "worker-7");
    let p = d.platform.expect("platform");
    assert_eq!(p.os, "linux");
    // Rust's names (`x86_64`, `aarch64`), as Docker reports them; the scheduler maps both.
    assert_eq!(p.architecture, std::env::consts::ARCH);
    let r = d.resources.expect("resources");
    assert_eq!(r.nano_cpus % 1_000_000_000, 0);
    let engine = d.engine.expect("engine");
    assert_eq!(engine.engine_version, "");
    assert_eq!(
        engine.labels.get(ENGINE_LABEL.0).map(String::as_str),
        Some(ENGINE_LABEL.1)
    );
}

#[tokio::test]
async fn describe_reports_the_generic_resources_given() {
    let state = tempfile::tempdir().expect("tempdir");
    let generic = api::genericresource::parse_cmd("gpu=UUID1,gpu=UUID2,ssd=1").expect("parse");
    assert_eq!(generic.len(), 3);
    let executor = executor(state.path(), None).with_generic_resources(generic.clone());
    let d = executor.describe().await.expect("describe");
    assert_eq!(d.resources.expect("resources").generic, generic);
}

#[test]
fn a_task_without_a_command_is_fatal() {
    let state = tempfile::tempdir().expect("tempdir");
    let executor = executor(state.path(), None);
    let mut task = ShellTasks.task("nocmd", "true", &[], Duration::from_secs(1));
    if let Some(api::task_spec::Runtime::Container(c)) =
        task.spec.as_mut().and_then(|s| s.runtime.as_mut())
    {
        c.command.clear();
    }
    match executor.controller(&task, None, DependencyGetter::none()) {
        Err(agent::ExecutorError::Fatal(m)) => assert_eq!(
            m,
            "process executor: the task has no command; it needs a command to run as a process"
        ),
        Err(e) => panic!("not fatal: {e:?}"),
        Ok(_) => panic!("a controller for a task without a command"),
    }
}
