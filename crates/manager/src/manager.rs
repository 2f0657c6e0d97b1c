//! One manager: the raft-backed store, the first-start bootstrap, and the gRPC servers (the
//! control API on the unix socket, health on the remote port). Leader-only subsystems
//! (allocator, orchestrators, scheduler, task reaper, constraint enforcer, root CA rotation) are
//! listed in [`leader_subsystems`]; the manager adds the CA signer, the role manager and the
//! dispatcher's term, which need this manager's identity and raft membership. The remote port
//! serves CA, NodeCA, Control, Health, Dispatcher, Watch, the network plane and the raft transport behind the authorization table of
//! [`crate::authz`]; on both listeners a follower forwards what only the leader serves to it
//! ([`crate::proxy`]). A watchdog follows the servers, the leader lifecycle and raft: the first of
//! them to die before [`Manager::stop`] is the manager's failure ([`Manager::failed`]); nothing
//! here restarts them, as a manager with a dead raft or server must not serve on.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use dispatcher::{Dispatcher, DispatcherService};
use raft::{NetworkFactory, RaftConfig, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::authz::Authorizer;
use crate::bootstrap::{BootstrapInfo, bootstrap};
use crate::caserver::CaServer;
use crate::controlapi::ControlApi;
use crate::health::HealthService;
use crate::leader::{self, Subsystem};
use crate::logbroker::{LogBroker, LogBrokerService};
use crate::netplane::{NetworkPlane, NetworkPlaneService};
use crate::raftjoin::{self, JoinService, StoreMembers};
use crate::rolemanager::RoleManager;
use crate::server::{LocalServices, RemoteServices};
use crate::signer::CaSigner;
use crate::tasks::TaskSet;
use crate::watchapi::WatchService;
use crate::{ManagerError, ManagerFailure, server};

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
    /// Join the raft cluster through the manager at this address instead of starting (or
    /// resuming) one: set on the first start of a node that joined with the manager token.
    pub join_addr: Option<String>,
}

/// A running manager.
pub struct Manager {
    store: MemoryStore,
    raft: Arc<RaftNode>,
    control_socket: PathBuf,
    shutdown: CancellationToken,
    /// Watches the servers and raft until `shutdown`, then stops the servers ([`watch_tasks`]).
    watchdog: JoinHandle<()>,
    /// The first failure [`watch_tasks`] saw, once it saw one.
    failure: watch::Receiver<Option<ManagerFailure>>,
    /// This manager's part of the debug state (`--listen-debug`), shown while it runs.
    debug: Option<telemetry::debug::Section>,
}

/// The debug state of a manager: its raft member as it sees it and its store's contents by kind.
/// Reads what raft and the store keep (the log bounds are one short read of the raft database).
fn debug_section(
    node_id: String,
    raft: &Arc<RaftNode>,
    store: &MemoryStore,
) -> telemetry::debug::Section {
    let raft = Arc::downgrade(raft);
    let store = store.clone();
    telemetry::debug::section("manager", move || {
        let raft_state = raft.upgrade().map(|raft| {
            let members: Vec<serde_json::Value> = raft
                .members()
                .into_iter()
                .map(|m| serde_json::json!({"raft_id": format!("{:x}", m.raft_id), "addr": m.addr, "voter": m.voter}))
                .collect();
            let log = raft.log_bounds().ok().map(|b| {
                serde_json::json!({
                    "first_index": b.first_index,
                    "last_index": b.last_index,
                    "snapshot_index": b.snapshot_index,
                })
            });
            serde_json::json!({
                "raft_id": format!("{:x}", raft.raft_id()),
                "leader": raft.is_leader(),
                "leader_id": raft.leader_id().map(|id| format!("{id:x}")),
                "members": members,
                "log": log,
            })
        });
        let objects = store.view(|tx| {
            serde_json::json!({
                "nodes": tx.count::<api::Node>(),
                "services": tx.count::<api::Service>(),
                "tasks": tx.count::<api::Task>(),
                "networks": tx.count::<api::Network>(),
                "secrets": tx.count::<api::Secret>(),
                "configs": tx.count::<api::Config>(),
            })
        });
        serde_json::json!({
            "node_id": node_id,
            "raft": raft_state,
            "store": {"last_index": store.last_index(), "objects": objects},
        })
    })
}

/// How long the manager's servers get to stop before they are aborted.
const SERVERS_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Until `shutdown`: the first of raft stopping on its own and a task of `tasks` ending is the
/// manager's failure, sent to `failure` (a task that ended because raft stopped, as the leader
/// lifecycle and the manager list end when raft's metrics close, is reported as raft's failure,
/// which names the cause). Then stops the tasks within their grace.
async fn watch_tasks(
    mut tasks: TaskSet,
    raft: Arc<RaftNode>,
    shutdown: CancellationToken,
    failure: watch::Sender<Option<ManagerFailure>>,
) {
    let failed = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        e = raft.failed() => Some(ManagerFailure::Raft(e.to_string())),
        ended = tasks.next_ended() => Some(match raft.stopped_error() {
            Some(e) => ManagerFailure::Raft(e.to_string()),
            None => ManagerFailure::Task(ended),
        }),
    };
    if let Some(f) = failed {
        let _ = failure.send(Some(f));
    }
    shutdown.cancelled().await;
    tasks.drain(SERVERS_STOP_GRACE).await;
}

/// How long a joining manager waits to be a voter with the log applied, once the leader answered.
const JOIN_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// Records this manager's raft ID in its own Node object (the leader does it for managers that
/// join), so other managers can map the node to its raft member.
async fn record_own_raft_id(
    store: &MemoryStore,
    node_id: &str,
    raft: &RaftNode,
    addr: &str,
) -> Result<(), store::StoreError> {
    let (node_id, raft_id, addr) = (node_id.to_string(), raft.raft_id(), addr.to_string());
    let known = store.view(|tx| {
        tx.get_node(&node_id)
            .and_then(|n| n.manager_status)
            .is_some_and(|s| s.raft_id == raft_id && s.addr == addr)
    });
    if known {
        return Ok(());
    }
    store
        .update(move |tx| {
            if let Some(mut node) = tx.get_node(&node_id) {
                node.manager_status = Some(api::ManagerStatus {
                    raft_id,
                    addr,
                    leader: true,
                    reachability: api::raft_member_status::Reachability::Reachable as i32,
                });
                tx.update_node(node)?;
            }
            Ok(())
        })
        .await
}

/// Raft peers are dialed over mutual TLS with this node's current certificate, expecting a
/// manager certificate (`swarm-manager` SAN) on the other side.
fn raft_network(security: &Arc<ca::SecurityConfig>) -> NetworkFactory {
    let security = security.clone();
    NetworkFactory::new(Arc::new(move |addr: &str| {
        let cfg = security.client_config().map_err(|e| e.to_string())?;
        ca::tls_channel(addr, cfg, ca::MANAGER_ROLE).map_err(|e| e.to_string())
    }))
}

/// The subsystems that run on the raft leader only: the allocator moves NEW tasks to PENDING, the
/// orchestrators create and retire tasks, the scheduler assigns PENDING tasks to nodes, the reaper
/// bounds task history, the constraint enforcer rejects tasks whose node stopped fitting and the
/// root CA rotation asks nodes to renew under a new root, then swaps the root, and the key manager
/// creates and rotates the network bootstrap keys in the cluster object. They talk only
/// through the store, so their order does not matter. They write as background writers
/// (`MemoryStore::background`): a write of theirs joins the next client write's raft entry, or
/// goes alone after `store::LINGER`.
pub fn leader_subsystems() -> Vec<Subsystem> {
    use orchestrator::constraint_enforcer::ConstraintEnforcer;
    use orchestrator::global::GlobalOrchestrator;
    use orchestrator::jobs::JobsOrchestrator;
    use orchestrator::reaper::TaskReaper;
    use orchestrator::replicated::ReplicatedOrchestrator;
    vec![
        Subsystem::new("allocator", |store, shutdown| {
            allocator::Allocator::new(store.background()).run(shutdown)
        }),
        Subsystem::new("replicated orchestrator", |store, shutdown| {
            ReplicatedOrchestrator::new(store.background()).run(shutdown)
        }),
        Subsystem::new("global orchestrator", |store, shutdown| {
            GlobalOrchestrator::new(store.background()).run(shutdown)
        }),
        Subsystem::new("jobs orchestrator", |store, shutdown| {
            JobsOrchestrator::new(store.background()).run(shutdown)
        }),
        Subsystem::new("task reaper", |store, shutdown| {
            TaskReaper::new(store.background()).run(shutdown)
        }),
        Subsystem::new("constraint enforcer", |store, shutdown| {
            ConstraintEnforcer::new(store.background()).run(shutdown)
        }),
        Subsystem::new("scheduler", |store, shutdown| {
            scheduler::Scheduler::new(store.background()).run(shutdown)
        }),
        Subsystem::new("root CA rotation", |store, shutdown| {
            crate::rootrotation::RootRotation::new(store.background()).run(shutdown)
        }),
        Subsystem::new("key manager", |store, shutdown| {
            crate::keymanager::KeyManager::new(store.background()).run(shutdown)
        }),
    ]
}

impl Manager {
    /// Opens raft, serves the remote API (raft transport included), waits (bounded) for a
    /// leader, creates the initial objects if this manager leads and they are missing, then
    /// serves the control socket and runs the leader subsystems. Returns once the control socket accepts connections.
    pub async fn start(config: ManagerConfig) -> Result<Manager, ManagerError> {
        let store = MemoryStore::new(None);
        let network = raft_network(&config.security);
        let raft_dir = config.raft.dir.clone();
        let raft_config = config.raft.clone();
        let raft = match &config.join_addr {
            None => {
                RaftNode::open_member(
                    &config.raft,
                    store.clone(),
                    config.advertise_addr.clone(),
                    network,
                )
                .await?
            }
            Some(_) => RaftNode::start_joining(config.raft, store.clone(), network).await?,
        };

        let members = Arc::new(StoreMembers::new(
            config.bootstrap.node_id.clone(),
            raft.clone(),
            store.clone(),
        ));
        let control = ControlApi::new(store.clone(), members.clone());
        let cluster_id = config.security.info().cluster_id;
        let auth = Authorizer::new(store.clone(), cluster_id.clone());
        let shutdown = CancellationToken::new();
        let mut servers = TaskSet::new();
        let watch = WatchService::new(store.clone(), Some(raft.clone()), shutdown.clone());

        let dispatcher = Dispatcher::new(
            store.clone(),
            config.bootstrap.node_id.clone(),
            dispatcher::Config::default(),
        );
        let netplane = NetworkPlane::new(store.clone());
        let log_broker = LogBroker::new(store.clone());
        // Sessions tell agents every raft member, following membership changes.
        servers.spawn_unit(
            "manager list",
            raftjoin::follow_managers(
                raft.clone(),
                store.clone(),
                dispatcher.clone(),
                config.bootstrap.node_id.clone(),
                shutdown.clone(),
            ),
        );

        // Peers reach this member's raft transport on the remote port, so serve it before
        // waiting for a leader: a restarted member hears the current leader only there.
        info!(addr = %config.remote_listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), proto = "tcp", "Listening for connections");
        let forwarder = crate::proxy::Forwarder::new(raft.clone(), config.security.clone());
        let ca_server = CaServer::new(store.clone(), auth.clone());
        servers.spawn(
            "remote API server",
            server::serve_remote(
                config.remote_listener,
                config.security.remote_tls(),
                RemoteServices {
                    control: control.clone(),
                    ca: ca_server.clone(),
                    health: HealthService::new("Raft"),
                    dispatcher: DispatcherService::remote(dispatcher.clone()),
                    watch: watch.clone(),
                    netplane: NetworkPlaneService::remote(netplane.clone()),
                    logs: LogBrokerService::remote(log_broker.clone()),
                    raft: Some(raft.transport()),
                    join: Some(JoinService::new(raft.clone(), store.clone())),
                    auth,
                    proxy: Some(forwarder.remote_layer()),
                },
                shutdown.clone(),
            ),
        );

        let stop_servers = async |servers: &mut TaskSet| {
            shutdown.cancel();
            servers.drain(SERVERS_STOP_GRACE).await;
            raft.shutdown().await;
        };
        if config.join_addr.is_none() {
            let ready = async {
                raft.become_ready(&raft_config).await?;
                if raft.is_leader() {
                    bootstrap(&store, &config.bootstrap).await?;
                    record_own_raft_id(
                        &store,
                        &config.bootstrap.node_id,
                        &raft,
                        &config.advertise_addr,
                    )
                    .await?;
                    info!(
                        "leadership changed from not yet part of a raft cluster to {:x}",
                        raft.raft_id()
                    );
                }
                Ok::<(), ManagerError>(())
            };
            if let Err(e) = ready.await {
                stop_servers(&mut servers).await;
                return Err(e);
            }
        }

        let unix = server::bind_control_socket(&config.control_socket).map_err(|source| {
            ManagerError::ControlSocket {
                path: config.control_socket.clone(),
                source,
            }
        })?;
        info!(addr = %config.control_socket.display(), proto = "unix", "Listening for local connections");
        servers.spawn(
            "control API server",
            server::serve_control(
                unix,
                config.security.control_tls(),
                LocalServices {
                    control: control.clone(),
                    ca: ca_server,
                    health: HealthService::new("ControlAPI"),
                    dispatcher: DispatcherService::local(
                        dispatcher.clone(),
                        config.bootstrap.node_id.clone(),
                    ),
                    watch,
                    netplane: NetworkPlaneService::local(
                        netplane.clone(),
                        config.bootstrap.node_id.clone(),
                    ),
                    logs: LogBrokerService::local(
                        log_broker.clone(),
                        config.bootstrap.node_id.clone(),
                    ),
                    proxy: Some(forwarder.local_layer()),
                },
                shutdown.clone(),
            ),
        );

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
        subsystems.push(Subsystem::new("network plane", move |_, shutdown| {
            netplane.clone().run(shutdown)
        }));
        subsystems.push(Subsystem::new("log broker", move |_, shutdown| {
            log_broker.clone().run(shutdown)
        }));
        servers.spawn(
            "leader lifecycle",
            leader::run(
                raft.clone(),
                store.clone(),
                Arc::new(subsystems),
                shutdown.clone(),
            ),
        );

        if let Some(addr) = &config.join_addr {
            // The remote API (and so this member's raft transport) is up: ask to be added.
            let joined = async {
                let leader = raftjoin::join(
                    &config.security,
                    addr,
                    raft.raft_id(),
                    &config.advertise_addr,
                )
                .await
                .map_err(raft::RaftError::Raft)?;
                raft.wait_joined(JOIN_CATCH_UP).await?;
                Ok::<u64, raft::RaftError>(leader)
            };
            match joined.await {
                Ok(leader) => info!(
                    "joined the raft cluster as {:x}; leader is {leader:x}",
                    raft.raft_id()
                ),
                Err(e) => {
                    stop_servers(&mut servers).await;
                    let _ = std::fs::remove_file(&config.control_socket);
                    // Not in the cluster: leave no raft data, so that a later start joins
                    // again instead of resuming (and initializing) a cluster of its own.
                    let _ = std::fs::remove_dir_all(&raft_dir);
                    return Err(e.into());
                }
            }
        }

        servers.spawn(
            "metrics collector",
            crate::collector::run(store.clone(), shutdown.clone()),
        );
        let debug = debug_section(config.bootstrap.node_id.clone(), &raft, &store);
        let (failure_tx, failure) = watch::channel(None);
        let watchdog = tokio::spawn(watch_tasks(
            servers,
            raft.clone(),
            shutdown.clone(),
            failure_tx,
        ));
        Ok(Manager {
            store,
            raft,
            control_socket: config.control_socket,
            shutdown,
            watchdog,
            failure,
            debug: Some(debug),
        })
    }

    /// Waits until this manager cannot go on and says why: its raft member stopped on its own (a
    /// storage error: disk full, read-only or corrupt state) or one of its servers or tasks
    /// ended. Never returns once [`Manager::stop`] began. Whoever runs the manager should end
    /// the process: a manager with a dead raft or server must not keep serving half-dead.
    pub fn failed(&self) -> impl Future<Output = ManagerFailure> + Send + 'static {
        let mut failure = self.failure.clone();
        async move {
            let seen = failure
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|f| f.clone());
            match seen {
                Some(f) => f,
                // The watchdog ended without a failure: the manager was stopped.
                None => std::future::pending().await,
            }
        }
    }

    /// The replicated store.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// This member's raft ID.
    pub fn raft_id(&self) -> u64 {
        self.raft.raft_id()
    }

    /// This manager's raft member (membership and leadership as it sees them).
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// Graceful stop: servers drain, raft shuts down, the control socket is removed.
    pub async fn stop(mut self) {
        info!("Stopping manager");
        self.debug = None;
        self.shutdown.cancel();
        // The watchdog drains the servers within their grace.
        if let Err(e) = self.watchdog.await {
            tracing::error!("the manager's watchdog failed: {e}");
        }
        self.raft.shutdown().await;
        let _ = std::fs::remove_file(&self.control_socket);
        info!("Manager shut down");
    }
}
