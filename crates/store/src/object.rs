//! The ten kinds of stored objects: the [`Kind`] tag and the [`StoreObject`] trait that lets one generic
//! table, transaction and watch implementation serve them all. The per-kind part is only what differs:
//! the name an object is indexed under and its secondary index keys (SwarmKit's `nodes.go`,
//! `services.go`, `tasks.go`, ... indexers). Index lookups themselves live in `table.rs` and `by.rs`.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};

use api::{object, store_action};

use crate::hash::IdMap;
use crate::shared::Shared;
use crate::table::{Index, Overlay, Table, Tables};

/// The kind (table) of a stored object; displays as SwarmKit's table name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `api::Node`
    Node,
    /// `api::Service`
    Service,
    /// `api::Task`
    Task,
    /// `api::Network`
    Network,
    /// `api::Cluster`
    Cluster,
    /// `api::Secret`
    Secret,
    /// `api::Config`
    Config,
    /// `api::Resource`
    Resource,
    /// `api::Extension`
    Extension,
    /// `api::Volume`
    Volume,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 10] = [
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::Network,
        Kind::Cluster,
        Kind::Secret,
        Kind::Config,
        Kind::Resource,
        Kind::Extension,
        Kind::Volume,
    ];

    /// SwarmKit's table name: `node`, `service`, `task`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Cluster => "cluster",
            Kind::Secret => "secret",
            Kind::Config => "config",
            Kind::Resource => "resource",
            Kind::Extension => "extension",
            Kind::Volume => "volume",
        }
    }

    /// The kind held by an `api::Object` wrapper, if it holds anything.
    pub fn of_object(object: &api::Object) -> Option<Kind> {
        Some(match object.object.as_ref()? {
            object::Object::Node(_) => Kind::Node,
            object::Object::Service(_) => Kind::Service,
            object::Object::Task(_) => Kind::Task,
            object::Object::Network(_) => Kind::Network,
            object::Object::Cluster(_) => Kind::Cluster,
            object::Object::Secret(_) => Kind::Secret,
            object::Object::Config(_) => Kind::Config,
            object::Object::Resource(_) => Kind::Resource,
            object::Object::Extension(_) => Kind::Extension,
            object::Object::Volume(_) => Kind::Volume,
        })
    }

    /// Bit of this kind in a `WatchFilter` mask.
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object that lives in the store: implemented for `api::{Node, Service, Task, Network, Cluster,
/// Secret, Config, Resource, Extension, Volume}`. The hidden methods connect a type to its table and
/// are not meant to be called from outside this crate.
pub trait StoreObject: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// Which table the type lives in.
    const KIND: Kind;
    /// Whether two objects of this kind may share a name (nodes and tasks may, the others may not).
    const UNIQUE_NAME: bool;
    #[doc(hidden)]
    /// Whether the table keeps a name index. Without one (tasks: their names are only looked up
    /// by the control API's list filters, while every assignment of a slot-less task renames it),
    /// a name lookup walks the objects.
    const NAME_INDEXED: bool;

    /// The object's ID.
    fn id(&self) -> &str;
    /// The object's meta, if set.
    fn meta(&self) -> Option<&api::Meta>;
    /// The object's meta, created empty if unset.
    fn meta_mut(&mut self) -> &mut api::Meta;
    /// The name the object is indexed under (as stored, not lower-cased); may be empty.
    fn name(&self) -> String;
    /// Wraps the object in the `api::Object` oneof used by watch events.
    fn into_object(self) -> api::Object;
    /// The object held by an `api::Object`, if it is of this kind.
    fn from_object(object: api::Object) -> Option<Self>;
    /// Borrows the object held by an `api::Object`, if it is of this kind.
    fn in_object(object: &api::Object) -> Option<&Self>;
    #[doc(hidden)]
    /// Mutably borrows the object held by an `api::Object`, if it is of this kind.
    fn in_object_mut(object: &mut api::Object) -> Option<&mut Self>;
    /// Wraps the object as the target of a `api::StoreAction`.
    fn into_target(self) -> store_action::Target;

    /// `meta.version.index`, 0 when unset.
    fn version(&self) -> u64 {
        self.meta()
            .and_then(|m| m.version.as_ref())
            .map_or(0, |v| v.index)
    }

    #[doc(hidden)]
    /// Secondary index keys of the object (the name included, lower-cased), borrowed from the
    /// object where they can be.
    fn index_keys(&self) -> Vec<(Index, Cow<'_, str>)>;
    #[doc(hidden)]
    /// The keys the object's table indexes it under: [`StoreObject::index_keys`] without the name
    /// for kinds whose names are not indexed.
    fn stored_keys(&self) -> Vec<(Index, Cow<'_, str>)>;
    #[doc(hidden)]
    /// The stored keys an update from `old` to `new` takes away and those it adds (the same sets
    /// as diffing [`StoreObject::stored_keys`], built without the keys that did not change where a
    /// kind knows cheaply which did).
    fn changed_keys<'a>(old: &'a Self, new: &'a Self) -> KeyChanges<'a>;
    #[doc(hidden)]
    fn table(tables: &Tables) -> &Table<Self>;
    #[doc(hidden)]
    fn table_mut(tables: &mut Tables) -> &mut Table<Self>;
    #[doc(hidden)]
    fn overlay(overlay: &Overlay) -> &IdMap<Arc<str>, Option<Shared<Self>>>;
    #[doc(hidden)]
    fn overlay_mut(overlay: &mut Overlay) -> &mut IdMap<Arc<str>, Option<Shared<Self>>>;
}

/// Implements the boilerplate of [`StoreObject`]; `$name` and `$keys` are the per-kind functions.
macro_rules! store_object {
    ($ty:ident, $field:ident, unique: $unique:expr, indexed: $indexed:expr, name: $name:path, keys: $keys:path, diff: $diff:path) => {
        impl StoreObject for api::$ty {
            const KIND: Kind = Kind::$ty;
            const UNIQUE_NAME: bool = $unique;
            const NAME_INDEXED: bool = $indexed;

            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> Option<&api::Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut api::Meta {
                self.meta.get_or_insert_with(Default::default)
            }
            fn name(&self) -> String {
                $name(self).into_owned()
            }
            fn into_object(self) -> api::Object {
                api::Object {
                    object: Some(object::Object::$ty(Box::new(self))),
                }
            }
            fn from_object(object: api::Object) -> Option<Self> {
                match object.object? {
                    object::Object::$ty(o) => Some(*o),
                    _ => None,
                }
            }
            fn in_object(object: &api::Object) -> Option<&Self> {
                match object.object.as_ref()? {
                    object::Object::$ty(o) => Some(&**o),
                    _ => None,
                }
            }
            fn in_object_mut(object: &mut api::Object) -> Option<&mut Self> {
                match object.object.as_mut()? {
                    object::Object::$ty(o) => Some(&mut **o),
                    _ => None,
                }
            }
            fn into_target(self) -> store_action::Target {
                store_action::Target::$ty(self)
            }
            fn index_keys(&self) -> Vec<(Index, Cow<'_, str>)> {
                let mut keys = Vec::with_capacity(8);
                let name = $name(self);
                if !name.is_empty() {
                    keys.push((Index::Name, lower_case(name)));
                }
                $keys(self, &mut keys);
                keys
            }
            fn stored_keys(&self) -> Vec<(Index, Cow<'_, str>)> {
                if !$indexed {
                    let mut keys = Vec::with_capacity(8);
                    $keys(self, &mut keys);
                    return keys;
                }
                self.index_keys()
            }
            fn changed_keys<'a>(old: &'a Self, new: &'a Self) -> KeyChanges<'a> {
                $diff(old, new)
            }
            fn table(tables: &Tables) -> &Table<Self> {
                &tables.$field
            }
            fn table_mut(tables: &mut Tables) -> &mut Table<Self> {
                &mut tables.$field
            }
            fn overlay(overlay: &Overlay) -> &IdMap<Arc<str>, Option<Shared<Self>>> {
                &overlay.$field
            }
            fn overlay_mut(overlay: &mut Overlay) -> &mut IdMap<Arc<str>, Option<Shared<Self>>> {
                &mut overlay.$field
            }
        }
    };
}

store_object!(Node, nodes, unique: false, indexed: true, name: node_name, keys: node_keys, diff: diff_keys);
store_object!(Service, services, unique: true, indexed: true, name: service_name, keys: service_keys, diff: diff_keys);
store_object!(Task, tasks, unique: false, indexed: false, name: task_name, keys: task_keys, diff: task_changed_keys);
store_object!(Network, networks, unique: true, indexed: true, name: network_name, keys: no_keys, diff: diff_keys);
store_object!(Cluster, clusters, unique: true, indexed: true, name: cluster_name, keys: no_keys, diff: diff_keys);
store_object!(Secret, secrets, unique: true, indexed: true, name: secret_name, keys: no_keys, diff: diff_keys);
store_object!(Config, configs, unique: true, indexed: true, name: config_name, keys: no_keys, diff: diff_keys);
store_object!(Resource, resources, unique: true, indexed: true, name: resource_name, keys: no_keys, diff: diff_keys);
store_object!(Extension, extensions, unique: true, indexed: true, name: extension_name, keys: no_keys, diff: diff_keys);
store_object!(Volume, volumes, unique: true, indexed: true, name: volume_name, keys: no_keys, diff: diff_keys);

/// Index keys as [`StoreObject::index_keys`] lists them.
#[doc(hidden)]
pub type Keys<'a> = Vec<(Index, Cow<'a, str>)>;
/// (keys taken away, keys added) by an update.
#[doc(hidden)]
pub type KeyChanges<'a> = (Keys<'a>, Keys<'a>);

/// The stored keys of `old` that `new` lacks and those of `new` that `old` lacks.
fn diff_keys<'a, T: StoreObject>(old: &'a T, new: &'a T) -> KeyChanges<'a> {
    diff_key_lists(old.stored_keys(), new.stored_keys())
}

fn diff_key_lists<'a>(old: Keys<'a>, new: Keys<'a>) -> KeyChanges<'a> {
    let gone = old.iter().filter(|k| !new.contains(k)).cloned().collect();
    let added = new.into_iter().filter(|k| !old.contains(k)).collect();
    (gone, added)
}

/// [`diff_keys`] for tasks, key by key: an update usually changes the state and the node only, so
/// the slot key and the references are only built when what they come from changed. (Task names
/// are not indexed.)
fn task_changed_keys<'a>(old: &'a api::Task, new: &'a api::Task) -> KeyChanges<'a> {
    let mut gone = Vec::new();
    let mut added = Vec::new();
    let mut pair = |index: Index, o: Cow<'a, str>, n: Cow<'a, str>| {
        if o != n {
            gone.push((index, o));
            added.push((index, n));
        }
    };
    pair(
        Index::ServiceId,
        Cow::Borrowed(old.service_id.as_str()),
        Cow::Borrowed(new.service_id.as_str()),
    );
    pair(
        Index::NodeId,
        Cow::Borrowed(old.node_id.as_str()),
        Cow::Borrowed(new.node_id.as_str()),
    );
    if old.service_id != new.service_id || old.slot != new.slot {
        pair(
            Index::Slot,
            Cow::Owned(slot_key(&old.service_id, old.slot)),
            Cow::Owned(slot_key(&new.service_id, new.slot)),
        );
    }
    pair(
        Index::DesiredState,
        number_key(old.desired_state),
        number_key(new.desired_state),
    );
    let observed = |t: &api::Task| t.status.as_ref().map_or(0, |s| s.state);
    pair(
        Index::TaskState,
        number_key(observed(old)),
        number_key(observed(new)),
    );
    let (mut old_refs, mut new_refs) = (Vec::new(), Vec::new());
    task_refs(old, &mut old_refs);
    task_refs(new, &mut new_refs);
    if old_refs != new_refs {
        let (g, a) = diff_key_lists(old_refs, new_refs);
        gone.extend(g);
        added.extend(a);
    }
    (gone, added)
}

/// Runs `$body` with the type alias `$t` naming the object type of `Kind` `$kind`.
macro_rules! with_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            Kind::Node => {
                type $t = api::Node;
                $body
            }
            Kind::Service => {
                type $t = api::Service;
                $body
            }
            Kind::Task => {
                type $t = api::Task;
                $body
            }
            Kind::Network => {
                type $t = api::Network;
                $body
            }
            Kind::Cluster => {
                type $t = api::Cluster;
                $body
            }
            Kind::Secret => {
                type $t = api::Secret;
                $body
            }
            Kind::Config => {
                type $t = api::Config;
                $body
            }
            Kind::Resource => {
                type $t = api::Resource;
                $body
            }
            Kind::Extension => {
                type $t = api::Extension;
                $body
            }
            Kind::Volume => {
                type $t = api::Volume;
                $body
            }
        }
    };
}
pub(crate) use with_kind;

/// Generates the conversions between the `api::Object` wrapper and the `api::StoreAction` target.
macro_rules! target_conversions {
    ($($ty:ident),*) => {
        /// The object a store action targets, in the wrapper watch events carry.
        pub(crate) fn target_into_object(target: store_action::Target) -> api::Object {
            api::Object {
                object: Some(match target {
                    $(store_action::Target::$ty(o) => object::Object::$ty(Box::new(o)),)*
                }),
            }
        }

        /// The store action target of a wrapped object; `None` for an empty wrapper.
        pub(crate) fn object_into_target(object: api::Object) -> Option<store_action::Target> {
            Some(match object.object? {
                $(object::Object::$ty(o) => store_action::Target::$ty(*o),)*
            })
        }
    };
}

target_conversions!(
    Node, Service, Task, Network, Cluster, Secret, Config, Resource, Extension, Volume
);

fn annotations_name(a: Option<&api::Annotations>) -> Cow<'_, str> {
    a.map_or(Cow::Borrowed(""), |a| Cow::Borrowed(a.name.as_str()))
}

/// Lower-cased, without a copy when it is already.
fn lower_case(name: Cow<'_, str>) -> Cow<'_, str> {
    if name.is_ascii() && !name.bytes().any(|b| b.is_ascii_uppercase()) {
        name
    } else {
        Cow::Owned(name.to_lowercase())
    }
}

/// Decimal numbers of the numeric index keys (states, roles, ...), written once.
static NUMBERS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..=1024).map(|n| n.to_string()).collect());

/// An index key for a number.
fn number_key(n: i32) -> Cow<'static, str> {
    match usize::try_from(n).ok().and_then(|i| NUMBERS.get(i)) {
        Some(s) => Cow::Borrowed(s.as_str()),
        None => Cow::Owned(n.to_string()),
    }
}

/// A node is found by its spec name when set, else by the hostname it reported.
fn node_name(n: &api::Node) -> Cow<'_, str> {
    let name = annotations_name(n.spec.as_ref().and_then(|s| s.annotations.as_ref()));
    if !name.is_empty() {
        return name;
    }
    n.description
        .as_ref()
        .map_or(Cow::Borrowed(""), |d| Cow::Borrowed(d.hostname.as_str()))
}

fn service_name(s: &api::Service) -> Cow<'_, str> {
    annotations_name(s.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

/// A task's name is its own annotation when set, else `<service>.<slot or node>.<id>`.
fn task_name(t: &api::Task) -> Cow<'_, str> {
    let own = annotations_name(t.annotations.as_ref());
    if !own.is_empty() {
        return own;
    }
    let service = annotations_name(t.service_annotations.as_ref());
    Cow::Owned(api::naming::task_name(&service, t.slot, &t.node_id, &t.id))
}

fn network_name(n: &api::Network) -> Cow<'_, str> {
    annotations_name(n.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

fn cluster_name(c: &api::Cluster) -> Cow<'_, str> {
    annotations_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

fn secret_name(s: &api::Secret) -> Cow<'_, str> {
    annotations_name(s.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

fn config_name(c: &api::Config) -> Cow<'_, str> {
    annotations_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

fn resource_name(r: &api::Resource) -> Cow<'_, str> {
    annotations_name(r.annotations.as_ref())
}

fn extension_name(e: &api::Extension) -> Cow<'_, str> {
    annotations_name(e.annotations.as_ref())
}

fn volume_name(v: &api::Volume) -> Cow<'_, str> {
    annotations_name(v.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

fn no_keys<T>(_: &T, _: &mut Vec<(Index, Cow<'_, str>)>) {}

fn node_keys<'a>(n: &'a api::Node, keys: &mut Vec<(Index, Cow<'a, str>)>) {
    keys.push((Index::Role, number_key(n.role)));
    let membership = n.spec.as_ref().map_or(0, |s| s.membership);
    keys.push((Index::Membership, number_key(membership)));
}

/// Secrets and configs referenced by a container runtime (SwarmKit indexes nothing for other runtimes).
fn runtime_refs<'a>(spec: Option<&'a api::TaskSpec>, keys: &mut Vec<(Index, Cow<'a, str>)>) {
    let Some(api::task_spec::Runtime::Container(c)) = spec.and_then(|s| s.runtime.as_ref()) else {
        return;
    };
    keys.extend(
        c.secrets
            .iter()
            .map(|r| (Index::Secret, Cow::Borrowed(r.secret_id.as_str()))),
    );
    keys.extend(
        c.configs
            .iter()
            .map(|r| (Index::Config, Cow::Borrowed(r.config_id.as_str()))),
    );
}

/// A service references the networks of its task spec, or the deprecated service-level ones when the
/// task spec names none (SwarmKit's `serviceIndexerByNetwork`).
fn service_keys<'a>(s: &'a api::Service, keys: &mut Vec<(Index, Cow<'a, str>)>) {
    let Some(spec) = s.spec.as_ref() else {
        return;
    };
    let task_networks = spec
        .task
        .as_ref()
        .map(|t| t.networks.as_slice())
        .unwrap_or_default();
    let networks = if task_networks.is_empty() {
        spec.networks.as_slice()
    } else {
        task_networks
    };
    keys.extend(
        networks
            .iter()
            .map(|n| (Index::Network, Cow::Borrowed(n.target.as_str()))),
    );
    runtime_refs(spec.task.as_ref(), keys);
}

fn task_keys<'a>(t: &'a api::Task, keys: &mut Vec<(Index, Cow<'a, str>)>) {
    keys.push((Index::ServiceId, Cow::Borrowed(t.service_id.as_str())));
    keys.push((Index::NodeId, Cow::Borrowed(t.node_id.as_str())));
    keys.push((Index::Slot, Cow::Owned(slot_key(&t.service_id, t.slot))));
    keys.push((Index::DesiredState, number_key(t.desired_state)));
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    keys.push((Index::TaskState, number_key(observed)));
    task_refs(t, keys);
}

/// The networks, secrets and configs a task references, as index keys.
fn task_refs<'a>(t: &'a api::Task, keys: &mut Vec<(Index, Cow<'a, str>)>) {
    if let Some(spec) = t.spec.as_ref() {
        keys.extend(
            spec.networks
                .iter()
                .map(|n| (Index::Network, Cow::Borrowed(n.target.as_str()))),
        );
    }
    runtime_refs(t.spec.as_ref(), keys);
}

/// Key of the slot index: service ID and slot, NUL-separated so no service ID can run into a slot.
pub(crate) fn slot_key(service_id: &str, slot: u64) -> String {
    format!("{service_id}\0{slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(name: &str) -> Option<api::Annotations> {
        Some(api::Annotations {
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn node_name_prefers_spec_name_over_hostname() {
        let mut n = api::Node {
            id: "n1".into(),
            description: Some(api::NodeDescription {
                hostname: "Host-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(n.name(), "Host-1");
        n.spec = Some(api::NodeSpec {
            annotations: annotations("named"),
            ..Default::default()
        });
        assert_eq!(n.name(), "named");
        assert!(n.index_keys().contains(&(Index::Name, "named".into())));
    }

    #[test]
    fn task_name_falls_back_to_service_slot_and_id() {
        let mut t = api::Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 3,
            service_annotations: annotations("Web"),
            ..Default::default()
        };
        assert_eq!(t.name(), "Web.3.t1");
        assert!(t.index_keys().contains(&(Index::Name, "web.3.t1".into())));
        t.slot = 0;
        t.node_id = "n9".into();
        assert_eq!(t.name(), "Web.n9.t1");
        t.annotations = annotations("own");
        assert_eq!(t.name(), "own");
    }

    #[test]
    fn service_references_task_networks_before_service_networks() {
        let net = |t: &str| api::NetworkAttachmentConfig {
            target: t.into(),
            ..Default::default()
        };
        let mut s = api::Service {
            id: "s1".into(),
            spec: Some(api::ServiceSpec {
                networks: vec![net("old")],
                task: Some(api::TaskSpec {
                    runtime: Some(api::task_spec::Runtime::Container(Box::new(
                        api::ContainerSpec {
                            secrets: vec![api::SecretReference {
                                secret_id: "sec".into(),
                                ..Default::default()
                            }],
                            configs: vec![api::ConfigReference {
                                config_id: "cfg".into(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    ))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let keys = s.index_keys();
        assert!(keys.contains(&(Index::Network, "old".into())));
        assert!(keys.contains(&(Index::Secret, "sec".into())));
        assert!(keys.contains(&(Index::Config, "cfg".into())));
        let spec = s.spec.as_mut().expect("spec set above");
        spec.task.as_mut().expect("task set above").networks = vec![net("new")];
        let keys = s.index_keys();
        assert!(keys.contains(&(Index::Network, "new".into())));
        assert!(!keys.contains(&(Index::Network, "old".into())));
    }

    /// Sorted, to compare key sets.
    fn sorted(mut keys: Keys<'_>) -> Vec<(Index, String)> {
        keys.dedup();
        let mut keys: Vec<(Index, String)> =
            keys.into_iter().map(|(i, k)| (i, k.into_owned())).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn task_key_changes_are_those_of_the_whole_key_lists() {
        let base = api::Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 0,
            service_annotations: annotations("Web"),
            desired_state: api::TaskState::Running as i32,
            status: Some(api::TaskStatus {
                state: api::TaskState::Pending as i32,
                ..Default::default()
            }),
            spec: Some(api::TaskSpec {
                networks: vec![api::NetworkAttachmentConfig {
                    target: "net1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let changes: Vec<fn(&mut api::Task)> = vec![
            |_| {},
            |t| t.node_id = "n1".into(),
            |t| {
                t.node_id = "n1".into();
                t.status.as_mut().unwrap().state = api::TaskState::Assigned as i32;
            },
            |t| t.slot = 4,
            |t| t.service_id = "s2".into(),
            |t| t.desired_state = api::TaskState::Shutdown as i32,
            |t| t.status = None,
            |t| t.annotations = annotations("Own"),
            |t| t.annotations = annotations(""),
            |t| t.service_annotations = None,
            |t| t.spec.as_mut().unwrap().networks.clear(),
            |t| t.spec.as_mut().unwrap().networks[0].target = "net2".into(),
            |t| {
                t.spec.as_mut().unwrap().runtime = Some(api::task_spec::Runtime::Container(
                    Box::new(api::ContainerSpec {
                        secrets: vec![api::SecretReference {
                            secret_id: "sec".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                ))
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut new = base.clone();
            change(&mut new);
            for (old, new) in [(&base, &new), (&new, &base)] {
                let (gone, added) = task_changed_keys(old, new);
                let (want_gone, want_added) = diff_keys(old, new);
                assert_eq!(sorted(gone), sorted(want_gone), "change {i}: keys gone");
                assert_eq!(sorted(added), sorted(want_added), "change {i}: keys added");
            }
        }
    }

    #[test]
    fn object_wrapping_round_trips() {
        let s = api::Secret {
            id: "x".into(),
            ..Default::default()
        };
        let o = s.clone().into_object();
        assert_eq!(Kind::of_object(&o), Some(Kind::Secret));
        assert_eq!(api::Secret::in_object(&o), Some(&s));
        assert_eq!(api::Config::in_object(&o), None);
        assert_eq!(api::Secret::from_object(o), Some(s));
        assert_eq!(Kind::Extension.to_string(), "extension");
    }
}
