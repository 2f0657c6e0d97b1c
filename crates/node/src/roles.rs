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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ca::{RootCa, SecurityConfig};
use manager::bootstrap::{BootstrapInfo, default_raft_config};
use manager::{Manager, ManagerConfig, ManagerFailure};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
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
pub(crate) struct Running {
    pub(crate) manager: Manager,
    /// Stops [`renewal::watch_own_node`] for this manager and the forwarding of its failure.
    watch: CancellationToken,
    watch_task: JoinHandle<()>,
}

/// Starts and stops this node's manager as its role changes.
pub(crate) struct Roles {
    config: NodeConfig,
    state: StateDir,
    security: Arc<SecurityConfig>,
    pub(crate) known: Arc<KnownManagers>,
    renew: Arc<tokio::sync::Notify>,
    pub(crate) running: Mutex<Option<Running>>,
    /// Where a running manager's failure goes (the node's [`crate::Node::failed`]).
    failures: mpsc::UnboundedSender<ManagerFailure>,
}

/// The remote API listener, the address this node dials to reach it, and the address it
/// advertises for it: `--advertise-remote-api`, else the address it listens on, or
/// `0.0.0.0:<port>` when that is a wildcard one (as SwarmKit's: the raft leader records a
/// joining manager that sends it at the address it sees the join come from). SwarmKit advertises
/// `0.0.0.0:<port>` for a specific listening address too (unless the port is 0), which leaves a
/// first manager without a usable address; the address it listens on is the one it is reachable at.
async fn bind_remote(config: &NodeConfig) -> Result<(TcpListener, String, String), NodeError> {
    let err = |source| NodeError::ListenRemote {
        addr: config.listen_remote_api.clone(),
        source,
    };
    let listener = TcpListener::bind(&config.listen_remote_api)
        .await
        .map_err(err)?;
    let listening = listener.local_addr().map_err(err)?;
    let advertise = if !config.advertise_remote_api.is_empty() {
        config.advertise_remote_api.clone()
    } else if listening.ip().is_unspecified() {
        format!("0.0.0.0:{}", listening.port())
    } else {
        listening.to_string()
    };
    Ok((listener, own_dial_addr(listening), advertise))
}

/// How this node dials its own remote API listening at `listening`: that address, or loopback
/// for a wildcard one.
fn own_dial_addr(listening: SocketAddr) -> String {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port()).to_string()
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
        failures: mpsc::UnboundedSender<ManagerFailure>,
    ) -> Arc<Roles> {
        Arc::new(Roles {
            config,
            state,
            security,
            known,
            renew,
            running: Mutex::new(None),
            failures,
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
        let (listener, own_addr, advertise_addr) = bind_remote(config).await?;
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
            raft: api::RaftConfig {
                snapshot_interval: config.snapshot_interval,
                log_entries_for_slow_followers: config.log_entries_for_slow_followers,
                ..default_raft_config(config.election_tick, config.heartbeat_tick)
            },
            hostname,
            status_addr,
            node_cert: self.security.material().cert_pem,
            default_address_pool: config.default_addr_pool.clone(),
            subnet_size: config.default_addr_pool_mask_length,
            unlock_key: config
                .unlock_key
                .clone()
                .filter(|_| config.autolock)
                .map(|k| k.0),
        };
        let raft = raft::RaftConfig {
            dir: self.state.raft_dir(),
            snapshot_interval: config.snapshot_interval,
            log_entries_for_slow_followers: config.log_entries_for_slow_followers,
            tick: config.tick,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            // Only a manager resuming from its own raft data (checked at node start); a join has
            // none to recover.
            force_new_cluster: config.force_new_cluster && join_addr.is_none(),
            keys: raft::KeySource(Some(Arc::new(crate::autolock::KeyFileDeks(
                self.security.keys().clone(),
            )))),
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
        // The node's renewals reach its own manager there; its agent uses the control socket.
        self.known.set_local(Some(own_addr));
        let watch = CancellationToken::new();
        let own_node = renewal::watch_own_node(
            manager.store().clone(),
            self.security.clone(),
            self.renew.clone(),
            watch.clone(),
        );
        // Until this manager is stopped on purpose (demotion, node stop), its failure is the
        // node's.
        let (failed, failures, stopped) = (manager.failed(), self.failures.clone(), watch.clone());
        let forward = async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                f = failed => { let _ = failures.send(f); }
            }
        };
        let unlock_key = crate::autolock::follow_unlock_key(
            manager.store().clone(),
            self.security.keys().clone(),
            manager.raft().clone(),
            watch.clone(),
        );
        let watch_task = tokio::spawn(async move {
            tokio::join!(own_node, forward, unlock_key);
        });
        *running = Some(Running {
            manager,
            watch,
            watch_task,
        });
        telemetry::swarm::NODE_MANAGER.set(1);
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
    async fn reconcile(self: &Arc<Self>) -> Result<(), NodeError> {
        let role = self.security.info().role;
        let running = self.is_manager().await;
        match (role, running) {
            (api::NodeRole::Manager, false) => {
                // Run to the end even if the node stops meanwhile: a join cancelled halfway
                // could leave a raft voter that nobody stops (the leader then waits on it); the
                // node's stop takes the started manager down gracefully afterwards.
                let me = self.clone();
                tokio::spawn(async move { me.promoted().await })
                    .await
                    .map_err(|e| NodeError::Config(format!("starting the manager failed: {e}")))?
            }
            (api::NodeRole::Worker, true) => {
                // Run to the end even if the node stops meanwhile: a manager half stopped would
                // keep its raft data and control socket.
                let me = self.clone();
                tokio::spawn(async move { me.demoted().await })
                    .await
                    .map_err(|e| NodeError::Config(format!("stopping the manager failed: {e}")))?
            }
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
        let advertised = self
            .join_raft_through(
                &root,
                candidates,
                "a promoted node knows no manager to join raft through",
            )
            .await?;
        info!(
            addr = %advertised,
            control = %self.config.listen_control_api.display(),
            "the promoted node runs its manager; the agent and its tasks kept running"
        );
        Ok(())
    }

    /// Starts this node's manager joining raft through the first of `managers` that accepts the
    /// join (the leader does; the others refuse it), trying them in turn; `none` is the error
    /// when there is none to try. Returns the address it advertises.
    pub async fn join_raft_through(
        &self,
        root: &RootCa,
        managers: Vec<String>,
        none: &str,
    ) -> Result<String, NodeError> {
        let mut last = None;
        for addr in managers {
            match self.start_manager(root, Some(addr.clone())).await {
                Ok(advertised) => return Ok(advertised),
                Err(e) => {
                    warn!(manager = %addr, "joining raft through this manager failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| NodeError::Config(none.into())))
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
            && raft.voter_ids().contains(&raft.raft_id())
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
        telemetry::swarm::NODE_MANAGER.set(0);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use store::By;

    use super::*;
    use crate::{ExecutorKind, Node};

    fn config(dir: &Path, name: &str) -> NodeConfig {
        NodeConfig {
            state_dir: dir.join(name),
            listen_control_api: dir.join(format!("{name}.sock")),
            listen_remote_api: "127.0.0.1:0".into(),
            hostname: name.into(),
            tick: Duration::from_millis(100),
            executor: ExecutorKind::Process,
            ..NodeConfig::default()
        }
    }

    async fn manager_of(node: &Node) -> (store::MemoryStore, Arc<raft::RaftNode>) {
        let running = node.roles.running.lock().await;
        let m = &running.as_ref().expect("a manager runs").manager;
        (m.store().clone(), m.raft().clone())
    }

    #[tokio::test]
    async fn a_manager_advertises_the_flag_else_its_listen_address_else_a_wildcard() {
        let mut c = NodeConfig {
            listen_remote_api: "127.0.0.1:0".into(),
            ..NodeConfig::default()
        };
        let (l, own, advertised) = bind_remote(&c).await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(own, format!("127.0.0.1:{port}"));
        assert_eq!(advertised, own);

        // A wildcard listener: raft's leader resolves the host; the node dials itself on loopback.
        c.listen_remote_api = "0.0.0.0:0".into();
        let (l, own, advertised) = bind_remote(&c).await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(own, format!("127.0.0.1:{port}"));
        assert_eq!(advertised, format!("0.0.0.0:{port}"));
        c.listen_remote_api = "[::]:0".into();
        if let Ok((l, own, advertised)) = bind_remote(&c).await {
            let port = l.local_addr().expect("addr").port();
            assert_eq!(own, format!("[::1]:{port}"));
            assert_eq!(advertised, format!("0.0.0.0:{port}"));
        }

        c.listen_remote_api = "127.0.0.1:0".into();
        c.advertise_remote_api = "192.0.2.1:4242".into();
        let (_l, own, advertised) = bind_remote(&c).await.expect("bind");
        assert!(own.starts_with("127.0.0.1:"), "{own}");
        assert_eq!(advertised, "192.0.2.1:4242");
    }

    /// The leader's side of a demotion is another change (the leader removes the member from
    /// raft, then the role manager changes the role); here the member is removed through the
    /// raft API directly, and the node side is what is checked: the manager stops, its control
    /// socket closes and its raft data goes, while the agent goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manager_removed_from_raft_and_demoted_runs_on_as_a_worker() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let n1 = Node::start(config(tmp.path(), "node-1"))
            .await
            .expect("first manager");
        let (store1, raft1) = manager_of(&n1).await;
        let token = store1.view(|tx| {
            tx.find_clusters(By::Name(manager::bootstrap::DEFAULT_CLUSTER_NAME))
                .into_iter()
                .next()
                .and_then(|c| c.root_ca)
                .and_then(|r| r.join_tokens)
                .expect("join tokens")
                .manager
        });
        let mut c2 = config(tmp.path(), "node-2");
        c2.join_addr = n1.roles.known.all()[0].clone();
        c2.join_token = token;
        let mut n2 = Node::start(c2.clone()).await.expect("second manager");
        assert!(n2.is_manager().await);
        assert!(c2.listen_control_api.exists());
        let raft_id2 = manager_of(&n2).await.1.raft_id();

        let voters: BTreeSet<u64> = raft1
            .members()
            .iter()
            .filter(|m| m.voter && m.raft_id != raft_id2)
            .map(|m| m.raft_id)
            .collect();
        raft1
            .raft()
            .change_membership(voters, false)
            .await
            .expect("remove the member");
        let id2 = n2.node_id().to_string();
        store1
            .update(move |tx| {
                let mut node = tx.get_node(&id2).expect("node 2");
                node.spec.as_mut().expect("spec").desired_role = api::NodeRole::Worker as i32;
                tx.update_node(node)?;
                Ok(())
            })
            .await
            .expect("demote");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while n2.is_manager().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the demoted node still runs its manager"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(n2.security().info().role, api::NodeRole::Worker);
        assert!(!c2.listen_control_api.exists(), "control socket closed");
        let state2 = StateDir::open(&c2.state_dir).expect("state dir");
        assert!(!state2.has_raft_data(), "raft data removed");
        // The agent goes on: the leader still sees the node READY, now as a worker.
        let id2 = n2.node_id().to_string();
        let node = store1.view(|tx| tx.get_node(&id2)).expect("node 2");
        assert_eq!(node.role, api::NodeRole::Worker as i32);
        assert_eq!(
            node.status.map(|s| s.state),
            Some(api::node_status::State::Ready as i32)
        );
        // Its manager was stopped on purpose: that is no failure of the node.
        let failed = tokio::time::timeout(Duration::from_millis(500), n2.failed()).await;
        assert!(
            failed.is_err(),
            "the demotion was taken for a failure: {failed:?}"
        );
        n2.stop().await;
        n1.stop().await;
    }

    /// The raft core stopping under a running manager (openraft shut down behind the manager's
    /// back, as a storage error stops it) is the node's failure, naming raft and its database,
    /// rather than a manager that serves on with a dead raft.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_stopping_under_a_running_manager_is_the_nodes_failure() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut n1 = Node::start(config(tmp.path(), "node-1"))
            .await
            .expect("manager");
        let (_, raft1) = manager_of(&n1).await;
        let quiet = tokio::time::timeout(Duration::from_millis(300), n1.failed()).await;
        assert!(quiet.is_err(), "a healthy node failed: {quiet:?}");
        raft1.raft().shutdown().await.expect("stop the raft core");
        let failed = tokio::time::timeout(Duration::from_secs(30), n1.failed())
            .await
            .expect("the node reports the failure");
        let text = failed.to_string();
        assert!(matches!(failed, NodeError::Manager(_)), "{text}");
        assert!(text.starts_with("raft stopped"), "{text}");
        assert!(text.contains("raft.redb"), "{text}");
        n1.stop().await;
    }
}
