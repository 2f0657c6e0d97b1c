//! Rolling updates of a service's tasks (spec 5.4, after SwarmKit's `manager/orchestrator/update/updater.go`).
//!
//! [`UpdateSupervisor::update`] is the entry point the replicated and global orchestrators call on every
//! reconcile of a service with the service's slots; it keeps at most one [`Updater`] per service in the
//! background. The updater decides which slots are dirty, replaces them `parallelism` at a time in
//! stop-first or start-first order, watches for failures within the monitor period, and writes the
//! service's `update_status` (in progress, paused, rolled back, completed). Deciding *which* tasks form a
//! slot, scaling and restarts are left to the orchestrators and the restart supervisor.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use api::update_config::{FailureAction, UpdateOrder};
use api::update_status::UpdateState;
use store::{Event, EventKind, MemoryStore, ReadTx, StoreError, WatchFilter, Watcher};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// The tasks occupying one slot (replicated) or one node (global); more than one while an update
/// has started a replacement before the old task stopped.
pub type Slot = Vec<api::Task>;

/// Monitor period when the update config leaves it unset.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// How long a stop-first replacement waits for the old task to stop before it is started anyway
/// (the restart supervisor's task timeout in SwarmKit).
const OLD_TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// One update running in the background for a service.
struct RunningUpdate {
    /// Distinguishes successive updates of the same service in the registry.
    id: u64,
    /// The spec the update works towards; an identical request is a no-op.
    spec: Option<api::ServiceSpec>,
    /// Cancels the update.
    stop: CancellationToken,
    /// Cancelled once the update has returned, so a successor can wait for it.
    done: CancellationToken,
}

/// Keeps at most one rolling update per service running, replacing it when the service spec changes.
/// Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct UpdateSupervisor {
    store: MemoryStore,
    updates: Arc<Mutex<HashMap<String, RunningUpdate>>>,
    next_id: Arc<AtomicU64>,
}

impl UpdateSupervisor {
    /// A supervisor writing to `store`.
    pub fn new(store: MemoryStore) -> Self {
        UpdateSupervisor {
            store,
            updates: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts an update of `slots` of `service` in the background and returns at once (must be called
    /// inside a tokio runtime). `service` is the service as just read from the store (its spec and
    /// `update_status` decide what happens); `slots` are its runnable slots, one `Vec` of tasks per
    /// slot number (replicated) or node (global). If an update towards the same spec is already
    /// running nothing happens; otherwise a running update is cancelled and the new one starts once
    /// it has stopped.
    pub fn update(&self, cluster: Option<&api::Cluster>, service: &api::Service, slots: Vec<Slot>) {
        let mut updates = self.updates.lock().expect("update registry lock poisoned");
        let previous = match updates.get(&service.id) {
            Some(running) if running.spec == service.spec => return,
            Some(running) => {
                running.stop.cancel();
                Some(running.done.clone())
            }
            None => None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        updates.insert(
            service.id.clone(),
            RunningUpdate {
                id,
                spec: service.spec.clone(),
                stop: stop.clone(),
                done: done.clone(),
            },
        );
        drop(updates);

        let updater = Arc::new(Updater {
            store: self.store.clone(),
            cluster: cluster.cloned(),
            service: service.clone(),
            stop,
            updated_tasks: Mutex::new(HashMap::new()),
        });
        let registry = self.updates.clone();
        let service_id = service.id.clone();
        tokio::spawn(async move {
            let _done = done.drop_guard();
            if let Some(previous) = previous {
                previous.cancelled().await;
            }
            if !updater.stop.is_cancelled() {
                updater.clone().run(slots).await;
            }
            let mut updates = registry.lock().expect("update registry lock poisoned");
            if updates.get(&service_id).is_some_and(|r| r.id == id) {
                updates.remove(&service_id);
            }
        });
    }

    /// Cancels the running update of `service_id`, if any (its service was deleted).
    pub fn cancel(&self, service_id: &str) {
        if let Some(running) = self
            .updates
            .lock()
            .expect("update registry lock poisoned")
            .get(service_id)
        {
            running.stop.cancel();
        }
    }

    /// Cancels every running update (the orchestrators call this when they stop).
    pub fn cancel_all(&self) {
        for running in self
            .updates
            .lock()
            .expect("update registry lock poisoned")
            .values()
        {
            running.stop.cancel();
        }
    }
}

/// Replaces the dirty slots of one service with tasks of its current spec.
struct Updater {
    store: MemoryStore,
    cluster: Option<api::Cluster>,
    /// The service as it was when the update was requested (spec = the target).
    service: api::Service,
    stop: CancellationToken,
    /// Tasks this update created, with the time they reached RUNNING (None before): their failures count.
    updated_tasks: Mutex<HashMap<String, Option<Instant>>>,
}

/// The failure accounting of one update run.
struct Failures {
    seen: HashSet<String>,
    total: usize,
    dirty_slots: usize,
    monitor: Duration,
    config: api::UpdateConfig,
}

fn observed(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

fn state(s: api::TaskState) -> i32 {
    s as i32
}

fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::try_from(*d).unwrap_or_default())
}

fn status_state(service: &api::Service) -> Option<UpdateState> {
    service
        .update_status
        .as_ref()
        .map(|s| UpdateState::try_from(s.state).unwrap_or(UpdateState::Unknown))
}

/// The update config used when a service sets none (spec 7).
fn default_config() -> api::UpdateConfig {
    api::UpdateConfig {
        parallelism: 1,
        delay: None,
        failure_action: FailureAction::Pause as i32,
        monitor: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        max_failure_ratio: 0.0,
        order: UpdateOrder::StopFirst as i32,
    }
}

fn is_global(service: &api::Service) -> bool {
    matches!(
        service.spec.as_ref().and_then(|s| s.mode.as_ref()),
        Some(api::service_spec::Mode::Global(_)) | Some(api::service_spec::Mode::GlobalJob(_))
    )
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

impl Updater {
    async fn run(self: Arc<Self>, slots: Vec<Slot>) {
        let service = &self.service;
        let status = status_state(service);
        if matches!(
            status,
            Some(UpdateState::Paused) | Some(UpdateState::RollbackPaused)
        ) {
            return;
        }

        let dirty: Vec<Slot> = slots
            .into_iter()
            .filter(|slot| self.is_slot_dirty(slot))
            .collect();
        if dirty.is_empty() {
            if matches!(
                status,
                Some(UpdateState::Updating) | Some(UpdateState::RollbackStarted)
            ) {
                self.complete_update().await;
            }
            return;
        }
        if status.is_none() {
            self.start_update().await;
        }

        let spec = service.spec.clone().unwrap_or_default();
        let config = if status == Some(UpdateState::RollbackStarted) {
            spec.rollback
        } else {
            spec.update
        }
        .unwrap_or_else(default_config);
        let monitor = duration(config.monitor.as_ref()).unwrap_or(DEFAULT_MONITOR);
        let delay = duration(config.delay.as_ref()).unwrap_or_default();
        let parallelism = match config.parallelism {
            0 => dirty.len(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let mut failures = Failures {
            seen: HashSet::new(),
            total: 0,
            dirty_slots: dirty.len(),
            monitor,
            config,
        };

        // Subscribe before the first task is created so no failure goes unseen.
        let mut failure_watch = (config.failure_action != FailureAction::Continue as i32)
            .then(|| self.store.watch(WatchFilter::none().tasks()));

        let mut workers = JoinSet::new();
        let mut stopped = false;
        'slots: for slot in dirty {
            loop {
                if workers.len() < parallelism {
                    let updater = self.clone();
                    workers.spawn(async move { updater.update_slot(slot, &config, delay).await });
                    break;
                }
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => {
                        stopped = true;
                        break 'slots;
                    }
                    ev = next_event(&mut failure_watch) => {
                        if self.failure_triggers_action(ev, &mut failures).await {
                            stopped = true;
                            break 'slots;
                        }
                    }
                    _ = workers.join_next() => {}
                }
            }
        }
        while workers.join_next().await.is_some() {}

        if !stopped {
            // Watch one more period; longer than the delay so a delayed last slot is covered.
            let period = if delay >= monitor {
                delay + Duration::from_secs(1)
            } else {
                monitor
            };
            let deadline = tokio::time::sleep(period);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => {
                        stopped = true;
                        break;
                    }
                    () = &mut deadline => break,
                    ev = next_event(&mut failure_watch) => {
                        if self.failure_triggers_action(ev, &mut failures).await {
                            stopped = true;
                            break;
                        }
                    }
                }
            }
        }
        if !stopped {
            self.complete_update().await;
        }
    }

    /// Counts `ev` if it is a failure of a task this update created; applies the failure action once
    /// the failure ratio is exceeded and then returns true.
    async fn failure_triggers_action(&self, ev: Option<Event>, f: &mut Failures) -> bool {
        let Some(ev) = ev else {
            return false;
        };
        if !matches!(
            ev,
            Event::Object {
                kind: EventKind::Update,
                ..
            }
        ) {
            return false;
        }
        let Some(task) = ev.object_as::<api::Task>() else {
            return false;
        };
        if task.service_id != self.service.id
            || observed(task) <= state(api::TaskState::Running)
            || f.seen.contains(&task.id)
        {
            return false;
        }
        let started = self
            .updated_tasks
            .lock()
            .expect("updated tasks lock poisoned")
            .get(&task.id)
            .copied();
        let counts = match started {
            Some(None) => true,
            Some(Some(at)) => at.elapsed() <= f.monitor,
            None => false,
        };
        if !counts {
            return false;
        }
        f.seen.insert(task.id.clone());
        f.total += 1;
        if (f.total as f32) / (f.dirty_slots as f32) <= f.config.max_failure_ratio {
            return false;
        }
        let action =
            FailureAction::try_from(f.config.failure_action).unwrap_or(FailureAction::Pause);
        match action {
            FailureAction::Continue => false,
            FailureAction::Pause => {
                self.pause_update(format!(
                    "update paused due to failure or early termination of task {}",
                    task.id
                ))
                .await;
                true
            }
            FailureAction::Rollback => {
                // A rollback is never rolled back: it pauses instead.
                if status_state(&self.service) == Some(UpdateState::RollbackStarted) {
                    self.pause_update(format!(
                        "rollback paused due to failure or early termination of task {}",
                        task.id
                    ))
                    .await;
                } else {
                    self.rollback_update(format!(
                        "update rolled back due to failure or early termination of task {}",
                        task.id
                    ))
                    .await;
                }
                true
            }
        }
    }

    fn is_task_dirty(&self, task: &api::Task) -> bool {
        let node = self.store.view(|tx| tx.get_node(&task.node_id));
        crate::task::is_task_dirty(&self.service, task, node.as_ref())
    }

    fn is_slot_dirty(&self, slot: &Slot) -> bool {
        slot.len() > 1 || slot.first().is_some_and(|t| self.is_task_dirty(t))
    }

    /// Brings one slot to the new spec, then waits `delay`.
    async fn update_slot(self: Arc<Self>, slot: Slot, config: &api::UpdateConfig, delay: Duration) {
        let mut running = None;
        let mut clean = None;
        for t in &slot {
            if !self.is_task_dirty(t) {
                if t.desired_state == state(api::TaskState::Running) {
                    running = Some(t.clone());
                    break;
                }
                if t.desired_state < state(api::TaskState::Running) {
                    clean = Some(t.clone());
                }
            }
        }
        let result = match running.or(clean) {
            Some(existing) => self.use_existing_task(&slot, existing).await,
            None => {
                let first = &slot[0];
                let node_id = if is_global(&self.service) {
                    first.node_id.as_str()
                } else {
                    ""
                };
                let mut task = crate::task::new_task(
                    self.cluster.as_ref(),
                    &self.service,
                    first.slot,
                    node_id,
                );
                task.desired_state = state(api::TaskState::Ready);
                let id = task.id.clone();
                self.update_task(&slot, task, config.order)
                    .await
                    .inspect_err(|e| warn!(task.id = %id, error = %e, "update failed"))
            }
        };
        if let Err(e) = result {
            error!(service.id = %self.service.id, error = %e, "update of a slot failed");
        }
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => {}
            }
        }
    }

    /// Creates `updated` and shuts the slot's old tasks down before (stop-first) or after (start-first)
    /// it runs; returns once it reached RUNNING or beyond.
    async fn update_task(
        &self,
        slot: &Slot,
        updated: api::Task,
        order: i32,
    ) -> Result<(), StoreError> {
        // Subscribe before creating the task so none of its changes is missed.
        let mut watch = self.store.watch(WatchFilter::none().tasks().nodes());
        self.updated_tasks
            .lock()
            .expect("updated tasks lock poisoned")
            .insert(updated.id.clone(), None);
        let start_first = order == UpdateOrder::StartFirst as i32;
        let new_id = updated.id.clone();
        let service_id = self.service.id.clone();
        let old = slot.clone();
        let removed = self
            .store
            .update(move |tx| {
                if tx.get_service(&service_id).is_none() {
                    return Err(StoreError::Invalid("service was deleted".into()));
                }
                tx.create_task(updated)?;
                if start_first {
                    Ok(None)
                } else {
                    remove_old_tasks(tx, &old)
                }
            })
            .await?;

        if start_first {
            self.start_now(&new_id).await;
        } else {
            self.delayed_start(&mut watch, removed.as_ref(), &new_id)
                .await;
        }

        // Wait for the new task to come up.
        let reached = wait_until(&self.store, &mut watch, &self.stop, |tx| {
            match tx.get_task(&new_id) {
                None => Some(None),
                Some(t) if observed(&t) >= state(api::TaskState::Running) => {
                    Some(Some(observed(&t)))
                }
                Some(_) => None,
            }
        })
        .await;
        let Some(Some(reached)) = reached else {
            return Ok(());
        };
        self.updated_tasks
            .lock()
            .expect("updated tasks lock poisoned")
            .insert(new_id.clone(), Some(Instant::now()));
        if start_first && reached == state(api::TaskState::Running) {
            let old = slot.clone();
            if let Err(e) = self
                .store
                .update(move |tx| remove_old_tasks(tx, &old))
                .await
            {
                warn!(task.id = %new_id, error = %e, "failed to remove old task after starting replacement");
            }
        }
        Ok(())
    }

    /// Keeps `existing` (already of the new spec): shuts the slot's other tasks down and starts it
    /// if it is not desired running yet.
    async fn use_existing_task(&self, slot: &Slot, existing: api::Task) -> Result<(), StoreError> {
        let others: Vec<api::Task> = slot
            .iter()
            .filter(|t| t.id != existing.id)
            .cloned()
            .collect();
        let needs_start = existing.desired_state != state(api::TaskState::Running);
        if others.is_empty() && !needs_start {
            return Ok(());
        }
        let mut watch = self.store.watch(WatchFilter::none().tasks().nodes());
        let removed = if others.is_empty() {
            None
        } else {
            self.store
                .update(move |tx| remove_old_tasks(tx, &others))
                .await?
        };
        if needs_start {
            self.delayed_start(&mut watch, removed.as_ref(), &existing.id)
                .await;
        }
        Ok(())
    }

    /// Waits for `old` to stop (or its node to be down or gone, or a minute), then starts `new_id`.
    async fn delayed_start(&self, watch: &mut Watcher, old: Option<&api::Task>, new_id: &str) {
        if let Some(old) = old.filter(|o| observed(o) <= state(api::TaskState::Running)) {
            let (old_id, node_id) = (old.id.clone(), old.node_id.clone());
            let stopped = wait_until(&self.store, watch, &self.stop, |tx| {
                let task_done = tx
                    .get_task(&old_id)
                    .is_none_or(|t| observed(&t) > state(api::TaskState::Running));
                let node_gone = tx.get_node(&node_id).is_none_or(|n| {
                    n.status.as_ref().map(|s| s.state) == Some(api::node_status::State::Down as i32)
                });
                (task_done || node_gone).then_some(())
            });
            match tokio::time::timeout(OLD_TASK_TIMEOUT, stopped).await {
                Ok(None) => return, // cancelled
                Ok(Some(())) => {}
                Err(_) => {
                    debug!(task.id = %old_id, "old task did not stop in time; starting its replacement")
                }
            }
        }
        if !self.stop.is_cancelled() {
            self.start_now(new_id).await;
        }
    }

    /// Moves a task held at desired READY to desired RUNNING (COMPLETE for job tasks).
    async fn start_now(&self, task_id: &str) {
        let id = task_id.to_string();
        let result = self
            .store
            .update(move |tx| {
                let Some(mut t) = tx.get_task(&id) else {
                    return Ok(());
                };
                if t.desired_state >= state(api::TaskState::Running) {
                    return Ok(());
                }
                t.desired_state = if t.job_iteration.is_some() {
                    state(api::TaskState::Complete)
                } else {
                    state(api::TaskState::Running)
                };
                tx.update_task(t)
            })
            .await;
        if let Err(e) = result {
            error!(task.id = %task_id, error = %e, "moving task out of delayed state failed");
        }
    }

    /// Changes the stored service's update status with `f` (skipped when `f` returns false).
    async fn write_status(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut api::Service) -> Result<bool, StoreError> + Send + 'static,
    ) {
        let id = self.service.id.clone();
        let result = self
            .store
            .update(move |tx| {
                let Some(mut service) = tx.get_service(&id) else {
                    return Ok(());
                };
                if f(&mut service)? {
                    tx.update_service(service)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            error!(service.id = %self.service.id, error = %e, "failed to {what}");
        }
    }

    async fn start_update(&self) {
        self.write_status("mark update in progress", |s| {
            if s.update_status.is_some() {
                return Ok(false);
            }
            s.update_status = Some(api::UpdateStatus {
                state: UpdateState::Updating as i32,
                started_at: Some(now()),
                completed_at: None,
                message: "update in progress".into(),
            });
            Ok(true)
        })
        .await;
    }

    async fn pause_update(&self, message: String) {
        debug!(service.id = %self.service.id, "pausing update");
        self.write_status("pause update", move |s| {
            // No status: the service was updated since this update started.
            let Some(status) = s.update_status.as_mut() else {
                return Ok(false);
            };
            status.state = if status.state == UpdateState::RollbackStarted as i32 {
                UpdateState::RollbackPaused as i32
            } else {
                UpdateState::Paused as i32
            };
            status.message = message;
            Ok(true)
        })
        .await;
    }

    async fn rollback_update(&self, message: String) {
        debug!(service.id = %self.service.id, "starting rollback");
        self.write_status("start rollback", move |s| {
            let Some(status) = s.update_status.as_mut() else {
                return Ok(false);
            };
            status.state = UpdateState::RollbackStarted as i32;
            status.message = message;
            let Some(previous) = s.previous_spec.take() else {
                return Err(StoreError::Invalid(
                    "cannot roll back service because no previous spec is available".into(),
                ));
            };
            s.spec = Some(previous);
            s.spec_version = s.previous_spec_version.take();
            Ok(true)
        })
        .await;
    }

    async fn complete_update(&self) {
        debug!(service.id = %self.service.id, "update complete");
        self.write_status("mark update complete", |s| {
            let Some(status) = s.update_status.as_mut() else {
                return Ok(false);
            };
            if status.state == UpdateState::RollbackStarted as i32 {
                status.state = UpdateState::RollbackCompleted as i32;
                status.message = "rollback completed".into();
            } else {
                status.state = UpdateState::Completed as i32;
                status.message = "update completed".into();
            }
            status.completed_at = Some(now());
            Ok(true)
        })
        .await;
    }
}

/// Sets desired SHUTDOWN on those of `tasks` still desired to run; returns one of them.
fn remove_old_tasks(
    tx: &mut store::Tx<'_>,
    tasks: &[api::Task],
) -> Result<Option<api::Task>, StoreError> {
    let mut removed = None;
    for original in tasks {
        if original.desired_state > state(api::TaskState::Running) {
            continue;
        }
        let Some(mut t) = tx.get_task(&original.id) else {
            debug!(task.id = %original.id, "task not found while trying to shut it down");
            continue;
        };
        if t.desired_state > state(api::TaskState::Running) {
            debug!(task.id = %original.id, "task was already shut down when reached by updater");
            continue;
        }
        t.desired_state = state(api::TaskState::Shutdown);
        tx.update_task(t)?;
        removed = Some(original.clone());
    }
    Ok(removed)
}

/// The next event of an optional watch; pending forever without one.
async fn next_event(watch: &mut Option<Watcher>) -> Option<Event> {
    match watch {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

/// Evaluates `check` on the store now and after every commit seen by `watch` until it returns
/// `Some`; `None` when `stop` fires or the store goes away.
async fn wait_until<T>(
    store: &MemoryStore,
    watch: &mut Watcher,
    stop: &CancellationToken,
    mut check: impl FnMut(&ReadTx<'_>) -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = store.view(&mut check) {
            return Some(v);
        }
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                ev = watch.recv() => match ev {
                    Some(Event::Commit { .. }) => break,
                    Some(_) => {}
                    None => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
