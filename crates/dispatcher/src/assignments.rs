//! What one node has been told to run, and the changes not yet sent to it (SwarmKit's
//! manager/dispatcher/assignments.go, tasks only). Secrets, configs and volumes are not assigned
//! yet: a task referencing them reaches the agent without them.
//!
//! The set holds the store's shared task versions, so a node's assignments cost the dispatcher a
//! reference per task, not a copy; a message is built (the tasks copied into it) only when it is
//! sent, one part at a time: a set or a batch of changes larger than
//! [`MAX_MESSAGE_BYTES`] goes out in several messages (see `api::assignment_parts`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use api::TaskState;
use api::assignment_change::AssignmentAction;
use api::assignment_parts::MAX_MESSAGE_BYTES;
use prost::Message;
use store::Shared;
use tracing::warn;

/// Bytes of a message that are not its changes: its type and the two sequence strings.
const MESSAGE_OVERHEAD: usize = 64;

/// The tasks assigned to one node and the pending changes of its next message.
#[derive(Debug, Default)]
pub(crate) struct AssignmentSet {
    tasks: HashMap<String, Shared<api::Task>>,
    /// Task ID to what the agent must do with it (for an update, the version in `tasks`).
    changes: BTreeMap<String, AssignmentAction>,
}

fn state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

fn version(t: &api::Task) -> u64 {
    t.meta
        .as_ref()
        .and_then(|m| m.version.as_ref())
        .map_or(0, |v| v.index)
}

/// Equal apart from status and meta: an agent has nothing to do for such a change
/// (SwarmKit's equality.TasksEqualStable). Field by field, so that a large task is not copied
/// for every event; a field added to `Task` fails to compile here until it is compared.
pub(crate) fn tasks_equal_stable(a: &api::Task, b: &api::Task) -> bool {
    let api::Task {
        id,
        meta: _,
        spec,
        spec_version,
        service_id,
        slot,
        node_id,
        annotations,
        service_annotations,
        status: _,
        desired_state,
        networks,
        endpoint,
        log_driver,
        assigned_generic_resources,
        job_iteration,
        volumes,
    } = a;
    *id == b.id
        && *spec == b.spec
        && *spec_version == b.spec_version
        && *service_id == b.service_id
        && *slot == b.slot
        && *node_id == b.node_id
        && *annotations == b.annotations
        && *service_annotations == b.service_annotations
        && *desired_state == b.desired_state
        && *networks == b.networks
        && *endpoint == b.endpoint
        && *log_driver == b.log_driver
        && *assigned_generic_resources == b.assigned_generic_resources
        && *job_iteration == b.job_iteration
        && *volumes == b.volumes
}

fn change(task: api::Task, action: AssignmentAction) -> api::AssignmentChange {
    api::AssignmentChange {
        assignment: Some(api::Assignment {
            item: Some(api::assignment::Item::Task(task)),
        }),
        action: action as i32,
    }
}

/// Changes taken from a set, to be sent in as many messages as their size needs.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Task ID and, for an update, the task to send.
    items: VecDeque<(String, Option<Shared<api::Task>>)>,
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The changes of the next message: as many as fit in `budget` encoded bytes of a message,
    /// and at least one (a change larger than the budget goes alone).
    pub fn next_part(&mut self, budget: usize) -> Vec<api::AssignmentChange> {
        let budget = budget.saturating_sub(MESSAGE_OVERHEAD);
        let mut part = Vec::new();
        let mut size = 0;
        while let Some((id, task)) = self.items.front() {
            let c = match task {
                Some(t) => change(api::Task::clone(t), AssignmentAction::Update),
                None => change(
                    api::Task {
                        id: id.clone(),
                        ..Default::default()
                    },
                    AssignmentAction::Remove,
                ),
            };
            // Field 4 of the message: a one-byte key, the length, the change.
            let len = c.encoded_len();
            let encoded = 1 + prost::length_delimiter_len(len) + len;
            if !part.is_empty() && size + encoded > budget {
                break;
            }
            if encoded > budget {
                warn!(task.id = %id, bytes = encoded, "an assignment is larger than the message bound: sent alone");
            }
            size += encoded;
            part.push(c);
            self.items.pop_front();
        }
        part
    }
}

impl AssignmentSet {
    /// Takes a new version of a task of this node; true if the agent must hear of it. Tasks
    /// below ASSIGNED are not the agent's yet; an update that changes only what the agent itself
    /// reported (status above ASSIGNED) is not sent back; an older version than the one held
    /// (an event that overlapped the first view) is ignored.
    pub fn add_or_update(&mut self, t: Shared<api::Task>) -> bool {
        if state(&t) < TaskState::Assigned as i32 {
            return false;
        }
        if let Some(old) = self.tasks.get(&t.id) {
            if version(&t) != 0 && version(&t) <= version(old) {
                return false;
            }
            // States up to ASSIGNED are set by the orchestrator and scheduler, so the agent
            // hears of those even when nothing else changed.
            if tasks_equal_stable(old, &t) && state(&t) > TaskState::Assigned as i32 {
                self.tasks.insert(t.id.clone(), t);
                return false;
            }
        }
        self.changes.insert(t.id.clone(), AssignmentAction::Update);
        self.tasks.insert(t.id.clone(), t);
        true
    }

    /// Forgets a deleted task; true if the agent had it.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.tasks.remove(id).is_none() {
            return false;
        }
        self.changes
            .insert(id.to_string(), AssignmentAction::Remove);
        true
    }

    /// The pending changes, by task ID; the next message starts empty.
    pub fn take_changes(&mut self) -> Outgoing {
        let items = std::mem::take(&mut self.changes)
            .into_iter()
            .map(|(id, action)| {
                let task = match action {
                    AssignmentAction::Update => self.tasks.get(&id).cloned(),
                    AssignmentAction::Remove => None,
                };
                (id, task)
            })
            .collect();
        Outgoing { items }
    }

    /// Every task of the set, as the changes of a COMPLETE message: the tasks the agent already
    /// reported on (past ASSIGNED) first, so that when the set needs several messages an agent
    /// that applies the first as the whole set (SwarmKit's) keeps what it runs. Pending changes
    /// are dropped: the set supersedes them.
    pub fn take_complete(&mut self) -> Outgoing {
        self.changes.clear();
        let mut tasks: Vec<&Shared<api::Task>> = self.tasks.values().collect();
        tasks.sort_by(|a, b| {
            let unseen = |t: &api::Task| state(t) <= TaskState::Assigned as i32;
            (unseen(a), &a.id).cmp(&(unseen(b), &b.id))
        });
        let items = tasks
            .into_iter()
            .map(|t| (t.id.clone(), Some(t.clone())))
            .collect();
        Outgoing { items }
    }
}

/// The largest message [`Outgoing::next_part`] makes by default.
pub(crate) const PART_BUDGET: usize = MAX_MESSAGE_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: TaskState, index: u64, image: &str) -> Shared<api::Task> {
        Shared::new(api::Task {
            id: id.into(),
            status: Some(api::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            meta: Some(api::Meta {
                version: Some(api::Version { index }),
                ..Default::default()
            }),
            service_id: image.into(),
            ..Default::default()
        })
    }

    /// A task whose encoded size is about `bytes`.
    fn big_task(id: &str, state: TaskState, bytes: usize) -> Shared<api::Task> {
        let mut t = task(id, state, 1, "svc").into_inner();
        t.spec = Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    env: vec![format!("E={}", "x".repeat(bytes))],
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
        Shared::new(t)
    }

    fn ids(changes: &[api::AssignmentChange]) -> Vec<(String, i32)> {
        changes
            .iter()
            .map(|c| {
                let Some(api::assignment::Item::Task(t)) =
                    c.assignment.as_ref().and_then(|a| a.item.as_ref())
                else {
                    panic!("not a task");
                };
                (t.id.clone(), c.action)
            })
            .collect()
    }

    fn actions(set: &mut AssignmentSet) -> Vec<(String, i32)> {
        let mut out = set.take_changes();
        let all = out.next_part(usize::MAX);
        assert!(out.is_empty());
        ids(&all)
    }

    fn message_len(changes: Vec<api::AssignmentChange>) -> usize {
        api::AssignmentsMessage {
            r#type: 0,
            applies_to: "18446744073709551615+".into(),
            results_in: "18446744073709551615+".into(),
            changes,
        }
        .encoded_len()
    }

    #[test]
    fn agent_reported_changes_are_not_sent_back() {
        let mut set = AssignmentSet::default();
        assert!(!set.add_or_update(task("t1", TaskState::Pending, 1, "a")));
        assert!(set.add_or_update(task("t1", TaskState::Assigned, 2, "a")));
        assert!(!set.add_or_update(task("t1", TaskState::Running, 3, "a")));
        assert!(set.add_or_update(task("t1", TaskState::Running, 4, "b")));
        assert!(
            !set.add_or_update(task("t1", TaskState::Assigned, 3, "a")),
            "older version"
        );
        assert_eq!(actions(&mut set), vec![("t1".to_string(), 0)]);
        assert!(set.remove("t1"));
        assert!(!set.remove("t1"));
        assert_eq!(
            actions(&mut set),
            vec![("t1".to_string(), AssignmentAction::Remove as i32)]
        );
        assert!(set.take_changes().is_empty());
    }

    #[test]
    fn stable_equality_ignores_only_status_and_meta() {
        let a = task("t1", TaskState::Assigned, 1, "a");
        let b = task("t1", TaskState::Running, 9, "a");
        assert!(tasks_equal_stable(&a, &b));
        let mut c = b.clone().into_inner();
        c.desired_state = TaskState::Shutdown as i32;
        assert!(!tasks_equal_stable(&a, &c));
        let mut d = b.into_inner();
        d.slot = 2;
        assert!(!tasks_equal_stable(&a, &d));
    }

    /// Five tasks of ~1.4 MiB (just under the raft entry limit) and small ones: every part
    /// stays under the bound, every task is sent once, the running ones first.
    #[test]
    fn a_large_complete_set_is_split_under_the_bound() {
        let mut set = AssignmentSet::default();
        for i in 0..5 {
            let state = if i < 2 {
                TaskState::Running
            } else {
                TaskState::Assigned
            };
            assert!(set.add_or_update(big_task(&format!("big{i}"), state, 1_400_000)));
        }
        for i in 0..50 {
            assert!(set.add_or_update(task(&format!("small{i}"), TaskState::Assigned, 1, "s")));
        }
        let mut out = set.take_complete();
        assert_eq!(out.len(), 55);
        let mut parts = Vec::new();
        while !out.is_empty() {
            parts.push(out.next_part(PART_BUDGET));
        }
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut seen = Vec::new();
        for part in parts {
            seen.extend(ids(&part));
            let len = message_len(part);
            assert!(len <= MAX_MESSAGE_BYTES, "a part of {len} bytes");
            assert!(len < 4 << 20);
        }
        assert_eq!(seen.len(), 55);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 55, "each task once");
        // The tasks the agent runs come first, in the first message.
        let mut again = set.take_complete();
        let first = ids(&again.next_part(PART_BUDGET));
        assert_eq!(first[0].0, "big0");
        assert_eq!(first[1].0, "big1");
        assert!(set.take_changes().is_empty(), "the set supersedes changes");
    }

    #[test]
    fn a_large_incremental_batch_is_split_and_a_huge_task_goes_alone() {
        let mut set = AssignmentSet::default();
        for i in 0..4 {
            set.add_or_update(big_task(&format!("b{i}"), TaskState::Assigned, 1_000_000));
        }
        set.take_changes();
        // An update of all four, a removal, and one task over the bound.
        for i in 0..4 {
            let mut t = big_task(&format!("b{i}"), TaskState::Assigned, 1_000_001).into_inner();
            t.meta = Some(api::Meta {
                version: Some(api::Version { index: 5 }),
                ..Default::default()
            });
            assert!(set.add_or_update(Shared::new(t)));
        }
        assert!(set.remove("b3"));
        assert!(set.add_or_update(big_task("huge", TaskState::Assigned, 5_000_000)));
        let mut out = set.take_changes();
        let mut parts = Vec::new();
        while !out.is_empty() {
            parts.push(out.next_part(PART_BUDGET));
        }
        let all: Vec<_> = parts.iter().flat_map(|p| ids(p)).collect();
        assert_eq!(all.len(), 5);
        assert!(all.contains(&("b3".to_string(), AssignmentAction::Remove as i32)));
        for part in parts {
            let alone = part.len() == 1;
            let len = message_len(part);
            assert!(len <= MAX_MESSAGE_BYTES || alone, "a part of {len} bytes");
        }
    }
}
