//! One swarmd node: lays out the state directory, loads or creates its certificates, and runs
//! the manager (and, with the agent issue, the agent). Flags are parsed in `bin/swarmd`; this
//! crate takes a plain [`NodeConfig`].

mod agent;
mod autolock;
mod config;
mod executor;
mod node;
mod renewal;
mod roles;
mod state;

pub use config::{NodeConfig, UnlockKey};
pub use executor::ExecutorKind;
pub use node::Node;
pub use state::{ManagerPeer, StateDir};

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The state directory could not be read or written.
    #[error("state directory {path}: {source}")]
    State {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The remote API's listener could not be set up.
    #[error("failed to listen on remote API address {addr} (--listen-remote-api): {source}")]
    ListenRemote {
        /// The address asked for.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Certificates could not be created or loaded.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The manager failed.
    #[error(transparent)]
    Manager(#[from] manager::ManagerError),
    /// One of the node's tasks (agent, certificate renewal, role changes) ended while it ran.
    #[error("node {0}")]
    Task(manager::tasks::TaskEnded),
}
