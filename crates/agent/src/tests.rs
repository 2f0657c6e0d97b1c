//! The worker and its runners against a fake executor: state walk, shutdown, removal, rejection,
//! resumption from the task database, and the secrets and configs each task may see.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::TaskState;
use tokio::sync::{Notify, mpsc};

use crate::db::TaskDb;
use crate::dependencies::{DependencyError, DependencyGetter};
use crate::executor::{Checkpoint, Controller, Executor, ExecutorError, ExitStatus, RuntimeState};
use crate::runner::StatusReport;
use crate::worker::Worker;

/// Counts calls per task; tasks run until shut down, or exit with the code in their first arg.
#[derive(Default)]
struct Fake {
    calls: Mutex<HashMap<String, Vec<&'static str>>>,
    running: Mutex<HashMap<String, RuntimeState>>,
    exit: Arc<Notify>,
    /// The getter each task's controller was given.
    getters: Mutex<HashMap<String, DependencyGetter>>,
    /// The tasks the worker said it knows when it swept orphans.
    known: Mutex<Option<HashSet<String>>>,
}

struct FakeController {
    id: String,
    exit_code: Option<i32>,
    /// Its remove always fails (service "unremovable").
    unremovable: bool,
    fake: Arc<Fake>,
}

impl FakeController {
    fn log(&self, call: &'static str) {
        self.fake
            .calls
            .lock()
            .expect("lock")
            .entry(self.id.clone())
            .or_default()
            .push(call);
    }
    fn set(&self, s: RuntimeState) {
        self.fake
            .running
            .lock()
            .expect("lock")
            .insert(self.id.clone(), s);
    }
}

#[tonic::async_trait]
impl Controller for FakeController {
    async fn prepare(&self) -> Result<(), ExecutorError> {
        self.log("prepare");
        self.set(RuntimeState::Created);
        Ok(())
    }
    async fn start(&self) -> Result<(), ExecutorError> {
        self.log("start");
        self.set(RuntimeState::Running);
        Ok(())
    }
    async fn wait(&self) -> Result<ExitStatus, ExecutorError> {
        match self.exit_code {
            Some(code) => Ok(ExitStatus { code, signal: None }),
            None => {
                self.fake.exit.notified().await;
                Ok(ExitStatus {
                    code: 0,
                    signal: None,
                })
            }
        }
    }
    async fn shutdown(&self) -> Result<(), ExecutorError> {
        self.log("shutdown");
        Ok(())
    }
    async fn terminate(&self) -> Result<(), ExecutorError> {
        Ok(())
    }
    async fn release(&self) -> Result<(), ExecutorError> {
        self.log("release");
        Ok(())
    }
    async fn remove(&self) -> Result<(), ExecutorError> {
        self.log("remove");
        if self.unremovable {
            return Err(ExecutorError::Temporary("the engine is away".into()));
        }
        self.set(RuntimeState::Absent);
        Ok(())
    }
    async fn inspect(&self) -> Result<RuntimeState, ExecutorError> {
        Ok(*self
            .fake
            .running
            .lock()
            .expect("lock")
            .get(&self.id)
            .unwrap_or(&RuntimeState::Absent))
    }
    async fn runtime_status(&self) -> Result<Option<api::ContainerStatus>, ExecutorError> {
        Ok(match self.inspect().await? {
            RuntimeState::Absent => None,
            RuntimeState::Created => Some(api::ContainerStatus {
                container_id: format!("ctr-{}", self.id),
                ..Default::default()
            }),
            RuntimeState::Running => Some(api::ContainerStatus {
                container_id: format!("ctr-{}", self.id),
                pid: 42,
                ..Default::default()
            }),
            RuntimeState::Exited(e) => Some(api::ContainerStatus {
                container_id: format!("ctr-{}", self.id),
                exit_code: e.code,
                ..Default::default()
            }),
        })
    }
    async fn port_status(&self) -> Result<Option<api::PortStatus>, ExecutorError> {
        Ok(match self.inspect().await? {
            RuntimeState::Running => Some(api::PortStatus {
                ports: vec![fake_port()],
            }),
            _ => None,
        })
    }
    fn checkpoint(&self) -> Option<Checkpoint> {
        Some(b"cp".to_vec())
    }
}

/// The port a running fake task reports as bound.
fn fake_port() -> api::PortConfig {
    api::PortConfig {
        target_port: 80,
        published_port: 9090,
        publish_mode: api::port_config::PublishMode::Host as i32,
        ..Default::default()
    }
}

struct FakeExecutor(Arc<Fake>);

#[tonic::async_trait]
impl Executor for FakeExecutor {
    async fn describe(&self) -> Result<api::NodeDescription, ExecutorError> {
        Ok(api::NodeDescription::default())
    }
    fn controller(
        &self,
        task: &api::Task,
        _: Option<Checkpoint>,
        dependencies: DependencyGetter,
    ) -> Result<Box<dyn Controller>, ExecutorError> {
        if task.service_id == "refuse" {
            return Err(ExecutorError::Fatal("no command".into()));
        }
        self.0
            .getters
            .lock()
            .expect("lock")
            .insert(task.id.clone(), dependencies);
        Ok(Box::new(FakeController {
            id: task.id.clone(),
            exit_code: task.service_id.parse().ok(),
            unremovable: task.service_id == "unremovable",
            fake: self.0.clone(),
        }))
    }
    fn remove_orphans(&self, known: &HashSet<String>) {
        *self.0.known.lock().expect("lock") = Some(known.clone());
    }
}

fn task(id: &str, service: &str, desired: TaskState) -> api::Task {
    api::Task {
        id: id.into(),
        service_id: service.into(),
        desired_state: desired as i32,
        status: Some(api::TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn complete(tasks: Vec<api::Task>) -> api::AssignmentsMessage {
    changes(api::assignments_message::Type::Complete, tasks, false)
}

fn changes(
    ty: api::assignments_message::Type,
    tasks: Vec<api::Task>,
    remove: bool,
) -> api::AssignmentsMessage {
    api::AssignmentsMessage {
        r#type: ty as i32,
        changes: tasks
            .into_iter()
            .map(|t| api::AssignmentChange {
                assignment: Some(api::Assignment {
                    item: Some(api::assignment::Item::Task(t)),
                }),
                action: if remove {
                    api::assignment_change::AssignmentAction::Remove as i32
                } else {
                    api::assignment_change::AssignmentAction::Update as i32
                },
            })
            .collect(),
        ..Default::default()
    }
}

/// Collects reports until `id` reaches `state`, returning the states seen for it.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<StatusReport>,
    id: &str,
    state: TaskState,
) -> Vec<(i32, String, String)> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((tid, s)) = rx.recv().await {
            if tid == id {
                seen.push((s.state, s.message.clone(), s.err.clone()));
                if s.state == state as i32 {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never reached {state:?}; saw {seen:?}"));
    seen
}

/// Waits until the task database holds no task (removed tasks are forgotten), for up to 30 s.
async fn forgotten(db: &TaskDb) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !db.load().expect("load").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("task forgotten");
}

fn states(seen: &[(i32, String, String)]) -> Vec<(TaskState, &str)> {
    seen.iter()
        .map(|(s, m, _)| (TaskState::try_from(*s).expect("state"), m.as_str()))
        .collect()
}

#[tokio::test]
async fn tasks_walk_the_states_and_shut_down_and_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);

    worker.apply(complete(vec![task("t1", "svc", TaskState::Running)]));
    let seen = until(&mut rx, "t1", TaskState::Running).await;
    assert_eq!(
        states(&seen),
        vec![
            (TaskState::Accepted, "accepted"),
            (TaskState::Preparing, "preparing"),
            (TaskState::Ready, "prepared"),
            (TaskState::Starting, "starting"),
            (TaskState::Running, "started"),
        ]
    );
    let stored = db.load().expect("load");
    assert_eq!(stored[0].status.state, TaskState::Running as i32);
    assert_eq!(stored[0].checkpoint.as_deref(), Some(&b"cp"[..]));
    // The status carries what the controller reports of the runtime object.
    assert_eq!(
        stored[0].status.runtime_status,
        Some(api::task_status::RuntimeStatus::Container(
            api::ContainerStatus {
                container_id: "ctr-t1".into(),
                pid: 42,
                exit_code: 0
            }
        ))
    );
    // And the ports it bound on the node.
    assert_eq!(
        stored[0].status.port_status,
        Some(api::PortStatus {
            ports: vec![fake_port()]
        })
    );

    // Desired SHUTDOWN: shut down, reported SHUTDOWN.
    worker.apply(changes(
        api::assignments_message::Type::Incremental,
        vec![task("t1", "svc", TaskState::Shutdown)],
        false,
    ));
    let seen = until(&mut rx, "t1", TaskState::Shutdown).await;
    assert_eq!(states(&seen), vec![(TaskState::Shutdown, "shutdown")]);

    // A COMPLETE set without it: removed and forgotten.
    worker.apply(complete(vec![]));
    forgotten(&db).await;
    let calls = fake.calls.lock().expect("lock")["t1"].clone();
    assert_eq!(
        calls,
        vec![
            "prepare", "start", "shutdown", "release", "remove", "release"
        ]
    );
}

#[tokio::test]
async fn exits_fail_or_complete_and_refusals_reject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake)), db.clone(), tx);
    worker.apply(complete(vec![
        task("ok", "0", TaskState::Running),
        task("bad", "3", TaskState::Running),
        task("no", "refuse", TaskState::Running),
    ]));
    // The refusal is reported during `apply`, before any runner moves.
    let seen = until(&mut rx, "no", TaskState::Rejected).await;
    assert_eq!(seen.last().map(|s| s.2.as_str()), Some("no command"));
    let seen = until(&mut rx, "ok", TaskState::Complete).await;
    assert_eq!(seen.last().map(|s| s.1.as_str()), Some("finished"));
    let seen = until(&mut rx, "bad", TaskState::Failed).await;
    let last = seen.last().expect("failed");
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("started", "task: non-zero exit (3)")
    );
    // The exit code the runner saw is reported with the container's ID.
    let stored = db.load().expect("load");
    let bad = stored.iter().find(|t| t.task.id == "bad").expect("bad");
    let Some(api::task_status::RuntimeStatus::Container(c)) = &bad.status.runtime_status else {
        panic!("no runtime status: {:?}", bad.status);
    };
    assert_eq!((c.container_id.as_str(), c.exit_code), ("ctr-bad", 3));
}

#[tokio::test]
async fn a_desired_ready_task_waits_and_a_restart_resumes_without_rerunning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    worker.apply(complete(vec![
        task("r", "svc", TaskState::Ready),
        task("run", "svc", TaskState::Running),
    ]));
    until(&mut rx, "r", TaskState::Ready).await;
    until(&mut rx, "run", TaskState::Running).await;
    // Nothing may happen here: the time a runner would need to start "r" by mistake.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fake.calls.lock().expect("lock")["r"].contains(&"start"),
        "a desired-READY task must not start"
    );
    // The agent goes away without leaving (SIGTERM); a new one resumes from the database.
    drop(worker);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut again = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    again.resume();
    assert_eq!(
        fake.known.lock().expect("lock").clone(),
        Some(HashSet::from(["r".to_string(), "run".to_string()])),
        "orphans are swept against the database's tasks"
    );
    again.apply(complete(vec![
        task("r", "svc", TaskState::Running),
        task("run", "svc", TaskState::Running),
    ]));
    until(&mut rx, "r", TaskState::Running).await;
    // Nothing may happen here: the time a resumed runner would need to re-run "run" by mistake.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = fake.calls.lock().expect("lock").clone();
    assert_eq!(
        calls["run"],
        vec!["prepare", "start"],
        "the running task was re-run"
    );
    assert_eq!(calls["r"], vec!["prepare", "start"]);
    again.leave().await;
    assert!(
        db.load().expect("load").is_empty(),
        "leaving removes every task"
    );
}

/// The agent's half of "reconnect or exit, never neither": with every manager unreachable (the
/// connector injects the failure) it keeps trying, with its backoff, and does not return until
/// it is told to stop; then it returns at once.
#[tokio::test(start_paused = true)]
async fn the_agent_keeps_reconnecting_while_no_manager_answers_and_stops_only_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let connect: crate::Connector = Arc::new(move |addr: &str| {
        seen.lock()
            .expect("attempts")
            .push((addr.to_string(), tokio::time::Instant::now()));
        Err("injected: manager unreachable".to_string())
    });
    let config = crate::AgentConfig {
        managers: vec!["10.0.0.1:4242".into(), "10.0.0.2:4242".into()],
        connect,
        local: Arc::new(|| None),
        executor: Arc::new(FakeExecutor(Arc::new(Fake::default()))),
        db: TaskDb::open(dir.path()).expect("db"),
        observer: Arc::new(|_: &api::SessionMessage| {}),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(crate::run(config, shutdown.clone(), false));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        !agent.is_finished(),
        "the agent gave up while managers were unreachable"
    );
    let attempts = attempts.lock().expect("attempts").clone();
    // Both managers tried in each round; pauses grow to 8 s at most, so 120 s hold many rounds.
    assert!(attempts.len() >= 2 * 15, "only {} attempts", attempts.len());
    for addr in ["10.0.0.1:4242", "10.0.0.2:4242"] {
        assert!(
            attempts.iter().any(|(a, _)| a == addr),
            "{addr} never tried"
        );
    }
    let last = attempts.last().expect("an attempt").1;
    assert!(
        last.elapsed() <= Duration::from_secs(8),
        "no attempt in the last 8 s"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), agent)
        .await
        .expect("the agent stops when told")
        .expect("no panic")
        .expect("a clean stop");
}

/// A message of a split set: `results_in` `seq`, marked when more parts follow.
fn part(
    ty: api::assignments_message::Type,
    tasks: Vec<api::Task>,
    seq: u64,
    more: bool,
) -> api::AssignmentsMessage {
    api::AssignmentsMessage {
        applies_to: if seq > 1 {
            api::assignment_parts::results_in(seq - 1, true)
        } else {
            String::new()
        },
        results_in: api::assignment_parts::results_in(seq, more),
        ..changes(ty, tasks, false)
    }
}

/// A COMPLETE set split over three messages (the dispatcher's COMPLETE then INCREMENTAL parts):
/// tasks in later parts keep running while the first arrives, and what the set leaves out is
/// removed only with the last part; a set cut short removes nothing.
#[tokio::test]
async fn a_split_complete_set_removes_only_once_it_is_whole() {
    use api::assignments_message::Type;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    let run = |id: &str| task(id, "svc", TaskState::Running);
    worker.apply(complete(vec![run("t1"), run("t2"), run("t3"), run("t4")]));
    for id in ["t1", "t2", "t3", "t4"] {
        until(&mut rx, id, TaskState::Running).await;
    }

    worker.apply(part(Type::Complete, vec![run("t1")], 1, true));
    worker.apply(part(Type::Incremental, vec![run("t2")], 2, true));
    // Not whole yet: t2 to t4 untouched, and a new task of the set starts.
    worker.apply(part(Type::Incremental, vec![run("t3"), run("t5")], 3, true));
    until(&mut rx, "t5", TaskState::Running).await;
    assert_eq!(db.load().expect("load").len(), 5);
    // The last part: t4 is not in the set, so it goes now.
    worker.apply(part(Type::Incremental, vec![], 4, false));
    tokio::time::timeout(Duration::from_secs(5), async {
        while db.load().expect("load").len() != 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("t4 forgotten");
    let calls = fake.calls.lock().expect("lock").clone();
    assert!(calls["t4"].contains(&"remove"), "{:?}", calls["t4"]);
    for id in ["t1", "t2", "t3"] {
        assert_eq!(calls[id], vec!["prepare", "start"], "{id} kept running");
    }

    // A set cut short (its stream failed) removes nothing, and a later plain INCREMENTAL
    // does not complete it.
    worker.apply(part(Type::Complete, vec![run("t1")], 1, true));
    worker.abandon_partial();
    worker.apply(changes(Type::Incremental, vec![run("t6")], false));
    until(&mut rx, "t6", TaskState::Running).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(db.load().expect("load").len(), 5);
    let calls = fake.calls.lock().expect("lock").clone();
    for id in ["t2", "t3", "t5"] {
        assert_eq!(calls[id], vec!["prepare", "start"], "{id} kept running");
    }
}

/// A task referencing `secrets` and `configs` (by ID, with file targets).
fn task_using(id: &str, secrets: &[&str], configs: &[&str]) -> api::Task {
    let target = |name: &str| api::FileTarget {
        name: name.into(),
        mode: 0o444,
        ..Default::default()
    };
    api::Task {
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    secrets: secrets
                        .iter()
                        .map(|s| api::SecretReference {
                            secret_id: s.to_string(),
                            secret_name: s.to_string(),
                            target: Some(api::secret_reference::Target::File(target(s))),
                        })
                        .collect(),
                    configs: configs
                        .iter()
                        .map(|c| api::ConfigReference {
                            config_id: c.to_string(),
                            config_name: c.to_string(),
                            target: Some(api::config_reference::Target::File(target(c))),
                        })
                        .collect(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }),
        ..task(id, "svc", TaskState::Running)
    }
}

fn secret_change(id: &str, data: &[u8], remove: bool) -> api::AssignmentChange {
    let secret = api::Secret {
        id: id.into(),
        // A removal carries only the ID.
        spec: (!remove).then(|| api::SecretSpec {
            data: data.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    change(api::assignment::Item::Secret(secret), remove)
}

fn config_change(id: &str, data: &[u8], remove: bool) -> api::AssignmentChange {
    let config = api::Config {
        id: id.into(),
        spec: (!remove).then(|| api::ConfigSpec {
            data: data.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    change(api::assignment::Item::Config(config), remove)
}

fn change(item: api::assignment::Item, remove: bool) -> api::AssignmentChange {
    api::AssignmentChange {
        assignment: Some(api::Assignment { item: Some(item) }),
        action: if remove {
            api::assignment_change::AssignmentAction::Remove as i32
        } else {
            api::assignment_change::AssignmentAction::Update as i32
        },
    }
}

/// A message of `ty` whose changes are `deps` (secrets, configs) followed by `tasks`.
fn with_deps(
    ty: api::assignments_message::Type,
    deps: Vec<api::AssignmentChange>,
    tasks: Vec<api::Task>,
) -> api::AssignmentsMessage {
    let mut msg = changes(ty, tasks, false);
    msg.changes.splice(0..0, deps);
    msg
}

fn getter(fake: &Fake, id: &str) -> DependencyGetter {
    fake.getters.lock().expect("lock")[id].clone()
}

/// Each task's controller sees only the secrets and configs its spec references; updates and
/// removals reach it; the worker database never holds a secret's bytes.
#[tokio::test]
async fn a_task_sees_only_its_own_secrets_and_configs_and_none_reach_the_database() {
    use api::assignments_message::Type;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    const ONE: &[u8] = b"first-secret-bytes-0f9a1c";
    const TWO: &[u8] = b"second-secret-bytes-77e2d0";
    worker.apply(with_deps(
        Type::Complete,
        vec![
            secret_change("s1", ONE, false),
            secret_change("s2", TWO, false),
            config_change("c1", b"conf", false),
        ],
        vec![
            task_using("t1", &["s1"], &["c1"]),
            task_using("t2", &["s2"], &[]),
        ],
    ));
    until(&mut rx, "t1", TaskState::Running).await;
    until(&mut rx, "t2", TaskState::Running).await;
    let (g1, g2) = (getter(&fake, "t1"), getter(&fake, "t2"));
    assert_eq!(g1.secret("s1").expect("t1 uses s1").data(), ONE);
    assert_eq!(
        g1.config("c1")
            .expect("t1 uses c1")
            .spec
            .clone()
            .expect("spec")
            .data,
        b"conf"
    );
    assert!(matches!(
        g1.secret("s2"),
        Err(DependencyError::NotAuthorized { .. })
    ));
    assert_eq!(g2.secret("s2").expect("t2 uses s2").data(), TWO);
    assert!(matches!(
        g2.secret("s1"),
        Err(DependencyError::NotAuthorized { .. })
    ));
    assert!(matches!(
        g2.config("c1"),
        Err(DependencyError::NotAuthorized { .. })
    ));

    // The database file holds the tasks (with their references) but no secret bytes.
    let raw = std::fs::read(dir.path().join("tasks.db")).expect("read db");
    let holds = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(holds(b"t1") && holds(b"s1"), "the tasks are stored");
    assert!(
        !holds(ONE) && !holds(TWO),
        "secret bytes in the task database"
    );

    // INCREMENTAL: an update is seen, a removal too.
    worker.apply(with_deps(
        Type::Incremental,
        vec![
            secret_change("s2", b"rotated", false),
            secret_change("s1", b"", true),
        ],
        vec![],
    ));
    assert_eq!(g2.secret("s2").expect("s2").data(), b"rotated");
    assert!(matches!(
        g1.secret("s1"),
        Err(DependencyError::NotFound { .. })
    ));
}

/// A COMPLETE set replaces the node's secrets and configs, but only once its last part arrived;
/// one cut short drops nothing.
#[tokio::test]
async fn a_complete_set_replaces_secrets_and_configs_once_whole() {
    use api::assignments_message::Type;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    worker.apply(with_deps(
        Type::Complete,
        vec![
            secret_change("s1", b"one", false),
            secret_change("s2", b"two", false),
            config_change("c1", b"conf", false),
        ],
        vec![task_using("t1", &["s1", "s2"], &["c1"])],
    ));
    until(&mut rx, "t1", TaskState::Running).await;
    let g = getter(&fake, "t1");

    let mut first = with_deps(
        Type::Complete,
        vec![secret_change("s1", b"one", false)],
        vec![task_using("t1", &["s1", "s2"], &["c1"])],
    );
    first.results_in = api::assignment_parts::results_in(1, true);
    worker.apply(first);
    // Not whole yet: what it has not named stays.
    assert!(g.secret("s2").is_ok() && g.config("c1").is_ok());
    let mut last = with_deps(
        Type::Incremental,
        vec![config_change("c1", b"conf", false)],
        vec![],
    );
    last.applies_to = api::assignment_parts::results_in(1, true);
    last.results_in = api::assignment_parts::results_in(2, false);
    worker.apply(last);
    assert!(g.secret("s1").is_ok() && g.config("c1").is_ok());
    assert!(
        matches!(g.secret("s2"), Err(DependencyError::NotFound { .. })),
        "s2 was left out of the set"
    );

    // A set cut short drops nothing.
    let mut cut = with_deps(Type::Complete, vec![], vec![task_using("t1", &["s1"], &[])]);
    cut.results_in = api::assignment_parts::results_in(1, true);
    worker.apply(cut);
    worker.abandon_partial();
    worker.apply(changes(Type::Incremental, vec![], false));
    assert!(g.secret("s1").is_ok() && g.config("c1").is_ok());
}

/// A task removed before anything ran still has its controller's remove called: it may have left
/// files (secrets) without a runtime object.
#[tokio::test]
async fn a_task_that_never_ran_is_removed_through_its_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    worker.apply(complete(vec![task("x", "svc", TaskState::Shutdown)]));
    until(&mut rx, "x", TaskState::Shutdown).await;
    worker.apply(complete(vec![]));
    forgotten(&db).await;
    let calls = fake.calls.lock().expect("lock")["x"].clone();
    assert_eq!(calls, vec!["shutdown", "release", "remove", "release"]);
}

/// A removal that keeps failing still drops the task's files before the task is forgotten:
/// nothing would remove them later. The task sent again meanwhile is ignored: that runner's end
/// would delete the new runner's files and database row.
#[tokio::test(start_paused = true)]
async fn a_task_whose_removal_fails_still_releases_its_files_and_is_not_rerun_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    let x = task("x", "unremovable", TaskState::Running);
    worker.apply(complete(vec![x.clone()]));
    until(&mut rx, "x", TaskState::Running).await;
    worker.apply(complete(vec![]));
    worker.apply(complete(vec![x]));
    forgotten(&db).await;
    let calls = fake.calls.lock().expect("lock")["x"].clone();
    assert_eq!(
        calls,
        vec!["prepare", "start", "remove", "remove", "remove", "release"]
    );
}

/// A task that ends drops its files at once (release), not only when the manager removes it; a
/// task resumed in a terminal state releases again, since swarmd may have died before it did.
#[tokio::test]
async fn an_ended_task_releases_its_files_once_per_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TaskDb::open(dir.path()).expect("db");
    let fake = Arc::new(Fake::default());
    let calls = |id: &str| fake.calls.lock().expect("lock")[id].clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut worker = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    worker.apply(complete(vec![
        task("ok", "0", TaskState::Running),
        task("bad", "3", TaskState::Running),
        task("live", "svc", TaskState::Running),
    ]));
    until(&mut rx, "ok", TaskState::Complete).await;
    until(&mut rx, "bad", TaskState::Failed).await;
    until(&mut rx, "live", TaskState::Running).await;
    let released = |id: &str| calls(id).iter().filter(|c| **c == "release").count();
    tokio::time::timeout(Duration::from_secs(5), async {
        while released("ok") == 0 || released("bad") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("ended tasks released");
    assert_eq!(calls("ok"), vec!["prepare", "start", "release"]);
    assert_eq!(calls("bad"), vec!["prepare", "start", "release"]);
    assert_eq!(released("live"), 0, "a running task keeps its files");

    drop(worker);
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut again = Worker::new(Arc::new(FakeExecutor(fake.clone())), db.clone(), tx);
    again.resume();
    tokio::time::timeout(Duration::from_secs(5), async {
        while released("ok") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a resumed ended task released again");
    assert_eq!(released("live"), 0);
    again.leave().await;
}
