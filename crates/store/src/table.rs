//! One generic indexed table per object kind ([`Table`]), the set of all ten ([`Tables`]) and the
//! uncommitted changes of a transaction ([`Overlay`]). A table keeps objects by ID plus one ordered
//! multimap of `(index, key) -> IDs`, which serves both exact and prefix lookups, like the radix
//! trees of SwarmKit's go-memdb schema. What the keys are is decided per kind in `object.rs`.

use std::collections::{BTreeMap, BTreeSet};

use crate::by::Query;
use crate::object::StoreObject;

/// A secondary index of a table. Public only so the hidden `StoreObject` methods can name it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Index {
    /// Lower-cased name.
    Name,
    /// Task: service ID.
    ServiceId,
    /// Task: node ID.
    NodeId,
    /// Task: service ID and slot (`object::slot_key`).
    Slot,
    /// Task: desired state as a number.
    DesiredState,
    /// Task: observed state (`status.state`) as a number.
    TaskState,
    /// Node: role as a number.
    Role,
    /// Node: membership as a number.
    Membership,
    /// Service/task: referenced network ID.
    Network,
    /// Service/task: referenced secret ID.
    Secret,
    /// Service/task: referenced config ID.
    Config,
}

/// The objects of one kind with their index entries.
#[doc(hidden)]
#[derive(Debug)]
pub struct Table<T> {
    /// Boxed: a task is ~2 KB, and B-tree nodes shift their values on insert.
    objects: BTreeMap<String, Box<T>>,
    index: BTreeMap<(Index, String), BTreeSet<String>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: BTreeMap::new(),
            index: BTreeMap::new(),
        }
    }
}

impl<T: StoreObject> Table<T> {
    /// The object with this ID.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.objects.get(id).map(|o| &**o)
    }

    /// All objects, by ascending ID.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.objects.values().map(|o| &**o)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Inserts or replaces an object, re-indexing it. A replacement keeps its map entry and only
    /// touches the index keys that changed (most updates change none: a task's status, say).
    pub fn insert(&mut self, object: T) {
        let new_keys = object.index_keys();
        if let Some(stored) = self.objects.get_mut(object.id()) {
            let old_keys = stored.index_keys();
            let id = object.id();
            for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
                if let Some(ids) = self.index.get_mut(key) {
                    ids.remove(id);
                    if ids.is_empty() {
                        self.index.remove(key);
                    }
                }
            }
            for key in new_keys.into_iter().filter(|k| !old_keys.contains(k)) {
                self.index.entry(key).or_default().insert(id.to_string());
            }
            **stored = object;
            return;
        }
        let id = object.id().to_string();
        for key in new_keys {
            self.index.entry(key).or_default().insert(id.clone());
        }
        self.objects.insert(id, Box::new(object));
    }

    /// Removes an object and its index entries.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        let old = self.objects.remove(id)?;
        for key in old.index_keys() {
            if let Some(ids) = self.index.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        Some(*old)
    }

    /// IDs of the objects the query selects.
    pub fn lookup(&self, query: &Query) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.lookup_into(query, &mut out);
        out
    }

    fn lookup_into(&self, query: &Query, out: &mut BTreeSet<String>) {
        match query {
            Query::All => out.extend(self.objects.keys().cloned()),
            Query::Id(id) => {
                if self.objects.contains_key(id) {
                    out.insert(id.clone());
                }
            }
            Query::IdPrefix(prefix) => out.extend(
                self.objects
                    .range(prefix.clone()..)
                    .map(|(id, _)| id)
                    .take_while(|id| id.starts_with(prefix.as_str()))
                    .cloned(),
            ),
            Query::Exact(index, key) => {
                if let Some(ids) = self.index.get(&(*index, key.clone())) {
                    out.extend(ids.iter().cloned());
                }
            }
            Query::Prefix(index, prefix) => {
                let entries = self
                    .index
                    .range((*index, prefix.clone())..)
                    .take_while(|((i, key), _)| i == index && key.starts_with(prefix.as_str()));
                for (_, ids) in entries {
                    out.extend(ids.iter().cloned());
                }
            }
            Query::Or(queries) => {
                for q in queries {
                    self.lookup_into(q, out);
                }
            }
        }
    }
}

/// Declares [`Tables`] and [`Overlay`] with one field per kind; field names are those of
/// `api::StoreSnapshot`.
macro_rules! tables {
    ($($field:ident: $ty:ident),* $(,)?) => {
        /// Every table of the store.
        #[doc(hidden)]
        #[derive(Debug, Default)]
        pub struct Tables {
            $(pub(crate) $field: Table<api::$ty>,)*
        }

        /// Changes made by a transaction and not yet committed: `Some` = created or updated,
        /// `None` = removed.
        #[doc(hidden)]
        #[derive(Debug, Default)]
        pub struct Overlay {
            $(pub(crate) $field: BTreeMap<String, Option<Box<api::$ty>>>,)*
        }

        impl Tables {
            /// Every object, by kind and ascending ID.
            pub(crate) fn save(&self) -> api::StoreSnapshot {
                api::StoreSnapshot {
                    $($field: self.$field.iter().cloned().collect(),)*
                }
            }
        }

        impl Overlay {
            /// Whether nothing was changed.
            pub(crate) fn is_empty(&self) -> bool {
                true $(&& self.$field.is_empty())*
            }

            /// Writes the changes into `tables`.
            pub(crate) fn commit(self, tables: &mut Tables) {
                $(
                    for (id, change) in self.$field {
                        match change {
                            Some(object) => tables.$field.insert(*object),
                            None => {
                                tables.$field.remove(&id);
                            }
                        }
                    }
                )*
            }
        }
    };
}

tables!(
    nodes: Node,
    services: Service,
    networks: Network,
    tasks: Task,
    clusters: Cluster,
    secrets: Secret,
    resources: Resource,
    extensions: Extension,
    configs: Config,
    volumes: Volume,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, service: &str, slot: u64) -> api::Task {
        api::Task {
            id: id.into(),
            service_id: service.into(),
            slot,
            ..Default::default()
        }
    }

    #[test]
    fn reinsert_moves_index_entries() {
        let mut t = Table::default();
        t.insert(task("a", "s1", 1));
        t.insert(task("b", "s1", 2));
        assert_eq!(
            t.lookup(&Query::Exact(Index::ServiceId, "s1".into())).len(),
            2
        );
        t.insert(task("a", "s2", 1));
        let s1 = t.lookup(&Query::Exact(Index::ServiceId, "s1".into()));
        assert_eq!(s1.into_iter().collect::<Vec<_>>(), ["b"]);
        assert!(t.remove("b").is_some());
        assert!(
            t.lookup(&Query::Exact(Index::ServiceId, "s1".into()))
                .is_empty()
        );
        assert!(
            !t.index.contains_key(&(Index::ServiceId, "s1".into())),
            "empty entries are dropped"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn prefix_lookup_stays_inside_its_index() {
        let mut t = Table::default();
        t.insert(task("abc", "ab", 1));
        t.insert(task("abd", "zz", 1));
        t.insert(task("b", "ab", 1));
        let ids = t.lookup(&Query::IdPrefix("ab".into()));
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["abc", "abd"]);
        // Service IDs start with "ab" too, but a name-prefix query must not see them.
        let by_name = t.lookup(&Query::Prefix(Index::Name, "zz".into()));
        assert!(by_name.is_empty());
        let by_service = t.lookup(&Query::Prefix(Index::ServiceId, "a".into()));
        assert_eq!(by_service.into_iter().collect::<Vec<_>>(), ["abc", "b"]);
    }
}
