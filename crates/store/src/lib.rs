//! The manager's in-memory object store, after SwarmKit's `manager/state/store`: one indexed table per
//! object kind, consistent read views, serialised write transactions that turn into `api::StoreAction`s,
//! and watch streams of the applied changes. Replication is not done here: writes go through a
//! [`Proposer`] (implemented by the `raft` crate), which applies them back with
//! [`MemoryStore::apply_committed`] once committed.

#![forbid(unsafe_code)]

mod by;
mod error;
mod hash;
mod history;
mod limits;
mod memory;
mod object;
mod proposer;
mod shared;
mod table;
mod tx;
mod watch;

pub use by::By;
pub use error::StoreError;
pub use hash::IdHash;
pub use history::HISTORY_EVENTS;
pub use limits::{
    BATCH_BYTES, MAX_CHANGES_PER_TRANSACTION, MAX_TRANSACTION_BYTES, REQUEST_ID_BYTES, proposal_len,
};
pub use memory::{LINGER, MemoryStore};
pub use object::{Kind, StoreObject};
pub use proposer::{ProposeError, Proposer};
pub use shared::Shared;
pub use tx::{ReadTx, Tx};

/// The version a client names for an object it read, as the store compares it: the version the
/// store gives queued writes of a group commit is no version a client can have read, so it
/// becomes 0, which no stored object has, and the write is out of sequence.
pub fn client_version(version: api::Version) -> api::Version {
    if version == tx::PENDING {
        api::Version::default()
    } else {
        version
    }
}
pub use watch::{Event, EventKind, ObjectRef, Selector, WatchFilter, Watcher};

#[cfg(test)]
mod tests;
