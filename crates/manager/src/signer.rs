//! The CA signer (leader only; SwarmKit ca/server.go signNodeCert): signs the CSR of every Node
//! whose certificate entry is PENDING (a join) or RENEW (a renewal) with the cluster's root CA key,
//! choosing the subject itself (CN node ID, OU from the entry's role, O cluster ID), and records
//! the certificate as ISSUED, or FAILED with the reason. During a root rotation it signs with the
//! new root's key and appends the cross-signed intermediate, so that nodes still trusting the old
//! root accept the new certificates.
//!
//! Unlike SwarmKit's, which signs and writes one request at a time, many nodes joining at once are
//! answered in parallel: signing (the CPU cost) runs on blocking threads, as many at a time as
//! there are cores, never under a store lock, and the certificates signed while the previous write
//! was being committed are recorded together by one [`MemoryStore::batch`], so a burst of joins
//! costs a few raft entries instead of one each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::issuance_status::State as IssuanceState;
use store::{By, Event, EventKind, MemoryStore, StoreError, Tx, WatchFilter};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bootstrap::{DEFAULT_CLUSTER_NAME, DEFAULT_NODE_CERT_EXPIRY};

/// Leader subsystem that signs pending certificate requests.
pub struct CaSigner {
    store: MemoryStore,
    cluster_id: Arc<str>,
    /// Validity for every certificate instead of the cluster's (swarmd's test option).
    expiry_override: Option<Duration>,
    /// Requests signed at once, each on a blocking thread: signing is CPU work, so more threads
    /// than cores would only queue behind each other.
    workers: usize,
}

/// A request the signer can answer, read from a Node.
struct Request {
    node_id: String,
    csr: Vec<u8>,
    role: api::NodeRole,
}

fn pending_request(node: &api::Node) -> Option<Request> {
    let cert = node.certificate.as_ref()?;
    pending_request_state(cert)?;
    Some(Request {
        node_id: node.id.clone(),
        csr: cert.csr.clone(),
        role: api::NodeRole::try_from(cert.role).unwrap_or(api::NodeRole::Worker),
    })
}

fn proto_duration(d: &prost_types::Duration) -> Option<Duration> {
    Duration::try_from(*d).ok()
}

/// What signs new certificates, read from the cluster object: kept until the cluster changes.
type Material = Arc<Result<(ca::SigningCa, Duration), String>>;

/// The answer to one request, to be recorded in its node.
struct Signed {
    req: Request,
    state: IssuanceState,
    certificate: Vec<u8>,
    err: String,
    /// Set when the batch wrote it (false when the node no longer waits for this CSR).
    written: AtomicBool,
}

impl Signed {
    fn new(material: &Material, req: Request, cluster_id: &str) -> Signed {
        let signed = match material.as_ref() {
            Ok((signer, expiry)) => signer
                .issue(&req.csr, &req.node_id, req.role, cluster_id, *expiry)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        let (state, certificate, err) = match signed {
            Ok(chain) => (IssuanceState::Issued, chain, String::new()),
            Err(e) => {
                warn!(node.id = %req.node_id, "failed to sign CSR: {e}");
                (IssuanceState::Failed, Vec::new(), e)
            }
        };
        Signed {
            req,
            state,
            certificate,
            err,
            written: AtomicBool::new(false),
        }
    }

    /// Records the answer if the node still waits for this very request: a newer CSR waits for
    /// its own turn, and an answered or deleted node is left alone.
    fn record(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let Some(mut node) = tx.get_node(&self.req.node_id) else {
            return Ok(());
        };
        let Some(cert) = node
            .certificate
            .as_mut()
            .filter(|c| c.csr == self.req.csr && pending_request_state(c).is_some())
        else {
            return Ok(());
        };
        cert.certificate = self.certificate.clone();
        cert.status = Some(api::IssuanceStatus {
            state: self.state as i32,
            err: self.err.clone(),
        });
        tx.update_node(node)?;
        self.written.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Records `batch` in as few transactions as the store's limits allow; returns it, written.
async fn record(store: MemoryStore, batch: Vec<Signed>) -> Vec<Signed> {
    let errors = store.batch(&batch, |tx, s| s.record(tx)).await;
    for e in &errors {
        error!("recording signed certificates failed: {e}");
    }
    if errors.is_empty() {
        for s in batch.iter().filter(|s| s.written.load(Ordering::Relaxed)) {
            if s.state == IssuanceState::Issued {
                info!(node.id = %s.req.node_id, node.role = ca::role_ou(s.req.role), "certificate issued");
            }
        }
    }
    batch
}

impl CaSigner {
    /// A signer for the cluster `cluster_id` in `store`.
    pub fn new(
        store: MemoryStore,
        cluster_id: String,
        expiry_override: Option<Duration>,
    ) -> CaSigner {
        CaSigner {
            store,
            cluster_id: cluster_id.into(),
            expiry_override,
            workers: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }

    /// Signs what is pending now, then each request as it arrives, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let (nodes, mut watcher) = self
            .store
            .view_and_watch(WatchFilter::none().nodes().clusters(), |tx| {
                tx.find_nodes(By::All)
            });
        let mut work = Work::default();
        for req in nodes.iter().filter_map(pending_request) {
            work.want(req);
        }
        let mut material: Option<Material> = None;
        // Signing jobs, at most `workers`, and the one batch being recorded.
        let mut signing = JoinSet::new();
        let mut recording = JoinSet::new();
        loop {
            while signing.len() < self.workers
                && let Some(req) = work.queue.pop_front()
            {
                let material = material
                    .get_or_insert_with(|| Arc::new(self.signing_material()))
                    .clone();
                let cluster_id = self.cluster_id.clone();
                let span = tracing::Span::current();
                signing.spawn_blocking(move || {
                    span.in_scope(|| Signed::new(&material, req, &cluster_id))
                });
            }
            if recording.is_empty() && !work.signed.is_empty() {
                recording.spawn(record(self.store.clone(), std::mem::take(&mut work.signed)));
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                Some(done) = recording.join_next() => {
                    let done = done.map_err(|e| format!("recording certificates failed: {e}"))?;
                    work.done(&done);
                }
                Some(signed) = signing.join_next() => {
                    work.signed.push(signed.map_err(|e| format!("signing failed: {e}"))?);
                }
                ev = watcher.recv() => match ev.ok_or("store watch closed")? {
                    Event::Object { kind: EventKind::Remove, .. } | Event::Commit { .. } => {}
                    ev if ev.object_as::<api::Cluster>().is_some() => material = None,
                    ev => {
                        if let Some(req) = ev.object_as::<api::Node>().and_then(pending_request) {
                            work.want(req);
                        }
                    }
                },
            }
        }
    }

    /// The signer (the rotation's new root during a root rotation, with the cross-signed
    /// intermediate) and the validity of new certificates, from the cluster object.
    fn signing_material(&self) -> Result<(ca::SigningCa, Duration), String> {
        let cluster = self
            .store
            .view(|tx| tx.find_clusters(By::Name(DEFAULT_CLUSTER_NAME)))
            .into_iter()
            .next()
            .ok_or("no cluster object")?;
        let root = cluster.root_ca.unwrap_or_default();
        let mut signer = ca::SigningCa::for_cluster(&root).map_err(|e| e.to_string())?;
        if self.expiry_override.is_some() {
            signer = signer.allow_any_expiry();
        }
        let expiry = self.expiry_override.unwrap_or_else(|| {
            cluster
                .spec
                .and_then(|s| s.ca_config)
                .and_then(|c| c.node_cert_expiry)
                .and_then(|d| proto_duration(&d))
                .unwrap_or(DEFAULT_NODE_CERT_EXPIRY)
        });
        Ok((signer, expiry))
    }
}

/// Requests between their node's event and the commit of their answer.
#[derive(Default)]
struct Work {
    /// Waiting for a signing thread.
    queue: VecDeque<Request>,
    /// Signed, waiting for the next batch write.
    signed: Vec<Signed>,
    /// The CSR of each node being answered (queued, signing, signed or being recorded), so that
    /// the node's own events meanwhile (the create, an update of its spec) do not sign it twice.
    taken: HashMap<String, Vec<u8>>,
}

impl Work {
    fn want(&mut self, req: Request) {
        if self.taken.get(&req.node_id) == Some(&req.csr) {
            return;
        }
        self.taken.insert(req.node_id.clone(), req.csr.clone());
        self.queue.push_back(req);
    }

    /// `batch` is committed (or failed, and is logged): its nodes' later events are new requests.
    fn done(&mut self, batch: &[Signed]) {
        for s in batch {
            if self.taken.get(&s.req.node_id) == Some(&s.req.csr) {
                self.taken.remove(&s.req.node_id);
            }
        }
    }
}

fn pending_request_state(cert: &api::Certificate) -> Option<i32> {
    let state = cert.status.as_ref().map_or(0, |s| s.state);
    (state == IssuanceState::Pending as i32 || state == IssuanceState::Renew as i32)
        .then_some(state)
}

#[cfg(test)]
pub(crate) mod tests;
