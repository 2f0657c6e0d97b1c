//! One task's runner (spec 6, SwarmKit agent/exec `Do`): takes the task one state at a time
//! towards its desired state through the executor's controller — ACCEPTED, PREPARING, READY,
//! STARTING, RUNNING, then COMPLETE or FAILED — shuts it down when the desired state becomes
//! SHUTDOWN or later, and removes it when the manager no longer assigns it. Each new status is
//! written to the task database first and then handed to the reporter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::TaskState;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::db::TaskDb;
use crate::executor::{Controller, ExecutorError, ExitStatus};

/// Pause before a step that failed with a temporary error is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// A status change for the reporter: task ID and the new status.
pub type StatusReport = (String, api::TaskStatus);

/// The running side of a task's runner.
pub struct RunnerHandle {
    task: watch::Sender<api::Task>,
    remove: CancellationToken,
    join: JoinHandle<()>,
}

impl RunnerHandle {
    /// The manager sent a newer version of the task (desired state, spec).
    pub fn update(&self, task: api::Task) {
        self.task.send_replace(task);
    }

    /// The manager no longer assigns the task: shut it down, remove it, forget it.
    pub fn remove(&self) {
        self.remove.cancel();
    }

    /// Whether the runner has finished (after a removal).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits for the runner to end (after [`RunnerHandle::remove`]).
    pub async fn join(self) {
        let _ = self.join.await;
    }
}

/// Starts a runner for `task`, whose last known status is `status`.
pub fn spawn(
    task: api::Task,
    status: api::TaskStatus,
    controller: Arc<dyn Controller>,
    db: TaskDb,
    reports: mpsc::UnboundedSender<StatusReport>,
) -> RunnerHandle {
    let (tx, rx) = watch::channel(task);
    let remove = CancellationToken::new();
    let runner = Runner {
        task: rx,
        status,
        controller,
        db,
        reports,
        removing: remove.clone(),
    };
    RunnerHandle {
        task: tx,
        remove,
        join: tokio::spawn(runner.run()),
    }
}

struct Runner {
    task: watch::Receiver<api::Task>,
    status: api::TaskStatus,
    controller: Arc<dyn Controller>,
    db: TaskDb,
    reports: mpsc::UnboundedSender<StatusReport>,
    removing: CancellationToken,
}

fn state_of(s: &api::TaskStatus) -> i32 {
    s.state
}

fn is_terminal(state: i32) -> bool {
    state >= TaskState::Complete as i32
}

/// What a status reports of the task's runtime object: the container's status and the ports
/// it has on the node (SwarmKit's `RuntimeStatus` and `PortStatus`).
#[derive(Default)]
struct Runtime {
    container: Option<api::ContainerStatus>,
    ports: Option<api::PortStatus>,
}

/// What one step led to.
enum Step {
    /// Move to this state with this message.
    To(TaskState, &'static str),
    /// The step failed: REJECTED before STARTING, FAILED from it on.
    Failed(String, Option<ExitStatus>),
    /// The task ran to its end.
    Exited(ExitStatus),
    /// Nothing to do until the task changes.
    Idle,
    /// Try again shortly.
    Retry,
    /// Decide again at once.
    Again,
}

impl Runner {
    fn task_id(&self) -> String {
        self.task.borrow().id.clone()
    }

    async fn run(mut self) {
        let mut released = false;
        loop {
            if self.removing.is_cancelled() {
                self.remove().await;
                return;
            }
            if !released && is_terminal(state_of(&self.status)) {
                released = true;
                if let Err(e) = self.controller.release().await {
                    warn!(task.id = %self.task_id(), "dropping the ended task's files failed: {e}");
                }
            }
            let step = self.step().await;
            match step {
                Step::To(state, message) => {
                    // As SwarmKit's agent: a container has a status to report only from STARTING
                    // on, so the executor is not asked before (for Docker, an inspect each time).
                    let runtime = if state >= TaskState::Starting {
                        self.runtime(None).await
                    } else {
                        Runtime::default()
                    };
                    self.set(state, message, String::new(), runtime);
                }
                Step::Failed(err, exit) => {
                    let state = if state_of(&self.status) < TaskState::Starting as i32 {
                        TaskState::Rejected
                    } else {
                        TaskState::Failed
                    };
                    let message = self.status.message.clone();
                    let runtime = self.runtime(exit).await;
                    self.set_owned(state, message, err, runtime);
                }
                Step::Exited(exit) => {
                    let runtime = self.runtime(Some(exit)).await;
                    match exit.error_message() {
                        None => self.set(TaskState::Complete, "finished", String::new(), runtime),
                        Some(err) => {
                            let message = self.status.message.clone();
                            self.set_owned(TaskState::Failed, message, err, runtime);
                        }
                    }
                }
                Step::Idle => {
                    tokio::select! {
                        () = self.removing.cancelled() => {}
                        changed = self.task.changed() => if changed.is_err() { return },
                    }
                }
                Step::Again => {}
                Step::Retry => {
                    tokio::select! {
                        () = self.removing.cancelled() => {}
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// One step towards the desired state.
    async fn step(&mut self) -> Step {
        let (desired, id) = {
            let t = self.task.borrow_and_update();
            (t.desired_state, t.id.clone())
        };
        let state = state_of(&self.status);
        if is_terminal(state) {
            return Step::Idle;
        }
        if desired >= TaskState::Shutdown as i32 {
            return match self.controller.shutdown().await {
                Ok(()) => Step::To(TaskState::Shutdown, "shutdown"),
                Err(e) => self.error(e),
            };
        }
        match TaskState::try_from(state).unwrap_or(TaskState::New) {
            TaskState::New | TaskState::Pending | TaskState::Assigned => {
                Step::To(TaskState::Accepted, "accepted")
            }
            TaskState::Accepted => Step::To(TaskState::Preparing, "preparing"),
            TaskState::Preparing => match self.controller.prepare().await {
                Ok(()) => Step::To(TaskState::Ready, "prepared"),
                Err(e) => self.error(e),
            },
            TaskState::Ready if desired <= TaskState::Ready as i32 => Step::Idle,
            TaskState::Ready => Step::To(TaskState::Starting, "starting"),
            TaskState::Starting => match self.controller.start().await {
                Ok(()) => {
                    if let Some(cp) = self.controller.checkpoint()
                        && let Err(e) = self.db.put_checkpoint(&id, &cp)
                    {
                        warn!(task.id = %id, "saving the task's checkpoint failed: {e}");
                    }
                    Step::To(TaskState::Running, "started")
                }
                Err(e) => self.error(e),
            },
            TaskState::Running => {
                let woke = tokio::select! {
                    res = self.controller.wait() => Some(Some(res)),
                    // A newer task (say desired SHUTDOWN) or a removal: decide again; the
                    // handle gone (the agent stopping) leaves the task as it is.
                    changed = self.task.changed() => changed.ok().map(|()| None),
                    () = self.removing.cancelled() => Some(None),
                };
                match woke {
                    Some(Some(Ok(exit))) => Step::Exited(exit),
                    Some(Some(Err(e))) => self.error(e),
                    Some(None) => Step::Again,
                    None => Step::Idle,
                }
            }
            _ => Step::Idle,
        }
    }

    fn error(&self, e: ExecutorError) -> Step {
        match e {
            ExecutorError::Fatal(msg) => Step::Failed(msg, None),
            ExecutorError::Temporary(msg) => {
                debug!(task.id = %self.task_id(), "temporary executor error, retrying: {msg}");
                Step::Retry
            }
        }
    }

    /// The runtime object's status to report with a new state (as SwarmKit's `Do` does at every
    /// transition); `exit`, when the runner saw the task end, is the exit code that counts. The
    /// ports the executor bound on the node come with it.
    async fn runtime(&self, exit: Option<ExitStatus>) -> Runtime {
        let (reported, ports) = self.controller.statuses().await;
        let reported = match reported {
            Ok(status) => status,
            Err(e) => {
                debug!(task.id = %self.task_id(), "runtime status unavailable: {e}");
                None
            }
        };
        let container = match (reported, exit) {
            (Some(status), Some(e)) => Some(api::ContainerStatus {
                exit_code: e.code,
                ..status
            }),
            (None, Some(e)) => Some(api::ContainerStatus {
                exit_code: e.code,
                ..Default::default()
            }),
            (status, None) => status,
        };
        let ports = match ports {
            Ok(ports) => ports,
            Err(e) => {
                debug!(task.id = %self.task_id(), "port status unavailable: {e}");
                None
            }
        };
        Runtime { container, ports }
    }

    fn set(&mut self, state: TaskState, message: &str, err: String, runtime: Runtime) {
        self.set_owned(state, message.to_string(), err, runtime);
    }

    fn set_owned(&mut self, state: TaskState, message: String, err: String, runtime: Runtime) {
        let id = self.task_id();
        let status = api::TaskStatus {
            timestamp: Some(SystemTime::now().into()),
            state: state as i32,
            message,
            err,
            runtime_status: runtime
                .container
                .map(api::task_status::RuntimeStatus::Container),
            port_status: runtime.ports,
            ..Default::default()
        };
        if is_terminal(state as i32) || state == TaskState::Running {
            info!(task.id = %id, state = ?state, err = %status.err, "task state changed");
        } else {
            debug!(task.id = %id, state = ?state, "task state changed");
        }
        if let Err(e) = self.db.put_status(&id, &status) {
            warn!(task.id = %id, "saving the task status failed: {e}");
        }
        self.status = status.clone();
        let _ = self.reports.send((id, status));
    }

    /// The manager dropped the task: stop it if it runs, remove what it left, forget it. The
    /// controller's remove runs even when its runtime object is absent: the task may have left
    /// files (secrets) without one. The files are released whatever became of the removal, since
    /// the task is forgotten after a few tries and nothing would remove them later.
    async fn remove(&mut self) {
        let id = self.task_id();
        for _ in 0..3 {
            match self.controller.remove().await {
                Ok(()) => break,
                Err(e) => {
                    warn!(task.id = %id, "removing the task failed: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        if let Err(e) = self.controller.release().await {
            warn!(task.id = %id, "dropping the removed task's files failed: {e}");
        }
        if let Err(e) = self.db.delete(&id) {
            warn!(task.id = %id, "forgetting the task failed: {e}");
        }
        debug!(task.id = %id, "task removed");
    }
}
