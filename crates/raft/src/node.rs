//! `RaftNode`: one manager's raft member. It opens the raft database, builds the openraft
//! instance over `LogStore`, `StateMachine` and the network seam, forms a single-voter cluster on
//! first start, and implements `store::Proposer` so store writes go through the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, Fatal};
use openraft::{BasicNode, Raft, ServerState};
use redb::Database;
use store::{MemoryStore, ProposeError, Proposer};
use tokio::sync::watch;

use crate::db::{self, LogBounds};
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::read::{Confirmation, Confirmations, confirm_round};
use crate::state_machine::StateMachine;
use crate::transport::TransportService;
use crate::types::{RaftMetrics, RaftRequest, RaftServerMetrics, TypeConfig};
use crate::{RaftConfig, RaftError};

/// How long `shutdown` waits for openraft's workers to let go of the database file.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// One member of the raft cluster, as the membership configuration lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Raft ID.
    pub raft_id: u64,
    /// Advertised remote API address.
    pub addr: String,
    /// A voter, not (yet) a learner.
    pub voter: bool,
}

/// A running raft member of this manager.
pub struct RaftNode {
    raft: Raft<TypeConfig>,
    id: u64,
    /// Held for `log_bounds`; taken by `shutdown` so the file can be reopened.
    db: Mutex<Option<Arc<Database>>>,
    /// Sees when the last handle (openraft's workers hold some) is gone.
    db_weak: Weak<Database>,
    /// The database file, named when raft stops on a storage error.
    db_path: PathBuf,
    /// Set by `shutdown`: the core stopping afterwards is no failure.
    stopping: AtomicBool,
    /// Peers' last answers (see `membership`).
    pub(crate) contacts: crate::membership::Contacts,
    /// Raft IDs removed from the cluster (see `membership`).
    pub(crate) removed: crate::membership::Removed,
    /// A peer silent for longer is unreachable.
    pub(crate) election_timeout: Duration,
    /// When this member campaigns (see `election`); its transport restarts it.
    election_clock: crate::election::Clock,
    /// Serializes membership changes made through this member.
    pub(crate) membership_change: tokio::sync::Mutex<()>,
    /// Set if the compaction task (snapshots and log purges) panicked: raft would go on
    /// without ever compacting its log, so that is a failure of the member like the core's.
    compaction_failure: watch::Receiver<Option<String>>,
    /// Leadership confirmations shared by concurrent reads (see `read`).
    pub(crate) reads: Arc<Confirmations<Confirmation>>,
    /// The data keys of the raft database (see `encryption`).
    encryption: crate::encryption::Encryption,
}

/// Watches a spawned task: the receiver holds a message once it panicked (a task that returns
/// or is cancelled leaves it empty).
fn watch_for_panic(
    name: &'static str,
    task: tokio::task::JoinHandle<()>,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            let payload = e.into_panic();
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            tx.send_replace(Some(format!("the raft {name} task panicked: {why}")));
        }
    });
    rx
}

impl RaftNode {
    /// Starts this member over `cfg.dir` and waits for it to be ready: [`RaftNode::open_member`]
    /// then [`RaftNode::become_ready`]. A manager serves the raft transport between the two
    /// instead (peers must reach a restarted member before it can learn the leader).
    pub async fn start(
        cfg: RaftConfig,
        store: MemoryStore,
        advertise_addr: String,
        network: NetworkFactory,
    ) -> Result<Arc<RaftNode>, RaftError> {
        let node = Self::open_member(&cfg, store, advertise_addr, network).await?;
        if let Err(e) = node.become_ready(&cfg).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// Opens this member without waiting for a leader: opens or creates `raft.redb`, reads or
    /// draws this member's raft ID, restores the latest snapshot into `store`, initializes a
    /// single-voter cluster on the first start only and installs itself as `store`'s proposer
    /// (proposals fail with no leader until one is elected).
    pub async fn open_member(
        cfg: &RaftConfig,
        store: MemoryStore,
        advertise_addr: String,
        network: NetworkFactory,
    ) -> Result<Arc<RaftNode>, RaftError> {
        let force = cfg.force_new_cluster.then_some(advertise_addr.as_str());
        let node = Self::open(cfg, &store, network, force).await?;
        if let Err(e) = node.initialize_if_new(advertise_addr).await {
            node.shutdown().await;
            return Err(e);
        }
        store.set_proposer(node.clone());
        Ok(node)
    }

    /// Starts a member that is in no cluster yet (a manager joining one): raft runs
    /// uninitialized until the leader adds it (see [`RaftNode::add_member`]) and replicates the
    /// log and snapshot into `store`. Wait for that with [`RaftNode::wait_joined`].
    pub async fn start_joining(
        cfg: RaftConfig,
        store: MemoryStore,
        network: NetworkFactory,
    ) -> Result<Arc<RaftNode>, RaftError> {
        if cfg.force_new_cluster {
            return Err(RaftError::ForceNewCluster(
                "a manager joining a cluster has no raft state to recover".into(),
            ));
        }
        let node = Self::open(&cfg, &store, network, None).await?;
        store.set_proposer(node.clone());
        Ok(node)
    }

    async fn open(
        cfg: &RaftConfig,
        store: &MemoryStore,
        network: NetworkFactory,
        force_new_cluster_addr: Option<&str>,
    ) -> Result<Arc<RaftNode>, RaftError> {
        cfg.validate()?;
        let openraft_cfg = Arc::new(cfg.to_openraft()?);
        let dir = cfg.dir.clone();
        let path = dir.join(db::DB_FILE);
        let db = tokio::task::spawn_blocking(move || db::open(&dir))
            .await
            .map_err(|e| RaftError::Raft(format!("opening raft database: {e}")))??;
        let encryption =
            crate::encryption::Encryption::load(&cfg.keys).map_err(|e| RaftError::Corrupt {
                path: path.clone(),
                what: format!("raft data encryption keys: {e}"),
            })?;
        let ring = encryption.keyring();
        let db = {
            let dir = cfg.dir.clone();
            let ring = ring.clone();
            tokio::task::spawn_blocking(move || crate::encryption::prepare(&dir, db, &ring))
                .await
                .map_err(|e| RaftError::Raft(format!("opening raft database: {e}")))??
        };
        let id = db::raft_id(&db, &path)?;
        tracing::info!(raft.id = %format!("{id:x}"), election_timeout = ?cfg.election_timeout(),
            heartbeat_interval = ?cfg.heartbeat_interval(), "starting raft member");
        if let Some(addr) = force_new_cluster_addr {
            let forced = crate::force::rewrite(&db, &path, id, addr, &ring)?;
            tracing::warn!(raft.id = %format!("{id:x}"), raft.index = forced.index, term = forced.term,
                removed = ?forced.removed.iter().map(|r| format!("{r:x}")).collect::<Vec<_>>(),
                "forcing a new cluster: this manager is now the only raft member");
        }
        let log_store = LogStore::new(db.clone(), ring.clone());
        let sm = StateMachine::open(db.clone(), store.clone(), ring.clone())
            .map_err(RaftError::storage)?;
        let removed = sm.removed();
        if removed.contains(id) {
            return Err(RaftError::Raft(format!(
                "{}: raft member {id:x} was removed from the cluster and cannot rejoin with its old raft ID; remove {} to join again",
                crate::membership::ERR_MEMBER_REMOVED,
                cfg.dir.display()
            )));
        }
        let contacts = network.contacts();
        let clock = network.clock();
        let lease = Duration::from_millis(openraft_cfg.election_timeout_max);
        let raft = Raft::new(id, openraft_cfg, network, log_store, sm)
            .await
            .map_err(|e| RaftError::Raft(e.to_string()))?;
        let compaction = tokio::spawn(crate::compaction::run(
            raft.clone(),
            store.clone(),
            cfg.clone(),
        ));
        let compaction_failure = watch_for_panic("compaction", compaction);
        let election_clock = clock;
        election_clock.configure(crate::election::Timing::new(
            cfg.election_timeout(),
            cfg.heartbeat_interval(),
            lease,
        ));
        tokio::spawn(crate::election::run(
            raft.clone(),
            id,
            election_clock.clone(),
        ));
        let reads = {
            let raft = raft.clone();
            Confirmations::new(move || confirm_round(raft.clone()))
        };
        let node = Arc::new(RaftNode {
            reads,
            raft,
            id,
            db_weak: Arc::downgrade(&db),
            db: Mutex::new(Some(db)),
            db_path: path,
            stopping: AtomicBool::new(false),
            contacts,
            removed,
            election_timeout: cfg.election_timeout(),
            election_clock,
            membership_change: tokio::sync::Mutex::new(()),
            compaction_failure,
            encryption,
        });
        if node.encryption.rotation_due() {
            tracing::info!("resuming the rotation of the raft data key");
            node.spawn_rotation();
        }
        Ok(node)
    }

    /// Rotates the raft database's data key in the background (see `encryption`): writes go on
    /// meanwhile, and a rotation cut short by a stop resumes when the member opens again.
    pub fn rotate_data_key(&self) -> tokio::task::JoinHandle<Result<(), String>> {
        self.spawn_rotation()
    }

    fn spawn_rotation(&self) -> tokio::task::JoinHandle<Result<(), String>> {
        let (encryption, db) = (self.encryption.clone(), self.db_weak.clone());
        tokio::spawn(async move {
            let result = encryption.rotate(&db).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "raft data key rotation stopped; it resumes at the next start");
            }
            result
        })
    }

    async fn initialize_if_new(&self, advertise_addr: String) -> Result<(), RaftError> {
        let fatal = |e: Fatal<u64>| RaftError::Raft(e.to_string());
        if !self.raft.is_initialized().await.map_err(fatal)? {
            tracing::info!("initializing a new single-manager raft cluster");
            let members = BTreeMap::from([(self.id, BasicNode::new(advertise_addr))]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| RaftError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Waits (bounded) until this member leads with its log applied or follows a leader. A
    /// member restored as leader of its old term (openraft resumes a committed vote as
    /// leadership) that cannot commit its tail keeps waiting until it hears the newer leader.
    /// A lone voter that elects no leader in time is an error; a member of a larger cluster
    /// that finds none (no quorum yet, say every manager restarting) logs it and goes on: it
    /// serves and follows whichever leader is elected later.
    pub async fn become_ready(&self, cfg: &RaftConfig) -> Result<(), RaftError> {
        let bound = Duration::from_secs(10).max(cfg.election_timeout() * 6);
        let id = self.id;
        let waited = self
            .raft
            .wait(Some(bound))
            .metrics(
                |m| match m.current_leader {
                    Some(l) if l == id => {
                        m.state == ServerState::Leader
                            && m.last_applied.map(|l| l.index) >= m.last_log_index
                    }
                    Some(_) => m.state != ServerState::Leader,
                    None => false,
                },
                "a member leads and this member applied its log if it is the one",
            )
            .await;
        match waited {
            Ok(m) if m.current_leader == Some(id) => {
                tracing::info!(raft.id = %format!("{id:x}"), term = m.current_term, "raft member is leader");
            }
            Ok(m) => {
                tracing::info!(raft.id = %format!("{id:x}"), term = m.current_term, "raft member follows");
            }
            Err(e) => {
                let voters = self.voter_ids();
                if voters.len() == 1 && voters.contains(&id) {
                    return Err(RaftError::Timeout(e.to_string()));
                }
                tracing::warn!(raft.id = %format!("{id:x}"), voters = voters.len(),
                    "no raft leader after {bound:?}: serving and following whichever leader a quorum elects");
            }
        }
        Ok(())
    }

    /// Adds member `id` at `addr` (leader only): as a learner first, waiting (bounded by
    /// `bound`) until it has caught up with the log, then as a voter.
    pub async fn add_member(
        &self,
        id: u64,
        addr: String,
        bound: Duration,
    ) -> Result<(), RaftError> {
        let _serial = self.membership_change.lock().await;
        if self.removed.contains(id) {
            return Err(RaftError::Raft(format!(
                "{}: raft ID {id:x}",
                crate::membership::ERR_ID_REMOVED
            )));
        }
        if self.voter_ids().contains(&id) {
            return Ok(());
        }
        let timeout = |what: &str| RaftError::Timeout(format!("{what} of member {id:x}"));
        tracing::info!(raft.id = %format!("{id:x}"), %addr, "adding raft member as learner");
        tokio::time::timeout(bound, self.raft.add_learner(id, BasicNode::new(addr), true))
            .await
            .map_err(|_| timeout("catching up"))?
            .map_err(|e| RaftError::Raft(e.to_string()))?;
        let mut voters = self.voter_ids();
        voters.insert(id);
        tracing::info!(raft.id = %format!("{id:x}"), "promoting raft member to voter");
        tokio::time::timeout(bound, self.raft.change_membership(voters, false))
            .await
            .map_err(|_| timeout("promotion"))?
            .map_err(|e| RaftError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Waits (bounded) until this member is a voter of a cluster with a known leader and has
    /// applied the log up to what it has received.
    pub async fn wait_joined(&self, bound: Duration) -> Result<(), RaftError> {
        let id = self.id;
        let m = self
            .raft
            .wait(Some(bound))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.membership_config
                            .membership()
                            .get_joint_config()
                            .iter()
                            .any(|c| c.contains(&id))
                },
                "this member is a voter with a leader",
            )
            .await
            .map_err(|e| RaftError::Timeout(e.to_string()))?;
        if let Some(committed) = m.last_log_index {
            self.raft
                .wait(Some(bound))
                .applied_index_at_least(Some(committed), "log applied")
                .await
                .map_err(|e| RaftError::Timeout(e.to_string()))?;
        }
        Ok(())
    }

    /// The raft IDs of the voters of the current membership configuration.
    pub fn voter_ids(&self) -> std::collections::BTreeSet<u64> {
        let m = self.server_metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// The members of the current membership configuration, by raft ID.
    pub fn members(&self) -> Vec<Member> {
        let m = self.server_metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                raft_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// This member's raft ID (random, persisted in the raft database).
    pub fn raft_id(&self) -> u64 {
        self.id
    }

    /// Whether this member currently leads the cluster.
    pub fn is_leader(&self) -> bool {
        let m = self.server_metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id) && !self.core_stopped()
    }

    /// The raft ID of the current leader, if one is known.
    pub fn leader_id(&self) -> Option<u64> {
        let leader = self.server_metrics().borrow().current_leader;
        leader.filter(|_| !self.core_stopped())
    }

    /// Whether openraft's core has stopped (shutdown, or a fatal storage error): it marks only
    /// the full metrics so, and the role's metrics keep their last values after it.
    fn core_stopped(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Shutdown
    }

    /// Raft metrics: `.borrow()` for the current values, `.changed()` to follow them
    /// (leadership changes, applied index, snapshots). They are published on every pass of the
    /// raft core, several times per entry: a task that follows only leadership or membership
    /// follows [`RaftNode::server_metrics`] instead.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The metrics of this member's role (vote, state, leader, membership), which change only
    /// when one of those does. They are published before [`RaftNode::metrics`], so a task woken
    /// by them reads them, not the others. [`RaftNode::is_leader`], [`RaftNode::leader_id`],
    /// [`RaftNode::voter_ids`] and [`RaftNode::members`] read them. Closed once the core stopped.
    pub fn server_metrics(&self) -> watch::Receiver<RaftServerMetrics> {
        self.raft.server_metrics()
    }

    /// The openraft instance, for the transport that serves peers' RPCs.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The gRPC service answering peers' raft RPCs for this member (mount it where only
    /// managers can call it).
    pub fn transport(&self) -> TransportService {
        TransportService::new(
            self.raft.clone(),
            self.removed.clone(),
            self.election_clock.clone(),
        )
    }

    /// What the raft database holds by log index (compaction state).
    pub fn log_bounds(&self) -> Result<LogBounds, RaftError> {
        let db = self
            .db
            .lock()
            .expect("raft database mutex is never poisoned")
            .clone()
            .ok_or(RaftError::Stopped)?;
        db::log_bounds(&db).map_err(RaftError::storage)
    }

    /// Why the raft core stopped on its own, if it did: openraft stops it on a storage error
    /// (disk full, read-only or corrupt raft database) and a panic ends its task. `None` while it
    /// runs and once [`RaftNode::shutdown`] was called, as a stop that was asked for is no failure.
    pub fn stopped_error(&self) -> Option<RaftError> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let rx = self.raft.metrics();
        let why = match &rx.borrow().running_state {
            Err(e) => Some(e.to_string()),
            Ok(()) => None,
        };
        // The core records why it stopped before it drops the metrics sender; a panic drops the
        // sender without a word.
        let why = why.or_else(|| {
            rx.has_changed()
                .is_err()
                .then(|| "the raft core task ended without a result (panicked)".to_string())
        });
        let why = why.or_else(|| self.compaction_failure.borrow().clone());
        why.map(|why| RaftError::Fatal {
            path: self.db_path.clone(),
            why,
        })
    }

    /// Waits until the raft core stops on its own and says why (see
    /// [`RaftNode::stopped_error`]); never returns once [`RaftNode::shutdown`] was called. A
    /// manager whose raft stopped cannot serve: its process should end.
    pub async fn failed(&self) -> RaftError {
        // Only their closing matters here: the role's metrics wake this seldom.
        let mut metrics = self.server_metrics();
        let mut compaction = self.compaction_failure.clone();
        let mut compaction_open = true;
        loop {
            if let Some(e) = self.stopped_error() {
                return e;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return match self.stopped_error() {
                        Some(e) => e,
                        None => std::future::pending().await,
                    };
                },
                // A compaction task that ended without panicking closes this: nothing more to
                // watch there (raft stopping is seen through the metrics).
                changed = compaction.changed(), if compaction_open => {
                    compaction_open = changed.is_ok();
                }
            }
        }
    }

    /// Stops raft and releases the database file (bounded wait). Proposals made afterwards fail.
    /// Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended abnormally");
        }
        drop(
            self.db
                .lock()
                .expect("raft database mutex is never poisoned")
                .take(),
        );
        let deadline = Instant::now() + RELEASE_WAIT;
        while self.db_weak.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!("raft workers still hold the raft database after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(raft.id = %format!("{:x}", self.id), "raft member stopped");
    }

    async fn propose_actions(&self, actions: Vec<api::StoreAction>) -> Result<u64, ProposeError> {
        use openraft::error::RaftError as E;
        let _timer = telemetry::swarm::RAFT_TRANSACTION_LATENCY.start();
        // Bounded: a leader without a quorum never commits (see `read.rs`). The entry may still
        // commit later if this member keeps leading; the caller is told it is not known to.
        let request = RaftRequest::from_actions(actions);
        // The store refuses larger writes already; this bounds anything else that proposes.
        if request.payload.len() > store::MAX_TRANSACTION_BYTES {
            return Err(ProposeError::TooLarge);
        }
        let write = self.raft.client_write(request);
        let Ok(res) = tokio::time::timeout(self.write_bound(), write).await else {
            tracing::warn!(bound = ?self.write_bound(), "proposal not committed in time");
            return Err(ProposeError::NoLeader);
        };
        match res {
            Ok(resp) => Ok(resp.data.index),
            Err(E::APIError(ClientWriteError::ForwardToLeader(f))) => Err(match f.leader_id {
                None => ProposeError::NoLeader,
                Some(_) => ProposeError::LostLeadership,
            }),
            Err(E::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Other(e.to_string()))
            }
            Err(E::Fatal(Fatal::Stopped)) => Err(ProposeError::Other(
                "raft: failed to process the request: node is stopped".to_string(),
            )),
            Err(E::Fatal(e)) => Err(ProposeError::Other(format!("raft: {e}"))),
        }
    }
}

impl Proposer for RaftNode {
    fn propose(
        &self,
        actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>> {
        Box::pin(self.propose_actions(actions))
    }
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("raft_id", &format_args!("{:x}", self.id))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watched_task_that_panics_is_reported_and_one_that_returns_is_not() {
        let mut panicked = watch_for_panic(
            "test",
            tokio::spawn(async { panic!("injected: compaction broke") }),
        );
        let why = tokio::time::timeout(Duration::from_secs(5), panicked.wait_for(Option::is_some))
            .await
            .expect("reported in time")
            .expect("the watcher sent it")
            .clone();
        assert_eq!(
            why.as_deref(),
            Some("the raft test task panicked: injected: compaction broke")
        );

        let mut returned = watch_for_panic("test", tokio::spawn(async {}));
        // The watcher closes the channel without a value once the task returned.
        let closed = tokio::time::timeout(Duration::from_secs(5), returned.changed())
            .await
            .expect("closed in time");
        assert!(closed.is_err(), "a task that returned is no failure");
        assert!(returned.borrow().is_none());
    }
}
