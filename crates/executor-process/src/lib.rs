//! An [`agent::Executor`] that runs each task's container spec `command` + `args` as a plain
//! child process, for nodes with no Docker engine (our addition beyond SwarmKit). The spec's
//! `env`, `dir`, `user`, `stop_signal` and `stop_grace_period` apply; the image is not pulled
//! or used (it stays in the spec as a label only), and networks, mounts, secrets and resource
//! limits are not applied. The task runner, task states and the worker database are the agent's.
//!
//! `signal.rs`, `user.rs` and `procfs.rs` parse stop signals, users and /proc for the executor.

#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use agent::ExecutorError;

pub mod procfs;
pub mod signal;
pub mod user;

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
    /// The program could not be started.
    #[error("process executor: starting {program}: {source}")]
    Spawn {
        /// command[0].
        program: String,
        /// Why.
        source: io::Error,
    },
    /// Some other I/O failed (log files, /proc, signals).
    #[error("process executor: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl From<Error> for ExecutorError {
    fn from(e: Error) -> Self {
        let temporary = match &e {
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
