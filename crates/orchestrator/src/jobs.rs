//! The jobs orchestrator (spec 5.3 "Jobs", after SwarmKit's `manager/orchestrator/jobs`): one loop for
//! replicated jobs (`total_completions` tasks, at most `max_concurrent` at once, slots from 0) and global
//! jobs (one task per eligible node). Job tasks are desired COMPLETE; failed ones are restarted per the
//! restart policy (never after COMPLETE); a service update bumps `job_iteration` (control API) and the
//! tasks of older iterations get desired REMOVE (the task reaper deletes them). Replicated and global
//! *services* are left to their own orchestrators.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use store::{By, Event, EventKind, MemoryStore, StoreError, WatchFilter};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span};

use crate::task::{new_task, restart_delay};

pub use crate::Error;

/// Reconciles replicated and global jobs against their tasks and the nodes.
pub struct JobsOrchestrator {
    store: MemoryStore,
    /// Delayed starts of restarted tasks (desired READY -> COMPLETE after the restart delay); aborted
    /// when the orchestrator stops.
    delayed: JoinSet<()>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum JobKind {
    Replicated { max_concurrent: u64, total: u64 },
    Global,
}

fn job_kind(service: &api::Service) -> Option<JobKind> {
    match service.spec.as_ref()?.mode.as_ref()? {
        api::service_spec::Mode::ReplicatedJob(j) => Some(JobKind::Replicated {
            max_concurrent: j.max_concurrent,
            total: j.total_completions,
        }),
        api::service_spec::Mode::GlobalJob(_) => Some(JobKind::Global),
        _ => None,
    }
}

fn observed(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

const fn st(s: api::TaskState) -> i32 {
    s as i32
}

const COMPLETE: i32 = st(api::TaskState::Complete);

fn iteration(service: &api::Service) -> u64 {
    service
        .job_status
        .as_ref()
        .and_then(|j| j.job_iteration)
        .map_or(0, |v| v.index)
}

/// What the restart policy allows for a failed job task whose slot (or node) has seen `failures`
/// failed tasks in this iteration, this one included.
fn may_restart(task: &api::Task, failures: u64) -> bool {
    let policy = task.spec.as_ref().and_then(|s| s.restart.as_ref());
    let condition = policy.map_or(api::restart_policy::RestartCondition::Any as i32, |p| {
        p.condition
    });
    if condition == api::restart_policy::RestartCondition::None as i32 {
        return false;
    }
    // ANY and ON_FAILURE both restart a failed job task; a COMPLETE one is never restarted.
    if observed(task) <= COMPLETE {
        return false;
    }
    let max = policy.map_or(0, |p| p.max_attempts);
    max == 0 || failures <= max
}

/// The writes one reconcile pass decided on.
#[derive(Default)]
struct Plan {
    create: Vec<api::Task>,
    /// Failed tasks to replace: the old task is shut down and a copy of the spec started after a delay.
    restart: Vec<api::Task>,
    /// Failed tasks that may not be restarted: shut down only.
    give_up: Vec<String>,
    remove: Vec<String>,
    shutdown: Vec<String>,
}

impl JobsOrchestrator {
    /// An orchestrator for the jobs in `store`.
    pub fn new(store: MemoryStore) -> Self {
        JobsOrchestrator {
            store,
            delayed: JoinSet::new(),
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the orchestrator cannot go on.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let (services, mut events) = self
            .store
            .view_and_watch(WatchFilter::none().services().tasks().nodes(), |tx| {
                tx.find_services(By::All)
            });
        for service in services.iter().filter(|s| job_kind(s).is_some()) {
            self.reconcile(&service.id).await;
        }
        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => break Err(Error::WatchClosed),
                },
                Some(_) = self.delayed.join_next(), if !self.delayed.is_empty() => {}
            }
        };
        self.delayed.abort_all();
        result
    }

    async fn handle(&mut self, ev: Event) {
        let Event::Object { kind, .. } = &ev else {
            return;
        };
        if let Some(service) = ev.object_as::<api::Service>() {
            if job_kind(service).is_none() {
                return;
            }
            if *kind == EventKind::Remove {
                self.remove_service_tasks(&service.id).await;
            } else {
                self.reconcile(&service.id).await;
            }
        } else if let Some(task) = ev.object_as::<api::Task>() {
            // A job task that stopped (completed or failed) while still wanted may free a slot.
            if *kind == EventKind::Update
                && observed(task) > st(api::TaskState::Running)
                && task.desired_state <= COMPLETE
            {
                let service = self.store.view(|tx| tx.get_service(&task.service_id));
                if service.as_ref().and_then(job_kind).is_some() {
                    self.reconcile(&task.service_id).await;
                }
            }
        } else if ev.object_as::<api::Node>().is_some() {
            // New, returning or drained nodes change where global jobs run.
            let globals: Vec<String> = self.store.view(|tx| {
                tx.find_services(By::All)
                    .into_iter()
                    .filter(|s| job_kind(s) == Some(JobKind::Global))
                    .map(|s| s.id)
                    .collect()
            });
            for id in globals {
                self.reconcile(&id).await;
            }
        }
    }

    /// One reconcile pass over a job service; failures are logged.
    async fn reconcile(&mut self, service_id: &str) {
        let span = info_span!("jobs", service.id = %service_id);
        async {
            let (service, tasks, nodes, cluster) = self.store.view(|tx| {
                (
                    tx.get_service(service_id),
                    tx.find_tasks(By::ServiceId(service_id)),
                    tx.find_nodes(By::All),
                    tx.find_clusters(By::All).into_iter().next(),
                )
            });
            let Some(service) = service else {
                return;
            };
            let plan = match job_kind(&service) {
                Some(JobKind::Replicated {
                    max_concurrent,
                    total,
                }) => plan_replicated(&service, &tasks, max_concurrent, total, cluster.as_ref()),
                Some(JobKind::Global) => plan_global(&service, &tasks, &nodes, cluster.as_ref()),
                None => return,
            };
            if let Err(e) = self.apply(plan, &service, cluster.as_ref()).await {
                error!(error = %e, "error reconciling job");
            }
        }
        .instrument(span)
        .await;
    }

    async fn apply(
        &mut self,
        plan: Plan,
        service: &api::Service,
        cluster: Option<&api::Cluster>,
    ) -> Result<(), StoreError> {
        let Plan {
            create,
            restart,
            give_up,
            remove,
            shutdown,
        } = plan;
        if create.is_empty()
            && restart.is_empty()
            && give_up.is_empty()
            && remove.is_empty()
            && shutdown.is_empty()
        {
            return Ok(());
        }
        let replacements: Vec<(api::Task, Duration)> = restart
            .iter()
            .map(|old| {
                let mut t = new_task(cluster, service, old.slot, &old.node_id);
                t.job_iteration = old.job_iteration;
                t.desired_state = st(api::TaskState::Ready);
                (t, restart_delay(old))
            })
            .collect();
        let writes = replacements.clone();
        let restarted: Vec<String> = restart.iter().map(|t| t.id.clone()).collect();
        self.store
            .update(move |tx| {
                for t in create {
                    tx.create_task(t)?;
                }
                for (old_id, (new, _)) in restarted.iter().zip(writes) {
                    let Some(mut old) = tx.get_task(old_id) else {
                        continue;
                    };
                    if old.desired_state > COMPLETE {
                        continue;
                    }
                    old.desired_state = st(api::TaskState::Shutdown);
                    tx.update_task(old)?;
                    tx.create_task(new)?;
                }
                for id in give_up.iter().chain(&shutdown) {
                    if let Some(mut t) = tx.get_task(id)
                        && t.desired_state <= COMPLETE
                    {
                        t.desired_state = st(api::TaskState::Shutdown);
                        tx.update_task(t)?;
                    }
                }
                for id in &remove {
                    if let Some(mut t) = tx.get_task(id)
                        && t.desired_state != st(api::TaskState::Remove)
                    {
                        t.desired_state = st(api::TaskState::Remove);
                        tx.update_task(t)?;
                    }
                }
                Ok(())
            })
            .await?;
        for (task, delay) in replacements {
            let store = self.store.clone();
            self.delayed.spawn(async move {
                tokio::time::sleep(delay).await;
                let id = task.id.clone();
                let result = store
                    .update(move |tx| {
                        if let Some(mut t) = tx.get_task(&id)
                            && t.desired_state < st(api::TaskState::Running)
                        {
                            t.desired_state = COMPLETE;
                            tx.update_task(t)?;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(e) = result {
                    error!(task.id = %task.id, error = %e, "moving task out of delayed state failed");
                }
            });
        }
        Ok(())
    }

    /// A deleted job's tasks all get desired REMOVE.
    async fn remove_service_tasks(&self, service_id: &str) {
        let ids: Vec<String> = self.store.view(|tx| {
            tx.find_tasks(By::ServiceId(service_id))
                .into_iter()
                .map(|t| t.id)
                .collect()
        });
        let errors = self
            .store
            .batch(&ids, |tx, id| {
                let Some(mut t) = tx.get_task(id) else {
                    return Ok(());
                };
                if t.desired_state == st(api::TaskState::Remove) {
                    return Ok(());
                }
                t.desired_state = st(api::TaskState::Remove);
                tx.update_task(t)
            })
            .await;
        for e in errors {
            error!(service.id = %service_id, error = %e, "failed to remove tasks of deleted job");
        }
    }
}

fn new_job_task(
    service: &api::Service,
    cluster: Option<&api::Cluster>,
    slot: u64,
    node_id: &str,
) -> api::Task {
    let mut t = new_task(cluster, service, slot, node_id);
    t.job_iteration = Some(api::Version {
        index: iteration(service),
    });
    t.desired_state = COMPLETE;
    t
}

/// Failed tasks per slot (replicated) or node (global) in the current iteration.
fn failures<K: std::hash::Hash + Eq>(
    tasks: &[&api::Task],
    key: impl Fn(&api::Task) -> K,
) -> HashMap<K, u64> {
    let mut counts = HashMap::new();
    for t in tasks.iter().filter(|t| observed(t) > COMPLETE) {
        *counts.entry(key(t)).or_insert(0) += 1;
    }
    counts
}

fn plan_replicated(
    service: &api::Service,
    tasks: &[api::Task],
    max_concurrent: u64,
    total: u64,
    cluster: Option<&api::Cluster>,
) -> Plan {
    let current = iteration(service);
    let mut plan = Plan::default();
    let this: Vec<&api::Task> = tasks
        .iter()
        .filter(|t| t.job_iteration.is_some_and(|v| v.index == current))
        .collect();
    for t in tasks
        .iter()
        .filter(|t| t.job_iteration.is_some_and(|v| v.index != current))
    {
        if observed(t) <= st(api::TaskState::Running)
            && t.desired_state != st(api::TaskState::Remove)
        {
            plan.remove.push(t.id.clone());
        }
    }
    let failed = failures(&this, |t| t.slot);
    let (mut running, mut complete) = (0u64, 0u64);
    let mut occupied = BTreeSet::new();
    for t in &this {
        if observed(t) == COMPLETE {
            complete += 1;
            occupied.insert(t.slot);
        } else if t.desired_state <= COMPLETE {
            running += 1;
            occupied.insert(t.slot);
            if observed(t) > COMPLETE {
                if may_restart(t, failed.get(&t.slot).copied().unwrap_or(0)) {
                    plan.restart.push((*t).clone());
                } else {
                    plan.give_up.push(t.id.clone());
                }
            }
        } else if observed(t) > COMPLETE
            && !may_restart(t, failed.get(&t.slot).copied().unwrap_or(0))
            && !this
                .iter()
                .any(|o| o.slot == t.slot && o.desired_state <= COMPLETE)
        {
            // A slot whose failures exhausted the restart policy stays taken.
            occupied.insert(t.slot);
        }
    }
    // Given-up slots no longer run.
    running -= plan.give_up.len() as u64;
    let new = max_concurrent
        .saturating_sub(running)
        .min(total.saturating_sub(complete + running + plan.give_up.len() as u64));
    let mut free = (0..total).filter(|s| !occupied.contains(s));
    for _ in 0..new {
        let Some(slot) = free.next() else {
            break;
        };
        plan.create.push(new_job_task(service, cluster, slot, ""));
    }
    debug!(running, complete, new, "replicated job reconciled");
    plan
}

fn plan_global(
    service: &api::Service,
    tasks: &[api::Task],
    nodes: &[api::Node],
    cluster: Option<&api::Cluster>,
) -> Plan {
    let current = iteration(service);
    let mut plan = Plan::default();
    let constraints = crate::task::service_constraints(service);
    let this: Vec<&api::Task> = tasks
        .iter()
        .filter(|t| t.job_iteration.is_some_and(|v| v.index == current))
        .collect();
    for t in tasks
        .iter()
        .filter(|t| t.job_iteration.is_some_and(|v| v.index != current))
    {
        if t.desired_state != st(api::TaskState::Remove) {
            plan.remove.push(t.id.clone());
        }
    }
    let failed = failures(&this, |t| t.node_id.clone());
    let mut occupied: HashMap<String, String> = HashMap::new();
    for t in &this {
        let failures = failed.get(&t.node_id).copied().unwrap_or(0);
        if t.desired_state <= COMPLETE {
            occupied.insert(t.node_id.clone(), t.id.clone());
            if observed(t) > COMPLETE {
                if may_restart(t, failures) {
                    plan.restart.push((*t).clone());
                } else {
                    plan.give_up.push(t.id.clone());
                }
            }
        } else if observed(t) > COMPLETE && !may_restart(t, failures) {
            occupied.entry(t.node_id.clone()).or_default();
        }
    }
    let mut invalid = HashSet::new();
    for node in nodes
        .iter()
        .filter(|n| api::constraint::node_matches(&constraints, n))
    {
        if crate::task::invalid_node(Some(node)) {
            invalid.insert(node.id.clone());
            continue;
        }
        let active = node
            .spec
            .as_ref()
            .is_none_or(|s| s.availability == api::node_spec::Availability::Active as i32);
        let ready =
            node.status.as_ref().map(|s| s.state) == Some(api::node_status::State::Ready as i32);
        if active && ready && !occupied.contains_key(&node.id) {
            plan.create
                .push(new_job_task(service, cluster, 0, &node.id));
        }
    }
    for t in &this {
        if invalid.contains(&t.node_id)
            && t.desired_state <= COMPLETE
            && observed(t) <= st(api::TaskState::Running)
        {
            plan.shutdown.push(t.id.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests;
