//! The global orchestrator (spec 5.3 "Global", after SwarmKit's `manager/orchestrator/global`): one
//! task of every global service on every eligible node.
//!
//! A node is eligible while it is neither DOWN nor DRAIN-ed and it satisfies the service's
//! placement constraints. An eligible node without a task of the service gets one (slot 0, node
//! preset, so the scheduler only confirms it); a PAUSE-d node keeps what it has but gets nothing
//! new; a node that stops being eligible has its tasks set to desired SHUTDOWN, and a deleted
//! node's tasks are deleted. A task that stops while wanted goes to the [`RestartSupervisor`],
//! which replaces it on the same node as its restart policy allows; outdated tasks go to the
//! [`UpdateSupervisor`], one slot per node. Work is collected from store events and done at each
//! commit, in batched transactions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use store::{By, Event, EventKind, MemoryStore, ReadTx};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Error;
use crate::reconcile::{self, Reconciler};
use crate::replicated::remove_service_tasks;
use crate::restart::RestartSupervisor;
use crate::task::{
    delete_task_if_present, in_batches, invalid_node, is_global, is_task_dirty, new_task, observed,
    service_constraints, set_desired, state,
};
use crate::update::{Slot, UpdateSupervisor};

/// A global service with its placement constraints parsed once.
struct GlobalService {
    service: api::Service,
    constraints: Vec<api::constraint::Constraint>,
}

impl GlobalService {
    fn new(service: api::Service) -> Self {
        GlobalService {
            constraints: service_constraints(&service),
            service,
        }
    }

    fn fits(&self, node: &api::Node) -> bool {
        api::constraint::node_matches(&self.constraints, node)
    }
}

/// One write of a reconcile pass.
enum Write<'a> {
    /// A new task of this service on this node, made in the transaction that writes it (as the
    /// replicated orchestrator's): a service new to thousands of nodes holds a batch's worth of
    /// new tasks at a time, not all of them.
    Create(&'a api::Service, &'a str),
    /// Desired state SHUTDOWN.
    Shutdown(String),
    Delete(String),
}

/// Reconciles global services with the nodes of the cluster.
pub struct GlobalOrchestrator {
    store: MemoryStore,
    /// The cluster object, for task defaults (log driver).
    cluster: Option<api::Cluster>,
    /// Nodes that may run tasks: every node but DOWN and DRAIN-ed ones.
    nodes: HashMap<String, api::Node>,
    /// The global services.
    services: HashMap<String, GlobalService>,
    /// Services to reconcile over every node at the next commit.
    reconcile_services: BTreeSet<String>,
    /// Nodes to reconcile against every service at the next commit.
    reconcile_nodes: BTreeSet<String>,
    /// Stopped tasks to restart at the next commit.
    restart_tasks: BTreeSet<String>,
    /// Deleted services whose tasks get desired REMOVE at the next commit.
    removed_services: BTreeSet<String>,
    /// Deleted nodes whose global tasks are deleted at the next commit.
    removed_nodes: BTreeSet<String>,
    updater: UpdateSupervisor,
    restarts: RestartSupervisor,
}

impl GlobalOrchestrator {
    /// An orchestrator for the global services in `store`, with its own restart and update
    /// supervisors.
    pub fn new(store: MemoryStore) -> Self {
        GlobalOrchestrator {
            updater: UpdateSupervisor::new(store.clone()),
            restarts: RestartSupervisor::new(store.clone()),
            store,
            cluster: None,
            nodes: HashMap::new(),
            services: HashMap::new(),
            reconcile_services: BTreeSet::new(),
            reconcile_nodes: BTreeSet::new(),
            restart_tasks: BTreeSet::new(),
            removed_services: BTreeSet::new(),
            removed_nodes: BTreeSet::new(),
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the orchestrator cannot go on (its watch ended).
    /// Pending delayed starts and running updates are cancelled when it returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        reconcile::run(&mut self, &shutdown).await
    }

    /// Keeps `node` among the nodes that may run tasks unless it is DOWN or DRAIN-ed.
    fn update_node(&mut self, node: api::Node) {
        if invalid_node(Some(&node)) {
            self.nodes.remove(&node.id);
        } else {
            self.nodes.insert(node.id.clone(), node);
        }
    }

    /// Restarts the queued stopped tasks; one on a node that is paused or no longer fits the
    /// service is only shut down, and one whose node went away is left to node reconciliation.
    async fn restart_stopped_tasks(&mut self) {
        if self.restart_tasks.is_empty() {
            return;
        }
        let ids: Vec<String> = std::mem::take(&mut self.restart_tasks)
            .into_iter()
            .collect();
        let restarts = self.restarts.clone();
        let cluster = self.cluster.clone();
        let this = &*self;
        in_batches(&self.store, ids, "restart global tasks", move |tx, id| {
            let Some(task) = tx.get_task(id) else {
                return Ok(());
            };
            if task.desired_state > state(api::TaskState::Running) {
                return Ok(());
            }
            let (Some(node), Some(entry)) = (
                this.nodes.get(&task.node_id),
                this.services.get(&task.service_id),
            ) else {
                return Ok(());
            };
            let Some(service) = tx.get_service(&task.service_id) else {
                return Ok(());
            };
            if is_paused(node) || !entry.fits(node) {
                return set_desired(tx, id, api::TaskState::Shutdown).map(drop);
            }
            restarts.restart(tx, cluster.as_ref(), &service, &task)
        })
        .await;
    }

    /// Brings one node in line with every global service: a node that went DOWN or DRAIN-ed loses
    /// its tasks; a paused one is left as is; otherwise each service it fits has exactly one
    /// up-to-date task there (a new one when none is clean), and each it does not fit has none.
    async fn reconcile_node(&self, node_id: &str) {
        let tasks = self.store.view(|tx| tx.find_tasks(By::NodeId(node_id)));
        let ours = tasks
            .into_iter()
            .filter(|t| self.services.contains_key(&t.service_id));
        let Some(node) = self.nodes.get(node_id) else {
            // DOWN or DRAIN-ed (deleted nodes are handled in `tick`).
            let writes: Vec<Write> = ours
                .filter(|t| t.desired_state < state(api::TaskState::Shutdown))
                .map(|t| Write::Shutdown(t.id))
                .collect();
            if !writes.is_empty() {
                debug!(node.id = %node_id, "node down or drained: shutting down its global tasks");
            }
            apply(
                &self.store,
                self.cluster.as_ref(),
                writes,
                "shut down global tasks",
            )
            .await;
            return;
        };
        if is_paused(node) {
            return;
        }
        let mut by_service: BTreeMap<String, Vec<api::Task>> = BTreeMap::new();
        for t in ours {
            by_service.entry(t.service_id.clone()).or_default().push(t);
        }
        let mut writes = Vec::new();
        for (id, entry) in &self.services {
            let slot = by_service.remove(id).unwrap_or_default();
            let live = self.restarts.updatable_tasks_in_slot(&slot, &entry.service);
            if !entry.fits(node) {
                writes.extend(shutdown_writes(&live));
                continue;
            }
            let (clean, dirty): (Vec<api::Task>, Vec<api::Task>) = live
                .into_iter()
                .partition(|t| !is_task_dirty(&entry.service, t, Some(node)));
            match clean.split_first() {
                Some((_, extra)) => writes.extend(shutdown_writes(extra)),
                None => writes.push(Write::Create(&entry.service, node_id)),
            }
            writes.extend(shutdown_writes(&dirty));
        }
        apply(
            &self.store,
            self.cluster.as_ref(),
            writes,
            "reconcile node's global tasks",
        )
        .await;
    }

    /// Brings one service in line with every node: a task on each eligible node it fits (paused
    /// nodes keep what they have), none elsewhere; the existing tasks go to the updater, one slot
    /// per node.
    async fn reconcile_service(&self, service_id: &str) {
        let Some(entry) = self.services.get(service_id) else {
            return;
        };
        let service = &entry.service;
        let tasks = self
            .store
            .view(|tx| tx.find_tasks(By::ServiceId(service_id)));
        let mut by_node: BTreeMap<String, Slot> = BTreeMap::new();
        for t in tasks {
            by_node.entry(t.node_id.clone()).or_default().push(t);
        }
        let mut live: BTreeMap<String, Slot> = by_node
            .into_iter()
            .map(|(node, slot)| {
                let updatable = self.restarts.updatable_tasks_in_slot(&slot, service);
                (node, updatable)
            })
            .filter(|(_, slot)| !slot.is_empty())
            .collect();
        let mut writes = Vec::new();
        let mut update_slots = Vec::new();
        for (node_id, node) in &self.nodes {
            let slot = live.remove(node_id).unwrap_or_default();
            if !entry.fits(node) {
                writes.extend(shutdown_writes(&slot));
            } else if is_paused(node) {
                // Keeps what it has; gets nothing new.
            } else if slot.is_empty() {
                writes.push(Write::Create(service, node_id));
            } else {
                update_slots.push(slot);
            }
        }
        // Whatever is left sits on nodes that are DOWN, DRAIN-ed or gone.
        for slot in live.into_values() {
            writes.extend(shutdown_writes(&slot));
        }
        apply(
            &self.store,
            self.cluster.as_ref(),
            writes,
            "reconcile global service",
        )
        .await;
        self.updater
            .update(self.cluster.as_ref(), service, update_slots);
    }
}

fn is_paused(node: &api::Node) -> bool {
    node.spec.as_ref().map(|s| s.availability) == Some(api::node_spec::Availability::Pause as i32)
}

fn shutdown_writes<'w>(tasks: &[api::Task]) -> impl Iterator<Item = Write<'w>> + '_ {
    tasks
        .iter()
        .filter(|t| t.desired_state < state(api::TaskState::Shutdown))
        .map(|t| Write::Shutdown(t.id.clone()))
}

/// Writes in batches (new tasks take `cluster`'s defaults); a task created for a service deleted
/// meanwhile is skipped.
async fn apply(
    store: &MemoryStore,
    cluster: Option<&api::Cluster>,
    writes: Vec<Write<'_>>,
    what: &str,
) {
    if writes.is_empty() {
        return;
    }
    in_batches(store, writes, what, |tx, write| match write {
        Write::Create(service, node_id) => {
            if tx.get_shared::<api::Service>(&service.id).is_some() {
                tx.create_task(new_task(cluster, service, 0, node_id))?;
            }
            Ok(())
        }
        Write::Shutdown(id) => set_desired(tx, id, api::TaskState::Shutdown).map(drop),
        Write::Delete(id) => delete_task_if_present(tx, id),
    })
    .await;
}

impl Reconciler for GlobalOrchestrator {
    fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Every removal (it may leave a node without its task, and cancels a delayed start), and the
    /// creates and updates of tasks that stopped while still wanted, the only ones `handle` restarts.
    fn wants(event: &Event, _: &ReadTx<'_>) -> bool {
        let Event::Object { kind, .. } = event else {
            return true;
        };
        let Some(task) = event.object_as::<api::Task>() else {
            return true;
        };
        *kind == EventKind::Remove
            || (task.desired_state <= state(api::TaskState::Running)
                && observed(task) > state(api::TaskState::Running))
    }

    fn set_cluster(&mut self, cluster: Option<api::Cluster>) {
        self.cluster = cluster;
    }

    /// Start-up: learns nodes and services, shuts down tasks left on nodes that went away and
    /// queues restarts of tasks that stopped while no leader watched, resumes delayed starts,
    /// rebuilds the restart history, and reconciles every global service.
    async fn init(
        &mut self,
        services: Vec<api::Service>,
        tasks: Vec<api::Task>,
        nodes: Vec<api::Node>,
    ) {
        for node in nodes {
            self.update_node(node);
        }
        for service in services.into_iter().filter(is_global) {
            self.reconcile_services.insert(service.id.clone());
            self.services
                .insert(service.id.clone(), GlobalService::new(service));
        }
        let mut shutdown = Vec::new();
        let mut held = Vec::new();
        let mut by_service: HashMap<String, Vec<api::Task>> = HashMap::new();
        for t in tasks {
            if !self.services.contains_key(&t.service_id) {
                continue;
            }
            if t.desired_state <= state(api::TaskState::Running) {
                if t.node_id.is_empty() || !self.nodes.contains_key(&t.node_id) {
                    shutdown.push(Write::Shutdown(t.id.clone()));
                } else if observed(&t) > state(api::TaskState::Running) {
                    self.restart_tasks.insert(t.id.clone());
                }
            }
            if t.desired_state == state(api::TaskState::Ready) {
                held.push(t.id.clone());
            }
            by_service.entry(t.service_id.clone()).or_default().push(t);
        }
        for (id, tasks) in &by_service {
            self.restarts
                .rebuild_history(&self.services[id].service, tasks);
        }
        info!(
            services = self.services.len(),
            nodes = self.nodes.len(),
            "global orchestrator started"
        );
        apply(
            &self.store,
            self.cluster.as_ref(),
            shutdown,
            "shut down global tasks of invalid nodes",
        )
        .await;
        self.restarts.resume_delayed_starts(held).await;
        self.tick().await;
    }

    /// Records what an event asks for; the work happens at the next commit.
    fn handle(&mut self, ev: &Event) {
        let Event::Object { kind, .. } = ev else {
            return;
        };
        if let Some(task) = ev.object_as::<api::Task>() {
            match kind {
                EventKind::Remove => {
                    self.restarts.cancel(&task.id);
                    // A wanted task disappeared (`task rm`): its node needs a new one.
                    if task.desired_state <= state(api::TaskState::Running)
                        && self.services.contains_key(&task.service_id)
                    {
                        self.reconcile_services.insert(task.service_id.clone());
                    }
                }
                EventKind::Create | EventKind::Update => {
                    if self.services.contains_key(&task.service_id)
                        && task.desired_state <= state(api::TaskState::Running)
                        && observed(task) > state(api::TaskState::Running)
                    {
                        self.restart_tasks.insert(task.id.clone());
                    }
                }
            }
        } else if let Some(node) = ev.object_as::<api::Node>() {
            if *kind == EventKind::Remove {
                self.nodes.remove(&node.id);
                self.reconcile_nodes.remove(&node.id);
                self.removed_nodes.insert(node.id.clone());
            } else {
                self.update_node(node.clone());
                self.reconcile_nodes.insert(node.id.clone());
            }
        } else if let Some(service) = ev.object_as::<api::Service>() {
            if !is_global(service) {
                // A service that stopped being global (mode changes are refused by the control
                // API, but a hand-made store may do it) is no longer ours.
                if self.services.remove(&service.id).is_some() {
                    self.removed_services.insert(service.id.clone());
                }
                return;
            }
            if *kind == EventKind::Remove {
                self.services.remove(&service.id);
                self.reconcile_services.remove(&service.id);
                self.restarts.clear_service_history(&service.id);
                self.updater.cancel(&service.id);
                self.removed_services.insert(service.id.clone());
            } else {
                self.services
                    .insert(service.id.clone(), GlobalService::new(service.clone()));
                self.reconcile_services.insert(service.id.clone());
            }
        }
    }

    /// Does what the events since the last commit asked for: removed services and nodes first,
    /// then restarts (so reconciliation sees the replacements), then nodes, then services.
    async fn tick(&mut self) {
        for id in std::mem::take(&mut self.removed_services) {
            remove_service_tasks(&self.store, &id).await;
        }
        let removed_nodes = std::mem::take(&mut self.removed_nodes);
        if !removed_nodes.is_empty() {
            let writes = self.store.view(|tx| {
                removed_nodes
                    .iter()
                    .flat_map(|n| tx.find_tasks(By::NodeId(n)))
                    .filter(|t| self.services.contains_key(&t.service_id))
                    .map(|t| Write::Delete(t.id))
                    .collect::<Vec<_>>()
            });
            apply(
                &self.store,
                self.cluster.as_ref(),
                writes,
                "delete global tasks of deleted nodes",
            )
            .await;
        }
        self.restart_stopped_tasks().await;
        for node_id in std::mem::take(&mut self.reconcile_nodes) {
            self.reconcile_node(&node_id).await;
        }
        for id in std::mem::take(&mut self.reconcile_services) {
            self.reconcile_service(&id).await;
        }
    }

    fn stop(&mut self) {
        self.updater.cancel_all();
        self.restarts.cancel_all();
    }
}

#[cfg(test)]
mod tests;
