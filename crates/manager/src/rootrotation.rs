//! The root rotation subsystem (spec 5.10; SwarmKit's ca/reconciler.go, which its CA server runs
//! on the leader): while the cluster's `root_ca.root_rotation` is set, nodes whose certificate the
//! new root did not issue are asked to renew (certificate status ROTATE, a bounded batch per pass),
//! and once every node's certificate comes from the new root the rotation completes: the new root
//! becomes `root_ca` with a new `ca_cert_hash` and new join tokens, and `root_rotation` is cleared.
//! Starting a rotation is UpdateCluster's job; signing the renewals is the CA signer's, which signs
//! with the rotation's key and appends the cross-signed intermediate (`ca::SigningCa`); renewing on
//! ROTATE is the node's.

use std::time::Duration;

use store::{By, Event, MemoryStore, WatchFilter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::bootstrap::DEFAULT_CLUSTER_NAME;

/// Most nodes asked to rotate in one pass, so a large cluster does not renew all at once
/// (SwarmKit's IssuanceStateRotateMaxBatchSize).
const ROTATE_BATCH: usize = 30;
/// Time between passes while a rotation is in progress (SwarmKit's root reconciliation interval).
const PASS_INTERVAL: Duration = Duration::from_secs(3);

/// Why the root rotation subsystem stopped.
#[derive(Debug, thiserror::Error)]
pub enum RootRotationError {
    /// The store's event stream ended.
    #[error("store watch closed")]
    WatchClosed,
}

/// Leader-only subsystem that drives a root CA rotation to its end.
#[derive(Debug)]
pub struct RootRotation {
    store: MemoryStore,
}

/// What one pass found.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// No rotation in progress.
    Idle,
    /// A rotation is waiting for nodes.
    Rotating,
}

impl RootRotation {
    /// A subsystem over `store`; nothing happens until [`RootRotation::run`].
    pub fn new(store: MemoryStore) -> Self {
        RootRotation { store }
    }

    /// Makes a pass at once, again whenever the root CA or its rotation changes, and every
    /// [`PASS_INTERVAL`] while a rotation is in progress, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RootRotationError> {
        let mut watcher = self.store.watch(WatchFilter::none().clusters());
        let mut next_pass = Some(Instant::now());
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                event = watcher.recv() => {
                    let event = event.ok_or(RootRotationError::WatchClosed)?;
                    if root_changed(&event) {
                        next_pass = Some(Instant::now());
                    }
                }
                () = tokio::time::sleep_until(next_pass.unwrap_or_else(Instant::now)),
                    if next_pass.is_some() =>
                {
                    next_pass = match self.pass().await {
                        Progress::Rotating => Some(Instant::now() + PASS_INTERVAL),
                        Progress::Idle => None,
                    };
                }
            }
        }
    }

    /// Asks the next batch of nodes to rotate, or completes the rotation when none is left.
    async fn pass(&self) -> Progress {
        let (cluster, nodes) = self.store.view(|tx| {
            let cluster = tx
                .find_clusters(By::Name(DEFAULT_CLUSTER_NAME))
                .into_iter()
                .next();
            (cluster, tx.find_nodes(By::All))
        });
        let Some(cluster) = cluster else {
            return Progress::Idle;
        };
        let Some(root_ca) = cluster.root_ca.as_ref() else {
            return Progress::Idle;
        };
        let Some(rotation) = root_ca.root_rotation.as_ref() else {
            return Progress::Idle;
        };
        let next = match ca::RootCa::from_pem(&rotation.ca_cert, None) {
            Ok(next) => next,
            Err(e) => {
                error!(cluster.id = %cluster.id, "invalid root rotation certificate: {e}");
                return Progress::Rotating;
            }
        };
        let unconverged: Vec<&api::Node> = nodes.iter().filter(|n| !converged(n, &next)).collect();
        if unconverged.is_empty() {
            return self.complete(&cluster.id, root_ca).await;
        }
        let batch: Vec<String> = unconverged
            .iter()
            .filter(|n| should_request(n))
            .take(ROTATE_BATCH)
            .map(|n| n.id.clone())
            .collect();
        debug!(
            unconverged = unconverged.len(),
            requesting = batch.len(),
            "root rotation in progress"
        );
        if !batch.is_empty() {
            self.request_rotation(batch, &next).await;
        }
        Progress::Rotating
    }

    /// Sets the nodes of `ids` that still hold a certificate from another root to ROTATE, in as
    /// many transactions as their size needs (`MemoryStore::batch`): a node that cannot be written
    /// costs only itself, and is asked again at the next pass.
    async fn request_rotation(&self, ids: Vec<String>, next: &ca::RootCa) {
        let requested = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let errors = self
            .store
            .batch(&ids, |tx, id| {
                let Some(mut node) = tx.get_node(id) else {
                    return Ok(());
                };
                if converged(&node, next) || !should_request(&node) {
                    return Ok(());
                }
                let certificate = node.certificate.get_or_insert_with(Default::default);
                certificate
                    .status
                    .get_or_insert_with(Default::default)
                    .state = api::issuance_status::State::Rotate as i32;
                tx.update_node(node)?;
                requested
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone());
                Ok(())
            })
            .await;
        for e in &errors {
            error!("unable to request a certificate rotation: {e}");
        }
        let requested = requested
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if errors.is_empty() && !requested.is_empty() {
            info!(nodes = ?requested, "root rotation: asked nodes to renew their certificates");
        } else if !requested.is_empty() {
            info!(nodes = ?requested, failed = errors.len(),
                "root rotation: asked nodes to renew their certificates, some writes failed");
        }
    }

    /// Makes the rotation's root the cluster's root, unless the root CA changed since `seen`
    /// (another rotation was started, or this one was aborted).
    async fn complete(&self, cluster_id: &str, seen: &api::RootCa) -> Progress {
        let Some(rotation) = seen.root_rotation.as_ref() else {
            return Progress::Idle;
        };
        let key = (!rotation.ca_key.is_empty()).then_some(rotation.ca_key.as_slice());
        let next = match ca::RootCa::from_pem(&rotation.ca_cert, key) {
            Ok(next) => next,
            Err(e) => {
                error!(cluster.id = %cluster_id, "invalid cluster root rotation object: {e}");
                return Progress::Rotating;
            }
        };
        let completed = api::RootCa {
            ca_cert: rotation.ca_cert.clone(),
            ca_key: rotation.ca_key.clone(),
            ca_cert_hash: next.cert_hash(),
            join_tokens: Some(api::JoinTokens {
                worker: ca::generate_join_token(&next),
                manager: ca::generate_join_token(&next),
            }),
            root_rotation: None,
            last_forced_rotation: seen.last_forced_rotation,
        };
        let result = self
            .store
            .update(|tx| {
                let Some(mut cluster) = tx.get_cluster(cluster_id) else {
                    return Ok(false);
                };
                if !same_root(cluster.root_ca.as_ref(), seen) {
                    return Ok(false);
                }
                cluster.root_ca = Some(completed);
                tx.update_cluster(cluster)?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) => {
                info!(ca.cert_hash = %next.cert_hash(), "completed root rotation");
                Progress::Idle
            }
            Ok(false) => {
                info!("root rotation changed before it could complete");
                Progress::Rotating
            }
            Err(e) => {
                error!("could not complete root rotation: {e}");
                Progress::Rotating
            }
        }
    }
}

/// Whether `node` no longer holds anything from the old root: its certificate is ISSUED by `next`
/// (through the cross-signed intermediate or not), or it has no certificate record at all yet.
/// SwarmKit decides this from the TLS info nodes report through the dispatcher (issuer subject
/// and public key of the certificate they use); until our dispatcher exists, the certificate the
/// CA signer stored in the Node object stands for it. Removed nodes are gone from the store, so
/// they never hold a rotation up.
fn converged(node: &api::Node, next: &ca::RootCa) -> bool {
    let Some(certificate) = node.certificate.as_ref() else {
        return true;
    };
    let issued = certificate.status.as_ref().map(|s| s.state)
        == Some(api::issuance_status::State::Issued as i32);
    issued && next.has_issued(&certificate.certificate)
}

/// Whether `node` should be asked to rotate: not while a certificate request of its own is
/// pending, a renewal is queued or it was asked already.
fn should_request(node: &api::Node) -> bool {
    use api::issuance_status::State;
    let state = node
        .certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map_or(State::Unknown as i32, |s| s.state);
    ![State::Pending, State::Renew, State::Rotate]
        .iter()
        .any(|s| *s as i32 == state)
}

/// Whether the stored root CA is still the one a pass decided on (join tokens aside).
fn same_root(stored: Option<&api::RootCa>, seen: &api::RootCa) -> bool {
    stored.is_some_and(|r| {
        r.ca_cert == seen.ca_cert
            && r.ca_key == seen.ca_key
            && r.root_rotation == seen.root_rotation
    })
}

/// The parts of a cluster's root CA whose change calls for a pass.
fn root_of(cluster: Option<&api::Cluster>) -> Option<(&Vec<u8>, &Option<api::RootRotation>)> {
    let root = cluster?.root_ca.as_ref()?;
    Some((&root.ca_cert, &root.root_rotation))
}

/// Whether a cluster event changed the root CA certificate or its rotation.
fn root_changed(event: &Event) -> bool {
    match event {
        Event::Object { .. } => root_of(event.object_as()) != root_of(event.old_as()),
        Event::Commit { .. } => false,
    }
}

#[cfg(test)]
mod tests;
