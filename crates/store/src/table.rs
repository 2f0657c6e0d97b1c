//! One generic indexed table per object kind ([`Table`]), the set of all ten ([`Tables`]) and the
//! uncommitted changes of a transaction ([`Overlay`]), the counterpart of the radix trees of
//! SwarmKit's go-memdb schema. A table keeps its objects ([`Shared`], so writes and events copy
//! none) in a hash map by ID, the IDs in order (for listing and ID prefixes), and one hashed multimap
//! `key -> rows` per index, a row being a small number standing for an ID (a key most objects share
//! keeps a bitset of rows); name prefixes walk the name index, and a kind without one (tasks) has
//! its objects walked for names. What the keys are is decided per kind in `object.rs`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::by::Query;
use crate::hash::{IdMap, IdSet};
use crate::object::StoreObject;
use crate::shared::Shared;

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

/// Number of [`Index`] variants.
const INDEXES: usize = Index::Config as usize + 1;

/// Where an object sits in its table: a small number that stands for its ID in the index sets,
/// so that index maintenance hashes no strings. Rows of removed objects are reused.
type Row = u32;

/// A set of rows turns into a bitset once it holds at least one row in this many of the rows up to
/// its highest (a bit per row then costs no more than a hashed entry per member), and back once it
/// holds fewer than a quarter of that.
const DENSE: usize = 64;

/// The rows under one index key: most keys (names) have one; keys most objects share (a state, a
/// service) are dense, and a bit per row keeps them small and their updates cheap.
#[derive(Debug)]
enum Rows {
    One(Row),
    Many(IdSet<Row>),
    Bits { words: Vec<u64>, len: usize },
}

impl Rows {
    fn insert(&mut self, row: Row) {
        match self {
            Rows::One(one) if *one == row => {}
            Rows::One(one) => {
                let mut set = IdSet::default();
                set.insert(*one);
                set.insert(row);
                *self = Rows::Many(set);
            }
            Rows::Many(set) => {
                set.insert(row);
                if set.len() >= DENSE && set.len() * DENSE >= row as usize {
                    let mut bits = Rows::Bits {
                        words: Vec::new(),
                        len: 0,
                    };
                    for r in set.drain() {
                        bits.insert(r);
                    }
                    *self = bits;
                }
            }
            Rows::Bits { words, len } => {
                let (word, bit) = (row as usize / 64, 1u64 << (row % 64));
                if words.len() <= word {
                    words.resize(word + 1, 0);
                }
                if words[word] & bit == 0 {
                    words[word] |= bit;
                    *len += 1;
                }
            }
        }
    }

    /// Removes `row`; true when no row is left.
    fn remove(&mut self, row: Row) -> bool {
        match self {
            Rows::One(one) => *one == row,
            Rows::Many(set) => {
                set.remove(&row);
                set.is_empty()
            }
            Rows::Bits { words, len } => {
                let (word, bit) = (row as usize / 64, 1u64 << (row % 64));
                if let Some(w) = words.get_mut(word)
                    && *w & bit != 0
                {
                    *w &= !bit;
                    *len -= 1;
                }
                if *len == 0 {
                    return true;
                }
                if *len * DENSE * 4 < words.len() * 64 {
                    let mut set = IdSet::default();
                    self.for_each(|r| {
                        set.insert(r);
                    });
                    *self = Rows::Many(set);
                }
                false
            }
        }
    }

    /// Calls `f` with every row.
    fn for_each(&self, mut f: impl FnMut(Row)) {
        match self {
            Rows::One(row) => f(*row),
            Rows::Many(set) => set.iter().copied().for_each(f),
            Rows::Bits { words, .. } => {
                for (i, &word) in words.iter().enumerate() {
                    let mut rest = word;
                    while rest != 0 {
                        let bit = rest.trailing_zeros();
                        rest &= rest - 1;
                        f(Row::try_from(i * 64).expect("rows are u32") + bit);
                    }
                }
            }
        }
    }
}

/// Rows by key, for one index. Hashed: exact lookups and writes are what is frequent; a prefix
/// lookup (names, from the control API's list filters) walks the index's keys.
type IndexMap = IdMap<String, Rows>;

/// A stored object and its row.
struct Stored<T> {
    object: Shared<T>,
    row: Row,
}

/// The objects of one kind with their index entries. Keys are looked up borrowed, so only a key
/// new to its index is copied.
#[doc(hidden)]
pub struct Table<T> {
    objects: IdMap<Arc<str>, Stored<T>>,
    /// The ID in each row; `None` for a free row.
    ids: Vec<Option<Arc<str>>>,
    free: Vec<Row>,
    /// Every ID, for ordered and prefix lookups.
    order: BTreeSet<Arc<str>>,
    /// One multimap `key -> rows` per [`Index`], by `Index as usize`.
    index: [IndexMap; INDEXES],
}

impl<T: StoreObject> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("objects", &self.objects.len())
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: IdMap::default(),
            ids: Vec::new(),
            free: Vec::new(),
            order: BTreeSet::new(),
            index: Default::default(),
        }
    }
}

fn add_key(index: &mut [IndexMap; INDEXES], (i, key): (Index, Cow<'_, str>), row: Row) {
    let map = &mut index[i as usize];
    match key {
        // A key built for the object (a name, a slot) moves into the map if it is new there.
        Cow::Owned(key) => {
            map.entry(key)
                .and_modify(|rows| rows.insert(row))
                .or_insert(Rows::One(row));
        }
        // A borrowed one is only copied if it is new.
        Cow::Borrowed(key) => {
            if let Some(rows) = map.get_mut(key) {
                rows.insert(row);
            } else {
                map.insert(key.to_owned(), Rows::One(row));
            }
        }
    }
}

fn remove_key(index: &mut [IndexMap; INDEXES], (i, key): &(Index, Cow<'_, str>), row: Row) {
    let map = &mut index[*i as usize];
    if let Some(rows) = map.get_mut(&**key)
        && rows.remove(row)
    {
        map.remove(&**key);
    }
}

impl<T: StoreObject> Table<T> {
    /// The object with this ID.
    pub fn get(&self, id: &str) -> Option<&Shared<T>> {
        self.objects.get(id).map(|s| &s.object)
    }

    /// All objects, by ascending ID.
    pub fn iter(&self) -> impl Iterator<Item = &Shared<T>> {
        self.order.iter().filter_map(|id| self.get(id))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Inserts or replaces the object with ID `id`, re-indexing it, and returns the replaced one.
    /// A replacement only touches the index keys that changed (a task's status, say).
    pub fn insert(&mut self, id: Arc<str>, object: Shared<T>) -> Option<Shared<T>> {
        let Table {
            objects,
            ids,
            free,
            order,
            index,
        } = self;
        match objects.entry(id) {
            Entry::Occupied(mut entry) => {
                let row = entry.get().row;
                let old = std::mem::replace(&mut entry.get_mut().object, object);
                let (gone, added) = T::changed_keys(&old, &entry.get().object);
                for key in &gone {
                    remove_key(index, key, row);
                }
                for key in added {
                    add_key(index, key, row);
                }
                Some(old)
            }
            Entry::Vacant(entry) => {
                let id = Arc::clone(entry.key());
                let row = match free.pop() {
                    Some(row) => {
                        ids[row as usize] = Some(Arc::clone(&id));
                        row
                    }
                    None => {
                        ids.push(Some(Arc::clone(&id)));
                        Row::try_from(ids.len() - 1).expect("fewer than 4 billion objects")
                    }
                };
                for key in object.stored_keys() {
                    add_key(index, key, row);
                }
                entry.insert(Stored { object, row });
                order.insert(id);
                None
            }
        }
    }

    /// Removes an object and its index entries.
    pub fn remove(&mut self, id: &str) -> Option<Shared<T>> {
        let Stored { object, row } = self.objects.remove(id)?;
        self.order.remove(id);
        self.ids[row as usize] = None;
        self.free.push(row);
        for key in object.stored_keys() {
            remove_key(&mut self.index, &key, row);
        }
        Some(object)
    }

    /// IDs of the objects the query selects, in no particular order and possibly repeated (for
    /// `Or`).
    pub fn lookup(&self, query: &Query) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.lookup_into(query, &mut out);
        out
    }

    fn lookup_into(&self, query: &Query, out: &mut Vec<Arc<str>>) {
        let of_rows = |rows: &Rows, out: &mut Vec<Arc<str>>| {
            rows.for_each(|row| out.extend(self.ids[row as usize].clone()));
        };
        match query {
            Query::Exact(Index::Name, _) | Query::Prefix(Index::Name, _) if !T::NAME_INDEXED => {
                // No name index: ask every object.
                out.extend(
                    self.order
                        .iter()
                        .filter(|id| {
                            self.get(id).is_some_and(|o| {
                                let keys = o.index_keys();
                                query.matches(id, &keys)
                            })
                        })
                        .cloned(),
                );
            }
            Query::All => out.extend(self.order.iter().cloned()),
            Query::Id(id) => {
                if let Some((id, _)) = self.objects.get_key_value(id.as_str()) {
                    out.push(Arc::clone(id));
                }
            }
            Query::IdPrefix(prefix) => out.extend(
                self.order
                    .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .take_while(|id| id.starts_with(prefix.as_str()))
                    .cloned(),
            ),
            Query::Exact(index, key) => {
                if let Some(rows) = self.index[*index as usize].get(key.as_str()) {
                    of_rows(rows, out);
                }
            }
            Query::Prefix(index, prefix) => {
                let entries = self.index[*index as usize]
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix.as_str()));
                for (_, rows) in entries {
                    of_rows(rows, out);
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
            $(pub(crate) $field: IdMap<Arc<str>, Option<Shared<api::$ty>>>,)*
        }

        impl Tables {
            /// Every object, by kind and ascending ID.
            pub(crate) fn save(&self) -> api::StoreSnapshot {
                api::StoreSnapshot {
                    $($field: self.$field.iter().map(|o| (**o).clone()).collect(),)*
                }
            }
        }

        impl Overlay {
            /// Writes the changes into `tables`.
            pub(crate) fn commit(self, tables: &mut Tables) {
                $(
                    for (id, change) in self.$field {
                        match change {
                            Some(object) => {
                                tables.$field.insert(id, object);
                            }
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

    fn insert(t: &mut Table<api::Task>, id: &str, service: &str, slot: u64) {
        let task = api::Task {
            id: id.into(),
            service_id: service.into(),
            slot,
            ..Default::default()
        };
        t.insert(Arc::from(id), Shared::new(task));
    }

    fn ids(found: Vec<Arc<str>>) -> Vec<String> {
        let mut ids: Vec<String> = found.iter().map(|id| id.to_string()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn reinsert_moves_index_entries() {
        let mut t = Table::default();
        insert(&mut t, "a", "s1", 1);
        insert(&mut t, "b", "s1", 2);
        assert_eq!(
            t.lookup(&Query::Exact(Index::ServiceId, "s1".into())).len(),
            2
        );
        insert(&mut t, "a", "s2", 1);
        let s1 = t.lookup(&Query::Exact(Index::ServiceId, "s1".into()));
        assert_eq!(ids(s1), ["b"]);
        assert!(t.remove("b").is_some());
        assert!(
            t.lookup(&Query::Exact(Index::ServiceId, "s1".into()))
                .is_empty()
        );
        assert!(
            !t.index[Index::ServiceId as usize].contains_key("s1"),
            "empty entries are dropped"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rows_turn_dense_and_back() {
        let mut rows = Rows::One(5);
        for r in 0..2000 {
            rows.insert(r);
        }
        assert!(matches!(rows, Rows::Bits { len: 2000, .. }));
        let mut seen = Vec::new();
        rows.for_each(|r| seen.push(r));
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
        assert!(!rows.remove(5));
        assert!(!rows.remove(5), "removing twice changes nothing");
        for r in 6..1999 {
            assert!(!rows.remove(r));
        }
        assert!(matches!(rows, Rows::Many(_)), "sparse again");
        let mut left = Vec::new();
        rows.for_each(|r| left.push(r));
        left.sort_unstable();
        assert_eq!(left, [0, 1, 2, 3, 4, 1999]);
        for r in [0, 1, 2, 3, 4] {
            assert!(!rows.remove(r));
        }
        assert!(rows.remove(1999));
    }

    #[test]
    fn prefix_lookup_stays_inside_its_index() {
        let mut t = Table::default();
        insert(&mut t, "abc", "ab", 1);
        insert(&mut t, "abd", "zz", 1);
        insert(&mut t, "b", "ab", 1);
        let by_id = t.lookup(&Query::IdPrefix("ab".into()));
        assert_eq!(ids(by_id), ["abc", "abd"]);
        // Service IDs start with "ab" too, but a name-prefix query must not see them.
        let by_name = t.lookup(&Query::Prefix(Index::Name, "zz".into()));
        assert!(by_name.is_empty());
        let by_service = t.lookup(&Query::Prefix(Index::ServiceId, "a".into()));
        assert_eq!(ids(by_service), ["abc", "b"]);
    }
}
