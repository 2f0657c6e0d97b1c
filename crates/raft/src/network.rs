//! The network between raft members: a client per peer carrying openraft's RPCs (append
//! entries, vote, install snapshot) over gRPC, as `swarmkit.raftrpc.v1.RaftTransport` calls whose
//! payloads are the protobuf form (`codec`) of openraft's request and of the peer's `Result`.
//! How a channel to a peer's address is dialed (mutual TLS with this node's certificate) is the
//! caller's business: it hands a [`Dialer`] to [`NetworkFactory::new`]. One channel per address
//! is shared by every client of the factory: openraft makes a client per replication stream and
//! another per leadership confirmation, which must not cost a TLS handshake each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use tonic::transport::Channel;

use crate::codec::Wire;
use crate::types::{NodeId, TypeConfig};

/// Largest transport message sent or accepted: far above what replication sends at once (512
/// KiB of entries, or one entry of at most 1.5 MiB) and a snapshot chunk (`config.rs`).
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Opens a (lazy) gRPC channel to a peer's advertised `host:port`.
pub type Dialer = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Builds a client per raft peer.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    dialer: Option<Dialer>,
    channels: Channels,
    contacts: crate::membership::Contacts,
    clock: crate::election::Clock,
}

/// The channel to each peer address, shared by all clients (and clones) of a factory; each
/// dialed channel is numbered so that a client that saw it fail drops that one only.
#[derive(Clone, Default)]
struct Channels {
    open: Arc<Mutex<HashMap<String, Numbered>>>,
    dialed: Arc<AtomicU64>,
}

/// A client on a dialed channel and the channel's number.
type Numbered = (u64, RaftTransportClient<Channel>);

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Numbered>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The channel open to `addr`, or a new one from `dial`.
    fn get_or_dial(
        &self,
        addr: &str,
        dial: impl FnOnce() -> Result<Channel, String>,
    ) -> Result<Numbered, String> {
        let mut open = self.lock();
        if let Some(c) = open.get(addr) {
            return Ok(c.clone());
        }
        let client = RaftTransportClient::new(dial()?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let id = self.dialed.fetch_add(1, Ordering::Relaxed);
        open.insert(addr.to_string(), (id, client.clone()));
        Ok((id, client))
    }

    /// Drops channel `id` to `addr` after it failed (a newer one stays).
    fn failed(&self, addr: &str, id: u64) {
        let mut open = self.lock();
        if open.get(addr).is_some_and(|(open_id, _)| *open_id == id) {
            open.remove(addr);
        }
    }
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
            channels: self.channels.clone(),
            client: None,
            contacts: self.contacts.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// Client for one peer. The channel (shared by the factory's clients) is dialed on first use and
/// dropped after a transport error, so the next RPC dials again (with the node's current
/// certificate).
pub struct PeerClient {
    target: NodeId,
    addr: String,
    dialer: Option<Dialer>,
    channels: Channels,
    /// The shared channel this client uses, by its number.
    client: Option<Numbered>,
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
        if let Some((_, c)) = &self.client {
            return Ok(c.clone());
        }
        let Some(dialer) = &self.dialer else {
            return Err(self.unreachable("no raft transport"));
        };
        let (id, client) = self
            .channels
            .get_or_dial(&self.addr, || dialer(&self.addr))
            .map_err(|e| self.unreachable(e))?;
        self.client = Some((id, client.clone()));
        Ok(client)
    }

    /// Forgets the channel after a transport error: the next RPC dials again.
    fn drop_channel(&mut self) {
        if let Some((id, _)) = self.client.take() {
            self.channels.failed(&self.addr, id);
        }
    }

    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        rpc: Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Wire,
        Result<Resp, RaftError<NodeId, E>>: Wire,
        E: std::error::Error,
    {
        let data = rpc.into_wire();
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
                self.drop_channel();
                return Err(RPCError::Unreachable(self.unreachable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))));
            }
            Err(_) => {
                self.drop_channel();
                return Err(RPCError::Unreachable(
                    self.unreachable(format!("no answer within {ttl:?}")),
                ));
            }
        };
        // The peer answered: it is reachable, whatever raft thinks of the request.
        self.contacts.answered(self.target);
        let answer = Result::<Resp, RaftError<NodeId, E>>::from_wire(&resp.data)
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
        self.call(Method::AppendEntries, rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Method::InstallSnapshot, rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let (vote, last_log_id) = (rpc.vote, rpc.last_log_id);
        let answer: RpcResult<VoteResponse<NodeId>> = self.call(Method::Vote, rpc, &option).await;
        // Refused by a peer with a shorter log that holds a vote of this term or a later one
        // (it campaigned too): this member is the better candidate, so it campaigns again
        // soon above that term instead of waiting out a whole timeout.
        if let Ok(r) = &answer {
            let held = r.vote.leader_id().term;
            if !r.vote_granted
                && r.vote != vote
                && held >= vote.leader_id().term
                && r.last_log_id < last_log_id
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
