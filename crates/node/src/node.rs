//! Starting and stopping one node. A first start (no certificates, no raft data) creates a new
//! cluster: root CA, node and cluster IDs, this manager's certificate; the certificates reach
//! the disk only after the cluster object holding the root CA key has been committed, so a crash
//! in between leaves no half-made cluster behind (spec 2.3, 5.10).

use std::time::{Duration, SystemTime};

use ca::{CertInfo, KeyStore, NodeKey, RootCa};
use manager::bootstrap::{BootstrapInfo, DEFAULT_NODE_CERT_EXPIRY, default_raft_config};
use manager::{Manager, ManagerConfig};
use tokio::net::TcpListener;
use tracing::info;

use crate::state::{ManagerPeer, StateDir};
use crate::{NodeConfig, NodeError};

/// A running node.
pub struct Node {
    node_id: String,
    manager: Manager,
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

fn load_or_create_identity(state: &StateDir, keys: &KeyStore) -> Result<Identity, NodeError> {
    if let Some(m) = keys.load()? {
        let info = CertInfo::parse(&m.cert_pem)?;
        if info.role != api::NodeRole::Manager {
            return Err(NodeError::Config(
                "not supported yet: running a worker node (this state directory holds a worker certificate)"
                    .into(),
            ));
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

impl Node {
    /// Starts the node and returns once its control socket is serving.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let state = StateDir::open(&config.state_dir)?;
        let keys = KeyStore::new(state.root());
        let id = load_or_create_identity(&state, &keys)?;
        let node_id = id.info.node_id.clone();

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
            raft: default_raft_config(config.election_tick, config.heartbeat_tick),
            hostname,
            status_addr,
        };
        let raft = raft::RaftConfig {
            dir: state.raft_dir(),
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
            cert_pem: id.cert_pem.clone(),
            key_pem: id.key_pem.clone(),
            bootstrap,
        })
        .await?;

        if id.fresh {
            // Only now is the root CA key safe in the committed cluster object.
            keys.save(id.root.cert_pem(), &id.cert_pem, &id.key_pem)?;
        }
        state.save_managers(&[ManagerPeer {
            node_id: node_id.clone(),
            addr: advertise_addr,
        }])?;
        info!(node.id = %node_id, "node is ready");
        Ok(Node { node_id, manager })
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The manager this node runs.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Graceful stop (SIGINT): the manager drains and removes its control socket.
    pub async fn stop(self) {
        let stop = self.manager.stop();
        if tokio::time::timeout(Duration::from_secs(15), stop)
            .await
            .is_err()
        {
            tracing::warn!("manager did not stop within 15s");
        }
    }
}
