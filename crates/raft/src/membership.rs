//! Changing raft membership safely (spec 4.2, SwarmKit manager/state/raft RemoveMember,
//! CanRemoveMember and membership/cluster.go's removed list): which peers answer (`Contacts`),
//! the quorum check over reachable voters, removing a member (a voter, a learner, or the leader
//! itself, which hands leadership over by leaving), and the removed raft IDs, which are derived
//! from applied membership entries, kept durably in the raft database and never let back in.
//!
//! Leader handover: openraft 0.9 has no leadership transfer. A leader that is demoted removes
//! itself from the voters; openraft keeps it leading until that configuration is committed and
//! then turns it into a learner (outside the membership), and the remaining voters elect a new
//! leader after one election timeout: raft's vote rule makes the winner one whose log holds every
//! committed entry, so nothing acknowledged is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, Membership};
use redb::{Database, Durability, ReadableDatabase};

use crate::RaftError;
use crate::db::{META, get_json, read_err, to_json, write_err};
use crate::node::RaftNode;
use crate::types::{NodeId, StorageError};

/// The message a removed member's RPCs are refused with (SwarmKit's ErrMemberRemoved).
pub const ERR_MEMBER_REMOVED: &str = "raft: member was removed from the cluster";
/// Refusal of a join or an addition under a removed raft ID (SwarmKit's ErrIDRemoved).
pub const ERR_ID_REMOVED: &str = "membership: node was removed during cluster lifetime";
/// A removal that would leave fewer reachable voters than a quorum (SwarmKit's wording).
pub const ERR_LOSS_OF_QUORUM: &str =
    "can't remove member from the raft: this would result in a loss of quorum";

/// Meta-table key of the removed raft IDs (JSON list).
const KEY_REMOVED: &str = "removed_members";

/// When each peer last answered one of this member's raft RPCs, and whether a peer said this
/// member was removed. Shared by the network's clients and the `RaftNode`.
#[derive(Clone, Default)]
pub(crate) struct Contacts {
    inner: Arc<Mutex<ContactsInner>>,
}

#[derive(Default)]
struct ContactsInner {
    last: HashMap<NodeId, Instant>,
    told_removed: bool,
}

impl Contacts {
    fn lock(&self) -> std::sync::MutexGuard<'_, ContactsInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `peer` answered an RPC just now.
    pub(crate) fn answered(&self, peer: NodeId) {
        self.lock().last.insert(peer, Instant::now());
    }

    /// A peer refused an RPC because this member was removed from the cluster.
    pub(crate) fn told_removed(&self) {
        self.lock().told_removed = true;
    }

    pub(crate) fn last(&self, peer: NodeId) -> Option<Instant> {
        self.lock().last.get(&peer).copied()
    }

    fn was_told_removed(&self) -> bool {
        self.lock().told_removed
    }
}

/// The raft IDs removed from the cluster during its lifetime: every node of one applied
/// membership configuration that is absent from the next. Persisted in the raft database.
#[derive(Clone)]
pub(crate) struct Removed {
    /// Weak: the `RaftNode` keeps this handle after shutdown, which must release the file.
    db: std::sync::Weak<Database>,
    ids: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl Removed {
    /// Loads the recorded IDs from `db`.
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, StorageError> {
        let ids: Vec<NodeId> = {
            let txn = db.begin_read().map_err(read_err)?;
            let meta = txn.open_table(META).map_err(read_err)?;
            get_json(&meta, KEY_REMOVED)?.unwrap_or_default()
        };
        Ok(Removed {
            db: Arc::downgrade(&db),
            ids: Arc::new(Mutex::new(ids.into_iter().collect())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<NodeId>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` was removed.
    pub(crate) fn contains(&self, id: NodeId) -> bool {
        self.lock().contains(&id)
    }

    /// Records the nodes of `prev` missing from `next` (one applied membership change), durably
    /// before returning.
    pub(crate) async fn observe(
        &self,
        prev: &Membership<NodeId, BasicNode>,
        next: &Membership<NodeId, BasicNode>,
    ) -> Result<(), StorageError> {
        let gone: Vec<NodeId> = prev
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| next.get_node(id).is_none())
            .collect();
        let all = {
            let mut ids = self.lock();
            let before = ids.len();
            ids.extend(gone.iter().copied());
            if ids.len() == before {
                return Ok(());
            }
            ids.iter().copied().collect::<Vec<_>>()
        };
        tracing::info!(removed = ?gone.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(), "raft members removed from the cluster");
        let json = to_json(&all)?;
        let db = self
            .db
            .upgrade()
            .ok_or_else(|| write_err(std::io::Error::other("raft database already released")))?;
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut meta = txn.open_table(META).map_err(write_err)?;
                meta.insert(KEY_REMOVED, json.as_slice())
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
        .map_err(write_err)?
    }
}

/// How the leader sees a member (spec 1.3's manager status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// This member, or a peer that answered within the election timeout.
    Reachable,
    /// A peer that did not answer within the election timeout.
    Unreachable,
    /// Not known here: only the leader talks to every peer.
    Unknown,
}

impl RaftNode {
    /// Whether `peer` answered one of this member's RPCs within the election timeout. This
    /// member itself always is.
    fn answered_recently(&self, peer: NodeId) -> bool {
        peer == self.raft_id()
            || self
                .contacts
                .last(peer)
                .is_some_and(|t| t.elapsed() <= self.election_timeout)
    }

    /// How this member sees `id`: on the leader, from the peers' answers to its replication and
    /// heartbeats; on a follower only itself and its leader (while it hears from it) are known.
    pub fn reachability(&self, id: NodeId) -> Reachability {
        if id == self.raft_id() || self.answered_recently(id) {
            return Reachability::Reachable;
        }
        if self.is_leader() {
            return Reachability::Unreachable;
        }
        if self.leader_id() == Some(id) {
            // A follower hears from its leader, or it would have started an election.
            return Reachability::Reachable;
        }
        Reachability::Unknown
    }

    /// Whether removing voter `id` leaves a quorum of reachable voters (leader only: elsewhere
    /// the answer is no, since only the leader knows who is reachable). SwarmKit counts this
    /// manager and every reachable voter except `id` against a quorum of the voters minus one.
    pub fn can_remove_member(&self, id: NodeId) -> bool {
        if !self.is_leader() {
            return false;
        }
        let voters = self.voter_ids();
        if !voters.contains(&id) {
            // A learner does not count towards any quorum.
            return true;
        }
        let reachable = voters
            .iter()
            .filter(|v| **v != id && self.answered_recently(**v))
            .count();
        let quorum = (voters.len() - 1) / 2 + 1;
        reachable >= quorum
    }

    /// Removes member `id` from the cluster (leader only), bounded by `bound`: a learner at once,
    /// a voter after the quorum check. Removing this member (the leader) hands leadership over:
    /// openraft keeps it leading until the new configuration is committed, then it steps down
    /// and the remaining voters elect a leader. Its raft ID is never accepted again.
    pub async fn remove_member(&self, id: NodeId, bound: Duration) -> Result<(), RaftError> {
        let _serial = self.membership_change.lock().await;
        if !self.is_leader() {
            return Err(RaftError::Raft(
                "this member is not the raft leader".to_string(),
            ));
        }
        let Some(member) = self.members().into_iter().find(|m| m.raft_id == id) else {
            return Err(RaftError::Raft(format!(
                "raft member {id:x} is not in the cluster"
            )));
        };
        let change = if member.voter {
            if !self.can_remove_member(id) {
                return Err(RaftError::Raft(ERR_LOSS_OF_QUORUM.to_string()));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(raft.id = %format!("{id:x}"), voter = member.voter, leader = id == self.raft_id(), "removing raft member");
        tokio::time::timeout(bound, self.raft().change_membership(change, false))
            .await
            .map_err(|_| RaftError::Timeout(format!("removal of member {id:x}")))?
            .map_err(|e| RaftError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Whether `id` was removed from this cluster (such an ID is never added again).
    pub fn is_removed_id(&self, id: NodeId) -> bool {
        self.removed.contains(id)
    }

    /// Whether this member knows it was removed from the cluster: it applied its own removal,
    /// or a peer refused its messages as a removed member's.
    pub fn is_removed(&self) -> bool {
        self.removed.contains(self.raft_id()) || self.contacts.was_told_removed()
    }
}
