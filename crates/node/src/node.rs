//! Starting and stopping one node. A first start (no certificates, no raft data) creates a new
//! cluster: root CA, node and cluster IDs, this manager's certificate; the certificates reach
//! the disk only after the cluster object holding the root CA key has been committed, so a crash
//! in between leaves no half-made cluster behind (spec 2.3, 5.10). With `--join-addr` a first
//! start joins instead (spec 2.4): a worker certificate makes a worker node, which runs no manager;
//! a manager certificate makes a manager that joins the raft cluster through the join address.
//! Afterwards the node follows its certificate's role as it is renewed ([`crate::roles`]).

use std::time::SystemTime;

use std::sync::Arc;

use ca::{CertInfo, KeyStore, NodeKey, NodeTlsMaterial, RootCa, SecurityConfig};
use manager::ManagerFailure;
use manager::bootstrap::DEFAULT_NODE_CERT_EXPIRY;
use manager::tasks::TaskSet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::{self, AgentSetup, KnownManagers};
use crate::renewal::Renewer;
use crate::roles::Roles;
use crate::state::{ManagerPeer, StateDir};
use crate::{NodeConfig, NodeError};

/// Why a node holding a manager certificate but no raft data does not start when it knows no
/// manager to join raft through.
const MANAGER_JOIN_NO_MANAGER: &str = "this node has a manager certificate but no raft data and knows no manager to join the raft cluster through: give one with --join-addr";

/// A running node.
pub struct Node {
    node_id: String,
    pub(crate) roles: Arc<Roles>,
    security: Arc<SecurityConfig>,
    shutdown: CancellationToken,
    /// The agent, certificate renewal and role changes: none may end before `shutdown`.
    tasks: TaskSet,
    /// Failures of the manager this node runs, as [`Roles`] forwards them.
    manager_failed: mpsc::UnboundedReceiver<ManagerFailure>,
    /// This node's part of the debug state (`--listen-debug`).
    _debug: telemetry::debug::Section,
}

/// The node's debug state: its identity as its current certificate says, and whether it runs a
/// manager now.
fn debug_section(security: &Arc<SecurityConfig>) -> telemetry::debug::Section {
    let security = Arc::downgrade(security);
    telemetry::debug::section("node", move || {
        let Some(security) = security.upgrade() else {
            return serde_json::Value::Null;
        };
        let info = security.info();
        serde_json::json!({
            "node_id": info.node_id,
            "cluster_id": info.cluster_id,
            "certificate_role": info.ou,
            "runs_manager": telemetry::swarm::NODE_MANAGER.get() == 1,
        })
    })
}

/// Certificates for this run, and whether they are new (and so still to be saved).
struct Identity {
    root: RootCa,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    info: CertInfo,
    fresh: bool,
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
            && state.load_managers()?.is_empty()
        {
            return Err(NodeError::Config(MANAGER_JOIN_NO_MANAGER.into()));
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
    /// Starts the node and returns once its control socket is serving (a manager) or its agent
    /// runs (a worker).
    pub async fn start(mut config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let state = StateDir::open(&config.state_dir)?;
        // A locked key file needs its unlock key (a missing or wrong one fails the load below
        // with SwarmKit's message, before anything is written); an unlocked one is not locked
        // by a key given anyway: only the cluster's autolock setting locks it.
        let locked = KeyStore::new(state.root()).is_locked_on_disk()?;
        if !locked && config.unlock_key.is_some() {
            // As SwarmKit, whose key reader opens the raft data key headers with the key given
            // and fails on plain ones: a manager that is not locked refuses a key as a wrong
            // one. A node without them (a worker, a new node) goes on without it.
            let deks = KeyStore::new(state.root()).data_keys()?;
            if deks.current.is_some() || deks.pending.is_some() {
                return Err(ca::CaError::Locked.into());
            }
            warn!("this node is not locked: --unlock-key is ignored");
        }
        let unlock_key = config.unlock_key.clone().filter(|_| locked);
        let mut keys = KeyStore::with_unlock_key(state.root(), unlock_key.map(|k| k.0));
        if config.force_new_cluster {
            check_force_new_cluster(&state, &keys)?;
        }
        let id = load_or_create_identity(&config, &state, &keys).await?;
        if id.fresh && config.join_addr.is_empty() && config.autolock {
            // A new cluster created locked: its unlock key locks this key file from the first
            // write, and the cluster object records it (`BootstrapInfo::unlock_key`).
            let key = rand::random::<[u8; 32]>().to_vec();
            keys = KeyStore::with_unlock_key(state.root(), Some(key.clone()));
            config.unlock_key = Some(crate::config::UnlockKey(key));
        } else {
            config.autolock = false;
        }
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
        let remembered: Vec<String> = state.load_managers()?.into_iter().map(|p| p.addr).collect();
        // Nothing below writes `state.json` before the manager branch records its own address.
        let nothing_remembered = remembered.is_empty();
        // As SwarmKit: a join address replaces the remembered managers.
        let managers = if config.join_addr.is_empty() {
            remembered
        } else {
            vec![config.join_addr.clone()]
        };
        let known = KnownManagers::new(managers.clone());
        let renewer = Renewer::new(security.clone(), known.clone());
        let renew = renewer.trigger();
        let (manager_failure, manager_failed) = mpsc::unbounded_channel();
        let roles = Roles::new(
            config.clone(),
            state.clone(),
            security.clone(),
            known.clone(),
            renew.clone(),
            manager_failure,
        );
        telemetry::swarm::NODE_INFO.set(&id.info.cluster_id, &node_id);
        let mut node = Node {
            _debug: debug_section(&security),
            node_id: node_id.clone(),
            roles: roles.clone(),
            security: security.clone(),
            shutdown: shutdown.clone(),
            tasks: TaskSet::new(),
            manager_failed,
        };
        let mut agent_managers = managers.clone();
        if id.info.role == api::NodeRole::Worker {
            node.prepare_worker(&config, &state, id.fresh, &managers)
                .await?;
        } else {
            // A manager certificate without raft data: joined with the manager token (now, or
            // on an earlier start that did not get into raft), or promoted before a restart.
            let creating = id.fresh && config.join_addr.is_empty();
            let join_raft = !creating && !state.has_raft_data();
            if join_raft && !id.fresh {
                info!("manager certificate without raft data: joining the raft cluster");
            }
            if join_raft {
                security.save()?;
            }
            let advertise_addr = if join_raft {
                roles
                    .join_raft_through(&id.root, managers.clone(), MANAGER_JOIN_NO_MANAGER)
                    .await?
            } else {
                roles.start_manager(&id.root, None).await?
            };
            if id.fresh {
                // Only now is the root CA key safe in the committed cluster object.
                security.save()?;
            }
            if nothing_remembered {
                // A manager that joined remembers the one it joined through, as a worker does
                // (its own address may be a wildcard one only the leader resolved); sessions
                // replace it with every manager.
                let first = if config.join_addr.is_empty() {
                    ManagerPeer {
                        node_id: node_id.clone(),
                        addr: advertise_addr,
                    }
                } else {
                    ManagerPeer {
                        node_id: String::new(),
                        addr: config.join_addr.clone(),
                    }
                };
                state.save_managers(&[first])?;
            }
            // Its own manager first; then the ones it joined through or remembers.
            agent_managers = known.all();
        }
        node.tasks
            .spawn_unit("certificate renewal", renewer.run(shutdown.clone()));
        node.tasks.spawn_unit(
            "role supervision",
            roles.clone().supervise(shutdown.clone()),
        );
        agent::spawn(
            &config,
            AgentSetup {
                security: security.clone(),
                state: state.clone(),
                managers: agent_managers,
                renew,
                known,
            },
            &mut node.tasks,
            shutdown.clone(),
        )
        .await?;
        if node.roles.is_manager().await {
            info!(node.id = %node_id, "node is ready");
        } else {
            info!(node.id = %node_id, "worker node is ready");
        }
        Ok(node)
    }

    /// A worker: no raft and no control socket. It keeps its certificate renewed through the
    /// managers it knows; sessions and tasks come with the agent.
    async fn prepare_worker(
        &mut self,
        config: &NodeConfig,
        state: &StateDir,
        fresh: bool,
        managers: &[String],
    ) -> Result<(), NodeError> {
        if fresh {
            self.security.save()?;
        }
        if !config.join_addr.is_empty() {
            state.save_managers(&[ManagerPeer {
                node_id: String::new(),
                addr: config.join_addr.clone(),
            }])?;
        }
        let Some(first) = managers.first() else {
            return Err(NodeError::Config(
                "this worker knows no manager: give one with --join-addr".into(),
            ));
        };
        if state.has_raft_data() {
            // Demoted, and stopped before its raft data was removed.
            warn!("removing the raft data of this node's earlier manager: it is a worker now");
            state.clear_raft_data()?;
        }
        if !fresh {
            // Certificates of another cluster's CA make the start fail, as SwarmKit's does.
            ca::check_manager_trust(first, self.security.client_config()?).await?;
        }
        Ok(())
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node runs a manager now (its role can change while it runs).
    pub async fn is_manager(&self) -> bool {
        self.roles.is_manager().await
    }

    /// This node's live TLS identity.
    pub fn security(&self) -> &Arc<SecurityConfig> {
        &self.security
    }

    /// Waits until this node cannot go on and says why: its manager failed (raft stopped on a
    /// storage error such as a full disk or a read-only or corrupt state directory, or one of its
    /// servers ended) or one of its own tasks (the agent, certificate renewal, role changes)
    /// ended. The process should then exit non-zero, so that a supervisor restarts it rather
    /// than it serving half-dead. Cancel-safe.
    pub async fn failed(&mut self) -> NodeError {
        tokio::select! {
            Some(f) = self.manager_failed.recv() => NodeError::Manager(f.into()),
            ended = self.tasks.next_ended() => NodeError::Task(ended),
        }
    }

    /// Graceful stop (SIGINT): renewal stops, the manager drains and removes its control socket.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        // The agent shuts its tasks down on the way out; bounded, as a stop must end.
        self.tasks.drain(crate::agent::LEAVE_LIMIT).await;
        self.roles.stop().await;
    }
}
