//! Role changes of a running node (spec 5.8; SwarmKit node/node.go superviseManager): the node
//! follows the role of its own certificate. A worker whose certificate comes back with the
//! manager role (after `node promote`, the role manager and a renewal) starts a manager in the
//! same process, which joins raft through a manager it knows; a manager whose certificate comes
//! back with the worker role stops its manager and removes its raft data. The agent and its tasks
//! are left alone either way, and so is the certificate on disk, which is what the next start
//! goes by (a demoted node restarts as a worker, a promoted one as a manager).
//!
//! A worker certificate is issued to a demoted node only once the role manager has changed its
//! role, which it does only after the leader removed the node from the raft membership; so by
//! then this member is out of raft, even though it may never hear so itself (a removed member
//! receives nothing more from the leader).

use std::sync::Arc;
use std::time::Duration;

use ca::{RootCa, SecurityConfig};
use manager::bootstrap::{BootstrapInfo, default_raft_config};
use manager::{Manager, ManagerConfig};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::KnownManagers;
use crate::renewal;
use crate::state::StateDir;
use crate::{NodeConfig, NodeError};

/// First and longest pause between failed attempts to follow a role change.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest a graceful manager stop may take.
const MANAGER_STOP_LIMIT: Duration = Duration::from_secs(15);

/// The manager this node runs, with what runs beside it.
struct Running {
    manager: Manager,
    /// Stops [`renewal::watch_own_node`] for this manager.
    watch: CancellationToken,
    watch_task: JoinHandle<()>,
}

/// Starts and stops this node's manager as its role changes.
pub(crate) struct Roles {
    config: NodeConfig,
    state: StateDir,
    security: Arc<SecurityConfig>,
    known: Arc<KnownManagers>,
    renew: Arc<tokio::sync::Notify>,
    running: Mutex<Option<Running>>,
}

/// The remote API listener and the address this node advertises for it.
async fn bind_remote(config: &NodeConfig) -> Result<(TcpListener, u16, String), NodeError> {
    let err = |source| NodeError::State {
        path: config.listen_remote_api.clone().into(),
        source,
    };
    let listener = TcpListener::bind(&config.listen_remote_api)
        .await
        .map_err(err)?;
    let port = listener.local_addr().map_err(err)?.port();
    let advertise = if config.advertise_remote_api.is_empty() {
        format!("0.0.0.0:{port}")
    } else {
        config.advertise_remote_api.clone()
    };
    Ok((listener, port, advertise))
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl Roles {
    pub fn new(
        config: NodeConfig,
        state: StateDir,
        security: Arc<SecurityConfig>,
        known: Arc<KnownManagers>,
        renew: Arc<tokio::sync::Notify>,
    ) -> Arc<Roles> {
        Arc::new(Roles {
            config,
            state,
            security,
            known,
            renew,
            running: Mutex::new(None),
        })
    }

    /// Whether this node runs a manager now.
    pub async fn is_manager(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// Starts this node's manager: a new or resumed cluster without `join_addr`, else joining
    /// raft through the manager there. `root` carries the root CA key on a cluster's first start.
    /// Returns the address it advertises.
    pub async fn start_manager(
        &self,
        root: &RootCa,
        join_addr: Option<String>,
    ) -> Result<String, NodeError> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Err(NodeError::Config("this node already runs a manager".into()));
        }
        let config = &self.config;
        let (listener, port, advertise_addr) = bind_remote(config).await?;
        let info = self.security.info();
        let hostname = if config.hostname.is_empty() {
            os_hostname()
        } else {
            config.hostname.clone()
        };
        let status_addr = advertise_addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
            .filter(|h| !h.is_empty() && *h != "0.0.0.0")
            .unwrap_or("127.0.0.1")
            .to_string();
        let bootstrap = BootstrapInfo {
            node_id: info.node_id.clone(),
            cluster_id: info.cluster_id.clone(),
            root_ca_cert: root.cert_pem().to_vec(),
            root_ca_key: root.key_pem().map(<[u8]>::to_vec),
            join_tokens: (ca::generate_join_token(root), ca::generate_join_token(root)),
            ca_cert_hash: root.cert_hash(),
            raft: default_raft_config(config.election_tick, config.heartbeat_tick),
            hostname,
            status_addr,
            node_cert: self.security.material().cert_pem,
        };
        let raft = raft::RaftConfig {
            dir: self.state.raft_dir(),
            snapshot_interval: config.snapshot_interval,
            tick: config.tick,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            ..raft::RaftConfig::default()
        };
        let manager = Manager::start(ManagerConfig {
            control_socket: config.listen_control_api.clone(),
            remote_listener: listener,
            advertise_addr: advertise_addr.clone(),
            raft,
            security: self.security.clone(),
            cert_expiry_override: config.cert_expiry_override,
            bootstrap,
            join_addr,
        })
        .await?;
        // The node reaches its own manager (renewals, its agent) on loopback.
        self.known.set_local(Some(format!("127.0.0.1:{port}")));
        let watch = CancellationToken::new();
        let watch_task = tokio::spawn(renewal::watch_own_node(
            manager.store().clone(),
            self.security.clone(),
            self.renew.clone(),
            watch.clone(),
        ));
        *running = Some(Running {
            manager,
            watch,
            watch_task,
        });
        Ok(advertise_addr)
    }

    /// Follows the certificate's role until `shutdown` fires.
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changed = self.security.subscribe();
        let mut retry: Option<Duration> = None;
        loop {
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                r = self.reconcile() => r,
            };
            retry = match outcome {
                Ok(()) => None,
                Err(e) => {
                    let pause = retry.map_or(RETRY_MIN, |p| (p * 2).min(RETRY_MAX));
                    warn!("failed to follow this node's role change (retrying in {pause:?}): {e}");
                    Some(pause)
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                r = changed.changed() => if r.is_err() { return },
                () = tokio::time::sleep(retry.unwrap_or(RETRY_MAX)), if retry.is_some() => {}
            }
        }
    }

    /// Starts or stops the manager if the certificate's role and what runs differ.
    async fn reconcile(&self) -> Result<(), NodeError> {
        let role = self.security.info().role;
        let running = self.is_manager().await;
        match (role, running) {
            (api::NodeRole::Manager, false) => self.promoted().await,
            (api::NodeRole::Worker, true) => self.demoted().await,
            _ => Ok(()),
        }
    }

    /// The certificate says manager and no manager runs: start one, joining raft through the
    /// managers this node knows (the raft leader accepts the join; others refuse it).
    async fn promoted(&self) -> Result<(), NodeError> {
        let candidates = self.known.remote();
        info!(
            managers = ?candidates,
            "this node was promoted to manager: starting its manager, which joins raft"
        );
        let root = RootCa::from_pem(&self.security.material().root_pem, None)?;
        let mut last = None;
        for addr in candidates {
            match self.start_manager(&root, Some(addr.clone())).await {
                Ok(advertised) => {
                    info!(
                        addr = %advertised,
                        control = %self.config.listen_control_api.display(),
                        "the promoted node runs its manager; the agent and its tasks kept running"
                    );
                    return Ok(());
                }
                Err(e) => {
                    warn!(manager = %addr, "joining raft through this manager failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            NodeError::Config("a promoted node knows no manager to join raft through".into())
        }))
    }

    /// The certificate says worker and a manager runs: this member has left raft (see the
    /// module comment); wait until it is no longer the leader it may still think it is, then stop
    /// the manager, close its control socket and remove its raft data.
    async fn demoted(&self) -> Result<(), NodeError> {
        let mut slot = self.running.lock().await;
        let Some(running) = slot.take() else {
            return Ok(());
        };
        info!("this node was demoted to worker: stopping its manager");
        let raft = running.manager.raft().clone();
        let bound = self.config.tick * self.config.election_tick * 2;
        let deadline = tokio::time::Instant::now() + bound;
        while raft.is_leader()
            && raft
                .members()
                .iter()
                .any(|m| m.raft_id == raft.raft_id() && m.voter)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if raft.is_leader() {
            warn!("the demoted manager still leads its raft view after {bound:?}; stopping anyway");
        }
        self.stop_running(running).await;
        self.known.set_local(None);
        self.state.clear_raft_data()?;
        info!("the manager stopped and its raft data is removed: this node now runs as a worker");
        Ok(())
    }

    async fn stop_running(&self, running: Running) {
        running.watch.cancel();
        let _ = running.watch_task.await;
        if tokio::time::timeout(MANAGER_STOP_LIMIT, running.manager.stop())
            .await
            .is_err()
        {
            warn!("manager did not stop within {MANAGER_STOP_LIMIT:?}");
        }
    }

    /// Stops the manager, if one runs, keeping its raft data (a graceful node stop).
    pub async fn stop(&self) {
        let running = self.running.lock().await.take();
        if let Some(running) = running {
            self.stop_running(running).await;
        }
    }
}
