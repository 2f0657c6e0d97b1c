//! An [`agent::Executor`] that runs each task's container spec `command` + `args` as a plain
//! child process, for nodes with no Docker engine (our addition beyond SwarmKit). The spec's
//! `env`, `dir`, `user`, `stop_signal` and `stop_grace_period` apply; the image is not pulled
//! or used (it stays in the spec as a label only), and mounts and resource limits are not
//! applied. The task runner, task states and the worker database are the agent's.
//!
//! With a data plane ([`ProcessExecutor::with_data_plane`]), a task on swarm networks runs in a
//! network namespace of its own (`netplane`'s sandbox: a veth on each network's bridge with its
//! allocated address, the first network's gateway as its route and nameserver); a network the
//! node cannot set up rejects the task with the reason. Tasks without networks, and every task
//! of an executor without a data plane, stay on the host's network. A HOST-mode published port
//! is passed to the task as the port it must listen on, [`PORT_ENV_PREFIX`]`<target>_<PROTO>`:
//! on the host's network the published port (`SWARM_PORT_80_TCP=9090`), there is no
//! translation; in a sandbox the target port (`SWARM_PORT_80_TCP=80`), and the data plane
//! forwards the node's published port to the task's address and target port from its start
//! until its process ends (`netplane::Dataplane::publish_host_ports`), as Docker maps a
//! container's. The scheduler keeps one task per published port per node, so two such tasks
//! never share one; a TCP or UDP one that something else on the node holds fails the task at
//! start, sandbox or not ([`Error::HostPortInUse`]).
//!
//! Secrets and configs become files in the task's directory ([`agent::TaskFiles`], on a tmpfs
//! when the node has one), laid out as a container would see them under a task root that the
//! process is told in its environment: [`TASK_ROOT_ENV`] names that root and
//! [`SECRETS_DIR_ENV`] its `run/secrets`, where a secret with a relative target is.
//!
//! [`ProcessExecutor`] describes the node and builds one [`ProcessController`] per task (in
//! `controller.rs`); `signal.rs`, `user.rs` and `procfs.rs` parse stop signals, users and /proc.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use agent::{Checkpoint, Controller, DependencyGetter, Executor, ExecutorError, TaskFiles};

mod controller;
pub mod output;
pub mod procfs;
pub mod signal;
pub mod user;

pub use controller::{Launched, Probe, ProcessController, UNKNOWN_EXIT_CODE};

/// The engine label every process node reports, so that placement constraints can pick such
/// nodes (`engine.labels.executor==process`).
pub const ENGINE_LABEL: (&str, &str) = ("executor", "process");

/// The environment variable naming a task's root: its secret and config files are laid out
/// under it as a container would see them under `/`.
pub const TASK_ROOT_ENV: &str = "SWARM_TASK_ROOT";

/// The environment variable naming `<task root>/run/secrets`, where a secret with a relative
/// target is.
pub const SECRETS_DIR_ENV: &str = "SWARM_SECRETS_DIR";

/// Prefix of the environment variables passing a task its HOST-mode published ports:
/// `SWARM_PORT_<target port>_<TCP|UDP|SCTP>=<port to listen on>`, the published port on the
/// host's network, the target port in a sandbox (the node forwards the published one to it). A
/// port with no published port (the engine would pick one) gets none.
pub const PORT_ENV_PREFIX: &str = "SWARM_PORT_";

/// Why a step of the process executor failed; turned into an [`ExecutorError`] in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task has no container spec to take a command from.
    #[error("process executor: the task has no container spec; it needs one with a command")]
    NoContainerSpec,
    /// The container spec has no command.
    #[error("process executor: the task has no command; it needs a command to run as a process")]
    NoCommand,
    /// The task ID cannot name a log file.
    #[error("process executor: task id {0:?} cannot name a log file")]
    InvalidTaskId(String),
    /// The stop signal names no signal.
    #[error("process executor: invalid stop signal {0:?}")]
    InvalidSignal(String),
    /// The user is not in /etc/passwd.
    #[error("process executor: unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group is not in /etc/group.
    #[error("process executor: unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// The working directory is not a directory.
    #[error("process executor: working directory {0} is not a directory")]
    InvalidDir(PathBuf),
    /// The checkpoint is not one this crate wrote.
    #[error("process executor: unreadable checkpoint of task {task}: {reason}")]
    InvalidCheckpoint {
        /// Task ID.
        task: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `wait` on a task that was never started.
    #[error("process executor: task {0} was not started")]
    NotStarted(String),
    /// A HOST-mode published port of the task is taken on this node.
    #[error("process executor: host port {port}/{protocol} is already in use on this node")]
    HostPortInUse {
        /// The published port.
        port: u16,
        /// `tcp` or `udp`.
        protocol: String,
    },
    /// The program could not be started.
    #[error("process executor: starting {program}: {source}")]
    Spawn {
        /// `command[0]`.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// The task's networks cannot be set up on this node.
    #[error("process executor: {0}")]
    Network(String),
    /// The task's secret and config files could not be written.
    #[error("process executor: {0}")]
    TaskFiles(ExecutorError),
    /// Some other I/O failed (log files, /proc, signals).
    #[error("process executor: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl From<Error> for ExecutorError {
    fn from(e: Error) -> Self {
        let temporary = match &e {
            Error::TaskFiles(inner) => matches!(inner, ExecutorError::Temporary(_)),
            // A program that is missing or not executable stays so; running out of processes or
            // memory may pass.
            Error::Spawn { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::OutOfMemory
            ),
            Error::Io { .. } => true,
            _ => false,
        };
        if temporary {
            ExecutorError::Temporary(e.to_string())
        } else {
            ExecutorError::Fatal(e.to_string())
        }
    }
}

/// Runs tasks as child processes of this swarmd, with their output in
/// `<state_dir>/process/<task id>.log`.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    /// `<state_dir>/process`: one log file per task (mode 0700, files 0600).
    log_dir: PathBuf,
    /// Where tasks' secret and config files go.
    files: Arc<TaskFiles>,
    /// The hostname to report instead of the OS's (`--hostname`).
    hostname_override: Option<String>,
    /// The node's data plane, or why it could not start; `None`: tasks stay on the host's
    /// network.
    plane: Option<DataPlane>,
    /// The generic resources the node advertises (`--generic-node-resources`).
    generic: Vec<api::GenericResource>,
}

/// The node's data plane as the executor holds it: running, or why it is not.
pub type DataPlane = Result<Arc<netplane::Dataplane>, String>;

impl ProcessExecutor {
    /// An executor keeping its logs under `state_dir`, tasks' secret and config files in
    /// `files`, and reporting `hostname_override`, if given, as the node's hostname.
    pub fn new(
        state_dir: PathBuf,
        files: Arc<TaskFiles>,
        hostname_override: Option<String>,
    ) -> Self {
        ProcessExecutor {
            log_dir: state_dir.join("process"),
            files,
            hostname_override,
            plane: None,
            generic: Vec::new(),
        }
    }

    /// The same executor advertising `generic` in its node description.
    pub fn with_generic_resources(mut self, generic: Vec<api::GenericResource>) -> Self {
        self.generic = generic;
        self
    }

    /// The same executor running tasks on swarm networks in their own namespaces through
    /// `plane`; when it is an error, such tasks are rejected with it.
    pub fn with_data_plane(mut self, plane: DataPlane) -> Self {
        self.plane = Some(plane);
        self
    }
}

#[tonic::async_trait]
impl Executor for ProcessExecutor {
    /// Hostname (the override or the kernel's), platform as Rust names it (`linux`, `x86_64` or
    /// `aarch64`, which the scheduler's platform filter takes for `amd64`/`arm64`), CPUs × 10⁹
    /// nano CPUs, MemTotal, and an engine with no version, the label [`ENGINE_LABEL`] and one
    /// plugin, the `overlay` network driver: tasks on swarm (overlay) networks, ingress included,
    /// are placed here and run in their data plane sandbox. No volume or other network plugin is
    /// reported, which keeps tasks that need one off this node.
    async fn describe(&self) -> Result<api::NodeDescription, ExecutorError> {
        let hostname = match &self.hostname_override {
            Some(name) => name.clone(),
            None => procfs::hostname().map_err(Error::io("reading the hostname"))?,
        };
        let cpus = std::thread::available_parallelism()
            .map_err(Error::io("counting CPUs"))?
            .get();
        let memory_bytes = procfs::memory_total().map_err(Error::io("reading /proc/meminfo"))?;
        Ok(api::NodeDescription {
            hostname,
            platform: Some(api::Platform {
                architecture: std::env::consts::ARCH.to_string(),
                os: std::env::consts::OS.to_string(),
            }),
            resources: Some(api::Resources {
                nano_cpus: i64::try_from(cpus).unwrap_or(i64::MAX / 1_000_000_000) * 1_000_000_000,
                memory_bytes,
                generic: self.generic.clone(),
            }),
            engine: Some(api::EngineDescription {
                engine_version: String::new(),
                labels: BTreeMap::from([(ENGINE_LABEL.0.to_string(), ENGINE_LABEL.1.to_string())]),
                plugins: vec![api::PluginDescription {
                    r#type: "Network".into(),
                    name: "overlay".into(),
                }],
            }),
            ..Default::default()
        })
    }

    fn controller(
        &self,
        task: &api::Task,
        checkpoint: Option<Checkpoint>,
        dependencies: DependencyGetter,
    ) -> Result<Box<dyn Controller>, ExecutorError> {
        let files = self
            .files
            .for_task(task, dependencies)
            .map_err(Error::TaskFiles)?;
        let controller = ProcessController::new(task, &self.log_dir, checkpoint.as_deref(), files)?
            .with_data_plane(self.plane.clone());
        Ok(Box::new(controller))
    }

    fn remove_orphans(&self, known: &HashSet<String>) {
        self.files.remove_orphans(known);
    }

    fn network_plane_request(&self) -> Option<api::netplane::WatchRequest> {
        match &self.plane {
            Some(Ok(plane)) => Some(plane.watch_request()),
            _ => None,
        }
    }

    fn set_network_view(&self, view: api::netplane::NodeView) {
        if let Some(Ok(plane)) = &self.plane {
            plane.set_view(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_before_a_spawn_are_fatal_and_io_is_temporary() {
        assert!(matches!(
            ExecutorError::from(Error::NoCommand),
            ExecutorError::Fatal(m) if m.contains("needs a command")
        ));
        let missing = Error::Spawn {
            program: "/nope".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert!(matches!(
            ExecutorError::from(missing),
            ExecutorError::Fatal(_)
        ));
        let log = Error::Io {
            what: "opening the log".into(),
            source: io::ErrorKind::StorageFull.into(),
        };
        assert!(matches!(
            ExecutorError::from(log),
            ExecutorError::Temporary(_)
        ));
    }
}
