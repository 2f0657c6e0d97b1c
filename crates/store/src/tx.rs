//! Transactions over the tables: [`ReadTx`] (a consistent view) and [`Tx`] (a write transaction that
//! sees its own writes through an overlay and records them as `api::StoreAction`s). The same `Tx` code
//! applies committed actions and restores snapshots, so checks and index maintenance exist once
//! (SwarmKit's `tx.create/update/delete` in `memory.go`); a local transaction's [`Change`]s can also
//! be applied unchecked, when its checks are known to still hold. Objects are [`Shared`]: a write
//! moves or copies-on-write one object version, which the overlay, the change, the table and the
//! events then share. Locking and proposing belong to `memory.rs`.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

use crate::by::{By, Query};
use crate::error::StoreError;
use crate::limits;
use crate::object::{Kind, StoreObject, object_into_target, target_into_object, with_kind};
use crate::shared::Shared;
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
        self.lookup::<T>(id).map(|o| T::clone(o))
    }

    /// Like [`ReadTx::get`], sharing the stored object instead of copying it.
    pub fn get_shared<T: StoreObject>(&self, id: &str) -> Option<Shared<T>> {
        self.lookup(id).cloned()
    }

    /// [`ReadTx::get_ref`] of one object asked for by ID, timed as SwarmKit times its `lookup`
    /// (`swarm_store_lookup_latency_seconds`); the reads of a `find` are not lookups.
    fn lookup<T: StoreObject>(&self, id: &str) -> Option<&Shared<T>> {
        let _timer = telemetry::swarm::STORE_LOOKUP_LATENCY.start();
        self.get_ref(id)
    }

    /// Like [`ReadTx::get`], borrowing instead of copying.
    fn get_ref<T: StoreObject>(&self, id: &str) -> Option<&Shared<T>> {
        match T::overlay(&self.overlay).get(id) {
            Some(change) => change.as_ref(),
            None => T::table(self.base).get(id),
        }
    }

    /// The objects of type `T` selected by `by`, sorted by ID ascending. The vector is sized
    /// from the index once: collected from a filtering iterator it grew by doubling (for a
    /// ListTasks of 10,000 tasks, room for 16,384: some 5 MB more of the manager's peak).
    pub fn find<T: StoreObject>(&self, by: By<'_>) -> Vec<T> {
        let ids = self.ids::<T>(&by.query());
        let mut found = Vec::with_capacity(ids.len());
        found.extend(
            ids.iter()
                .filter_map(|id| self.get_ref::<T>(id))
                .map(|o| T::clone(o)),
        );
        found
    }

    /// Like [`ReadTx::find`], sharing the stored objects instead of copying them.
    pub fn find_shared<T: StoreObject>(&self, by: By<'_>) -> Vec<Shared<T>> {
        let ids = self.ids::<T>(&by.query());
        ids.iter()
            .filter_map(|id| self.get_ref::<T>(id))
            .cloned()
            .collect()
    }

    /// Number of objects of type `T`.
    pub fn count<T: StoreObject>(&self) -> usize {
        let overlay = T::overlay(&self.overlay);
        if overlay.is_empty() {
            return T::table(self.base).len();
        }
        self.ids::<T>(&Query::All).len()
    }

    /// IDs selected by `query`, with the overlay's changes taken into account, ascending.
    fn ids<T: StoreObject>(&self, query: &Query) -> Vec<Arc<str>> {
        let mut ids = T::table(self.base).lookup(query);
        let overlay = T::overlay(&self.overlay);
        if !overlay.is_empty() {
            ids.retain(|id| !overlay.contains_key(id));
            ids.extend(overlay.iter().filter_map(|(id, change)| {
                let object = change.as_ref()?;
                query
                    .matches(id, &object.index_keys())
                    .then(|| Arc::clone(id))
            }));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether an object of type `T` other than `except_id` uses `name` where names are unique.
    fn name_taken<T: StoreObject>(&self, name: &str, except_id: &str) -> bool {
        if !T::UNIQUE_NAME || name.is_empty() {
            return false;
        }
        let ids = self.ids::<T>(&By::Name(name).query());
        ids.iter().any(|id| **id != *except_id)
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
    /// A caller's write: full checks, timestamps, changes recorded for the proposer.
    Local,
    /// Applying committed actions at this raft index: version set, events recorded.
    Apply(u64),
    /// Replacing the content from a snapshot: no name checks, objects kept as given, events recorded.
    Restore,
}

/// One write of a local transaction: an `api::StoreAction` whose object is still shared with the
/// transaction, so that applying it without a proposer copies nothing.
#[derive(Debug)]
pub(crate) struct Change {
    action: api::StoreActionKind,
    object: Arc<api::Object>,
    /// The object's ID as the transaction's overlay held it (reused as the table key).
    id: Option<Arc<str>>,
}

impl Change {
    /// The store action, for the proposer (the object is moved out when nothing else holds it).
    pub(crate) fn into_action(self) -> api::StoreAction {
        let object = Arc::try_unwrap(self.object).unwrap_or_else(|shared| (*shared).clone());
        api::StoreAction {
            action: self.action as i32,
            target: object_into_target(object),
        }
    }

    /// See [`Tx::seal`]: the overlay gets a copy of the object with the [`PENDING`] version if it
    /// still holds this change's (no later write of the transaction replaced it). The change keeps
    /// the object as written, so the entry's size is what the transaction counted.
    fn seal_as<T: StoreObject>(&self, overlay: &mut Overlay) {
        let Some(id) = &self.id else {
            return;
        };
        let Some(Some(current)) = T::overlay_mut(overlay).get_mut(&**id) else {
            return;
        };
        if !Arc::ptr_eq(current.as_object(), &self.object) {
            return;
        }
        let mut sealed = current.clone();
        sealed.make_mut().meta_mut().version = Some(PENDING);
        *current = sealed;
    }

    /// The kind and ID of the object this (local) change writes.
    pub(crate) fn key(&self) -> Option<(Kind, Arc<str>)> {
        Some((Kind::of_object(&self.object)?, self.id.clone()?))
    }

    /// Puts back what the overlay held for this change's object before it (see [`Undo`]).
    fn undo(&self, overlay: &mut Overlay, before: Undo) {
        let Some(kind) = Kind::of_object(&self.object) else {
            return;
        };
        with_kind!(kind, T => self.undo_as::<T>(overlay, before))
    }

    fn undo_as<T: StoreObject>(&self, overlay: &mut Overlay, before: Undo) {
        let Some(id) = self.id.clone() else {
            return;
        };
        let overlay = T::overlay_mut(overlay);
        match before {
            None => {
                overlay.remove(&id);
            }
            Some(before) => {
                let before = before.and_then(Shared::<T>::from_object);
                overlay.insert(id, before);
            }
        }
    }

    /// A committed store action as a change to apply.
    pub(crate) fn from_action(action: api::StoreAction) -> Result<Change, StoreError> {
        let Some(target) = action.target else {
            return Err(StoreError::Invalid("store action has no target".into()));
        };
        let kind = api::StoreActionKind::try_from(action.action)
            .map_err(|_| StoreError::Invalid(format!("unknown store action {}", action.action)))?;
        Ok(Change {
            action: kind,
            object: Arc::new(target_into_object(target)),
            id: None,
        })
    }

    /// Applies the change at `index` straight to `tables`, with the events `Tx::apply` in
    /// `Mode::Apply` would record. No check is made: only for the changes of a local transaction
    /// whose view `tables` still is, whose checks therefore hold.
    pub(crate) fn apply_unchecked(self, tables: &mut Tables, index: u64, events: &mut Vec<Event>) {
        let Some(kind) = Kind::of_object(&self.object) else {
            return;
        };
        with_kind!(kind, T => self.apply_unchecked_as::<T>(tables, index, events))
    }

    fn apply_unchecked_as<T: StoreObject>(
        self,
        tables: &mut Tables,
        index: u64,
        events: &mut Vec<Event>,
    ) {
        let Change { action, object, id } = self;
        let Some(mut object) = Shared::<T>::from_object(object) else {
            return;
        };
        let id = id.unwrap_or_else(|| Arc::from(object.id()));
        let table = T::table_mut(tables);
        let kind = match action {
            api::StoreActionKind::StoreActionCreate => EventKind::Create,
            api::StoreActionKind::StoreActionUpdate => EventKind::Update,
            api::StoreActionKind::StoreActionRemove => {
                if let Some(old) = table.remove(&id) {
                    events.push(Event::Object {
                        kind: EventKind::Remove,
                        object: old.into_object(),
                        old: None,
                    });
                }
                return;
            }
            api::StoreActionKind::Unknown => return,
        };
        object.make_mut().meta_mut().version = Some(api::Version { index });
        let shared = Arc::clone(object.as_object());
        let old = table.insert(id, object);
        events.push(Event::Object {
            kind,
            object: shared,
            old: old
                .filter(|_| kind == EventKind::Update)
                .map(Shared::into_object),
        });
    }
}

/// A point of a local transaction ([`Tx::mark`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    changes: usize,
    proposal_len: usize,
}

/// The version a write of a group commit gives the objects it creates or updates until they are
/// applied (and get their raft index): a later writer of the same group that read such an object
/// writes it back with this version and passes the sequence check, while a caller holding the
/// committed version (or an older one) fails it, as it would have once the earlier write committed.
/// No committed object has it (raft indexes never get there), so a caller outside the store that
/// is handed a version by a client turns this one into a version no object has
/// ([`crate::client_version`]).
pub(crate) const PENDING: api::Version = api::Version { index: u64::MAX };

/// What a local transaction leaves for the next writer of a group commit ([`Tx::resume`]): the
/// changes not yet proposed and what they (and the ones in flight) make the overlay.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) overlay: Overlay,
    pub(crate) changes: Vec<Change>,
    /// Encoded size of the raft entry `changes` would make.
    pub(crate) proposal_len: usize,
    /// Spare allocation of the undo log.
    undo: Vec<Undo>,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            overlay: Overlay::default(),
            changes: Vec::new(),
            proposal_len: limits::REQUEST_ID_BYTES,
            undo: Vec::new(),
        }
    }
}

/// What the overlay held for the object of a change before the change (`None`: nothing), for
/// [`Tx::rollback_to`].
type Undo = Option<Option<Arc<api::Object>>>;

/// A write transaction (see `MemoryStore::update`). Reads through `Deref` see its own writes.
#[derive(Debug)]
pub struct Tx<'a> {
    read: ReadTx<'a>,
    mode: Mode,
    now: prost_types::Timestamp,
    changes: Vec<Change>,
    /// One entry per change since `start` (`Mode::Local`).
    undo: Vec<Undo>,
    /// Encoded size of the raft entry `changes` make (`Mode::Local`).
    proposal_len: usize,
    /// Where this transaction began: in a group commit, `changes` starts with those of the
    /// writers before it, which this one may read but neither takes back nor counts as its own.
    start: Mark,
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
            changes: Vec::new(),
            undo: Vec::new(),
            proposal_len: limits::REQUEST_ID_BYTES,
            start: Mark {
                changes: 0,
                proposal_len: limits::REQUEST_ID_BYTES,
            },
            events: Vec::new(),
        }
    }

    /// A local transaction over `base` that continues where the writers of a group commit left
    /// `parts`: it reads their changes (and those in flight, which `parts.overlay` holds too) and
    /// adds its own after them.
    pub(crate) fn resume(base: &'a Tables, parts: Parts) -> Self {
        let Parts {
            overlay,
            changes,
            proposal_len,
            mut undo,
        } = parts;
        undo.clear();
        let start = Mark {
            changes: changes.len(),
            proposal_len,
        };
        Tx {
            read: ReadTx { base, overlay },
            mode: Mode::Local,
            now: prost_types::Timestamp::from(SystemTime::now()),
            changes,
            undo,
            proposal_len,
            start,
            events: Vec::new(),
        }
    }

    /// What [`Tx::resume`] takes, for the next writer.
    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            overlay: self.read.overlay,
            changes: self.changes,
            proposal_len: self.proposal_len,
            undo: self.undo,
        }
    }

    /// Where this transaction began ([`Tx::rollback_to`] it to take back all its writes).
    pub(crate) fn start(&self) -> Mark {
        self.start
    }

    /// Whether this transaction had written anything at `mark`.
    pub(crate) fn had_writes_at(&self, mark: Mark) -> bool {
        mark.changes > self.start.changes
    }

    /// Makes the next writers of a group commit read the objects this transaction created or
    /// updated with the [`PENDING`] version (a copy of each, in the overlay).
    pub(crate) fn seal(&mut self) {
        let Tx {
            read,
            changes,
            start,
            ..
        } = self;
        for change in &changes[start.changes..] {
            if change.action == api::StoreActionKind::StoreActionRemove {
                continue;
            }
            let Some(kind) = Kind::of_object(&change.object) else {
                continue;
            };
            with_kind!(kind, T => change.seal_as::<T>(&mut read.overlay));
        }
    }

    /// Creates an object. It must have a non-empty ID not used yet (`Exists`) and, for kinds with unique
    /// names, a name no other object of its kind has case-insensitively (`NameConflict`). Sets
    /// `meta.created_at = meta.updated_at = now`; `meta.version` is set when the write is applied.
    pub fn create<T: StoreObject>(&mut self, object: T) -> Result<(), StoreError> {
        self.create_shared(Shared::new(object))
    }

    fn create_shared<T: StoreObject>(&mut self, mut object: Shared<T>) -> Result<(), StoreError> {
        if object.id().is_empty() {
            return Err(StoreError::Invalid(format!("{} has no ID", T::KIND)));
        }
        if self.read.lookup::<T>(object.id()).is_some() {
            return Err(StoreError::Exists {
                kind: T::KIND,
                id: object.id().to_string(),
            });
        }
        self.check_name(&*object)?;
        match self.mode {
            Mode::Local => {
                let meta = object.make_mut().meta_mut();
                meta.created_at = Some(self.now);
                meta.updated_at = Some(self.now);
            }
            Mode::Apply(index) => {
                object.make_mut().meta_mut().version = Some(api::Version { index });
            }
            Mode::Restore => {}
        }
        self.written(EventKind::Create, object, None);
        Ok(())
    }

    /// Replaces an existing object (`NotFound` otherwise). `meta.version` must equal the stored one
    /// (`SequenceConflict`: the caller read a stale copy); the name is checked as in `create`.
    /// Sets `meta.updated_at = now`.
    pub fn update<T: StoreObject>(&mut self, object: T) -> Result<(), StoreError> {
        self.update_shared(Shared::new(object))
    }

    /// [`Tx::update`] of an object got with [`ReadTx::get_shared`] and changed through
    /// [`Shared::make_mut`] (which copied it once).
    pub fn update_shared<T: StoreObject>(
        &mut self,
        mut object: Shared<T>,
    ) -> Result<(), StoreError> {
        let Some(stored) = self.read.lookup::<T>(object.id()) else {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: object.id().to_string(),
            });
        };
        if self.mode == Mode::Local && stored.version() != object.version() {
            return Err(StoreError::SequenceConflict {
                kind: T::KIND,
                id: object.id().to_string(),
            });
        }
        let created_at = stored.meta().and_then(|m| m.created_at);
        // Only events carry the previous version.
        let old = (self.mode != Mode::Local).then(|| stored.clone());
        self.check_name(&*object)?;
        match self.mode {
            Mode::Local => {
                let meta = object.make_mut().meta_mut();
                meta.updated_at = Some(self.now);
                if meta.created_at.is_none() {
                    meta.created_at = created_at;
                }
            }
            Mode::Apply(index) => {
                object.make_mut().meta_mut().version = Some(api::Version { index });
            }
            Mode::Restore => {}
        }
        self.written(EventKind::Update, object, old);
        Ok(())
    }

    /// Deletes an object (`NotFound` if absent).
    pub fn delete<T: StoreObject>(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(old) = self.read.lookup::<T>(id).cloned() else {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: id.to_string(),
            });
        };
        self.written(EventKind::Remove, old, None);
        Ok(())
    }

    /// Records a write: as a change to propose (local) or as an event, and in the overlay. For a
    /// removal, `object` is the object as it was deleted.
    fn written<T: StoreObject>(
        &mut self,
        kind: EventKind,
        object: Shared<T>,
        old: Option<Shared<T>>,
    ) {
        let shared = Arc::clone(object.as_object());
        let id: Arc<str> = Arc::from(object.id());
        match self.mode {
            Mode::Local => {
                let action = match kind {
                    EventKind::Create => api::StoreActionKind::StoreActionCreate,
                    EventKind::Update => api::StoreActionKind::StoreActionUpdate,
                    EventKind::Remove => api::StoreActionKind::StoreActionRemove,
                };
                self.proposal_len += limits::framed_len(limits::action_len(&shared));
                self.changes.push(Change {
                    action,
                    object: shared,
                    id: Some(Arc::clone(&id)),
                });
            }
            Mode::Apply(_) | Mode::Restore => self.events.push(Event::Object {
                kind,
                object: shared,
                old: old.map(Shared::into_object),
            }),
        }
        let after = (kind != EventKind::Remove).then_some(object);
        let before = T::overlay_mut(&mut self.read.overlay).insert(id, after);
        if self.mode == Mode::Local {
            self.undo
                .push(before.map(|before| before.map(Shared::into_object)));
        }
    }

    fn check_name<T: StoreObject>(&self, object: &T) -> Result<(), StoreError> {
        if self.mode == Mode::Restore || !T::UNIQUE_NAME {
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

    /// Applies one change (in `Mode::Apply`).
    pub(crate) fn apply(&mut self, change: Change) -> Result<(), StoreError> {
        let Change { action, object, .. } = change;
        let Some(kind) = Kind::of_object(&object) else {
            return Err(StoreError::Invalid("store action has no target".into()));
        };
        with_kind!(kind, T => self.apply_one::<T>(action, object))
    }

    fn apply_one<T: StoreObject>(
        &mut self,
        action: api::StoreActionKind,
        object: Arc<api::Object>,
    ) -> Result<(), StoreError> {
        let object = Shared::<T>::from_object(object)
            .ok_or_else(|| StoreError::Invalid(format!("store action target is no {}", T::KIND)))?;
        match action {
            api::StoreActionKind::StoreActionCreate => self.create_shared(object),
            api::StoreActionKind::StoreActionUpdate => self.update_shared(object),
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
        let wanted: BTreeSet<&str> = objects.iter().map(|o| o.id()).collect();
        let stale: Vec<Arc<str>> = self
            .read
            .ids::<T>(&Query::All)
            .into_iter()
            .filter(|id| !wanted.contains(&**id))
            .collect();
        for id in stale {
            if let Err(e) = self.delete::<T>(&id) {
                tracing::warn!(kind = %T::KIND, id = &*id, error = %e, "restore: cannot remove object");
            }
        }
        for object in objects {
            let id = object.id().to_string();
            let result = match self.read.get_ref::<T>(&id) {
                Some(current) if **current == object => Ok(()),
                Some(_) => self.update(object),
                None => self.create(object),
            };
            if let Err(e) = result {
                tracing::warn!(kind = %T::KIND, id, error = %e, "restore: snapshot object skipped");
            }
        }
    }

    /// The point this (local) transaction has reached, for [`Tx::rollback_to`].
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            changes: self.changes.len(),
            proposal_len: self.proposal_len,
        }
    }

    /// Takes back every write made since `mark` (a batch item that failed or did not fit, a
    /// writer of a group commit that failed), newest first, putting back what the overlay held
    /// before each.
    pub(crate) fn rollback_to(&mut self, mark: Mark) {
        let keep = mark.changes.max(self.start.changes);
        while self.changes.len() > keep {
            let (Some(change), Some(before)) = (self.changes.pop(), self.undo.pop()) else {
                break;
            };
            change.undo(&mut self.read.overlay, before);
        }
        self.proposal_len = mark.proposal_len.max(self.start.proposal_len);
    }

    /// Encoded size of the raft entry this (local) transaction's writes make so far: what
    /// [`crate::MAX_TRANSACTION_BYTES`] bounds. In a group commit, only this transaction's own
    /// writes count.
    pub fn proposal_len(&self) -> usize {
        self.proposal_len - self.start.proposal_len + limits::REQUEST_ID_BYTES
    }

    /// Number of writes this (local) transaction made so far.
    pub fn change_count(&self) -> usize {
        self.changes.len() - self.start.changes
    }

    /// Whether a batch should commit this transaction before writing more: SwarmKit's batch
    /// limits, [`crate::MAX_CHANGES_PER_TRANSACTION`] writes or [`crate::BATCH_BYTES`].
    pub fn batch_full(&self) -> bool {
        self.change_count() >= limits::MAX_CHANGES_PER_TRANSACTION
            || self.proposal_len() >= limits::BATCH_BYTES
    }

    /// Whether a batch may still write `object` into this transaction, `slack` bytes larger than it
    /// is now: the transaction is empty, or it is not [full](Tx::batch_full) and the object would
    /// not take it past [`crate::MAX_TRANSACTION_BYTES`].
    pub fn has_room_for(&self, object: &impl prost::Message, slack: usize) -> bool {
        self.change_count() == 0
            || (!self.batch_full()
                && self.proposal_len() + limits::write_len(object.encoded_len() + slack)
                    <= limits::MAX_TRANSACTION_BYTES)
    }

    /// The changes to propose or apply (for `Mode::Local`). The transaction's own copies are
    /// dropped first, so the changes hold the only reference to the objects they create or update.
    pub(crate) fn into_local_changes(self) -> Vec<Change> {
        let Tx { read, changes, .. } = self;
        drop(read);
        changes
    }

    /// The changes to commit and the events describing them (for `Apply` and `Restore`).
    pub(crate) fn into_changes(self) -> (Overlay, Vec<Event>) {
        (self.read.overlay, self.events)
    }
}

/// Drops what `overlay` holds for the object `id` of `kind`.
pub(crate) fn forget(overlay: &mut Overlay, kind: Kind, id: &str) {
    with_kind!(kind, T => {
        T::overlay_mut(overlay).remove(id);
    })
}
