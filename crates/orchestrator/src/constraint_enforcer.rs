//! The constraint enforcer (spec 5.3, SwarmKit's `manager/orchestrator/constraintenforcer`): when a
//! node changes so that tasks already assigned to it no longer fit (its labels stop matching a
//! placement constraint, or its resources shrink below the reservations), those tasks are marked
//! REJECTED; the orchestrators then replace them elsewhere. Only ACTIVE nodes are checked: a paused
//! node keeps what it runs, a drained one is emptied by the orchestrators.

use std::collections::HashMap;
use std::time::SystemTime;

use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::Error;

/// Status message of a task rejected here.
pub const REJECTED_MESSAGE: &str = "task rejected by constraint enforcer";
/// Status error of a task rejected here.
pub const REJECTED_ERR: &str = "assigned node no longer meets constraints";

/// Leader-only subsystem that rejects assigned tasks whose node stopped fitting them.
#[derive(Debug)]
pub struct ConstraintEnforcer {
    store: MemoryStore,
}

impl ConstraintEnforcer {
    /// An enforcer over `store`; nothing happens until [`ConstraintEnforcer::run`].
    pub fn new(store: MemoryStore) -> Self {
        ConstraintEnforcer { store }
    }

    /// Checks every node once, then each node as it is updated, until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let (nodes, mut watcher) = self
            .store
            .view_and_watch(WatchFilter::none().nodes(), |tx| tx.find_nodes(By::All));
        for node in &nodes {
            self.reject_noncompliant_tasks(node).await;
        }
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                event = watcher.recv() => event.ok_or(Error::WatchClosed)?,
            };
            if let Event::Object {
                kind: EventKind::Update,
                ..
            } = &event
                && let Some(node) = event.object_as::<api::Node>()
            {
                self.reject_noncompliant_tasks(node).await;
            }
        }
    }

    async fn reject_noncompliant_tasks(&self, node: &api::Node) {
        let active = node.spec.as_ref().map(|s| s.availability)
            == Some(api::node_spec::Availability::Active as i32);
        if !active {
            return;
        }
        let (tasks, services) = self.store.view(|tx| {
            let tasks = tx.find_tasks(By::NodeId(&node.id));
            let services: HashMap<String, api::Service> = tasks
                .iter()
                .filter_map(|t| tx.get_service(&t.service_id))
                .map(|s| (s.id.clone(), s))
                .collect();
            (tasks, services)
        });
        let noncompliant = noncompliant_tasks(node, &tasks, &services);
        if noncompliant.is_empty() {
            return;
        }
        info!(
            node.id = %node.id,
            tasks = noncompliant.len(),
            "node no longer meets the constraints of its tasks: rejecting them"
        );
        let errors = self
            .store
            .batch(&noncompliant, |tx, id| {
                let Some(mut task) = tx.get_task(id) else {
                    return Ok(());
                };
                if task.desired_state > api::TaskState::Complete as i32 {
                    return Ok(());
                }
                let status = task.status.get_or_insert_with(Default::default);
                status.state = api::TaskState::Rejected as i32;
                status.message = REJECTED_MESSAGE.to_string();
                status.err = REJECTED_ERR.to_string();
                status.timestamp = Some(SystemTime::now().into());
                tx.update_task(task)
            })
            .await;
        for e in errors {
            error!(node.id = %node.id, "failed to reject noncompliant tasks: {e}");
        }
    }
}

/// IDs of the tasks on `node` that it can no longer hold: live tasks (desired ASSIGNED..COMPLETE,
/// observed not yet COMPLETE) whose placement constraints the node fails, or whose reservations no
/// longer fit in what the node has left after the tasks before them (in the order given).
fn noncompliant_tasks(
    node: &api::Node,
    tasks: &[api::Task],
    services: &HashMap<String, api::Service>,
) -> Vec<String> {
    let resources = node
        .description
        .as_ref()
        .and_then(|d| d.resources.clone())
        .unwrap_or_default();
    let mut memory = resources.memory_bytes;
    let mut cpus = resources.nano_cpus;
    let mut generic = resources.generic;
    let mut out = Vec::new();
    for task in tasks {
        let desired = task.desired_state;
        if desired < api::TaskState::Assigned as i32 || desired > api::TaskState::Complete as i32 {
            continue;
        }
        if task.status.as_ref().map_or(0, |s| s.state) >= api::TaskState::Complete as i32 {
            continue;
        }
        // The service's current placement wins over the task's copy (a constraint the service
        // dropped no longer binds its old tasks).
        let placement = match services.get(&task.service_id) {
            Some(service) => service
                .spec
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .and_then(|t| t.placement.as_ref()),
            None => task.spec.as_ref().and_then(|s| s.placement.as_ref()),
        };
        if let Some(p) = placement
            && !p.constraints.is_empty()
        {
            let constraints = api::constraint::parse(&p.constraints).unwrap_or_default();
            if !api::constraint::node_matches(&constraints, node) {
                out.push(task.id.clone());
                continue;
            }
        }
        if let Some(r) = task
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.reservations.as_ref())
        {
            if r.memory_bytes > memory || r.nano_cpus > cpus {
                out.push(task.id.clone());
                continue;
            }
            memory -= r.memory_bytes;
            cpus -= r.nano_cpus;
        }
        let assigned = &task.assigned_generic_resources;
        if !assigned
            .iter()
            .all(|r| api::genericresource::has_resource(r, &generic))
        {
            out.push(task.id.clone());
            continue;
        }
        api::genericresource::consume(&mut generic, assigned);
    }
    out
}

#[cfg(test)]
mod tests;
