//! The role manager (leader only; spec 5.8, SwarmKit manager/role_manager.go): moves each node's
//! observed role to its desired role, so that the node's next certificate carries the new OU. A
//! promotion takes effect at once. A demotion of a node that is still a raft member waits for the
//! raft membership change (the HA issue), so a voting manager never holds a worker role.

use std::sync::Arc;
use std::time::Duration;

use store::{By, Event, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::controlapi::RaftMembers;

/// How often nodes whose change had to wait are looked at again (SwarmKit: 5 s).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Leader subsystem that reconciles node roles.
pub struct RoleManager {
    store: MemoryStore,
    members: Arc<dyn RaftMembers>,
}

fn wants_change(node: &api::Node) -> Option<api::NodeRole> {
    let desired = node.spec.as_ref()?.desired_role;
    (desired != node.role).then(|| api::NodeRole::try_from(desired).ok())?
}

impl RoleManager {
    /// A role manager over `store`, asking `members` about raft membership.
    pub fn new(store: MemoryStore, members: Arc<dyn RaftMembers>) -> RoleManager {
        RoleManager { store, members }
    }

    /// Reconciles every node now and on each change, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let mut watcher = self.store.watch(WatchFilter::none().nodes());
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ev = watcher.recv() => match ev {
                    None => return Err("store watch closed".into()),
                    Some(ev @ Event::Object { .. }) => {
                        if let Some(node) = ev.object_as::<api::Node>()
                            && wants_change(node).is_some()
                        {
                            self.reconcile(&node.id).await;
                        }
                    }
                    Some(_) => {}
                },
                _ = tick.tick() => {
                    let ids: Vec<String> = self.store.view(|tx| {
                        tx.find_nodes(By::All)
                            .into_iter()
                            .filter(|n| wants_change(n).is_some())
                            .map(|n| n.id)
                            .collect()
                    });
                    for id in ids {
                        self.reconcile(&id).await;
                    }
                }
            }
        }
    }

    async fn reconcile(&self, id: &str) {
        let members = &self.members;
        let result = self
            .store
            .update(|tx| {
                let Some(mut node) = tx.get_node(id) else {
                    return Ok(None);
                };
                let Some(desired) = wants_change(&node) else {
                    return Ok(None);
                };
                if desired == api::NodeRole::Worker && members.is_member(id) {
                    // Leaving raft comes first; that is the HA issue's membership change.
                    return Ok(None);
                }
                node.role = desired as i32;
                tx.update_node(node)?;
                Ok(Some(desired))
            })
            .await;
        match result {
            Ok(Some(role)) => info!(node.id = %id, role = ca::role_ou(role), "node role changed"),
            Ok(None) => {}
            Err(e) => error!(node.id = %id, "changing the node's role failed: {e}"),
        }
    }
}
