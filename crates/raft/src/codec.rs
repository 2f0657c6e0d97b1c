//! The raft transport's payloads: openraft's RPCs and their answers as protobuf messages
//! (prost), so that an entry's request bytes cross the network as they are instead of as a
//! JSON list of numbers. Votes and log IDs are plain fields; the rare, small or structured
//! parts (a membership, a snapshot's metadata, an error) stay serde_json inside a bytes field.
//! `RaftPayload.data` (proto/raftrpc.proto) carries one of these messages.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, Vote};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, NodeId, RaftRequest, TypeConfig};

/// A transport payload that does not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Not the protobuf message expected.
    #[error("malformed raft message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A JSON part does not parse.
    #[error("malformed raft message: {0}")]
    Json(#[from] serde_json::Error),
    /// A required field is absent.
    #[error("malformed raft message: no {0}")]
    Missing(&'static str),
}

/// An openraft message as the transport carries it.
pub(crate) trait Wire: Sized {
    /// The protobuf bytes of `self` (consumed: entry bytes move, not copied).
    fn into_wire(self) -> Vec<u8>;
    /// `self` back from [`Wire::into_wire`]'s bytes.
    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError>;
}

#[derive(Clone, PartialEq, Message)]
struct PbVote {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    node_id: u64,
    #[prost(bool, tag = "3")]
    committed: bool,
}

#[derive(Clone, PartialEq, Message)]
struct PbLogId {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    node_id: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
}

/// One log entry; no payload is a blank entry.
#[derive(Clone, PartialEq, Message)]
struct PbEntry {
    #[prost(message, optional, tag = "1")]
    log_id: Option<PbLogId>,
    #[prost(oneof = "PbEntryPayload", tags = "2, 3")]
    payload: Option<PbEntryPayload>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbEntryPayload {
    /// The request bytes (a prost `InternalRaftRequest`), as stored.
    #[prost(bytes, tag = "2")]
    Normal(Vec<u8>),
    /// The membership, serde_json.
    #[prost(bytes, tag = "3")]
    Membership(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
struct PbAppendEntries {
    #[prost(message, optional, tag = "1")]
    vote: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    prev_log_id: Option<PbLogId>,
    #[prost(message, repeated, tag = "3")]
    entries: Vec<PbEntry>,
    #[prost(message, optional, tag = "4")]
    leader_commit: Option<PbLogId>,
}

/// `AppendEntriesResponse` kinds.
const APPEND_SUCCESS: u32 = 1;
const APPEND_PARTIAL: u32 = 2;
const APPEND_CONFLICT: u32 = 3;
const APPEND_HIGHER_VOTE: u32 = 4;

/// The answer to AppendEntries: `error` (serde_json of openraft's `RaftError`) if the member
/// failed, else the response of `kind` with its field.
#[derive(Clone, PartialEq, Message)]
struct PbAppendAnswer {
    #[prost(uint32, tag = "1")]
    kind: u32,
    /// Of a partial success.
    #[prost(message, optional, tag = "2")]
    matching: Option<PbLogId>,
    /// Of a refusal for a higher vote.
    #[prost(message, optional, tag = "3")]
    vote: Option<PbVote>,
    #[prost(bytes, tag = "15")]
    error: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct PbVoteRequest {
    #[prost(message, optional, tag = "1")]
    vote: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    last_log_id: Option<PbLogId>,
}

#[derive(Clone, PartialEq, Message)]
struct PbVoteAnswer {
    #[prost(message, optional, tag = "1")]
    vote: Option<PbVote>,
    #[prost(bool, tag = "2")]
    granted: bool,
    #[prost(message, optional, tag = "3")]
    last_log_id: Option<PbLogId>,
    #[prost(bytes, tag = "15")]
    error: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct PbInstallSnapshot {
    #[prost(message, optional, tag = "1")]
    vote: Option<PbVote>,
    /// The snapshot's metadata, serde_json.
    #[prost(bytes, tag = "2")]
    meta: Vec<u8>,
    #[prost(uint64, tag = "3")]
    offset: u64,
    #[prost(bytes, tag = "4")]
    data: Vec<u8>,
    #[prost(bool, tag = "5")]
    done: bool,
}

#[derive(Clone, PartialEq, Message)]
struct PbInstallSnapshotAnswer {
    #[prost(message, optional, tag = "1")]
    vote: Option<PbVote>,
    #[prost(bytes, tag = "15")]
    error: Vec<u8>,
}

fn vote_to(v: Vote<NodeId>) -> PbVote {
    PbVote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

fn vote_from(v: Option<PbVote>) -> Result<Vote<NodeId>, CodecError> {
    let v = v.ok_or(CodecError::Missing("vote"))?;
    let mut vote = Vote::new(v.term, v.node_id);
    vote.committed = v.committed;
    Ok(vote)
}

fn log_id_to(l: Option<LogId>) -> Option<PbLogId> {
    l.map(|l| PbLogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    })
}

fn log_id_from(l: Option<PbLogId>) -> Option<LogId> {
    l.map(|l| LogId::new(CommittedLeaderId::new(l.term, l.node_id), l.index))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("openraft's serde types always serialize")
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn entry_to(e: Entry) -> PbEntry {
    let payload = match e.payload {
        EntryPayload::Blank => None,
        EntryPayload::Normal(req) => Some(PbEntryPayload::Normal(req.payload)),
        EntryPayload::Membership(m) => Some(PbEntryPayload::Membership(json(&m))),
    };
    PbEntry {
        log_id: log_id_to(Some(e.log_id)),
        payload,
    }
}

fn entry_from(e: PbEntry) -> Result<Entry, CodecError> {
    let payload = match e.payload {
        None => EntryPayload::Blank,
        Some(PbEntryPayload::Normal(payload)) => EntryPayload::Normal(RaftRequest { payload }),
        Some(PbEntryPayload::Membership(m)) => EntryPayload::Membership(from_json(&m)?),
    };
    Ok(Entry {
        log_id: log_id_from(e.log_id).ok_or(CodecError::Missing("entry log id"))?,
        payload,
    })
}

impl Wire for AppendEntriesRequest<TypeConfig> {
    fn into_wire(self) -> Vec<u8> {
        PbAppendEntries {
            vote: Some(vote_to(self.vote)),
            prev_log_id: log_id_to(self.prev_log_id),
            entries: self.entries.into_iter().map(entry_to).collect(),
            leader_commit: log_id_to(self.leader_commit),
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbAppendEntries::decode(bytes)?;
        Ok(AppendEntriesRequest {
            vote: vote_from(m.vote)?,
            prev_log_id: log_id_from(m.prev_log_id),
            entries: m
                .entries
                .into_iter()
                .map(entry_from)
                .collect::<Result<_, _>>()?,
            leader_commit: log_id_from(m.leader_commit),
        })
    }
}

impl Wire for Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
    fn into_wire(self) -> Vec<u8> {
        let mut m = PbAppendAnswer::default();
        match self {
            Ok(AppendEntriesResponse::Success) => m.kind = APPEND_SUCCESS,
            Ok(AppendEntriesResponse::PartialSuccess(l)) => {
                m.kind = APPEND_PARTIAL;
                m.matching = log_id_to(l);
            }
            Ok(AppendEntriesResponse::Conflict) => m.kind = APPEND_CONFLICT,
            Ok(AppendEntriesResponse::HigherVote(v)) => {
                m.kind = APPEND_HIGHER_VOTE;
                m.vote = Some(vote_to(v));
            }
            Err(e) => m.error = json(&e),
        }
        m.encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbAppendAnswer::decode(bytes)?;
        if !m.error.is_empty() {
            return Ok(Err(from_json(&m.error)?));
        }
        Ok(Ok(match m.kind {
            APPEND_SUCCESS => AppendEntriesResponse::Success,
            APPEND_PARTIAL => AppendEntriesResponse::PartialSuccess(log_id_from(m.matching)),
            APPEND_CONFLICT => AppendEntriesResponse::Conflict,
            APPEND_HIGHER_VOTE => AppendEntriesResponse::HigherVote(vote_from(m.vote)?),
            _ => return Err(CodecError::Missing("append entries answer kind")),
        }))
    }
}

impl Wire for VoteRequest<NodeId> {
    fn into_wire(self) -> Vec<u8> {
        PbVoteRequest {
            vote: Some(vote_to(self.vote)),
            last_log_id: log_id_to(self.last_log_id),
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbVoteRequest::decode(bytes)?;
        Ok(VoteRequest::new(
            vote_from(m.vote)?,
            log_id_from(m.last_log_id),
        ))
    }
}

impl Wire for Result<VoteResponse<NodeId>, RaftError<NodeId>> {
    fn into_wire(self) -> Vec<u8> {
        match self {
            Ok(r) => PbVoteAnswer {
                vote: Some(vote_to(r.vote)),
                granted: r.vote_granted,
                last_log_id: log_id_to(r.last_log_id),
                error: Vec::new(),
            },
            Err(e) => PbVoteAnswer {
                error: json(&e),
                ..Default::default()
            },
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbVoteAnswer::decode(bytes)?;
        if !m.error.is_empty() {
            return Ok(Err(from_json(&m.error)?));
        }
        Ok(Ok(VoteResponse {
            vote: vote_from(m.vote)?,
            vote_granted: m.granted,
            last_log_id: log_id_from(m.last_log_id),
        }))
    }
}

impl Wire for InstallSnapshotRequest<TypeConfig> {
    fn into_wire(self) -> Vec<u8> {
        PbInstallSnapshot {
            vote: Some(vote_to(self.vote)),
            meta: json(&self.meta),
            offset: self.offset,
            data: self.data,
            done: self.done,
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbInstallSnapshot::decode(bytes)?;
        Ok(InstallSnapshotRequest {
            vote: vote_from(m.vote)?,
            meta: from_json(&m.meta)?,
            offset: m.offset,
            data: m.data,
            done: m.done,
        })
    }
}

impl Wire for Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
    fn into_wire(self) -> Vec<u8> {
        match self {
            Ok(r) => PbInstallSnapshotAnswer {
                vote: Some(vote_to(r.vote)),
                error: Vec::new(),
            },
            Err(e) => PbInstallSnapshotAnswer {
                vote: None,
                error: json(&e),
            },
        }
        .encode_to_vec()
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, CodecError> {
        let m = PbInstallSnapshotAnswer::decode(bytes)?;
        if !m.error.is_empty() {
            return Ok(Err(from_json(&m.error)?));
        }
        Ok(Ok(InstallSnapshotResponse {
            vote: vote_from(m.vote)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::error::{Fatal, SnapshotMismatch};
    use openraft::{BasicNode, Membership, SnapshotMeta, SnapshotSegmentId, StoredMembership};

    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// Encodes each of `make()`'s values and checks it decodes equal to the same value made
    /// afresh (openraft's answers are not `Clone`).
    fn assert_round_trips<T: Wire + PartialEq + std::fmt::Debug>(make: impl Fn() -> Vec<T>) {
        for (value, want) in make().into_iter().zip(make()) {
            let back = T::from_wire(&value.into_wire()).expect("decodes");
            assert_eq!(back, want);
        }
    }

    #[test]
    fn append_entries_round_trip_with_every_entry_kind_and_raw_request_bytes() {
        let members = BTreeMap::from([
            (0xa1u64, BasicNode::new("10.0.0.1:4242")),
            (0xb2, BasicNode::new("10.0.0.2:4242")),
        ]);
        let payload: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(7, 0xa1),
            prev_log_id: Some(log_id(6, 0xb2, 41)),
            entries: vec![
                Entry {
                    log_id: log_id(7, 0xa1, 42),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(7, 0xa1, 43),
                    payload: EntryPayload::Normal(RaftRequest {
                        payload: payload.clone(),
                    }),
                },
                Entry {
                    log_id: log_id(7, 0xa1, 44),
                    payload: EntryPayload::Membership(Membership::from(members)),
                },
            ],
            leader_commit: Some(log_id(7, 0xa1, 42)),
        };
        let bytes = rpc.clone().into_wire();
        // The request bytes travel as they are: the message is little more than the payload.
        assert!(bytes.len() < payload.len() + 400, "{} bytes", bytes.len());
        let back = AppendEntriesRequest::<TypeConfig>::from_wire(&bytes).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{rpc:?}"));
        // A heartbeat: no previous log, no entries, nothing committed.
        let heartbeat = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(1, 2),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let back = AppendEntriesRequest::<TypeConfig>::from_wire(&heartbeat.clone().into_wire())
            .expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{heartbeat:?}"));
    }

    #[test]
    fn every_answer_round_trips_and_errors_stay_errors() {
        assert_round_trips(|| {
            vec![
                Ok(AppendEntriesResponse::Success),
                Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 9)))),
                Ok(AppendEntriesResponse::PartialSuccess(None)),
                Ok(AppendEntriesResponse::Conflict),
                Ok(AppendEntriesResponse::HigherVote(Vote::new_committed(9, 4))),
                Err(RaftError::Fatal(Fatal::Stopped)),
            ]
        });
        assert_round_trips(|| {
            vec![
                VoteRequest::new(Vote::new(5, 3), Some(log_id(4, 2, 100))),
                VoteRequest::new(Vote::new(1, 3), None),
            ]
        });
        assert_round_trips(|| {
            vec![
                Ok(VoteResponse::new(
                    Vote::new(5, 3),
                    Some(log_id(4, 2, 100)),
                    true,
                )),
                Ok(VoteResponse::new(Vote::new_committed(6, 1), None, false)),
                Err(RaftError::Fatal(Fatal::Stopped)),
            ]
        });
    }

    #[test]
    fn install_snapshot_round_trips_with_raw_data() {
        let members = BTreeMap::from([(1u64, BasicNode::new("10.0.0.1:4242"))]);
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(2, 1, 500)),
                last_membership: StoredMembership::new(
                    Some(log_id(1, 1, 1)),
                    Membership::from(members),
                ),
                snapshot_id: "2-500-1".to_string(),
            },
            offset: 1 << 20,
            data: vec![0xff; 1 << 16],
            done: true,
        };
        let bytes = rpc.clone().into_wire();
        assert!(bytes.len() < (1 << 16) + 400, "{} bytes", bytes.len());
        let back = InstallSnapshotRequest::<TypeConfig>::from_wire(&bytes).expect("decodes");
        assert_eq!(back, rpc);
        let segment = |id: &str, offset| SnapshotSegmentId {
            id: id.to_string(),
            offset,
        };
        assert_round_trips(|| {
            vec![
                Ok(InstallSnapshotResponse {
                    vote: Vote::new_committed(2, 1),
                }),
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                    SnapshotMismatch {
                        expect: segment("a", 0),
                        got: segment("b", 7),
                    },
                ))),
            ]
        });
    }

    #[test]
    fn malformed_payloads_are_refused() {
        // Not protobuf at all.
        assert!(AppendEntriesRequest::<TypeConfig>::from_wire(&[0xff, 0xff, 0xff]).is_err());
        // Valid protobuf without the vote every request carries.
        let no_vote = PbVoteRequest::default().encode_to_vec();
        let err = VoteRequest::<NodeId>::from_wire(&no_vote).expect_err("no vote");
        assert_eq!(err.to_string(), "malformed raft message: no vote");
        // An answer of no known kind.
        let unknown = PbAppendAnswer {
            kind: 99,
            ..Default::default()
        }
        .encode_to_vec();
        let answer =
            <Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>::from_wire(&unknown);
        assert!(answer.is_err());
    }
}
