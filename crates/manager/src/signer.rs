//! The CA signer (leader only; SwarmKit ca/server.go signNodeCert): signs the CSR of every Node
//! whose certificate entry is PENDING (a join) or RENEW (a renewal) with the cluster's root CA key,
//! choosing the subject itself (CN node ID, OU from the entry's role, O cluster ID), and records
//! the certificate as ISSUED, or FAILED with the reason. During a root rotation it signs with the
//! new root's key and appends the cross-signed intermediate, so that nodes still trusting the old
//! root accept the new certificates.

use std::time::Duration;

use api::issuance_status::State as IssuanceState;
use store::{By, Event, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bootstrap::{DEFAULT_CLUSTER_NAME, DEFAULT_NODE_CERT_EXPIRY};

/// Leader subsystem that signs pending certificate requests.
pub struct CaSigner {
    store: MemoryStore,
    cluster_id: String,
    /// Validity for every certificate instead of the cluster's (swarmd's test option).
    expiry_override: Option<Duration>,
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

impl CaSigner {
    /// A signer for the cluster `cluster_id` in `store`.
    pub fn new(
        store: MemoryStore,
        cluster_id: String,
        expiry_override: Option<Duration>,
    ) -> CaSigner {
        CaSigner {
            store,
            cluster_id,
            expiry_override,
        }
    }

    /// Signs what is pending now, then each request as it arrives, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let (nodes, mut watcher) = self
            .store
            .view_and_watch(WatchFilter::none().nodes(), |tx| tx.find_nodes(By::All));
        for req in nodes.iter().filter_map(pending_request) {
            self.sign(req).await;
        }
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ev = watcher.recv() => ev.ok_or("store watch closed")?,
            };
            if let Event::Object { kind, .. } = &event
                && *kind != store::EventKind::Remove
                && let Some(req) = event.object_as::<api::Node>().and_then(pending_request)
            {
                self.sign(req).await;
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

    async fn sign(&self, req: Request) {
        let signed = self.signing_material().and_then(|(signer, expiry)| {
            signer
                .issue(&req.csr, &req.node_id, req.role, &self.cluster_id, expiry)
                .map_err(|e| e.to_string())
        });
        let (state, certificate, err) = match signed {
            Ok(chain) => (IssuanceState::Issued, chain, String::new()),
            Err(e) => {
                warn!(node.id = %req.node_id, "failed to sign CSR: {e}");
                (IssuanceState::Failed, Vec::new(), e)
            }
        };
        let (node_id, role) = (req.node_id.clone(), req.role);
        let result = self
            .store
            .update(move |tx| {
                let Some(mut node) = tx.get_node(&req.node_id) else {
                    return Ok(false);
                };
                // Answer only the request we signed: a newer CSR waits for its own turn.
                let Some(cert) = node.certificate.as_mut().filter(|c| c.csr == req.csr) else {
                    return Ok(false);
                };
                if pending_request_state(cert).is_none() {
                    return Ok(false);
                }
                cert.certificate = certificate;
                cert.status = Some(api::IssuanceStatus {
                    state: state as i32,
                    err,
                });
                tx.update_node(node)?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) if state == IssuanceState::Issued => {
                info!(node.id = %node_id, node.role = ca::role_ou(role), "certificate issued")
            }
            Ok(_) => {}
            Err(e) => error!(node.id = %node_id, "recording the signed certificate failed: {e}"),
        }
    }
}

fn pending_request_state(cert: &api::Certificate) -> Option<i32> {
    let state = cert.status.as_ref().map_or(0, |s| s.state);
    (state == IssuanceState::Pending as i32 || state == IssuanceState::Renew as i32)
        .then_some(state)
}
