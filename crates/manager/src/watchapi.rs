//! The Watch API (`docker.swarmkit.v1.Watch`, SwarmKit's `manager/watchapi`): a client names
//! object kinds, the actions it wants of each (a bitmask of create, update, remove) and filters,
//! and gets first an empty message (the watch is in place), then one message per store commit
//! that changed a matching object, with the commit's version (its raft index) and, with
//! `include_old_object`, the previous version of each updated object. `resume_from` replays the
//! commits after a version first, from the store's bounded history ([`store::HISTORY_EVENTS`]
//! object events; an older version gets SwarmKit's compaction error).
//!
//! Filters follow SwarmKit's generated `Convert*Watch`: within an entry all filters must hold,
//! entries are alternatives; every kind takes ID, ID prefix, name, name prefix, custom index and
//! custom index prefix (a node's name is its hostname), nodes also role and membership, tasks
//! also service, node, slot and desired state; a filter a kind does not take is ignored, two of
//! one field conflict. A kind that is no store kind names the resources of that extension, as in
//! SwarmKit, but only when such an extension exists (SwarmKit watches any string and never
//! says; ours refuses it as InvalidArgument). A slot filter selects the service's tasks in that
//! slot (SwarmKit's checks the slot and an empty node ID instead, so it matches only unassigned
//! tasks: a bug we do not copy).
//!
//! Every manager serves it: the proxy ([`crate::proxy::forwarded`]) sends a follower's calls to
//! the leader, which confirms its leadership (a read index) before the watch starts, so the
//! watch sees every change committed before it was asked for. Matching runs as the store
//! publishes (a [`store::WatchFilter::select`]), so nothing this watch ignores is queued for it.

use std::sync::Arc;

use api::select_by::By;
use api::{WatchActionKind, object};
use raft::RaftNode;
use store::{Event, EventKind, Kind, MemoryStore, WatchFilter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::controlapi::store_status;

/// Messages a stream holds for a client that reads slowly, beyond which the watch waits (the
/// store queues the events meanwhile).
const STREAM_BUFFER: usize = 16;

/// The Watch gRPC service; cheap to clone.
#[derive(Clone)]
pub struct WatchService {
    store: MemoryStore,
    /// Confirms the leadership before a watch starts (`None`: a store without raft, in tests).
    raft: Option<Arc<RaftNode>>,
    /// Ends every stream when the manager stops.
    shutdown: CancellationToken,
}

impl WatchService {
    /// Watches of `store`, started once `raft` confirms this manager leads; streams end when
    /// `shutdown` fires.
    pub fn new(
        store: MemoryStore,
        raft: Option<Arc<RaftNode>>,
        shutdown: CancellationToken,
    ) -> WatchService {
        WatchService {
            store,
            raft,
            shutdown,
        }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> api::watch_server::WatchServer<WatchService> {
        api::watch_server::WatchServer::new(self)
    }
}

#[tonic::async_trait]
impl api::watch_server::Watch for WatchService {
    type WatchStream = ReceiverStream<Result<api::WatchMessage, Status>>;

    async fn watch(
        &self,
        request: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let matcher = self
            .store
            .view(|tx| {
                Matcher::parse(&req.entries, |name| {
                    tx.find_extensions(store::By::Name(name))
                        .iter()
                        .any(|e| e.annotations.as_ref().is_some_and(|a| a.name == name))
                })
            })
            .map_err(Status::invalid_argument)?;
        if let Some(raft) = &self.raft {
            raft.ensure_linearizable()
                .await
                .map_err(|_| crate::proxy::no_leader())?;
        }
        let matcher = Arc::new(matcher);
        let filter = matcher.store_filter();
        let mut watcher = match req.resume_from {
            Some(version) => self
                .store
                .watch_from(filter, version.index)
                .map_err(store_status)?,
            None => self.store.watch(filter),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tx.try_send(Ok(api::WatchMessage::default()))
            .expect("a new channel has room");
        let include_old = req.include_old_object;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                let ev = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::cancelled("context canceled"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    ev = watcher.recv() => ev,
                };
                match ev {
                    None => return,
                    Some(Event::Commit { version }) => {
                        if events.is_empty() {
                            continue;
                        }
                        let msg = api::WatchMessage {
                            events: std::mem::take(&mut events),
                            version: Some(api::Version { index: version }),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Some(Event::Object { kind, object, old }) => {
                        events.push(api::watch_message::Event {
                            action: action_of(kind) as i32,
                            object: Some((*object).clone()),
                            old_object: old.filter(|_| include_old).map(|o| (*o).clone()),
                        });
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The wire action of a store event.
fn action_of(kind: EventKind) -> WatchActionKind {
    match kind {
        EventKind::Create => WatchActionKind::WatchActionCreate,
        EventKind::Update => WatchActionKind::WatchActionUpdate,
        EventKind::Remove => WatchActionKind::WatchActionRemove,
    }
}

/// What an entry watches: a store kind, or the resources of an extension.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Kind(Kind),
    Resources(String),
}

impl Target {
    fn store_kind(&self) -> Kind {
        match self {
            Target::Kind(k) => *k,
            Target::Resources(_) => Kind::Resource,
        }
    }
}

/// One filter of an entry, checked on the object of an event.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    Id(String),
    IdPrefix(String),
    Name(String),
    NamePrefix(String),
    Custom { index: String, value: String },
    CustomPrefix { index: String, value: String },
    ServiceId(String),
    NodeId(String),
    Slot { service_id: String, slot: u64 },
    DesiredState(i32),
    Role(i32),
    Membership(i32),
}

/// The fields of an object filters look at (SwarmKit's `*Check*` functions).
struct Fields<'a> {
    id: &'a str,
    /// `None`: the object has no name to compare (a node without description).
    name: Option<&'a str>,
    annotations: Option<&'a api::Annotations>,
}

fn fields(obj: &object::Object) -> Fields<'_> {
    use object::Object as O;
    let (id, annotations) = match obj {
        O::Node(n) => {
            return Fields {
                id: &n.id,
                name: n.description.as_ref().map(|d| d.hostname.as_str()),
                annotations: n.spec.as_ref().and_then(|s| s.annotations.as_ref()),
            };
        }
        O::Service(s) => (&s.id, s.spec.as_ref().and_then(|s| s.annotations.as_ref())),
        O::Task(t) => (&t.id, t.annotations.as_ref()),
        O::Network(n) => (&n.id, n.spec.as_ref().and_then(|s| s.annotations.as_ref())),
        O::Cluster(c) => (&c.id, c.spec.as_ref().and_then(|s| s.annotations.as_ref())),
        O::Secret(s) => (&s.id, s.spec.as_ref().and_then(|s| s.annotations.as_ref())),
        O::Config(c) => (&c.id, c.spec.as_ref().and_then(|s| s.annotations.as_ref())),
        O::Resource(r) => (&r.id, r.annotations.as_ref()),
        O::Extension(e) => (&e.id, e.annotations.as_ref()),
        O::Volume(v) => (&v.id, v.spec.as_ref().and_then(|s| s.annotations.as_ref())),
    };
    Fields {
        id,
        name: Some(annotations.map_or("", |a| a.name.as_str())),
        annotations,
    }
}

/// Whether an object's annotations hold the custom index `index` with `value` (or a value
/// starting with it).
fn custom(a: Option<&api::Annotations>, index: &str, value: &str, prefix: bool) -> bool {
    a.is_some_and(|a| {
        a.indices.iter().any(|e| {
            e.key == index
                && if prefix {
                    e.val.starts_with(value)
                } else {
                    e.val == value
                }
        })
    })
}

impl Check {
    fn holds(&self, obj: &object::Object) -> bool {
        let f = fields(obj);
        let task = match obj {
            object::Object::Task(t) => Some(t),
            _ => None,
        };
        let node = match obj {
            object::Object::Node(n) => Some(n),
            _ => None,
        };
        match self {
            Check::Id(id) => f.id == id,
            Check::IdPrefix(p) => f.id.starts_with(p.as_str()),
            Check::Name(n) => f.name == Some(n.as_str()),
            Check::NamePrefix(p) => f.name.is_some_and(|n| n.starts_with(p.as_str())),
            Check::Custom { index, value } => custom(f.annotations, index, value, false),
            Check::CustomPrefix { index, value } => custom(f.annotations, index, value, true),
            Check::ServiceId(s) => task.is_some_and(|t| &t.service_id == s),
            Check::NodeId(n) => task.is_some_and(|t| &t.node_id == n),
            Check::Slot { service_id, slot } => {
                task.is_some_and(|t| &t.service_id == service_id && t.slot == *slot)
            }
            Check::DesiredState(s) => task.is_some_and(|t| t.desired_state == *s),
            Check::Role(r) => node.is_some_and(|n| n.role == *r),
            Check::Membership(m) => {
                node.is_some_and(|n| n.spec.as_ref().map_or(0, |s| s.membership) == *m)
            }
        }
    }
}

/// One entry of a request, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    target: Target,
    /// `WatchActionKind` bits.
    actions: i32,
    checks: Vec<Check>,
}

/// The parsed entries of a request: an event matches when one entry does.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    entries: Vec<Entry>,
}

/// SwarmKit's messages for a malformed request (`api/storeobject.go`).
const NO_KIND: &str = "no kind of object specified";
const CONFLICTING: &str = "conflicting filters specified";
const UNRECOGNIZED_ACTION: &str = "unrecognized action";

/// The filter groups two of which conflict (SwarmKit sets one field of its template per group).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Id,
    Name,
    Custom,
    ServiceOrSlot,
    Slot,
    Node,
    DesiredState,
    Role,
    Membership,
}

impl Matcher {
    /// Parses `entries`; `is_extension` says whether a kind that is no store kind names an
    /// extension. The error is the message of an InvalidArgument answer.
    pub fn parse(
        entries: &[api::watch_request::WatchEntry],
        is_extension: impl Fn(&str) -> bool,
    ) -> Result<Matcher, String> {
        let entries = entries
            .iter()
            .map(|e| Self::parse_entry(e, &is_extension))
            .collect::<Result<_, _>>()?;
        Ok(Matcher { entries })
    }

    fn parse_entry(
        entry: &api::watch_request::WatchEntry,
        is_extension: &impl Fn(&str) -> bool,
    ) -> Result<Entry, String> {
        let target = match entry.kind.as_str() {
            "" => return Err(NO_KIND.to_string()),
            name => match Kind::ALL.iter().find(|k| k.as_str() == name) {
                Some(Kind::Resource) | None if is_extension(name) => {
                    Target::Resources(name.to_string())
                }
                Some(k) if *k != Kind::Resource => Target::Kind(*k),
                _ => {
                    return Err(format!(
                        "unknown kind of object {}: neither a store kind (node, service, task, \
                         network, cluster, secret, config, extension, volume) nor an extension",
                        api::gofmt::quote(name)
                    ));
                }
            },
        };
        let kind = target.store_kind();
        let mut checks = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut take = |group: Group, check: Check| {
            // A slot filter sets the service too, so a service filter conflicts with it either way.
            let clash = match group {
                Group::Slot => {
                    groups.contains(&Group::Slot) || groups.contains(&Group::ServiceOrSlot)
                }
                g => groups.contains(&g),
            };
            if clash {
                return Err(CONFLICTING.to_string());
            }
            groups.push(group);
            if group == Group::Slot {
                groups.push(Group::ServiceOrSlot);
            }
            checks.push(check);
            Ok(())
        };
        for filter in &entry.filters {
            let Some(by) = &filter.by else { continue };
            match by {
                By::Id(id) => take(Group::Id, Check::Id(id.clone()))?,
                By::IdPrefix(p) => take(Group::Id, Check::IdPrefix(p.clone()))?,
                By::Name(n) => take(Group::Name, Check::Name(n.clone()))?,
                By::NamePrefix(p) => take(Group::Name, Check::NamePrefix(p.clone()))?,
                By::Custom(c) => take(
                    Group::Custom,
                    Check::Custom {
                        index: c.index.clone(),
                        value: c.value.clone(),
                    },
                )?,
                By::CustomPrefix(c) => take(
                    Group::Custom,
                    Check::CustomPrefix {
                        index: c.index.clone(),
                        value: c.value.clone(),
                    },
                )?,
                By::ServiceId(s) if kind == Kind::Task => {
                    take(Group::ServiceOrSlot, Check::ServiceId(s.clone()))?
                }
                By::NodeId(n) if kind == Kind::Task => take(Group::Node, Check::NodeId(n.clone()))?,
                By::Slot(s) if kind == Kind::Task => take(
                    Group::Slot,
                    Check::Slot {
                        service_id: s.service_id.clone(),
                        slot: s.slot,
                    },
                )?,
                By::DesiredState(s) if kind == Kind::Task => {
                    take(Group::DesiredState, Check::DesiredState(*s))?
                }
                By::Role(r) if kind == Kind::Node => take(Group::Role, Check::Role(*r))?,
                By::Membership(m) if kind == Kind::Node => {
                    take(Group::Membership, Check::Membership(*m))?
                }
                // What a kind does not take is ignored, as SwarmKit's conversion does.
                _ => {}
            }
        }
        let all = WatchActionKind::WatchActionCreate as i32
            | WatchActionKind::WatchActionUpdate as i32
            | WatchActionKind::WatchActionRemove as i32;
        if entry.action & all == 0 {
            return Err(UNRECOGNIZED_ACTION.to_string());
        }
        Ok(Entry {
            target,
            actions: entry.action & all,
            checks,
        })
    }

    /// Whether a store event is one this watch reports.
    pub fn matches(&self, ev: &Event) -> bool {
        let Event::Object { kind, object, .. } = ev else {
            return false;
        };
        let Some(obj) = object.object.as_ref() else {
            return false;
        };
        let Some(obj_kind) = Kind::of_object(object) else {
            return false;
        };
        let action = action_of(*kind) as i32;
        self.entries.iter().any(|e| {
            e.actions & action != 0
                && e.target.store_kind() == obj_kind
                && match (&e.target, obj) {
                    (Target::Resources(k), object::Object::Resource(r)) => &r.kind == k,
                    _ => true,
                }
                && e.checks.iter().all(|c| c.holds(obj))
        })
    }

    /// The store filter: the kinds of the entries, and the matching itself as the selector.
    fn store_filter(self: &Arc<Self>) -> WatchFilter {
        let filter = self
            .entries
            .iter()
            .fold(WatchFilter::none(), |f, e| f.kind(e.target.store_kind()));
        let matcher = self.clone();
        filter.select(move |ev, _| matcher.matches(ev))
    }
}

#[cfg(test)]
mod tests;
