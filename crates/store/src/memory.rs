//! [`MemoryStore`]: the tables behind a lock, the write path (transaction -> actions -> proposer ->
//! `apply_committed`), watch subscription, and snapshots (SwarmKit's `manager/state/store/memory.go`).
//! Without a proposer a transaction's changes are applied at once, and straight into the tables when
//! nothing else changed them since the transaction's view (`State::generation`), since its checks
//! then still hold; otherwise, and always for `apply_committed`, through a checking `Tx`.
//!
//!
//! With a proposer, writes are group-committed: transactions run one at a time (under the
//! `pipeline` lock, never across an await), each over the committed tables plus the changes of the
//! writers before it that are not applied yet (the batch in flight and the open batch, through the
//! overlay they leave, [`crate::tx::Parts`]), so it sees what it would have seen had they committed
//! first, and its checks hold when the batch is applied in that order. A transaction that fails is
//! rolled back to where it began and fails alone. A committer task proposes the open batch as soon
//! as nothing is in flight, so one raft entry (and one fsync) carries every write that queued while
//! the previous one was being committed, and a lone write is proposed at once, unless it is a
//! background write ([`MemoryStore::background`]): an open batch of background writes alone waits
//! for a foreground write to join it, [`LINGER`] at most. A batch larger than
//! one raft entry is cut between writers into entries proposed in order. When an entry fails,
//! its writers, those after it, and the whole open batch (which read them) fail, and the open
//! changes are dropped: a write that fails is not applied. Objects written by a pending write carry
//! the [`crate::tx::PENDING`] version until applied. Once the tables changed while a batch is in
//! flight (it or something before it was applied), new writers wait for the committer to settle
//! it, so a transaction never reads a pending write that the tables already hold.
//!
//! Locks: `state` (tables and last index) is taken for reading by views and write transactions and for
//! writing only when changes are applied (`apply_committed`, the proposer-less write) or a snapshot is
//! restored, which also hand events to the subscribers while still holding it. Subscribing happens
//! under a read lock of `state`, so a watcher misses no event after its view and sees none that the
//! view already contains. `update_lock` (async) serialises the write transactions of a store without
//! proposer across their commit, and gives the writers of a group commit their turn (the closure
//! then runs under `pipeline`, a sync lock the committer takes briefly too). Order: `update_lock`,
//! `pipeline`, `state`, `subscribers`.

use std::collections::HashSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::StoreError;
use crate::history::History;
use crate::limits::{MAX_TRANSACTION_BYTES, REQUEST_ID_BYTES};
use crate::object::Kind;
use crate::proposer::{ProposeError, Proposer};
use crate::table::Tables;
use crate::tx::{Change, Mode, Parts, ReadTx, Tx, forget};
use crate::watch::{Event, Subscriber, WatchFilter, Watcher, subscribe};

/// The manager's object store. Cheap to clone (all clones share one store); `Send + Sync`.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    /// Whether this handle's writes are background writes (see [`MemoryStore::background`]).
    lingers: bool,
}

struct Inner {
    state: RwLock<State>,
    /// Without a proposer: held across a whole write (transaction and commit), so checks made in
    /// the transaction still hold when its changes are applied. With one: the writers' turn to
    /// run their transaction.
    update_lock: tokio::sync::Mutex<()>,
    /// With a proposer: the group commit.
    pipeline: Mutex<Pipeline>,
    /// Told when the committer has settled a batch in flight.
    settled: Notify,
    /// Told when a foreground writer queued its changes.
    foreground: Notify,
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
    /// The last commits' events, for watches that resume from a version.
    history: History,
}

/// The state of the group commit (see the module doc).
#[derive(Default)]
struct Pipeline {
    /// The open batch (changes not proposed yet), its size, and an overlay of it over the batch
    /// in flight.
    parts: Parts,
    /// The writers of the open batch, in order.
    writers: Vec<Waiter>,
    /// While a batch is in flight: the generation of the tables it was proposed over.
    in_flight: Option<u64>,
    /// Whether a committer task is running.
    committer: bool,
}

/// What [`MemoryStore::enqueue`] did with a transaction.
enum Enqueued<R> {
    /// Nothing yet: wait until the batch in flight is settled, then try again.
    Wait,
    /// Failed, or needs no commit.
    Done(Result<R, StoreError>),
    /// Queued: the answer comes once its entry is committed.
    Queued(R, oneshot::Receiver<Result<(), StoreError>>),
}

/// A writer of the open batch waiting for its answer.
struct Waiter {
    /// End of its changes in the batch.
    end: usize,
    /// Size of the raft entry the batch's changes up to `end` would make.
    len: usize,
    /// A background write ([`MemoryStore::background`]): when it queued.
    lingering: Option<Instant>,
    reply: oneshot::Sender<Result<(), StoreError>>,
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
                pipeline: Mutex::new(Pipeline::default()),
                settled: Notify::new(),
                foreground: Notify::new(),
                proposer: RwLock::new(proposer),
                subscribers: Mutex::new(Vec::new()),
            }),
            lingers: false,
        }
    }

    /// A handle on the same store whose writes are background writes: the leader's subsystems
    /// (orchestrators, allocator, scheduler...), which react to what others wrote and whose
    /// writes nobody waits on. With a proposer, the group commit proposes an open batch that
    /// holds only background writes once a foreground write joins it or once the first of them
    /// has waited [`LINGER`], rather than at once: a background write then shares its entry (and
    /// its fsync) with the next client write instead of holding that write back behind an
    /// entry of its own. Reads, and writes without a proposer, are the same as the store's.
    pub fn background(&self) -> MemoryStore {
        MemoryStore {
            inner: self.inner.clone(),
            lingers: true,
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

    fn pipeline(&self) -> MutexGuard<'_, Pipeline> {
        // A panicking transaction is caught and rolled back before the lock is let go.
        self.inner
            .pipeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn proposer(&self) -> Option<Arc<dyn Proposer>> {
        self.inner
            .proposer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
        let _timer = telemetry::swarm::STORE_READ_TX_LATENCY.start();
        let state = self.read_state();
        f(&ReadTx::new(&state.tables))
    }

    /// Serialised write transaction: `f` reads and writes through `tx` (it sees its own writes); if it
    /// returns Ok and made changes, the changes become `api::StoreAction`s, go through the proposer (or
    /// straight to `apply_committed`), and `update` returns after they are applied. Err from `f`, or
    /// from the proposal, = nothing changes. Like `view`, `f` runs under the read lock and must not call
    /// back into the store. With a proposer, concurrent writes are committed together (see the
    /// module doc); `f` then sees the writes queued before it as if they were committed.
    pub async fn update<R: Send>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        let _timer = telemetry::swarm::STORE_WRITE_TX_LATENCY.start();
        if let Some(proposer) = self.proposer() {
            return self.group_write(&proposer, |_| self.lingers, f).await;
        }
        let _serial = self.inner.update_lock.lock().await;
        let _held = telemetry::swarm::STORE_LOCK_DURATION.start();
        let (result, written) = {
            let state = self.read_state();
            let mut tx = Tx::new(&state.tables, Mode::Local);
            let result = f(&mut tx)?;
            (result, Written::of(tx, state.generation))
        };
        self.commit(written)?;
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
        let _timer = telemetry::swarm::STORE_BATCH_LATENCY.start();
        let mut errors = Vec::new();
        let mut start = 0;
        if let Some(proposer) = self.proposer() {
            while start < items.len() {
                let mut consumed = 0;
                // Only the batch's last transaction lingers: the ones before it are full.
                let last = |consumed: &usize| start + consumed >= items.len();
                let written = self
                    .group_write(
                        &proposer,
                        |consumed| self.lingers && last(consumed),
                        |tx| {
                            consumed = fill_batch(tx, &items[start..], &write, &mut errors);
                            Ok(consumed)
                        },
                    )
                    .await;
                // A transaction that failed as a whole is not written; go on after its items.
                start += consumed.max(1);
                if let Err(e) = written {
                    errors.push(e);
                }
            }
            return errors;
        }
        while start < items.len() {
            let _serial = self.inner.update_lock.lock().await;
            let _held = telemetry::swarm::STORE_LOCK_DURATION.start();
            let (consumed, written) = {
                let state = self.read_state();
                let mut tx = Tx::new(&state.tables, Mode::Local);
                let consumed = fill_batch(&mut tx, &items[start..], &write, &mut errors);
                (consumed, Written::of(tx, state.generation))
            };
            start += consumed;
            if let Err(e) = self.commit(written) {
                errors.push(e);
            }
        }
        errors
    }

    /// Applies what a local transaction of a store without proposer wrote, after refusing an
    /// entry larger than SwarmKit's limit (as a proposer would). With a proposer, writes go
    /// through [`MemoryStore::group_write`] instead.
    fn commit(&self, written: Written) -> Result<(), StoreError> {
        let Written {
            changes,
            proposal_len,
            seen,
        } = written;
        if changes.is_empty() {
            return Ok(());
        }
        if proposal_len > MAX_TRANSACTION_BYTES {
            debug!(
                bytes = proposal_len,
                limit = MAX_TRANSACTION_BYTES,
                "store write refused: too large"
            );
            return Err(ProposeError::TooLarge.into());
        }
        let index = self.last_index() + 1;
        self.apply_changes(index, changes, Some(seen))
    }

    /// A write of the group commit (see the module doc): runs `f` after the writers queued before
    /// it, over what they wrote, and waits until the entry holding its changes is committed and
    /// applied. Dropping the future leaves the changes queued (later writers may have read them);
    /// only the answer is lost. `proposer` is the store's, read once by the caller: a committer
    /// this write starts proposes through it. `lingers`, given what `f` returned: whether this is
    /// a background write ([`MemoryStore::background`]).
    async fn group_write<R: Send>(
        &self,
        proposer: &Arc<dyn Proposer>,
        lingers: impl Fn(&R) -> bool + Send,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        let mut f = Some(f);
        let (result, answer) = loop {
            let settled = self.inner.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            // Writers take turns here without holding a thread; the pipeline lock is then only
            // contended by the committer.
            let turn = self.inner.update_lock.lock().await;
            let held = telemetry::swarm::STORE_LOCK_DURATION.start();
            let enqueued = self.enqueue(proposer, &lingers, &mut f);
            drop(held);
            drop(turn);
            match enqueued {
                Enqueued::Wait => settled.await,
                Enqueued::Done(result) => return result,
                Enqueued::Queued(result, answer) => break (result, answer),
            }
        };
        match answer.await {
            Ok(Ok(())) => Ok(result),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProposeError::Other("store committer stopped".to_string()).into()),
        }
    }

    /// Runs the transaction `f` of [`MemoryStore::group_write`] after the queued writers and
    /// queues its changes, unless it must wait for the batch in flight to be settled first.
    fn enqueue<R>(
        &self,
        proposer: &Arc<dyn Proposer>,
        lingers: &impl Fn(&R) -> bool,
        f: &mut Option<impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>>,
    ) -> Enqueued<R> {
        let mut pipeline = self.pipeline();
        let state = self.read_state();
        if pipeline
            .in_flight
            .is_some_and(|seen| seen != state.generation)
        {
            // The batch in flight may be applied already, and the overlay would then hide the
            // versions it got.
            return Enqueued::Wait;
        }
        let f = f.take().expect("the transaction runs once");
        let mut tx = Tx::resume(&state.tables, std::mem::take(&mut pipeline.parts));
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut tx)));
        let outcome = match outcome {
            Ok(Ok(_)) if tx.proposal_len() > MAX_TRANSACTION_BYTES => {
                debug!(
                    bytes = tx.proposal_len(),
                    limit = MAX_TRANSACTION_BYTES,
                    "store write refused: too large"
                );
                Ok(Err(ProposeError::TooLarge.into()))
            }
            outcome => outcome,
        };
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                tx.rollback_to(tx.start());
                pipeline.parts = tx.into_parts();
                return Enqueued::Done(Err(e));
            }
            Err(panic) => {
                tx.rollback_to(tx.start());
                pipeline.parts = tx.into_parts();
                drop(state);
                drop(pipeline);
                resume_unwind(panic);
            }
        };
        let pending = pipeline.in_flight.is_some() || !pipeline.writers.is_empty();
        if tx.change_count() == 0 && !pending {
            // Read nothing uncommitted and wrote nothing.
            pipeline.parts = tx.into_parts();
            return Enqueued::Done(Ok(result));
        }
        tx.seal();
        pipeline.parts = tx.into_parts();
        let (reply, answer) = oneshot::channel();
        let lingering = lingers(&result).then(Instant::now);
        let waiter = Waiter {
            end: pipeline.parts.changes.len(),
            len: pipeline.parts.proposal_len,
            lingering,
            reply,
        };
        pipeline.writers.push(waiter);
        if !pipeline.committer {
            pipeline.committer = true;
            tokio::spawn(self.clone().run_committer(proposer.clone()));
        } else if lingering.is_none() {
            // A committer lingering on background writes proposes them with this one now.
            self.inner.foreground.notify_waiters();
        }
        Enqueued::Queued(result, answer)
    }

    /// The committer of the group commit: proposes the open batch whenever nothing is in flight,
    /// until no writer waits. A task of its own, so that a writer's future being dropped stops no
    /// proposal half-way.
    async fn run_committer(self, proposer: Arc<dyn Proposer>) {
        let mut guard = CommitterGuard {
            store: &self,
            armed: true,
        };
        loop {
            let foreground = self.inner.foreground.notified();
            let mut foreground = std::pin::pin!(foreground);
            foreground.as_mut().enable();
            let taken = {
                let mut pipeline = self.pipeline();
                if pipeline.writers.is_empty() {
                    pipeline.committer = false;
                    guard.armed = false;
                    return;
                }
                match linger_until(&pipeline.writers) {
                    Some(until) => Err(until),
                    None => {
                        pipeline.in_flight = Some(self.read_state().generation);
                        let changes = std::mem::take(&mut pipeline.parts.changes);
                        let in_flight: Vec<(Kind, Arc<str>)> =
                            changes.iter().filter_map(Change::key).collect();
                        pipeline.parts.proposal_len = REQUEST_ID_BYTES;
                        Ok((changes, std::mem::take(&mut pipeline.writers), in_flight))
                    }
                }
            };
            let (changes, writers, in_flight) = match taken {
                Ok(batch) => batch,
                Err(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut foreground => {}
                    }
                    continue;
                }
            };
            let (committed, failure) = self.propose_batch(&*proposer, changes, &writers).await;
            {
                let mut pipeline = self.pipeline();
                pipeline.in_flight = None;
                match &failure {
                    None => {
                        // What was in flight is in the tables now: the overlay keeps what the
                        // open changes wrote.
                        let open: HashSet<(Kind, Arc<str>)> = pipeline
                            .parts
                            .changes
                            .iter()
                            .filter_map(Change::key)
                            .collect();
                        for key in in_flight {
                            if !open.contains(&key) {
                                forget(&mut pipeline.parts.overlay, key.0, &key.1);
                            }
                        }
                    }
                    Some(e) => {
                        // The open batch read what failed.
                        for waiter in std::mem::take(&mut pipeline.writers) {
                            let _ = waiter.reply.send(Err(e.clone().into()));
                        }
                        pipeline.parts = Parts::default();
                    }
                }
            }
            for (i, waiter) in writers.into_iter().enumerate() {
                let answer = match &failure {
                    Some(e) if i >= committed => Err(e.clone().into()),
                    _ => Ok(()),
                };
                // A writer that stopped waiting does not want its answer.
                let _ = waiter.reply.send(answer);
            }
            self.inner.settled.notify_waiters();
        }
    }

    /// Proposes the changes of `writers` in order, in as few entries as the size limit allows
    /// (cut between writers). Returns how many writers' changes were committed and, if an entry
    /// failed, why (the writers from the first of that entry on are not committed).
    async fn propose_batch(
        &self,
        proposer: &dyn Proposer,
        changes: Vec<Change>,
        writers: &[Waiter],
    ) -> (usize, Option<ProposeError>) {
        let mut changes = changes.into_iter();
        let (mut first, mut taken, mut base_len) = (0, 0, REQUEST_ID_BYTES);
        while first < writers.len() {
            let mut last = first;
            while writers
                .get(last + 1)
                .is_some_and(|next| next.len - base_len + REQUEST_ID_BYTES <= MAX_TRANSACTION_BYTES)
            {
                last += 1;
            }
            let end = writers[last].end;
            let actions: Vec<api::StoreAction> = changes
                .by_ref()
                .take(end - taken)
                .map(Change::into_action)
                .collect();
            taken = end;
            base_len = writers[last].len;
            if !actions.is_empty() {
                let count = actions.len();
                match proposer.propose(actions).await {
                    Ok(index) => {
                        debug!(
                            index,
                            actions = count,
                            writers = last + 1 - first,
                            "store writes committed"
                        );
                        if self.last_index() < index {
                            warn!(
                                index,
                                last = self.last_index(),
                                "proposer returned before applying the write"
                            );
                        }
                    }
                    Err(e) => return (first, Some(e)),
                }
            }
            first = last + 1;
        }
        (writers.len(), None)
    }

    /// Applies committed actions at raft `index` (raft state machine, and replay after restart): all of
    /// them or, on error, none. Sets `meta.version.index = index` on every created/updated object, emits
    /// one event per action then `Event::Commit { version: index }`. Deterministic: `created_at` and
    /// `updated_at` come inside the actions. An empty batch only advances the index.
    pub fn apply_committed(
        &self,
        index: u64,
        actions: Vec<api::StoreAction>,
    ) -> Result<(), StoreError> {
        let changes = actions
            .into_iter()
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
            self.publish(&events, &state.tables);
            state.history.record(index, events);
        }
        Ok(())
    }

    /// Hands events to every subscriber; called with `state` write-locked so batches never
    /// interleave, and after `tables` took the changes, which subscribers' selectors read.
    fn publish(&self, events: &[Event], tables: &Tables) {
        let tx = ReadTx::new(tables);
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.send(events, &tx));
    }

    /// Atomic snapshot + subscription: returns the result of `f` on a view and a `Watcher` receiving
    /// every event committed after that view, with no gap. Dropping the `Watcher` unsubscribes.
    pub fn view_and_watch<R>(
        &self,
        filter: WatchFilter,
        f: impl FnOnce(&ReadTx<'_>) -> R,
    ) -> (R, Watcher) {
        let viewed = self.subscribe_under(filter, |state, _| {
            Ok::<R, std::convert::Infallible>(f(&ReadTx::new(&state.tables)))
        });
        match viewed {
            Ok(viewed) => viewed,
            Err(never) => match never {},
        }
    }

    /// Registers a watcher of `filter` under the read lock of `state`, once `before` (the view
    /// it starts from, or the replay of earlier commits it gets first) ran there without error:
    /// no commit can be applied in between.
    fn subscribe_under<R, E>(
        &self,
        filter: WatchFilter,
        before: impl FnOnce(&State, &Subscriber) -> Result<R, E>,
    ) -> Result<(R, Watcher), E> {
        let state = self.read_state();
        let (subscriber, watcher) = subscribe(filter);
        let result = before(&state, &subscriber)?;
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(subscriber);
        drop(state);
        Ok((result, watcher))
    }

    /// A watcher of every event committed from now on.
    pub fn watch(&self, filter: WatchFilter) -> Watcher {
        self.view_and_watch(filter, |_| ()).1
    }

    /// A watcher that first receives the events of every commit after index `from` that the
    /// store still remembers (see [`crate::HISTORY_EVENTS`]), each closed by its
    /// `Event::Commit`, then every event committed from now on, with no gap and nothing twice
    /// (SwarmKit's `WatchFrom`). `filter` is applied to the replayed events too; its selector
    /// then reads the tables as they are now, not as the replayed commit left them. Fails
    /// ([`StoreError::Compacted`]) when `from` is older than the history, or
    /// ([`StoreError::VersionsOutOfOrder`]) newer than the last applied index.
    pub fn watch_from(&self, filter: WatchFilter, from: u64) -> Result<Watcher, StoreError> {
        let ((), watcher) = self.subscribe_under(filter, |state, subscriber| {
            let replay = state.history.since(from, state.last_index)?;
            // The watcher is not dropped yet, so its channel takes everything.
            subscriber.send_iter(replay, &ReadTx::new(&state.tables));
            Ok::<(), StoreError>(())
        })?;
        Ok(watcher)
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
        self.publish(&events, &state.tables);
        state.history.reset(index);
    }

    /// Writers of the open batch of the group commit (for tests).
    #[cfg(test)]
    pub(crate) fn queued_writers(&self) -> usize {
        self.pipeline().writers.len()
    }

    /// Highest index applied so far.
    pub fn last_index(&self) -> u64 {
        self.read_state().last_index
    }
}

/// How long a batch of background writes alone waits for a foreground write to join it
/// ([`MemoryStore::background`]). Far below the scheduler's own debounce (50 ms).
pub const LINGER: Duration = Duration::from_millis(1);

/// Until when the open batch `writers` waits before it is proposed: `None` once it holds a
/// foreground write, or once its first background write has waited [`LINGER`].
fn linger_until(writers: &[Waiter]) -> Option<Instant> {
    if writers.iter().any(|w| w.lingering.is_none()) {
        return None;
    }
    // Writers queue in order: the first has waited longest.
    let until = writers.first()?.lingering? + LINGER;
    (Instant::now() < until).then_some(until)
}

/// Unwinds the group commit if the committer task is dropped half-way (its runtime shutting down):
/// the waiting writers are failed and the pipeline is left free.
struct CommitterGuard<'a> {
    store: &'a MemoryStore,
    armed: bool,
}

impl Drop for CommitterGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut pipeline = self.store.pipeline();
        for waiter in std::mem::take(&mut pipeline.writers) {
            let _ = waiter.reply.send(Err(ProposeError::Other(
                "store committer stopped".to_string(),
            )
            .into()));
        }
        pipeline.parts = Parts::default();
        pipeline.in_flight = None;
        pipeline.committer = false;
        drop(pipeline);
        self.store.inner.settled.notify_waiters();
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

/// Writes items into `tx` until it is full ([`Tx::batch_full`]) or the items run out; returns how
/// many items it took. An item whose write fails is rolled back and its error kept; an item that
/// would take a transaction holding earlier writes past the limit is rolled back and left for the
/// next transaction.
fn fill_batch<T>(
    tx: &mut Tx<'_>,
    items: &[T],
    write: &impl Fn(&mut Tx<'_>, &T) -> Result<(), StoreError>,
    errors: &mut Vec<StoreError>,
) -> usize {
    let mut done = 0;
    while done < items.len() {
        let mark = tx.mark();
        if let Err(e) = write(tx, &items[done]) {
            tx.rollback_to(mark);
            errors.push(e);
            done += 1;
            continue;
        }
        if tx.had_writes_at(mark) && tx.proposal_len() > MAX_TRANSACTION_BYTES {
            tx.rollback_to(mark);
            break;
        }
        done += 1;
        if tx.batch_full() {
            break;
        }
    }
    done
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
        store.apply_committed(1, vec![other]).expect("apply");
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
