//! The network between raft members: a client per peer carrying openraft's RPCs (append
//! entries, vote, install snapshot) over gRPC, as `swarmkit.raftrpc.v1.RaftTransport` calls whose
//! payloads are the serde_json form of openraft's request and of the peer's `Result`. How a
//! channel to a peer's address is dialed (mutual TLS with this node's certificate) is the
//! caller's business: it hands a [`Dialer`] to [`NetworkFactory::new`].

use std::sync::Arc;
use std::time::Duration;

use api::raftrpc::RaftPayload;
use api::raftrpc::raft_transport_client::RaftTransportClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::types::{NodeId, TypeConfig};

/// Largest transport message sent or accepted: serde_json spells bytes as number lists, so an
/// entry or snapshot chunk grows about fourfold on the wire.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Opens a (lazy) gRPC channel to a peer's advertised `host:port`.
pub type Dialer = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Builds a client per raft peer.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    dialer: Option<Dialer>,
    contacts: crate::membership::Contacts,
    clock: crate::election::Clock,
}

impl NetworkFactory {
    /// Peers are reached through channels from `dialer`.
    pub fn new(dialer: Dialer) -> Self {
        NetworkFactory {
            dialer: Some(dialer),
            ..Default::default()
        }
    }

    /// No peer can be reached (a lone voter never needs one).
    pub fn unconnected() -> Self {
        Self::default()
    }

    /// When each peer last answered an RPC of this factory's clients (shared by all clones).
    pub(crate) fn contacts(&self) -> crate::membership::Contacts {
        self.contacts.clone()
    }

    /// The member's election timer, told when a peer with a shorter log refuses a campaign.
    pub(crate) fn clock(&self) -> crate::election::Clock {
        self.clock.clone()
    }
}

impl std::fmt::Debug for NetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkFactory")
            .field("connected", &self.dialer.is_some())
            .finish()
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            dialer: self.dialer.clone(),
            client: None,
            contacts: self.contacts.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// Client for one peer. The channel is dialed on first use and dropped after a transport error,
/// so the next RPC dials again (with the node's current certificate).
pub struct PeerClient {
    target: NodeId,
    addr: String,
    dialer: Option<Dialer>,
    client: Option<RaftTransportClient<Channel>>,
    contacts: crate::membership::Contacts,
    clock: crate::election::Clock,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("target", &format_args!("{:x}", self.target))
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Which transport method a call uses.
#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    fn unreachable(&self, why: impl std::fmt::Display) -> Unreachable {
        Unreachable::new(&AnyError::error(format!(
            "raft member {:x} at {}: {why}",
            self.target, self.addr
        )))
    }

    fn client(&mut self) -> Result<RaftTransportClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let Some(dialer) = &self.dialer else {
            return Err(self.unreachable("no raft transport"));
        };
        let channel = dialer(&self.addr).map_err(|e| self.unreachable(e))?;
        let client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        rpc: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let ttl = option.hard_ttl().max(Duration::from_millis(1));
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(ttl);
        let sent = async {
            match method {
                Method::AppendEntries => client.append_entries(req).await,
                Method::Vote => client.vote(req).await,
                Method::InstallSnapshot => client.install_snapshot(req).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, sent).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::NotFound
                    && status.message() == crate::membership::ERR_MEMBER_REMOVED
                {
                    tracing::warn!(peer = %format!("{:x}", self.target), "a raft peer refused this member as removed from the cluster");
                    self.contacts.told_removed();
                }
                self.client = None;
                return Err(RPCError::Unreachable(self.unreachable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))));
            }
            Err(_) => {
                self.client = None;
                return Err(RPCError::Unreachable(
                    self.unreachable(format!("no answer within {ttl:?}")),
                ));
            }
        };
        // The peer answered: it is reachable, whatever raft thinks of the request.
        self.contacts.answered(self.target);
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&resp.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let answer: RpcResult<VoteResponse<NodeId>> = self.call(Method::Vote, &rpc, &option).await;
        // Refused by a peer with a shorter log that holds a vote of this term or a later one
        // (it campaigned too): this member is the better candidate, so it campaigns again
        // soon above that term instead of waiting out a whole timeout.
        if let Ok(r) = &answer {
            let held = r.vote.leader_id().term;
            if !r.vote_granted
                && r.vote != rpc.vote
                && held >= rpc.vote.leader_id().term
                && r.last_log_id < rpc.last_log_id
            {
                self.clock.refused(held);
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Vote};

    #[tokio::test]
    async fn without_a_transport_every_rpc_reports_the_peer_unreachable() {
        let mut client = NetworkFactory::unconnected()
            .new_client(0xabc, &BasicNode::new("10.0.0.2:4242"))
            .await;
        let vote = VoteRequest::new(Vote::new(1, 1), None);
        let err = client
            .vote(vote, RPCOption::new(Duration::from_secs(1)))
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
            .append_entries(ae, RPCOption::new(Duration::from_secs(1)))
            .await
            .expect_err("no transport");
        assert!(matches!(err, RPCError::Unreachable(_)));
    }

    #[tokio::test]
    async fn a_peer_that_does_not_answer_is_unreachable() {
        // A listener that accepts and never speaks: the RPC must end within its TTL.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let dialer: Dialer = Arc::new(|addr: &str| {
            Ok(Channel::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_lazy())
        });
        let mut client = NetworkFactory::new(dialer)
            .new_client(7, &BasicNode::new(addr))
            .await;
        let started = std::time::Instant::now();
        let err = client
            .vote(
                VoteRequest::new(Vote::new(1, 1), None),
                RPCOption::new(Duration::from_millis(300)),
            )
            .await
            .expect_err("silent peer");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        hold.abort();
    }
}
