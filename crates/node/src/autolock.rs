//! A manager's side of encryption at rest and autolock (spec 5.11): the raft data keys kept in
//! the node key's headers ([`KeyFileDeks`], the `raft::DekStore` of the manager's raft), and the
//! unlock key followed from the cluster object ([`follow_unlock_key`]): when autolock is turned
//! on or off or the unlock key rotated, this manager locks, unlocks or re-locks its key file with
//! the cluster's key (a manager that was down does so once it is back and sees the object), and
//! a key file that was unlocked and is now locked gets a new raft data key in the background.

use std::sync::Arc;

use ca::{KeyStore, StoredDataKeys};
use store::{By, Event, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

/// The raft data keys in the node key file's headers.
pub struct KeyFileDeks(pub KeyStore);

impl raft::DekStore for KeyFileDeks {
    fn load(&self) -> Result<Option<raft::DataKeys>, String> {
        let stored = self.0.data_keys().map_err(|e| e.to_string())?;
        let key = |k: &Zeroizing<Vec<u8>>| {
            raft::DataKey::from_bytes(k)
                .ok_or_else(|| "a raft data key is not 32 bytes".to_string())
        };
        let Some(current) = stored.current.as_ref() else {
            return Ok(None);
        };
        Ok(Some(raft::DataKeys {
            current: key(current)?,
            pending: stored.pending.as_ref().map(key).transpose()?,
            needs_rotation: stored.needs_rotation,
        }))
    }

    fn save(&self, keys: &raft::DataKeys) -> Result<(), String> {
        let bytes = |k: &raft::DataKey| Zeroizing::new(k.as_bytes().to_vec());
        self.0
            .save_data_keys(&StoredDataKeys {
                current: Some(bytes(&keys.current)),
                pending: keys.pending.as_ref().map(bytes),
                needs_rotation: keys.needs_rotation,
            })
            .map_err(|e| e.to_string())
    }
}

/// The managers' unlock key the cluster object asks for (`None`: autolock off) and the
/// object's version, which orders the changes.
fn wanted(cluster: &api::Cluster) -> (Option<Vec<u8>>, u64) {
    let autolock = cluster
        .spec
        .as_ref()
        .and_then(|s| s.encryption_config.as_ref())
        .is_some_and(|e| e.auto_lock_managers);
    let key = cluster
        .unlock_keys
        .iter()
        .find(|k| autolock && k.subsystem == ca::MANAGER_ROLE)
        .map(|k| k.key.clone());
    let version = cluster
        .meta
        .as_ref()
        .and_then(|m| m.version.as_ref())
        .map_or(0, |v| v.index);
    (key, version)
}

/// Follows the cluster object's unlock key until `shutdown` (see the module doc).
pub async fn follow_unlock_key(
    store: MemoryStore,
    keys: KeyStore,
    raft: Arc<raft::RaftNode>,
    shutdown: CancellationToken,
) {
    let (cluster, mut watcher) = store.view_and_watch(WatchFilter::none().clusters(), |tx| {
        tx.find_clusters(By::Name(manager::bootstrap::DEFAULT_CLUSTER_NAME))
            .into_iter()
            .next()
    });
    let apply = |c: &api::Cluster| {
        let (key, version) = wanted(c);
        let locking = key.is_some();
        match keys.set_unlock_key(key, version) {
            Ok(false) => {}
            Ok(true) => {
                info!(
                    locked = locking,
                    kek.version = version,
                    "the node key follows the cluster's autolock setting"
                );
                if keys.data_keys().is_ok_and(|k| k.needs_rotation) {
                    drop(raft.rotate_data_key());
                }
            }
            Err(e) => warn!("failed to follow the cluster's unlock key: {e}"),
        }
    };
    if let Some(c) = &cluster {
        apply(c);
    }
    loop {
        let ev = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            ev = watcher.recv() => ev,
        };
        match ev {
            None => return,
            Some(ev @ Event::Object { .. }) => {
                if let Some(c) = ev.object_as::<api::Cluster>() {
                    apply(c);
                }
            }
            Some(_) => {}
        }
    }
}
