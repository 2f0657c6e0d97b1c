//! What an executor is (spec 6, SwarmKit agent/exec): it describes the node, and makes one
//! [`Controller`] per task that takes the task through prepare, start, wait and shutdown. The task
//! runner calls these one step at a time and maps the outcome to task states: an error before
//! STARTING makes the task REJECTED, at or after it FAILED; a [`ExecutorError::Temporary`] error
//! is retried.
//!
//! Every method of a controller takes `&self` and must be safe to call again (a step that is
//! already done succeeds at once), because the runner retries after errors and restarts after a
//! swarmd restart; `wait` must be cancel-safe, since the runner drops it to call `shutdown`.

use std::collections::HashSet;
use std::time::Duration;

use crate::dependencies::DependencyGetter;
use crate::logs::{LogOptions, LogSink};
use crate::networkkeys::NetworkKeys;

/// What an executor keeps for a task so that a later swarmd process can adopt it (for instance a
/// child process's PID and start time). The agent stores it in the worker database after `start`
/// and hands it back to [`Executor::controller`] after a restart.
pub type Checkpoint = Vec<u8>;

/// Grace period before a task that was asked to stop is killed, when its spec gives none.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What [`Controller::statuses`] answers: the runtime status and the port status.
pub type Statuses = (
    Result<Option<api::ContainerStatus>, ExecutorError>,
    Result<Option<api::PortStatus>, ExecutorError>,
);

/// Why an executor step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    /// The step cannot succeed (bad spec, missing image, ...). The message becomes the task
    /// status' `err`.
    #[error("{0}")]
    Fatal(String),
    /// The step may succeed if tried again later (engine briefly unavailable, ...).
    #[error("{0}")]
    Temporary(String),
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code (128 + signal for a process killed by a signal, as a shell reports it).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// A clean exit: code 0, no signal.
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }

    /// The task status error SwarmKit gives a task that did not exit cleanly.
    pub fn error_message(&self) -> Option<String> {
        (!self.success()).then(|| format!("task: non-zero exit ({})", self.code))
    }
}

/// Where a task's runtime object (container, process) stands, as the executor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeState {
    /// Nothing exists yet (or it was removed).
    Absent,
    /// Prepared (container created, ...) but not started.
    Created,
    /// Running.
    Running,
    /// It ran and ended.
    Exited(ExitStatus),
}

/// Runs the tasks of one node.
#[tonic::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// What this node offers: hostname, platform, resources, engine (version, labels, plugins).
    async fn describe(&self) -> Result<api::NodeDescription, ExecutorError>;

    /// A controller for `task`. `checkpoint` is what a controller of the same task returned from
    /// [`Controller::checkpoint`] in an earlier swarmd process, if anything; `dependencies`
    /// gives the secrets and configs the task references, and nothing else. A task this executor
    /// can never run (say, a process task without a command) is a [`ExecutorError::Fatal`] here.
    fn controller(
        &self,
        task: &api::Task,
        checkpoint: Option<Checkpoint>,
        dependencies: DependencyGetter,
    ) -> Result<Box<dyn Controller>, ExecutorError>;

    /// Removes what tasks this node no longer has left behind (say, their secret files after
    /// swarmd was killed); `known` are the tasks of the worker database. Called once as the agent
    /// starts, before any controller is made.
    fn remove_orphans(&self, _known: &HashSet<String>) {}

    /// The network bootstrap keys the managers sent (spec 5.9), for the data plane to secure
    /// gossip and overlay traffic with: called with the whole set each time a session message
    /// brings a key the agent did not hold. The executor may keep the set (its bytes are zeroed
    /// once the last holder drops it) but must never log or store the bytes. An error is logged
    /// and the set stays the agent's latest. The default ignores them.
    fn set_network_bootstrap_keys(&self, _keys: NetworkKeys) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// What this node's data plane announces when it asks the managers for its view of the swarm
    /// networks (`swarmkit.netplane.v1.NetworkPlane/Watch`); `None` (the default): the executor
    /// has no data plane and the agent does not ask.
    fn network_plane_request(&self) -> Option<api::netplane::WatchRequest> {
        None
    }

    /// The leader's latest view of the networks this node takes part in, for the data plane to
    /// match (called with each view the stream brings, in order). The default ignores it.
    fn set_network_view(&self, _view: api::netplane::NodeView) {}
}

/// Takes one task through its life on this node.
#[tonic::async_trait]
pub trait Controller: Send + Sync {
    /// Gets everything ready to start (image present, container created, ...).
    async fn prepare(&self) -> Result<(), ExecutorError>;
    /// Starts the task; a task already running (adopted) is left alone.
    async fn start(&self) -> Result<(), ExecutorError>;
    /// Waits until the task ends and says how. Cancel-safe.
    async fn wait(&self) -> Result<ExitStatus, ExecutorError>;
    /// Stops the task with its stop signal (SIGTERM by default), then kills it after the spec's
    /// grace period ([`DEFAULT_STOP_GRACE`] by default). Returns once it has ended.
    async fn shutdown(&self) -> Result<(), ExecutorError>;
    /// Kills the task at once.
    async fn terminate(&self) -> Result<(), ExecutorError>;
    /// Removes what the task left (container, files); stops it first if it still runs.
    async fn remove(&self) -> Result<(), ExecutorError>;
    /// The task reached a terminal state: drops what only a live task needs, its secret and
    /// config files (as moby drops a container's secrets when it stops), while what it left for
    /// inspection (container, log) stays until [`Controller::remove`]. Called once per runner,
    /// for a task resumed in a terminal state too.
    async fn release(&self) -> Result<(), ExecutorError> {
        Ok(())
    }
    /// Where the task stands now.
    async fn inspect(&self) -> Result<RuntimeState, ExecutorError>;
    /// What a task's status reports of its runtime object (SwarmKit's `ContainerStatus`): the
    /// container's ID where there is a container, the PID while it runs and the exit code once
    /// it ended; `None` while there is no runtime object.
    async fn runtime_status(&self) -> Result<Option<api::ContainerStatus>, ExecutorError>;
    /// The ports the task has on the node (SwarmKit's `PortStatus`): for Docker, the bindings of
    /// its published ports as the engine made them, which tells a port the engine picked.
    /// `None` (the default) when the executor binds none itself.
    async fn port_status(&self) -> Result<Option<api::PortStatus>, ExecutorError> {
        Ok(None)
    }
    /// [`Self::runtime_status`] and [`Self::port_status`] together, each with its own outcome,
    /// as the task runner reports them with every state; an executor that reads both from one
    /// look at its runtime object (Docker's inspect) answers both from it.
    async fn statuses(&self) -> Statuses {
        (self.runtime_status().await, self.port_status().await)
    }
    /// Sends the task's output to `sink` as `options` ask (SwarmKit's `ControllerLogs`): the
    /// lines written so far (from `since`, cut by `tail`), then with `follow` what the task
    /// writes until it ends. It returns when done, or with an error once the sink is closed.
    /// The default: this executor keeps no logs.
    async fn logs(&self, _options: &LogOptions, _sink: &LogSink) -> Result<(), ExecutorError> {
        Err(ExecutorError::Fatal(
            "logs are not supported by this executor".into(),
        ))
    }
    /// What a later swarmd process needs to adopt this task; `None` when nothing is needed.
    fn checkpoint(&self) -> Option<Checkpoint>;
}

/// The grace period and stop signal of `task`'s container spec (defaults: 10 s, `SIGTERM`).
pub fn stop_settings(task: &api::Task) -> (Duration, String) {
    let container = task.container();
    let grace = container
        .and_then(|c| c.stop_grace_period)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_STOP_GRACE);
    let signal = container
        .map(|c| c.stop_signal.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "SIGTERM".to_string());
    (grace, signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_messages_follow_swarmkit() {
        let ok = ExitStatus {
            code: 0,
            signal: None,
        };
        assert!(ok.success());
        assert_eq!(ok.error_message(), None);
        let bad = ExitStatus {
            code: 3,
            signal: None,
        };
        assert_eq!(
            bad.error_message().as_deref(),
            Some("task: non-zero exit (3)")
        );
        let killed = ExitStatus {
            code: 137,
            signal: Some(9),
        };
        assert!(!killed.success());
    }

    #[test]
    fn stop_settings_default_to_sigterm_and_ten_seconds() {
        let task = api::Task::default();
        assert_eq!(stop_settings(&task), (DEFAULT_STOP_GRACE, "SIGTERM".into()));
        let task = api::Task {
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(
                    api::ContainerSpec {
                        stop_signal: "SIGINT".into(),
                        stop_grace_period: Some(prost_types::Duration {
                            seconds: 2,
                            nanos: 0,
                        }),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            stop_settings(&task),
            (Duration::from_secs(2), "SIGINT".into())
        );
    }
}
