//! The raft log on redb: entries, vote, committed and last purged log IDs, all in
//! `raft.redb` (see `db`). Every write commits durably (fsync) before openraft is told it is done;
//! the committed log ID is the one exception, written lazily because it is only a hint for faster
//! replay after a restart: it is kept in memory and goes to disk with the next vote, truncation or
//! purge, or with an append once it is `HINT_EVERY` entries past the saved one, so a commit costs
//! no database transaction of its own and most appends do not rewrite the `META` table's page.
//!
//! Appends, which every store write waits on, run their redb transaction and fsync on the raft
//! core's own thread rather than tokio's blocking pool: the core awaits the append's completion
//! anyway, and the round trip through the pool cost two thread wake-ups per entry. The rarer
//! writes (vote, truncation, purge) still go through the pool.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, BasicNode, EntryPayload, LogState, Membership, RaftLogReader, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, META, get_json, read_err, to_json, write_err,
};
use crate::encryption::{Keyring, Place};
use crate::types::{Entry, LogId, NodeId, RaftRequest, StorageError, TypeConfig};

/// Log storage over the shared raft database. Cheap to clone: clones share the database and
/// the unsaved committed log ID.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Seals and opens the entry records (`encryption`).
    ring: Keyring,
    /// The committed log ID openraft last reported, while no write has saved it yet, and the
    /// index of the one saved last.
    committed_hint: Arc<Mutex<Hint>>,
}

/// The committed log ID waiting to be saved, and the index of the last one saved.
#[derive(Default)]
struct Hint {
    unsaved: Option<LogId>,
    saved: Option<u64>,
}

/// An append saves the committed hint only once it is this many entries past the saved one: the
/// hint is a page of its own in the database (the `META` table), and writing it with every
/// append cost each entry's commit that page and its freed-page record. A restart replays at most
/// this many committed entries later (once a leader commits again) than it would otherwise.
const HINT_EVERY: u64 = 64;

impl LogStore {
    /// A log store over an open raft database.
    pub(crate) fn new(db: Arc<Database>, ring: Keyring) -> Self {
        LogStore {
            db,
            ring,
            committed_hint: Arc::default(),
        }
    }

    fn committed_hint(&self) -> std::sync::MutexGuard<'_, Hint> {
        // Only ever replaced whole: a poisoned lock still holds a consistent value.
        self.committed_hint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in a durable write transaction on the blocking pool (see [`LogStore::write_now`]).
    async fn write<F>(&self, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), StorageError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_now(false, f))
            .await
            .map_err(write_err)?
    }

    /// Runs `f` in a write transaction on this thread, saves the unsaved committed log ID with it
    /// (an append: only once it is [`HINT_EVERY`] entries past the saved one), and commits durably
    /// (fsync) before returning.
    fn write_now<F>(&self, append: bool, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    {
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(write_err)?;
        f(&txn)?;
        // Taken only now, so that a later report is never overwritten by this older one.
        let take = {
            let mut hint = self.committed_hint();
            let due = hint.unsaved.is_some_and(|c| {
                !append
                    || hint
                        .saved
                        .is_none_or(|s| c.index >= s.saturating_add(HINT_EVERY))
            });
            let take = if due { hint.unsaved.take() } else { None };
            if let Some(c) = take {
                hint.saved = Some(c.index);
            }
            take
        };
        if let Some(committed) = take {
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(KEY_COMMITTED, to_json(&Some(committed))?.as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// The entry of the stored record at `index`.
    fn decode_stored(&self, index: u64, stored: &[u8]) -> Result<Entry, StorageError> {
        let plain = self.ring.open_or_read_err(Place::Log(index), stored)?;
        decode_entry(&plain).map_err(read_err)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let meta = txn.open_table(META).map_err(read_err)?;
        get_json(&meta, key)
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = to_json(value)?;
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(key, bytes.as_slice()).map_err(write_err)?;
            Ok(())
        })
        .await
    }
}

/// What kind of entry a stored record holds; the JSON header of the record.
#[derive(Serialize, Deserialize)]
enum StoredPayload {
    Blank,
    /// The request bytes follow the header unchanged.
    Normal,
    Membership(Membership<NodeId, BasicNode>),
}

#[derive(Serialize, Deserialize)]
struct StoredHeader {
    log_id: LogId,
    payload: StoredPayload,
}

/// Encodes an entry as `[header length: u32 BE][JSON header][request bytes]`. The request bytes
/// (prost) are stored raw rather than as a JSON array of numbers.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    let (payload, body): (StoredPayload, &[u8]) = match &entry.payload {
        EntryPayload::Blank => (StoredPayload::Blank, &[]),
        EntryPayload::Normal(req) => (StoredPayload::Normal, &req.payload),
        EntryPayload::Membership(m) => (StoredPayload::Membership(m.clone()), &[]),
    };
    let header = serde_json::to_vec(&StoredHeader {
        log_id: entry.log_id,
        payload,
    })?;
    let len = u32::try_from(header.len()).expect("an entry header is far below 4 GiB");
    let mut out = Vec::with_capacity(4 + header.len() + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes what `encode_entry` wrote.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, EntryDecodeError> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(EntryDecodeError::Truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(EntryDecodeError::Truncated);
    }
    let (header, body) = rest.split_at(len);
    let header: StoredHeader = serde_json::from_slice(header)?;
    let payload = match header.payload {
        StoredPayload::Blank => EntryPayload::Blank,
        StoredPayload::Normal => EntryPayload::Normal(RaftRequest {
            payload: body.to_vec(),
        }),
        StoredPayload::Membership(m) => EntryPayload::Membership(m),
    };
    Ok(Entry {
        log_id: header.log_id,
        payload,
    })
}

/// A stored log record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EntryDecodeError {
    /// Shorter than its own header says.
    #[error("log entry record is truncated")]
    Truncated,
    /// The JSON header does not parse.
    #[error("log entry header: {0}")]
    Header(#[from] serde_json::Error),
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for row in logs.range::<u64>(range).map_err(read_err)? {
            let (key, value) = row.map_err(read_err)?;
            out.push(self.decode_stored(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// What replication sends in one AppendEntries: the entries of `[start, end)` up to
    /// [`REPLICATION_BYTES`] of stored records (at least one entry), so that a follower catching
    /// up on large entries gets them in messages the transport carries.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in logs.range::<u64>(start..end).map_err(read_err)? {
            let (key, value) = row.map_err(read_err)?;
            let record = value.value();
            if !out.is_empty() && bytes + record.len() > REPLICATION_BYTES {
                break;
            }
            bytes += record.len();
            out.push(self.decode_stored(key.value(), record)?);
        }
        Ok(out)
    }
}

/// Stored bytes of log entries sent in one AppendEntries (more only for a single larger entry,
/// at most SwarmKit's 1.5 MiB transaction limit), so a message stays far under the transport's
/// limit ([`crate::network::MAX_MESSAGE`]) and is sent within openraft's AppendEntries timeout
/// (one heartbeat interval).
pub(crate) const REPLICATION_BYTES: usize = 512 << 10;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        let last = match logs.last().map_err(read_err)? {
            Some((k, v)) => Some(self.decode_stored(k.value(), v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint only: losing it (a kill before the next write) costs replaying the entries after
        // the saved one once a leader commits again, never correctness; so it waits for the next
        // write instead of paying a transaction of its own on every commit.
        if committed.is_some() {
            self.committed_hint().unsaved = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(committed) = self.committed_hint().unsaved {
            return Ok(Some(committed));
        }
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        for entry in entries {
            let bytes = encode_entry(&entry).map_err(|e| {
                openraft::StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e))
            })?;
            let sealed = self.ring.seal(Place::Log(entry.log_id.index), &bytes);
            records.push((entry.log_id.index, sealed));
        }
        // On this thread (see the module doc): every other writer of the database runs on the
        // blocking pool, so waiting for one of them here cannot deadlock. The tasks this thread
        // has queued (the answer to the writer of the entry just applied, say) run first, so
        // they do not wait through this fsync.
        tokio::task::yield_now().await;
        self.write_now(true, |txn| {
            let mut logs = txn.open_table(LOGS).map_err(write_err)?;
            for (index, bytes) in &records {
                logs.insert(*index, bytes.as_slice()).map_err(write_err)?;
            }
            Ok(())
        })?;
        // The batch is on disk: only now may raft count it (a leader commits on this signal).
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating raft log");
        self.write(move |txn| {
            let mut logs = txn.open_table(LOGS).map_err(write_err)?;
            logs.retain_in::<u64, _>(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging raft log");
        let purged = to_json(&log_id)?;
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(KEY_LAST_PURGED, purged.as_slice())
                .map_err(write_err)?;
            let mut logs = txn.open_table(LOGS).map_err(write_err)?;
            logs.retain_in::<u64, _>(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    #[test]
    fn entry_codec_round_trips_every_payload_kind() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 7), 42);
        let normal = Entry {
            log_id,
            payload: EntryPayload::Normal(RaftRequest {
                payload: vec![0, 1, 2, 255],
            }),
        };
        let blank = Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        let members = std::collections::BTreeMap::from([(7u64, BasicNode::new("10.0.0.1:4242"))]);
        let membership = Entry {
            log_id,
            payload: EntryPayload::Membership(Membership::from(members)),
        };
        for e in [normal, blank, membership] {
            let bytes = encode_entry(&e).expect("encode");
            let back = decode_entry(&bytes).expect("decode");
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[tokio::test]
    async fn replication_reads_a_bounded_run_of_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path()).expect("open");
        let entry = |index: u64, len: usize| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftRequest {
                payload: vec![b'x'; len],
            }),
        };
        // 1-10: 200 kB each; 11: one entry over the budget; 12-311: 1 kB each.
        let sizes = (1..=10)
            .map(|i| (i, 200_000))
            .chain([(11, 1_500_000)])
            .chain((12..=311).map(|i| (i, 1_000)));
        let txn = db.begin_write().expect("write");
        {
            let mut logs = txn.open_table(LOGS).expect("table");
            for (index, len) in sizes {
                let bytes = encode_entry(&entry(index, len)).expect("encode");
                logs.insert(index, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        let mut store = LogStore::new(db, Keyring::plain());
        let indexes =
            |entries: Vec<Entry>| -> Vec<u64> { entries.iter().map(|e| e.log_id.index).collect() };
        // Two 200 kB entries fit in 512 KiB, a third does not.
        let run = store.limited_get_log_entries(1, 312).await.expect("read");
        assert_eq!(indexes(run), [1, 2]);
        // An entry larger than the budget goes alone.
        let run = store.limited_get_log_entries(10, 312).await.expect("read");
        assert_eq!(indexes(run), [10]);
        let run = store.limited_get_log_entries(11, 312).await.expect("read");
        assert_eq!(indexes(run), [11]);
        // Small entries: the whole range asked for.
        let run = store.limited_get_log_entries(12, 312).await.expect("read");
        assert_eq!(run.len(), 300);
    }

    #[tokio::test]
    async fn the_committed_hint_waits_for_the_next_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path()).expect("open");
        let mut store = LogStore::new(db.clone(), Keyring::plain());
        let committed = LogId::new(CommittedLeaderId::new(2, 1), 5);
        store.save_committed(Some(committed)).await.expect("save");
        // Reported but not written: this handle knows it, the database does not yet.
        assert_eq!(store.read_committed().await.expect("read"), Some(committed));
        let mut fresh = LogStore::new(db.clone(), Keyring::plain());
        assert_eq!(fresh.read_committed().await.expect("read"), None);
        // Any write takes it along.
        store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        let mut fresh = LogStore::new(db, Keyring::plain());
        assert_eq!(fresh.read_committed().await.expect("read"), Some(committed));
    }

    #[tokio::test]
    async fn appends_save_the_committed_hint_once_per_hint_every_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path()).expect("open");
        let mut store = LogStore::new(db.clone(), Keyring::plain());
        let at = |index| LogId::new(CommittedLeaderId::new(2, 1), index);
        let on_disk = || async {
            let mut fresh = LogStore::new(db.clone(), Keyring::plain());
            fresh.read_committed().await.expect("read")
        };
        // (committed index reported, then the one on disk after an append): the first append
        // saves it, the next ones only once it is HINT_EVERY entries past the saved one.
        let steps = [
            (5, 5),
            (4 + HINT_EVERY, 5),
            (5 + HINT_EVERY, 5 + HINT_EVERY),
            (6 + HINT_EVERY, 5 + HINT_EVERY),
        ];
        for (reported, saved) in steps {
            store
                .save_committed(Some(at(reported)))
                .await
                .expect("save");
            store.write_now(true, |_| Ok(())).expect("append");
            assert_eq!(on_disk().await, Some(at(saved)), "reported {reported}");
            assert_eq!(
                store.read_committed().await.expect("read"),
                Some(at(reported))
            );
        }
        // Any other write takes it along at once.
        store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        assert_eq!(on_disk().await, Some(at(6 + HINT_EVERY)));
    }

    #[test]
    fn truncated_record_is_rejected() {
        assert!(matches!(
            decode_entry(&[0, 0, 0, 9, b'{']),
            Err(EntryDecodeError::Truncated)
        ));
        assert!(matches!(
            decode_entry(&[0]),
            Err(EntryDecodeError::Truncated)
        ));
    }
}
