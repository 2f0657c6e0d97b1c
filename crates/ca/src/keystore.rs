//! The node's TLS files under `<state dir>/certificates/` (spec 2.2): `swarm-root-ca.crt` and
//! `swarm-node.crt` (0644) and `swarm-node.key` (0600), in a 0700 directory. Each file is
//! replaced atomically (temp file, fsync, rename, fsync of the directory).
//!
//! The key file carries PEM headers as SwarmKit's does (spec 5.11): `kek-version` and, on a
//! manager, the raft data keys (`raft-dek`, `raft-dek-pending`, `raft-dek-needs-rotation`; see
//! [`crate::keylock`]). With an unlock key (autolock) the key is PKCS#8-encrypted with it
//! (`ENCRYPTED PRIVATE KEY`) and the data keys are wrapped by it. What the rest of the node sees
//! (`NodeTlsMaterial::key_pem`) is always the plain key without headers.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CaError;

const ROOT_FILE: &str = "swarm-root-ca.crt";
const CERT_FILE: &str = "swarm-node.crt";
const KEY_FILE: &str = "swarm-node.key";

/// The three PEM blobs a node keeps. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeTlsMaterial {
    /// Root CA certificate(s).
    pub root_pem: Vec<u8>,
    /// Node certificate (and intermediates).
    pub cert_pem: Vec<u8>,
    /// Node key, PKCS#8.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for NodeTlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTlsMaterial")
            .field("root_pem", &String::from_utf8_lossy(&self.root_pem))
            .field("cert_pem", &String::from_utf8_lossy(&self.cert_pem))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The `certificates/` directory of a state dir. Clones share the unlock key and serialize their
/// writes of the key file.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
    lock: std::sync::Arc<std::sync::Mutex<crate::keylock::Kek>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl KeyStore {
    /// The key store of the state directory `state_dir`.
    pub fn new(state_dir: &Path) -> KeyStore {
        KeyStore::with_unlock_key(state_dir, None)
    }

    /// The key store of `state_dir`, whose key is (or is to be) locked with `unlock_key`.
    pub fn with_unlock_key(state_dir: &Path, unlock_key: Option<Vec<u8>>) -> KeyStore {
        KeyStore {
            dir: state_dir.join("certificates"),
            lock: std::sync::Arc::new(std::sync::Mutex::new(crate::keylock::Kek::new(unlock_key))),
        }
    }

    pub(crate) fn kek(&self) -> std::sync::MutexGuard<'_, crate::keylock::Kek> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The `certificates/` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes all three files, the key last-but-durably, each atomically.
    pub fn save(&self, root_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<(), CaError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.dir))?;
        {
            let mut kek = self.kek();
            // The headers (data keys) stay with the key; the new key body is wrapped as the old.
            let headers = kek.read_headers(&self.key_path())?;
            let file = kek.seal_key_file(key_pem, &headers)?;
            self.write_atomic(KEY_FILE, file.as_bytes(), 0o600)?;
            kek.unsaved = None;
        }
        self.write_atomic(CERT_FILE, cert_pem, 0o644)?;
        self.write_atomic(ROOT_FILE, root_pem, 0o644)?;
        let dir = std::fs::File::open(&self.dir).map_err(io(&self.dir))?;
        dir.sync_all().map_err(io(&self.dir))
    }

    /// Replaces the key file with `file` durably (the directory synced too).
    pub(crate) fn write_key_file(&self, file: &str) -> Result<(), CaError> {
        self.write_atomic(KEY_FILE, file.as_bytes(), 0o600)?;
        let dir = std::fs::File::open(&self.dir).map_err(io(&self.dir))?;
        dir.sync_all().map_err(io(&self.dir))
    }

    fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> Result<(), CaError> {
        let path = self.dir.join(name);
        // A name of its own per write, so that two writers (two processes on one state
        // directory, say) never truncate or rename each other's temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        let written = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(io(&path)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Reads the three files; `None` when none exists yet. A partial set is an error.
    pub fn load(&self) -> Result<Option<NodeTlsMaterial>, CaError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, CaError> {
            let path = self.dir.join(name);
            match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        };
        match (read(ROOT_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?) {
            (None, None, None) => Ok(None),
            (Some(root_pem), Some(cert_pem), Some(key_file)) => Ok(Some(NodeTlsMaterial {
                root_pem,
                cert_pem,
                key_pem: self.kek().open_key_file(&key_file)?,
            })),
            _ => Err(CaError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "incomplete TLS material: swarm-root-ca.crt, swarm-node.crt and swarm-node.key must all exist",
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn save_load_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ks = KeyStore::new(tmp.path());
        assert_eq!(ks.load().expect("load"), None);
        ks.save(b"root", b"cert", b"key").expect("save");
        assert_eq!(mode(ks.dir()), 0o700);
        assert_eq!(mode(&ks.dir().join(KEY_FILE)), 0o600);
        assert_eq!(mode(&ks.dir().join(CERT_FILE)), 0o644);
        assert_eq!(mode(&ks.dir().join(ROOT_FILE)), 0o644);
        let m = ks.load().expect("load").expect("present");
        assert_eq!(
            (
                m.root_pem.as_slice(),
                m.cert_pem.as_slice(),
                m.key_pem.as_slice()
            ),
            (&b"root"[..], &b"cert"[..], &b"key"[..])
        );
        assert!(!format!("{m:?}").contains("key\""), "{m:?}");

        // Saving again replaces the files whole and leaves no temporary file behind.
        ks.save(b"root2", b"cert2", b"key2").expect("save again");
        let m = ks.load().expect("load").expect("present");
        assert_eq!(m.key_pem, b"key2");
        assert_eq!(m.cert_pem, b"cert2");
        assert_eq!(mode(&ks.dir().join(KEY_FILE)), 0o600);
        let mut names: Vec<String> = std::fs::read_dir(ks.dir())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CERT_FILE, KEY_FILE, ROOT_FILE]);

        std::fs::remove_file(ks.dir().join(CERT_FILE)).expect("rm");
        assert!(ks.load().is_err(), "a partial set must not load");
    }
}
