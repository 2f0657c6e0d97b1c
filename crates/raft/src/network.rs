//! The network seam between raft members. A single-voter manager has no peers, so every client
//! answers `Unreachable`; the HA work replaces `NetworkFactory` with a tonic transport carrying
//! the same openraft RPCs (append entries, vote, install snapshot) to other managers.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};

use crate::types::{NodeId, TypeConfig};

/// Builds a client per raft peer. Today no peer can be reached.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
        }
    }
}

/// Client for one peer; every RPC fails as unreachable until a transport exists.
#[derive(Debug, Clone)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&AnyError::error(format!(
            "no raft transport to member {:x} at {}",
            self.target, self.addr
        )))
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Vote};

    #[tokio::test]
    async fn every_rpc_reports_the_peer_unreachable() {
        let mut client = NetworkFactory
            .new_client(0xabc, &BasicNode::new("10.0.0.2:4242"))
            .await;
        let vote = VoteRequest::new(Vote::new(1, 1), None);
        let err = client
            .vote(vote, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .expect_err("no transport");
        assert!(matches!(err, RPCError::Unreachable(_)));
        assert!(
            err.to_string().contains("member abc at 10.0.0.2:4242"),
            "{err}"
        );
        let ae = AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 1)),
            entries: vec![],
            leader_commit: None,
        };
        let err = client
            .append_entries(ae, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .expect_err("no transport");
        assert!(matches!(err, RPCError::Unreachable(_)));
    }
}
