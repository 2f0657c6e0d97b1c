//! The server half of the raft transport: `swarmkit.raftrpc.v1.RaftTransport` handed to this
//! member's openraft instance. The manager mounts it on the remote API (mutual TLS, manager
//! certificates only); nothing outside this crate sees an openraft type.

use api::raftrpc::RaftPayload;
use api::raftrpc::raft_transport_server::{RaftTransport, RaftTransportServer};
use openraft::Raft;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec::Wire;
use crate::network::MAX_MESSAGE;
use crate::types::{NodeId, TypeConfig};

/// Serves peers' raft RPCs to one member.
#[derive(Clone)]
pub struct TransportService {
    raft: Raft<TypeConfig>,
    removed: crate::membership::Removed,
    /// Restarted by what the leader sends and by granted votes (see `election`).
    clock: crate::election::Clock,
}

impl TransportService {
    pub(crate) fn new(
        raft: Raft<TypeConfig>,
        removed: crate::membership::Removed,
        clock: crate::election::Clock,
    ) -> Self {
        TransportService {
            raft,
            removed,
            clock,
        }
    }

    /// Refuses a message sent by a member removed from the cluster (SwarmKit answers NotFound).
    fn check_sender(&self, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
        match vote.leader_id().voted_for() {
            Some(from) if self.removed.contains(from) => {
                tracing::debug!(raft.id = %format!("{from:x}"), "refused a raft message from a removed member");
                Err(Status::not_found(crate::membership::ERR_MEMBER_REMOVED))
            }
            _ => Ok(()),
        }
    }

    /// The gRPC service, with the transport's message limits.
    pub fn into_server(self) -> RaftTransportServer<TransportService> {
        RaftTransportServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

impl std::fmt::Debug for TransportService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportService").finish_non_exhaustive()
    }
}

fn decode<T: Wire>(req: Request<RaftPayload>) -> Result<T, Status> {
    T::from_wire(&req.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: Wire>(answer: T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload {
        data: answer.into_wire(),
    }))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        self.check_sender(&rpc.vote)?;
        let answer = self.raft.append_entries(rpc).await;
        // Anything but a refusal of its term comes from the leader this member follows.
        if matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.clock.leader_heard();
        }
        encode(answer)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req)?;
        self.check_sender(&rpc.vote)?;
        let (term, last) = (rpc.vote.leader_id().term, rpc.last_log_id);
        let answer = self.raft.vote(rpc).await;
        if let Ok(r) = &answer {
            if r.vote_granted {
                self.clock.restart();
            } else if r.vote.leader_id().term < term && r.last_log_id > last {
                // Refused for its shorter log while this member stays at an older term.
                self.clock.refused(term);
            }
        }
        encode(answer)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        self.check_sender(&rpc.vote)?;
        let vote = rpc.vote;
        let answer = self.raft.install_snapshot(rpc).await;
        if matches!(&answer, Ok(r) if r.vote == vote) {
            self.clock.leader_heard();
        }
        encode(answer)
    }
}
