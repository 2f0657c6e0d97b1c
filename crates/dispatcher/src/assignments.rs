//! What one node has been told to run, and the changes not yet sent to it (SwarmKit's
//! manager/dispatcher/assignments.go, tasks only). Secrets, configs and volumes are not assigned
//! yet: a task referencing them reaches the agent without them.

use std::collections::{BTreeMap, HashMap};

use api::TaskState;
use api::assignment_change::AssignmentAction;

/// The tasks assigned to one node and the pending changes of its next message.
#[derive(Debug, Default)]
pub(crate) struct AssignmentSet {
    tasks: HashMap<String, api::Task>,
    changes: BTreeMap<String, api::AssignmentChange>,
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
/// (SwarmKit's equality.TasksEqualStable).
pub(crate) fn tasks_equal_stable(a: &api::Task, b: &api::Task) -> bool {
    let strip = |t: &api::Task| api::Task {
        status: None,
        meta: None,
        ..t.clone()
    };
    strip(a) == strip(b)
}

fn change(task: api::Task, action: AssignmentAction) -> api::AssignmentChange {
    api::AssignmentChange {
        assignment: Some(api::Assignment {
            item: Some(api::assignment::Item::Task(task)),
        }),
        action: action as i32,
    }
}

impl AssignmentSet {
    /// Takes a new version of a task of this node; true if the agent must hear of it. Tasks
    /// below ASSIGNED are not the agent's yet; an update that changes only what the agent itself
    /// reported (status above ASSIGNED) is not sent back; an older version than the one held
    /// (an event that overlapped the first view) is ignored.
    pub fn add_or_update(&mut self, t: &api::Task) -> bool {
        if state(t) < TaskState::Assigned as i32 {
            return false;
        }
        if let Some(old) = self.tasks.get(&t.id) {
            if version(t) != 0 && version(t) <= version(old) {
                return false;
            }
            // States up to ASSIGNED are set by the orchestrator and scheduler, so the agent
            // hears of those even when nothing else changed.
            if tasks_equal_stable(old, t) && state(t) > TaskState::Assigned as i32 {
                self.tasks.insert(t.id.clone(), t.clone());
                return false;
            }
        }
        self.tasks.insert(t.id.clone(), t.clone());
        self.changes
            .insert(t.id.clone(), change(t.clone(), AssignmentAction::Update));
        true
    }

    /// Forgets a deleted task; true if the agent had it.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.tasks.remove(id).is_none() {
            return false;
        }
        let stub = api::Task {
            id: id.to_string(),
            ..Default::default()
        };
        self.changes
            .insert(id.to_string(), change(stub, AssignmentAction::Remove));
        true
    }

    /// The pending changes, by task ID; the next message starts empty.
    pub fn take_changes(&mut self) -> Vec<api::AssignmentChange> {
        std::mem::take(&mut self.changes).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: TaskState, index: u64, image: &str) -> api::Task {
        api::Task {
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
        }
    }

    fn actions(set: &mut AssignmentSet) -> Vec<(String, i32)> {
        set.take_changes()
            .into_iter()
            .map(|c| {
                let Some(api::assignment::Item::Task(t)) = c.assignment.and_then(|a| a.item) else {
                    panic!("not a task");
                };
                (t.id, c.action)
            })
            .collect()
    }

    #[test]
    fn agent_reported_changes_are_not_sent_back() {
        let mut set = AssignmentSet::default();
        assert!(!set.add_or_update(&task("t1", TaskState::Pending, 1, "a")));
        assert!(set.add_or_update(&task("t1", TaskState::Assigned, 2, "a")));
        assert!(!set.add_or_update(&task("t1", TaskState::Running, 3, "a")));
        assert!(set.add_or_update(&task("t1", TaskState::Running, 4, "b")));
        assert!(
            !set.add_or_update(&task("t1", TaskState::Assigned, 3, "a")),
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
}
