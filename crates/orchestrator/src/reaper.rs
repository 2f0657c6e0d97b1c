//! The task reaper (spec 5.3 "Task reaper", after SwarmKit's
//! `manager/orchestrator/taskreaper/task_reaper.go`): deletes tasks nobody needs any more.
//!
//! - Task history: each slot of a replicated service (each node of a global service) keeps at most
//!   the cluster's `orchestration.task_history_retention_limit` tasks (5 by default; at least
//!   `max_attempts + 1` when the restart policy limits attempts, so restart history survives a
//!   leader change; negative = keep all). The oldest stopped tasks (observed > RUNNING), and tasks
//!   that never started and never will (observed < ASSIGNED, desired > RUNNING), are deleted first.
//!   Job tasks have no history limit (the jobs orchestrator retires them with desired REMOVE).
//! - Tasks with desired REMOVE (scaled down, service deleted) are deleted once they are not running:
//!   observed < ASSIGNED or >= COMPLETE.
//! - ORPHANED tasks without a service are deleted.
//!
//! Slots are checked when a task is created in them; work is batched: every 250 ms, or at once
//! when 1000 entries are waiting.

use std::collections::BTreeSet;
use std::time::Duration;

use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Error;
use crate::task::{
    SlotTuple, cmp_by_timestamp, delete_task_if_present, in_batches, is_global, is_replicated,
    observed, state, task_history_retention_limit,
};

/// Waiting entries (dirty slots + tasks to delete) that trigger a cleanup at once.
pub const MAX_DIRTY: usize = 1000;
/// How long changes are gathered before a cleanup.
pub const BATCHING_INTERVAL: Duration = Duration::from_millis(250);

/// Deletes old task history, removed tasks and orphaned serviceless tasks.
pub struct TaskReaper {
    store: MemoryStore,
    /// The cluster's retention limit.
    task_history: i64,
    /// Slots (or service/node pairs) that got a new task since the last cleanup.
    dirty: BTreeSet<SlotTuple>,
    /// Tasks to delete at the next cleanup.
    cleanup: BTreeSet<String>,
}

/// A REMOVE-d task that is not running (never assigned, or finished) can go.
fn removable(task: &api::Task) -> bool {
    task.desired_state == state(api::TaskState::Remove)
        && (observed(task) < state(api::TaskState::Assigned)
            || observed(task) >= state(api::TaskState::Complete))
}

/// A task without a service that the orchestrator marked ORPHANED (or later) can go.
fn orphaned_serviceless(task: &api::Task) -> bool {
    task.service_id.is_empty() && observed(task) >= state(api::TaskState::Orphaned)
}

/// The task events [`TaskReaper::handle`] acts on (the store drops the others as it publishes them,
/// so a reaper busy deleting does not hold every task version meanwhile): creates, updates of
/// tasks that became deletable, and updates that take a task past RUNNING (observed or desired):
/// they wake the reaper, whose pass trims a slot it left dirty while its old task still ran.
fn wants(event: &Event, _: &store::ReadTx<'_>) -> bool {
    let Some(task) = event.object_as::<api::Task>() else {
        return true;
    };
    match event {
        Event::Object {
            kind: EventKind::Create,
            ..
        } => true,
        Event::Object {
            kind: EventKind::Update,
            ..
        } => orphaned_serviceless(task) || removable(task) || stopped_now(event, task),
        _ => false,
    }
}

/// Whether this update took the task's observed or desired state past RUNNING.
fn stopped_now(event: &Event, task: &api::Task) -> bool {
    let running = state(api::TaskState::Running);
    let Some(old) = event.old_as::<api::Task>() else {
        return true;
    };
    (observed(old) <= running && observed(task) > running)
        || (old.desired_state <= running && task.desired_state > running)
}

impl TaskReaper {
    /// A reaper over `store`; nothing happens until [`TaskReaper::run`].
    pub fn new(store: MemoryStore) -> Self {
        TaskReaper {
            store,
            task_history: task_history_retention_limit(None),
            dirty: BTreeSet::new(),
            cleanup: BTreeSet::new(),
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the reaper cannot go on (its watch ended).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let ((cluster, orphaned, removed), mut events) =
            self.store
                .view_and_watch(WatchFilter::none().tasks().clusters().select(wants), |tx| {
                    (
                        tx.find_clusters(By::All).into_iter().next(),
                        tx.find_tasks(By::TaskState(api::TaskState::Orphaned)),
                        tx.find_tasks(By::DesiredState(api::TaskState::Remove)),
                    )
                });
        self.task_history = task_history_retention_limit(cluster.as_ref());
        // Serviceless orphans go at once; orphans of a service wait for the history limit.
        self.cleanup.extend(
            orphaned
                .into_iter()
                .filter(|t| t.service_id.is_empty())
                .map(|t| t.id),
        );
        self.cleanup
            .extend(removed.into_iter().filter(removable).map(|t| t.id));
        if !self.cleanup.is_empty() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = self.tick() => {}
            }
        }

        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return Err(Error::WatchClosed);
                    };
                    if !self.handle(&ev) {
                        continue;
                    }
                    if self.dirty.len() + self.cleanup.len() > MAX_DIRTY {
                        deadline = None;
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => return Ok(()),
                            () = self.tick() => {}
                        }
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + BATCHING_INTERVAL);
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    deadline = None;
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        () = self.tick() => {}
                    }
                }
            }
        }
    }

    /// Notes what `ev` means for the next cleanup; false for events that do not concern the reaper
    /// (commits, removals).
    fn handle(&mut self, ev: &Event) -> bool {
        let Event::Object { kind, .. } = ev else {
            return false;
        };
        if let Some(task) = ev.object_as::<api::Task>() {
            match kind {
                EventKind::Create => {
                    self.dirty.insert(SlotTuple {
                        service_id: task.service_id.clone(),
                        slot: task.slot,
                        node_id: task.node_id.clone(),
                    });
                }
                EventKind::Update => {
                    if orphaned_serviceless(task) || removable(task) {
                        self.cleanup.insert(task.id.clone());
                    }
                }
                EventKind::Remove => return false,
            }
            true
        } else if let Some(cluster) = ev.object_as::<api::Cluster>() {
            if *kind == EventKind::Remove {
                return false;
            }
            self.task_history = task_history_retention_limit(Some(cluster));
            true
        } else {
            false
        }
    }

    /// One cleanup: deletes the collected tasks and trims the history of the dirty slots. A slot
    /// that still has several live tasks stays dirty, to be trimmed once they stopped.
    async fn tick(&mut self) {
        if self.dirty.is_empty() && self.cleanup.is_empty() {
            return;
        }
        let mut delete = std::mem::take(&mut self.cleanup);
        let task_history = self.task_history;
        let dirty = std::mem::take(&mut self.dirty);
        let still_dirty: Vec<SlotTuple> = self.store.view(|tx| {
            let mut keep = Vec::new();
            for tuple in dirty {
                let Some(service) = tx.get_service(&tuple.service_id) else {
                    continue;
                };
                let limit = history_limit(task_history, &service);
                if limit < 0 {
                    continue;
                }
                let mut history = if is_replicated(&service) {
                    tx.find_tasks(By::Slot {
                        service_id: &tuple.service_id,
                        slot: tuple.slot,
                    })
                } else if is_global(&service) {
                    tx.find_tasks(By::NodeId(&tuple.node_id))
                        .into_iter()
                        .filter(|t| t.service_id == tuple.service_id)
                        .collect()
                } else {
                    Vec::new()
                };
                let len = history.len() as i64;
                if len <= limit {
                    continue;
                }
                history.sort_by(cmp_by_timestamp);
                let mut kept = limit;
                let mut live = 0;
                for t in &history {
                    let stopped = observed(t) > state(api::TaskState::Running);
                    let never_runs = observed(t) < state(api::TaskState::Assigned)
                        && t.desired_state > state(api::TaskState::Running);
                    if stopped || never_runs {
                        delete.insert(t.id.clone());
                        kept += 1;
                        if len <= kept {
                            break;
                        }
                    } else {
                        live += 1;
                    }
                }
                if live > 1 {
                    keep.push(tuple);
                }
            }
            keep
        });
        self.dirty.extend(still_dirty);
        if delete.is_empty() {
            return;
        }
        debug!(tasks = delete.len(), "task reaper deleting tasks");
        in_batches(
            &self.store,
            delete.into_iter().collect(),
            "delete tasks",
            |tx, id| delete_task_if_present(tx, id),
        )
        .await;
    }
}

/// How many tasks a slot of `service` keeps: the cluster's limit, raised to `max_attempts + 1` when
/// the restart policy limits attempts (the restart history is rebuilt from them).
fn history_limit(cluster_limit: i64, service: &api::Service) -> i64 {
    let max_attempts = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart.as_ref())
        .map_or(0, |r| r.max_attempts);
    if max_attempts > 0 {
        cluster_limit.max(i64::try_from(max_attempts).unwrap_or(i64::MAX - 1) + 1)
    } else {
        cluster_limit
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
