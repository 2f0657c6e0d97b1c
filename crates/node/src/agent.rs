//! The node's agent: every node (managers too) runs one. A worker's talks to a manager's
//! dispatcher over mutual TLS with this node's current certificate; a manager's talks to its own
//! manager over the control socket (as SwarmKit's does over its local connection), so it does
//! not depend on the address the remote API listens on. What the session says about this node is
//! acted on here: a role change or a ROTATE request triggers a certificate renewal, a new root CA
//! is installed, and the managers it lists are remembered in `state.json` for the next start and
//! in [`KnownManagers`] for renewals and for joining raft after a promotion.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ca::SecurityConfig;
use manager::tasks::TaskSet;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::NodeConfig;
use crate::renewal::needs_renewal;
use crate::state::{ManagerPeer, StateDir};

/// Longest a graceful stop waits for the agent to shut its tasks down.
pub(crate) const LEAVE_LIMIT: Duration = Duration::from_secs(30);

/// The managers this node knows right now: its own (while it runs one) and the ones the last
/// session listed (at first: the join address, or those `state.json` remembers).
#[derive(Debug, Default)]
pub(crate) struct KnownManagers {
    local: RwLock<Option<String>>,
    remote: RwLock<Vec<String>>,
}

impl KnownManagers {
    /// Starting from `remote`.
    pub fn new(remote: Vec<String>) -> Arc<KnownManagers> {
        Arc::new(KnownManagers {
            local: RwLock::new(None),
            remote: RwLock::new(remote),
        })
    }

    /// This node's own manager (how this node reaches it), or none once it stopped.
    pub fn set_local(&self, addr: Option<String>) {
        *self.local.write().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Replaces the other managers (a session's list).
    pub fn set_remote(&self, addrs: Vec<String>) {
        *self.remote.write().unwrap_or_else(PoisonError::into_inner) = addrs;
    }

    /// The managers other than this node's own, in the order last given.
    pub fn remote(&self) -> Vec<String> {
        let local = self.local();
        let remote = self.remote.read().unwrap_or_else(PoisonError::into_inner);
        remote
            .iter()
            .filter(|a| Some(*a) != local.as_ref())
            .cloned()
            .collect()
    }

    /// How this node reaches its own manager's remote API, while it runs one.
    pub fn local(&self) -> Option<String> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its own manager first, then the others.
    pub fn all(&self) -> Vec<String> {
        let mut out: Vec<String> = self.local().into_iter().collect();
        for a in self.remote() {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// What the agent of this node needs.
pub(crate) struct AgentSetup {
    /// This node's identity, for the connections and for what the session tells.
    pub security: Arc<SecurityConfig>,
    /// The state directory (worker database, `state.json`).
    pub state: StateDir,
    /// Managers to try first.
    pub managers: Vec<String>,
    /// Renews this node's certificate when the session asks for it (a manager also follows its
    /// own Node object in the local store).
    pub renew: Arc<Notify>,
    /// Updated with the managers each session names (which also replace `state.json`).
    pub known: Arc<KnownManagers>,
}

/// Starts the agent in `tasks`, with the executor `config` chooses; it stops (shutting down and
/// removing its tasks, as a graceful stop does) when `shutdown` fires. It never ends before:
/// it reconnects to a manager until then, so its ending earlier is a failure of the node.
pub(crate) async fn spawn(
    config: &NodeConfig,
    setup: AgentSetup,
    tasks: &mut TaskSet,
    shutdown: CancellationToken,
) -> Result<(), crate::NodeError> {
    let hostname = (!config.hostname.is_empty()).then(|| config.hostname.clone());
    let (executor, plane) = crate::executor::build(
        config.executor,
        &config.engine_addr,
        setup.state.root(),
        hostname,
        config.data_path_ip(),
        (config.wireguard_port, config.encrypted_vxlan_port),
        &config.generic_resources,
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
    let local_known = setup.known.clone();
    let socket = config.listen_control_api.clone();
    let local: agent::LocalManager = Arc::new(move || {
        local_known.local()?;
        ca::control_channel(&socket)
            .map_err(|e| warn!("cannot open the control socket for the agent: {e}"))
            .ok()
    });
    let security = setup.security.clone();
    let state = setup.state.clone();
    let renew = setup.renew.clone();
    let known = setup.known.clone();
    let observer: agent::SessionObserver = Arc::new(move |msg: &api::SessionMessage| {
        if let Some(node) = &msg.node
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
        let peers: Vec<ManagerPeer> = msg
            .managers
            .iter()
            .filter_map(|w| w.peer.as_ref())
            .filter(|p| !p.addr.is_empty())
            .map(|p| ManagerPeer {
                node_id: p.node_id.clone(),
                addr: p.addr.clone(),
            })
            .collect();
        if !peers.is_empty() {
            known.set_remote(peers.iter().map(|p| p.addr.clone()).collect());
            if state.load_managers().ok().as_ref() != Some(&peers)
                && let Err(e) = state.save_managers(&peers)
            {
                warn!("failed to remember the managers: {e}");
            }
        }
    });
    let db_failed = db.clone();
    let agent_config = agent::AgentConfig {
        managers: setup.managers,
        connect,
        local,
        executor,
        db,
        observer,
    };
    // A task database that cannot be written (a full or read-only disk) ends the agent: it
    // stores every status before reporting it, and a node that cannot is the node's failure.
    tasks.spawn("agent", async move {
        let res = tokio::select! {
            res = agent::run(agent_config, shutdown, true) => res.map_err(|e| e.to_string()),
            e = db_failed.failed() => Err(e.to_string()),
        };
        // The agent has removed its tasks: the data plane removes what is left of it.
        if let Some(plane) = plane
            && let Err(e) = plane.stop().await
        {
            warn!("removing the overlay data plane: {e}");
        }
        res
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_managers_put_the_own_manager_first_and_follow_sessions() {
        let known = KnownManagers::new(vec!["10.0.0.1:4242".into()]);
        assert_eq!(known.all(), vec!["10.0.0.1:4242".to_string()]);
        known.set_local(Some("127.0.0.1:4242".into()));
        known.set_remote(vec![
            "10.0.0.2:4242".into(),
            "127.0.0.1:4242".into(),
            "10.0.0.3:4242".into(),
        ]);
        assert_eq!(
            known.remote(),
            vec!["10.0.0.2:4242".to_string(), "10.0.0.3:4242".to_string()]
        );
        assert_eq!(
            known.all(),
            vec![
                "127.0.0.1:4242".to_string(),
                "10.0.0.2:4242".to_string(),
                "10.0.0.3:4242".to_string()
            ]
        );
        known.set_local(None);
        assert_eq!(known.all().len(), 3);
    }
}
