//! What one node has been told to run, and the changes not yet sent to it (SwarmKit's
//! manager/dispatcher/assignments.go): its tasks, and the secrets and configs those tasks
//! reference (`ContainerSpec.secrets`/`configs` and `TaskSpec.resource_references`), with their
//! data. A dependency is sent when the first task needing it enters the set and removed when its
//! last user lets go of it (the task ends past RUNNING or leaves the set), so a node holds exactly
//! the secrets its tasks need. Volumes are not assigned yet.
//!
//! The set holds the store's shared versions of tasks, secrets and configs, so a node's
//! assignments cost the dispatcher a reference per object, not a copy; a message is built (the
//! objects copied into it) only when it is sent, one part at a time: a set or a batch of changes
//! larger than [`MAX_MESSAGE_BYTES`] goes out in several messages (see `api::assignment_parts`).
//! Within what goes out, dependencies come before the tasks that need them and their removals
//! after the task changes, across parts too, so an agent applying the changes in order has a
//! task's secrets before the task and drops them only after it. Nothing here prints a secret: the
//! types holding them have no `Debug`, and a missing one is logged by its ID.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use api::assignment_change::AssignmentAction;
use api::assignment_parts::MAX_MESSAGE_BYTES;
use api::{ResourceType, TaskState};
use prost::Message;
use store::{MemoryStore, ReadTx, Shared};
use tracing::{debug, warn};

/// Bytes of a message that are not its changes: its type and the two sequence strings.
const MESSAGE_OVERHEAD: usize = 64;

/// A secret or config a task references, by kind and ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum DepKey {
    Secret(String),
    Config(String),
}

impl DepKey {
    fn kind(&self) -> &'static str {
        match self {
            DepKey::Secret(_) => "secret",
            DepKey::Config(_) => "config",
        }
    }

    fn id(&self) -> &str {
        match self {
            DepKey::Secret(id) | DepKey::Config(id) => id,
        }
    }

    fn fetch(&self, lookup: &impl Lookup) -> Option<Dependency> {
        match self {
            DepKey::Secret(id) => lookup.secret(id).map(Dependency::Secret),
            DepKey::Config(id) => lookup.config(id).map(Dependency::Config),
        }
    }

    /// What an agent is told to forget: the object with only its ID.
    fn removal(&self) -> api::assignment::Item {
        let id = self.id().to_string();
        match self {
            DepKey::Secret(_) => api::assignment::Item::Secret(api::Secret {
                id,
                ..Default::default()
            }),
            DepKey::Config(_) => api::assignment::Item::Config(api::Config {
                id,
                ..Default::default()
            }),
        }
    }
}

/// A secret or config a task of the set needs, as the store held it when the first user came.
#[derive(Clone)]
enum Dependency {
    Secret(Shared<api::Secret>),
    Config(Shared<api::Config>),
}

/// A dependency sent to the agent and the tasks of the set that use it.
struct Held {
    object: Dependency,
    users: HashSet<String>,
}

/// Where the set finds the secrets and configs its tasks reference: a view of the store.
pub(crate) trait Lookup {
    fn secret(&self, id: &str) -> Option<Shared<api::Secret>>;
    fn config(&self, id: &str) -> Option<Shared<api::Config>>;
}

impl Lookup for ReadTx<'_> {
    fn secret(&self, id: &str) -> Option<Shared<api::Secret>> {
        self.get_shared(id)
    }
    fn config(&self, id: &str) -> Option<Shared<api::Config>> {
        self.get_shared(id)
    }
}

/// Each lookup in its own short view, so that an event without new dependencies (most of them)
/// takes no store lock at all.
impl Lookup for MemoryStore {
    fn secret(&self, id: &str) -> Option<Shared<api::Secret>> {
        self.view(|tx| tx.get_shared(id))
    }
    fn config(&self, id: &str) -> Option<Shared<api::Config>> {
        self.view(|tx| tx.get_shared(id))
    }
}

/// The tasks assigned to one node, the dependencies they hold, and the pending changes of its
/// next message. No `Debug`: it holds secret data.
#[derive(Default)]
pub(crate) struct AssignmentSet {
    tasks: HashMap<String, Shared<api::Task>>,
    /// Task ID to what the agent must do with it (for an update, the version in `tasks`).
    changes: BTreeMap<String, AssignmentAction>,
    deps: HashMap<DepKey, Held>,
    /// Task ID to the dependencies it holds, so that each is released exactly once.
    held_by: HashMap<String, Vec<DepKey>>,
    /// Dependency to what the agent must do with it (for an update, the object in `deps`).
    dep_changes: BTreeMap<DepKey, AssignmentAction>,
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

/// The secrets and configs `t` references, each once.
fn references(t: &api::Task) -> BTreeSet<DepKey> {
    let mut keys = BTreeSet::new();
    let Some(spec) = &t.spec else {
        return keys;
    };
    for r in &spec.resource_references {
        match ResourceType::try_from(r.resource_type) {
            Ok(ResourceType::Secret) => keys.insert(DepKey::Secret(r.resource_id.clone())),
            Ok(ResourceType::Config) => keys.insert(DepKey::Config(r.resource_id.clone())),
            _ => {
                debug!(task.id = %t.id, resource.type = r.resource_type, "invalid resource type for a task dependency, skipping");
                continue;
            }
        };
    }
    if let Some(c) = t.container() {
        keys.extend(
            c.secrets
                .iter()
                .map(|r| DepKey::Secret(r.secret_id.clone())),
        );
        keys.extend(
            c.configs
                .iter()
                .map(|r| DepKey::Config(r.config_id.clone())),
        );
    }
    keys
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

/// One change of an outgoing message, holding what it sends until it is built.
enum Out {
    Task(Shared<api::Task>),
    RemoveTask(String),
    Dependency(Dependency),
    RemoveDependency(DepKey),
}

impl Out {
    /// The kind and ID of what the change is about, for logs.
    fn describe(&self) -> (&'static str, &str) {
        match self {
            Out::Task(t) => ("task", &t.id),
            Out::RemoveTask(id) => ("task", id),
            Out::Dependency(Dependency::Secret(s)) => ("secret", &s.id),
            Out::Dependency(Dependency::Config(c)) => ("config", &c.id),
            Out::RemoveDependency(key) => (key.kind(), key.id()),
        }
    }

    fn change(&self) -> api::AssignmentChange {
        use api::assignment::Item;
        let (item, action) = match self {
            Out::Task(t) => (Item::Task(api::Task::clone(t)), AssignmentAction::Update),
            Out::RemoveTask(id) => (
                Item::Task(api::Task {
                    id: id.clone(),
                    ..Default::default()
                }),
                AssignmentAction::Remove,
            ),
            Out::Dependency(Dependency::Secret(s)) => (
                Item::Secret(api::Secret::clone(s)),
                AssignmentAction::Update,
            ),
            Out::Dependency(Dependency::Config(c)) => (
                Item::Config(api::Config::clone(c)),
                AssignmentAction::Update,
            ),
            Out::RemoveDependency(key) => (key.removal(), AssignmentAction::Remove),
        };
        api::AssignmentChange {
            assignment: Some(api::Assignment { item: Some(item) }),
            action: action as i32,
        }
    }
}

/// Changes taken from a set, in the order they must reach the agent, to be sent in as many
/// messages as their size needs. No `Debug`: it holds secret data.
#[derive(Default)]
pub(crate) struct Outgoing {
    items: VecDeque<Out>,
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
        while let Some(out) = self.items.front() {
            let c = out.change();
            // Field 4 of the message: a one-byte key, the length, the change.
            let len = c.encoded_len();
            let encoded = 1 + prost::length_delimiter_len(len) + len;
            if !part.is_empty() && size + encoded > budget {
                break;
            }
            if encoded > budget {
                let (kind, id) = out.describe();
                warn!(assignment.kind = kind, assignment.id = %id, bytes = encoded, "an assignment is larger than the message bound: sent alone");
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
    /// reported (status above ASSIGNED) is not sent back, but if it ends the task (past RUNNING)
    /// the task's dependencies are released, which may be news; an older version than the one
    /// held (an event that overlapped the first view) is ignored. A task new to the set and not
    /// past RUNNING takes its dependencies, looked up in `lookup` when the set holds them not yet.
    pub fn add_or_update(&mut self, lookup: &impl Lookup, t: Shared<api::Task>) -> bool {
        if state(&t) < TaskState::Assigned as i32 {
            return false;
        }
        let ended = state(&t) > TaskState::Running as i32;
        if let Some(old) = self.tasks.get(&t.id) {
            if version(&t) != 0 && version(&t) <= version(old) {
                return false;
            }
            // States up to ASSIGNED are set by the orchestrator and scheduler, so the agent
            // hears of those even when nothing else changed.
            if tasks_equal_stable(old, &t) && state(&t) > TaskState::Assigned as i32 {
                let id = t.id.clone();
                self.tasks.insert(id.clone(), t);
                return ended && self.release(&id);
            }
            if ended {
                self.release(&t.id);
            }
        } else if !ended {
            // Tasks are never created past RUNNING: one seen so first is over, and its
            // dependencies are no longer needed.
            self.hold(lookup, &t);
        }
        self.changes.insert(t.id.clone(), AssignmentAction::Update);
        self.tasks.insert(t.id.clone(), t);
        true
    }

    /// Forgets a deleted task and releases its dependencies; true if the agent had it.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.tasks.remove(id).is_none() {
            return false;
        }
        self.changes
            .insert(id.to_string(), AssignmentAction::Remove);
        self.release(id);
        true
    }

    /// Makes `t` a user of the dependencies it references; the first user of one sends it. One
    /// that the store no longer has (deleted meanwhile) is skipped: the agent will fail the task
    /// for want of it, as SwarmKit's does.
    fn hold(&mut self, lookup: &impl Lookup, t: &api::Task) {
        let mut held = Vec::new();
        for key in references(t) {
            if let Some(dep) = self.deps.get_mut(&key) {
                dep.users.insert(t.id.clone());
                held.push(key);
                continue;
            }
            let Some(object) = key.fetch(lookup) else {
                debug!(resource.type = key.kind(), resource.id = %key.id(), task.id = %t.id, "task dependency not found, skipping");
                continue;
            };
            self.deps.insert(
                key.clone(),
                Held {
                    object,
                    users: HashSet::from([t.id.clone()]),
                },
            );
            self.dep_changes
                .insert(key.clone(), AssignmentAction::Update);
            held.push(key);
        }
        if !held.is_empty() {
            self.held_by.insert(t.id.clone(), held);
        }
    }

    /// Ends task `id`'s use of its dependencies; one left without users is removed from the
    /// agent. True if one was.
    fn release(&mut self, id: &str) -> bool {
        let Some(keys) = self.held_by.remove(id) else {
            return false;
        };
        let mut removed = false;
        for key in keys {
            let Some(dep) = self.deps.get_mut(&key) else {
                continue;
            };
            dep.users.remove(id);
            if dep.users.is_empty() {
                self.deps.remove(&key);
                self.dep_changes.insert(key, AssignmentAction::Remove);
                removed = true;
            }
        }
        removed
    }

    /// The pending changes: new dependencies first, then the tasks by ID, then the removed
    /// dependencies; the next message starts empty.
    pub fn take_changes(&mut self) -> Outgoing {
        let mut items = VecDeque::new();
        let mut removals = Vec::new();
        for (key, action) in std::mem::take(&mut self.dep_changes) {
            match action {
                AssignmentAction::Update => items.extend(
                    self.deps
                        .get(&key)
                        .map(|d| Out::Dependency(d.object.clone())),
                ),
                AssignmentAction::Remove => removals.push(Out::RemoveDependency(key)),
            }
        }
        for (id, action) in std::mem::take(&mut self.changes) {
            match action {
                AssignmentAction::Update => {
                    items.extend(self.tasks.get(&id).cloned().map(Out::Task))
                }
                AssignmentAction::Remove => items.push_back(Out::RemoveTask(id)),
            }
        }
        items.extend(removals);
        Outgoing { items }
    }

    /// Everything of the set, as the changes of a COMPLETE message: the dependencies first, then
    /// the tasks the agent already reported on (past ASSIGNED), so that when the set needs several
    /// messages an agent that applies the first as the whole set (SwarmKit's) keeps what it runs
    /// with what it needs. Pending changes are dropped: the set supersedes them.
    pub fn take_complete(&mut self) -> Outgoing {
        self.changes.clear();
        self.dep_changes.clear();
        let mut deps: Vec<(&DepKey, &Held)> = self.deps.iter().collect();
        deps.sort_by(|a, b| a.0.cmp(b.0));
        let mut tasks: Vec<&Shared<api::Task>> = self.tasks.values().collect();
        tasks.sort_by(|a, b| {
            let unseen = |t: &api::Task| state(t) <= TaskState::Assigned as i32;
            (unseen(a), &a.id).cmp(&(unseen(b), &b.id))
        });
        let items = deps
            .into_iter()
            .map(|(_, d)| Out::Dependency(d.object.clone()))
            .chain(tasks.into_iter().cloned().map(Out::Task))
            .collect();
        Outgoing { items }
    }
}

/// The largest message [`Outgoing::next_part`] makes by default.
pub(crate) const PART_BUDGET: usize = MAX_MESSAGE_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::fixtures::{AssignmentItem, assignment_items};

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

    /// A store without secrets or configs.
    const NOTHING: Fake = Fake {
        secrets: Vec::new(),
        configs: Vec::new(),
    };

    /// The secrets and configs a test's store holds.
    struct Fake {
        secrets: Vec<Shared<api::Secret>>,
        configs: Vec<Shared<api::Config>>,
    }

    impl Lookup for Fake {
        fn secret(&self, id: &str) -> Option<Shared<api::Secret>> {
            self.secrets.iter().find(|s| s.id == id).cloned()
        }
        fn config(&self, id: &str) -> Option<Shared<api::Config>> {
            self.configs.iter().find(|c| c.id == id).cloned()
        }
    }

    /// Secrets `s1`, `s2` and config `c1`, each with data `<id>-data`.
    fn store() -> Fake {
        let secret = |id: &str| {
            Shared::new(api::Secret {
                id: id.into(),
                spec: Some(api::SecretSpec {
                    data: format!("{id}-data").into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        Fake {
            secrets: vec![secret("s1"), secret("s2")],
            configs: vec![Shared::new(api::Config {
                id: "c1".into(),
                spec: Some(api::ConfigSpec {
                    data: b"c1-data".to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            })],
        }
    }

    /// `t` referencing `secrets` and `configs` from its container spec, and `by_reference`
    /// secrets through `resource_references`.
    fn using(
        t: Shared<api::Task>,
        secrets: &[&str],
        configs: &[&str],
        by_reference: &[&str],
    ) -> Shared<api::Task> {
        let mut t = t.into_inner();
        let container = api::ContainerSpec {
            secrets: secrets
                .iter()
                .map(|id| api::SecretReference {
                    secret_id: id.to_string(),
                    secret_name: format!("name-{id}"),
                    ..Default::default()
                })
                .collect(),
            configs: configs
                .iter()
                .map(|id| api::ConfigReference {
                    config_id: id.to_string(),
                    config_name: format!("name-{id}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        t.spec = Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
            resource_references: by_reference
                .iter()
                .map(|id| api::ResourceReference {
                    resource_id: id.to_string(),
                    resource_type: api::ResourceType::Secret as i32,
                })
                .collect(),
            ..Default::default()
        });
        Shared::new(t)
    }

    fn all_changes(set: &mut AssignmentSet) -> Vec<AssignmentItem> {
        let mut out = set.take_changes();
        let all = out.next_part(usize::MAX);
        assert!(out.is_empty());
        assignment_items(&all)
    }

    const UPDATE: i32 = AssignmentAction::Update as i32;
    const REMOVE: i32 = AssignmentAction::Remove as i32;

    fn update(kind: &'static str, id: &str, data: &str) -> AssignmentItem {
        (kind, id.to_string(), UPDATE, data.as_bytes().to_vec())
    }

    fn remove(kind: &'static str, id: &str) -> AssignmentItem {
        (kind, id.to_string(), REMOVE, Vec::new())
    }

    #[test]
    fn dependencies_go_with_their_first_task_and_leave_after_their_last() {
        let store = store();
        let mut set = AssignmentSet::default();
        let t1 = |state, index| using(task("t1", state, index, "a"), &["s1"], &["c1"], &[]);
        let t2 = |state, index| using(task("t2", state, index, "a"), &["s1"], &[], &["s1"]);
        assert!(!set.add_or_update(
            &store,
            using(
                task("t1", TaskState::Pending, 1, "a"),
                &["s1"],
                &["c1"],
                &[]
            )
        ));
        assert!(all_changes(&mut set).is_empty(), "not the agent's yet");
        assert!(set.add_or_update(&store, t1(TaskState::Assigned, 2)));
        assert_eq!(
            all_changes(&mut set),
            vec![
                update("secret", "s1", "s1-data"),
                update("config", "c1", "c1-data"),
                update("task", "t1", ""),
            ],
            "dependencies before the task that needs them"
        );
        // A second user (referencing it twice) gets nothing sent again.
        assert!(set.add_or_update(&store, t2(TaskState::Assigned, 3)));
        assert_eq!(all_changes(&mut set), vec![update("task", "t2", "")]);
        // t1 runs, then ends: c1 was only its own.
        assert!(!set.add_or_update(&store, t1(TaskState::Running, 4)));
        assert!(set.add_or_update(&store, t1(TaskState::Complete, 5)));
        assert_eq!(all_changes(&mut set), vec![remove("config", "c1")]);
        // Removing t1 later releases nothing twice.
        assert!(set.remove("t1"));
        assert_eq!(all_changes(&mut set), vec![remove("task", "t1")]);
        // The last user of s1 goes: the secret is removed after the task.
        assert!(set.remove("t2"));
        assert_eq!(
            all_changes(&mut set),
            vec![remove("task", "t2"), remove("secret", "s1")]
        );
        assert!(set.deps.is_empty() && set.held_by.is_empty());
    }

    #[test]
    fn a_task_ending_with_a_spec_change_releases_too_and_a_new_user_brings_it_back() {
        let store = store();
        let mut set = AssignmentSet::default();
        assert!(set.add_or_update(
            &store,
            using(task("t1", TaskState::Running, 1, "a"), &[], &[], &["s2"])
        ));
        set.take_changes();
        // Failed and told to shut down in one write: the task goes out, then the removal.
        let mut failed =
            using(task("t1", TaskState::Failed, 2, "a"), &[], &[], &["s2"]).into_inner();
        failed.desired_state = TaskState::Shutdown as i32;
        assert!(set.add_or_update(&store, Shared::new(failed)));
        // A replacement takes the secret again in the same batch: the update wins.
        assert!(set.add_or_update(
            &store,
            using(task("t2", TaskState::Assigned, 3, "a"), &["s2"], &[], &[])
        ));
        assert_eq!(
            all_changes(&mut set),
            vec![
                update("secret", "s2", "s2-data"),
                update("task", "t1", ""),
                update("task", "t2", ""),
            ]
        );
    }

    #[test]
    fn a_missing_or_unneeded_dependency_is_never_sent() {
        let store = store();
        let mut set = AssignmentSet::default();
        // Deleted meanwhile: the task goes alone, and nothing is removed later.
        assert!(set.add_or_update(
            &store,
            using(task("t1", TaskState::Assigned, 1, "a"), &["gone"], &[], &[])
        ));
        assert_eq!(all_changes(&mut set), vec![update("task", "t1", "")]);
        assert!(set.remove("t1"));
        assert_eq!(all_changes(&mut set), vec![remove("task", "t1")]);
        // A task first seen already over (a reconnecting agent's) needs none.
        assert!(set.add_or_update(
            &store,
            using(
                task("t2", TaskState::Shutdown, 1, "a"),
                &["s1"],
                &["c1"],
                &[]
            )
        ));
        assert_eq!(all_changes(&mut set), vec![update("task", "t2", "")]);
        let mut complete = set.take_complete();
        assert_eq!(
            assignment_items(&complete.next_part(usize::MAX)),
            vec![update("task", "t2", "")]
        );
    }

    /// A COMPLETE set lists the dependencies first; an incremental batch split over several
    /// messages keeps its order across them: new dependencies, tasks, removed dependencies.
    #[test]
    fn dependencies_keep_their_place_in_complete_sets_and_across_parts() {
        let mut store = store();
        for i in 0..4 {
            store.secrets.push(Shared::new(api::Secret {
                id: format!("big{i}"),
                spec: Some(api::SecretSpec {
                    data: vec![b'x'; 1_000_000],
                    ..Default::default()
                }),
                ..Default::default()
            }));
        }
        let mut set = AssignmentSet::default();
        assert!(set.add_or_update(
            &store,
            using(task("old", TaskState::Running, 1, "a"), &["s1"], &[], &[])
        ));
        let mut complete = set.take_complete();
        assert_eq!(
            assignment_items(&complete.next_part(usize::MAX)),
            vec![update("secret", "s1", "s1-data"), update("task", "old", "")]
        );
        for i in 0..4 {
            let id = format!("big{i}");
            let t = big_task(&format!("t{i}"), TaskState::Assigned, 500_000);
            assert!(set.add_or_update(&store, using(t, &[&id], &[], &[])));
        }
        assert!(set.remove("old"));
        let mut out = set.take_changes();
        let mut parts = Vec::new();
        while !out.is_empty() {
            parts.push(assignment_items(&out.next_part(PART_BUDGET)));
        }
        // 4 MB of secrets alone need two messages: the tasks follow in the second.
        assert_eq!(parts.len(), 2, "{} parts", parts.len());
        assert!(parts[0].iter().all(|(kind, ..)| *kind == "secret"));
        let order: Vec<(&str, String, i32)> = parts
            .into_iter()
            .flatten()
            .map(|(kind, id, action, _)| (kind, id, action))
            .collect();
        let rank = |(kind, _, action): &(&str, String, i32)| match (*kind, *action) {
            ("task", _) => 1,
            (_, UPDATE) => 0,
            _ => 2,
        };
        assert!(
            order.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{order:?}"
        );
        assert_eq!(order.len(), 4 + 4 + 1 + 1);
        assert_eq!(order.last(), Some(&("secret", "s1".to_string(), REMOVE)));
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
        assert!(!set.add_or_update(&NOTHING, task("t1", TaskState::Pending, 1, "a")));
        assert!(set.add_or_update(&NOTHING, task("t1", TaskState::Assigned, 2, "a")));
        assert!(!set.add_or_update(&NOTHING, task("t1", TaskState::Running, 3, "a")));
        assert!(set.add_or_update(&NOTHING, task("t1", TaskState::Running, 4, "b")));
        assert!(
            !set.add_or_update(&NOTHING, task("t1", TaskState::Assigned, 3, "a")),
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
            assert!(set.add_or_update(&NOTHING, big_task(&format!("big{i}"), state, 1_400_000)));
        }
        for i in 0..50 {
            assert!(set.add_or_update(
                &NOTHING,
                task(&format!("small{i}"), TaskState::Assigned, 1, "s")
            ));
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
            set.add_or_update(
                &NOTHING,
                big_task(&format!("b{i}"), TaskState::Assigned, 1_000_000),
            );
        }
        set.take_changes();
        // An update of all four, a removal, and one task over the bound.
        for i in 0..4 {
            let mut t = big_task(&format!("b{i}"), TaskState::Assigned, 1_000_001).into_inner();
            t.meta = Some(api::Meta {
                version: Some(api::Version { index: 5 }),
                ..Default::default()
            });
            assert!(set.add_or_update(&NOTHING, Shared::new(t)));
        }
        assert!(set.remove("b3"));
        assert!(set.add_or_update(&NOTHING, big_task("huge", TaskState::Assigned, 5_000_000)));
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
