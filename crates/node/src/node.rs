//! Starting and stopping one node. A first start (no certificates, no raft data) creates a new
//! cluster: root CA, node and cluster IDs, this manager's certificate; the certificates reach
//! the disk only after the cluster object holding the root CA key has been committed, so a crash
//! in between leaves no half-made cluster behind (spec 2.3, 5.10). With `--join-addr` a first
//! start joins instead (spec 2.4): a worker certificate makes a worker node, which runs no manager;
//! a manager certificate makes a manager that joins the raft cluster through the join address.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use ca::{CertInfo, KeyStore, NodeKey, NodeTlsMaterial, RootCa, SecurityConfig};
use manager::bootstrap::{BootstrapInfo, DEFAULT_NODE_CERT_EXPIRY, default_raft_config};
use manager::{Manager, ManagerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent::{self, AgentSetup};
use crate::renewal::{self, Renewer};
use crate::state::{ManagerPeer, StateDir};
use crate::{NodeConfig, NodeError};

/// Why a node holding a manager certificate but no raft data (and no join address to join raft
/// through) does not start.
const MANAGER_JOIN_NOT_SUPPORTED: &str = "not supported yet: a manager certificate without raft data and no --join-addr to join the raft cluster through";

/// A running node.
pub struct Node {
    node_id: String,
    manager: Option<Manager>,
    security: Arc<SecurityConfig>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Certificates for this run, and whether they are new (and so still to be saved).
struct Identity {
    root: RootCa,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    info: CertInfo,
    fresh: bool,
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// `--force-new-cluster` recovers a manager from what its state directory holds: refused on a
/// worker and on a directory without certificates or raft data, before anything is written.
fn check_force_new_cluster(state: &StateDir, keys: &KeyStore) -> Result<(), NodeError> {
    let nothing = |what: &str| {
        NodeError::Config(format!(
            "--force-new-cluster: state directory {} holds no {what}: there is no cluster to recover",
            state.root().display()
        ))
    };
    let material = keys.load()?.ok_or_else(|| nothing("node certificate"))?;
    if CertInfo::parse(&material.cert_pem)?.role != api::NodeRole::Manager {
        return Err(NodeError::Config(
            "--force-new-cluster can only be used on a manager: this node is a worker".into(),
        ));
    }
    if !state.has_raft_data() {
        return Err(nothing("raft data"));
    }
    Ok(())
}

async fn load_or_create_identity(
    config: &NodeConfig,
    state: &StateDir,
    keys: &KeyStore,
) -> Result<Identity, NodeError> {
    if let Some(m) = keys.load()? {
        let info = CertInfo::parse(&m.cert_pem)?;
        if info.role == api::NodeRole::Manager
            && !state.has_raft_data()
            && config.join_addr.is_empty()
        {
            return Err(NodeError::Config(MANAGER_JOIN_NOT_SUPPORTED.into()));
        }
        if info.not_after < SystemTime::now() {
            return Err(NodeError::Config(
                "node certificate has expired; not supported yet: --force-new-cluster to renew it"
                    .into(),
            ));
        }
        let root = RootCa::from_pem(&m.root_pem, None)?;
        return Ok(Identity {
            root,
            cert_pem: m.cert_pem,
            key_pem: m.key_pem,
            info,
            fresh: false,
        });
    }
    if !config.join_addr.is_empty() {
        return join(config).await;
    }
    if state.has_raft_data() {
        return Err(NodeError::Config(format!(
            "state directory {} holds raft data but no certificates; remove it to create a new cluster",
            state.root().display()
        )));
    }
    let root = RootCa::generate()?;
    let node_id = api::naming::new_id();
    let cluster_id = api::naming::new_id();
    let key = NodeKey::generate()?;
    let cert_pem = root.issue(
        key.csr_pem()?.as_bytes(),
        &node_id,
        api::NodeRole::Manager,
        &cluster_id,
        DEFAULT_NODE_CERT_EXPIRY,
    )?;
    let info = CertInfo::parse(&cert_pem)?;
    Ok(Identity {
        root,
        cert_pem,
        key_pem: key.key_pem().as_bytes().to_vec(),
        info,
        fresh: true,
    })
}

/// First start with `--join-addr`: fetch and check the root CA, then get a certificate with the
/// join token (spec 2.4). Nothing is written until the certificate is issued.
async fn join(config: &NodeConfig) -> Result<Identity, NodeError> {
    let token = ca::ParsedToken::parse(&config.join_token)?;
    let started = std::time::Instant::now();
    let root_pem = ca::download_root_ca(&config.join_addr, &token).await?;
    let root = RootCa::from_pem(&root_pem, None)?;
    info!(addr = %config.join_addr, ca.hash = %root.cert_hash(), "downloaded the root CA, matching the join token");
    let issued = ca::request_certificate(
        &config.join_addr,
        &root_pem,
        ca::Credential::Token(&config.join_token),
        config.availability,
    )
    .await?;
    let info = CertInfo::parse(&issued.cert_pem)?;
    info!(
        node.id = %info.node_id,
        node.role = %info.ou,
        elapsed = ?started.elapsed(),
        "joined the cluster: node certificate issued"
    );
    Ok(Identity {
        root,
        cert_pem: issued.cert_pem,
        key_pem: issued.key.key_pem().into_bytes(),
        info,
        fresh: true,
    })
}

impl Node {
    /// Starts the node and returns once its control socket is serving.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let state = StateDir::open(&config.state_dir)?;
        let keys = KeyStore::new(state.root());
        if config.force_new_cluster {
            check_force_new_cluster(&state, &keys)?;
        }
        let id = load_or_create_identity(&config, &state, &keys).await?;
        let node_id = id.info.node_id.clone();
        let security = SecurityConfig::new(
            keys.clone(),
            NodeTlsMaterial {
                root_pem: id.root.cert_pem().to_vec(),
                cert_pem: id.cert_pem.clone(),
                key_pem: id.key_pem.clone(),
            },
        )?;
        let shutdown = CancellationToken::new();
        if id.info.role == api::NodeRole::Worker {
            return Self::start_worker(config, state, security, id.fresh, shutdown).await;
        }
        // Joined with the manager token (now or on an earlier start that did not get into raft):
        // the certificate is kept and this manager joins raft through the join address.
        let join_raft = !config.join_addr.is_empty() && !state.has_raft_data();
        if join_raft {
            security.save()?;
        }

        let listener = TcpListener::bind(&config.listen_remote_api)
            .await
            .map_err(|source| NodeError::State {
                path: config.listen_remote_api.clone().into(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| NodeError::State {
                path: config.listen_remote_api.clone().into(),
                source,
            })?
            .port();
        let advertise_addr = if config.advertise_remote_api.is_empty() {
            format!("0.0.0.0:{port}")
        } else {
            config.advertise_remote_api.clone()
        };
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
            node_id: node_id.clone(),
            cluster_id: id.info.cluster_id.clone(),
            root_ca_cert: id.root.cert_pem().to_vec(),
            root_ca_key: id.root.key_pem().map(<[u8]>::to_vec),
            join_tokens: (
                ca::generate_join_token(&id.root),
                ca::generate_join_token(&id.root),
            ),
            ca_cert_hash: id.root.cert_hash(),
            raft: api::RaftConfig {
                snapshot_interval: config.snapshot_interval,
                log_entries_for_slow_followers: config.log_entries_for_slow_followers,
                ..default_raft_config(config.election_tick, config.heartbeat_tick)
            },
            hostname,
            status_addr,
            node_cert: id.cert_pem.clone(),
        };
        let raft = raft::RaftConfig {
            dir: state.raft_dir(),
            snapshot_interval: config.snapshot_interval,
            log_entries_for_slow_followers: config.log_entries_for_slow_followers,
            tick: config.tick,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            force_new_cluster: config.force_new_cluster,
        };
        let manager = Manager::start(ManagerConfig {
            control_socket: config.listen_control_api.clone(),
            remote_listener: listener,
            advertise_addr: advertise_addr.clone(),
            raft,
            security: security.clone(),
            cert_expiry_override: config.cert_expiry_override,
            bootstrap,
            join_addr: join_raft.then(|| config.join_addr.clone()),
        })
        .await?;

        if id.fresh {
            // Only now is the root CA key safe in the committed cluster object.
            security.save()?;
        }
        state.save_managers(&[ManagerPeer {
            node_id: node_id.clone(),
            addr: advertise_addr,
        }])?;

        // The manager renews through its own remote port, as any node does.
        let renewer = Renewer::new(security.clone(), vec![format!("127.0.0.1:{port}")]);
        let mut tasks = JoinSet::new();
        tasks.spawn(renewal::watch_own_node(
            manager.store().clone(),
            security.clone(),
            renewer.trigger(),
            shutdown.clone(),
        ));
        tasks.spawn(renewer.run(shutdown.clone()));
        // The dispatcher answers on the leader only and a follower does not forward sessions
        // yet, so a manager's agent also tries the manager it joined through.
        let mut agent_managers = vec![format!("127.0.0.1:{port}")];
        if !config.join_addr.is_empty() {
            agent_managers.push(config.join_addr.clone());
        }
        agent::spawn(
            &config,
            AgentSetup {
                security: security.clone(),
                state: state.clone(),
                managers: agent_managers,
                renew: None,
                remember_managers: false,
            },
            &mut tasks,
            shutdown.clone(),
        )
        .await?;
        info!(node.id = %node_id, "node is ready");
        Ok(Node {
            node_id,
            manager: Some(manager),
            security,
            shutdown,
            tasks,
        })
    }

    /// A worker: no raft and no control socket. It keeps its certificate renewed through the
    /// managers it knows; sessions and tasks come with the agent.
    async fn start_worker(
        config: NodeConfig,
        state: StateDir,
        security: Arc<SecurityConfig>,
        fresh: bool,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        if fresh {
            security.save()?;
        }
        let mut managers: Vec<String> =
            state.load_managers()?.into_iter().map(|p| p.addr).collect();
        if !config.join_addr.is_empty() {
            // As SwarmKit: a join address replaces the remembered managers.
            managers = vec![config.join_addr.clone()];
            state.save_managers(&[ManagerPeer {
                node_id: String::new(),
                addr: config.join_addr.clone(),
            }])?;
        }
        if managers.is_empty() {
            return Err(NodeError::Config(
                "this worker knows no manager: give one with --join-addr".into(),
            ));
        }
        if !fresh {
            // Certificates of another cluster's CA make the start fail, as SwarmKit's does.
            ca::check_manager_trust(&managers[0], security.client_config()?).await?;
        }
        let node_id = security.info().node_id;
        let mut tasks = JoinSet::new();
        let renewer = Renewer::new(security.clone(), managers.clone());
        let renew = renewer.trigger();
        tasks.spawn(renewer.run(shutdown.clone()));
        agent::spawn(
            &config,
            AgentSetup {
                security: security.clone(),
                state: state.clone(),
                managers,
                renew: Some(renew),
                remember_managers: true,
            },
            &mut tasks,
            shutdown.clone(),
        )
        .await?;
        info!(node.id = %node_id, "worker node is ready");
        Ok(Node {
            node_id,
            manager: None,
            security,
            shutdown,
            tasks,
        })
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The manager this node runs, if it is a manager.
    pub fn manager(&self) -> Option<&Manager> {
        self.manager.as_ref()
    }

    /// This node's live TLS identity.
    pub fn security(&self) -> &Arc<SecurityConfig> {
        &self.security
    }

    /// Graceful stop (SIGINT): renewal stops, the manager drains and removes its control socket.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        // The agent shuts its tasks down on the way out; bounded, as a stop must end.
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(crate::agent::LEAVE_LIMIT, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "the agent did not stop its tasks within {:?}",
                crate::agent::LEAVE_LIMIT
            );
            self.tasks.abort_all();
        }
        let Some(manager) = self.manager else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(15), manager.stop())
            .await
            .is_err()
        {
            tracing::warn!("manager did not stop within 15s");
        }
    }
}
