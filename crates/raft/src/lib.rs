//! openraft glue for a manager: the redb log storage (`log_store`), the state machine over the
//! `MemoryStore` with snapshots (`state_machine`), the peer network seam (`network`), and
//! `RaftNode`, which runs one member and implements `store::Proposer`, and the transport
//! (`transport` serves peers' RPCs as `swarmkit.raftrpc.v1.RaftTransport`, `network` calls
//! them).

// openraft's `StorageError<u64>` is 224 bytes and every storage trait method returns it, so
// clippy's `result_large_err` fires throughout; the trait signatures are openraft's, not ours.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]

use std::path::PathBuf;

mod codec;
mod compaction;
mod config;
mod db;
mod election;
mod encryption;
mod force;
mod log_store;
mod membership;
mod network;
mod node;
mod read;
mod state_machine;
mod transport;
mod types;

pub use config::RaftConfig;
pub use db::{DB_FILE, LogBounds};
pub use encryption::{DataKey, DataKeys, DekStore, KeySource, SealError};
pub use force::ForcedCluster;
pub use membership::{ERR_ID_REMOVED, ERR_LOSS_OF_QUORUM, ERR_MEMBER_REMOVED, Reachability};
pub use network::{Dialer, NetworkFactory, PeerClient};
pub use node::{Member, RaftNode};
pub use transport::TransportService;
pub use types::{
    Entry, LogId, NodeId, RaftMetrics, RaftRequest, RaftResponse, RaftServerMetrics, StorageError,
    TypeConfig,
};

/// Errors of starting and running a raft member.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// A `RaftConfig` field is out of range.
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),
    /// The raft directory or database file could not be created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The raft database could not be opened, read or written.
    #[error("raft database {}: {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// The raft database holds something it should not.
    #[error("raft database {}: {what}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A log or snapshot operation failed.
    #[error("raft storage: {0}")]
    Storage(Box<StorageError>),
    /// openraft refused or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A bounded wait ran out.
    #[error("raft: timed out: {0}")]
    Timeout(String),
    /// `--force-new-cluster` cannot be done on this raft directory.
    #[error("cannot force a new cluster: {0}")]
    ForceNewCluster(String),
    /// The member was shut down.
    #[error("raft: node is stopped")]
    Stopped,
    /// The raft core stopped on its own while the member was running: a storage error (disk
    /// full, read-only or corrupt raft database) or a panic. The member cannot go on.
    #[error("raft stopped: {why} (raft database {})", path.display())]
    Fatal {
        /// The raft database file.
        path: PathBuf,
        /// openraft's fatal error.
        why: String,
    },
}

impl RaftError {
    fn storage(e: StorageError) -> Self {
        RaftError::Storage(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use store::MemoryStore;

    use crate::log_store::LogStore;
    use crate::state_machine::StateMachine;
    use crate::types::{StorageError, TypeConfig};

    /// A fresh raft database in a temporary directory per suite case.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = crate::db::open(&dir.path().join("raft")).expect("open raft database");
            let ring = crate::encryption::tests::ring();
            let sm = StateMachine::open(db.clone(), MemoryStore::new(None), ring.clone())?;
            Ok((dir, LogStore::new(db, ring), sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machine. It builds its own
    /// runtime, so it runs from a plain test.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }
}
