//! The role manager (leader only; spec 5.8, SwarmKit manager/role_manager.go): moves each node's
//! observed role to its desired role, so that the node's next certificate carries the new OU. A
//! promotion takes effect at once. A demoted node that is still a raft member is removed from raft
//! first (if that keeps a quorum of reachable members; the leader demoting itself hands
//! leadership over by leaving, and the next leader finishes the demotion), and its role changes
//! on the next pass once it is out, so a voting manager never holds a worker role.

use std::sync::Arc;
use std::time::Duration;

use store::{By, Event, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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
        if self.leave_raft_first(id).await {
            return;
        }
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
                    // Still in raft (a removal raced with this pass): the next pass retries.
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

    /// For a demoted node still in raft: tries to remove it (SwarmKit removeMember) and answers
    /// true, so that the role changes on a later pass, once it is out. A removal that would lose
    /// quorum now is left for a later pass.
    async fn leave_raft_first(&self, id: &str) -> bool {
        let demoted = self.store.view(|tx| {
            tx.get_node(id)
                .is_some_and(|n| wants_change(&n) == Some(api::NodeRole::Worker))
        });
        if !demoted || !self.members.is_member(id) {
            return false;
        }
        if !self.members.can_remove_member(id) {
            debug!(node.id = %id, "can't demote the node at this time: removing it from raft would result in a loss of quorum");
            return true;
        }
        match self.members.remove_member(id).await {
            Ok(()) => {
                info!(node.id = %id, "demoted node removed from raft");
                // This leader removed itself and is stepping down: a write now could commit
                // without its answer reaching us, so the next leader changes the role.
                self.members.is_local(id)
            }
            Err(e) => {
                warn!(node.id = %id, "can't demote the node at this time: {e}");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    /// Raft membership the test controls: members, whether removal keeps quorum, and the
    /// removals asked for (which take the node out of the membership).
    #[derive(Default)]
    struct Members {
        members: Mutex<HashSet<String>>,
        quorum_ok: Mutex<bool>,
        removals: Mutex<Vec<String>>,
    }

    impl RaftMembers for Members {
        fn manager_status(&self, _: &str) -> Option<api::ManagerStatus> {
            None
        }
        fn is_member(&self, node_id: &str) -> bool {
            self.members.lock().expect("lock").contains(node_id)
        }
        fn can_remove_member(&self, _: &str) -> bool {
            *self.quorum_ok.lock().expect("lock")
        }
        fn remove_member(
            &self,
            node_id: &str,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>
        {
            let id = node_id.to_string();
            Box::pin(async move {
                self.removals.lock().expect("lock").push(id.clone());
                self.members.lock().expect("lock").remove(&id);
                Ok(())
            })
        }
    }

    async fn demoted_manager(store: &MemoryStore, id: &str) {
        let node = api::Node {
            id: id.to_string(),
            role: api::NodeRole::Manager as i32,
            spec: Some(api::NodeSpec {
                desired_role: api::NodeRole::Worker as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        store
            .update(move |tx| tx.create_node(node))
            .await
            .expect("create");
    }

    fn role(store: &MemoryStore, id: &str) -> i32 {
        store.view(|tx| tx.get_node(id)).expect("node").role
    }

    #[tokio::test]
    async fn a_demoted_raft_member_leaves_raft_before_its_role_changes_and_not_at_quorums_cost() {
        let store = MemoryStore::new(None);
        let members = Arc::new(Members::default());
        members.members.lock().expect("lock").insert("m2".into());
        demoted_manager(&store, "m2").await;
        let rm = RoleManager::new(store.clone(), members.clone());

        // Removal would lose quorum: nothing is removed, the role stays.
        rm.reconcile("m2").await;
        assert!(members.removals.lock().expect("lock").is_empty());
        assert_eq!(role(&store, "m2"), api::NodeRole::Manager as i32);
        assert!(members.is_member("m2"));

        // Quorum allows it: removed from raft, then demoted.
        *members.quorum_ok.lock().expect("lock") = true;
        rm.reconcile("m2").await;
        assert_eq!(
            *members.removals.lock().expect("lock"),
            vec!["m2".to_string()]
        );
        assert_eq!(role(&store, "m2"), api::NodeRole::Worker as i32);

        // A demoted node that is no raft member just changes role.
        demoted_manager(&store, "m3").await;
        rm.reconcile("m3").await;
        assert_eq!(members.removals.lock().expect("lock").len(), 1);
        assert_eq!(role(&store, "m3"), api::NodeRole::Worker as i32);
    }
}
