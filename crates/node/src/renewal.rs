//! Certificate renewal (spec 5.10): each node renews its own certificate at a random point
//! between 50% and 80% of its validity, and at once when asked (its role changed, or a root
//! rotation marked it ROTATE), over NodeCA with mutual TLS and its current certificate. The new
//! certificate and key are installed in the live [`SecurityConfig`], so servers and clients use
//! them for new connections without any restart. On a manager, [`watch_own_node`] turns changes of
//! this node's object and of the cluster's root CA in the local store into renewals and root
//! updates; workers hear of them through their dispatcher session (agent issue).

use std::sync::Arc;
use std::time::Duration;

use ca::{Credential, SecurityConfig};
use store::{By, Event, MemoryStore, WatchFilter};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::KnownManagers;

/// First and longest pause between failed renewal attempts.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Shortest time between two renewals that are due by the clock.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Renews this node's certificate through the managers this node knows at the time.
pub struct Renewer {
    security: Arc<SecurityConfig>,
    managers: Arc<KnownManagers>,
    now: Arc<Notify>,
}

impl Renewer {
    /// A renewer asking the managers in `managers` (its own manager first, if it runs one).
    pub fn new(security: Arc<SecurityConfig>, managers: Arc<KnownManagers>) -> Renewer {
        Renewer {
            security,
            managers,
            now: Arc::new(Notify::new()),
        }
    }

    /// A handle that makes the renewer renew at once.
    pub fn trigger(&self) -> Arc<Notify> {
        self.now.clone()
    }

    /// Renews whenever due or triggered, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // A floor, so that a certificate issued already past its renewal point (a CA clock
            // far behind ours) cannot make this loop spin.
            let due = self.security.renewal_delay().max(MIN_INTERVAL);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.now.notified() => info!("renewing the node certificate now, as requested"),
                () = tokio::time::sleep(due) => info!("node certificate is due for renewal"),
            }
            let mut pause = RETRY_MIN;
            loop {
                match self.renew_once().await {
                    Ok(()) => break,
                    Err(e) => warn!("failed to renew the node certificate: {e}"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }

    async fn renew_once(&self) -> Result<(), ca::CaError> {
        let current = self.security.material();
        let mut last = None;
        for addr in &self.managers.all() {
            let credential = Credential::Certificate {
                cert_pem: &current.cert_pem,
                key_pem: &current.key_pem,
            };
            let issued = match ca::request_certificate(
                addr,
                &current.root_pem,
                credential,
                api::node_spec::Availability::Active,
            )
            .await
            {
                Ok(issued) => issued,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            // Roots may have changed while we waited; the install keeps whatever is current.
            self.security
                .install_certificate(issued.cert_pem, issued.key.key_pem().into_bytes())?;
            let info = self.security.info();
            info!(
                node.id = %info.node_id,
                node.role = %info.ou,
                expires = %humantime::format_rfc3339_seconds(info.not_after),
                "node certificate renewed"
            );
            return Ok(());
        }
        Err(last.unwrap_or_else(|| ca::CaError::Transport("no manager to renew with".into())))
    }
}

/// Whether this node's object asks for a new certificate: its role differs from the certificate's,
/// or a root rotation set its certificate status to ROTATE.
pub(crate) fn needs_renewal(node: &api::Node, cert_role: api::NodeRole) -> bool {
    let rotate = node
        .certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .is_some_and(|s| s.state == api::issuance_status::State::Rotate as i32);
    rotate || node.role != cert_role as i32
}

/// On a manager: follows this node's Node object and the cluster's root CA in the local store;
/// triggers `renew` when a new certificate is wanted and installs a new root once the cluster
/// has switched to it. Runs until `shutdown` fires.
pub async fn watch_own_node(
    store: MemoryStore,
    security: Arc<SecurityConfig>,
    renew: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let node_id = security.info().node_id;
    let ((node, cluster), mut watcher) =
        store.view_and_watch(WatchFilter::none().nodes().clusters(), |tx| {
            (
                tx.get_node(&node_id),
                tx.find_clusters(By::Name(manager::bootstrap::DEFAULT_CLUSTER_NAME))
                    .into_iter()
                    .next(),
            )
        });
    let check_node = |n: &api::Node| {
        if needs_renewal(n, security.info().role) {
            renew.notify_one();
        }
    };
    let check_root = |c: &api::Cluster| {
        let Some(root) = c.root_ca.as_ref().filter(|r| !r.ca_cert.is_empty()) else {
            return;
        };
        if root.ca_cert != security.material().root_pem {
            match security.install_root(root.ca_cert.clone()) {
                Ok(()) => {
                    info!(ca.hash = %root.ca_cert_hash, "installed the cluster's new root CA")
                }
                Err(e) => warn!("failed to install the cluster's new root CA: {e}"),
            }
        }
    };
    if let Some(n) = &node {
        check_node(n);
    }
    if let Some(c) = &cluster {
        check_root(c);
    }
    loop {
        let ev = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            ev = watcher.recv() => ev,
        };
        let Some(ev @ Event::Object { .. }) = ev else {
            if ev.is_none() {
                return;
            }
            continue;
        };
        if let Some(n) = ev.object_as::<api::Node>().filter(|n| n.id == node_id) {
            check_node(n);
        } else if let Some(c) = ev.object_as::<api::Cluster>() {
            check_root(c);
        }
    }
}
