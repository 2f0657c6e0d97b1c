//! The Node objects of concurrent joins, created together: each IssueNodeCertificate queues its
//! node and waits; one writer task takes whatever is queued and writes it with
//! [`MemoryStore::batch`], so a burst of joins costs a few raft entries (and fsyncs) instead of one
//! each, while a lone join is written at once. Each node keeps its own answer: one whose ID
//! collides fails alone.

use std::sync::{Arc, Mutex, PoisonError};

use store::{MemoryStore, StoreError};
use tokio::sync::oneshot;
use tracing::error;

/// How the create of one node ended.
#[derive(Debug)]
pub(super) enum Created {
    /// Committed.
    Yes,
    /// Another node has this ID: draw another.
    IdTaken,
    /// Not written; the message says why (SwarmKit's words, from the store or raft).
    Failed(tonic::Status),
}

/// One queued node and who waits for it.
struct Item {
    node: api::Node,
    answer: oneshot::Sender<Created>,
    /// Set when its own write failed (its transaction may still commit without it).
    failed: Mutex<Option<Created>>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    /// A writer task is running: it takes what is queued before it stops.
    writing: bool,
}

/// Node creates waiting for the writer.
#[derive(Clone)]
pub(super) struct Creates {
    store: MemoryStore,
    queue: Arc<Mutex<Queue>>,
}

impl Creates {
    pub(super) fn new(store: MemoryStore) -> Creates {
        Creates {
            store,
            queue: Arc::default(),
        }
    }

    /// Creates `node` with the nodes queued meanwhile; waits until it is committed or refused.
    pub(super) async fn create(&self, node: api::Node) -> Created {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.items.push(Item {
                node,
                answer,
                failed: Mutex::new(None),
            });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            // A task of its own: the caller's future is dropped if its client goes away.
            tokio::spawn(self.clone().write_queued());
        }
        answered
            .await
            .unwrap_or_else(|_| Created::Failed(tonic::Status::internal("the node writer stopped")))
    }

    /// Writes batches until the queue is empty.
    async fn write_queued(self) {
        // Should a write panic, a later create starts a new writer.
        let _panic = StopWritingOnPanic(self.queue.clone());
        loop {
            let items = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.items.is_empty() {
                    queue.writing = false;
                    return;
                }
                std::mem::take(&mut queue.items)
            };
            let errors = self
                .store
                .batch(&items, |tx, item| {
                    tx.create_node(item.node.clone()).map_err(|e| {
                        let msg = e.to_string();
                        let created = match e {
                            StoreError::Exists { .. } => Created::IdTaken,
                            e => Created::Failed(super::store_error(e)),
                        };
                        *item.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(created);
                        StoreError::Invalid(msg)
                    })
                })
                .await;
            // An item that did not fail alone was in a transaction that committed, unless one
            // failed as a whole (raft refused it): the store tells which nodes are there.
            let mut whole = None;
            for e in errors {
                if let StoreError::Propose(_) = e {
                    error!("recording joining nodes failed: {e}");
                    whole = Some(super::store_error(e));
                }
            }
            for item in items {
                let own = item
                    .failed
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                let created = match (own, &whole) {
                    (Some(created), _) => created,
                    (None, None) => Created::Yes,
                    (None, Some(status)) => {
                        let csr = item.node.certificate.as_ref().map(|c| &c.csr);
                        let stored = self.store.view(|tx| {
                            tx.get_node(&item.node.id)
                                .is_some_and(|n| n.certificate.as_ref().map(|c| &c.csr) == csr)
                        });
                        if stored {
                            Created::Yes
                        } else {
                            Created::Failed(status.clone())
                        }
                    }
                };
                // The joiner may have gone; its node stays, as it would with a single write.
                let _ = item.answer.send(created);
            }
        }
    }
}

/// Clears the queue's writer flag when the writer task panics (it clears it itself when it
/// finds the queue empty, and a new writer may be running by the time it is dropped).
struct StopWritingOnPanic(Arc<Mutex<Queue>>);

impl Drop for StopWritingOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .writing = false;
        }
    }
}
