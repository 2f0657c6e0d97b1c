//! Adding managers to the raft cluster (spec 2.4; SwarmKit's RaftMembership.Join): the leader
//! serves `swarmkit.raftrpc.v1.RaftJoin`, adds the calling manager as a learner, waits until it
//! has caught up, promotes it to voter and records its raft ID in its Node object, so every
//! manager can tell which node each raft member is ([`StoreMembers`]). The joining side is
//! [`join`]. A Join sent to a follower reaches the leader through the leader forwarding of
//! [`crate::proxy`], with the joiner's identity; one that still lands on a non-leader (leadership
//! changed in between) is refused. A joiner that does not know its own address sends a wildcard
//! host (`0.0.0.0:<port>`), and the leader records it at the address it sees the call come from,
//! with that port (SwarmKit's Join does the same), so managers on other hosts can reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use api::raftrpc::raft_join_client::RaftJoinClient;
use api::raftrpc::raft_join_server::{RaftJoin, RaftJoinServer};
use api::raftrpc::{JoinRaftRequest, JoinRaftResponse};
use raft::RaftNode;
use store::MemoryStore;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::controlapi::RaftMembers;

/// How long the leader waits for a joiner to catch up, and then for its promotion.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long a joiner waits for the leader's answer.
const JOIN_WAIT: Duration = Duration::from_secs(75);

/// The leader's side of a manager join.
#[derive(Clone)]
pub struct JoinService {
    raft: Arc<RaftNode>,
    store: MemoryStore,
}

impl JoinService {
    /// Joins go into `raft`; raft IDs are recorded in `store`.
    pub fn new(raft: Arc<RaftNode>, store: MemoryStore) -> Self {
        JoinService { raft, store }
    }

    /// The gRPC service.
    pub fn into_server(self) -> RaftJoinServer<JoinService> {
        RaftJoinServer::new(self).max_decoding_message_size(crate::msgsize::MAX_RECV)
    }
}

#[tonic::async_trait]
impl RaftJoin for JoinService {
    async fn join(
        &self,
        req: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftResponse>, Status> {
        let node_id = ca::peer_cert_info(&req)
            .map(|c| c.node_id)
            .ok_or_else(|| Status::permission_denied("no client certificates in request"))?;
        let seen = ca::peer_ip(&req);
        let JoinRaftRequest { raft_id, addr } = req.into_inner();
        if raft_id == 0 || addr.is_empty() {
            return Err(Status::invalid_argument("raft ID and address are required"));
        }
        let addr = joiner_addr(&addr, seen)?;
        if !self.raft.is_leader() {
            return Err(Status::failed_precondition(
                "this manager is not the raft leader; join through the leader",
            ));
        }
        info!(node.id = %node_id, raft.id = %format!("{raft_id:x}"), %addr, "manager joining the raft cluster");
        self.raft
            .add_member(raft_id, addr.clone(), CATCH_UP)
            .await
            .map_err(|e| {
                let msg = e.to_string();
                // A removed raft ID never comes back: no retry will help.
                if msg.contains(raft::ERR_ID_REMOVED) {
                    Status::failed_precondition(msg)
                } else {
                    Status::unavailable(msg)
                }
            })?;
        let status = api::ManagerStatus {
            raft_id,
            addr,
            leader: false,
            reachability: api::raft_member_status::Reachability::Reachable as i32,
        };
        self.store
            .update(move |tx| {
                if let Some(mut node) = tx.get_node(&node_id) {
                    node.manager_status = Some(status);
                    tx.update_node(node)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(JoinRaftResponse {
            leader_raft_id: self.raft.raft_id(),
        }))
    }
}

/// The address to record for a joiner that sent `addr` and whose call came from `seen` (the
/// original caller's address for a call a follower forwarded): `addr`, unless its host is a
/// wildcard IP, which is replaced with `seen`.
fn joiner_addr(addr: &str, seen: Option<IpAddr>) -> Result<String, Status> {
    let invalid =
        || Status::invalid_argument(format!("invalid address {addr} in raft join request"));
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(invalid)?,
        None => addr
            .rsplit_once(':')
            .filter(|(h, _)| !h.contains(':'))
            .ok_or_else(invalid)?,
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if !host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Ok(addr.to_string());
    }
    let seen = seen.ok_or_else(|| {
        Status::invalid_argument(format!(
            "the raft join request gives the address {addr} and the address it came from is unknown"
        ))
    })?;
    Ok(SocketAddr::new(seen, port).to_string())
}

/// The joining side: asks the manager at `addr` (over mutual TLS with `security`) to add this
/// member (`raft_id`, reachable at `advertise_addr`), bounded.
pub async fn join(
    security: &ca::SecurityConfig,
    addr: &str,
    raft_id: u64,
    advertise_addr: &str,
) -> Result<u64, String> {
    let cfg = security.client_config().map_err(|e| e.to_string())?;
    let channel = ca::tls_channel(addr, cfg, ca::MANAGER_ROLE).map_err(|e| e.to_string())?;
    let mut req = Request::new(JoinRaftRequest {
        raft_id,
        addr: advertise_addr.to_string(),
    });
    req.set_timeout(JOIN_WAIT);
    let resp = tokio::time::timeout(JOIN_WAIT, RaftJoinClient::new(channel).join(req))
        .await
        .map_err(|_| format!("raft join through {addr}: no answer within {JOIN_WAIT:?}"))?
        .map_err(|s| format!("raft join through {addr}: {}", s.message()))?;
    Ok(resp.into_inner().leader_raft_id)
}

/// Manager status of nodes from raft membership: a node's raft ID is this manager's own or the
/// one its Node object records (written by the leader at join), and it counts while that ID is
/// in the membership configuration.
pub struct StoreMembers {
    node_id: String,
    raft: Arc<RaftNode>,
    store: MemoryStore,
}

impl StoreMembers {
    /// Members as `raft` sees them; `node_id` is this manager's node.
    pub fn new(node_id: String, raft: Arc<RaftNode>, store: MemoryStore) -> Self {
        StoreMembers {
            node_id,
            raft,
            store,
        }
    }

    fn raft_id_of(&self, node_id: &str) -> Option<u64> {
        if node_id == self.node_id {
            return Some(self.raft.raft_id());
        }
        self.store
            .view(|tx| tx.get_node(node_id))
            .and_then(|n| n.manager_status)
            .map(|s| s.raft_id)
            .filter(|id| *id != 0)
    }
}

impl RaftMembers for StoreMembers {
    fn manager_status(&self, node_id: &str) -> Option<api::ManagerStatus> {
        let raft_id = self.raft_id_of(node_id)?;
        let member = self
            .raft
            .members()
            .into_iter()
            .find(|m| m.raft_id == raft_id)?;
        use api::raft_member_status::Reachability as R;
        let reachability = match self.raft.reachability(raft_id) {
            raft::Reachability::Reachable => R::Reachable,
            raft::Reachability::Unreachable => R::Unreachable,
            raft::Reachability::Unknown => R::Unknown,
        };
        Some(api::ManagerStatus {
            raft_id,
            addr: member.addr,
            leader: self.raft.leader_id() == Some(raft_id),
            reachability: reachability as i32,
        })
    }

    fn is_member(&self, node_id: &str) -> bool {
        self.raft_id_of(node_id)
            .is_some_and(|id| self.raft.members().iter().any(|m| m.raft_id == id))
    }

    fn is_local(&self, node_id: &str) -> bool {
        node_id == self.node_id
    }

    fn can_remove_member(&self, node_id: &str) -> bool {
        self.raft_id_of(node_id)
            .is_some_and(|id| self.raft.can_remove_member(id))
    }

    fn remove_member(
        &self,
        node_id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let raft_id = self.raft_id_of(node_id);
        let node_id = node_id.to_string();
        Box::pin(async move {
            let raft_id =
                raft_id.ok_or_else(|| format!("node {node_id} has no raft member recorded"))?;
            self.raft
                .remove_member(raft_id, REMOVAL_WAIT)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// How long a removal from raft may take (SwarmKit's removalTimeout).
const REMOVAL_WAIT: Duration = Duration::from_secs(5);

/// Keeps the dispatcher's manager list (what sessions tell agents) equal to the raft membership:
/// every member whose node is known (this manager, or a Node object recording its raft ID), with
/// its advertised address, until `shutdown` fires.
pub async fn follow_managers(
    raft: Arc<RaftNode>,
    store: MemoryStore,
    dispatcher: dispatcher::Dispatcher,
    node_id: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut metrics = raft.server_metrics();
    let mut nodes = store.watch(store::WatchFilter::none().nodes());
    let membership = |m: &raft::RaftServerMetrics| m.membership_config.log_id().map(|l| l.index);
    loop {
        let seen = membership(&metrics.borrow_and_update());
        dispatcher.set_managers(manager_peers(&raft, &store, &node_id));
        loop {
            // The role's metrics change with leadership too; only a new configuration matters
            // here.
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = metrics.changed() => {
                    if changed.is_err() { return }
                    if membership(&metrics.borrow_and_update()) != seen { break }
                }
                ev = nodes.recv() => match ev {
                    None => return,
                    // Only a node whose recorded raft ID changed (created or removed with one,
                    // or updated to another) changes the list: reading every node again for
                    // each of the many writes to worker nodes (joins, sessions, heartbeats)
                    // would cost a scan of all nodes per write. Every commit (of any write)
                    // also comes as `Commit`, which says nothing about nodes.
                    Some(ev) if raft_id_changed(&ev) => break,
                    Some(_) => {}
                },
            }
        }
    }
}

/// The raft ID a Node object records (0: none).
fn recorded_raft_id(node: Option<&api::Node>) -> u64 {
    node.and_then(|n| n.manager_status.as_ref())
        .map_or(0, |s| s.raft_id)
}

/// Whether `ev` changes which node a raft ID belongs to: the only part of the store
/// [`manager_peers`] reads.
fn raft_id_changed(ev: &store::Event) -> bool {
    match ev {
        store::Event::Object { .. } => {
            recorded_raft_id(ev.object_as::<api::Node>())
                != recorded_raft_id(ev.old_as::<api::Node>())
        }
        store::Event::Commit { .. } => false,
    }
}

/// The raft members as dispatcher peers, ordered by raft ID.
pub fn manager_peers(
    raft: &RaftNode,
    store: &MemoryStore,
    node_id: &str,
) -> Vec<api::WeightedPeer> {
    let own = raft.raft_id();
    let by_raft_id: std::collections::HashMap<u64, String> = store.view(|tx| {
        tx.find_shared::<api::Node>(store::By::All)
            .into_iter()
            .filter_map(|n| {
                let id = n.manager_status.as_ref()?.raft_id;
                (id != 0).then(|| (id, n.id.clone()))
            })
            .collect()
    });
    raft.members()
        .into_iter()
        .filter_map(|m| {
            let node = if m.raft_id == own {
                node_id.to_string()
            } else {
                by_raft_id.get(&m.raft_id)?.clone()
            };
            Some(dispatcher::weighted_peer(&node, &m.addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use raft::{NetworkFactory, RaftConfig};

    use super::*;

    async fn lone_manager(dir: &std::path::Path, store: &MemoryStore) -> Arc<RaftNode> {
        let cfg = RaftConfig {
            dir: dir.to_path_buf(),
            tick: Duration::from_millis(50),
            ..Default::default()
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            RaftNode::start(
                cfg,
                store.clone(),
                "10.0.0.1:4242".into(),
                NetworkFactory::unconnected(),
            ),
        )
        .await
        .expect("bounded")
        .expect("start")
    }

    #[test]
    fn a_joiner_sending_a_wildcard_host_is_recorded_where_it_was_seen() {
        let seen: IpAddr = "192.0.2.7".parse().expect("ip");
        let check = |addr: &str, seen: Option<IpAddr>| joiner_addr(addr, seen);
        assert_eq!(
            check("0.0.0.0:4242", Some(seen)).expect("ok"),
            "192.0.2.7:4242"
        );
        assert_eq!(
            check("[::]:4242", Some(seen)).expect("ok"),
            "192.0.2.7:4242"
        );
        let seen6: IpAddr = "2001:db8::7".parse().expect("ip");
        assert_eq!(
            check("0.0.0.0:4242", Some(seen6)).expect("ok"),
            "[2001:db8::7]:4242"
        );
        // A joiner that knows its address keeps it, wherever the call came from.
        for kept in ["10.0.0.2:4242", "[2001:db8::2]:4242", "manager-2:4242"] {
            assert_eq!(check(kept, Some(seen)).expect("ok"), kept);
        }
        for bad in [
            "0.0.0.0",
            "::1:4242",
            "0.0.0.0:port",
            "[::]4242",
            "10.0.0.2:99999",
        ] {
            let err = check(bad, Some(seen)).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert_eq!(
                err.message(),
                format!("invalid address {bad} in raft join request")
            );
        }
        let err = check("0.0.0.0:4242", None).expect_err("nowhere seen");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn members_and_managers_list_follow_raft_membership_not_stored_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MemoryStore::new(None);
        let raft = lone_manager(dir.path(), &store).await;
        // A node whose stored record names a raft ID that is not (or no longer) a member.
        let stale = api::Node {
            id: "gone".into(),
            manager_status: Some(api::ManagerStatus {
                raft_id: 0xdead,
                addr: "10.0.0.9:4242".into(),
                leader: false,
                reachability: api::raft_member_status::Reachability::Reachable as i32,
            }),
            ..Default::default()
        };
        let me = api::Node {
            id: "me".into(),
            ..Default::default()
        };
        store
            .update(move |tx| {
                tx.create_node(stale)?;
                tx.create_node(me)
            })
            .await
            .expect("write");
        let members = StoreMembers::new("me".into(), raft.clone(), store.clone());

        let status = members.manager_status("me").expect("a member");
        assert_eq!(status.raft_id, raft.raft_id());
        assert_eq!(status.addr, "10.0.0.1:4242");
        assert!(status.leader);
        assert_eq!(
            status.reachability,
            api::raft_member_status::Reachability::Reachable as i32
        );
        assert!(members.manager_status("gone").is_none());
        assert!(!members.is_member("gone"));
        // The only voter cannot leave: that is the quorum.
        assert!(!members.can_remove_member("me"));
        let err = members
            .remove_member("me")
            .await
            .expect_err("last voter stays");
        assert!(err.contains(raft::ERR_LOSS_OF_QUORUM), "{err}");
        assert!(members.remove_member("gone").await.is_err());
        assert_eq!(raft.members().len(), 1);

        // Sessions are told the members only, with their raft addresses.
        let peers = manager_peers(&raft, &store, "me");
        assert_eq!(
            peers,
            vec![dispatcher::weighted_peer("me", "10.0.0.1:4242")]
        );
        raft.shutdown().await;
    }

    /// The manager list is read again for a change of which node holds a raft ID, not for the
    /// writes to worker nodes a join makes, which would cost a scan of all nodes each.
    #[test]
    fn only_raft_id_changes_refresh_the_manager_list() {
        use std::sync::Arc;
        use store::{Event, EventKind, StoreObject};
        let node = |raft_id: u64| {
            let manager_status = (raft_id != 0).then(|| api::ManagerStatus {
                raft_id,
                ..Default::default()
            });
            Arc::new(
                api::Node {
                    id: "n".into(),
                    manager_status,
                    ..Default::default()
                }
                .into_object(),
            )
        };
        let ev = |kind, new: u64, old: Option<u64>| Event::Object {
            kind,
            object: node(new),
            old: old.map(node),
        };
        assert!(
            !raft_id_changed(&ev(EventKind::Create, 0, None)),
            "a worker joins"
        );
        assert!(
            !raft_id_changed(&ev(EventKind::Update, 0, Some(0))),
            "a worker's status"
        );
        assert!(
            !raft_id_changed(&ev(EventKind::Remove, 0, None)),
            "a worker removed"
        );
        assert!(
            !raft_id_changed(&ev(EventKind::Update, 7, Some(7))),
            "a manager's status"
        );
        assert!(raft_id_changed(&ev(EventKind::Create, 7, None)));
        assert!(raft_id_changed(&ev(EventKind::Update, 7, Some(0))));
        assert!(raft_id_changed(&ev(EventKind::Update, 0, Some(7))));
        assert!(raft_id_changed(&ev(EventKind::Update, 8, Some(7))));
        assert!(raft_id_changed(&ev(EventKind::Remove, 7, None)));
        assert!(!raft_id_changed(&Event::Commit { version: 3 }));
    }
}
