//! The replicated orchestrator (spec 5.3 "Replicated", after SwarmKit's
//! `manager/orchestrator/replicated`): keeps `replicas` slots of every replicated service occupied.
//!
//! Task level: a task that stopped (observed > RUNNING) while still wanted, or whose node is DOWN,
//! DRAIN-ed or deleted, is handed to the [`RestartSupervisor`], which replaces it in the same slot
//! as its restart policy allows. Service level: on start and whenever a service changes or a wanted
//! task disappears, slots are counted (a slot is runnable if a task of it is desired to run, or its
//! newest task may not be restarted any more); missing slots get new tasks in the lowest free slot
//! numbers, surplus slots get desired REMOVE, and the runnable slots go to the [`UpdateSupervisor`],
//! which replaces outdated tasks. A deleted service's tasks get desired REMOVE. Deleting stopped tasks
//! is the task reaper's job; jobs and global services are other orchestrators'.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use store::{By, Event, EventKind, MemoryStore, ReadTx};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Error;
use crate::reconcile::{self, Reconciler};
use crate::restart::RestartSupervisor;
use crate::task::{
    delete_task_if_present, in_batches, invalid_node, is_replicated, new_task, observed,
    set_desired, state,
};
use crate::update::{Slot, UpdateSupervisor};

/// Reconciles replicated services with their tasks.
pub struct ReplicatedOrchestrator {
    store: MemoryStore,
    /// The cluster object, for task defaults (log driver).
    cluster: Option<api::Cluster>,
    /// Services to reconcile at the next commit.
    reconcile_services: BTreeSet<String>,
    /// Tasks to hand to the restart supervisor at the next commit.
    restart_tasks: BTreeSet<String>,
    /// Deleted services whose tasks get desired REMOVE at the next commit.
    removed_services: BTreeSet<String>,
    updater: UpdateSupervisor,
    restarts: RestartSupervisor,
}

/// One write of a reconcile pass.
enum Write {
    /// A new task in this slot, made in the transaction that writes it: a scale-up by thousands
    /// holds a batch's worth of new tasks at a time, not all of them.
    Create(u64),
    /// Desired state REMOVE (scale down).
    Remove(String),
    /// Deletes a task of a dead slot.
    Delete(String),
}

impl ReplicatedOrchestrator {
    /// An orchestrator for the replicated services in `store`, with its own restart and update
    /// supervisors.
    pub fn new(store: MemoryStore) -> Self {
        ReplicatedOrchestrator {
            updater: UpdateSupervisor::new(store.clone()),
            restarts: RestartSupervisor::new(store.clone()),
            store,
            cluster: None,
            reconcile_services: BTreeSet::new(),
            restart_tasks: BTreeSet::new(),
            removed_services: BTreeSet::new(),
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the orchestrator cannot go on (its watch ended).
    /// Pending delayed starts and running updates are cancelled when it returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        reconcile::run(&mut self, &shutdown).await
    }

    fn replicated_service(&self, service_id: &str) -> Option<api::Service> {
        if service_id.is_empty() {
            return None;
        }
        self.store
            .view(|tx| tx.get_service(service_id))
            .filter(is_replicated)
    }

    /// A task update from the agent or another subsystem: a stopped task, or one on a node that
    /// went away, is restarted at the next commit.
    fn handle_task_change(&mut self, task: &api::Task) {
        if task.desired_state > state(api::TaskState::Running) {
            return;
        }
        let (service, node) = self
            .store
            .view(|tx| (tx.get_service(&task.service_id), tx.get_node(&task.node_id)));
        if service.as_ref().is_some_and(is_replicated) && needs_restart(task, node.as_ref()) {
            self.restart_tasks.insert(task.id.clone());
        }
    }

    fn restart_tasks_on_node(&mut self, node_id: &str) {
        let ids: Vec<String> = self.store.view(|tx| {
            tx.find_tasks(By::NodeId(node_id))
                .into_iter()
                .filter(|t| {
                    t.desired_state <= state(api::TaskState::Running)
                        && tx
                            .get_service(&t.service_id)
                            .is_some_and(|s| is_replicated(&s))
                })
                .map(|t| t.id)
                .collect()
        });
        self.restart_tasks.extend(ids);
    }

    /// Brings `service` to its replica count and hands its runnable slots to the updater.
    async fn reconcile(&self, service: &api::Service) {
        let replicas = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(api::service_spec::Mode::Replicated(r)) => r.replicas,
            _ => return,
        };
        let tasks = self
            .store
            .view(|tx| tx.find_tasks(By::ServiceId(&service.id)));
        let (runnable, mut dead) = self.runnable_and_dead_slots(service, tasks);
        let current = runnable.len() as u64;
        let mut writes = Vec::new();

        match replicas.cmp(&current) {
            Ordering::Greater => {
                debug!(service.id = %service.id, from = current, to = replicas, "scaling up");
                self.updater.update(
                    self.cluster.as_ref(),
                    service,
                    runnable.values().cloned().collect(),
                );
                let mut slot = 0;
                for _ in current..replicas {
                    slot += 1;
                    while runnable.contains_key(&slot) {
                        slot += 1;
                    }
                    // A dead slot reused keeps its history.
                    dead.remove(&slot);
                    writes.push(Write::Create(slot));
                }
            }
            Ordering::Less => {
                debug!(service.id = %service.id, from = current, to = replicas, "scaling down");
                let ranked = rank_slots_to_keep(runnable.into_values().collect());
                let keep = usize::try_from(replicas).unwrap_or(usize::MAX);
                self.updater
                    .update(self.cluster.as_ref(), service, ranked[..keep].to_vec());
                for slot in &ranked[keep..] {
                    writes.extend(slot.iter().map(|t| Write::Remove(t.id.clone())));
                }
            }
            Ordering::Equal => {
                self.updater.update(
                    self.cluster.as_ref(),
                    service,
                    runnable.into_values().collect(),
                );
            }
        }
        // Dead slots not reused are cleared, whatever the direction (as SwarmKit).
        writes.extend(dead.into_values().flatten().map(|t| Write::Delete(t.id)));
        if writes.is_empty() {
            return;
        }
        in_batches(
            &self.store,
            writes,
            "reconcile replicated service",
            |tx, write| match write {
                Write::Create(slot) => {
                    tx.create_task(new_task(self.cluster.as_ref(), service, *slot, ""))
                }
                Write::Remove(id) => set_desired(tx, id, api::TaskState::Remove).map(drop),
                Write::Delete(id) => delete_task_if_present(tx, id),
            },
        )
        .await;
    }

    /// Splits the tasks of `service` by slot into runnable slots (the tasks the updater should see)
    /// and dead slots (every task stopped and the newest one will be restarted, or was scaled away).
    fn runnable_and_dead_slots(
        &self,
        service: &api::Service,
        tasks: Vec<api::Task>,
    ) -> (BTreeMap<u64, Slot>, BTreeMap<u64, Slot>) {
        let mut by_slot: BTreeMap<u64, Slot> = BTreeMap::new();
        for t in tasks {
            by_slot.entry(t.slot).or_default().push(t);
        }
        let mut runnable = BTreeMap::new();
        let mut dead = BTreeMap::new();
        for (number, slot) in by_slot {
            let updatable = self.restarts.updatable_tasks_in_slot(&slot, service);
            if updatable.is_empty() {
                dead.insert(number, slot);
            } else {
                runnable.insert(number, updatable);
            }
        }
        (runnable, dead)
    }
}

/// Whether a task desired to run must be replaced: it stopped, or its node is DOWN, DRAIN-ed or
/// gone (`node` is the task's node; tasks not yet assigned have none and are left alone).
fn needs_restart(task: &api::Task, node: Option<&api::Node>) -> bool {
    task.desired_state <= state(api::TaskState::Running)
        && (observed(task) > state(api::TaskState::Running)
            || (!task.node_id.is_empty() && invalid_node(node)))
}

/// Orders slots from most to least worth keeping when scaling down: the k-th slot of the service on
/// a node ranks after every slot that is the j-th (j < k) on its node, so the survivors stay spread
/// evenly; slots without a node or with several tasks rank last; among equals, slots with a RUNNING
/// task first, then lower slot numbers.
fn rank_slots_to_keep(mut slots: Vec<Slot>) -> Vec<Slot> {
    let running = |slot: &Slot| {
        slot.iter()
            .any(|t| observed(t) == state(api::TaskState::Running))
    };
    slots.sort_by(|a, b| {
        running(b)
            .cmp(&running(a))
            .then_with(|| a[0].slot.cmp(&b[0].slot))
    });
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut indexed: Vec<(Option<usize>, Slot)> = slots
        .into_iter()
        .map(|slot| {
            let index = (slot.len() == 1 && !slot[0].node_id.is_empty()).then(|| {
                let n = per_node.entry(slot[0].node_id.clone()).or_default();
                *n += 1;
                *n
            });
            (index, slot)
        })
        .collect();
    indexed.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    indexed.into_iter().map(|(_, slot)| slot).collect()
}

/// Sets every task of a deleted service to desired REMOVE; the agent stops them and the task
/// reaper deletes them.
pub(crate) async fn remove_service_tasks(store: &MemoryStore, service_id: &str) {
    let ids: Vec<String> = store.view(|tx: &ReadTx<'_>| {
        tx.find_tasks(By::ServiceId(service_id))
            .into_iter()
            .filter(|t| t.desired_state < state(api::TaskState::Remove))
            .map(|t| t.id)
            .collect()
    });
    in_batches(
        store,
        ids,
        "set tasks of a deleted service to REMOVE",
        |tx, id| set_desired(tx, id, api::TaskState::Remove).map(drop),
    )
    .await;
}

impl Reconciler for ReplicatedOrchestrator {
    fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Every removal (it may free a slot, and cancels a delayed start), and the creates and updates
    /// of tasks [`needs_restart`] could hold for when `handle` reads the store: stopped ones, and
    /// ones whose node is invalid now. A task on a node valid now is left out: should the node turn
    /// DOWN, DRAIN or go later, its event comes after this one and restarts the node's tasks.
    fn wants(event: &Event, tx: &ReadTx<'_>) -> bool {
        let Event::Object { kind, .. } = event else {
            return true;
        };
        let Some(task) = event.object_as::<api::Task>() else {
            return true;
        };
        *kind == EventKind::Remove
            || (task.desired_state <= state(api::TaskState::Running)
                && (observed(task) > state(api::TaskState::Running)
                    || (!task.node_id.is_empty()
                        && invalid_node(tx.get_shared::<api::Node>(&task.node_id).as_deref()))))
    }

    fn set_cluster(&mut self, cluster: Option<api::Cluster>) {
        self.cluster = cluster;
    }

    /// Start-up: deletes tasks of services that no longer exist, queues restarts of tasks that
    /// stopped or sit on invalid nodes while the previous leader was away, resumes the delayed
    /// starts it left, rebuilds the restart history, and reconciles every replicated service.
    async fn init(
        &mut self,
        services: Vec<api::Service>,
        tasks: Vec<api::Task>,
        nodes: Vec<api::Node>,
    ) {
        let services: HashMap<String, api::Service> =
            services.into_iter().map(|s| (s.id.clone(), s)).collect();
        let nodes: HashMap<String, api::Node> =
            nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        let mut orphans = Vec::new();
        let mut held = Vec::new();
        let mut by_service: HashMap<&str, Vec<api::Task>> = HashMap::new();
        for t in &tasks {
            if t.service_id.is_empty() {
                continue;
            }
            let Some(service) = services.get(&t.service_id) else {
                orphans.push(t.id.clone());
                continue;
            };
            if !is_replicated(service) {
                continue;
            }
            by_service.entry(&service.id).or_default().push(t.clone());
            if needs_restart(t, nodes.get(&t.node_id)) {
                self.restart_tasks.insert(t.id.clone());
            }
            if t.desired_state == state(api::TaskState::Ready) {
                held.push(t.id.clone());
            }
        }
        for (id, tasks) in &by_service {
            self.restarts.rebuild_history(&services[*id], tasks);
        }
        self.reconcile_services.extend(
            services
                .values()
                .filter(|s| is_replicated(s))
                .map(|s| s.id.clone()),
        );
        info!(
            services = self.reconcile_services.len(),
            restarts = self.restart_tasks.len(),
            "replicated orchestrator started"
        );

        in_batches(
            &self.store,
            orphans,
            "delete tasks of deleted services",
            |tx, id| delete_task_if_present(tx, id),
        )
        .await;
        self.restarts.resume_delayed_starts(held).await;
        self.tick().await;
    }

    fn handle(&mut self, ev: &Event) {
        let Event::Object { kind, .. } = ev else {
            return;
        };
        if let Some(task) = ev.object_as::<api::Task>() {
            match kind {
                EventKind::Remove => {
                    // A wanted task disappeared (e.g. `task rm`): its slot needs a new one.
                    if task.desired_state <= state(api::TaskState::Running)
                        && self.replicated_service(&task.service_id).is_some()
                    {
                        self.reconcile_services.insert(task.service_id.clone());
                    }
                    self.restarts.cancel(&task.id);
                }
                EventKind::Create | EventKind::Update => self.handle_task_change(task),
            }
        } else if let Some(node) = ev.object_as::<api::Node>() {
            if *kind == EventKind::Remove || invalid_node(Some(node)) {
                self.restart_tasks_on_node(&node.id);
            }
        } else if let Some(service) = ev.object_as::<api::Service>() {
            if !is_replicated(service) {
                return;
            }
            if *kind == EventKind::Remove {
                self.reconcile_services.remove(&service.id);
                self.restarts.clear_service_history(&service.id);
                self.updater.cancel(&service.id);
                self.removed_services.insert(service.id.clone());
            } else {
                self.reconcile_services.insert(service.id.clone());
            }
        }
    }

    /// Handles what the events since the last commit asked for: tasks of deleted services first,
    /// then restarts (so a reconcile sees the replacements), then service reconciliation.
    async fn tick(&mut self) {
        for id in std::mem::take(&mut self.removed_services) {
            remove_service_tasks(&self.store, &id).await;
        }
        if !self.restart_tasks.is_empty() {
            let ids: Vec<String> = std::mem::take(&mut self.restart_tasks)
                .into_iter()
                .collect();
            let restarts = self.restarts.clone();
            let cluster = self.cluster.clone();
            in_batches(&self.store, ids, "restart tasks", move |tx, id| {
                let Some(task) = tx.get_task(id) else {
                    return Ok(());
                };
                if task.desired_state > state(api::TaskState::Running) {
                    return Ok(());
                }
                match tx.get_service(&task.service_id) {
                    Some(service) if is_replicated(&service) => {
                        restarts.restart(tx, cluster.as_ref(), &service, &task)
                    }
                    _ => Ok(()),
                }
            })
            .await;
        }
        for id in std::mem::take(&mut self.reconcile_services) {
            if let Some(service) = self.replicated_service(&id) {
                self.reconcile(&service).await;
            }
        }
    }

    fn stop(&mut self) {
        self.updater.cancel_all();
        self.restarts.cancel_all();
    }
}

#[cfg(test)]
pub(crate) mod tests;
