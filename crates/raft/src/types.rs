//! The openraft type configuration: what a log entry carries (`RaftRequest`) and what applying one
//! answers (`RaftResponse`). Encoding of the store actions inside a request lives here too; the
//! log layout on disk is `log_store`'s business.

use std::io::Cursor;

use prost::Message;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Raft types of the manager cluster: u64 raft IDs (random per member, as SwarmKit's),
    /// `BasicNode` carrying the member's advertised address, tokio runtime.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Raft member ID.
pub type NodeId = u64;
/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log ID (term, leader, index) of this cluster.
pub type LogId = openraft::LogId<NodeId>;
/// Storage error of this cluster.
pub type StorageError = openraft::StorageError<NodeId>;
/// Metrics published by the raft core.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
/// The part of [`RaftMetrics`] about this member's role: vote, state, leader, membership.
pub type RaftServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, openraft::BasicNode>;

/// The application payload of a normal log entry: a prost-encoded `api::InternalRaftRequest`.
/// Kept as bytes so that the entry crosses the network and the disk in the same form that
/// SwarmKit's raft log uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest {
    /// Encoded `api::InternalRaftRequest { id, action }`.
    pub payload: Vec<u8>,
}

impl RaftRequest {
    /// Encodes store actions under a random request ID. The ID's top bit is set, so its field
    /// always takes [`store::REQUEST_ID_BYTES`] and the entry is exactly
    /// [`store::proposal_len`] bytes.
    pub fn from_actions(actions: Vec<api::StoreAction>) -> Self {
        let req = api::InternalRaftRequest {
            id: rand::random::<u64>() | 1 << 63,
            action: actions,
        };
        RaftRequest {
            payload: req.encode_to_vec(),
        }
    }

    /// Decodes the payload back into the internal request.
    pub fn decode(&self) -> Result<api::InternalRaftRequest, prost::DecodeError> {
        api::InternalRaftRequest::decode(self.payload.as_slice())
    }
}

/// What applying an entry answers: the log index it was committed at (the store's version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftResponse {
    /// Raft log index of the applied entry.
    pub index: u64,
}
