//! What the scheduler knows about one node (SwarmKit's `manager/scheduler/nodeinfo.go`): the node
//! object, the tasks assigned to it that still hold resources, the resources left, the HOST-mode
//! ports in use and the active task count. Generic resources follow SwarmKit's
//! `api/genericresource`: discrete ones are counters, named ones are individual items handed to a
//! task (`assigned_generic_resources`). Per-service counts and failures live in the node set.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use api::generic_resource::Resource as Generic;
use store::Shared;

use crate::IdMap;
use crate::filter::Requirements;

/// A task that holds resources on a node (observed state ASSIGNED..RUNNING).
#[derive(Debug, Clone)]
pub(crate) struct TaskOnNode {
    /// The task's service (empty for a task without one).
    pub(crate) service: Arc<str>,
    /// Desired state <= COMPLETE: counts towards the node's and the service's active tasks.
    pub(crate) active: bool,
    /// Reserved nano CPUs.
    pub(crate) nano_cpus: i64,
    /// Reserved memory.
    pub(crate) memory_bytes: i64,
    /// Generic resources taken from the node.
    pub(crate) generic: Vec<api::GenericResource>,
    /// HOST-mode ports it publishes.
    pub(crate) host_ports: Vec<(i32, u32)>,
    /// The orchestrator chose the node (global services): its failures do not mark the node.
    pub(crate) preassigned: bool,
}

impl TaskOnNode {
    /// The record of `task` of `service`, with `generic` the generic resources it holds.
    pub(crate) fn new(
        task: &api::Task,
        service: Arc<str>,
        req: &Requirements,
        generic: Vec<api::GenericResource>,
        preassigned: bool,
    ) -> TaskOnNode {
        TaskOnNode {
            service,
            active: is_active(task.desired_state),
            nano_cpus: req.nano_cpus,
            memory_bytes: req.memory_bytes,
            generic,
            host_ports: req.host_ports.clone(),
            preassigned,
        }
    }
}

/// Whether a task with this desired state counts as active on its node (SwarmKit: desired state
/// up to COMPLETE, which jobs use).
pub(crate) fn is_active(desired_state: i32) -> bool {
    desired_state <= api::TaskState::Complete as i32
}

/// One node as the scheduler sees it.
#[derive(Debug)]
pub(crate) struct NodeInfo {
    /// The node's ID.
    pub(crate) id: String,
    /// The stored node (shared with the store); `None` while tasks name a node the store does
    /// not hold.
    node: Option<Shared<api::Node>>,
    ready: bool,
    nano_cpus: i64,
    memory_bytes: i64,
    generic: Vec<api::GenericResource>,
    /// Tasks holding resources here, by task ID.
    pub(crate) tasks: IdMap<String, TaskOnNode>,
    /// Number of active tasks.
    pub(crate) active: u32,
    /// HOST-mode ports in use, with the number of tasks using each.
    ports: IdMap<(i32, u32), u32>,
}

impl NodeInfo {
    /// A node known only by ID (no node object yet).
    pub(crate) fn placeholder(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            node: None,
            ready: false,
            nano_cpus: 0,
            memory_bytes: 0,
            generic: Vec::new(),
            tasks: IdMap::default(),
            active: 0,
            ports: IdMap::default(),
        }
    }

    /// The node object, if the store holds one.
    pub(crate) fn node(&self) -> Option<&api::Node> {
        self.node.as_deref()
    }

    /// The node object as shared with the store.
    #[cfg(test)]
    pub(crate) fn shared_node(&self) -> Option<Shared<api::Node>> {
        self.node.clone()
    }

    /// Status READY and availability ACTIVE.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// Installs a new version of the node object (or `None` once it is deleted) and recomputes the
    /// resources left from its description and its tasks.
    pub(crate) fn set_node(&mut self, node: Option<Shared<api::Node>>) {
        self.ready = node.as_ref().is_some_and(|n| {
            n.status.as_ref().map_or(0, |s| s.state) == api::node_status::State::Ready as i32
                && n.spec.as_ref().map_or(0, |s| s.availability)
                    == api::node_spec::Availability::Active as i32
        });
        self.node = node;
        self.recompute_resources();
    }

    fn description_resources(&self) -> Option<&api::Resources> {
        self.node
            .as_ref()
            .and_then(|n| n.description.as_ref())
            .and_then(|d| d.resources.as_ref())
    }

    fn recompute_resources(&mut self) {
        let total = self.description_resources().cloned().unwrap_or_default();
        self.nano_cpus = total.nano_cpus;
        self.memory_bytes = total.memory_bytes;
        self.generic = total.generic;
        for task in self.tasks.values() {
            self.nano_cpus -= task.nano_cpus;
            self.memory_bytes -= task.memory_bytes;
            api::genericresource::consume(&mut self.generic, &task.generic);
        }
    }

    /// Whether the reservations of `req` fit what is left (SwarmKit's `ResourceFilter`).
    pub(crate) fn has_resources(&self, req: &Requirements) -> bool {
        req.nano_cpus <= self.nano_cpus
            && req.memory_bytes <= self.memory_bytes
            && req.generic.iter().all(|g| has_enough(&self.generic, g))
    }

    /// Whether a HOST-mode port is taken.
    pub(crate) fn port_in_use(&self, port: (i32, u32)) -> bool {
        self.ports.contains_key(&port)
    }

    /// Picks the generic resources `req` reserves from what is left, as SwarmKit's `Claim` (nothing
    /// when they cannot all be found).
    pub(crate) fn claim_generic(&self, req: &Requirements) -> Vec<api::GenericResource> {
        let mut selected = Vec::new();
        for (kind, value) in &req.generic {
            let Some(value) = *value else {
                return Vec::new();
            };
            let mut named = 0;
            let mut found = false;
            for res in &self.generic {
                match &res.resource {
                    Some(Generic::DiscreteResourceSpec(d)) if d.kind == *kind => {
                        if d.value >= value && value != 0 {
                            selected.push(discrete(kind, value));
                            found = true;
                        }
                        break;
                    }
                    Some(Generic::NamedResourceSpec(n)) if n.kind == *kind => {
                        selected.push(res.clone());
                        found = true;
                        named += 1;
                        if named == value {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if !found {
                return Vec::new();
            }
        }
        selected
    }

    /// Adds a task; false (and nothing changes) if it is already here.
    pub(crate) fn add_task(&mut self, id: &str, task: TaskOnNode) -> bool {
        let Entry::Vacant(slot) = self.tasks.entry(id.to_string()) else {
            return false;
        };
        self.nano_cpus -= task.nano_cpus;
        self.memory_bytes -= task.memory_bytes;
        api::genericresource::consume(&mut self.generic, &task.generic);
        for port in &task.host_ports {
            *self.ports.entry(*port).or_default() += 1;
        }
        if task.active {
            self.active += 1;
        }
        slot.insert(task);
        true
    }

    /// Removes a task, giving its resources back.
    pub(crate) fn remove_task(&mut self, id: &str) -> Option<TaskOnNode> {
        let task = self.tasks.remove(id)?;
        self.nano_cpus += task.nano_cpus;
        self.memory_bytes += task.memory_bytes;
        if !task.generic.is_empty() {
            // Recomputing from the description also drops what the node no longer has
            // (SwarmKit's `Reclaim` + `sanitize`).
            self.recompute_resources();
        }
        for port in &task.host_ports {
            if let Some(n) = self.ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(port);
                }
            }
        }
        if task.active {
            self.active -= 1;
        }
        Some(task)
    }

    /// Records a new desired state of a task; returns `Some(now_active)` if it changed whether the
    /// task counts as active.
    pub(crate) fn set_desired(&mut self, id: &str, desired_state: i32) -> Option<bool> {
        let task = self.tasks.get_mut(id)?;
        let active = is_active(desired_state);
        if task.active == active {
            return None;
        }
        task.active = active;
        if active {
            self.active += 1;
        } else {
            self.active -= 1;
        }
        Some(active)
    }

    /// Whether nothing refers to this node any more (deleted and no task left).
    pub(crate) fn is_unused(&self) -> bool {
        self.node.is_none() && self.tasks.is_empty()
    }
}

fn discrete(kind: &str, value: i64) -> api::GenericResource {
    api::GenericResource {
        resource: Some(Generic::DiscreteResourceSpec(
            api::DiscreteGenericResource {
                kind: kind.to_string(),
                value,
            },
        )),
    }
}

fn kind_of(res: &api::GenericResource) -> &str {
    match &res.resource {
        Some(Generic::DiscreteResourceSpec(d)) => &d.kind,
        Some(Generic::NamedResourceSpec(n)) => &n.kind,
        None => "",
    }
}

/// SwarmKit's `HasEnough`: the first resource of the kind decides; named ones are counted.
fn has_enough(available: &[api::GenericResource], (kind, value): &(String, Option<i64>)) -> bool {
    let Some(value) = *value else {
        return false;
    };
    let mut of_kind = available.iter().filter(|r| kind_of(r) == kind).peekable();
    match of_kind.peek().and_then(|r| r.resource.as_ref()) {
        None => false,
        Some(Generic::DiscreteResourceSpec(d)) => value <= d.value,
        Some(Generic::NamedResourceSpec(_)) => {
            usize::try_from(value).is_ok_and(|v| v <= of_kind.count())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(kind: &str, value: &str) -> api::GenericResource {
        api::GenericResource {
            resource: Some(Generic::NamedResourceSpec(api::NamedGenericResource {
                kind: kind.into(),
                value: value.into(),
            })),
        }
    }

    fn node_with(generic: Vec<api::GenericResource>) -> NodeInfo {
        let mut info = NodeInfo::placeholder("n");
        info.set_node(Some(Shared::new(api::Node {
            id: "n".into(),
            description: Some(api::NodeDescription {
                resources: Some(api::Resources {
                    nano_cpus: 4,
                    memory_bytes: 100,
                    generic,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })));
        info
    }

    fn req(generic: Vec<(&str, Option<i64>)>) -> Requirements {
        Requirements {
            generic: generic
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..Default::default()
        }
    }

    fn task(generic: Vec<api::GenericResource>) -> TaskOnNode {
        TaskOnNode {
            service: Arc::from("s"),
            active: true,
            nano_cpus: 1,
            memory_bytes: 10,
            generic,
            host_ports: vec![(0, 80)],
            preassigned: false,
        }
    }

    #[test]
    fn named_resources_are_handed_out_and_given_back() {
        let mut info = node_with(vec![
            named("gpu", "a"),
            named("gpu", "b"),
            discrete("ssd", 2),
        ]);
        let two_gpus = req(vec![("gpu", Some(2)), ("ssd", Some(1))]);
        assert!(info.has_resources(&two_gpus));
        let claimed = info.claim_generic(&two_gpus);
        assert_eq!(
            claimed,
            vec![named("gpu", "a"), named("gpu", "b"), discrete("ssd", 1)]
        );
        assert!(info.add_task("t1", task(claimed)));
        assert!(!info.has_resources(&req(vec![("gpu", Some(1))])));
        assert!(info.has_resources(&req(vec![("ssd", Some(1))])));
        assert!(!info.has_resources(&req(vec![("ssd", Some(2))])));
        assert!(info.port_in_use((0, 80)));
        assert_eq!(info.active, 1);

        assert!(info.remove_task("t1").is_some());
        assert!(info.has_resources(&two_gpus));
        assert!(!info.port_in_use((0, 80)));
        assert_eq!(info.active, 0);
        assert_eq!((info.nano_cpus, info.memory_bytes), (4, 100));
    }

    #[test]
    fn named_requests_never_fit() {
        let info = node_with(vec![named("gpu", "a")]);
        assert!(!info.has_resources(&req(vec![("gpu", None)])));
        assert!(!info.has_resources(&req(vec![("fpga", Some(1))])));
    }

    #[test]
    fn node_update_keeps_reservations_of_its_tasks() {
        let mut info = node_with(vec![discrete("ssd", 2)]);
        info.add_task("t1", task(vec![discrete("ssd", 1)]));
        info.set_node(info.shared_node());
        assert_eq!((info.nano_cpus, info.memory_bytes), (3, 90));
        assert!(!info.has_resources(&req(vec![("ssd", Some(2))])));
        assert_eq!(
            info.set_desired("t1", api::TaskState::Shutdown as i32),
            Some(false)
        );
        assert_eq!(info.active, 0);
        assert_eq!(
            info.set_desired("t1", api::TaskState::Shutdown as i32),
            None
        );
    }
}
