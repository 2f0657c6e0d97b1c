//! Change notification: the [`Event`]s emitted when committed actions are applied, the per-subscriber
//! [`WatchFilter`], and the [`Watcher`] receiving end. Channels are unbounded so a slow watcher can
//! never stall `apply_committed` (and with it raft); it only costs memory until it catches up, which
//! is why a filter can also drop, as they are published, the object events its watcher would ignore
//! ([`WatchFilter::select`]): a watcher busy writing thousands of objects otherwise holds every
//! version they pass through until it reads its queue again.
//! Registering a watcher atomically with a view is `MemoryStore`'s job.

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::object::{Kind, StoreObject};
use crate::tx::ReadTx;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// It was created.
    Create,
    /// It was replaced by a newer version.
    Update,
    /// It was deleted.
    Remove,
}

/// One change, or the end of a committed batch of changes.
// The shape is part of the crate's contract (objects inline, as the watch API sends them); boxing them
// would save a few hundred bytes per `Commit` only.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An object changed. `object` is the new version (for `Remove`, the object as it was deleted);
    /// `old` is the previous version for `Update`.
    Object {
        /// What happened.
        kind: EventKind,
        /// The object after the change (shared: every watcher gets the same copy).
        object: Arc<api::Object>,
        /// The object before an update.
        old: Option<Arc<api::Object>>,
    },
    /// Every change of the raft entry at index `version` has been delivered.
    Commit {
        /// The raft index now applied.
        version: u64,
    },
}

/// Kind and ID of an object, for code that only needs to know what changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The object's kind.
    pub kind: Kind,
    /// The object's ID.
    pub id: String,
}

impl Event {
    /// Kind of the changed object; `None` for `Commit`.
    pub fn object_kind(&self) -> Option<Kind> {
        match self {
            Event::Object { object, .. } => Kind::of_object(object),
            Event::Commit { .. } => None,
        }
    }

    /// Kind and ID of the changed object; `None` for `Commit`.
    pub fn object_ref(&self) -> Option<ObjectRef> {
        let Event::Object { object, .. } = self else {
            return None;
        };
        let kind = Kind::of_object(object)?;
        let id = match object.object.as_ref()? {
            api::object::Object::Node(o) => &o.id,
            api::object::Object::Service(o) => &o.id,
            api::object::Object::Task(o) => &o.id,
            api::object::Object::Network(o) => &o.id,
            api::object::Object::Cluster(o) => &o.id,
            api::object::Object::Secret(o) => &o.id,
            api::object::Object::Config(o) => &o.id,
            api::object::Object::Resource(o) => &o.id,
            api::object::Object::Extension(o) => &o.id,
            api::object::Object::Volume(o) => &o.id,
        };
        Some(ObjectRef {
            kind,
            id: id.clone(),
        })
    }

    /// The changed object if it is a `T`: `event.object_as::<api::Task>()`.
    pub fn object_as<T: StoreObject>(&self) -> Option<&T> {
        match self {
            Event::Object { object, .. } => T::in_object(object),
            Event::Commit { .. } => None,
        }
    }

    /// The previous version of an updated object if it is a `T`.
    pub fn old_as<T: StoreObject>(&self) -> Option<&T> {
        match self {
            Event::Object { old: Some(old), .. } => T::in_object(old),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn object<T: StoreObject>(kind: EventKind, object: T, old: Option<T>) -> Event {
        Event::Object {
            kind,
            object: Arc::new(object.into_object()),
            old: old.map(|o| Arc::new(o.into_object())),
        }
    }
}

/// The test of [`WatchFilter::select`]: whether a watcher wants an object event, given the store as
/// the raft entry carrying the event left it.
pub type Selector = dyn Fn(&Event, &ReadTx<'_>) -> bool + Send + Sync;

/// Which object kinds a watcher receives, and optionally which of their events; `Commit` events are
/// always delivered.
#[derive(Clone)]
pub struct WatchFilter {
    kinds: u16,
    select: Option<Arc<Selector>>,
}

impl fmt::Debug for WatchFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchFilter")
            .field("kinds", &format_args!("{:#06x}", self.kinds))
            .field("select", &self.select.is_some())
            .finish()
    }
}

impl Default for WatchFilter {
    /// Every kind.
    fn default() -> Self {
        WatchFilter::all()
    }
}

macro_rules! filter_builders {
    ($($method:ident => $kind:ident),* $(,)?) => {
        impl WatchFilter {
            $(
                #[doc = concat!("Also receive `", stringify!($kind), "` events.")]
                pub fn $method(self) -> Self {
                    self.kind(Kind::$kind)
                }
            )*
        }
    };
}

filter_builders!(
    nodes => Node,
    services => Service,
    tasks => Task,
    networks => Network,
    clusters => Cluster,
    secrets => Secret,
    configs => Config,
    resources => Resource,
    extensions => Extension,
    volumes => Volume,
);

impl WatchFilter {
    /// Events of every kind.
    pub fn all() -> Self {
        WatchFilter {
            kinds: Kind::ALL.iter().fold(0, |acc, k| acc | k.bit()),
            select: None,
        }
    }

    /// No object events (only `Commit`); add kinds with the builder methods.
    pub fn none() -> Self {
        WatchFilter {
            kinds: 0,
            select: None,
        }
    }

    /// Also receive events of `kind`.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kinds |= kind.bit();
        self
    }

    /// Receive only the object events (of the chosen kinds) for which `select` holds. The store
    /// runs it while it publishes the event, with the tables as the raft entry carrying the event
    /// left them (later changes are later events), and queues nothing for the watcher when it
    /// is false. It must be cheap (it runs under the store's write lock, on raft's apply path),
    /// must not call into any `MemoryStore` (view, watch, update: the locks it holds are not
    /// re-entrant, so that would deadlock the apply path; it reads only the `ReadTx` it is given),
    /// and must return false only for events the watcher provably ignores, whatever it reads
    /// afterwards.
    pub fn select(
        mut self,
        select: impl Fn(&Event, &ReadTx<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.select = Some(Arc::new(select));
        self
    }

    /// Whether `event` passes the filter, with `tx` the store as the event's entry left it.
    pub fn accepts(&self, event: &Event, tx: &ReadTx<'_>) -> bool {
        match event.object_kind() {
            Some(kind) => {
                self.kinds & kind.bit() != 0 && self.select.as_ref().is_none_or(|s| s(event, tx))
            }
            None => matches!(event, Event::Commit { .. }),
        }
    }
}

/// Receiving end of a watch. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Watcher {
    /// The next event; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// The sending side of one watcher, kept by the store.
#[derive(Debug)]
pub(crate) struct Subscriber {
    filter: WatchFilter,
    tx: mpsc::UnboundedSender<Event>,
}

/// A connected subscriber/watcher pair.
pub(crate) fn subscribe(filter: WatchFilter) -> (Subscriber, Watcher) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Subscriber { filter, tx }, Watcher { rx })
}

impl Subscriber {
    /// Sends the events this subscriber wants (`tx`: the store after them); false once its
    /// watcher was dropped.
    pub(crate) fn send(&self, events: &[Event], tx: &ReadTx<'_>) -> bool {
        self.send_iter(events.iter(), tx)
    }

    /// [`Subscriber::send`] of the events `events` yields.
    pub(crate) fn send_iter<'e>(
        &self,
        events: impl Iterator<Item = &'e Event>,
        tx: &ReadTx<'_>,
    ) -> bool {
        events
            .filter(|e| self.filter.accepts(e, tx))
            .all(|e| self.tx.send(e.clone()).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Tables;

    #[test]
    fn filter_passes_chosen_kinds_and_commits() {
        let task = Event::object(
            EventKind::Create,
            api::Task {
                id: "t".into(),
                ..Default::default()
            },
            None,
        );
        let node = Event::object(
            EventKind::Remove,
            api::Node {
                id: "n".into(),
                ..Default::default()
            },
            None,
        );
        let commit = Event::Commit { version: 3 };
        let tables = Tables::default();
        let tx = ReadTx::new(&tables);
        let f = WatchFilter::none().tasks();
        assert!(f.accepts(&task, &tx));
        assert!(!f.accepts(&node, &tx));
        assert!(f.accepts(&commit, &tx));
        assert!(WatchFilter::none().accepts(&commit, &tx));
        assert!(WatchFilter::all().accepts(&node, &tx));
        assert_eq!(
            node.object_ref(),
            Some(ObjectRef {
                kind: Kind::Node,
                id: "n".into()
            })
        );
        assert_eq!(
            task.object_as::<api::Task>().map(|t| t.id.as_str()),
            Some("t")
        );
        assert!(task.object_as::<api::Node>().is_none());
    }

    #[test]
    fn selector_drops_only_object_events_it_refuses() {
        let task = |id: &str| {
            Event::object(
                EventKind::Update,
                api::Task {
                    id: id.into(),
                    ..Default::default()
                },
                None,
            )
        };
        let tables = Tables::default();
        let tx = ReadTx::new(&tables);
        let f = WatchFilter::none()
            .tasks()
            .select(|ev, _| ev.object_as::<api::Task>().is_some_and(|t| t.id == "keep"));
        assert!(f.accepts(&task("keep"), &tx));
        assert!(!f.accepts(&task("drop"), &tx));
        assert!(f.accepts(&Event::Commit { version: 1 }, &tx));
        // The kinds still come first: a selector never lets in a kind the filter leaves out.
        let nodes_only = WatchFilter::none().nodes().select(|_, _| true);
        assert!(!nodes_only.accepts(&task("keep"), &tx));

        let (sub, mut watcher) = subscribe(f);
        assert!(sub.send(
            &[task("drop"), task("keep"), Event::Commit { version: 2 }],
            &tx
        ));
        assert_eq!(watcher.try_recv(), Some(task("keep")));
        assert_eq!(watcher.try_recv(), Some(Event::Commit { version: 2 }));
        assert_eq!(watcher.try_recv(), None);
    }

    #[test]
    fn dropped_watcher_is_reported() {
        let tables = Tables::default();
        let tx = ReadTx::new(&tables);
        let (sub, mut watcher) = subscribe(WatchFilter::all());
        assert!(sub.send(&[Event::Commit { version: 1 }], &tx));
        assert_eq!(watcher.try_recv(), Some(Event::Commit { version: 1 }));
        drop(watcher);
        assert!(!sub.send(&[Event::Commit { version: 2 }], &tx));
    }
}
