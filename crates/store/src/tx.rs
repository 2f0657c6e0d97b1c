//! Transactions over the tables: [`ReadTx`] (a consistent view) and [`Tx`] (a write transaction that
//! sees its own writes through an overlay and records them as `api::StoreAction`s). The same `Tx` code
//! applies committed actions and restores snapshots, so checks and index maintenance exist once
//! (SwarmKit's `tx.create/update/delete` in `memory.go`). Locking and proposing belong to `memory.rs`.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::time::SystemTime;

use api::store_action::Target;

use crate::by::{By, Query};
use crate::error::StoreError;
use crate::object::StoreObject;
use crate::table::{Overlay, Tables};
use crate::watch::{Event, EventKind};

/// A consistent read-only view of the store (inside a `Tx`: including the transaction's own writes).
#[derive(Debug)]
pub struct ReadTx<'a> {
    base: &'a Tables,
    overlay: Overlay,
}

impl<'a> ReadTx<'a> {
    pub(crate) fn new(base: &'a Tables) -> Self {
        ReadTx {
            base,
            overlay: Overlay::default(),
        }
    }

    /// The object of type `T` with this ID: `tx.get::<api::Node>(id)`.
    pub fn get<T: StoreObject>(&self, id: &str) -> Option<T> {
        self.get_ref(id).cloned()
    }

    /// Like [`ReadTx::get`], borrowing instead of copying.
    fn get_ref<T: StoreObject>(&self, id: &str) -> Option<&T> {
        match T::overlay(&self.overlay).get(id) {
            Some(change) => change.as_deref(),
            None => T::table(self.base).get(id),
        }
    }

    /// The objects of type `T` selected by `by`, sorted by ID ascending.
    pub fn find<T: StoreObject>(&self, by: By<'_>) -> Vec<T> {
        let ids = self.ids::<T>(&by.query());
        ids.iter().filter_map(|id| self.get::<T>(id)).collect()
    }

    /// Number of objects of type `T`.
    pub fn count<T: StoreObject>(&self) -> usize {
        let overlay = T::overlay(&self.overlay);
        if overlay.is_empty() {
            return T::table(self.base).len();
        }
        self.ids::<T>(&Query::All).len()
    }

    /// IDs selected by `query`, with the overlay's changes taken into account.
    fn ids<T: StoreObject>(&self, query: &Query) -> BTreeSet<String> {
        let mut ids = T::table(self.base).lookup(query);
        for (id, change) in T::overlay(&self.overlay) {
            ids.remove(id);
            if let Some(object) = change
                && query.matches(id, &object.index_keys())
            {
                ids.insert(id.clone());
            }
        }
        ids
    }

    /// Whether an object of type `T` other than `except_id` uses `name` where names are unique.
    fn name_taken<T: StoreObject>(&self, name: &str, except_id: &str) -> bool {
        if !T::UNIQUE_NAME || name.is_empty() {
            return false;
        }
        let ids = self.ids::<T>(&By::Name(name).query());
        ids.iter().any(|id| id != except_id)
    }
}

/// Generates the per-kind read methods of `ReadTx` and write methods of `Tx`.
macro_rules! kind_methods {
    ($($ty:ident: $get:ident, $find:ident, $create:ident, $update:ident, $delete:ident;)*) => {
        impl ReadTx<'_> {
            $(
                #[doc = concat!("The `api::", stringify!($ty), "` with this ID.")]
                pub fn $get(&self, id: &str) -> Option<api::$ty> {
                    self.get(id)
                }
                #[doc = concat!("The `api::", stringify!($ty), "`s selected by `by`, by ascending ID.")]
                pub fn $find(&self, by: By<'_>) -> Vec<api::$ty> {
                    self.find(by)
                }
            )*
        }
        impl Tx<'_> {
            $(
                #[doc = concat!("Creates an `api::", stringify!($ty), "`; see [`Tx::create`].")]
                pub fn $create(&mut self, object: api::$ty) -> Result<(), StoreError> {
                    self.create(object)
                }
                #[doc = concat!("Updates an `api::", stringify!($ty), "`; see [`Tx::update`].")]
                pub fn $update(&mut self, object: api::$ty) -> Result<(), StoreError> {
                    self.update(object)
                }
                #[doc = concat!("Deletes an `api::", stringify!($ty), "`; see [`Tx::delete`].")]
                pub fn $delete(&mut self, id: &str) -> Result<(), StoreError> {
                    self.delete::<api::$ty>(id)
                }
            )*
        }
    };
}

kind_methods! {
    Node: get_node, find_nodes, create_node, update_node, delete_node;
    Service: get_service, find_services, create_service, update_service, delete_service;
    Task: get_task, find_tasks, create_task, update_task, delete_task;
    Network: get_network, find_networks, create_network, update_network, delete_network;
    Cluster: get_cluster, find_clusters, create_cluster, update_cluster, delete_cluster;
    Secret: get_secret, find_secrets, create_secret, update_secret, delete_secret;
    Config: get_config, find_configs, create_config, update_config, delete_config;
    Resource: get_resource, find_resources, create_resource, update_resource, delete_resource;
    Extension: get_extension, find_extensions, create_extension, update_extension, delete_extension;
    Volume: get_volume, find_volumes, create_volume, update_volume, delete_volume;
}

/// What a `Tx` is used for; decides which checks run and what is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A caller's write: full checks, timestamps, actions recorded for the proposer.
    Local,
    /// Applying committed actions at this raft index: version set, events recorded.
    Apply(u64),
    /// Replacing the content from a snapshot: no name checks, objects kept as given, events recorded.
    Restore,
}

/// A write transaction (see `MemoryStore::update`). Reads through `Deref` see its own writes.
#[derive(Debug)]
pub struct Tx<'a> {
    read: ReadTx<'a>,
    mode: Mode,
    now: prost_types::Timestamp,
    actions: Vec<api::StoreAction>,
    events: Vec<Event>,
}

impl<'a> Deref for Tx<'a> {
    type Target = ReadTx<'a>;
    fn deref(&self) -> &ReadTx<'a> {
        &self.read
    }
}

impl<'a> Tx<'a> {
    pub(crate) fn new(base: &'a Tables, mode: Mode) -> Self {
        Tx {
            read: ReadTx::new(base),
            mode,
            now: prost_types::Timestamp::from(SystemTime::now()),
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Whether the transaction changed anything so far.
    pub fn has_changes(&self) -> bool {
        !self.read.overlay.is_empty()
    }

    /// Creates an object. It must have a non-empty ID not used yet (`Exists`) and, for kinds with unique
    /// names, a name no other object of its kind has case-insensitively (`NameConflict`). Sets
    /// `meta.created_at = meta.updated_at = now`; `meta.version` is set when the write is applied.
    pub fn create<T: StoreObject>(&mut self, mut object: T) -> Result<(), StoreError> {
        let id = object.id().to_string();
        if id.is_empty() {
            return Err(StoreError::Invalid(format!("{} has no ID", T::KIND)));
        }
        if self.read.get_ref::<T>(&id).is_some() {
            return Err(StoreError::Exists { kind: T::KIND, id });
        }
        self.check_name(&object)?;
        match self.mode {
            Mode::Local => {
                let meta = object.meta_mut();
                meta.created_at = Some(self.now);
                meta.updated_at = Some(self.now);
                self.record(api::StoreActionKind::StoreActionCreate, object.clone());
            }
            Mode::Apply(index) => {
                object.meta_mut().version = Some(api::Version { index });
                self.events
                    .push(Event::object(EventKind::Create, object.clone(), None));
            }
            Mode::Restore => {
                self.events
                    .push(Event::object(EventKind::Create, object.clone(), None))
            }
        }
        T::overlay_mut(&mut self.read.overlay).insert(id, Some(Box::new(object)));
        Ok(())
    }

    /// Replaces an existing object (`NotFound` otherwise). `meta.version` must equal the stored one
    /// (`SequenceConflict`: the caller read a stale copy); the name is checked as in `create`.
    /// Sets `meta.updated_at = now`.
    pub fn update<T: StoreObject>(&mut self, mut object: T) -> Result<(), StoreError> {
        let id = object.id().to_string();
        let Some(stored) = self.read.get_ref::<T>(&id) else {
            return Err(StoreError::NotFound { kind: T::KIND, id });
        };
        if self.mode == Mode::Local && stored.version() != object.version() {
            return Err(StoreError::SequenceConflict { kind: T::KIND, id });
        }
        let created_at = stored.meta().and_then(|m| m.created_at);
        // Only events carry the previous version; a local write needs no copy of it.
        let old = (self.mode != Mode::Local).then(|| stored.clone());
        self.check_name(&object)?;
        match self.mode {
            Mode::Local => {
                let meta = object.meta_mut();
                meta.updated_at = Some(self.now);
                if meta.created_at.is_none() {
                    meta.created_at = created_at;
                }
                self.record(api::StoreActionKind::StoreActionUpdate, object.clone());
            }
            Mode::Apply(index) => {
                object.meta_mut().version = Some(api::Version { index });
                self.events
                    .push(Event::object(EventKind::Update, object.clone(), old));
            }
            Mode::Restore => {
                self.events
                    .push(Event::object(EventKind::Update, object.clone(), old))
            }
        }
        T::overlay_mut(&mut self.read.overlay).insert(id, Some(Box::new(object)));
        Ok(())
    }

    /// Deletes an object (`NotFound` if absent).
    pub fn delete<T: StoreObject>(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(old) = self.read.get::<T>(id) else {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: id.to_string(),
            });
        };
        match self.mode {
            Mode::Local => self.record(api::StoreActionKind::StoreActionRemove, old),
            Mode::Apply(_) | Mode::Restore => {
                self.events
                    .push(Event::object(EventKind::Remove, old, None))
            }
        }
        T::overlay_mut(&mut self.read.overlay).insert(id.to_string(), None);
        Ok(())
    }

    fn check_name<T: StoreObject>(&self, object: &T) -> Result<(), StoreError> {
        if self.mode == Mode::Restore {
            return Ok(());
        }
        let name = object.name();
        if self.read.name_taken::<T>(&name, object.id()) {
            return Err(StoreError::NameConflict {
                kind: T::KIND,
                name,
            });
        }
        Ok(())
    }

    fn record<T: StoreObject>(&mut self, action: api::StoreActionKind, object: T) {
        self.actions.push(api::StoreAction {
            action: action as i32,
            target: Some(object.into_target()),
        });
    }

    /// Applies one committed action (in `Mode::Apply`).
    pub(crate) fn apply_action(&mut self, action: api::StoreAction) -> Result<(), StoreError> {
        let Some(target) = action.target else {
            return Err(StoreError::Invalid("store action has no target".into()));
        };
        let kind = api::StoreActionKind::try_from(action.action)
            .map_err(|_| StoreError::Invalid(format!("unknown store action {}", action.action)))?;
        match target {
            Target::Node(o) => self.apply_one(kind, o),
            Target::Service(o) => self.apply_one(kind, o),
            Target::Task(o) => self.apply_one(kind, o),
            Target::Network(o) => self.apply_one(kind, o),
            Target::Cluster(o) => self.apply_one(kind, o),
            Target::Secret(o) => self.apply_one(kind, o),
            Target::Config(o) => self.apply_one(kind, o),
            Target::Resource(o) => self.apply_one(kind, o),
            Target::Extension(o) => self.apply_one(kind, o),
            Target::Volume(o) => self.apply_one(kind, o),
        }
    }

    fn apply_one<T: StoreObject>(
        &mut self,
        kind: api::StoreActionKind,
        object: T,
    ) -> Result<(), StoreError> {
        match kind {
            api::StoreActionKind::StoreActionCreate => self.create(object),
            api::StoreActionKind::StoreActionUpdate => self.update(object),
            api::StoreActionKind::StoreActionRemove => self.delete::<T>(object.id()),
            api::StoreActionKind::Unknown => {
                Err(StoreError::Invalid("unknown store action 0".into()))
            }
        }
    }

    /// Makes the content of table `T` equal to `objects` (in `Mode::Restore`), emitting the difference.
    /// An object that cannot be stored (no ID) is skipped with a warning; of two with the same ID the
    /// later wins.
    pub(crate) fn restore_table<T: StoreObject>(&mut self, objects: Vec<T>) {
        let wanted: BTreeSet<String> = objects.iter().map(|o| o.id().to_string()).collect();
        let stale: Vec<T> = self.read.find::<T>(By::All);
        for old in stale.iter().filter(|o| !wanted.contains(o.id())) {
            if let Err(e) = self.delete::<T>(old.id()) {
                tracing::warn!(kind = %T::KIND, id = old.id(), error = %e, "restore: cannot remove object");
            }
        }
        for object in objects {
            let id = object.id().to_string();
            let result = match self.read.get::<T>(&id) {
                Some(current) if current == object => Ok(()),
                Some(_) => self.update(object),
                None => self.create(object),
            };
            if let Err(e) = result {
                tracing::warn!(kind = %T::KIND, id, error = %e, "restore: snapshot object skipped");
            }
        }
    }

    /// The actions to propose (for `Mode::Local`).
    pub(crate) fn into_actions(self) -> Vec<api::StoreAction> {
        self.actions
    }

    /// The changes to commit and the events describing them (for `Apply` and `Restore`).
    pub(crate) fn into_changes(self) -> (Overlay, Vec<Event>) {
        (self.read.overlay, self.events)
    }
}
