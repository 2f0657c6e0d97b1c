//! Secrets and configs of process tasks: real `sh -c` tasks read them through the task root the
//! environment names, with the reference's owner and mode; removal and the orphan sweep clean up.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::conformance::{dependencies, target, with_files};
use agent::{Controller, Executor, ExecutorError, LogOptions, LogSink, TaskFiles};
use executor_process::ProcessExecutor;

const STEP: Duration = Duration::from_secs(20);

/// A task running `script`, as `user` when given, referencing secret `s1` at `secret` and config
/// `c1` at `config`.
fn task(
    id: &str,
    script: &str,
    user: &str,
    secret: api::FileTarget,
    config: api::FileTarget,
) -> api::Task {
    let container = api::ContainerSpec {
        image: "busybox:latest".into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        user: user.into(),
        ..Default::default()
    };
    let task = api::Task {
        id: id.into(),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
            ..Default::default()
        }),
        ..Default::default()
    };
    with_files(task, secret, config)
}

/// A file target owned by `uid` (and the group of that number).
fn file(name: &str, uid: &str, mode: u32) -> api::FileTarget {
    target(name, uid, uid, mode)
}

/// A node whose task files are on the host's tmpfs (when it has one); its base goes with it.
struct Node {
    _state: tempfile::TempDir,
    files: Arc<TaskFiles>,
    executor: ProcessExecutor,
}

impl Node {
    fn new() -> Node {
        let state = tempfile::tempdir().expect("tempdir");
        let files = Arc::new(TaskFiles::open(state.path()).expect("task files"));
        println!(
            "task files in {} ({})",
            files.base().display(),
            files.not_tmpfs().unwrap_or("tmpfs")
        );
        let executor = ProcessExecutor::new(state.path().to_path_buf(), files.clone(), None);
        Node {
            _state: state,
            files,
            executor,
        }
    }

    /// Runs `t` to its end with the node's secret and config; its controller and its output.
    async fn run(&self, t: &api::Task) -> (Box<dyn Controller>, String) {
        let c = self
            .executor
            .controller(t, None, dependencies().restrict(t))
            .expect("controller");
        bounded("prepare", c.prepare()).await.expect("prepare");
        bounded("start", c.start()).await.expect("start");
        let exit = bounded("wait", c.wait()).await.expect("wait");
        // The output as the log broker gets it, once both streams ended.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let sink = LogSink::new(t, tx);
        let all = LogOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        bounded("logs", c.logs(&all, &sink)).await.expect("logs");
        drop(sink);
        let mut log = String::new();
        while let Some(m) = rx.recv().await {
            log.push_str(&String::from_utf8_lossy(&m.data));
        }
        assert!(exit.success(), "{exit:?}: {log}");
        (c, log)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.files.not_tmpfs().is_none() {
            let _ = std::fs::remove_dir_all(self.files.base());
        }
    }
}

async fn bounded<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {STEP:?}"))
}

#[tokio::test]
async fn a_task_reads_its_secret_and_config_under_its_task_root() {
    let node = Node::new();
    let script = r#"echo "root=$SWARM_TASK_ROOT secrets=$SWARM_SECRETS_DIR"
cat "$SWARM_SECRETS_DIR/db_pass"; echo
cat "$SWARM_TASK_ROOT/etc/app.conf"; echo
stat -c '%a %u' "$SWARM_SECRETS_DIR/db_pass" "$SWARM_TASK_ROOT/etc/app.conf""#;
    let t = task(
        "reader",
        script,
        "",
        file("db_pass", "", 0o440),
        file("etc/app.conf", "", 0o444),
    );
    let (c, log) = node.run(&t).await;
    let root = node.files.base().join("reader");
    let uid = rustix::process::geteuid().as_raw();
    // As root the files belong to the reference's uid (0 when empty); otherwise to swarmd's.
    let owner = if uid == 0 { 0 } else { uid };
    assert_eq!(
        log,
        format!(
            "root={root} secrets={root}/run/secrets\ns3cr3t-pass\nlevel=debug\n440 {owner}\n444 {owner}\n",
            root = root.display()
        )
    );
    c.remove().await.expect("remove");
    assert!(!root.exists(), "remove leaves the task's files");
}

#[tokio::test]
async fn a_task_running_as_another_user_reads_only_what_its_references_allow() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: running a task as another user needs root");
        return;
    }
    let node = Node::new();
    // The secret is nobody's, 0400; the config root's, 0400: nobody may read only the first.
    let script = r#"cat "$SWARM_SECRETS_DIR/pass"; echo
cat "$SWARM_TASK_ROOT/app.conf" 2>/dev/null || echo denied"#;
    let t = task(
        "nobody",
        script,
        "65534:65534",
        file("pass", "65534", 0o400),
        file("app.conf", "0", 0o400),
    );
    let (c, log) = node.run(&t).await;
    assert_eq!(log, "s3cr3t-pass\ndenied\n");
    let meta = std::fs::metadata(node.files.base().join("nobody")).expect("task dir");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    c.remove().await.expect("remove");
}

#[tokio::test]
async fn dotdot_targets_are_refused_and_orphans_swept() {
    let state = tempfile::tempdir().expect("tempdir");
    let none = Path::new("/nonexistent");
    let files = Arc::new(TaskFiles::open_with(state.path(), none, none).expect("task files"));
    let executor = ProcessExecutor::new(state.path().to_path_buf(), files.clone(), None);
    let all = dependencies();
    let t = task(
        "escape",
        "true",
        "",
        file("../../etc/shadow", "", 0o444),
        file("app.conf", "", 0o444),
    );
    match executor.controller(&t, None, all.restrict(&t)) {
        Err(ExecutorError::Fatal(m)) => assert_eq!(
            m,
            "process executor: secret db_pass: target '../../etc/shadow' contains a '..' component"
        ),
        Err(e) => panic!("not fatal: {e:?}"),
        Ok(_) => panic!("a '..' target was accepted"),
    }

    // Two tasks prepared; the worker database knows only the first after a restart.
    let mut controllers = Vec::new();
    for id in ["kept", "orphan"] {
        let t = task(
            id,
            "true",
            "",
            file("pass", "", 0o400),
            file("c", "", 0o444),
        );
        let c = executor
            .controller(&t, None, all.restrict(&t))
            .expect("controller");
        c.prepare().await.expect("prepare");
        controllers.push(c);
    }
    executor.remove_orphans(&HashSet::from(["kept".to_string()]));
    assert!(files.base().join("kept/run/secrets/pass").exists());
    assert!(!files.base().join("orphan").exists());
}
