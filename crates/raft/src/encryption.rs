//! Encryption at rest of the raft database (spec 5.11): every log entry record, the snapshot's
//! data and the old snapshots kept are sealed with ChaCha20-Poly1305 (ring) under a data
//! encryption key (DEK), each with a random 96-bit nonce (a DEK seals far fewer than the 2^32
//! records past which random nonces would risk repeating, and rotation replaces it). The DEK is not kept here: a [`DekStore`] supplied by the node keeps it with the node's
//! key material (the node key's PEM headers, wrapped by the unlock key when autolocked).
//!
//! A sealed record is `[MAGIC][key ID: 8][nonce: 12][ciphertext][tag: 16]`; the key ID (the first
//! 8 bytes of a SHA-256 of the key) tells which DEK sealed it, and the associated data binds it
//! to its place (table and key), so a record moved elsewhere in the file does not open. Small
//! records stay plain: the vote, the committed and purged log IDs, the raft ID, removed members
//! and the snapshot's metadata (log IDs and member addresses).
//!
//! A database is either wholly sealed or wholly plain: the `encryption` record in `meta` says it
//! is sealed. A plain one (written by a build without encryption) met with a DEK is migrated
//! once, before openraft opens it, by copying it sealed into a new file renamed over the old one,
//! so no plain page of it stays in the file (an in-place rewrite would leave them in free pages).
//!
//! Rotation ([`Encryption::rotate`]) never stops writes: (1) a new DEK is saved as pending next
//! to the current one, (2) new records are sealed with it, (3) the records under other keys are
//! re-sealed in small transactions between the writers', (4) the pending DEK is saved as the
//! only one. A crash anywhere leaves keys that open every record: before (1) only the current
//! key sealed anything, after it both are kept until (4), and a member opened with a pending key
//! finishes the rotation in the background.

use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::db::{LOGS, META, OLD_SNAPSHOTS, SNAPSHOT, read_err, write_err};
use crate::types::StorageError;

/// First byte of a sealed record. A plain log record starts with its header's length (a u32
/// big-endian far below 2^24, so 0), but the `encryption` marker, not this byte, tells which
/// kind a database holds.
const MAGIC: u8 = 0xe1;
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// The `meta` record present once every record of the database is sealed.
pub(crate) const KEY_ENCRYPTION: &str = "encryption";
const ENCRYPTION_V1: &[u8] = b"chacha20poly1305-v1";

/// Records re-sealed per transaction during a rotation: small, so a writer waits little.
const ROTATION_BATCH: usize = 64;

/// A 32-byte data encryption key; zeroed when dropped, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A new random key.
    pub fn generate() -> DataKey {
        DataKey(Zeroizing::new(rand::random::<[u8; 32]>()))
    }

    /// The key of these 32 bytes; `None` for another length.
    pub fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        let raw: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(Zeroizing::new(raw)))
    }

    /// The key's bytes (for the key store to wrap).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    fn id(&self) -> [u8; ID_LEN] {
        let mut h = Sha256::new();
        h.update(b"swarmd raft data key id\0");
        h.update(self.0.as_slice());
        let digest = h.finalize();
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        id
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", hex_id(&self.id()))
    }
}

fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a [`DekStore`] keeps: SwarmKit's `raft-dek`, `raft-dek-pending` and
/// `raft-dek-needs-rotation`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataKeys {
    /// The key sealing the records (all of them once no rotation runs).
    pub current: DataKey,
    /// The key a rotation in progress moves the records to.
    pub pending: Option<DataKey>,
    /// Another rotation is wanted once the current one ends (the unlock key changed: the DEK
    /// was readable by whoever held the old one).
    pub needs_rotation: bool,
}

/// Where a member's data keys live (the node's key file). `save` must be durable when it
/// returns: records are sealed with a key only once it is saved.
pub trait DekStore: Send + Sync + 'static {
    /// The stored keys; `None` before the first save.
    fn load(&self) -> Result<Option<DataKeys>, String>;
    /// Replaces the stored keys durably.
    fn save(&self, keys: &DataKeys) -> Result<(), String>;
}

/// The data keys of a member, as `RaftConfig` carries them: none (a plain database, for tests
/// and tools) or a store. Compared by identity.
#[derive(Clone, Default)]
pub struct KeySource(pub Option<Arc<dyn DekStore>>);

impl PartialEq for KeySource {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for KeySource {}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "KeySource(store)"
        } else {
            "KeySource(none)"
        })
    }
}

/// A record that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not a sealed record, or cut short.
    #[error("raft record is not encrypted or is truncated")]
    NotSealed,
    /// Sealed with a key this member does not hold.
    #[error("raft record is encrypted with an unknown data key {0}")]
    UnknownKey(String),
    /// The tag does not verify: changed, moved, or another key with the same ID.
    #[error("raft record fails authentication")]
    Forged,
}

/// Where a record lives, bound into its seal.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    /// A log entry at this index.
    Log(u64),
    /// The current snapshot's data.
    Snapshot,
    /// An old snapshot covering up to this index.
    OldSnapshot(u64),
}

impl Place {
    fn aad(self) -> [u8; 9] {
        let (tag, n) = match self {
            Place::Log(i) => (1, i),
            Place::Snapshot => (2, 0),
            Place::OldSnapshot(i) => (3, i),
        };
        let mut out = [0; 9];
        out[0] = tag;
        out[1..].copy_from_slice(&n.to_be_bytes());
        out
    }
}

struct Ring {
    /// Seals new records, with the ID of its key (a digest, computed once here rather than per
    /// record); `None`: the database is plain.
    write: Option<([u8; ID_LEN], LessSafeKey)>,
    /// Every key a record may be sealed with.
    read: Vec<([u8; ID_LEN], LessSafeKey)>,
}

/// The keys a member seals and opens records with. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Keyring(Arc<RwLock<Ring>>);

impl Keyring {
    /// A keyring that leaves records plain.
    pub(crate) fn plain() -> Keyring {
        Keyring(Arc::new(RwLock::new(Ring {
            write: None,
            read: Vec::new(),
        })))
    }

    fn for_keys(keys: &DataKeys) -> Keyring {
        let ring = Keyring::plain();
        ring.install(keys);
        ring
    }

    /// Seals with the pending key if any, else the current one; opens with both.
    fn install(&self, keys: &DataKeys) {
        let write = keys.pending.as_ref().unwrap_or(&keys.current);
        let cipher = |k: &DataKey| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k.0.as_slice())
                    .expect("a data key is 32 bytes, ChaCha20-Poly1305's key length"),
            )
        };
        let mut read = vec![(keys.current.id(), cipher(&keys.current))];
        if let Some(p) = &keys.pending {
            read.push((p.id(), cipher(p)));
        }
        let mut ring = self.0.write().unwrap_or_else(PoisonError::into_inner);
        ring.write = Some((write.id(), cipher(write)));
        ring.read = read;
    }

    pub(crate) fn is_plain(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .write
            .is_none()
    }

    fn write_id(&self) -> Option<[u8; ID_LEN]> {
        let ring = self.0.read().unwrap_or_else(PoisonError::into_inner);
        ring.write.as_ref().map(|(id, _)| *id)
    }

    /// `plain` as stored at `place`: sealed, or unchanged for a plain database.
    pub(crate) fn seal(&self, place: Place, plain: &[u8]) -> Vec<u8> {
        let ring = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some((id, cipher)) = &ring.write else {
            return plain.to_vec();
        };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(MAGIC);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad()),
                &mut out[HEADER_LEN..],
            )
            .expect("ChaCha20-Poly1305 seals any length a raft record has");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// What `seal` stored at `place`.
    pub(crate) fn open(&self, place: Place, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        let ring = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if ring.write.is_none() {
            return Ok(stored.to_vec());
        }
        let (id, nonce, sealed) = split(stored)?;
        let (_, cipher) = ring
            .read
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or_else(|| SealError::UnknownKey(hex_id(&id)))?;
        let mut buf = sealed.to_vec();
        let len = cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad()),
                &mut buf,
            )
            .map_err(|_| SealError::Forged)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// `open` for storage callers.
    pub(crate) fn open_or_read_err(
        &self,
        place: Place,
        stored: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        self.open(place, stored).map_err(read_err)
    }
}

/// A sealed record's key ID, nonce and ciphertext.
type Parts<'a> = ([u8; ID_LEN], [u8; NONCE_LEN], &'a [u8]);

fn split(stored: &[u8]) -> Result<Parts<'_>, SealError> {
    if stored.len() < HEADER_LEN || stored[0] != MAGIC {
        return Err(SealError::NotSealed);
    }
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&stored[1..=ID_LEN]);
    let mut nonce = [0; NONCE_LEN];
    nonce.copy_from_slice(&stored[1 + ID_LEN..HEADER_LEN]);
    Ok((id, nonce, &stored[HEADER_LEN..]))
}

fn key_id_of(stored: &[u8]) -> Option<[u8; ID_LEN]> {
    split(stored).ok().map(|(id, _, _)| id)
}

/// A member's encryption: its keyring and, with a key store, rotation.
#[derive(Clone)]
pub struct Encryption {
    ring: Keyring,
    store: Option<Arc<dyn DekStore>>,
    /// One rotation at a time.
    rotating: Arc<tokio::sync::Mutex<()>>,
    /// A rotation was asked for while one ran: it runs again after.
    again: Arc<Mutex<bool>>,
}

/// Where a rotation stops in a test: after the step named, as if the process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RotationStop {
    /// Pending key saved, nothing re-sealed.
    AfterPendingSaved,
    /// This many batches re-sealed.
    AfterBatches(usize),
    /// Every record re-sealed, the pending key not yet made current.
    BeforeFinish,
}

impl Encryption {
    /// Loads (or creates and saves) the keys of `source`; a plain keyring without one.
    pub(crate) fn load(source: &KeySource) -> Result<Encryption, String> {
        let Some(store) = source.0.clone() else {
            return Ok(Encryption {
                ring: Keyring::plain(),
                store: None,
                rotating: Arc::default(),
                again: Arc::default(),
            });
        };
        let keys = match store.load()? {
            Some(k) => k,
            None => {
                let k = DataKeys {
                    current: DataKey::generate(),
                    pending: None,
                    needs_rotation: false,
                };
                store.save(&k)?;
                k
            }
        };
        Ok(Encryption {
            ring: Keyring::for_keys(&keys),
            store: Some(store),
            rotating: Arc::default(),
            again: Arc::default(),
        })
    }

    pub(crate) fn keyring(&self) -> Keyring {
        self.ring.clone()
    }

    /// Whether a rotation was left unfinished or asked for (resumed when the member opens).
    pub(crate) fn rotation_due(&self) -> bool {
        self.store
            .as_ref()
            .and_then(|s| s.load().ok().flatten())
            .is_some_and(|k| k.pending.is_some() || k.needs_rotation)
    }

    /// Rotates the data key over `db` (see the module doc); returns once every record is sealed
    /// with the new key and it is the only one stored. Nothing to do without a key store.
    /// Stops early, to be resumed at the next open, once the database is closed.
    pub(crate) async fn rotate(&self, db: &Weak<Database>) -> Result<(), String> {
        self.rotate_until(db, None).await
    }

    pub(crate) async fn rotate_until(
        &self,
        db: &Weak<Database>,
        stop: Option<RotationStop>,
    ) -> Result<(), String> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        *self.again.lock().unwrap_or_else(PoisonError::into_inner) = true;
        let _one = self.rotating.lock().await;
        while std::mem::take(&mut *self.again.lock().unwrap_or_else(PoisonError::into_inner)) {
            let mut keys = store
                .load()?
                .ok_or("the data keys disappeared from the key store")?;
            // (1) the pending key, durable before anything is sealed with it.
            if keys.pending.is_none() {
                keys.pending = Some(DataKey::generate());
                keys.needs_rotation = false;
                store.save(&keys)?;
            }
            // (2) new records under it.
            self.ring.install(&keys);
            if stop == Some(RotationStop::AfterPendingSaved) {
                return Ok(());
            }
            // (3) the rest moved to it, a batch per transaction.
            let mut cursor = Cursor::default();
            let mut batches = 0;
            loop {
                if stop == Some(RotationStop::AfterBatches(batches)) {
                    return Ok(());
                }
                let db = db.upgrade().ok_or("the raft database was closed")?;
                let ring = self.ring.clone();
                let (next, done) =
                    tokio::task::spawn_blocking(move || reseal_batch(&db, &ring, cursor))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                cursor = next;
                batches += 1;
                if done {
                    break;
                }
            }
            if stop == Some(RotationStop::BeforeFinish) {
                return Ok(());
            }
            // (4) the pending key alone; a rotation asked for meanwhile runs next.
            let mut latest = store
                .load()?
                .ok_or("the data keys disappeared from the key store")?;
            let pending = latest
                .pending
                .take()
                .ok_or("the pending data key disappeared from the key store")?;
            latest.current = pending;
            if latest.needs_rotation {
                latest.needs_rotation = false;
                *self.again.lock().unwrap_or_else(PoisonError::into_inner) = true;
            }
            store.save(&latest)?;
            self.ring.install(&latest);
            tracing::info!(key = ?latest.current, "raft data key rotated: every record re-encrypted");
        }
        Ok(())
    }
}

/// How far a rotation's re-sealing got: the tables in order, then the key within.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    /// 0: logs, 1: the snapshot, 2: old snapshots.
    table: u8,
    /// The next log index or old snapshot index to look at.
    next: u64,
}

/// Re-seals up to `ROTATION_BATCH` records not under the ring's write key, from `cursor`, in
/// one durable transaction. Returns the new cursor and whether every table is done.
fn reseal_batch(
    db: &Database,
    ring: &Keyring,
    mut cursor: Cursor,
) -> Result<(Cursor, bool), StorageError> {
    let target = ring.write_id().expect("a rotation has a write key");
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(write_err)?;
    let mut moved = 0;
    let reseal = |place: Place, stored: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
        if key_id_of(stored) == Some(target) {
            return Ok(None);
        }
        let plain = Zeroizing::new(ring.open_or_read_err(place, stored)?);
        Ok(Some(ring.seal(place, &plain)))
    };
    while moved < ROTATION_BATCH && cursor.table < 3 {
        match cursor.table {
            0 | 2 => {
                let def = if cursor.table == 0 {
                    LOGS
                } else {
                    OLD_SNAPSHOTS
                };
                let mut table = txn.open_table(def).map_err(write_err)?;
                let mut updates = Vec::new();
                let mut last = None;
                for row in table.range(cursor.next..).map_err(write_err)? {
                    let (k, v) = row.map_err(write_err)?;
                    let index = k.value();
                    let place = if cursor.table == 0 {
                        Place::Log(index)
                    } else {
                        Place::OldSnapshot(index)
                    };
                    if let Some(new) = reseal(place, v.value())? {
                        updates.push((index, new));
                    }
                    last = Some(index);
                    if updates.len() + moved >= ROTATION_BATCH {
                        break;
                    }
                }
                moved += updates.len();
                for (index, new) in updates {
                    table.insert(index, new.as_slice()).map_err(write_err)?;
                }
                match last {
                    Some(i) if moved >= ROTATION_BATCH => cursor.next = i + 1,
                    _ => {
                        cursor.table += 1;
                        cursor.next = 0;
                    }
                }
            }
            _ => {
                let mut table = txn.open_table(SNAPSHOT).map_err(write_err)?;
                let data = table
                    .get(crate::db::KEY_SNAPSHOT_DATA)
                    .map_err(write_err)?
                    .map(|v| v.value().to_vec());
                if let Some(data) = data
                    && let Some(new) = reseal(Place::Snapshot, &data)?
                {
                    table
                        .insert(crate::db::KEY_SNAPSHOT_DATA, new.as_slice())
                        .map_err(write_err)?;
                    moved += 1;
                }
                cursor.table += 1;
                cursor.next = 0;
            }
        }
    }
    txn.commit().map_err(write_err)?;
    Ok((cursor, cursor.table >= 3))
}

/// Whether the database at hand is marked sealed.
fn is_sealed(db: &Database) -> Result<bool, StorageError> {
    let txn = db.begin_read().map_err(read_err)?;
    let meta = txn.open_table(META).map_err(read_err)?;
    Ok(meta.get(KEY_ENCRYPTION).map_err(read_err)?.is_some())
}

fn is_empty(db: &Database) -> Result<bool, StorageError> {
    let txn = db.begin_read().map_err(read_err)?;
    let logs = txn
        .open_table(LOGS)
        .map_err(read_err)?
        .len()
        .map_err(read_err)?;
    let snap = txn
        .open_table(SNAPSHOT)
        .map_err(read_err)?
        .len()
        .map_err(read_err)?;
    let old = txn
        .open_table(OLD_SNAPSHOTS)
        .map_err(read_err)?
        .len()
        .map_err(read_err)?;
    Ok(logs == 0 && snap == 0 && old == 0)
}

fn mark_sealed(db: &Database) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(write_err)?;
    {
        let mut meta = txn.open_table(META).map_err(write_err)?;
        meta.insert(KEY_ENCRYPTION, ENCRYPTION_V1)
            .map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

/// What to do with the database `db` (just opened at `dir`) for `ring`: a sealed one needs a
/// key, a plain one with content is migrated (copied sealed into a new file renamed over it; the
/// database is opened again), an empty one is marked sealed. Returns the database to use.
pub(crate) fn prepare(
    dir: &std::path::Path,
    db: Arc<Database>,
    ring: &Keyring,
) -> Result<Arc<Database>, crate::RaftError> {
    let path = dir.join(crate::db::DB_FILE);
    let corrupt = |what: String| crate::RaftError::Corrupt {
        path: path.clone(),
        what,
    };
    let sealed = is_sealed(&db).map_err(|e| corrupt(e.to_string()))?;
    match (sealed, ring.is_plain()) {
        (true, true) => Err(corrupt(
            "the raft database is encrypted and no data encryption key was given".into(),
        )),
        (false, true) | (true, false) => Ok(db),
        (false, false) if is_empty(&db).map_err(|e| corrupt(e.to_string()))? => {
            mark_sealed(&db).map_err(|e| corrupt(e.to_string()))?;
            Ok(db)
        }
        (false, false) => {
            tracing::info!(path = %path.display(), "encrypting a raft database written without encryption");
            let tmp = dir.join(format!("{}.encrypting", crate::db::DB_FILE));
            let _ = std::fs::remove_file(&tmp);
            migrate_into(&db, &tmp, ring).map_err(|e| corrupt(format!("encrypting: {e}")))?;
            drop(db);
            std::fs::rename(&tmp, &path).map_err(|source| crate::RaftError::Io {
                path: path.clone(),
                source,
            })?;
            crate::db::sync_dir(dir)?;
            crate::db::open(dir)
        }
    }
}

/// Copies every table of the plain `src` into a new database at `dst`, sealing the records.
fn migrate_into(src: &Database, dst: &std::path::Path, ring: &Keyring) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dst)
        .map_err(|x| e(&x))?;
    let out = Database::builder()
        .set_cache_size(crate::db::CACHE_BYTES)
        .create(dst)
        .map_err(|x| e(&x))?;
    let rtxn = src.begin_read().map_err(|x| e(&x))?;
    let mut wtxn = out.begin_write().map_err(|x| e(&x))?;
    wtxn.set_durability(Durability::Immediate)
        .map_err(|x| e(&x))?;
    copy_table(&rtxn, &wtxn, LOGS, |k, v| ring.seal(Place::Log(*k), v))?;
    copy_table(&rtxn, &wtxn, OLD_SNAPSHOTS, |k, v| {
        ring.seal(Place::OldSnapshot(*k), v)
    })?;
    copy_table(&rtxn, &wtxn, SNAPSHOT, |k, v| {
        if *k == crate::db::KEY_SNAPSHOT_DATA {
            ring.seal(Place::Snapshot, v)
        } else {
            v.to_vec()
        }
    })?;
    copy_table(&rtxn, &wtxn, META, |_, v| v.to_vec())?;
    wtxn.open_table(META)
        .map_err(|x| e(&x))?
        .insert(KEY_ENCRYPTION, ENCRYPTION_V1)
        .map_err(|x| e(&x))?;
    wtxn.commit().map_err(|x| e(&x))?;
    Ok(())
}

/// Copies every row of `table` from `rtxn` into the same table of `wtxn`, each value as
/// `value` makes it from the row's key and stored bytes.
fn copy_table<K: redb::Key + 'static>(
    rtxn: &redb::ReadTransaction,
    wtxn: &redb::WriteTransaction,
    table: redb::TableDefinition<K, &[u8]>,
    value: impl Fn(&K::SelfType<'_>, &[u8]) -> Vec<u8>,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let from = rtxn.open_table(table).map_err(|x| e(&x))?;
    let mut to = wtxn.open_table(table).map_err(|x| e(&x))?;
    for row in from.iter().map_err(|x| e(&x))? {
        let (k, v) = row.map_err(|x| e(&x))?;
        let key = k.value();
        let new = value(&key, v.value());
        to.insert(&key, new.as_slice()).map_err(|x| e(&x))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::db::{KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META};

    /// A keyring with a fresh key (the openraft storage suite runs sealed).
    pub(crate) fn ring() -> Keyring {
        Keyring::for_keys(&DataKeys {
            current: DataKey::generate(),
            pending: None,
            needs_rotation: false,
        })
    }

    /// A key store in memory whose saves can be made to fail, as a crash before them would.
    #[derive(Default)]
    struct MemKeys {
        keys: Mutex<Option<DataKeys>>,
        /// Saves left before the next one fails.
        fail_after: Mutex<Option<usize>>,
    }

    impl DekStore for MemKeys {
        fn load(&self) -> Result<Option<DataKeys>, String> {
            Ok(self.keys.lock().expect("lock").clone())
        }
        fn save(&self, keys: &DataKeys) -> Result<(), String> {
            let mut fail = self.fail_after.lock().expect("lock");
            if let Some(n) = fail.as_mut() {
                if *n == 0 {
                    return Err("injected crash before the key file was written".into());
                }
                *n -= 1;
            }
            *self.keys.lock().expect("lock") = Some(keys.clone());
            Ok(())
        }
    }

    const SECRET: &[u8] = b"the-secret-bytes-nobody-may-read";

    fn record(i: u64) -> Vec<u8> {
        let mut v = SECRET.to_vec();
        v.extend_from_slice(&i.to_be_bytes());
        v
    }

    /// 200 log records, a snapshot and two old snapshots, sealed with `ring` (plain if plain).
    fn fill(db: &Database, ring: &Keyring) {
        let txn = db.begin_write().expect("txn");
        {
            let mut logs = txn.open_table(LOGS).expect("logs");
            for i in 1..=200 {
                logs.insert(i, ring.seal(Place::Log(i), &record(i)).as_slice())
                    .expect("insert");
            }
            let mut snap = txn.open_table(SNAPSHOT).expect("snap");
            snap.insert(KEY_SNAPSHOT_META, b"{}".as_slice())
                .expect("meta");
            snap.insert(
                KEY_SNAPSHOT_DATA,
                ring.seal(Place::Snapshot, &record(0)).as_slice(),
            )
            .expect("data");
            let mut old = txn.open_table(OLD_SNAPSHOTS).expect("old");
            for i in [50, 100] {
                old.insert(i, ring.seal(Place::OldSnapshot(i), &record(i)).as_slice())
                    .expect("old");
            }
        }
        txn.commit().expect("commit");
    }

    /// Every record opens with `ring` to what `fill` stored; returns the key IDs seen.
    fn check(db: &Database, ring: &Keyring) -> std::collections::BTreeSet<[u8; ID_LEN]> {
        let mut ids = std::collections::BTreeSet::new();
        let txn = db.begin_read().expect("txn");
        let logs = txn.open_table(LOGS).expect("logs");
        let mut n = 0;
        for row in logs.iter().expect("iter") {
            let (k, v) = row.expect("row");
            let i = k.value();
            assert_eq!(
                ring.open(Place::Log(i), v.value()).expect("open"),
                record(i)
            );
            ids.insert(key_id_of(v.value()).expect("sealed"));
            n += 1;
        }
        assert_eq!(n, 200);
        let snap = txn.open_table(SNAPSHOT).expect("snap");
        let data = snap.get(KEY_SNAPSHOT_DATA).expect("get").expect("data");
        assert_eq!(
            ring.open(Place::Snapshot, data.value()).expect("open"),
            record(0)
        );
        ids.insert(key_id_of(data.value()).expect("sealed"));
        let old = txn.open_table(OLD_SNAPSHOTS).expect("old");
        for row in old.iter().expect("iter") {
            let (k, v) = row.expect("row");
            let i = k.value();
            assert_eq!(
                ring.open(Place::OldSnapshot(i), v.value()).expect("open"),
                record(i)
            );
            ids.insert(key_id_of(v.value()).expect("sealed"));
        }
        ids
    }

    fn file_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).expect("dir").any(|e| {
            let bytes = std::fs::read(e.expect("entry").path()).expect("read");
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    #[test]
    fn a_record_opens_only_in_its_place_and_with_its_key() {
        let ring = ring();
        let sealed = ring.seal(Place::Log(7), SECRET);
        assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET));
        assert_eq!(ring.open(Place::Log(7), &sealed).expect("open"), SECRET);
        assert!(matches!(
            ring.open(Place::Log(8), &sealed),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            ring.open(Place::Snapshot, &sealed),
            Err(SealError::Forged)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().expect("byte") ^= 1;
        assert!(matches!(
            ring.open(Place::Log(7), &flipped),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            super::tests::ring().open(Place::Log(7), &sealed),
            Err(SealError::UnknownKey(_))
        ));
        assert!(matches!(
            ring.open(Place::Log(7), SECRET),
            Err(SealError::NotSealed)
        ));
        assert!(!format!("{:?}", DataKey::generate()).contains('['));
    }

    #[test]
    fn a_plain_database_is_migrated_into_a_new_file_and_a_sealed_one_needs_its_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("raft");
        let db = crate::db::open(&dir).expect("open");
        fill(&db, &Keyring::plain());
        drop(db);
        assert!(
            file_holds(&dir, SECRET),
            "the plain database holds the bytes"
        );
        // A migration that died halfway left its new file behind: it is made again.
        std::fs::write(dir.join("raft.redb.encrypting"), b"half written").expect("stale");

        let ring = ring();
        let db = crate::db::open(&dir).expect("open");
        let db = prepare(&dir, db, &ring).expect("migrate");
        assert_eq!(check(&db, &ring).len(), 1);
        drop(db);
        assert!(
            !file_holds(&dir, SECRET),
            "no plain byte left in the raft directory"
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["raft.redb"]);

        // Opened again: already sealed, nothing to do; without a key it is refused.
        let db = crate::db::open(&dir).expect("open");
        let db = prepare(&dir, db, &ring).expect("sealed");
        check(&db, &ring);
        let Err(err) = prepare(&dir, db, &Keyring::plain()) else {
            panic!("a sealed database opened without a key");
        };
        assert!(err.to_string().contains("no data encryption key"), "{err}");
    }

    /// A rotation stopped after each of its steps (or with the key file write failing at each
    /// of its two saves), then the member "restarted": every record opens with the stored keys,
    /// and the resumed rotation leaves every record under one new key.
    #[tokio::test]
    async fn a_rotation_cut_short_at_any_step_leaves_a_readable_database_and_resumes() {
        enum Crash {
            Stop(RotationStop),
            SaveFails(usize),
        }
        let crashes = [
            Crash::SaveFails(0),
            Crash::Stop(RotationStop::AfterPendingSaved),
            Crash::Stop(RotationStop::AfterBatches(1)),
            Crash::Stop(RotationStop::AfterBatches(3)),
            Crash::Stop(RotationStop::BeforeFinish),
            Crash::SaveFails(1),
        ];
        for crash in crashes {
            let tmp = tempfile::tempdir().expect("tmp");
            let dir = tmp.path().join("raft");
            let store = Arc::new(MemKeys::default());
            let source = KeySource(Some(store.clone()));
            let enc = Encryption::load(&source).expect("keys");
            let first = store.load().expect("load").expect("saved").current;
            let db = crate::db::open(&dir).expect("open");
            let db = prepare(&dir, db, &enc.keyring()).expect("prepare");
            fill(&db, &enc.keyring());
            let weak = Arc::downgrade(&db);
            match crash {
                Crash::Stop(stop) => {
                    enc.rotate_until(&weak, Some(stop)).await.expect("rotate");
                }
                Crash::SaveFails(n) => {
                    *store.fail_after.lock().expect("lock") = Some(n);
                    enc.rotate(&weak).await.expect_err("the save fails");
                    *store.fail_after.lock().expect("lock") = None;
                }
            }
            // A writer kept going during the rotation: its record is sealed with the write key.
            {
                let txn = db.begin_write().expect("txn");
                txn.open_table(LOGS)
                    .expect("logs")
                    .insert(
                        200,
                        enc.keyring().seal(Place::Log(200), &record(200)).as_slice(),
                    )
                    .expect("insert");
                txn.commit().expect("commit");
            }
            drop(db);

            // The restart: keys from the store, database as the disk has it.
            let enc = Encryption::load(&source).expect("keys");
            let db = crate::db::open(&dir).expect("open");
            let db = prepare(&dir, db, &enc.keyring()).expect("prepare");
            check(&db, &enc.keyring());
            if enc.rotation_due() {
                enc.rotate(&Arc::downgrade(&db)).await.expect("resume");
            }
            let keys = store.load().expect("load").expect("keys");
            assert!(keys.pending.is_none());
            let ids = check(&db, &enc.keyring());
            assert_eq!(ids.len(), 1, "one key seals everything after the rotation");
            let rotated = keys.current != first;
            // Only a rotation that failed before saving its key never started.
            assert_eq!(
                rotated,
                !matches!(crash, Crash::SaveFails(0)),
                "rotation outcome"
            );
            assert_eq!(ids.into_iter().next(), Some(keys.current.id()));
        }
    }
}
