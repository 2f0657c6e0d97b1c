//! How large one write may be, as SwarmKit's store and raft bound it: the raft entry of a write (the
//! encoded `api::InternalRaftRequest`, request ID and store actions) may hold at most
//! [`MAX_TRANSACTION_BYTES`]; a larger one is refused before it reaches raft
//! ([`crate::ProposeError::TooLarge`]). Batched writes ([`crate::MemoryStore::batch`]) end a
//! transaction at [`MAX_CHANGES_PER_TRANSACTION`] changes or [`BATCH_BYTES`] so that a batch of
//! many objects is split rather than refused.

use prost::Message;

/// Largest raft entry of one write, in bytes (SwarmKit's `store.MaxTransactionBytes`, 1.5 MiB).
pub const MAX_TRANSACTION_BYTES: usize = 3 << 19;

/// Changes after which a batch starts a new transaction (SwarmKit's `MaxChangesPerTransaction`).
pub const MAX_CHANGES_PER_TRANSACTION: usize = 200;

/// Size after which a batch starts a new transaction: three quarters of the limit, as SwarmKit's
/// `Batch`.
pub const BATCH_BYTES: usize = MAX_TRANSACTION_BYTES / 4 * 3;

/// Encoded size of the request ID field of a raft entry. The raft crate draws IDs with the top
/// bit set, so the field always takes its widest form (key and a 10-byte varint) and an entry's
/// size is known before its ID is drawn.
pub const REQUEST_ID_BYTES: usize = 11;

/// Encoded size of a raft entry (`InternalRaftRequest`) made of `actions`.
pub fn proposal_len(actions: &[api::StoreAction]) -> usize {
    REQUEST_ID_BYTES
        + actions
            .iter()
            .map(|a| framed_len(a.encoded_len()))
            .sum::<usize>()
}

/// Bytes that writing an object of `object_len` encoded bytes adds to a raft entry: for a batch
/// that must decide whether an object still fits before writing it.
pub(crate) fn write_len(object_len: usize) -> usize {
    // The action's target: a one-byte key, the length and the object.
    let target = 1 + prost::encoding::encoded_len_varint(object_len as u64) + object_len;
    framed_len(2 + target)
}

/// Encoded size of the store action that writes `object` (`StoreAction { action, target }`): the
/// `Object` wrapper and the action's target are both a one-byte key, a length and the object.
pub(crate) fn action_len(object: &api::Object) -> usize {
    // The action field: a one-byte key and a one-byte enum value (never 0 in a proposal).
    2 + object.encoded_len()
}

/// Size of an action inside the entry: its key, its length and its bytes.
pub(crate) fn framed_len(action_len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(action_len as u64) + action_len
}
