//! The store's error type. Display strings are SwarmKit's (`manager/state/store/memory.go`), because the
//! control API passes them on to users.

use crate::object::Kind;
use crate::proposer::ProposeError;

/// Why a store read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object of `kind` has this ID.
    #[error("object does not exist")]
    NotFound {
        /// Kind of the missing object.
        kind: Kind,
        /// ID that was looked up.
        id: String,
    },
    /// An object of `kind` with this ID exists already.
    #[error("object already exists")]
    Exists {
        /// Kind of the object.
        kind: Kind,
        /// The duplicate ID.
        id: String,
    },
    /// Another object of `kind` already has this name (case-insensitively).
    #[error("name conflicts with an existing object")]
    NameConflict {
        /// Kind of the object.
        kind: Kind,
        /// The conflicting name, as given.
        name: String,
    },
    /// The update was based on an older version of the object than the stored one.
    #[error("update out of sequence")]
    SequenceConflict {
        /// Kind of the object.
        kind: Kind,
        /// ID of the object.
        id: String,
    },
    /// The write could not be replicated.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A watch asked to resume from a version older than the history kept (SwarmKit's raft log
    /// answers the same when the entries are compacted away).
    #[error("requested index is unavailable due to compaction")]
    Compacted {
        /// The version asked for.
        version: u64,
        /// The oldest version a watch can resume from.
        oldest: u64,
    },
    /// A watch asked to resume from a version the store has not reached.
    #[error("versions are out of order")]
    VersionsOutOfOrder,
    /// The request itself is malformed (an object without ID, an action without target, ...).
    #[error("{0}")]
    Invalid(String),
}
