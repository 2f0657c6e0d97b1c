//! The raft database file `<raft_dir>/raft.redb`: its tables, how it is opened (directory 0700,
//! file 0600), this member's persisted raft ID, and the mapping of redb errors to openraft's
//! storage errors. What goes into the tables is decided by `log_store` and `state_machine`.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{AnyError, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::RaftError;
use crate::types::StorageError;

/// Name of the database file inside the raft directory.
pub const DB_FILE: &str = "raft.redb";

/// Log entries by index; the value is `log_store::encode_entry`'s framing.
pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small records: raft ID, vote, committed log ID, last purged log ID (JSON, except the ID).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The latest snapshot: `meta` (JSON `SnapshotMeta`) and `data` (prost `api::StoreSnapshot`).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// Snapshots replaced by a newer one, kept as the cluster's `KeepOldSnapshots` says, by the last
/// log index they cover; the value is `[meta length: u32 BE][JSON SnapshotMeta][data]`.
pub(crate) const OLD_SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("old_snapshots");

pub(crate) const KEY_RAFT_ID: &str = "raft_id";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// redb's page cache for the raft database. redb moves every page it writes into this cache, and
/// its default (1 GiB) lets a long-running manager's memory grow with its raft file (log entries,
/// snapshots) up to that much; what is read back is the log's tail (replication to a follower
/// catching up, replay at start) and the snapshot, for which a few MiB serve as well: the B-tree
/// pages every append walks stay in it, and the rest comes from the kernel's page cache. (At
/// 16 MiB it was the manager's fourth largest holder of memory in the dispatcher bench.)
pub(crate) const CACHE_BYTES: usize = 2 << 20;

/// How long `open` keeps retrying while a previous instance in this process still holds the
/// file (openraft's workers drop their storage handles shortly after `Raft::shutdown`).
const OPEN_RETRY: Duration = Duration::from_secs(10);

/// Creates `dir` (mode 0700) and opens or creates `dir/raft.redb` (mode 0600) with every table
/// present, so readers never meet a missing table.
pub(crate) fn open(dir: &Path) -> Result<Arc<Database>, RaftError> {
    let io_err = |path: &Path, source| RaftError::Io {
        path: path.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;

    let path = dir.join(DB_FILE);
    // Create the file ourselves so it never exists with a wider mode than 0600.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(|e| io_err(&path, e))?;

    let deadline = Instant::now() + OPEN_RETRY;
    let db = loop {
        match Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
        {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(db_err(&path, e)),
        }
    };
    let txn = db.begin_write().map_err(|e| db_err(&path, e))?;
    {
        txn.open_table(LOGS).map_err(|e| db_err(&path, e))?;
        txn.open_table(META).map_err(|e| db_err(&path, e))?;
        txn.open_table(SNAPSHOT).map_err(|e| db_err(&path, e))?;
        txn.open_table(OLD_SNAPSHOTS)
            .map_err(|e| db_err(&path, e))?;
    }
    txn.commit().map_err(|e| db_err(&path, e))?;
    Ok(Arc::new(db))
}

/// Fsyncs the directory `dir`, so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RaftError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RaftError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Reads this member's raft ID, or draws a random non-zero one and stores it durably.
pub(crate) fn raft_id(db: &Database, path: &Path) -> Result<u64, RaftError> {
    let txn = db.begin_write().map_err(|e| db_err(path, e))?;
    let id = {
        let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
        let existing = meta
            .get(KEY_RAFT_ID)
            .map_err(|e| db_err(path, e))?
            .map(|v| v.value().to_vec());
        match existing {
            Some(bytes) => {
                let raw: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| RaftError::Corrupt {
                        path: path.to_path_buf(),
                        what: format!("raft ID record has {} bytes", bytes.len()),
                    })?;
                return Ok(u64::from_be_bytes(raw));
            }
            None => {
                // Zero is not a valid raft ID in SwarmKit; draw again in the unlikely case.
                let id = loop {
                    let id = rand::random::<u64>();
                    if id != 0 {
                        break id;
                    }
                };
                meta.insert(KEY_RAFT_ID, id.to_be_bytes().as_slice())
                    .map_err(|e| db_err(path, e))?;
                id
            }
        }
    };
    txn.commit().map_err(|e| db_err(path, e))?;
    Ok(id)
}

/// First and last log index stored on disk, and the last purged log index.
pub(crate) fn log_bounds(db: &Database) -> Result<LogBounds, StorageError> {
    let txn = db.begin_read().map_err(read_err)?;
    let logs = txn.open_table(LOGS).map_err(read_err)?;
    let first_index = logs.first().map_err(read_err)?.map(|(k, _)| k.value());
    let last_index = logs.last().map_err(read_err)?.map(|(k, _)| k.value());
    let meta = txn.open_table(META).map_err(read_err)?;
    let last_purged: Option<crate::types::LogId> = get_json(&meta, KEY_LAST_PURGED)?;
    let snap = txn.open_table(SNAPSHOT).map_err(read_err)?;
    let snapshot_meta: Option<openraft::SnapshotMeta<u64, openraft::BasicNode>> =
        get_json(&snap, KEY_SNAPSHOT_META)?;
    let old = txn.open_table(OLD_SNAPSHOTS).map_err(read_err)?;
    let mut old_snapshot_indexes = Vec::new();
    for row in old.iter().map_err(read_err)? {
        old_snapshot_indexes.push(row.map_err(read_err)?.0.value());
    }
    Ok(LogBounds {
        first_index,
        last_index,
        last_purged_index: last_purged.map(|l| l.index),
        snapshot_index: snapshot_meta.and_then(|m| m.last_log_id).map(|l| l.index),
        old_snapshot_indexes,
    })
}

/// What the raft database holds, by log index (for operators and tests).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// Lowest log index still stored, if any.
    pub first_index: Option<u64>,
    /// Highest log index stored, if any.
    pub last_index: Option<u64>,
    /// Highest index removed by log compaction, if any.
    pub last_purged_index: Option<u64>,
    /// Last index covered by the stored snapshot, if any.
    pub snapshot_index: Option<u64>,
    /// Last indexes covered by the older snapshots kept (`KeepOldSnapshots`), oldest first.
    pub old_snapshot_indexes: Vec<u64>,
}

/// Reads a JSON record from a `&str -> &[u8]` table.
pub(crate) fn get_json<T, Tbl>(table: &Tbl, key: &str) -> Result<Option<T>, StorageError>
where
    T: serde::de::DeserializeOwned,
    Tbl: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).map_err(read_err)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

/// Encodes a record as JSON for a `&str -> &[u8]` table.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(write_err)
}

pub(crate) fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read(AnyError::new(&e)).into()
}

pub(crate) fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> RaftError {
    RaftError::Database {
        path: PathBuf::from(path),
        source: Box::new(e.into()),
    }
}
