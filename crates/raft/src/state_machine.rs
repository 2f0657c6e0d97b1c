//! The raft state machine: applies committed entries to the `MemoryStore`, and builds, persists,
//! installs and serves snapshots of it. The store keeps no state of its own on disk, so the
//! applied state is derived: after a restart it is the stored snapshot's, and openraft replays
//! the log after it through `apply`.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, EntryPayload, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use store::MemoryStore;

use crate::db::{
    KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, OLD_SNAPSHOTS, SNAPSHOT, get_json, read_err, to_json,
    write_err,
};
use crate::encryption::{Keyring, Place};
use crate::types::{Entry, LogId, NodeId, RaftResponse, StorageError, TypeConfig};

type Meta = SnapshotMeta<NodeId, BasicNode>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// State machine over the manager's `MemoryStore`.
pub struct StateMachine {
    db: Arc<Database>,
    /// Seals and opens snapshot data (`encryption`).
    ring: Keyring,
    store: MemoryStore,
    /// Last entry applied to `store` (or covered by the snapshot it was restored from).
    last_applied: Option<LogId>,
    /// Last membership applied, for openraft's bookkeeping.
    membership: Membership,
    /// Raft IDs that left the membership (`membership::Removed`).
    removed: crate::membership::Removed,
}

impl StateMachine {
    /// Opens the state machine: restores the latest stored snapshot, if any, into `store`.
    pub(crate) fn open(
        db: Arc<Database>,
        store: MemoryStore,
        ring: Keyring,
    ) -> Result<Self, StorageError> {
        let removed = crate::membership::Removed::load(db.clone())?;
        let mut sm = StateMachine {
            db,
            ring,
            store,
            last_applied: None,
            membership: Membership::default(),
            removed,
        };
        if let Some((meta, data)) = read_snapshot(&sm.db, &sm.ring)? {
            let snapshot = decode_snapshot(&meta, &data)?;
            let index = meta.last_log_id.map_or(0, |l| l.index);
            tracing::info!(snapshot.index = index, "restoring store from raft snapshot");
            sm.store.restore(snapshot, index);
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership;
        }
        Ok(sm)
    }

    /// The removed raft IDs this state machine records.
    pub(crate) fn removed(&self) -> crate::membership::Removed {
        self.removed.clone()
    }
}

/// Builds one snapshot from a copy of the store taken when the builder was made, so that the
/// state machine keeps applying while the copy is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    ring: Keyring,
    content: api::StoreSnapshot,
    last_applied: Option<LogId>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _timer = telemetry::swarm::RAFT_SNAPSHOT_LATENCY.start();
        let keep_old = keep_old_snapshots(&self.content);
        let data = std::mem::take(&mut self.content).encode_to_vec();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
            None => format!("0-0-{nanos}"),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        write_snapshot(&self.db, &self.ring, &meta, data.clone(), false, keep_old).await?;
        tracing::info!(
            snapshot.index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = data.len(),
            "raft snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(req) => {
                    let req = req
                        .decode()
                        .map_err(|e| StorageIOError::apply(log_id, AnyError::new(&e)))?;
                    // The store checked these actions before proposing them; a failure here is a
                    // bug, and stopping raft for it would keep the node down on every restart.
                    if let Err(e) = self.store.apply_committed(log_id.index, req.action) {
                        tracing::error!(raft.index = log_id.index, error = %e, "failed to apply store actions from raft log");
                    }
                }
                EntryPayload::Membership(m) => {
                    self.removed
                        .observe(self.membership.membership(), &m)
                        .await?;
                    self.membership = StoredMembership::new(Some(log_id), m);
                }
            }
            self.last_applied = Some(log_id);
            replies.push(RaftResponse {
                index: log_id.index,
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            ring: self.ring.clone(),
            content: self.store.save(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let content = decode_snapshot(meta, &data)?;
        // Durable first: once the store shows this state, a restart must come back to it.
        let keep_old = keep_old_snapshots(&content);
        write_snapshot(&self.db, &self.ring, meta, data, true, keep_old).await?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        tracing::info!(snapshot.index = index, "installing raft snapshot");
        self.store.restore(content, index);
        self.last_applied = meta.last_log_id;
        self.removed
            .observe(
                self.membership.membership(),
                meta.last_membership.membership(),
            )
            .await?;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            read_snapshot(&self.db, &self.ring)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}

/// The cluster's `KeepOldSnapshots` as the snapshot's own content has it (SwarmKit default 0).
fn keep_old_snapshots(content: &api::StoreSnapshot) -> u64 {
    content
        .clusters
        .iter()
        .filter_map(|c| c.spec.as_ref())
        .find(|s| {
            s.annotations
                .as_ref()
                .is_some_and(|a| a.name == crate::compaction::DEFAULT_CLUSTER_NAME)
        })
        .and_then(|s| s.raft.as_ref())
        .map_or(0, |r| r.keep_old_snapshots)
}

fn decode_snapshot(meta: &Meta, data: &[u8]) -> Result<api::StoreSnapshot, StorageError> {
    api::StoreSnapshot::decode(data).map_err(|e| {
        StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
    })
}

fn read_snapshot(db: &Database, ring: &Keyring) -> Result<Option<(Meta, Vec<u8>)>, StorageError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
    let Some(meta) = get_json::<Meta, _>(&table, KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let data = match table.get(KEY_SNAPSHOT_DATA).map_err(read_err)? {
        Some(v) => ring.open_or_read_err(Place::Snapshot, v.value())?,
        None => Vec::new(),
    };
    Ok(Some((meta, data)))
}

/// Stores `meta` and `data` as the current snapshot in one durable transaction. A built snapshot
/// (`replace_newer == false`) never replaces one covering more of the log, which an installed
/// snapshot may have written while it was being built.
async fn write_snapshot(
    db: &Arc<Database>,
    ring: &Keyring,
    meta: &Meta,
    data: Vec<u8>,
    replace_newer: bool,
    keep_old: u64,
) -> Result<(), StorageError> {
    let meta_json = to_json(meta)?;
    let last = meta.last_log_id;
    let (db, ring) = (db.clone(), ring.clone());
    tokio::task::spawn_blocking(move || {
        let data = ring.seal(Place::Snapshot, &data);
        let mut txn = db.begin_write().map_err(write_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(write_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(write_err)?;
            let existing: Option<Meta> = get_json(&table, KEY_SNAPSHOT_META)?;
            if !replace_newer && existing.as_ref().is_some_and(|m| m.last_log_id > last) {
                return Ok(());
            }
            // The replaced snapshot joins the old ones, of which the newest `keep_old` stay (none
            // by default: then it is not copied only to be pruned below).
            let mut old = txn.open_table(OLD_SNAPSHOTS).map_err(write_err)?;
            if let Some(prev) = existing.filter(|m| keep_old > 0 && m.last_log_id < last) {
                let prev_json = to_json(&prev)?;
                let prev_data = match table.get(KEY_SNAPSHOT_DATA).map_err(write_err)? {
                    Some(v) => ring.open_or_read_err(Place::Snapshot, v.value())?,
                    None => Vec::new(),
                };
                let len = u32::try_from(prev_json.len()).map_err(write_err)?;
                let mut record = Vec::with_capacity(4 + prev_json.len() + prev_data.len());
                record.extend_from_slice(&len.to_be_bytes());
                record.extend_from_slice(&prev_json);
                record.extend_from_slice(&prev_data);
                let index = prev.last_log_id.map_or(0, |l| l.index);
                let record = ring.seal(Place::OldSnapshot(index), &record);
                old.insert(index, record.as_slice()).map_err(write_err)?;
            }
            let mut kept: Vec<u64> = Vec::new();
            for row in old.iter().map_err(write_err)? {
                kept.push(row.map_err(write_err)?.0.value());
            }
            let excess = kept
                .len()
                .saturating_sub(usize::try_from(keep_old).unwrap_or(usize::MAX));
            for index in kept.into_iter().take(excess) {
                old.remove(index).map_err(write_err)?;
            }
            table
                .insert(KEY_SNAPSHOT_META, meta_json.as_slice())
                .map_err(write_err)?;
            table
                .insert(KEY_SNAPSHOT_DATA, data.as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    })
    .await
    .map_err(write_err)?
}
