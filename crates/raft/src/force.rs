//! `--force-new-cluster`: turns a manager's raft database into a one-member cluster before
//! openraft opens it, keeping every entry the log holds.
//!
//! The rewrite appends one membership entry naming only this member, after the last entry of
//! the log (or after the snapshot if the log is empty), under a term above every term seen, and
//! records a vote for this member in that term; both go in one durable transaction. Nothing is
//! truncated: committed entries, applied or not, stay where they are, and so do entries this
//! member received but never learnt were committed (an acknowledged write may be among them,
//! since the leader acknowledges once a majority has the entry and tells followers later). When
//! openraft starts, the member is the only voter, elects itself and commits its whole log,
//! exactly as a newly elected leader of the old cluster would have. SwarmKit drops the entries
//! after its own commit index instead; keeping them loses nothing that was acknowledged.

use std::collections::BTreeMap;

use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership, SnapshotMeta, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::RaftError;
use crate::db::{
    KEY_LAST_PURGED, KEY_SNAPSHOT_META, KEY_VOTE, LOGS, META, SNAPSHOT, get_json, to_json,
};
use crate::encryption::{Keyring, Place};
use crate::log_store::{decode_entry, encode_entry};
use crate::types::{Entry, LogId, NodeId};

/// What the rewrite did, for the log line and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// Index of the appended membership entry.
    pub index: u64,
    /// Term of the vote and the appended entry.
    pub term: u64,
    /// Members of the previous configuration other than this one, now removed.
    pub removed: Vec<NodeId>,
}

/// Rewrites the raft database `db` (at `path`, for messages) of member `id` into a one-member
/// cluster whose only member is `id` at `addr`. Fails, changing nothing, if the database holds
/// no cluster state (no log entry and no snapshot).
pub(crate) fn rewrite(
    db: &Database,
    path: &std::path::Path,
    id: NodeId,
    addr: &str,
    ring: &Keyring,
) -> Result<ForcedCluster, RaftError> {
    let err = |what: String| RaftError::ForceNewCluster(format!("{}: {what}", path.display()));
    let storage = |e: crate::types::StorageError| err(e.to_string());
    let (vote, last_purged, snapshot, last_log, last_membership) = {
        let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
        let meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
        let vote: Option<Vote<NodeId>> = get_json(&meta, KEY_VOTE).map_err(storage)?;
        let last_purged: Option<LogId> = get_json(&meta, KEY_LAST_PURGED).map_err(storage)?;
        let snap = txn.open_table(SNAPSHOT).map_err(|e| err(e.to_string()))?;
        let snapshot: Option<SnapshotMeta<NodeId, BasicNode>> =
            get_json(&snap, KEY_SNAPSHOT_META).map_err(storage)?;
        let logs = txn.open_table(LOGS).map_err(|e| err(e.to_string()))?;
        // From the newest entry back to the newest membership change.
        let mut last_log: Option<LogId> = None;
        let mut last_membership: Option<Membership<NodeId, BasicNode>> = None;
        for row in logs.iter().map_err(|e| err(e.to_string()))?.rev() {
            let (k, v) = row.map_err(|e| err(e.to_string()))?;
            let plain = ring
                .open(Place::Log(k.value()), v.value())
                .map_err(|e| err(e.to_string()))?;
            let entry = decode_entry(&plain).map_err(|e| err(e.to_string()))?;
            last_log.get_or_insert(entry.log_id);
            if let EntryPayload::Membership(m) = entry.payload {
                last_membership = Some(m);
                break;
            }
        }
        (vote, last_purged, snapshot, last_log, last_membership)
    };
    let last_in_log = last_log.or(last_purged);
    let snapshot_last = snapshot.as_ref().and_then(|s| s.last_log_id);
    // A snapshot installed from the leader may cover more than the log if the member stopped
    // before the log behind it was purged: then the log restarts after the snapshot.
    let purge_to = snapshot_last.filter(|s| last_in_log.is_none_or(|l| s.index > l.index));
    let Some(last_log_id) = purge_to.or(last_in_log) else {
        return Err(err(
            "the raft log and snapshot are empty: this manager holds no cluster state to recover"
                .into(),
        ));
    };
    let previous = last_membership.or(snapshot.map(|s| s.last_membership.membership().clone()));
    let removed: Vec<NodeId> = previous
        .as_ref()
        .map(|m| m.nodes().map(|(n, _)| *n).filter(|n| *n != id).collect())
        .unwrap_or_default();
    let term = vote
        .map_or(0, |v| v.leader_id.term)
        .max(last_log_id.leader_id.term)
        + 1;
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, id), last_log_id.index + 1),
        payload: EntryPayload::Membership(Membership::from(BTreeMap::from([(
            id,
            BasicNode::new(addr),
        )]))),
    };
    let record = encode_entry(&entry).map_err(|e| err(e.to_string()))?;
    let record = ring.seal(Place::Log(entry.log_id.index), &record);
    let vote = to_json(&Vote::new(term, id)).map_err(storage)?;
    let mut txn = db.begin_write().map_err(|e| err(e.to_string()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| err(e.to_string()))?;
    {
        let mut logs = txn.open_table(LOGS).map_err(|e| err(e.to_string()))?;
        logs.insert(entry.log_id.index, record.as_slice())
            .map_err(|e| err(e.to_string()))?;
        if let Some(purged) = purge_to {
            logs.retain_in::<u64, _>(..=purged.index, |_, _| false)
                .map_err(|e| err(e.to_string()))?;
        }
        let mut meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
        meta.insert(KEY_VOTE, vote.as_slice())
            .map_err(|e| err(e.to_string()))?;
        if let Some(purged) = purge_to {
            let purged = to_json(&purged).map_err(storage)?;
            meta.insert(KEY_LAST_PURGED, purged.as_slice())
                .map_err(|e| err(e.to_string()))?;
        }
    }
    txn.commit().map_err(|e| err(e.to_string()))?;
    Ok(ForcedCluster {
        index: entry.log_id.index,
        term,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{KEY_COMMITTED, KEY_RAFT_ID};
    use crate::types::RaftRequest;

    #[test]
    fn rewrite_keeps_every_entry_past_the_commit_index_and_leaves_one_member() {
        let tmp = tempfile::tempdir().expect("tmp");
        let db = crate::db::open(tmp.path()).expect("open");
        let (a, b, c) = (0xa_u64, 0xb_u64, 0xc_u64);
        let lid = |term, index| LogId::new(CommittedLeaderId::new(term, a), index);
        let nodes = BTreeMap::from([a, b, c].map(|n| (n, BasicNode::new(format!("h{n}:1")))));
        let mut entries = vec![Entry {
            log_id: lid(1, 1),
            payload: EntryPayload::Membership(Membership::from(nodes)),
        }];
        for i in 2..=5 {
            entries.push(Entry {
                log_id: lid(1, i),
                payload: EntryPayload::Normal(RaftRequest {
                    payload: vec![i as u8],
                }),
            });
        }
        let txn = db.begin_write().expect("txn");
        {
            let mut logs = txn.open_table(LOGS).expect("logs");
            for e in &entries {
                logs.insert(e.log_id.index, encode_entry(e).expect("encode").as_slice())
                    .expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(KEY_RAFT_ID, b.to_be_bytes().as_slice())
                .expect("id");
            let vote = to_json(&Vote::new_committed(1, a)).expect("json");
            meta.insert(KEY_VOTE, vote.as_slice()).expect("vote");
            // b knows only entry 2 to be committed; 3..5 may have been acknowledged all the same.
            let committed = to_json(&Some(lid(1, 2))).expect("json");
            meta.insert(KEY_COMMITTED, committed.as_slice())
                .expect("committed");
        }
        txn.commit().expect("commit");

        let forced = rewrite(&db, tmp.path(), b, "hb:1", &Keyring::plain()).expect("rewrite");
        assert_eq!(forced.index, 6);
        assert_eq!(forced.term, 2);
        assert_eq!(forced.removed, vec![a, c]);

        let txn = db.begin_read().expect("txn");
        let logs = txn.open_table(LOGS).expect("logs");
        let stored: Vec<Entry> = logs
            .iter()
            .expect("iter")
            .map(|r| decode_entry(r.expect("row").1.value()).expect("decode"))
            .collect();
        assert_eq!(stored.len(), 6);
        for (e, s) in entries.iter().zip(&stored) {
            assert_eq!(e.log_id, s.log_id);
            assert_eq!(format!("{:?}", e.payload), format!("{:?}", s.payload));
        }
        let EntryPayload::Membership(m) = &stored[5].payload else {
            panic!("not a membership entry: {:?}", stored[5]);
        };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![b]);
        assert_eq!(m.nodes().count(), 1);
        let meta = txn.open_table(META).expect("meta");
        let vote: Vote<NodeId> = get_json(&meta, KEY_VOTE).expect("read").expect("vote");
        assert_eq!(vote, Vote::new(2, b));
    }

    #[test]
    fn rewrite_of_an_empty_database_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let db = crate::db::open(tmp.path()).expect("open");
        let err =
            rewrite(&db, tmp.path(), 7, "h:1", &Keyring::plain()).expect_err("nothing to recover");
        assert!(err.to_string().contains("holds no cluster state"), "{err}");
        let bounds = crate::db::log_bounds(&db).expect("bounds");
        assert_eq!(bounds, crate::db::LogBounds::default());
    }
}
