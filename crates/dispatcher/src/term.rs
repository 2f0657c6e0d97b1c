//! One leadership term of the dispatcher: the registered nodes and their heartbeat watchdogs, the
//! batched writes of node and task status (SwarmKit's processUpdates batches on a 100 ms timer;
//! ours writes at once what was queued while the previous flush was writing, by
//! `MemoryStore::batch`, in transactions of at most 200 objects or 3/4 of SwarmKit's transaction
//! size, so a lone report waits for no timer and a burst is still written in large batches), and the
//! routing of store events to the streams of each node. One store watcher feeds every session, so
//! a burst of events costs one pass however many nodes are connected; each stream gets its events
//! through a bounded channel and, if it falls behind, re-reads the store instead of stalling the
//! router. The streams themselves are in `session.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use api::node_status::State as NodeState;
use store::{Event, EventKind, MemoryStore};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Config;
use crate::error::DispatcherError;
use crate::nodes::{NodeTable, SessionHandle};

/// Events queued for one stream before it is told to re-read the store instead.
const SUB_CAPACITY: usize = 512;

/// Message of a node whose session's heartbeats stopped.
pub(crate) const HEARTBEAT_FAILURE: &str = "heartbeat failure";
/// Message of a node carried over from the previous leader that never registered again.
pub(crate) const UNKNOWN_HEARTBEAT_FAILURE: &str =
    r#"heartbeat failure for node in "unknown" state"#;
/// Message of every node when a new leader's dispatcher starts.
const UNKNOWN_MESSAGE: &str =
    r#"Node moved to "unknown" state due to leadership change in cluster"#;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks half-way through a change.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A status (and maybe description) to write to a node.
#[derive(Debug)]
struct NodeUpdate {
    status: api::NodeStatus,
    description: Option<api::NodeDescription>,
}

/// Writes waiting for the next flush; a later write of the same object replaces an earlier one.
#[derive(Debug, Default)]
struct Pending {
    tasks: HashMap<String, api::TaskStatus>,
    nodes: HashMap<String, NodeUpdate>,
    /// Number of batches taken so far; the next flush takes batch `taken + 1`.
    taken: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.tasks.len() + self.nodes.len()
    }
}

/// The streams of one kind of object, by node ID.
#[derive(Debug, Default)]
pub(crate) struct Router {
    subs: Mutex<HashMap<String, Vec<Sub>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Sub {
    id: u64,
    tx: mpsc::Sender<Event>,
    overflow: Arc<AtomicBool>,
}

/// One stream's share of a [`Router`]; dropping it unsubscribes.
#[derive(Debug)]
pub(crate) struct Subscription {
    router: Arc<Router>,
    node_id: String,
    id: u64,
    pub rx: mpsc::Receiver<Event>,
    overflow: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether events were dropped and not yet acknowledged with [`Subscription::take_overflow`].
    pub fn overflow_pending(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// Whether events were dropped since the last call (the stream must re-read the store).
    pub fn take_overflow(&mut self) -> bool {
        if !self.overflow.swap(false, Ordering::AcqRel) {
            return false;
        }
        while self.rx.try_recv().is_ok() {}
        true
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = lock(&self.router.subs);
        if let Some(list) = subs.get_mut(&self.node_id) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                subs.remove(&self.node_id);
            }
        }
    }
}

impl Router {
    pub fn subscribe(self: &Arc<Self>, node_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(SUB_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflow = Arc::new(AtomicBool::new(false));
        lock(&self.subs)
            .entry(node_id.to_string())
            .or_default()
            .push(Sub {
                id,
                tx,
                overflow: overflow.clone(),
            });
        Subscription {
            router: self.clone(),
            node_id: node_id.to_string(),
            id,
            rx,
            overflow,
        }
    }

    /// Hands `event` to the streams of `node_id` without waiting for any of them.
    fn route(&self, node_id: &str, event: &Event) {
        let subs = lock(&self.subs);
        for sub in subs.get(node_id).into_iter().flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(event.clone()) {
                sub.overflow.store(true, Ordering::Release);
            }
        }
    }
}

/// The dispatcher's state for one leadership term.
pub(crate) struct Term {
    pub store: MemoryStore,
    pub config: Config,
    /// This manager's node ID, recorded as `applied_by` of task status.
    manager_id: String,
    /// Cancelled when the term ends.
    pub token: CancellationToken,
    pub nodes: Mutex<NodeTable>,
    pub node_router: Arc<Router>,
    pub task_router: Arc<Router>,
    /// The cluster's heartbeat period.
    period: Mutex<Duration>,
    /// The cluster's root CA certificate (PEM), as sessions send it.
    pub root_ca: watch::Sender<Vec<u8>>,
    /// The cluster's network bootstrap keys, as sessions send them.
    pub network_keys: watch::Sender<Vec<api::EncryptionKey>>,
    /// The manager list sessions send.
    pub managers: watch::Receiver<Vec<api::WeightedPeer>>,
    pending: Mutex<Pending>,
    /// Nodes that are DOWN, each with the token that cancels moving its tasks to ORPHANED.
    down: Mutex<HashMap<String, CancellationToken>>,
    /// The last batch written (see [`Pending::taken`]).
    flushed: watch::Sender<u64>,
    /// Something was queued: the flusher writes it (it sleeps while there is nothing).
    queued: Notify,
}

/// Replaces the value of `tx` if it differs, waking its receivers only then.
pub(crate) fn replace_if_changed<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|cur| {
        let changed = *cur != value;
        if changed {
            *cur = value;
        }
        changed
    });
}

fn timestamp_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

impl Term {
    pub fn new(
        store: MemoryStore,
        config: Config,
        manager_id: String,
        token: CancellationToken,
        cluster: Option<&api::Cluster>,
        managers: watch::Receiver<Vec<api::WeightedPeer>>,
    ) -> Term {
        let period = config.default_heartbeat_period;
        let term = Term {
            store,
            config,
            manager_id,
            token,
            nodes: Mutex::default(),
            node_router: Arc::default(),
            task_router: Arc::default(),
            period: Mutex::new(period),
            root_ca: watch::channel(Vec::new()).0,
            network_keys: watch::channel(Vec::new()).0,
            managers,
            pending: Mutex::default(),
            down: Mutex::default(),
            flushed: watch::channel(0).0,
            queued: Notify::new(),
        };
        if let Some(c) = cluster {
            term.cluster_changed(c);
        }
        term
    }

    /// A heartbeat period to hand out: the cluster's, moved by up to the epsilon either way so
    /// that nodes do not beat in step (SwarmKit's periodChooser).
    pub fn choose_period(&self) -> Duration {
        let base = *lock(&self.period);
        let eps = self.config.heartbeat_epsilon.as_nanos() as i64;
        if eps <= 0 {
            return base;
        }
        let adj: i64 = rand::random_range(-eps..eps);
        if adj >= 0 {
            base + Duration::from_nanos(adj as u64)
        } else {
            base.saturating_sub(Duration::from_nanos(adj.unsigned_abs()))
        }
    }

    /// Grace of a registered node: the chosen period times the multiplier.
    pub fn grace(&self, period: Duration) -> Duration {
        period * self.config.grace_multiplier
    }

    /// Takes the cluster's heartbeat period, root CA and network bootstrap keys.
    fn cluster_changed(&self, cluster: &api::Cluster) {
        let period = cluster
            .spec
            .as_ref()
            .and_then(|s| s.dispatcher.as_ref())
            .and_then(|d| d.heartbeat_period)
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero());
        if let Some(period) = period {
            let mut current = lock(&self.period);
            if *current != period {
                info!(?period, "dispatcher heartbeat period changed");
                *current = period;
            }
        }
        let root = cluster
            .root_ca
            .as_ref()
            .map(|r| r.ca_cert.clone())
            .unwrap_or_default();
        replace_if_changed(&self.root_ca, root);
        replace_if_changed(&self.network_keys, cluster.network_bootstrap_keys.clone());
    }

    /// Routes one store event: cluster changes are taken here, node and task changes go to the
    /// streams of the node they belong to.
    pub fn route(&self, event: &Event) {
        if let Some(cluster) = event.object_as::<api::Cluster>() {
            if !matches!(
                event,
                Event::Object {
                    kind: EventKind::Remove,
                    ..
                }
            ) {
                self.cluster_changed(cluster);
            }
        } else if let Some(node) = event.object_as::<api::Node>() {
            self.node_router.route(&node.id, event);
        } else if let Some(task) = event.object_as::<api::Task>()
            && !task.node_id.is_empty()
        {
            self.task_router.route(&task.node_id, event);
        }
    }

    /// Every node that is not DOWN becomes UNKNOWN and gets the longer grace to register with
    /// this dispatcher before it goes DOWN, so a leader change downs no healthy node
    /// (dispatcher.go markNodesUnknown).
    pub fn mark_nodes_unknown(self: &Arc<Self>, nodes: Vec<api::Node>) {
        let now = Instant::now();
        for node in nodes {
            let state = node.status.as_ref().map_or(0, |s| s.state);
            if state == NodeState::Down as i32 {
                self.track_down(&node.id);
                continue;
            }
            let grace = self.grace(self.choose_period()) * 2;
            let (handle, deadline) = lock(&self.nodes).add(&node.id, String::new(), grace, now);
            self.spawn_watchdog(node.id.clone(), handle, deadline, UNKNOWN_HEARTBEAT_FAILURE);
            self.enqueue_node(
                &node.id,
                api::NodeStatus {
                    state: NodeState::Unknown as i32,
                    message: UNKNOWN_MESSAGE.to_string(),
                    addr: String::new(),
                },
                None,
            );
        }
    }

    /// Watches one registration's deadline; when it passes without a beat the node goes DOWN
    /// with `message` and its session ends.
    pub fn spawn_watchdog(
        self: &Arc<Self>,
        node_id: String,
        handle: SessionHandle,
        mut deadline: watch::Receiver<Instant>,
        message: &'static str,
    ) {
        let term = self.clone();
        tokio::spawn(async move {
            loop {
                let at = *deadline.borrow_and_update();
                tokio::select! {
                    () = term.token.cancelled() => return,
                    () = handle.ended.cancelled() => return,
                    changed = deadline.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(at) => {
                        if *deadline.borrow() <= Instant::now() {
                            break;
                        }
                    }
                }
            }
            if lock(&term.nodes).remove_if(&node_id, handle.generation) {
                info!(node.id = %node_id, "{message}: node is down");
                term.track_down(&node_id);
                term.enqueue_node(
                    &node_id,
                    api::NodeStatus {
                        state: NodeState::Down as i32,
                        message: message.to_string(),
                        addr: String::new(),
                    },
                    None,
                );
            }
        });
    }

    /// Queues a node status write, keeping a queued description unless `description` replaces
    /// it (a node marked ready then at once not ready keeps what it reported); returns the batch
    /// that will carry it.
    fn enqueue_node(
        &self,
        node_id: &str,
        status: api::NodeStatus,
        description: Option<api::NodeDescription>,
    ) -> u64 {
        let mut pending = lock(&self.pending);
        let description = description.or_else(|| {
            pending
                .nodes
                .remove(node_id)
                .and_then(|old| old.description)
        });
        pending.nodes.insert(
            node_id.to_string(),
            NodeUpdate {
                status,
                description,
            },
        );
        self.queued.notify_one();
        pending.taken + 1
    }

    /// Starts the clock after which the tasks a DOWN node may still have been running become
    /// ORPHANED (dispatcher.go downNodes and moveTasksToOrphaned).
    fn track_down(self: &Arc<Self>, node_id: &str) {
        let cancel = self.token.child_token();
        if let Some(old) = lock(&self.down).insert(node_id.to_string(), cancel.clone()) {
            old.cancel();
        }
        let term = self.clone();
        let node_id = node_id.to_string();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(term.config.node_down_period) => {}
            }
            {
                let mut down = lock(&term.down);
                if down.get(&node_id).is_some_and(|t| !t.is_cancelled()) {
                    down.remove(&node_id);
                } else {
                    return;
                }
            }
            info!(node.id = %node_id, "moving tasks to orphaned state for node");
            term.orphan_tasks(node_id).await;
        });
    }

    /// Tasks of the node that may have progressed since it went away (ASSIGNED to RUNNING)
    /// become ORPHANED; tasks in a final state stay as they are.
    async fn orphan_tasks(&self, node_id: String) {
        let tasks = self
            .store
            .view(|tx| tx.find_tasks(store::By::NodeId(&node_id)));
        let ids: Vec<String> = tasks
            .into_iter()
            .filter(|t| {
                let state = t.status.as_ref().map_or(0, |s| s.state);
                (api::TaskState::Assigned as i32..=api::TaskState::Running as i32).contains(&state)
            })
            .map(|t| t.id)
            .collect();
        let errors = self
            .store
            .batch(&ids, |tx, id| {
                let Some(mut task) = tx.get_task(id) else {
                    return Ok(());
                };
                let status = task.status.get_or_insert_with(Default::default);
                if status.state > api::TaskState::Running as i32 {
                    return Ok(());
                }
                status.state = api::TaskState::Orphaned as i32;
                tx.update_task(task)
            })
            .await;
        for e in errors {
            warn!(node.id = %node_id, r#"failed to move tasks to "ORPHANED" state: {e}"#);
        }
    }

    /// Records the node READY with its description and address, and waits until that is written.
    pub async fn mark_ready(
        &self,
        node_id: &str,
        addr: &str,
        description: Option<api::NodeDescription>,
    ) -> Result<(), DispatcherError> {
        let status = api::NodeStatus {
            state: NodeState::Ready as i32,
            message: String::new(),
            addr: addr.to_string(),
        };
        if let Some(cancel) = lock(&self.down).remove(node_id) {
            cancel.cancel();
        }
        let batch = self.enqueue_node(node_id, status, description);
        let mut flushed = self.flushed.subscribe();
        tokio::select! {
            () = self.token.cancelled() => Err(DispatcherError::Stopped),
            res = flushed.wait_for(|b| *b >= batch) => res.map(drop).map_err(|_| DispatcherError::Stopped),
        }
    }

    /// Queues task status reports.
    pub fn enqueue_tasks(&self, updates: Vec<(String, api::TaskStatus)>) {
        let mut pending = lock(&self.pending);
        pending.tasks.extend(updates);
        self.queued.notify_one();
    }

    /// Writes the pending writes as soon as there are any and no flush is writing: what is
    /// queued while one writes goes in the next, so a burst is written in a few large batches
    /// (and the store's group commit puts concurrent batches in shared raft entries) without a
    /// lone report waiting for a window to close.
    pub async fn flush_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                biased;
                () = self.token.cancelled() => return,
                () = self.queued.notified() => {}
            }
            self.flush().await;
        }
    }

    async fn flush(&self) {
        let (tasks, nodes, batch) = {
            let mut pending = lock(&self.pending);
            if pending.len() == 0 {
                return;
            }
            pending.taken += 1;
            (
                std::mem::take(&mut pending.tasks),
                std::mem::take(&mut pending.nodes),
                pending.taken,
            )
        };
        self.write_tasks(tasks.into_iter().collect()).await;
        self.write_nodes(nodes.into_iter().collect()).await;
        self.flushed.send_replace(batch);
    }

    /// Writes task status reports that move a task forward (dispatcher.go processUpdates).
    async fn write_tasks(&self, updates: Vec<(String, api::TaskStatus)>) {
        let applied_by = &self.manager_id;
        // Creation times of the tasks written RUNNING, by ID (a batch may run an item twice).
        let started = Mutex::new(HashMap::new());
        let errors = self
            .store
            .batch(&updates, |tx, (id, status)| {
                let Some(mut task) = tx.get_task(id) else {
                    debug!(task.id = %id, "cannot find target task in store");
                    return Ok(());
                };
                let current = task.status.clone().unwrap_or_default();
                if current == *status {
                    debug!(task.id = %id, "task status identical, ignoring");
                    return Ok(());
                }
                if current.state > status.state {
                    debug!(task.id = %id, "task status invalid transition");
                    return Ok(());
                }
                if status.state == api::TaskState::Running as i32
                    && let Some(created) = task.meta.as_ref().and_then(|m| m.created_at)
                {
                    lock(&started).insert(id.clone(), created);
                }
                task.status = Some(api::TaskStatus {
                    applied_by: applied_by.clone(),
                    applied_at: Some(timestamp_now()),
                    ..status.clone()
                });
                tx.update_task(task)
            })
            .await;
        for e in errors {
            warn!("failed to update task status: {e}");
        }
        // SwarmKit's scheduling delay: from the task's creation (NEW) to RUNNING, as the leader's
        // clock sees it (dispatcher.go processUpdates).
        let now = std::time::SystemTime::now();
        for created in lock(&started).values() {
            if let Ok(at) = std::time::SystemTime::try_from(*created)
                && let Ok(delay) = now.duration_since(at)
            {
                telemetry::swarm::DISPATCHER_SCHEDULING_DELAY.observe(delay);
            }
        }
    }

    async fn write_nodes(&self, updates: Vec<(String, NodeUpdate)>) {
        let errors = self
            .store
            .batch(&updates, |tx, (id, update)| {
                let Some(mut node) = tx.get_node(id) else {
                    debug!(node.id = %id, "node unavailable");
                    return Ok(());
                };
                let status = node.status.get_or_insert_with(Default::default);
                status.state = update.status.state;
                status.message.clone_from(&update.status.message);
                if !update.status.addr.is_empty() {
                    status.addr.clone_from(&update.status.addr);
                }
                if let Some(description) = &update.description {
                    node.description = Some(description.clone());
                }
                tx.update_node(node)
            })
            .await;
        for e in errors {
            warn!("failed to update node status: {e}");
        }
    }

    /// Why the streams of a session whose registration ended must stop.
    pub fn session_error(&self, node_id: &str, session_id: &str) -> DispatcherError {
        match lock(&self.nodes).with_session(node_id, session_id) {
            Ok(_) => DispatcherError::SessionInvalid,
            Err(e) => e,
        }
    }
}
