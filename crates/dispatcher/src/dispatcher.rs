//! [`Dispatcher`]: the shared object the gRPC service calls, and [`Dispatcher::run`], the leader
//! subsystem that activates it for one leadership term. Between terms every call is refused with
//! SwarmKit's Aborted `dispatcher is stopped`. The calls here take the caller's node ID already
//! verified (the service reads it from the client certificate), so tests can drive them directly.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use store::{By, MemoryStore, WatchFilter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::DispatcherError;
use crate::session::{StreamOf, load_assignments};
use crate::term::{HEARTBEAT_FAILURE, Term, lock, replace_if_changed};

/// Weight of a manager in the session's list, as SwarmKit's remotes.DefaultObservationWeight.
pub const DEFAULT_MANAGER_WEIGHT: i64 = 10;
/// Name of the cluster object whose settings the dispatcher follows.
const CLUSTER_NAME: &str = "default";
/// Session messages queued for one node's gRPC stream; a slow reader makes its own stream wait,
/// never the dispatcher. A message carries the node object (its description up to a request's
/// 4 MiB), so a few of them bound what a node that does not read holds here.
const STREAM_CAPACITY: usize = 4;
/// Assignments messages queued for one node's stream: each may be up to
/// `api::assignment_parts::MAX_MESSAGE_BYTES`, and the next is built only when there is room, so
/// this bounds what a node that reads slowly (or not at all) holds in the dispatcher.
const ASSIGNMENTS_CAPACITY: usize = 2;

/// A gRPC server stream of the dispatcher. Its channel carries each message boxed: tokio
/// allocates a channel's slots 32 at a time whatever its capacity, and with a `SessionMessage`
/// (the node object inline, 1.3 KiB) in each slot every session held 43 KiB of channel, most of
/// the manager's memory per connected node.
#[derive(Debug)]
pub struct DispatcherStream<T>(ReceiverStream<Box<Result<T, Status>>>);

impl<T> Stream for DispatcherStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().0)
            .poll_next(cx)
            .map(|item| item.map(|boxed| *boxed))
    }
}

/// Dispatcher settings (spec 7); the heartbeat period itself comes from the cluster object.
#[derive(Debug, Clone)]
pub struct Config {
    /// Period handed to nodes while the cluster spec sets none.
    pub default_heartbeat_period: Duration,
    /// Each handed-out period is moved randomly by up to this much either way.
    pub heartbeat_epsilon: Duration,
    /// A node goes DOWN after this many periods without a heartbeat (twice as many for nodes
    /// carried over from the previous leader).
    pub grace_multiplier: u32,
    /// More than three registrations of a node within this period are refused.
    pub rate_limit_period: Duration,
    /// After this long DOWN, a node's tasks in ASSIGNED to RUNNING become ORPHANED.
    pub node_down_period: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            default_heartbeat_period: Duration::from_secs(5),
            heartbeat_epsilon: Duration::from_millis(500),
            grace_multiplier: 3,
            rate_limit_period: Duration::from_secs(8),
            node_down_period: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Config {
    /// Refuses settings the dispatcher cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_heartbeat_period.is_zero() {
            return Err("dispatcher: heartbeat period must be positive".into());
        }
        if self.heartbeat_epsilon >= self.default_heartbeat_period {
            return Err("dispatcher: heartbeat epsilon must be below the period".into());
        }
        if self.grace_multiplier == 0 {
            return Err("dispatcher: grace multiplier must be positive".into());
        }
        Ok(())
    }
}

/// Why [`Dispatcher::run`] stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another `run` of the same dispatcher is active.
    #[error("dispatcher is already running")]
    AlreadyRunning,
    /// The store's event stream ended.
    #[error("dispatcher: store watch closed")]
    WatchClosed,
}

/// A weighted manager entry for the session's manager list.
pub fn weighted_peer(node_id: &str, addr: &str) -> api::WeightedPeer {
    api::WeightedPeer {
        peer: Some(api::Peer {
            node_id: node_id.to_string(),
            addr: addr.to_string(),
        }),
        weight: DEFAULT_MANAGER_WEIGHT,
    }
}

/// The dispatcher: cheap to clone, shared by the gRPC service and the leader subsystem.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: MemoryStore,
    config: Config,
    manager_id: String,
    managers: watch::Sender<Vec<api::WeightedPeer>>,
    /// The running term, if any.
    term: Mutex<Option<Arc<Term>>>,
}

impl Dispatcher {
    /// A stopped dispatcher over `store`; `manager_id` is this manager's node ID (recorded as
    /// `applied_by` of task status).
    pub fn new(store: MemoryStore, manager_id: String, config: Config) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                config,
                manager_id,
                managers: watch::channel(Vec::new()).0,
                term: Mutex::new(None),
            }),
        }
    }

    /// Sets the manager list sessions send; open sessions get a new message if it changed.
    pub fn set_managers(&self, managers: Vec<api::WeightedPeer>) {
        replace_if_changed(&self.inner.managers, managers);
    }

    /// Whether a term is active.
    pub fn is_running(&self) -> bool {
        self.term().is_ok()
    }

    fn term(&self) -> Result<Arc<Term>, DispatcherError> {
        lock(&self.inner.term)
            .as_ref()
            .filter(|t| !t.token.is_cancelled())
            .cloned()
            .ok_or(DispatcherError::Stopped)
    }

    /// Serves one leadership term until `shutdown` fires: marks the nodes carried over from the
    /// previous leader UNKNOWN, routes store events to the sessions, flushes status writes. When
    /// it returns, every session has been told to disconnect.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let token = shutdown.child_token();
        let filter = WatchFilter::none().nodes().tasks().clusters();
        let ((cluster, nodes), mut watcher) = self.inner.store.view_and_watch(filter, |tx| {
            (
                tx.find_clusters(By::Name(CLUSTER_NAME)).pop(),
                tx.find_nodes(By::All),
            )
        });
        let term = Arc::new(Term::new(
            self.inner.store.clone(),
            self.inner.config.clone(),
            self.inner.manager_id.clone(),
            token.clone(),
            cluster.as_ref(),
            self.inner.managers.subscribe(),
        ));
        {
            let mut slot = lock(&self.inner.term);
            if slot.as_ref().is_some_and(|t| !t.token.is_cancelled()) {
                return Err(RunError::AlreadyRunning);
            }
            info!("dispatcher starting");
            // Before any call can reach the term: a node registering now must not be
            // overwritten as UNKNOWN.
            term.mark_nodes_unknown(nodes);
            *slot = Some(term.clone());
        }
        let flusher = tokio::spawn(term.clone().flush_loop().instrument(info_span!("flusher")));
        let result = loop {
            tokio::select! {
                biased;
                () = token.cancelled() => break Ok(()),
                ev = watcher.recv() => match ev {
                    Some(ev) => term.route(&ev),
                    None => break Err(RunError::WatchClosed),
                },
            }
        };
        token.cancel();
        {
            let mut slot = lock(&self.inner.term);
            if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, &term)) {
                *slot = None;
            }
        }
        lock(&term.nodes).clear();
        if let Err(e) = flusher.await {
            warn!("dispatcher flusher failed: {e}");
        }
        info!("dispatcher stopped");
        result
    }

    /// Opens a session for `node_id` (from its certificate; `addr` is the IP it connected
    /// from): registers the node unless `req.session_id` is its current session, records it
    /// READY with the reported description, and returns the stream of session messages, the
    /// first of which carries the session ID.
    pub async fn session(
        &self,
        node_id: &str,
        addr: &str,
        req: api::SessionRequest,
    ) -> Result<DispatcherStream<api::SessionMessage>, DispatcherError> {
        let term = self.term()?;
        let resumed = lock(&term.nodes)
            .with_session(node_id, &req.session_id)
            .is_ok();
        let (session_id, handle) = if resumed {
            // The node's current session: no new registration, only a fresh READY write.
            term.mark_ready(node_id, addr, req.description).await?;
            let nodes = lock(&term.nodes);
            let rn = nodes.with_session(node_id, &req.session_id)?;
            (req.session_id.clone(), rn.handle())
        } else {
            self.register(&term, node_id, addr, req.description).await?
        };
        let sub = term.node_router.subscribe(node_id);
        let node = term.store.view(|tx| tx.get_shared::<api::Node>(node_id));
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        tx.try_send(Box::new(Ok(
            term.session_message(&session_id, node.as_deref())
        )))
        .expect("a new channel has room for the first message");
        let of = StreamOf {
            node_id: node_id.to_string(),
            session_id,
            handle,
            sub,
        };
        let span = info_span!("session", node.id = %node_id);
        tokio::spawn(term.session_stream(of, node, tx).instrument(span));
        Ok(DispatcherStream(ReceiverStream::new(rx)))
    }

    async fn register(
        &self,
        term: &Arc<Term>,
        node_id: &str,
        addr: &str,
        description: Option<api::NodeDescription>,
    ) -> Result<(String, crate::nodes::SessionHandle), DispatcherError> {
        lock(&term.nodes).check_rate_limit(
            node_id,
            term.config.rate_limit_period,
            Instant::now(),
        )?;
        if term
            .store
            .view(|tx| tx.get_shared::<api::Node>(node_id))
            .is_none()
        {
            return Err(DispatcherError::NodeNotFound);
        }
        term.mark_ready(node_id, addr, description).await?;
        let session_id = api::naming::new_id();
        let grace = term.grace(term.choose_period());
        let (handle, deadline) =
            lock(&term.nodes).add(node_id, session_id.clone(), grace, Instant::now());
        term.spawn_watchdog(
            node_id.to_string(),
            handle.clone(),
            deadline,
            HEARTBEAT_FAILURE,
        );
        info!(node.id = %node_id, "worker {node_id} was successfully registered");
        Ok((session_id, handle))
    }

    /// A heartbeat of `node_id`'s session: pushes its deadline back and returns the period to
    /// wait before the next one.
    pub fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Duration, DispatcherError> {
        let term = self.term()?;
        let period = term.choose_period();
        let nodes = lock(&term.nodes);
        let rn = nodes.with_session(node_id, session_id)?;
        rn.deadline
            .send_replace(Instant::now() + term.grace(period));
        debug!(node.id = %node_id, ?period, "heartbeat");
        Ok(period)
    }

    /// Queues task status reports of `node_id` for the next batched write. Every task must be
    /// the caller's (else nothing is queued); tasks no longer in the store are skipped.
    pub fn update_task_status(
        &self,
        node_id: &str,
        req: api::UpdateTaskStatusRequest,
    ) -> Result<(), DispatcherError> {
        let term = self.term()?;
        lock(&term.nodes).with_session(node_id, &req.session_id)?;
        let valid = term.store.view(|tx| {
            let mut valid = Vec::with_capacity(req.updates.len());
            for u in req.updates {
                let Some(status) = u.status else {
                    warn!(task.id = %u.task_id, "task report has nil status");
                    continue;
                };
                let Some(task) = tx.get_task(&u.task_id) else {
                    debug!(task.id = %u.task_id, "cannot find target task in store");
                    continue;
                };
                if task.node_id != node_id {
                    warn!(task.id = %u.task_id, node.id = %node_id, "cannot update a task not assigned this node");
                    return Err(DispatcherError::TaskNotAssigned);
                }
                valid.push((u.task_id, status));
            }
            Ok(valid)
        })?;
        term.enqueue_tasks(valid);
        Ok(())
    }

    /// The assignments stream of `node_id`'s session for an agent that applies split COMPLETE
    /// sets (ours): [`Dispatcher::assignments_for`].
    pub fn assignments(
        &self,
        node_id: &str,
        session_id: &str,
    ) -> Result<DispatcherStream<api::AssignmentsMessage>, DispatcherError> {
        self.assignments_for(node_id, session_id, true)
    }

    /// The assignments stream of `node_id`'s session: first every task of the node in state
    /// ASSIGNED or later (COMPLETE), then the changes (INCREMENTAL). A COMPLETE set is split over
    /// several messages only with `split_complete` (see `api::assignment_parts`).
    pub fn assignments_for(
        &self,
        node_id: &str,
        session_id: &str,
        split_complete: bool,
    ) -> Result<DispatcherStream<api::AssignmentsMessage>, DispatcherError> {
        let term = self.term()?;
        let handle = lock(&term.nodes)
            .with_session(node_id, session_id)?
            .handle();
        // Subscribe before reading, so no change falls between the two.
        let sub = term.task_router.subscribe(node_id);
        let set = load_assignments(&term, node_id);
        let (tx, rx) = mpsc::channel(ASSIGNMENTS_CAPACITY);
        let of = StreamOf {
            node_id: node_id.to_string(),
            session_id: session_id.to_string(),
            handle,
            sub,
        };
        let span = info_span!("assignments", node.id = %node_id);
        tokio::spawn(
            term.assignments_stream(of, set, split_complete, tx)
                .instrument(span),
        );
        Ok(DispatcherStream(ReceiverStream::new(rx)))
    }

    /// Number of nodes with a registration in the current term (0 when stopped).
    pub fn registered_nodes(&self) -> usize {
        self.term().map_or(0, |t| lock(&t.nodes).len())
    }
}
