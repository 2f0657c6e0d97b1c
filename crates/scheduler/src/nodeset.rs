//! The set of nodes the scheduler places tasks on (SwarmKit's `manager/scheduler/nodeset.go`), with
//! the indexes that keep a scheduling pass from walking every node for every task:
//!
//! - nodes live in a slab and are named by a small index;
//! - active task counts per service and node (spread order and `max_replicas`);
//! - recent failures per (service, spec version) and node (the failure penalty);
//! - for each [`StaticKey`] recently asked for, the nodes passing the static filters, ordered by
//!   (active tasks, index) and kept up to date as tasks come and go ([`Eligible`]). A group of a
//!   service that has no task anywhere then finds its best nodes at the front of that order.
//!
//! Choosing among those nodes is `placement.rs`'s job.

use std::collections::BTreeSet;
use std::sync::Arc;

use store::Shared;
use tokio::time::{Duration, Instant};

use crate::IdMap;
use crate::filter::{StaticFilter, StaticKey};
use crate::nodeinfo::{NodeInfo, TaskOnNode};

/// How far back task failures count (SwarmKit's `monitorFailures`).
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Failures within [`FAILURE_WINDOW`] that put a node last for a service version (`maxFailures`).
pub(crate) const MAX_FAILURES: usize = 5;
/// Static filter results kept at once; each costs a bit and a tree entry per matching node.
const MAX_ELIGIBLE_SETS: usize = 16;

/// Index of a node in the slab.
pub(crate) type NodeIdx = u32;

/// A service and spec version, the unit failures are counted for.
pub(crate) type ServiceVersion = (Arc<str>, u64);

/// The nodes passing one [`StaticKey`]'s filters.
#[derive(Debug)]
pub(crate) struct Eligible {
    pub(crate) filter: StaticFilter,
    member: Vec<bool>,
    /// Members by (active tasks, index): the spread order of nodes with no task of the service.
    pub(crate) order: BTreeSet<(u32, NodeIdx)>,
    last_used: u64,
}

impl Eligible {
    /// Whether node `idx` passes the static filters.
    pub(crate) fn contains(&self, idx: NodeIdx) -> bool {
        self.member.get(idx as usize).copied().unwrap_or(false)
    }

    /// Number of nodes passing.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// All nodes and their indexes.
#[derive(Debug, Default)]
pub(crate) struct NodeSet {
    nodes: Vec<NodeInfo>,
    free: Vec<NodeIdx>,
    by_id: IdMap<String, NodeIdx>,
    /// Active tasks per service and node.
    services: IdMap<Arc<str>, IdMap<NodeIdx, u32>>,
    /// Failure times per service version and node, oldest first.
    failures: IdMap<ServiceVersion, IdMap<NodeIdx, Vec<Instant>>>,
    eligible: Vec<Eligible>,
    clock: u64,
    /// Bumped by every change that can change whether a task fits a node, or why not (a node
    /// object, a task taken or given back, a task starting or stopping to count as active).
    generation: u64,
}

impl NodeSet {
    /// The node at `idx`.
    pub(crate) fn info(&self, idx: NodeIdx) -> &NodeInfo {
        &self.nodes[idx as usize]
    }

    /// What [`NodeSet::generation`] counts: verdicts and explanations made at one generation hold
    /// while it lasts.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The index of a node ID, if known.
    pub(crate) fn index_of(&self, id: &str) -> Option<NodeIdx> {
        self.by_id.get(id).copied()
    }

    /// Indexes of the nodes the store holds.
    pub(crate) fn stored_nodes(&self) -> impl Iterator<Item = NodeIdx> + '_ {
        self.by_id
            .values()
            .copied()
            .filter(|&i| self.nodes[i as usize].node().is_some())
    }

    fn index_or_insert(&mut self, id: &str) -> NodeIdx {
        if let Some(idx) = self.by_id.get(id) {
            return *idx;
        }
        let info = NodeInfo::placeholder(id);
        let idx = match self.free.pop() {
            Some(idx) => {
                self.nodes[idx as usize] = info;
                idx
            }
            None => {
                self.nodes.push(info);
                NodeIdx::try_from(self.nodes.len() - 1).expect("fewer than 4 billion nodes")
            }
        };
        self.by_id.insert(id.to_string(), idx);
        idx
    }

    /// Adds or replaces a node object.
    pub(crate) fn set_node(&mut self, node: impl Into<Shared<api::Node>>) {
        let node = node.into();
        let idx = self.index_or_insert(&node.id);
        self.nodes[idx as usize].set_node(Some(node));
        self.refresh_static(idx);
        self.generation += 1;
    }

    /// Forgets a deleted node (its tasks stay accounted until they go).
    pub(crate) fn remove_node(&mut self, id: &str) {
        let Some(idx) = self.index_of(id) else {
            return;
        };
        self.nodes[idx as usize].set_node(None);
        self.refresh_static(idx);
        self.release_if_unused(idx);
        self.generation += 1;
    }

    fn release_if_unused(&mut self, idx: NodeIdx) {
        let info = &self.nodes[idx as usize];
        if !info.is_unused() {
            return;
        }
        self.by_id.remove(&info.id);
        for per_node in self.failures.values_mut() {
            per_node.remove(&idx);
        }
        self.failures.retain(|_, per_node| !per_node.is_empty());
        self.nodes[idx as usize] = NodeInfo::placeholder("");
        self.free.push(idx);
    }

    /// Re-evaluates the static filters of node `idx` in every cached set.
    fn refresh_static(&mut self, idx: NodeIdx) {
        let info = &self.nodes[idx as usize];
        for set in &mut self.eligible {
            let passes = set.filter.check(info).is_ok();
            let i = idx as usize;
            if set.member.len() <= i {
                set.member.resize(i + 1, false);
            }
            if set.member[i] == passes {
                continue;
            }
            set.member[i] = passes;
            if passes {
                set.order.insert((info.active, idx));
            } else {
                set.order.remove(&(info.active, idx));
            }
        }
    }

    /// Moves node `idx` in every cached order after its active count changed from `before`.
    fn reorder(&mut self, idx: NodeIdx, before: u32) {
        let after = self.nodes[idx as usize].active;
        if before == after {
            return;
        }
        for set in &mut self.eligible {
            if set.contains(idx) {
                set.order.remove(&(before, idx));
                set.order.insert((after, idx));
            }
        }
    }

    fn count_service(&mut self, service: &Arc<str>, idx: NodeIdx, added: bool) {
        if added {
            *self
                .services
                .entry(service.clone())
                .or_default()
                .entry(idx)
                .or_default() += 1;
            return;
        }
        if let Some(per_node) = self.services.get_mut(service) {
            if let Some(n) = per_node.get_mut(&idx) {
                *n -= 1;
                if *n == 0 {
                    per_node.remove(&idx);
                }
            }
            if per_node.is_empty() {
                self.services.remove(service);
            }
        }
    }

    /// Accounts a task on a node (created as a placeholder if unknown); false if already there.
    pub(crate) fn add_task(&mut self, node_id: &str, task_id: &str, task: TaskOnNode) -> bool {
        let idx = self.index_or_insert(node_id);
        self.add_task_at(idx, task_id, task)
    }

    /// [`NodeSet::add_task`] by index.
    pub(crate) fn add_task_at(&mut self, idx: NodeIdx, task_id: &str, task: TaskOnNode) -> bool {
        let service = task.active.then(|| task.service.clone());
        let info = &mut self.nodes[idx as usize];
        let before = info.active;
        if !info.add_task(task_id, task) {
            return false;
        }
        self.generation += 1;
        if let Some(service) = service {
            self.count_service(&service, idx, true);
        }
        self.reorder(idx, before);
        true
    }

    /// Whether the task is accounted on that node.
    pub(crate) fn has_task(&self, node_id: &str, task_id: &str) -> bool {
        self.index_of(node_id)
            .is_some_and(|idx| self.nodes[idx as usize].tasks.contains_key(task_id))
    }

    /// Gives back what a task held on its node.
    pub(crate) fn remove_task(&mut self, node_id: &str, task_id: &str) -> Option<TaskOnNode> {
        let idx = self.index_of(node_id)?;
        let info = &mut self.nodes[idx as usize];
        let before = info.active;
        let task = info.remove_task(task_id)?;
        self.generation += 1;
        if task.active {
            self.count_service(&task.service, idx, false);
        }
        self.reorder(idx, before);
        self.release_if_unused(idx);
        Some(task)
    }

    /// Records a new desired state of an accounted task (it may stop or start counting as active).
    pub(crate) fn set_desired(&mut self, node_id: &str, task_id: &str, desired_state: i32) {
        let Some(idx) = self.index_of(node_id) else {
            return;
        };
        let info = &mut self.nodes[idx as usize];
        let before = info.active;
        let Some(active) = info.set_desired(task_id, desired_state) else {
            return;
        };
        self.generation += 1;
        let service = info.tasks[task_id].service.clone();
        self.count_service(&service, idx, active);
        self.reorder(idx, before);
    }

    /// Active tasks of `service` on node `idx`.
    pub(crate) fn service_tasks(&self, service: &str, idx: NodeIdx) -> u32 {
        self.services
            .get(service)
            .and_then(|m| m.get(&idx))
            .copied()
            .unwrap_or(0)
    }

    /// Nodes with active tasks of `service`, and their counts.
    pub(crate) fn service_nodes(&self, service: &str) -> impl Iterator<Item = (NodeIdx, u32)> + '_ {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|m| m.iter().map(|(i, n)| (*i, *n)))
    }

    /// Notes that a task of `service_version` failed on the node.
    pub(crate) fn record_failure(&mut self, node_id: &str, key: ServiceVersion, now: Instant) {
        let Some(idx) = self.index_of(node_id) else {
            return;
        };
        let times = self
            .failures
            .entry(key)
            .or_default()
            .entry(idx)
            .or_default();
        times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
        times.push(now);
    }

    /// Nodes with failures of `key` inside the window, with their counts.
    pub(crate) fn failed_nodes(
        &self,
        key: &ServiceVersion,
        now: Instant,
    ) -> impl Iterator<Item = (NodeIdx, usize)> + '_ {
        self.failures.get(key).into_iter().flat_map(move |m| {
            m.iter().filter_map(move |(idx, times)| {
                let recent = times
                    .iter()
                    .filter(|t| now.duration_since(**t) <= FAILURE_WINDOW)
                    .count();
                (recent > 0).then_some((*idx, recent))
            })
        })
    }

    /// Failures of `key` on node `idx` inside the window.
    pub(crate) fn recent_failures(
        &self,
        key: &ServiceVersion,
        idx: NodeIdx,
        now: Instant,
    ) -> usize {
        self.failures
            .get(key)
            .and_then(|m| m.get(&idx))
            .map_or(0, |times| {
                times
                    .iter()
                    .filter(|t| now.duration_since(**t) <= FAILURE_WINDOW)
                    .count()
            })
    }

    /// Drops failure records that left the window.
    pub(crate) fn prune_failures(&mut self, now: Instant) {
        self.failures.retain(|_, per_node| {
            per_node.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) <= FAILURE_WINDOW);
                !times.is_empty()
            });
            !per_node.is_empty()
        });
    }

    /// The position of the cached set of nodes passing `key`'s static filters, computed (one walk
    /// over the nodes) if not cached.
    pub(crate) fn eligible_for(&mut self, key: &StaticKey) -> usize {
        self.clock += 1;
        if let Some(pos) = self.eligible.iter().position(|e| e.filter.key() == key) {
            self.eligible[pos].last_used = self.clock;
            return pos;
        }
        let filter = StaticFilter::new(key.clone());
        let mut member = vec![false; self.nodes.len()];
        let mut order = BTreeSet::new();
        for (i, info) in self.nodes.iter().enumerate() {
            if filter.check(info).is_ok() {
                member[i] = true;
                order.insert((info.active, i as NodeIdx));
            }
        }
        let set = Eligible {
            filter,
            member,
            order,
            last_used: self.clock,
        };
        if self.eligible.len() < MAX_ELIGIBLE_SETS {
            self.eligible.push(set);
            return self.eligible.len() - 1;
        }
        let lru = self
            .eligible
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i)
            .expect("the cache is full, so not empty");
        self.eligible[lru] = set;
        lru
    }

    /// A cached set from [`NodeSet::eligible_for`].
    pub(crate) fn eligible(&self, pos: usize) -> &Eligible {
        &self.eligible[pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Requirements;

    fn ready_node(id: &str) -> api::Node {
        api::Node {
            id: id.into(),
            status: Some(api::NodeStatus {
                state: api::node_status::State::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(service: &str) -> TaskOnNode {
        TaskOnNode {
            service: Arc::from(service),
            active: true,
            nano_cpus: 0,
            memory_bytes: 0,
            generic: Vec::new(),
            host_ports: Vec::new(),
            preassigned: false,
        }
    }

    #[test]
    fn eligible_order_follows_task_counts() {
        let mut set = NodeSet::default();
        set.set_node(ready_node("a"));
        set.set_node(ready_node("b"));
        let key = Requirements::default().statics;
        let pos = set.eligible_for(&key);
        assert_eq!(set.eligible(pos).len(), 2);
        let a = set.index_of("a").unwrap();
        let b = set.index_of("b").unwrap();
        assert!(set.add_task("a", "t1", task("s")));
        assert!(!set.add_task("a", "t1", task("s")));
        let order: Vec<_> = set.eligible(pos).order.iter().copied().collect();
        assert_eq!(order, vec![(0, b), (1, a)]);
        assert_eq!(set.service_tasks("s", a), 1);

        set.set_desired("a", "t1", api::TaskState::Shutdown as i32);
        assert_eq!(set.service_tasks("s", a), 0);
        assert_eq!(set.info(a).active, 0);

        // Draining a node takes it out of the set; the set is updated, not rebuilt.
        let mut drained = ready_node("b");
        drained.spec = Some(api::NodeSpec {
            availability: api::node_spec::Availability::Drain as i32,
            ..Default::default()
        });
        set.set_node(drained);
        assert_eq!(set.eligible_for(&key), pos);
        assert!(!set.eligible(pos).contains(b));
        assert_eq!(set.eligible(pos).len(), 1);
    }

    #[test]
    fn removed_node_is_released_once_its_tasks_are_gone() {
        let mut set = NodeSet::default();
        set.set_node(ready_node("a"));
        set.add_task("a", "t1", task("s"));
        set.remove_node("a");
        assert!(set.index_of("a").is_some(), "still holds t1");
        assert!(set.remove_task("a", "t1").is_some());
        assert!(set.index_of("a").is_none());
        assert_eq!(set.stored_nodes().count(), 0);
    }

    #[test]
    fn failures_expire_after_the_window() {
        let mut set = NodeSet::default();
        set.set_node(ready_node("a"));
        let a = set.index_of("a").unwrap();
        let key: ServiceVersion = (Arc::from("s"), 1);
        let start = Instant::now();
        for _ in 0..3 {
            set.record_failure("a", key.clone(), start);
        }
        assert_eq!(set.recent_failures(&key, a, start), 3);
        let later = start + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(set.recent_failures(&key, a, later), 0);
        set.prune_failures(later);
        assert_eq!(set.failed_nodes(&key, later).count(), 0);
    }
}
