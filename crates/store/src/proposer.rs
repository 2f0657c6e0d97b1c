//! The seam between the store and replication (SwarmKit's `manager/state/proposer.go`): the store hands
//! the actions of a write transaction to a [`Proposer`] and waits; the proposer commits them and applies
//! them back through `MemoryStore::apply_committed`. The store never knows about raft itself.

use std::future::Future;
use std::pin::Pin;

/// What raft (or anything) implements so the store can replicate a write.
pub trait Proposer: Send + Sync + 'static {
    /// Replicates `actions` as one entry. Returns only after the actions are durably committed AND
    /// applied to this store through `MemoryStore::apply_committed` (the raft state machine calls that),
    /// with the log index they were committed at.
    fn propose(
        &self,
        actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>>;
}

/// Why a proposal was not committed. Messages are SwarmKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This manager is not the leader and knows of none.
    #[error(
        "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."
    )]
    NoLeader,
    /// Leadership was lost while the proposal was in flight.
    #[error("raft: failed to process the request: node lost leader status")]
    LostLeadership,
    /// The write's raft entry is larger than [`crate::MAX_TRANSACTION_BYTES`]: refused before it
    /// is proposed, so nothing changes.
    #[error("raft: raft message is too large and can't be sent")]
    TooLarge,
    /// Anything else, already worded for users.
    #[error("{0}")]
    Other(String),
}
