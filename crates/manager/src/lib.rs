//! The manager role: the control API, the first-start bootstrap of cluster objects, the root CA
//! rotation and network key subsystems, and the lifecycle that serves them over the control
//! socket and the remote port. It owns no I/O format of its own: the store is `store`,
//! replication is `raft`, certificates are `ca`.

pub mod authz;
pub mod bootstrap;
pub mod caserver;
pub mod collector;
pub mod controlapi;
mod health;
pub mod keymanager;
pub mod leader;
pub mod logbroker;
mod manager;
pub mod msgsize;
pub mod netplane;
pub mod proxy;
pub mod raftjoin;
pub mod rolemanager;
pub mod rootrotation;
mod server;
pub mod signer;
pub mod tasks;
pub mod watchapi;

#[cfg(test)]
mod dispatcher_tests;
#[cfg(test)]
mod proxy_tests;
#[cfg(test)]
mod security_tests;

pub use manager::{Manager, ManagerConfig, leader_subsystems};

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Raft could not start.
    #[error(transparent)]
    Raft(#[from] raft::RaftError),
    /// A store write failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS material was unusable.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The control socket could not be set up.
    #[error(
        "failed to listen on control API socket {} (--listen-control-api): {source}",
        .path.display()
    )]
    ControlSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The running manager failed (see [`Manager::failed`]).
    #[error(transparent)]
    Failed(#[from] ManagerFailure),
}

/// Why a running manager cannot go on ([`Manager::failed`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManagerFailure {
    /// Its raft member stopped on its own: a storage error (disk full, read-only or corrupt raft
    /// database) or a panic; raft's own message, naming the database.
    #[error("{0}")]
    Raft(String),
    /// One of its servers or tasks ended.
    #[error("manager {0}")]
    Task(#[from] tasks::TaskEnded),
}
