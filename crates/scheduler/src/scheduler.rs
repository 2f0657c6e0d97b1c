//! The [`Scheduler`] and its loop (SwarmKit's `manager/scheduler/scheduler.go`): it builds its view
//! of nodes and tasks from the store, keeps it current from watch events, and after each burst of
//! commits (debounced) runs a pass. The pass itself is in `pass.rs`, filters in `filter.rs`, node
//! bookkeeping in `nodeset.rs`/`nodeinfo.rs`, node choice in `placement.rs`.

use std::sync::Arc;

use store::{By, Event, EventKind, MemoryStore, Shared, StoreObject, WatchFilter};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use crate::filter::Requirements;
use crate::nodeinfo::TaskOnNode;
use crate::nodeset::{MAX_FAILURES, NodeSet, ServiceVersion};
use crate::{IdMap, IdSet};

/// Quiet time after a commit before a pass runs, so a burst of commits makes one pass
/// (SwarmKit's `commitDebounceGap`).
pub const COMMIT_DEBOUNCE_GAP: Duration = Duration::from_millis(50);
/// Longest a pass waits for the commits to calm down (SwarmKit's `maxLatency`).
pub const MAX_LATENCY: Duration = Duration::from_secs(1);
/// Most queued events handled before the loop looks at shutdown and timers again.
const MAX_DRAIN: usize = 1024;
/// Tasks newly queued since the last pass that make a commit start a pass at once instead of
/// after the debounce: a full write batch is waiting, and waiting longer only delays it (the task
/// reaper's "every 250 ms or at 1000 dirty entries" in the same spirit).
pub(crate) const FULL_BATCH: usize = crate::pass::MAX_BATCH;

/// Status message of a task placed by the scheduler.
pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";
/// Status message of a task whose preset node was confirmed.
pub const CONFIRMED_MESSAGE: &str = "scheduler confirmed task can run on preassigned node";

const PENDING: i32 = api::TaskState::Pending as i32;
const RUNNING: i32 = api::TaskState::Running as i32;

/// A PENDING task waiting for a node (or for its preset node to be confirmed).
#[derive(Debug)]
pub(crate) struct PendingTask {
    pub(crate) id: String,
    /// `meta.version` the scheduler knows; a write only goes through if the store still has it.
    pub(crate) version: u64,
    pub(crate) service: Arc<str>,
    /// `None`: the task is scheduled on its own.
    pub(crate) spec_version: Option<u64>,
    pub(crate) desired: i32,
    /// Preset node (global services), else empty.
    pub(crate) node_id: String,
    /// `status.err` as last seen or written.
    pub(crate) err: String,
    pub(crate) req: Arc<Requirements>,
}

/// The requirements of a service's spec versions that queued tasks use.
#[derive(Debug)]
pub(crate) struct ServiceRequirements {
    /// The service ID, shared by the records of its tasks.
    pub(crate) service: Arc<str>,
    /// (spec version, requirements).
    pub(crate) versions: Vec<(u64, Arc<Requirements>)>,
}

/// What the scheduler starts from: the stored nodes, services and live tasks.
pub(crate) type Snapshot = (
    Vec<Shared<api::Node>>,
    Vec<Shared<api::Service>>,
    Vec<Shared<api::Task>>,
);

/// Places PENDING tasks on nodes. Runs on the leader only.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) store: MemoryStore,
    pub(crate) nodes: NodeSet,
    /// PENDING tasks without a node.
    pub(crate) unassigned: IdMap<String, PendingTask>,
    /// The unassigned tasks queued or changed since a pass last examined them.
    pub(crate) unexamined: IdSet<String>,
    /// The node set generation at which every unassigned task not in `unexamined` was found to
    /// fit no node (with the explanation it holds). While the node set stays at that generation
    /// such a task still fits none, for the same reason, and a pass leaves it aside (SwarmKit
    /// rescans the whole queue at every pass); `None` = the next pass examines the whole queue.
    pub(crate) settled_at: Option<u64>,
    /// PENDING tasks with a preset node, checked at every pass until they fit.
    pub(crate) preassigned: IdMap<String, PendingTask>,
    /// The IDs of the stored services (tasks of a deleted one are dropped from the queue).
    pub(crate) services: std::collections::HashSet<String, store::IdHash>,
    /// Requirements shared by the tasks of one service and spec version, by service ID.
    pub(crate) requirements: IdMap<String, ServiceRequirements>,
    /// Something happened that may let an unassigned task fit now.
    pub(crate) tick_required: bool,
    /// (first commit of the current burst, when the pass is due), while commits are debounced.
    pub(crate) debounce: Option<(Instant, Instant)>,
    /// Tasks queued (or changed in the queue) since the last pass started.
    pub(crate) fresh: usize,
}

impl Scheduler {
    /// A scheduler over `store`; nothing happens until [`Scheduler::run`].
    pub fn new(store: MemoryStore) -> Scheduler {
        Scheduler {
            store,
            nodes: NodeSet::default(),
            unassigned: IdMap::default(),
            unexamined: IdSet::default(),
            settled_at: None,
            preassigned: IdMap::default(),
            services: Default::default(),
            requirements: IdMap::default(),
            tick_required: false,
            debounce: None,
            fresh: 0,
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the scheduler cannot go on (its watch ended).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let filter = WatchFilter::none().nodes().tasks().services();
        let (snapshot, mut watcher) = self.store.view_and_watch(filter, |tx| {
            let live = [
                api::TaskState::Pending,
                api::TaskState::Assigned,
                api::TaskState::Accepted,
                api::TaskState::Preparing,
                api::TaskState::Ready,
                api::TaskState::Starting,
                api::TaskState::Running,
            ];
            (
                tx.find_shared(By::All),
                tx.find_shared(By::All),
                tx.find_shared(By::Or(live.into_iter().map(By::TaskState).collect())),
            )
        });
        self.load(snapshot);

        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            _ = self.schedule(Some(&mut watcher)) => {}
        }
        loop {
            let due = self.debounce.map(|(_, due)| due);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                event = watcher.recv() => {
                    let Some(event) = event else {
                        return Err(Error::WatchClosed);
                    };
                    let mut run_now = self.on_event(event);
                    let mut handled = 1;
                    while !run_now && handled < MAX_DRAIN {
                        let Some(next) = watcher.try_recv() else {
                            break;
                        };
                        run_now = self.on_event(next);
                        handled += 1;
                    }
                    if run_now {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => return Ok(()),
                            _ = self.schedule(Some(&mut watcher)) => {}
                        }
                    }
                }
                () = sleep_until_due(due), if due.is_some() => {
                    self.debounce = None;
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        _ = self.schedule(Some(&mut watcher)) => {}
                    }
                }
            }
        }
    }

    /// Takes one watch event; true when a pass is due at once (commits kept coming for longer than
    /// [`MAX_LATENCY`], or a commit completed a full batch of newly queued tasks).
    fn on_event(&mut self, event: Event) -> bool {
        if !matches!(event, Event::Commit { .. }) {
            self.handle(event);
            return false;
        }
        if self.fresh >= FULL_BATCH {
            self.debounce = None;
            return true;
        }
        let now = Instant::now();
        match self.debounce {
            Some((first, _)) if now.duration_since(first) > MAX_LATENCY => {
                self.debounce = None;
                true
            }
            Some((first, _)) => {
                self.debounce = Some((first, now + COMMIT_DEBOUNCE_GAP));
                false
            }
            None => {
                self.debounce = Some((now, now + COMMIT_DEBOUNCE_GAP));
                false
            }
        }
    }

    /// Builds the node set and the queues from the store's content.
    pub(crate) fn load(&mut self, (nodes, services, tasks): Snapshot) {
        let node_count = nodes.len();
        for node in nodes {
            self.nodes.set_node(node);
        }
        for service in &services {
            self.on_service(EventKind::Create, service);
        }
        for task in &tasks {
            self.on_task(EventKind::Create, task);
        }
        info!(
            nodes = node_count,
            unassigned = self.unassigned.len(),
            preassigned = self.preassigned.len(),
            "scheduler started"
        );
        self.tick_required = true;
    }

    pub(crate) fn handle(&mut self, event: Event) {
        let Event::Object { kind, object, .. } = event else {
            return;
        };
        if let Some(task) = api::Task::in_object(&object) {
            self.on_task(kind, task);
        } else if let Some(service) = api::Service::in_object(&object) {
            self.on_service(kind, service);
        } else if let Some(node) = Shared::<api::Node>::from_object(object) {
            if kind == EventKind::Remove {
                self.nodes.remove_node(&node.id);
            } else {
                self.nodes.set_node(node);
                self.tick_required = true;
            }
        }
    }

    fn on_service(&mut self, kind: EventKind, service: &api::Service) {
        if kind == EventKind::Remove {
            self.services.remove(&service.id);
            self.requirements.remove(&service.id);
        } else {
            self.services.insert(service.id.clone());
        }
    }

    /// Follows a task through its life: queued while PENDING, accounted on its node while
    /// ASSIGNED..RUNNING, forgotten (resources freed) once it ends or is deleted.
    pub(crate) fn on_task(&mut self, kind: EventKind, task: &api::Task) {
        if kind == EventKind::Remove {
            self.unassigned.remove(&task.id);
            self.preassigned.remove(&task.id);
            if self.nodes.remove_task(&task.node_id, &task.id).is_some() {
                self.tick_required = true;
            }
            return;
        }
        let state = task.status.as_ref().map_or(0, |s| s.state);
        if state < PENDING {
            return;
        }
        if state > RUNNING {
            let was_queued = self.unassigned.remove(&task.id).is_some()
                | self.preassigned.remove(&task.id).is_some();
            if let Some(held) = self.nodes.remove_task(&task.node_id, &task.id) {
                let failed = state == api::TaskState::Failed as i32
                    || state == api::TaskState::Rejected as i32;
                // The orchestrator chose the node of a preassigned task, so its failures say
                // nothing about the scheduler's choice.
                if failed && !held.preassigned {
                    self.task_failed(task, held.service);
                }
                self.tick_required = true;
            } else if was_queued {
                self.tick_required = true;
            }
            return;
        }
        if task.node_id.is_empty() {
            if state != PENDING {
                return;
            }
            let pending = self.pending_task(task);
            let changed = self.unassigned.get(&task.id).is_none_or(|old| {
                old.desired != pending.desired || old.spec_version != pending.spec_version
            });
            self.tick_required |= changed;
            self.fresh += usize::from(changed);
            if changed {
                self.unexamined.insert(task.id.clone());
            }
            self.unassigned.insert(task.id.clone(), pending);
            return;
        }
        if state == PENDING {
            self.unassigned.remove(&task.id);
            self.nodes.remove_task(&task.node_id, &task.id);
            let pending = self.pending_task(task);
            self.fresh += 1;
            self.preassigned.insert(task.id.clone(), pending);
            return;
        }
        self.unassigned.remove(&task.id);
        let preassigned = self.preassigned.remove(&task.id).is_some();
        if self.nodes.has_task(&task.node_id, &task.id) {
            self.nodes
                .set_desired(&task.node_id, &task.id, task.desired_state);
        } else {
            let (service, req) = self.requirements_of(task);
            let held = TaskOnNode::new(
                task,
                service,
                &req,
                task.assigned_generic_resources.clone(),
                preassigned,
            );
            self.nodes.add_task(&task.node_id, &task.id, held);
        }
    }

    fn task_failed(&mut self, task: &api::Task, service: Arc<str>) {
        let version = task.spec_version.as_ref().map_or(0, |v| v.index);
        let key: ServiceVersion = (service, version);
        let now = Instant::now();
        self.nodes.record_failure(&task.node_id, key.clone(), now);
        if let Some(idx) = self.nodes.index_of(&task.node_id)
            && self.nodes.recent_failures(&key, idx, now) == MAX_FAILURES
        {
            warn!(
                node.id = %task.node_id,
                service.id = %task.service_id,
                "underweighting node for service because it experienced {MAX_FAILURES} failures or rejections within 5m0s"
            );
        }
    }

    /// The service ID (shared) and requirements of `task`; tasks of one service and spec version
    /// share both.
    fn requirements_of(&mut self, task: &api::Task) -> (Arc<str>, Arc<Requirements>) {
        let Some(version) = task.spec_version.as_ref().map(|v| v.index) else {
            return (Arc::from(task.service_id.as_str()), Requirements::of(task));
        };
        let entry = match self.requirements.get_mut(task.service_id.as_str()) {
            Some(entry) => entry,
            None => self
                .requirements
                .entry(task.service_id.clone())
                .or_insert_with(|| ServiceRequirements {
                    service: Arc::from(task.service_id.as_str()),
                    versions: Vec::new(),
                }),
        };
        let req = match entry.versions.iter().find(|(v, _)| *v == version) {
            Some((_, req)) => req.clone(),
            None => {
                let req = Requirements::of(task);
                entry.versions.push((version, req.clone()));
                req
            }
        };
        (entry.service.clone(), req)
    }

    fn pending_task(&mut self, task: &api::Task) -> PendingTask {
        let (service, req) = self.requirements_of(task);
        PendingTask {
            id: task.id.clone(),
            version: task.version(),
            service,
            spec_version: task.spec_version.as_ref().map(|v| v.index),
            desired: task.desired_state,
            node_id: task.node_id.clone(),
            err: task
                .status
                .as_ref()
                .map(|s| s.err.clone())
                .unwrap_or_default(),
            req,
        }
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
