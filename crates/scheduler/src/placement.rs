//! Choosing nodes for a group of identical tasks (SwarmKit's `scheduleTaskGroup`,
//! `scheduleNTasksOnSubtree` and `decision_tree.go`).
//!
//! Nodes are ranked by (failure penalty, active tasks of the service, active tasks in total, index)
//! and each task goes to the lowest-ranked node that passes every filter, whose rank then rises.
//! With equal nodes that is SwarmKit's spread: no node gets a second task of the group before every
//! node has one. A [`Picker`] does this without ranking every node: the nodes that hold tasks of the
//! service (or carry the penalty) go into a heap, and all others, whose rank is only their total,
//! come from the node set's ordered set of nodes passing the static filters ([`crate::nodeset::Eligible`]).
//!
//! Placement preferences split the nodes into a tree of label values ([`Tree`]); tasks are shared
//! between branches so that each ends up with the same number of the service's tasks, and each leaf
//! has its own picker.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::ops::Bound;

use tokio::time::Instant;

use crate::filter::Requirements;
use crate::nodeset::{MAX_FAILURES, NodeIdx, NodeSet, ServiceVersion};
use crate::{IdMap, IdSet};

/// What the group being placed needs, shared by its pickers.
#[derive(Debug)]
pub(crate) struct Group<'a> {
    /// The tasks' requirements.
    pub(crate) req: &'a Requirements,
    /// Service and spec version of the tasks.
    pub(crate) key: &'a ServiceVersion,
    /// Position of the static filter set in the node set's cache.
    pub(crate) eligible: usize,
    /// When the pass started (for the failure window).
    pub(crate) now: Instant,
}

/// Rank of a node, lowest first: (failures if penalised else 0, service tasks, total tasks, index).
type Rank = (u32, u32, u32, NodeIdx);

/// Hands out the best node for the next task of a group.
#[derive(Debug)]
pub(crate) struct Picker {
    heap: BinaryHeap<Reverse<Rank>>,
    /// Nodes the cursor must skip: ranked in the heap, or failing a dynamic filter.
    seen: IdSet<NodeIdx>,
    /// Walk over the static set's order; `None` for a tree leaf, whose nodes are all in the heap.
    cursor: Option<Cursor>,
    /// Failure counts of the penalised nodes (at least [`MAX_FAILURES`]).
    penalised: IdMap<NodeIdx, u32>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// Last order entry visited.
    last: Option<(u32, NodeIdx)>,
    /// A visited entry that passed and waits for its turn.
    peeked: Option<(u32, NodeIdx)>,
}

impl Picker {
    fn new(ns: &NodeSet, group: &Group<'_>, cursor: Option<Cursor>) -> Picker {
        let penalised = ns
            .failed_nodes(group.key, group.now)
            .filter(|(_, n)| *n >= MAX_FAILURES)
            .map(|(idx, n)| (idx, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        Picker {
            heap: BinaryHeap::new(),
            seen: IdSet::default(),
            cursor,
            penalised,
        }
    }

    /// A picker over every node passing the static filters.
    pub(crate) fn all_nodes(ns: &NodeSet, group: &Group<'_>) -> Picker {
        let mut picker = Picker::new(ns, group, Some(Cursor::default()));
        let eligible = ns.eligible(group.eligible);
        let mut ranked: Vec<NodeIdx> = ns
            .service_nodes(&group.key.0)
            .map(|(idx, _)| idx)
            .chain(picker.penalised.keys().copied())
            .filter(|idx| eligible.contains(*idx))
            .collect();
        // A node can hold tasks of the service and be penalised too.
        ranked.sort_unstable();
        ranked.dedup();
        for idx in ranked {
            picker.offer(ns, group, idx);
        }
        picker
    }

    /// A picker over `nodes` only (a tree leaf); they must pass the static filters.
    fn leaf(ns: &NodeSet, group: &Group<'_>, nodes: &[NodeIdx]) -> Picker {
        let mut picker = Picker::new(ns, group, None);
        for idx in nodes {
            picker.offer(ns, group, *idx);
        }
        picker
    }

    fn rank(&self, ns: &NodeSet, group: &Group<'_>, idx: NodeIdx) -> Rank {
        (
            self.penalised.get(&idx).copied().unwrap_or(0),
            ns.service_tasks(&group.key.0, idx),
            ns.info(idx).active,
            idx,
        )
    }

    /// Puts node `idx` in the heap if it passes the dynamic filters; the cursor skips it from now on.
    fn offer(&mut self, ns: &NodeSet, group: &Group<'_>, idx: NodeIdx) {
        self.seen.insert(idx);
        let service_tasks = ns.service_tasks(&group.key.0, idx);
        if group.req.check_dynamic(ns.info(idx), service_tasks).is_ok() {
            let rank = self.rank(ns, group, idx);
            self.heap.push(Reverse(rank));
        }
    }

    /// The next node from the static order that the heap does not rank and that passes the
    /// dynamic filters.
    fn next_from_order(&mut self, ns: &NodeSet, group: &Group<'_>) -> Option<(u32, NodeIdx)> {
        let cursor = self.cursor.as_mut()?;
        if let Some(entry) = cursor.peeked {
            return Some(entry);
        }
        let order = &ns.eligible(group.eligible).order;
        loop {
            let next = match cursor.last {
                None => order.iter().next(),
                Some(last) => order
                    .range((Bound::Excluded(last), Bound::Unbounded))
                    .next(),
            };
            let &(active, idx) = next?;
            cursor.last = Some((active, idx));
            if !self.seen.insert(idx) {
                continue;
            }
            // Not the service's and not penalised, so its service count is 0.
            if group.req.check_dynamic(ns.info(idx), 0).is_ok() {
                cursor.peeked = Some((active, idx));
                return cursor.peeked;
            }
        }
    }

    /// The best node for the next task, if any node can take it.
    pub(crate) fn pick(&mut self, ns: &NodeSet, group: &Group<'_>) -> Option<NodeIdx> {
        let from_order = self.next_from_order(ns, group);
        let from_heap = self.heap.peek().map(|Reverse(r)| *r);
        let take_order = match (from_order, from_heap) {
            (None, None) => return None,
            (Some((active, idx)), Some(best)) => (0, 0, active, idx) < best,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_order {
            let cursor = self
                .cursor
                .as_mut()
                .expect("the entry came from the cursor");
            cursor.peeked = None;
            from_order.map(|(_, idx)| idx)
        } else {
            self.heap.pop().map(|Reverse(r)| r.3)
        }
    }

    /// Ranks node `idx` again after a task of the group went there.
    pub(crate) fn placed(&mut self, ns: &NodeSet, group: &Group<'_>, idx: NodeIdx) {
        self.offer(ns, group, idx);
    }
}

/// Places up to `n` tasks with `picker`; `assign` puts the next task of the group on a node and
/// returns false when the group has no task left. Returns how many were placed.
pub(crate) fn place_n(
    ns: &mut NodeSet,
    group: &Group<'_>,
    picker: &mut Picker,
    n: usize,
    assign: &mut dyn FnMut(&mut NodeSet, NodeIdx) -> bool,
) -> usize {
    let mut placed = 0;
    while placed < n {
        let Some(idx) = picker.pick(ns, group) else {
            break;
        };
        if !assign(ns, idx) {
            break;
        }
        picker.placed(ns, group, idx);
        placed += 1;
    }
    placed
}

/// One level of the placement preference tree.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    /// Active tasks of the service on every node below (eligible or not).
    tasks: usize,
    /// Branches by label value; empty at a leaf.
    next: BTreeMap<String, Tree>,
    /// Nodes of a leaf that pass the static filters.
    nodes: Vec<NodeIdx>,
    picker: Option<Picker>,
}

impl Tree {
    /// Splits every stored node by the group's spread preferences.
    pub(crate) fn build(ns: &NodeSet, group: &Group<'_>) -> Tree {
        let mut root = Tree::default();
        let eligible = ns.eligible(group.eligible);
        for idx in ns.stored_nodes() {
            let node = ns.info(idx).node().expect("stored nodes have an object");
            let count = ns.service_tasks(&group.key.0, idx) as usize;
            let mut branch = &mut root;
            for spread in &group.req.spreads {
                branch.tasks += count;
                branch = branch
                    .next
                    .entry(spread.value(node).to_string())
                    .or_default();
            }
            branch.tasks += count;
            if eligible.contains(idx) {
                branch.nodes.push(idx);
            }
        }
        root
    }

    /// Places up to `n` tasks below this branch, evening out the branches' task counts as
    /// SwarmKit's `scheduleNTasksOnSubtree` does. Returns how many were placed.
    pub(crate) fn place(
        &mut self,
        ns: &mut NodeSet,
        group: &Group<'_>,
        n: usize,
        assign: &mut dyn FnMut(&mut NodeSet, NodeIdx) -> bool,
    ) -> usize {
        if self.next.is_empty() {
            if self.nodes.is_empty() {
                return 0;
            }
            let picker = self
                .picker
                .get_or_insert_with(|| Picker::leaf(ns, group, &self.nodes));
            return place_n(ns, group, picker, n, assign);
        }

        let branches = self.next.len();
        let mut scheduled = 0;
        let mut usable_tasks = self.tasks;
        let mut no_room: HashSet<String> = HashSet::new();
        let mut converging = true;
        while scheduled != n && no_room.len() != branches && converging {
            let open = branches - no_room.len();
            let desired = (usable_tasks + n - scheduled) / open;
            let mut remainder = (usable_tasks + n - scheduled) % open;
            converging = false;
            for (value, subtree) in &mut self.next {
                if no_room.contains(value) {
                    continue;
                }
                let existing = subtree.tasks;
                if existing < desired || (existing == desired && remainder > 0) {
                    converging = true;
                    let mut want = desired - existing;
                    if remainder > 0 {
                        want += 1;
                    }
                    let got = subtree.place(ns, group, want, assign);
                    if got < want {
                        no_room.insert(value.clone());
                        usable_tasks -= existing;
                    } else {
                        remainder = remainder.saturating_sub(1);
                    }
                    scheduled += got;
                }
            }
        }
        scheduled
    }
}
