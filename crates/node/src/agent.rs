//! The node's agent: every node (managers too) runs one, talking to a manager's dispatcher over
//! mutual TLS with this node's current certificate. What the session says about this node is
//! acted on here: a role change or a ROTATE request triggers a certificate renewal, a new root CA
//! is installed, and the managers it lists are remembered in `state.json` for the next start.

use std::sync::Arc;
use std::time::Duration;

use ca::SecurityConfig;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::NodeConfig;
use crate::renewal::needs_renewal;
use crate::state::{ManagerPeer, StateDir};

/// Longest a graceful stop waits for the agent to shut its tasks down.
pub(crate) const LEAVE_LIMIT: Duration = Duration::from_secs(30);

/// What the agent of this node needs.
pub(crate) struct AgentSetup {
    /// This node's identity, for the connections and for what the session tells.
    pub security: Arc<SecurityConfig>,
    /// The state directory (worker database, `state.json`).
    pub state: StateDir,
    /// Managers to try first.
    pub managers: Vec<String>,
    /// Renews this node's certificate when the session asks for it (workers; a manager follows
    /// its own Node object in the local store instead).
    pub renew: Option<Arc<Notify>>,
    /// Whether the managers a session names replace `state.json` (workers; a manager records
    /// itself).
    pub remember_managers: bool,
}

/// Starts the agent in `tasks`, with the executor `config` chooses; it stops (shutting down and
/// removing its tasks, as a graceful stop does) when `shutdown` fires.
pub(crate) async fn spawn(
    config: &NodeConfig,
    setup: AgentSetup,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> Result<(), crate::NodeError> {
    let hostname = (!config.hostname.is_empty()).then(|| config.hostname.clone());
    let executor = crate::executor::build(
        config.executor,
        &config.engine_addr,
        setup.state.root(),
        hostname,
    )
    .await?;
    let db = agent::TaskDb::open(&setup.state.worker_dir())
        .map_err(|e| crate::NodeError::Config(e.to_string()))?;
    let connect_security = setup.security.clone();
    let connect: agent::Connector = Arc::new(move |addr: &str| {
        let cfg = connect_security
            .client_config()
            .map_err(|e| e.to_string())?;
        ca::tls_channel(addr, cfg, ca::MANAGER_ROLE).map_err(|e| e.to_string())
    });
    let security = setup.security.clone();
    let state = setup.state.clone();
    let renew = setup.renew.clone();
    let remember = setup.remember_managers;
    let observer: agent::SessionObserver = Arc::new(move |msg: &api::SessionMessage| {
        if let (Some(node), Some(renew)) = (&msg.node, &renew)
            && needs_renewal(node, security.info().role)
        {
            renew.notify_one();
        }
        if !msg.root_ca.is_empty() && msg.root_ca != security.material().root_pem {
            match security.install_root(msg.root_ca.clone()) {
                Ok(()) => info!("installed the root CA the manager sent"),
                Err(e) => warn!("failed to install the root CA the manager sent: {e}"),
            }
        }
        if remember && !msg.managers.is_empty() {
            let peers: Vec<ManagerPeer> = msg
                .managers
                .iter()
                .filter_map(|w| w.peer.as_ref())
                .map(|p| ManagerPeer {
                    node_id: p.node_id.clone(),
                    addr: p.addr.clone(),
                })
                .collect();
            if let Err(e) = state.save_managers(&peers) {
                warn!("failed to remember the managers: {e}");
            }
        }
    });
    let agent_config = agent::AgentConfig {
        managers: setup.managers,
        connect,
        executor,
        db,
        observer,
    };
    tasks.spawn(async move {
        if let Err(e) = agent::run(agent_config, shutdown, true).await {
            warn!("agent stopped: {e}");
        }
    });
    Ok(())
}
