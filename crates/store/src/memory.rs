//! [`MemoryStore`]: the tables behind a lock, the write path (transaction -> actions -> proposer ->
//! `apply_committed`), watch subscription, and snapshots (SwarmKit's `manager/state/store/memory.go`).
//! Without a proposer a transaction's changes are applied at once, and straight into the tables when
//! nothing else changed them since the transaction's view (`State::generation`), since its checks
//! then still hold; otherwise, and always for `apply_committed`, through a checking `Tx`.
//!
//! Locks: `state` (tables and last index) is taken for reading by views and write transactions and for
//! writing only when changes are applied (`apply_committed`, the proposer-less write) or a snapshot is
//! restored, which also hand events to the subscribers while still holding it. Subscribing happens
//! under a read lock of `state`, so a watcher misses no event after its view and sees none that the
//! view already contains. `update_lock` (async) serialises write
//! transactions across their proposal. Order: `update_lock`, then `state`, then `subscribers`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{debug, warn};

use crate::error::StoreError;
use crate::proposer::{ProposeError, Proposer};
use crate::table::Tables;
use crate::tx::{Change, Mode, ReadTx, Tx};
use crate::watch::{Event, Subscriber, WatchFilter, Watcher, subscribe};

/// The manager's object store. Cheap to clone (all clones share one store); `Send + Sync`.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Held across a whole write (transaction and proposal), so checks made in the transaction still
    /// hold when its actions are applied.
    update_lock: tokio::sync::Mutex<()>,
    proposer: RwLock<Option<Arc<dyn Proposer>>>,
    /// Sending ends of the live watchers; dropped watchers are pruned on the next send.
    subscribers: Mutex<Vec<Subscriber>>,
}

#[derive(Default)]
struct State {
    tables: Tables,
    last_index: u64,
    /// Bumped by every change of `tables`: a local transaction's checks still hold while it is
    /// what the transaction saw.
    generation: u64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("last_index", &self.last_index())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    /// A standalone store.
    fn default() -> Self {
        MemoryStore::new(None)
    }
}

impl MemoryStore {
    /// A store whose writes go through `proposer`; `None` = standalone (tests, subsystems): writes apply
    /// at once with a local counter as the index.
    pub fn new(proposer: Option<Arc<dyn Proposer>>) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                update_lock: tokio::sync::Mutex::new(()),
                proposer: RwLock::new(proposer),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Installs the proposer after construction (raft needs the store to build its state machine first).
    pub fn set_proposer(&self, proposer: Arc<dyn Proposer>) {
        *self
            .inner
            .proposer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(proposer);
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // Nothing panics half-way through a change of `State`, so a poisoned lock still guards
        // consistent data.
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Consistent read-only view; the closure runs under a read lock (keep it short, sync, and do not
    /// call back into the store from it: a waiting `apply_committed` would deadlock with it).
    pub fn view<R>(&self, f: impl FnOnce(&ReadTx<'_>) -> R) -> R {
        let state = self.read_state();
        f(&ReadTx::new(&state.tables))
    }

    /// Serialised write transaction: `f` reads and writes through `tx` (it sees its own writes); if it
    /// returns Ok and made changes, the changes become `api::StoreAction`s, go through the proposer (or
    /// straight to `apply_committed`), and `update` returns after they are applied. Err from `f`, or
    /// from the proposal, = nothing changes. Like `view`, `f` runs under the read lock and must not call
    /// back into the store.
    pub async fn update<R: Send>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        let _serial = self.inner.update_lock.lock().await;
        let (result, written) = {
            let state = self.read_state();
            let mut tx = Tx::new(&state.tables, Mode::Local);
            let result = f(&mut tx)?;
            (result, Written::of(tx, state.generation))
        };
        self.commit(written).await?;
        Ok(result)
    }

    /// Writes `items` in as few transactions as SwarmKit's batch limits allow (SwarmKit's
    /// `Batch`): `write` is called for each item in order, and a transaction is committed once it
    /// holds [`crate::MAX_CHANGES_PER_TRANSACTION`] writes or [`crate::BATCH_BYTES`]. Unlike
    /// SwarmKit's, a batch never grows past [`crate::MAX_TRANSACTION_BYTES`] by its last item: that
    /// item's writes are rolled back and it is written again in the next transaction (so `write`
    /// may run twice for an item; only its store writes count), and only an item too large on its
    /// own is refused. An item whose `write` fails is rolled back alone (its error is returned,
    /// with those of transactions that failed as a whole); the others are written.
    pub async fn batch<T: Sync>(
        &self,
        items: &[T],
        write: impl Fn(&mut Tx<'_>, &T) -> Result<(), StoreError> + Send + Sync,
    ) -> Vec<StoreError> {
        let mut errors = Vec::new();
        let mut start = 0;
        while start < items.len() {
            let _serial = self.inner.update_lock.lock().await;
            let (consumed, written) = {
                let state = self.read_state();
                let (consumed, tx) =
                    fill_batch(&state.tables, &items[start..], &write, &mut errors);
                (consumed, Written::of(tx, state.generation))
            };
            start += consumed;
            if let Err(e) = self.commit(written).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Proposes (or, without a proposer, applies) what a local transaction wrote, after
    /// refusing an entry larger than SwarmKit's limit.
    async fn commit(&self, written: Written) -> Result<(), StoreError> {
        let Written {
            changes,
            proposal_len,
            seen,
        } = written;
        if changes.is_empty() {
            return Ok(());
        }
        if proposal_len > crate::limits::MAX_TRANSACTION_BYTES {
            debug!(
                bytes = proposal_len,
                limit = crate::limits::MAX_TRANSACTION_BYTES,
                "store write refused: too large"
            );
            return Err(ProposeError::TooLarge.into());
        }
        let proposer = self
            .inner
            .proposer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match proposer {
            Some(proposer) => {
                let actions: Vec<api::StoreAction> =
                    changes.into_iter().map(Change::into_action).collect();
                let count = actions.len();
                let index = proposer.propose(actions).await?;
                debug!(index, actions = count, "store write committed");
                if self.last_index() < index {
                    warn!(
                        index,
                        last = self.last_index(),
                        "proposer returned before applying the write"
                    );
                }
            }
            None => {
                let index = self.last_index() + 1;
                self.apply_changes(index, changes, Some(seen))?;
            }
        }
        Ok(())
    }

    /// Applies committed actions at raft `index` (raft state machine, and replay after restart): all of
    /// them or, on error, none. Sets `meta.version.index = index` on every created/updated object, emits
    /// one event per action then `Event::Commit { version: index }`. Deterministic: `created_at` and
    /// `updated_at` come inside the actions. An empty batch only advances the index.
    pub fn apply_committed(
        &self,
        index: u64,
        actions: &[api::StoreAction],
    ) -> Result<(), StoreError> {
        let changes = actions
            .iter()
            .map(Change::from_action)
            .collect::<Result<Vec<_>, _>>()?;
        self.apply_changes(index, changes, None)
    }

    /// [`MemoryStore::apply_committed`] of changes (the proposer-less write path hands over the
    /// objects it built instead of copying them). `seen`: the generation of the tables the local
    /// transaction that made the changes saw; while it is current, the transaction's checks still
    /// hold and the changes go straight into the tables.
    fn apply_changes(
        &self,
        index: u64,
        changes: Vec<Change>,
        seen: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut state = self.write_state();
        let any = !changes.is_empty();
        let mut events;
        if seen == Some(state.generation) {
            events = Vec::with_capacity(changes.len() + 1);
            for change in changes {
                change.apply_unchecked(&mut state.tables, index, &mut events);
            }
        } else {
            let overlay;
            (overlay, events) = {
                let mut tx = Tx::new(&state.tables, Mode::Apply(index));
                for change in changes {
                    tx.apply(change)?;
                }
                tx.into_changes()
            };
            overlay.commit(&mut state.tables);
        }
        state.generation += 1;
        state.last_index = state.last_index.max(index);
        if any {
            events.push(Event::Commit { version: index });
            self.publish(&events);
        }
        Ok(())
    }

    /// Hands events to every subscriber; called with `state` write-locked so batches never interleave.
    fn publish(&self, events: &[Event]) {
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.send(events));
    }

    /// Atomic snapshot + subscription: returns the result of `f` on a view and a `Watcher` receiving
    /// every event committed after that view, with no gap. Dropping the `Watcher` unsubscribes.
    pub fn view_and_watch<R>(
        &self,
        filter: WatchFilter,
        f: impl FnOnce(&ReadTx<'_>) -> R,
    ) -> (R, Watcher) {
        let state = self.read_state();
        let result = f(&ReadTx::new(&state.tables));
        let (subscriber, watcher) = subscribe(filter);
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(subscriber);
        drop(state);
        (result, watcher)
    }

    /// A watcher of every event committed from now on.
    pub fn watch(&self, filter: WatchFilter) -> Watcher {
        self.view_and_watch(filter, |_| ()).1
    }

    /// Whole content, for raft snapshots.
    pub fn save(&self) -> api::StoreSnapshot {
        self.read_state().tables.save()
    }

    /// Replaces the whole content with `snapshot`, taken at raft `index`. Watchers receive the
    /// difference (creates, updates, removes) then `Commit { version: index }`, as SwarmKit's
    /// `RestoreTable` does.
    pub fn restore(&self, snapshot: api::StoreSnapshot, index: u64) {
        let mut state = self.write_state();
        let (overlay, mut events) = {
            let mut tx = Tx::new(&state.tables, Mode::Restore);
            tx.restore_table(snapshot.nodes);
            tx.restore_table(snapshot.services);
            tx.restore_table(snapshot.networks);
            tx.restore_table(snapshot.tasks);
            tx.restore_table(snapshot.clusters);
            tx.restore_table(snapshot.secrets);
            tx.restore_table(snapshot.resources);
            tx.restore_table(snapshot.extensions);
            tx.restore_table(snapshot.configs);
            tx.restore_table(snapshot.volumes);
            tx.into_changes()
        };
        overlay.commit(&mut state.tables);
        state.generation += 1;
        state.last_index = index;
        events.push(Event::Commit { version: index });
        self.publish(&events);
    }

    /// Highest index applied so far.
    pub fn last_index(&self) -> u64 {
        self.read_state().last_index
    }
}

/// What a local transaction wrote, ready to commit.
struct Written {
    changes: Vec<Change>,
    proposal_len: usize,
    /// The generation of the tables the transaction saw.
    seen: u64,
}

impl Written {
    fn of(tx: Tx<'_>, seen: u64) -> Self {
        let proposal_len = tx.proposal_len();
        Written {
            changes: tx.into_local_changes(),
            proposal_len,
            seen,
        }
    }
}

/// Writes items into one transaction until it is full ([`Tx::batch_full`]) or the items run out;
/// returns how many items it took. An item whose write fails is rolled back and its error kept;
/// an item that would take a transaction holding earlier writes past the limit is rolled back and
/// left for the next transaction.
fn fill_batch<'a, T>(
    tables: &'a Tables,
    items: &[T],
    write: &impl Fn(&mut Tx<'_>, &T) -> Result<(), StoreError>,
    errors: &mut Vec<StoreError>,
) -> (usize, Tx<'a>) {
    let mut tx = Tx::new(tables, Mode::Local);
    let mut done = 0;
    while done < items.len() {
        let mark = tx.mark();
        if let Err(e) = write(&mut tx, &items[done]) {
            tx.rollback_to(mark);
            errors.push(e);
            done += 1;
            continue;
        }
        if mark.had_writes() && tx.proposal_len() > crate::limits::MAX_TRANSACTION_BYTES {
            tx.rollback_to(mark);
            break;
        }
        done += 1;
        if tx.batch_full() {
            break;
        }
    }
    (done, tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreObject;

    fn secret(id: &str, name: &str) -> api::Secret {
        let name = name.into();
        let annotations = Some(api::Annotations {
            name,
            ..Default::default()
        });
        let spec = Some(api::SecretSpec {
            annotations,
            ..Default::default()
        });
        let id = id.into();
        api::Secret {
            id,
            spec,
            ..Default::default()
        }
    }

    /// Changes of a local transaction on the store as it is now, and the generation it saw.
    fn local_changes(store: &MemoryStore, object: api::Secret) -> (Vec<Change>, u64) {
        let state = store.read_state();
        let mut tx = Tx::new(&state.tables, Mode::Local);
        tx.create(object).expect("create in a fresh view");
        (tx.into_local_changes(), state.generation)
    }

    #[test]
    fn stale_local_changes_are_checked_again() {
        let store = MemoryStore::new(None);
        let (changes, seen) = local_changes(&store, secret("a", "one"));
        // Someone else writes in between (raft applying an entry, say).
        let other = api::StoreAction {
            action: api::StoreActionKind::StoreActionCreate as i32,
            target: Some(api::store_action::Target::Secret(secret("b", "one"))),
        };
        store.apply_committed(1, &[other]).expect("apply");
        let err = store.apply_changes(2, changes, Some(seen));
        assert!(
            matches!(err, Err(StoreError::NameConflict { .. })),
            "{err:?}"
        );
        assert_eq!(store.view(|tx| tx.count::<api::Secret>()), 1);
        assert_eq!(store.last_index(), 1);

        // A current view goes straight in.
        let (changes, seen) = local_changes(&store, secret("c", "two"));
        store.apply_changes(2, changes, Some(seen)).expect("apply");
        let c = store.view(|tx| tx.get_secret("c")).expect("stored");
        assert_eq!(c.version(), 2);
    }
}
