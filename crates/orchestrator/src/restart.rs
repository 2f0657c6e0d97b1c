//! The restart supervisor (spec 5.3, after SwarmKit's `manager/orchestrator/restart/restart.go`):
//! shuts a failed or displaced task down and, when the restart policy allows, creates its replacement
//! in the same slot (replicated) or on the same node (global) held at desired READY, then starts it
//! after the restart delay once the old task has stopped. It keeps the restart history used to
//! enforce `max_attempts` within `window`. Which tasks need a restart is the orchestrators' call;
//! deleting old tasks is the task reaper's.
//!
//! The supervisor is shared by the replicated and global orchestrators (each owns one). Its state is
//! in memory only: a new leader rebuilds the history from the stored tasks
//! ([`RestartSupervisor::rebuild_history`]) and resumes delayed starts
//! ([`RestartSupervisor::resume_delayed_start`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use api::restart_policy::RestartCondition;
use store::{Event, MemoryStore, ReadTx, StoreError, Tx, WatchFilter, Watcher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::task::{
    SlotTuple, in_batches, is_global, is_global_job, is_job, is_replicated, is_replicated_job,
    new_task, node_is_down, node_is_drained, observed, restart_condition, restart_delay,
    restart_max_attempts, restart_window, state, system_time, task_timestamp,
};

/// How long a replacement waits for the task it replaces to stop before it is started anyway
/// (SwarmKit's `defaultOldTaskTimeout`). Counted from the restart, so it includes the delay.
pub const OLD_TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// A pending delayed start of a replacement task.
struct DelayedStart {
    /// Tells entries for the same task apart (a newer delay replaces an older one).
    id: u64,
    /// Cancels the delayed start.
    cancel: CancellationToken,
    /// Cancelled once the delayed start is over (started, cancelled or failed).
    done: CancellationToken,
    /// A restart of this very task is waiting for the delay to end.
    waiter: bool,
}

/// Restarts of one slot (or node) under the current spec version.
#[derive(Default)]
struct RestartHistory {
    /// Every restart since the spec version last changed.
    total: u64,
    /// When each restart happened, oldest first; only kept when the policy has a window.
    restarted_at: Option<VecDeque<SystemTime>>,
    /// The spec version the counts are for; a replacement of another version starts afresh.
    spec_version: Option<api::Version>,
}

#[derive(Default)]
struct State {
    /// Delayed starts by replacement task ID.
    delays: HashMap<String, DelayedStart>,
    /// Restart history by service, then slot.
    history: HashMap<String, HashMap<SlotTuple, RestartHistory>>,
    next_id: u64,
    /// Cancelled (and replaced) by `cancel_all`, so restarts waiting on a delay give up too.
    generation: CancellationToken,
}

/// Creates replacement tasks and starts them after their restart delay. Cheap to clone; clones share
/// the history and the pending delayed starts.
#[derive(Clone)]
pub struct RestartSupervisor {
    store: MemoryStore,
    state: Arc<Mutex<State>>,
}

/// The restart history key of `task`: its node for global services and jobs, its slot otherwise.
pub fn slot_tuple(service: &api::Service, task: &api::Task) -> SlotTuple {
    if is_global(service) || is_global_job(service) {
        SlotTuple {
            service_id: task.service_id.clone(),
            slot: 0,
            node_id: task.node_id.clone(),
        }
    } else {
        SlotTuple {
            service_id: task.service_id.clone(),
            slot: task.slot,
            node_id: String::new(),
        }
    }
}

impl RestartSupervisor {
    /// A supervisor writing to `store`.
    pub fn new(store: MemoryStore) -> Self {
        RestartSupervisor {
            store,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("restart supervisor lock poisoned")
    }

    /// Replaces `task` of `service` if its restart policy allows, inside the caller's transaction:
    /// the stored task gets desired SHUTDOWN and, when a restart is due, a new task of the service's
    /// current spec is created in the same slot (replicated) or on the same node (global) with
    /// desired READY and recorded in the restart history. Once the transaction has committed, a
    /// background task sets it desired RUNNING (COMPLETE for jobs) after the restart delay (none when
    /// the old node is DRAIN-ed) and once the old task has stopped, its node is DOWN or gone, or
    /// [`OLD_TASK_TIMEOUT`] passed.
    ///
    /// A task that is itself a replacement still waiting for its delay is restarted only when that
    /// delay is over, so a task failing at once cannot restart in a tight loop. A task already shut
    /// down is left alone. Must be called inside a tokio runtime.
    pub fn restart(
        &self,
        tx: &mut Tx<'_>,
        cluster: Option<&api::Cluster>,
        service: &api::Service,
        task: &api::Task,
    ) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            let generation = state.generation.clone();
            if let Some(pending) = state.delays.get_mut(&task.id) {
                if !pending.waiter {
                    pending.waiter = true;
                    let done = pending.done.clone();
                    tokio::spawn(self.clone().restart_after(
                        done,
                        generation,
                        cluster.cloned(),
                        task.id.clone(),
                    ));
                }
                return Ok(());
            }
        }

        let Some(mut old) = tx.get_task(&task.id) else {
            debug!(task.id = %task.id, "task to restart no longer exists");
            return Ok(());
        };
        if old.desired_state > state(api::TaskState::Complete) {
            warn!(task.id = %old.id, "restart called on a task that was already shut down");
            return Ok(());
        }
        old.desired_state = state(api::TaskState::Shutdown);
        tx.update_task(old.clone())?;

        if !self.should_restart(&old, service) {
            return Ok(());
        }

        let mut replacement = if is_replicated(service) || is_replicated_job(service) {
            new_task(cluster, service, old.slot, "")
        } else if is_global(service) || is_global_job(service) {
            new_task(cluster, service, 0, &old.node_id)
        } else {
            error!(service.id = %service.id, "service mode not supported by the restart supervisor");
            return Ok(());
        };
        if is_job(service) {
            replacement.job_iteration = Some(api::Version {
                index: service
                    .job_status
                    .as_ref()
                    .and_then(|j| j.job_iteration)
                    .map_or(0, |v| v.index),
            });
        }
        replacement.desired_state = state(api::TaskState::Ready);

        let node = tx.get_node(&old.node_id);
        let delay = if node_is_drained(node.as_ref()) {
            Duration::ZERO
        } else {
            restart_delay(&old)
        };
        // No need to wait for a task that already stopped or whose node is down.
        let wait_stop =
            !(node_is_down(node.as_ref()) || observed(&old) > state(api::TaskState::Running));

        let new_id = replacement.id.clone();
        tx.create_task(replacement)?;
        let created = tx
            .get_task(&new_id)
            .expect("task created in this transaction");
        self.record_restart_history(&slot_tuple(service, &created), &created);
        debug!(task.id = %old.id, replacement = %new_id, ?delay, "restarting task");
        self.delay_start(tx, Some(&old), &new_id, delay, wait_stop);
        Ok(())
    }

    /// Restarts `task_id` once the delayed start it is waiting for is over.
    async fn restart_after(
        self,
        done: CancellationToken,
        generation: CancellationToken,
        cluster: Option<api::Cluster>,
        task_id: String,
    ) {
        tokio::select! {
            biased;
            () = generation.cancelled() => return,
            () = done.cancelled() => {}
        }
        let supervisor = self.clone();
        let result = self
            .store
            .update(move |tx| {
                let Some(task) = tx.get_task(&task_id) else {
                    return Ok(());
                };
                if task.desired_state > state(api::TaskState::Running) {
                    return Ok(());
                }
                let Some(service) = tx.get_service(&task.service_id) else {
                    return Ok(());
                };
                supervisor.restart(tx, cluster.as_ref(), &service, &task)
            })
            .await;
        if let Err(e) = result {
            error!(error = %e, "failed to restart task after waiting for its previous restart");
        }
    }

    /// Whether the restart policy of `task` (of `service`) allows one more restart: never for
    /// condition NONE, not after COMPLETE for ON_FAILURE (nor for ANY when the service is a job);
    /// then at most `max_attempts` restarts (0 = unlimited) of the task's slot (node for global
    /// services) under the current spec version, counting only those inside `window` when it is
    /// set.
    pub fn should_restart(&self, task: &api::Task, service: &api::Service) -> bool {
        let completed = observed(task) == state(api::TaskState::Complete);
        match restart_condition(task) {
            RestartCondition::Any => {
                if is_job(service) && completed {
                    return false;
                }
            }
            RestartCondition::OnFailure => {
                if completed {
                    return false;
                }
            }
            RestartCondition::None => return false,
        }
        let max_attempts = restart_max_attempts(task);
        if max_attempts == 0 {
            return true;
        }

        let tuple = slot_tuple(service, task);
        let mut state = self.lock();
        let Some(info) = state
            .history
            .get_mut(&task.service_id)
            .and_then(|h| h.get_mut(&tuple))
        else {
            return true;
        };
        if task.spec_version.is_some() && task.spec_version != info.spec_version {
            return true;
        }
        let window = restart_window(task);
        if window.is_zero() {
            return info.total < max_attempts;
        }
        let Some(restarts) = info.restarted_at.as_mut() else {
            return true;
        };
        let Some(timestamp) = task_timestamp(task).map(|ts| system_time(&ts)) else {
            return info.total < max_attempts;
        };
        let lookback = timestamp
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // Restarts before the window never count again.
        while restarts.front().is_some_and(|at| *at <= lookback) {
            restarts.pop_front();
        }
        // Restarts not before the task's own timestamp happened after it failed.
        let counted = restarts.iter().filter(|at| **at < timestamp).count() as u64;
        if restarts.is_empty() {
            info.restarted_at = None;
        }
        counted < max_attempts
    }

    /// The tasks of `slot` (all tasks of one slot or node) the updater should handle: those desired
    /// to run; if none, the newest task when it may not be restarted (so outdated stopped tasks
    /// still get updated), except during a rollback; otherwise none.
    pub fn updatable_tasks_in_slot(
        &self,
        slot: &[api::Task],
        service: &api::Service,
    ) -> Vec<api::Task> {
        let updatable: Vec<api::Task> = slot
            .iter()
            .filter(|t| t.desired_state <= state(api::TaskState::Running))
            .cloned()
            .collect();
        if !updatable.is_empty() {
            return updatable;
        }
        if service.update_status.as_ref().map(|s| s.state)
            == Some(api::update_status::UpdateState::RollbackStarted as i32)
        {
            return Vec::new();
        }
        let Some(newest) = newest_task(slot) else {
            return Vec::new();
        };
        if self.should_restart(newest, service) {
            Vec::new()
        } else {
            vec![newest.clone()]
        }
    }

    /// Records that `replacement` was created to restart a task of `tuple` (nothing is kept when
    /// its policy has no `max_attempts`). A replacement of a new spec version resets the counts.
    pub fn record_restart_history(&self, tuple: &SlotTuple, replacement: &api::Task) {
        if restart_max_attempts(replacement) == 0 {
            return;
        }
        let mut state = self.lock();
        let info = state
            .history
            .entry(replacement.service_id.clone())
            .or_default()
            .entry(tuple.clone())
            .or_default();
        if replacement.spec_version.is_some() && replacement.spec_version != info.spec_version {
            *info = RestartHistory {
                spec_version: replacement.spec_version,
                ..Default::default()
            };
        }
        info.total += 1;
        if !restart_window(replacement).is_zero() {
            let at = replacement
                .meta
                .as_ref()
                .and_then(|m| m.created_at.as_ref())
                .map_or_else(SystemTime::now, system_time);
            info.restarted_at
                .get_or_insert_with(VecDeque::new)
                .push_back(at);
        }
    }

    /// Starts a background task that sets `new_task_id` desired RUNNING (COMPLETE for job tasks)
    /// after `delay` and, when `wait_stop`, once `old` has stopped (observed > RUNNING), its node is
    /// DOWN or deleted, or [`OLD_TASK_TIMEOUT`] passed. Called inside the transaction that created
    /// or held back the task (hence `_tx`); the start is its own later write, which finds nothing to
    /// do when the task has gone or was started already. A pending delayed start of the same task is
    /// replaced. Returns a token cancelled once the delayed start is over. Must be called inside a
    /// tokio runtime.
    pub fn delay_start(
        &self,
        _tx: &mut Tx<'_>,
        old: Option<&api::Task>,
        new_task_id: &str,
        delay: Duration,
        wait_stop: bool,
    ) -> CancellationToken {
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            let id = state.next_id;
            if let Some(previous) = state.delays.insert(
                new_task_id.to_string(),
                DelayedStart {
                    id,
                    cancel: cancel.clone(),
                    done: done.clone(),
                    waiter: false,
                },
            ) {
                previous.cancel.cancel();
            }
            id
        };
        let wait_for = old
            .filter(|o| wait_stop && observed(o) <= state(api::TaskState::Running))
            .map(|o| (o.id.clone(), o.node_id.clone()));
        let supervisor = self.clone();
        let new_id = new_task_id.to_string();
        let finished = done.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + OLD_TASK_TIMEOUT;
            let store = supervisor.store.clone();
            let wait = async {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some((old_id, node_id)) = &wait_for {
                    let mut watch = store.watch(WatchFilter::none().tasks().nodes());
                    let stopped = wait_until(&store, &mut watch, |tx| {
                        old_task_gone(tx, old_id, node_id).then_some(())
                    });
                    if tokio::time::timeout_at(deadline, stopped).await.is_err() {
                        debug!(task.id = %old_id, "old task did not stop in time; starting its replacement");
                    }
                }
            };
            let start = tokio::select! {
                biased;
                () = cancel.cancelled() => false,
                () = wait => true,
            };
            if start {
                let task_id = new_id.clone();
                let result = store
                    .update(move |tx| RestartSupervisor::start_now(tx, &task_id))
                    .await;
                if let Err(e) = result {
                    error!(task.id = %new_id, error = %e, "moving task out of delayed state failed");
                }
            }
            {
                let mut state = supervisor.lock();
                if state.delays.get(&new_id).is_some_and(|d| d.id == id) {
                    state.delays.remove(&new_id);
                }
            }
            finished.cancel();
        });
        done
    }

    /// Sets a task held at desired READY (or below) to desired RUNNING, or COMPLETE for job tasks
    /// (those with a `job_iteration`). Nothing happens to a missing task or one already started.
    pub fn start_now(tx: &mut Tx<'_>, task_id: &str) -> Result<(), StoreError> {
        let Some(mut task) = tx.get_task(task_id) else {
            return Ok(());
        };
        if task.desired_state >= state(api::TaskState::Running) {
            return Ok(());
        }
        task.desired_state = if task.job_iteration.is_some() {
            state(api::TaskState::Complete)
        } else {
            state(api::TaskState::Running)
        };
        tx.update_task(task)
    }

    /// Whether a delayed start of `task_id` is pending.
    pub fn is_delayed(&self, task_id: &str) -> bool {
        self.lock().delays.contains_key(task_id)
    }

    /// Cancels the pending delayed start of `task_id`, if any (the task was deleted).
    pub fn cancel(&self, task_id: &str) {
        if let Some(pending) = self.lock().delays.get(task_id) {
            pending.cancel.cancel();
        }
    }

    /// Cancels every pending delayed start and every restart waiting for one (the orchestrator
    /// stops).
    pub fn cancel_all(&self) {
        let mut state = self.lock();
        for pending in state.delays.values() {
            pending.cancel.cancel();
        }
        state.generation.cancel();
        state.generation = CancellationToken::new();
    }

    /// Forgets the restart history of `service_id` (the service was deleted).
    pub fn clear_service_history(&self, service_id: &str) {
        self.lock().history.remove(service_id);
    }

    /// Rebuilds the restart history of `service` from its stored `tasks` when an orchestrator starts:
    /// per slot (node for global services), the tasks of the newest spec version but the oldest
    /// (by creation) count as restarts.
    pub fn rebuild_history(&self, service: &api::Service, tasks: &[api::Task]) {
        let mut by_slot: HashMap<SlotTuple, Vec<&api::Task>> = HashMap::new();
        for t in tasks.iter().filter(|t| t.service_id == service.id) {
            by_slot.entry(slot_tuple(service, t)).or_default().push(t);
        }
        for (tuple, tasks) in by_slot {
            let newest_version = tasks
                .iter()
                .filter_map(|t| t.spec_version.map(|v| v.index))
                .max()
                .unwrap_or(0);
            let mut current: Vec<&api::Task> = tasks
                .into_iter()
                .filter(|t| t.spec_version.is_some_and(|v| v.index == newest_version))
                .collect();
            current.sort_by_key(|t| {
                t.meta
                    .as_ref()
                    .and_then(|m| m.created_at)
                    .map(|c| (c.seconds, c.nanos))
            });
            for t in current.iter().skip(1) {
                self.record_restart_history(&tuple, t);
            }
        }
    }

    /// Resumes the delayed starts of `task_ids` (tasks a previous leader held at desired READY), in
    /// batched transactions; see [`RestartSupervisor::resume_delayed_start`].
    pub async fn resume_delayed_starts(&self, task_ids: Vec<String>) {
        let restarts = self.clone();
        in_batches(
            &self.store,
            task_ids,
            "resume delayed task starts",
            move |tx, id| match tx.get_task(id) {
                Some(t) => restarts.resume_delayed_start(tx, &t),
                None => Ok(()),
            },
        )
        .await;
    }

    /// Resumes a start a previous leader left pending: a task held at desired READY (and not past
    /// COMPLETE) is started after what remains of its restart delay (counted from its status
    /// timestamp), or at once. Call inside the orchestrator's start-up transaction.
    pub fn resume_delayed_start(
        &self,
        tx: &mut Tx<'_>,
        task: &api::Task,
    ) -> Result<(), StoreError> {
        if task.desired_state != state(api::TaskState::Ready)
            || observed(task) > state(api::TaskState::Complete)
        {
            return Ok(());
        }
        let mut delay = restart_delay(task);
        if !delay.is_zero()
            && let Some(ts) = task_timestamp(task)
        {
            let remaining = (system_time(&ts) + delay)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            delay = delay.min(remaining);
            if !delay.is_zero() {
                self.delay_start(tx, None, &task.id, delay, true);
                return Ok(());
            }
        }
        RestartSupervisor::start_now(tx, &task.id)
    }
}

/// The newest task of a slot by [`task_timestamp`] (the first of equals).
pub fn newest_task(slot: &[api::Task]) -> Option<&api::Task> {
    let mut newest: Option<&api::Task> = None;
    for t in slot {
        if newest.is_none_or(|n| crate::task::cmp_by_timestamp(n, t).is_lt()) {
            newest = Some(t);
        }
    }
    newest
}

/// Whether the old task of a restart no longer runs: gone, observed > RUNNING, or its node DOWN or
/// deleted.
fn old_task_gone(tx: &ReadTx<'_>, task_id: &str, node_id: &str) -> bool {
    let stopped = tx
        .get_task(task_id)
        .is_none_or(|t| observed(&t) > state(api::TaskState::Running));
    let node = tx.get_node(node_id);
    stopped || node.is_none() || node_is_down(node.as_ref())
}

/// Evaluates `check` now and after every commit seen by `watch` until it holds; also returns when
/// the store goes away.
async fn wait_until(
    store: &MemoryStore,
    watch: &mut Watcher,
    mut check: impl FnMut(&ReadTx<'_>) -> Option<()>,
) {
    loop {
        if store.view(&mut check).is_some() {
            return;
        }
        loop {
            match watch.recv().await {
                Some(Event::Commit { .. }) => break,
                Some(_) => {}
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
