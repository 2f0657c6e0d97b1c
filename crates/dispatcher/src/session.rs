//! The two streams a node holds open: its session (the node object, the managers, the network
//! bootstrap keys and the root CA, re-sent whenever one of them changes) and its assignments (a
//! COMPLETE set of its tasks and the secrets and configs they reference, then INCREMENTAL
//! changes coalesced as SwarmKit's dispatcher.go `Assignments`, each split over several
//! messages when it is too large for one). Both end when the session's registration ends, and
//! both re-read the store when their event channel overflowed.

use std::sync::Arc;
use std::time::Duration;

use api::assignment_parts;
use api::assignments_message::Type as AssignmentsType;
use store::{By, Event, EventKind, Shared};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use crate::assignments::{AssignmentSet, Outgoing, PART_BUDGET};
use crate::error::DispatcherError;
use crate::nodes::SessionHandle;
use crate::term::{Subscription, Term};

/// Changes that make an assignments message go out at once.
const MODIFICATION_BATCH_LIMIT: usize = 100;
/// Quiet time after the last change before an assignments message goes out.
const BATCHING_WAIT: Duration = Duration::from_millis(100);

/// What a stream of one session keeps: whose it is, the registration that ends it, and its
/// share of the event routing.
pub(crate) struct StreamOf {
    pub node_id: String,
    pub session_id: String,
    pub handle: SessionHandle,
    pub sub: Subscription,
}

/// Sending half of a stream handed to gRPC (each message boxed: see `DispatcherStream`).
pub(crate) type StreamTx<T> = mpsc::Sender<Box<Result<T, Status>>>;

/// Numbers consecutive assignments messages: each applies to the previous one's result.
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    count: u64,
    last: String,
}

impl Sequence {
    /// The next message; `more` marks a part of a set that further parts complete.
    pub fn message(
        &mut self,
        kind: AssignmentsType,
        changes: Vec<api::AssignmentChange>,
        more: bool,
    ) -> api::AssignmentsMessage {
        self.count += 1;
        let results_in = assignment_parts::results_in(self.count, more);
        let applies_to = std::mem::replace(&mut self.last, results_in.clone());
        api::AssignmentsMessage {
            r#type: kind as i32,
            applies_to,
            results_in,
            changes,
        }
    }
}

/// Every task of `node_id` and the secrets and configs they need, from one view, as a fresh set.
pub(crate) fn load_assignments(term: &Term, node_id: &str) -> AssignmentSet {
    term.store.view(|tx| {
        let mut set = AssignmentSet::default();
        for t in tx.find_shared::<api::Task>(By::NodeId(node_id)) {
            set.add_or_update(tx, t);
        }
        set
    })
}

fn version(node: &api::Node) -> u64 {
    node.meta
        .as_ref()
        .and_then(|m| m.version.as_ref())
        .map_or(0, |v| v.index)
}

impl Term {
    pub fn session_message(
        &self,
        session_id: &str,
        node: Option<&api::Node>,
    ) -> api::SessionMessage {
        api::SessionMessage {
            session_id: session_id.to_string(),
            node: node.cloned(),
            managers: self.managers.borrow().clone(),
            network_bootstrap_keys: self.network_keys.borrow().clone(),
            root_ca: self.root_ca.borrow().clone(),
        }
    }

    /// Sends a session message whenever the node object, the managers, the network keys or the
    /// root CA change, until the session ends; when the dispatcher stops, a last message then
    /// Aborted tells the node to find another manager. The node object is the store's version,
    /// shared (a copy only goes into each message), so a session costs no copy of its node.
    pub async fn session_stream(
        self: Arc<Self>,
        of: StreamOf,
        mut node: Option<Shared<api::Node>>,
        tx: StreamTx<api::SessionMessage>,
    ) {
        let StreamOf {
            node_id,
            session_id,
            handle,
            mut sub,
        } = of;
        let mut managers = self.managers.clone();
        let mut root = self.root_ca.subscribe();
        let mut keys = self.network_keys.subscribe();
        managers.mark_unchanged();
        root.mark_unchanged();
        keys.mark_unchanged();
        loop {
            let mut disconnect = false;
            tokio::select! {
                biased;
                () = self.token.cancelled() => disconnect = true,
                () = handle.ended.cancelled() => {
                    let err = self.session_error(&node_id, &session_id);
                    let _ = tx.send(Box::new(Err(err.into()))).await;
                    return;
                }
                () = tx.closed() => return,
                res = managers.changed() => disconnect = res.is_err(),
                res = root.changed() => disconnect = res.is_err(),
                res = keys.changed() => disconnect = res.is_err(),
                ev = sub.rx.recv() => {
                    let Some(ev) = ev else { return };
                    let Event::Object { kind: EventKind::Create | EventKind::Update, object, .. } = ev else {
                        continue;
                    };
                    match Shared::<api::Node>::from_object(object) {
                        Some(n) if node.as_ref().is_none_or(|old| version(&n) > version(old)) => {
                            node = Some(n);
                        }
                        _ => continue,
                    }
                }
            }
            if sub.take_overflow() {
                node = self.store.view(|tx| tx.get_shared(&node_id));
            }
            let msg = self.session_message(&session_id, node.as_deref());
            if tx.send(Box::new(Ok(msg))).await.is_err() {
                return;
            }
            if disconnect {
                let _ = tx
                    .send(Box::new(Err(DispatcherError::Disconnect.into())))
                    .await;
                return;
            }
        }
    }

    /// Sends the node's assignments: the whole set first, then its changes, coalesced: a
    /// message goes out once no change came for [`BATCHING_WAIT`] or
    /// [`MODIFICATION_BATCH_LIMIT`] changes piled up. A batch too large for one message goes out
    /// in parts ([`Term::send_parts`]), and so does the set with `split_complete`.
    pub async fn assignments_stream(
        self: Arc<Self>,
        of: StreamOf,
        mut set: AssignmentSet,
        split_complete: bool,
        tx: StreamTx<api::AssignmentsMessage>,
    ) {
        let StreamOf {
            node_id,
            session_id,
            handle,
            mut sub,
        } = of;
        let mut seq = Sequence::default();
        let complete_budget = if split_complete {
            PART_BUDGET
        } else {
            usize::MAX
        };
        let first = set.take_complete();
        if !self
            .send_parts(
                &mut seq,
                AssignmentsType::Complete,
                first,
                complete_budget,
                &tx,
                &handle,
            )
            .await
        {
            return;
        }
        loop {
            let mut count = 0;
            let mut deadline: Option<Instant> = None;
            while count < MODIFICATION_BATCH_LIMIT {
                let quiet = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = self.token.cancelled() => {
                        let _ = tx.send(Box::new(Err(DispatcherError::Stopped.into()))).await;
                        return;
                    }
                    () = handle.ended.cancelled() => {
                        let err = self.session_error(&node_id, &session_id);
                        let _ = tx.send(Box::new(Err(err.into()))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    ev = sub.rx.recv() => {
                        let Some(ev) = ev else { return };
                        let Event::Object { kind, object, .. } = &ev else { continue };
                        let Some(task) = Shared::<api::Task>::from_object(object.clone()) else { continue };
                        let changed = match kind {
                            EventKind::Remove => set.remove(&task.id),
                            _ => set.add_or_update(&self.store, task),
                        };
                        if changed {
                            count += 1;
                            deadline = Some(Instant::now() + BATCHING_WAIT);
                        }
                    }
                    () = quiet => break,
                }
                if sub.overflow_pending() {
                    break;
                }
            }
            let sent = if sub.take_overflow() {
                set = load_assignments(&self, &node_id);
                let all = set.take_complete();
                self.send_parts(
                    &mut seq,
                    AssignmentsType::Complete,
                    all,
                    complete_budget,
                    &tx,
                    &handle,
                )
                .await
            } else if count > 0 {
                let changes = set.take_changes();
                self.send_parts(
                    &mut seq,
                    AssignmentsType::Incremental,
                    changes,
                    PART_BUDGET,
                    &tx,
                    &handle,
                )
                .await
            } else {
                continue;
            };
            if !sent {
                return;
            }
        }
    }

    /// Sends `out` as one message of `kind`, or as several when its changes exceed `budget`
    /// bytes: a COMPLETE set as a COMPLETE message then INCREMENTAL ones, every part
    /// but the last marked (`api::assignment_parts`); a batch of changes as several INCREMENTAL
    /// messages. Each part is built only when the stream has room for it, so a node costs the
    /// dispatcher at most the stream's few queued messages. False when the stream is gone or the
    /// session or term ended meanwhile.
    async fn send_parts(
        &self,
        seq: &mut Sequence,
        kind: AssignmentsType,
        mut out: Outgoing,
        budget: usize,
        tx: &StreamTx<api::AssignmentsMessage>,
        handle: &SessionHandle,
    ) -> bool {
        let complete = kind == AssignmentsType::Complete;
        let mut kind = kind;
        loop {
            let permit = tokio::select! {
                biased;
                () = self.token.cancelled() => return false,
                () = handle.ended.cancelled() => return false,
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return false,
                },
            };
            let changes = out.next_part(budget);
            let more = !out.is_empty();
            permit.send(Box::new(Ok(seq.message(kind, changes, complete && more))));
            if !more {
                return true;
            }
            kind = AssignmentsType::Incremental;
        }
    }
}
