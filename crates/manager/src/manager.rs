//! One manager: the raft-backed store, the first-start bootstrap, and the gRPC servers (the
//! control API on the unix socket, health on the remote port). Leader-only subsystems
//! (allocator, orchestrators, scheduler, task reaper, constraint enforcer, root CA rotation) are
//! listed in [`leader_subsystems`]; the manager adds the CA signer, the role manager and the
//! dispatcher's term, which need this manager's identity and raft membership. The remote port
//! serves CA, NodeCA, Control, Health and Dispatcher behind the authorization table of
//! [`crate::authz`].

use std::path::PathBuf;
use std::sync::Arc;

use dispatcher::{Dispatcher, DispatcherService};
use raft::{RaftConfig, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::authz::Authorizer;
use crate::bootstrap::{BootstrapInfo, bootstrap};
use crate::caserver::CaServer;
use crate::controlapi::{ControlApi, RaftMembers};
use crate::health::HealthService;
use crate::leader::{self, Subsystem};
use crate::rolemanager::RoleManager;
use crate::server::RemoteServices;
use crate::signer::CaSigner;
use crate::{ManagerError, server};

/// Everything a manager needs; paths and listeners are passed in so tests can use temp dirs
/// and port 0.
pub struct ManagerConfig {
    /// Where the control socket is created (mode 0600, parent dir 0700).
    pub control_socket: PathBuf,
    /// The bound remote API listener.
    pub remote_listener: TcpListener,
    /// Address other nodes use to reach this manager.
    pub advertise_addr: String,
    /// Raft settings (its directory is `<state dir>/raft`).
    pub raft: RaftConfig,
    /// This node's TLS identity, served on both listeners and followed as it is renewed.
    pub security: Arc<ca::SecurityConfig>,
    /// Validity of issued node certificates instead of the cluster's NodeCertExpiry (swarmd's
    /// test option; below the 1 h minimum the API enforces).
    pub cert_expiry_override: Option<std::time::Duration>,
    /// Objects to create when the cluster is new.
    pub bootstrap: BootstrapInfo,
}

/// A running manager.
pub struct Manager {
    store: MemoryStore,
    raft: Arc<RaftNode>,
    control_socket: PathBuf,
    shutdown: CancellationToken,
    servers: JoinSet<()>,
}

/// Manager status of the nodes in the raft group; with a single voter that is this node alone.
struct LocalMembers {
    node_id: String,
    addr: String,
    raft: Arc<RaftNode>,
}

impl RaftMembers for LocalMembers {
    fn manager_status(&self, node_id: &str) -> Option<api::ManagerStatus> {
        (node_id == self.node_id).then(|| api::ManagerStatus {
            raft_id: self.raft.raft_id(),
            addr: self.addr.clone(),
            leader: self.raft.is_leader(),
            reachability: api::raft_member_status::Reachability::Reachable as i32,
        })
    }

    fn is_member(&self, node_id: &str) -> bool {
        node_id == self.node_id
    }
}

/// The subsystems that run on the raft leader only: the allocator moves NEW tasks to PENDING, the
/// orchestrators create and retire tasks, the scheduler assigns PENDING tasks to nodes, the reaper
/// bounds task history, the constraint enforcer rejects tasks whose node stopped fitting and the
/// root CA rotation asks nodes to renew under a new root, then swaps the root. They talk only
/// through the store, so their order does not matter.
pub fn leader_subsystems() -> Vec<Subsystem> {
    use orchestrator::constraint_enforcer::ConstraintEnforcer;
    use orchestrator::global::GlobalOrchestrator;
    use orchestrator::jobs::JobsOrchestrator;
    use orchestrator::reaper::TaskReaper;
    use orchestrator::replicated::ReplicatedOrchestrator;
    vec![
        Subsystem::new("allocator", |store, shutdown| {
            allocator::Allocator::new(store).run(shutdown)
        }),
        Subsystem::new("replicated orchestrator", |store, shutdown| {
            ReplicatedOrchestrator::new(store).run(shutdown)
        }),
        Subsystem::new("global orchestrator", |store, shutdown| {
            GlobalOrchestrator::new(store).run(shutdown)
        }),
        Subsystem::new("jobs orchestrator", |store, shutdown| {
            JobsOrchestrator::new(store).run(shutdown)
        }),
        Subsystem::new("task reaper", |store, shutdown| {
            TaskReaper::new(store).run(shutdown)
        }),
        Subsystem::new("constraint enforcer", |store, shutdown| {
            ConstraintEnforcer::new(store).run(shutdown)
        }),
        Subsystem::new("scheduler", |store, shutdown| {
            scheduler::Scheduler::new(store).run(shutdown)
        }),
        Subsystem::new("root CA rotation", |store, shutdown| {
            crate::rootrotation::RootRotation::new(store).run(shutdown)
        }),
    ]
}

impl Manager {
    /// Starts raft, waits for leadership, creates the initial objects if missing and starts
    /// serving. Returns once the control socket accepts connections.
    pub async fn start(config: ManagerConfig) -> Result<Manager, ManagerError> {
        let store = MemoryStore::new(None);
        let raft =
            RaftNode::start(config.raft, store.clone(), config.advertise_addr.clone()).await?;
        bootstrap(&store, &config.bootstrap).await?;
        info!(
            "leadership changed from not yet part of a raft cluster to {:x}",
            raft.raft_id()
        );

        let members = Arc::new(LocalMembers {
            node_id: config.bootstrap.node_id.clone(),
            addr: config.advertise_addr.clone(),
            raft: raft.clone(),
        });
        let control = ControlApi::new(store.clone(), members.clone());
        let cluster_id = config.security.info().cluster_id;
        let auth = Authorizer::new(store.clone(), cluster_id.clone());
        let shutdown = CancellationToken::new();
        let mut servers = JoinSet::new();

        let dispatcher = Dispatcher::new(
            store.clone(),
            config.bootstrap.node_id.clone(),
            dispatcher::Config {
                // Until the node runs an agent on managers, nothing else keeps this node READY.
                local_node: Some(config.bootstrap.node_id.clone()),
                ..dispatcher::Config::default()
            },
        );
        dispatcher.set_managers(vec![dispatcher::weighted_peer(
            &config.bootstrap.node_id,
            &config.advertise_addr,
        )]);

        let unix = server::bind_control_socket(&config.control_socket)?;
        info!(addr = %config.control_socket.display(), proto = "unix", "Listening for local connections");
        servers.spawn(server::serve_control(
            unix,
            config.security.control_tls(),
            control.clone(),
            HealthService::new("ControlAPI"),
            DispatcherService::local(dispatcher.clone(), config.bootstrap.node_id.clone()),
            shutdown.clone(),
        ));

        let mut subsystems = leader_subsystems();
        let expiry = config.cert_expiry_override;
        subsystems.push(Subsystem::new("ca signer", move |store, shutdown| {
            CaSigner::new(store, cluster_id.clone(), expiry).run(shutdown)
        }));
        subsystems.push(Subsystem::new("role manager", move |store, shutdown| {
            RoleManager::new(store, members.clone()).run(shutdown)
        }));
        let term = dispatcher.clone();
        subsystems.push(Subsystem::new("dispatcher", move |_, shutdown| {
            term.clone().run(shutdown)
        }));
        servers.spawn(leader::run(
            raft.clone(),
            store.clone(),
            Arc::new(subsystems),
            shutdown.clone(),
        ));

        info!(addr = %config.remote_listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), proto = "tcp", "Listening for connections");
        servers.spawn(server::serve_remote(
            config.remote_listener,
            config.security.remote_tls(),
            RemoteServices {
                control,
                ca: CaServer::new(store.clone(), auth.clone()),
                health: HealthService::new("Raft"),
                dispatcher: DispatcherService::remote(dispatcher),
                auth,
            },
            shutdown.clone(),
        ));

        Ok(Manager {
            store,
            raft,
            control_socket: config.control_socket,
            shutdown,
            servers,
        })
    }

    /// The replicated store.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// This member's raft ID.
    pub fn raft_id(&self) -> u64 {
        self.raft.raft_id()
    }

    /// Graceful stop: servers drain, raft shuts down, the control socket is removed.
    pub async fn stop(mut self) {
        info!("Stopping manager");
        self.shutdown.cancel();
        let drain = async {
            while let Some(res) = self.servers.join_next().await {
                if let Err(e) = res {
                    error!("server task failed: {e}");
                }
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            self.servers.abort_all();
        }
        self.raft.shutdown().await;
        let _ = std::fs::remove_file(&self.control_socket);
        info!("Manager shut down");
    }
}
