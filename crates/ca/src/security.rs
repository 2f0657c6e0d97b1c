//! A node's live TLS identity: its certificate, key and trusted roots, the server configs built
//! from them (control socket and remote API), and the client config its outgoing connections use.
//! Installing a renewed certificate or a new root writes the key store first and then replaces the
//! configs, so new connections use the new identity at once and nothing has to restart. Installs
//! are serialized, and each one that changes part of the identity (a renewed certificate, new
//! roots) starts from what the previous one left, so a renewal and a root change that cross never
//! undo each other nor write the key store at the same time.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::{
    CaError, CertInfo, KeyStore, NodeTlsMaterial, ServerConfig, ServerTls, control_server_config,
    mtls_client_config, mtls_server_config,
};

/// Earliest and latest point of a certificate's validity at which it is renewed (spec 5.10).
const RENEW_FROM: f64 = 0.5;
const RENEW_TO: f64 = 0.8;

struct Current {
    material: NodeTlsMaterial,
    info: CertInfo,
}

/// The node's identity, shared by everything that speaks TLS for it.
pub struct SecurityConfig {
    keys: KeyStore,
    /// Held from reading the identity an install starts from to publishing the new one.
    installing: Mutex<()>,
    current: RwLock<Current>,
    control: watch::Sender<ServerConfig>,
    remote: watch::Sender<ServerConfig>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("node_id", &self.info().node_id)
            .finish_non_exhaustive()
    }
}

impl SecurityConfig {
    /// The identity in `material`, which is (or is about to be) what `keys` holds on disk.
    pub fn new(keys: KeyStore, material: NodeTlsMaterial) -> Result<Arc<SecurityConfig>, CaError> {
        let info = CertInfo::parse(&material.cert_pem)?;
        let (control, remote) = server_configs(&material)?;
        Ok(Arc::new(SecurityConfig {
            keys,
            installing: Mutex::new(()),
            current: RwLock::new(Current { material, info }),
            control: watch::channel(control).0,
            remote: watch::channel(remote).0,
            changed: watch::channel(0).0,
        }))
    }

    /// Writes the material to the key store (the first time, or again).
    pub fn save(&self) -> Result<(), CaError> {
        let _installing = self.lock_installs();
        let m = self.material();
        self.keys.save(&m.root_pem, &m.cert_pem, &m.key_pem)
    }

    /// The key store this identity is written to.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The current certificate, key and roots.
    pub fn material(&self) -> NodeTlsMaterial {
        self.read().material.clone()
    }

    /// What the current certificate says.
    pub fn info(&self) -> CertInfo {
        self.read().info.clone()
    }

    fn lock_installs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The control socket's server config (no client certificates), following renewals.
    pub fn control_tls(&self) -> ServerTls {
        ServerTls::reloadable(self.control.subscribe())
    }

    /// The remote API's server config (client certificates verified against the roots when
    /// given), following renewals and root changes.
    pub fn remote_tls(&self) -> ServerTls {
        ServerTls::reloadable(self.remote.subscribe())
    }

    /// A client config presenting the current certificate and trusting the current roots.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, CaError> {
        let m = self.material();
        mtls_client_config(&m.root_pem, Some((&m.cert_pem, &m.key_pem)))
    }

    /// A counter that moves whenever a new identity is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Installs a whole identity (certificate, key and roots) at once, for tests; the node
    /// changes one part at a time (`install_certificate`, `install_root`).
    #[cfg(test)]
    fn install(&self, material: NodeTlsMaterial) -> Result<(), CaError> {
        let _installing = self.lock_installs();
        self.install_locked(material)
    }

    /// Installs a renewed certificate and its key, keeping the trusted roots current at the time
    /// of the install (not those of when the renewal started).
    pub fn install_certificate(&self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<(), CaError> {
        let _installing = self.lock_installs();
        let root_pem = self.material().root_pem;
        self.install_locked(NodeTlsMaterial {
            root_pem,
            cert_pem,
            key_pem,
        })
    }

    fn install_locked(&self, material: NodeTlsMaterial) -> Result<(), CaError> {
        let info = CertInfo::parse(&material.cert_pem)?;
        let (control, remote) = server_configs(&material)?;
        self.keys
            .save(&material.root_pem, &material.cert_pem, &material.key_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current { material, info };
        self.control.send_replace(control);
        self.remote.send_replace(remote);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Installs new trusted roots, keeping the certificate and key.
    pub fn install_root(&self, root_pem: Vec<u8>) -> Result<(), CaError> {
        let _installing = self.lock_installs();
        let mut m = self.material();
        if m.root_pem == root_pem {
            return Ok(());
        }
        m.root_pem = root_pem;
        self.install_locked(m)
    }

    /// How long until the current certificate is due for renewal: a random point between 50%
    /// and 80% of its validity, counted from its start (zero when that point has passed).
    pub fn renewal_delay(&self) -> Duration {
        renewal_delay(&self.info(), rand::random::<f64>())
    }
}

fn server_configs(m: &NodeTlsMaterial) -> Result<(ServerConfig, ServerConfig), CaError> {
    Ok((
        control_server_config(&m.cert_pem, &m.key_pem)?,
        mtls_server_config(&m.cert_pem, &m.key_pem, &m.root_pem, false)?,
    ))
}

/// The renewal point of `info` for a random `r` in [0, 1).
fn renewal_delay(info: &CertInfo, r: f64) -> Duration {
    let validity = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    let fraction = RENEW_FROM + (RENEW_TO - RENEW_FROM) * r.clamp(0.0, 1.0);
    let due = info.not_before + validity.mul_f64(fraction);
    due.duration_since(SystemTime::now()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeKey, RootCa};

    fn material(root: &RootCa, id: &str, expiry: Duration) -> NodeTlsMaterial {
        let key = NodeKey::generate().expect("key");
        let cert = root
            .issue_any_expiry(
                key.csr_pem().expect("csr").as_bytes(),
                id,
                api::NodeRole::Worker,
                "c1",
                expiry,
            )
            .expect("cert");
        NodeTlsMaterial {
            root_pem: root.cert_pem().to_vec(),
            cert_pem: cert,
            key_pem: key.key_pem().into_bytes(),
        }
    }

    #[test]
    fn renewal_point_is_between_half_and_four_fifths_of_validity() {
        let root = RootCa::generate().expect("root");
        let m = material(&root, "n1", Duration::from_secs(100 * 3600));
        let info = CertInfo::parse(&m.cert_pem).expect("info");
        // Validity starts an hour back: 101 h in all.
        let total = info
            .not_after
            .duration_since(info.not_before)
            .expect("order");
        let elapsed = SystemTime::now()
            .duration_since(info.not_before)
            .expect("started");
        for (r, fraction) in [(0.0, 0.5), (1.0, 0.8), (0.5, 0.65)] {
            let want = total.mul_f64(fraction) - elapsed;
            let got = renewal_delay(&info, r);
            let diff = want.as_secs_f64() - got.as_secs_f64();
            assert!(diff.abs() < 5.0, "r={r}: want {want:?} got {got:?}");
        }
        // A certificate past its renewal window is due now.
        let mut old = info.clone();
        old.not_before -= total;
        old.not_after -= total;
        assert_eq!(renewal_delay(&old, 0.0), Duration::ZERO);
    }

    #[test]
    fn install_replaces_identity_on_disk_and_in_configs() {
        let root = RootCa::generate().expect("root");
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeyStore::new(dir.path());
        let first = material(&root, "n1", crate::MIN_NODE_CERT_EXPIRY);
        let sec = SecurityConfig::new(keys.clone(), first.clone()).expect("security");
        sec.save().expect("save");
        assert_eq!(keys.load().expect("load"), Some(first.clone()));
        let mut remote = sec.remote.subscribe();
        let changed = sec.subscribe();
        remote.borrow_and_update();

        let second = material(&root, "n1", crate::MIN_NODE_CERT_EXPIRY);
        sec.install(second.clone()).expect("install");
        assert_eq!(keys.load().expect("load"), Some(second.clone()));
        assert_eq!(sec.material(), second);
        assert!(remote.has_changed().expect("open"));
        assert_eq!(
            remote.borrow().certificate_der(),
            Some(pem::parse(&second.cert_pem).expect("pem").into_contents()),
            "the remote API presents the new certificate"
        );
        assert_eq!(*changed.borrow(), 1);

        // Same root again: nothing to do.
        sec.install_root(second.root_pem.clone())
            .expect("same root");
        assert_eq!(*changed.borrow(), 1);
        // Garbage is refused and the identity stays.
        let mut bad = second.clone();
        bad.cert_pem = b"junk".to_vec();
        assert!(sec.install(bad).is_err());
        assert_eq!(sec.material(), second);
    }

    #[test]
    fn renewals_and_root_changes_that_cross_keep_both() {
        // A root bundle is any set of roots; two roots make two distinct bundles.
        let root = RootCa::generate().expect("root");
        let other = RootCa::generate().expect("other root");
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeyStore::new(dir.path());
        let first = material(&root, "n1", crate::MIN_NODE_CERT_EXPIRY);
        let sec = SecurityConfig::new(keys.clone(), first.clone()).expect("security");
        sec.save().expect("save");
        let renewed: Vec<NodeTlsMaterial> = (0..8)
            .map(|_| material(&root, "n1", crate::MIN_NODE_CERT_EXPIRY))
            .collect();
        let bundles: Vec<Vec<u8>> = (0..8)
            .map(|i| {
                let mut b = root.cert_pem().to_vec();
                if i % 2 == 1 {
                    b.extend_from_slice(other.cert_pem());
                }
                b
            })
            .collect();
        // Renewals on one thread, root changes (the agent's session and the manager's own store
        // watch both install roots) on two others, all writing the key store at once.
        std::thread::scope(|s| {
            s.spawn(|| {
                for m in &renewed {
                    sec.install_certificate(m.cert_pem.clone(), m.key_pem.clone())
                        .expect("install certificate");
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for b in &bundles {
                        sec.install_root(b.clone()).expect("install root");
                    }
                });
            }
        });
        let last = renewed.last().expect("renewals");
        let want = NodeTlsMaterial {
            root_pem: bundles.last().expect("bundles").clone(),
            cert_pem: last.cert_pem.clone(),
            key_pem: last.key_pem.clone(),
        };
        assert_eq!(sec.material(), want);
        assert_eq!(keys.load().expect("load"), Some(want));
        let leftovers: Vec<_> = std::fs::read_dir(keys.dir())
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
