//! The raft log on redb: entries, vote, committed and last purged log IDs, all in
//! `raft.redb` (see `db`). Every write commits durably (fsync) before openraft is told it is done;
//! the committed log ID is the one exception, written lazily because it is only a hint for faster
//! replay after a restart: it is kept in memory and goes to disk with the next vote, truncation or
//! purge, or with an append once it is `HINT_EVERY` entries past the saved one (and no further
//! than the append's own entries, see `Disk::write_now`), so a commit costs
//! no database transaction of its own and most appends do not rewrite the `META` table's page.
//!
//! Appends go to the log's writer thread, which writes whatever has queued in one transaction
//! and one fsync, and only then reports each append done. Meanwhile the appended entries are
//! served to readers from memory (`unwritten`), so a leader's raft core, which no longer waits
//! for its own append (the patch in `vendor/openraft`), sends them to the followers while its
//! disk writes them: the leader's fsync and the followers' run side by side. A follower's append,
//! which the core does wait for, is written on the core's own thread when nothing is queued (the
//! round trip through the writer would cost two thread wake-ups). The rarer writes (vote,
//! truncation, purge) go through tokio's blocking pool, each after every queued append is
//! written: no vote is saved, and no entry removed, ahead of an append made before it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, BasicNode, EntryPayload, LogState, Membership, RaftLogReader, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, META, get_json, read_err, to_json, write_err,
};
use crate::encryption::{Keyring, Place};
use crate::types::{Entry, LogId, NodeId, RaftRequest, StorageError, TypeConfig};

/// Log storage over the shared raft database. Cheap to clone: clones share the database, the
/// unsaved committed log ID, the unwritten entries and the writer.
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    /// Appended entries the writer has not written yet, by index.
    unwritten: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// The writer thread's queue; the thread ends when the last clone is dropped.
    writer: mpsc::Sender<Job>,
}

/// What the writer thread shares with the store (all but the queue, so that dropping the
/// store's clones ends the thread).
#[derive(Clone)]
struct Disk {
    db: Arc<Database>,
    /// Seals and opens the entry records (`encryption`).
    ring: Keyring,
    /// The committed log ID openraft last reported, while no write has saved it yet, and the
    /// index of the one saved last.
    committed_hint: Arc<Mutex<Hint>>,
}

/// What the writer thread is asked to do.
enum Job {
    /// Write these entries (log ID and encoded record, not yet sealed), then report the append.
    Append {
        records: Vec<(LogId, Vec<u8>)>,
        done: Done,
    },
    /// Answer once every append queued before is written.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Reports an append written (or failed): openraft's `LogFlushed` callback.
type Done = Box<dyn FnOnce(std::io::Result<()>) + Send>;

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
    /// A log store over an open raft database, with its writer thread.
    pub(crate) fn new(db: Arc<Database>, ring: Keyring) -> Self {
        let disk = Disk {
            db,
            ring,
            committed_hint: Arc::default(),
        };
        let unwritten = Arc::<Mutex<BTreeMap<u64, Entry>>>::default();
        let (writer, jobs) = mpsc::channel();
        let (on_disk, written) = (disk.clone(), unwritten.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_queued(&on_disk, &written, &jobs))
            .expect("the raft log's writer thread starts");
        LogStore {
            disk,
            unwritten,
            writer,
        }
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // Entries are inserted and removed whole: a poisoned lock still holds consistent ones.
        self.unwritten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once every append queued so far is on disk.
    async fn written(&self) -> Result<(), StorageError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.writer
            .send(Job::Barrier(done))
            .map_err(|_| writer_gone())?;
        wait.await.map_err(|_| writer_gone())
    }

    /// Runs `f` in a durable write transaction on the blocking pool (see [`Disk::write_now`]),
    /// once every queued append is written.
    async fn write<F>(&self, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), StorageError> + Send + 'static,
    {
        self.written().await?;
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.write_now(None, f))
            .await
            .map_err(write_err)?
    }

    /// Appends `entries`: written on this thread when the caller waits for them (`awaited`)
    /// and nothing is queued before them, otherwise served from memory and queued for the
    /// writer. `done` is called once they are on disk.
    fn queue_append(
        &self,
        entries: Vec<Entry>,
        awaited: bool,
        done: Done,
    ) -> Result<(), StorageError> {
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = encode_entry(entry).map_err(|e| {
                openraft::StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e))
            })?;
            records.push((entry.log_id, bytes));
        }
        let mut unwritten = self.unwritten();
        if awaited && unwritten.is_empty() {
            // A follower's append with nothing queued before it: on this thread (see the module
            // doc). Every other writer of the database runs on the blocking pool or the writer
            // thread, so waiting for one of them here cannot deadlock.
            drop(unwritten);
            self.disk.write_records(records.iter())?;
            done(Ok(()));
            return Ok(());
        }
        unwritten.extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        drop(unwritten);
        // Only once the entries are on disk may raft count them (a leader commits on it).
        self.writer
            .send(Job::Append { records, done })
            .map_err(|_| writer_gone())
    }

    /// The unwritten entries of `range`: taken before the disk is read, so that an entry the
    /// writer removes meanwhile is on disk by then.
    fn unwritten_in<RB: RangeBounds<u64>>(&self, range: RB) -> BTreeMap<u64, Entry> {
        self.unwritten()
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect()
    }
}

/// The error of a store whose writer thread ended (it panicked).
fn writer_gone() -> StorageError {
    write_err(std::io::Error::other(
        "the raft log's writer thread is gone",
    ))
}

/// The writer thread: takes every job queued, writes the appends among them in one durable
/// transaction, removes their entries from `unwritten`, reports each append, then answers the
/// barriers. Ends when every store clone (every sender) is gone.
fn write_queued(disk: &Disk, unwritten: &Mutex<BTreeMap<u64, Entry>>, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let (mut appends, mut barriers) = (Vec::new(), Vec::new());
        for job in std::iter::once(first).chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            match job {
                Job::Append { records, done } => appends.push((records, done)),
                Job::Barrier(done) => barriers.push(done),
            }
        }
        if !appends.is_empty() {
            let result = disk.write_records(appends.iter().flat_map(|(r, _)| r));
            if result.is_ok() {
                let mut unwritten = unwritten.lock().unwrap_or_else(PoisonError::into_inner);
                for (log_id, _) in appends.iter().flat_map(|(r, _)| r) {
                    if unwritten
                        .get(&log_id.index)
                        .is_some_and(|e| e.log_id == *log_id)
                    {
                        unwritten.remove(&log_id.index);
                    }
                }
            }
            for (_, done) in appends {
                done(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
            }
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

impl Disk {
    fn committed_hint(&self) -> std::sync::MutexGuard<'_, Hint> {
        // Only ever replaced whole: a poisoned lock still holds a consistent value.
        self.committed_hint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Seals and writes log records (see [`Disk::write_now`]). Sealed here, just before the
    /// write, as a key rotation expects of a writer (`encryption`'s module doc).
    fn write_records<'a>(
        &self,
        records: impl Iterator<Item = &'a (LogId, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let records: Vec<_> = records.collect();
        let last = records.iter().map(|(log_id, _)| log_id.index).max();
        self.write_now(Some(last.unwrap_or(0)), |txn| {
            let mut logs = txn.open_table(LOGS).map_err(write_err)?;
            for (log_id, plain) in records {
                let sealed = self.ring.seal(Place::Log(log_id.index), plain);
                logs.insert(log_id.index, sealed.as_slice())
                    .map_err(write_err)?;
            }
            Ok(())
        })
    }

    /// Runs `f` in a write transaction on this thread, saves the unsaved committed log ID with it,
    /// and commits durably (fsync) before returning. An append of entries up to index
    /// `appended` saves the committed log ID only once it is [`HINT_EVERY`] entries past the
    /// saved one, and only if it is no further than `appended`: a leader's entries may be
    /// committed (by its followers) before its own disk has them, and a hint naming an entry the
    /// disk lacks would send a restart looking for it. Any other write comes after every queued
    /// append is written ([`LogStore::write`]), so whatever was committed is on disk by then.
    fn write_now<F>(&self, appended: Option<u64>, f: F) -> Result<(), StorageError>
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
                appended.is_none_or(|last| {
                    c.index <= last
                        && hint
                            .saved
                            .is_none_or(|s| c.index >= s.saturating_add(HINT_EVERY))
                })
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
}

impl LogStore {
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
        let mut out = self.unwritten_in(range.clone());
        let txn = self.disk.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        for row in logs.range::<u64>(range).map_err(read_err)? {
            let (key, value) = row.map_err(read_err)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(key.value()) {
                slot.insert(self.disk.decode_stored(key.value(), value.value())?);
            }
        }
        Ok(out.into_values().collect())
    }

    /// What replication sends in one AppendEntries: the entries of `[start, end)` up to
    /// [`REPLICATION_BYTES`] of stored records (at least one entry), so that a follower catching
    /// up on large entries gets them in messages the transport carries.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut unwritten = self.unwritten_in(start..end);
        let txn = self.disk.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut stored = logs.range::<u64>(start..end).map_err(read_err)?.peekable();
        for index in start..end {
            let row = stored
                .next_if(|row| row.as_ref().map_or(true, |(key, _)| key.value() == index))
                .transpose()
                .map_err(read_err)?;
            // An entry not yet written (or written, but not yet removed from `unwritten`) is
            // taken from memory, and counts at its payload's size.
            let (entry, len) = match (unwritten.remove(&index), row) {
                (Some(entry), _) => {
                    let len = match &entry.payload {
                        EntryPayload::Normal(req) => req.payload.len(),
                        _ => 0,
                    };
                    (entry, len)
                }
                (None, Some((_, value))) => {
                    let record = value.value();
                    (self.disk.decode_stored(index, record)?, record.len())
                }
                (None, None) => break,
            };
            if !out.is_empty() && bytes + len > REPLICATION_BYTES {
                break;
            }
            bytes += len;
            out.push(entry);
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
        let last_purged_log_id: Option<LogId> = self.disk.read_meta(KEY_LAST_PURGED)?;
        let unwritten = self.unwritten().last_key_value().map(|(_, e)| e.log_id);
        let txn = self.disk.db.begin_read().map_err(read_err)?;
        let logs = txn.open_table(LOGS).map_err(read_err)?;
        let last = match logs.last().map_err(read_err)? {
            Some((k, v)) => Some(self.disk.decode_stored(k.value(), v.value())?.log_id),
            None => None,
        };
        let last = last.max(unwritten);
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
        self.disk.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint only: losing it (a kill before the next write) costs replaying the entries after
        // the saved one once a leader commits again, never correctness; so it waits for the next
        // write instead of paying a transaction of its own on every commit.
        if committed.is_some() {
            self.disk.committed_hint().unsaved = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(committed) = self.disk.committed_hint().unsaved {
            return Ok(Some(committed));
        }
        Ok(self
            .disk
            .read_meta::<Option<LogId>>(KEY_COMMITTED)?
            .flatten())
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
        let awaited = callback.is_awaited();
        if awaited {
            // It may be written on this thread: the tasks this thread has queued (the answer to
            // the previous AppendEntries, say) run first, so they do not wait through its fsync.
            tokio::task::yield_now().await;
        }
        let done: Done = Box::new(move |result| callback.log_io_completed(result));
        self.queue_append(entries.into_iter().collect(), awaited, done)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating raft log");
        self.write(move |txn| {
            let mut logs = txn.open_table(LOGS).map_err(write_err)?;
            logs.retain_in::<u64, _>(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            Ok(())
        })
        .await?;
        // Every append queued before is written (`write`): nothing of these is left unwritten.
        debug_assert!(self.unwritten().range(log_id.index..).next().is_none());
        Ok(())
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

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftRequest {
                payload: vec![b'x'; 100],
            }),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// A leader's append (not awaited) is readable at once while its disk is busy (a write
    /// transaction held here stalls the writer) and reported only once written; a vote saved
    /// while an append is queued waits until it is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_append_is_read_from_memory_until_written_and_a_vote_waits_for_it() {
        let bound = std::time::Duration::from_secs(10);
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path()).expect("open");
        let mut store = LogStore::new(db.clone(), Keyring::plain());
        let (written, reports) = std::sync::mpsc::channel();
        let report = |last: u64| -> Done {
            let written = written.clone();
            Box::new(move |result| {
                result.expect("written");
                written.send(last).expect("report");
            })
        };
        store
            .queue_append((1..=3).map(entry).collect(), true, report(3))
            .expect("append 1-3");
        // Awaited with nothing queued: written before `queue_append` returned.
        assert_eq!(reports.try_recv(), Ok(3));
        assert!(store.unwritten().is_empty());

        let stall = db.begin_write().expect("hold the write lock");
        // The writer, once it has written 4-5, waits in their report until `gate` opens.
        let (gate, gated) = std::sync::mpsc::channel::<()>();
        let report_5 = report(5);
        store
            .queue_append(
                (4..=5).map(entry).collect(),
                false,
                Box::new(move |result| {
                    report_5(result);
                    let _ = gated.recv();
                }),
            )
            .expect("append 4-5");
        let all = store.try_get_log_entries(1..=5).await.expect("read");
        assert_eq!(indexes(&all), [1, 2, 3, 4, 5]);
        let run = store.limited_get_log_entries(2, 6).await.expect("read");
        assert_eq!(indexes(&run), [2, 3, 4, 5]);
        // The writer cannot write while the lock is held here: nothing is reported yet.
        assert!(reports.try_recv().is_err());
        drop(stall);
        assert_eq!(reports.recv_timeout(bound), Ok(5));

        // Awaited, but the writer is busy with 4-5's report: queued behind it.
        store
            .queue_append(vec![entry(6)], true, report(6))
            .expect("append 6");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
        let all = store.try_get_log_entries(4..).await.expect("read");
        assert_eq!(indexes(&all), [4, 5, 6]);
        let mut vote_store = store.clone();
        let mut vote = tokio::spawn(async move {
            vote_store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        });
        // A window for a vote that does not wait for the queued append to be saved.
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut vote).await;
        assert!(
            early.is_err(),
            "the vote was saved before entry 6 was written"
        );
        drop(gate);
        tokio::time::timeout(bound, vote)
            .await
            .expect("the vote is saved once the append is written")
            .expect("vote task");
        assert_eq!(reports.try_recv(), Ok(6));
        assert!(store.unwritten().is_empty());
        let txn = db.begin_read().expect("read");
        let logs = txn.open_table(LOGS).expect("logs");
        assert_eq!(logs.iter().expect("rows").count(), 6);
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(2, 1))
        );
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
            store
                .disk
                .write_now(Some(reported), |_| Ok(()))
                .expect("append");
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

    /// A leader's entries may be committed by its followers before its own disk has them: an
    /// append saves the committed hint only up to its own last entry.
    #[tokio::test]
    async fn an_append_saves_no_hint_past_its_own_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path()).expect("open");
        let mut store = LogStore::new(db.clone(), Keyring::plain());
        let on_disk = || async {
            let mut fresh = LogStore::new(db.clone(), Keyring::plain());
            fresh.read_committed().await.expect("read")
        };
        let committed = LogId::new(CommittedLeaderId::new(1, 1), 20);
        store.save_committed(Some(committed)).await.expect("save");
        let written = |_| {};
        store
            .queue_append((1..=3).map(entry).collect(), true, Box::new(written))
            .expect("append 1-3");
        assert_eq!(on_disk().await, None);
        store
            .queue_append((4..=25).map(entry).collect(), true, Box::new(written))
            .expect("append 4-25");
        assert_eq!(on_disk().await, Some(committed));
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
