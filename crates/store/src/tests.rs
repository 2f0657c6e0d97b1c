//! Behaviour tests of the whole store: indexes through transactions, write checks, atomicity, watch
//! consistency under concurrent writes, snapshots, and the proposer path.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::*;

fn annotations(name: &str) -> Option<api::Annotations> {
    Some(api::Annotations {
        name: name.into(),
        ..Default::default()
    })
}

fn service(id: &str, name: &str) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(api::ServiceSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(
    id: &str,
    service_id: &str,
    slot: u64,
    node_id: &str,
    desired: api::TaskState,
) -> api::Task {
    api::Task {
        id: id.into(),
        service_id: service_id.into(),
        slot,
        node_id: node_id.into(),
        desired_state: desired as i32,
        service_annotations: annotations("web"),
        status: Some(api::TaskStatus {
            state: api::TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(id: &str, hostname: &str, role: api::NodeRole) -> api::Node {
    api::Node {
        id: id.into(),
        role: role as i32,
        description: Some(api::NodeDescription {
            hostname: hostname.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ids<T: StoreObject>(objects: &[T]) -> Vec<&str> {
    objects.iter().map(|o| o.id()).collect()
}

async fn seeded() -> MemoryStore {
    let store = MemoryStore::new(None);
    store
        .update(|tx| {
            tx.create_service(service("s1", "Web"))?;
            tx.create_service(service("s2", "webapp"))?;
            tx.create_task(task("t1", "s1", 1, "n1", api::TaskState::Running))?;
            tx.create_task(task("t2", "s1", 2, "n2", api::TaskState::Running))?;
            tx.create_task(task("t3", "s1", 1, "n2", api::TaskState::Shutdown))?;
            tx.create_task(task("t4", "s2", 1, "n1", api::TaskState::Running))?;
            tx.create_node(node("n1", "Host-A", api::NodeRole::Manager))?;
            tx.create_node(node("n2", "host-b", api::NodeRole::Worker))?;
            Ok(())
        })
        .await
        .expect("seed");
    store
}

#[tokio::test]
async fn a_read_by_id_is_timed_as_a_lookup() {
    let store = seeded().await;
    let lookups = || telemetry::swarm::STORE_LOOKUP_LATENCY.count();
    let before = lookups();
    store.view(|tx| {
        assert!(tx.get_service("s1").is_some());
        assert!(tx.get_node("nope").is_none());
    });
    // Other tests of this process may look up too: at least these two were counted.
    assert!(lookups() >= before + 2, "{before} -> {}", lookups());
}

#[tokio::test]
async fn indexes_select_the_right_objects() {
    let store = seeded().await;
    store.view(|tx| {
        assert_eq!(ids(&tx.find_services(By::Name("WEB"))), ["s1"]);
        assert_eq!(ids(&tx.find_services(By::NamePrefix("We"))), ["s1", "s2"]);
        assert_eq!(ids(&tx.find_services(By::IdPrefix("s"))), ["s1", "s2"]);
        assert_eq!(ids(&tx.find_services(By::Id("s2"))), ["s2"]);
        assert_eq!(ids(&tx.find_tasks(By::ServiceId("s1"))), ["t1", "t2", "t3"]);
        assert_eq!(ids(&tx.find_tasks(By::NodeId("n1"))), ["t1", "t4"]);
        assert_eq!(
            ids(&tx.find_tasks(By::Slot {
                service_id: "s1",
                slot: 1
            })),
            ["t1", "t3"]
        );
        assert_eq!(
            ids(&tx.find_tasks(By::DesiredState(api::TaskState::Shutdown))),
            ["t3"]
        );
        assert_eq!(
            ids(&tx.find_tasks(By::TaskState(api::TaskState::Pending))).len(),
            4
        );
        assert_eq!(ids(&tx.find_tasks(By::Name("web.2.t2"))), ["t2"]);
        let either = By::Or(vec![By::NodeId("n2"), By::ServiceId("s2")]);
        assert_eq!(ids(&tx.find_tasks(either)), ["t2", "t3", "t4"]);
        assert_eq!(ids(&tx.find_nodes(By::Name("host-a"))), ["n1"]);
        assert_eq!(ids(&tx.find_nodes(By::Role(api::NodeRole::Worker))), ["n2"]);
        assert_eq!(
            ids(&tx.find_nodes(By::Membership(api::node_spec::Membership::Pending))).len(),
            2
        );
        // A selector that does not apply to a kind selects nothing.
        assert!(tx.find_nodes(By::ServiceId("s1")).is_empty());
        assert_eq!(tx.find_tasks(By::All).len(), 4);
        assert_eq!(tx.count::<api::Task>(), 4);
    });
}

#[tokio::test]
async fn transaction_sees_its_own_writes_in_gets_and_indexes() {
    let store = seeded().await;
    store
        .update(|tx| {
            let mut t1 = tx.get_task("t1").expect("t1");
            t1.desired_state = api::TaskState::Shutdown as i32;
            tx.update_task(t1)?;
            tx.delete_task("t2")?;
            tx.create_task(task("t9", "s1", 9, "n1", api::TaskState::Running))?;
            assert_eq!(ids(&tx.find_tasks(By::ServiceId("s1"))), ["t1", "t3", "t9"]);
            assert_eq!(
                ids(&tx.find_tasks(By::DesiredState(api::TaskState::Shutdown))),
                ["t1", "t3"]
            );
            assert!(tx.get_task("t2").is_none());
            assert_eq!(tx.count::<api::Task>(), 4);
            // Not visible outside until applied.
            store.view(|v| assert!(v.get_task("t9").is_none()));
            Ok(())
        })
        .await
        .expect("update");
    store.view(|tx| {
        assert_eq!(ids(&tx.find_tasks(By::ServiceId("s1"))), ["t1", "t3", "t9"]);
        assert_eq!(
            ids(&tx.find_tasks(By::DesiredState(api::TaskState::Running))),
            ["t4", "t9"]
        );
    });
}

#[tokio::test]
async fn names_conflict_case_insensitively_on_create_and_rename() {
    let store = seeded().await;
    let err = store
        .update(|tx| tx.create_service(service("s3", "wEb")))
        .await
        .expect_err("dup");
    assert!(
        matches!(&err, StoreError::NameConflict { kind: Kind::Service, name } if name == "wEb")
    );
    assert_eq!(err.to_string(), "name conflicts with an existing object");

    let renamed = store
        .update(|tx| {
            let mut s2 = tx.get_service("s2").expect("s2");
            s2.spec.as_mut().expect("spec").annotations = annotations("WEB");
            tx.update_service(s2)
        })
        .await;
    assert!(matches!(renamed, Err(StoreError::NameConflict { .. })));

    // Keeping one's own name, or taking a name freed in the same transaction, is fine.
    store
        .update(|tx| {
            let s1 = tx.get_service("s1").expect("s1");
            tx.update_service(s1)?;
            tx.delete_service("s2")?;
            tx.create_service(service("s3", "WEBAPP"))
        })
        .await
        .expect("rename into freed name");

    // Nodes and tasks may share names.
    store
        .update(|tx| tx.create_node(node("n3", "HOST-A", api::NodeRole::Worker)))
        .await
        .expect("node");
    store.view(|tx| assert_eq!(ids(&tx.find_nodes(By::Name("host-a"))), ["n1", "n3"]));

    let dup = store
        .update(|tx| tx.create_service(service("s1", "other")))
        .await;
    assert!(matches!(
        dup,
        Err(StoreError::Exists {
            kind: Kind::Service,
            ..
        })
    ));
    let missing = store
        .update(|tx| tx.delete_service("nope"))
        .await
        .expect_err("missing");
    assert_eq!(missing.to_string(), "object does not exist");
    let no_id = store
        .update(|tx| tx.create_secret(api::Secret::default()))
        .await;
    assert!(matches!(no_id, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn versions_and_timestamps_follow_writes() {
    let store = MemoryStore::new(None);
    store
        .update(|tx| tx.create_service(service("s1", "web")))
        .await
        .expect("create");
    let created = store.view(|tx| tx.get_service("s1")).expect("s1");
    let meta = created.meta.expect("meta");
    assert_eq!(created.version(), 1);
    assert_eq!(store.last_index(), 1);
    assert!(meta.created_at.is_some());
    assert_eq!(meta.created_at, meta.updated_at);

    store
        .update(|tx| tx.update_service(created.clone()))
        .await
        .expect("update");
    let updated = store.view(|tx| tx.get_service("s1")).expect("s1");
    assert_eq!(updated.version(), 2);
    assert_eq!(
        updated.meta.as_ref().and_then(|m| m.created_at),
        meta.created_at
    );
}

#[tokio::test]
async fn stale_update_is_rejected_and_changes_nothing() {
    let store = seeded().await;
    let stale = store.view(|tx| tx.get_service("s1")).expect("s1");
    let mut fresh = stale.clone();
    fresh.spec.as_mut().expect("spec").annotations = annotations("first");
    store
        .update(|tx| tx.update_service(fresh))
        .await
        .expect("first update");
    let before = store.save();
    let index = store.last_index();

    let mut late = stale;
    late.spec.as_mut().expect("spec").annotations = annotations("second");
    let err = store
        .update(|tx| {
            tx.create_secret(api::Secret {
                id: "sec".into(),
                ..Default::default()
            })?;
            tx.update_service(late)
        })
        .await
        .expect_err("stale");
    assert!(matches!(&err, StoreError::SequenceConflict { kind: Kind::Service, id } if id == "s1"));
    assert_eq!(err.to_string(), "update out of sequence");
    assert_eq!(store.save(), before);
    assert_eq!(store.last_index(), index);
}

#[tokio::test]
async fn failed_closure_changes_nothing() {
    let store = seeded().await;
    let mut watcher = store.watch(WatchFilter::all());
    let before = store.save();
    let result: Result<(), _> = store
        .update(|tx| {
            tx.delete_task("t1")?;
            tx.create_service(service("s9", "new"))?;
            Err(StoreError::Invalid("changed my mind".into()))
        })
        .await;
    assert!(matches!(result, Err(StoreError::Invalid(_))));
    assert_eq!(store.save(), before);
    assert_eq!(watcher.try_recv(), None);
    // A transaction that writes nothing proposes nothing either.
    store
        .update(|tx| Ok(tx.get_task("t1")))
        .await
        .expect("read-only");
    assert_eq!(watcher.try_recv(), None);
}

/// A selector sees the tables as the whole entry left them (a node created in the same write as
/// its task, gone after a later one) and drops only the object events it refuses.
#[tokio::test]
async fn selector_reads_the_store_as_each_entry_left_it() {
    let store = MemoryStore::new(None);
    // Task events pass only while their node exists.
    let mut watcher = store.watch(WatchFilter::none().tasks().nodes().select(|ev, tx| {
        ev.object_as::<api::Task>()
            .is_none_or(|t| tx.get_shared::<api::Node>(&t.node_id).is_some())
    }));
    store
        .update(|tx| {
            tx.create_task(task("t1", "s", 1, "n1", api::TaskState::Running))?;
            tx.create_node(node("n1", "h1", api::NodeRole::Worker))
        })
        .await
        .expect("task and node");
    store
        .update(|tx| {
            tx.create_task(task("t2", "s", 2, "n2", api::TaskState::Running))?;
            tx.delete_node("n1")
        })
        .await
        .expect("task without node");
    let mut seen = Vec::new();
    while let Some(ev) = watcher.try_recv() {
        seen.push(match ev.object_ref() {
            Some(r) => format!("{:?} {}", r.kind, r.id),
            None => "commit".to_string(),
        });
    }
    assert_eq!(seen, ["Task t1", "Node n1", "commit", "Node n1", "commit"]);
}

#[tokio::test]
async fn watch_from_replays_the_commits_after_a_version_then_goes_on() {
    let store = MemoryStore::new(None);
    for i in 0..5 {
        let t = task(&format!("t{i}"), "s", i, "", api::TaskState::Running);
        store.update(|tx| tx.create_task(t)).await.expect("create");
    }
    store
        .update(|tx| tx.create_node(node("n1", "h", api::NodeRole::Worker)))
        .await
        .expect("node");
    // Versions 1..=5 created one task each, 6 a node.
    let mut watcher = store
        .watch_from(WatchFilter::none().tasks(), 3)
        .expect("within the history");
    store
        .update(|tx| tx.delete_task("t0"))
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while let Some(ev) = watcher.try_recv() {
        seen.push(match (&ev, ev.object_ref()) {
            (Event::Commit { version }, _) => format!("commit {version}"),
            (Event::Object { kind, .. }, Some(r)) => format!("{kind:?} {}", r.id),
            _ => unreachable!(),
        });
    }
    assert_eq!(
        seen,
        [
            "Create t3",
            "commit 4",
            "Create t4",
            "commit 5",
            "commit 6",
            "Remove t0",
            "commit 7"
        ]
    );
    // Resuming from the last version replays nothing; a version the store has not reached is
    // refused with SwarmKit's words.
    let mut watcher = store.watch_from(WatchFilter::all(), 7).expect("current");
    assert!(watcher.try_recv().is_none());
    let err = store.watch_from(WatchFilter::all(), 8).expect_err("future");
    assert_eq!(err.to_string(), "versions are out of order");
}

#[tokio::test]
async fn watch_from_refuses_a_version_older_than_the_history() {
    let store = MemoryStore::new(None);
    let n = crate::HISTORY_EVENTS as u64 + 10;
    let tasks: Vec<api::Task> = (0..n)
        .map(|i| task(&format!("t{i}"), "s", i, "", api::TaskState::Running))
        .collect();
    for t in tasks {
        store.update(|tx| tx.create_task(t)).await.expect("create");
    }
    let err = store
        .watch_from(WatchFilter::all(), 5)
        .expect_err("forgotten");
    assert!(
        matches!(err, StoreError::Compacted { version: 5, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "requested index is unavailable due to compaction"
    );
    let mut watcher = store.watch_from(WatchFilter::all(), n - 1).expect("recent");
    assert!(matches!(watcher.try_recv(), Some(Event::Object { .. })));
    assert_eq!(watcher.try_recv(), Some(Event::Commit { version: n }));
    // A snapshot restore starts the history afresh: only its index and later can be resumed.
    store.restore(store.save(), n + 5);
    assert!(store.watch_from(WatchFilter::all(), n).is_err());
    assert!(store.watch_from(WatchFilter::all(), n + 5).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gets_snapshot_then_every_later_event_without_gap() {
    const WRITERS: usize = 4;
    const AFTER: usize = 100;
    let store = MemoryStore::new(None);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, stop) = (store.clone(), stop.clone());
        // Writers never pause, so the subscription below races with writes in flight.
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = task(&format!("w{w}-{i:05}"), "s", i, "", api::TaskState::Running);
                store.update(|tx| tx.create_task(t)).await.expect("create");
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    while store.last_index() < 20 {
        tokio::task::yield_now().await;
    }
    let (snapshot, mut watcher) = store.view_and_watch(WatchFilter::none().tasks(), |tx| {
        tx.find_tasks(By::All)
            .into_iter()
            .map(|t| (t.id.clone(), t.version()))
            .collect::<Vec<_>>()
    });
    while store.last_index() < (snapshot.len() + AFTER) as u64 {
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    // One task per write: the snapshot holds exactly versions 1..=n, and events must go on from n + 1.
    let mut versions: Vec<u64> = snapshot.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=snapshot.len() as u64).collect::<Vec<_>>());
    let snapshot: BTreeSet<String> = snapshot.into_iter().map(|(id, _)| id).collect();
    let mut seen = snapshot.clone();
    let mut last_commit = snapshot.len() as u64;
    let mut expect_commit = false;
    while let Some(event) = watcher.try_recv() {
        match event {
            Event::Object {
                kind: EventKind::Create,
                object,
                old: None,
            } => {
                let t = api::Task::in_object(&object)
                    .cloned()
                    .expect("only tasks are watched");
                assert!(
                    !snapshot.contains(&t.id),
                    "event for {} already in the snapshot",
                    t.id
                );
                assert!(seen.insert(t.id.clone()), "duplicate event for {}", t.id);
                assert_eq!(
                    t.version(),
                    last_commit + 1,
                    "events arrive in commit order"
                );
                expect_commit = true;
            }
            Event::Commit { version } => {
                assert!(expect_commit, "commit without its event");
                assert_eq!(version, last_commit + 1, "no commit skipped");
                last_commit = version;
                expect_commit = false;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(seen.len() >= snapshot.len() + AFTER);
    assert_eq!(seen.len(), store.view(|tx| tx.count::<api::Task>()));
    assert!(!expect_commit, "last event has its commit");
    assert_eq!(last_commit, store.last_index());
}

#[tokio::test]
async fn update_and_remove_events_carry_old_and_deleted_objects() {
    let store = seeded().await;
    let mut watcher = store.watch(WatchFilter::none().tasks());
    store
        .update(|tx| {
            let mut t1 = tx.get_task("t1").expect("t1");
            t1.node_id = "n9".into();
            tx.update_task(t1)?;
            tx.delete_task("t2")?;
            tx.create_service(service("s5", "filtered-out"))
        })
        .await
        .expect("update");
    let update = watcher.try_recv().expect("update event");
    assert!(matches!(
        update,
        Event::Object {
            kind: EventKind::Update,
            ..
        }
    ));
    assert_eq!(
        update.object_as::<api::Task>().map(|t| t.node_id.as_str()),
        Some("n9")
    );
    assert_eq!(
        update.old_as::<api::Task>().map(|t| t.node_id.as_str()),
        Some("n1")
    );
    let remove = watcher.try_recv().expect("remove event");
    assert!(matches!(
        remove,
        Event::Object {
            kind: EventKind::Remove,
            ..
        }
    ));
    assert_eq!(
        remove.object_ref(),
        Some(ObjectRef {
            kind: Kind::Task,
            id: "t2".into()
        })
    );
    assert_eq!(
        watcher.try_recv(),
        Some(Event::Commit {
            version: store.last_index()
        })
    );
    assert_eq!(watcher.try_recv(), None);
}

#[tokio::test]
async fn save_restore_round_trips_and_reports_the_difference() {
    let source = seeded().await;
    let snapshot = source.save();
    assert_eq!(snapshot.tasks.len(), 4);

    let target = MemoryStore::new(None);
    target
        .update(|tx| {
            tx.create_secret(api::Secret {
                id: "gone".into(),
                ..Default::default()
            })?;
            tx.create_task(task("t1", "old", 1, "", api::TaskState::New))
        })
        .await
        .expect("prior content");
    let mut watcher = target.watch(WatchFilter::all());
    target.restore(snapshot.clone(), 42);
    assert_eq!(target.save(), snapshot);
    assert_eq!(target.last_index(), 42);
    target.view(|tx| {
        assert_eq!(
            ids(&tx.find_tasks(By::Slot {
                service_id: "s1",
                slot: 1
            })),
            ["t1", "t3"]
        );
        assert!(
            tx.find_tasks(By::ServiceId("old")).is_empty(),
            "indexes rebuilt"
        );
        assert_eq!(ids(&tx.find_services(By::Name("web"))), ["s1"]);
    });
    let mut kinds = Vec::new();
    while let Some(event) = watcher.try_recv() {
        kinds.push(match &event {
            Event::Object { kind, .. } => (Some(*kind), event.object_ref().map(|r| r.id)),
            Event::Commit { version } => {
                assert_eq!(*version, 42);
                (None, None)
            }
        });
    }
    assert!(kinds.contains(&(Some(EventKind::Remove), Some("gone".into()))));
    assert!(kinds.contains(&(Some(EventKind::Update), Some("t1".into()))));
    assert!(kinds.contains(&(Some(EventKind::Create), Some("s1".into()))));
    assert_eq!(kinds.last(), Some(&(None, None)));
    // Restoring the same content again changes nothing but the index.
    target.restore(snapshot, 43);
    assert_eq!(watcher.try_recv(), Some(Event::Commit { version: 43 }));
}

/// Records proposals and applies them at increasing indexes, as raft would.
struct RecordingProposer {
    store: Mutex<Option<MemoryStore>>,
    proposals: Mutex<Vec<Vec<api::StoreAction>>>,
    next_index: Mutex<u64>,
}

impl Proposer for RecordingProposer {
    fn propose(
        &self,
        actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>> {
        Box::pin(async move {
            let index = {
                let mut next = self.next_index.lock().expect("lock");
                *next += 1;
                *next
            };
            self.proposals.lock().expect("lock").push(actions.clone());
            let store = self.store.lock().expect("lock").clone().expect("store set");
            store
                .apply_committed(index, actions)
                .map_err(|e| ProposeError::Other(e.to_string()))?;
            Ok(index)
        })
    }
}

#[tokio::test]
async fn writes_go_through_the_proposer_as_store_actions() {
    let proposer = Arc::new(RecordingProposer {
        store: Mutex::new(None),
        proposals: Mutex::new(Vec::new()),
        next_index: Mutex::new(100),
    });
    let store = MemoryStore::new(None);
    store.set_proposer(proposer.clone());
    *proposer.store.lock().expect("lock") = Some(store.clone());

    store
        .update(|tx| {
            tx.create_network(api::Network {
                id: "net".into(),
                ..Default::default()
            })?;
            tx.create_config(api::Config {
                id: "cfg".into(),
                ..Default::default()
            })
        })
        .await
        .expect("create");
    store
        .update(|tx| tx.delete_config("cfg"))
        .await
        .expect("delete");

    let proposals = proposer.proposals.lock().expect("lock").clone();
    assert_eq!(proposals.len(), 2);
    assert_eq!(proposals[0].len(), 2);
    assert_eq!(
        proposals[0][0].action,
        api::StoreActionKind::StoreActionCreate as i32
    );
    assert!(
        matches!(&proposals[0][0].target, Some(api::store_action::Target::Network(n)) if n.id == "net")
    );
    assert_eq!(
        proposals[1][0].action,
        api::StoreActionKind::StoreActionRemove as i32
    );
    assert!(
        matches!(&proposals[1][0].target, Some(api::store_action::Target::Config(c)) if c.id == "cfg")
    );

    assert_eq!(store.last_index(), 102);
    let net = store.view(|tx| tx.get_network("net")).expect("net");
    assert_eq!(net.version(), 101);
    assert!(store.view(|tx| tx.get_config("cfg")).is_none());

    // A follower applying the same entries ends up with the same content.
    let follower = MemoryStore::new(None);
    for (i, actions) in proposals.iter().enumerate() {
        follower
            .apply_committed(101 + i as u64, actions.clone())
            .expect("apply");
    }
    assert_eq!(follower.save(), store.save());
}

struct FailingProposer;

impl Proposer for FailingProposer {
    fn propose(
        &self,
        _actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>> {
        Box::pin(async { Err(ProposeError::NoLeader) })
    }
}

#[tokio::test]
async fn failed_proposal_applies_nothing() {
    let store = MemoryStore::new(Some(Arc::new(FailingProposer)));
    let mut watcher = store.watch(WatchFilter::all());
    let err = store
        .update(|tx| tx.create_service(service("s1", "web")))
        .await
        .expect_err("no leader");
    assert!(matches!(err, StoreError::Propose(ProposeError::NoLeader)));
    assert!(
        err.to_string()
            .starts_with("The swarm does not have a leader.")
    );
    assert!(store.view(|tx| tx.find_services(By::All)).is_empty());
    assert_eq!(store.last_index(), 0);
    assert_eq!(watcher.try_recv(), None);
}

#[test]
fn apply_committed_is_all_or_nothing() {
    let store = MemoryStore::new(None);
    let create = |id: &str| api::StoreAction {
        action: api::StoreActionKind::StoreActionCreate as i32,
        target: Some(api::store_action::Target::Secret(api::Secret {
            id: id.into(),
            ..Default::default()
        })),
    };
    store.apply_committed(1, vec![create("a")]).expect("first");
    let err = store
        .apply_committed(2, vec![create("b"), create("a")])
        .expect_err("duplicate");
    assert!(matches!(
        err,
        StoreError::Exists {
            kind: Kind::Secret,
            ..
        }
    ));
    assert!(store.view(|tx| tx.get_secret("b")).is_none());
    assert_eq!(store.last_index(), 1);
    let no_target = api::StoreAction {
        action: 1,
        target: None,
    };
    assert!(matches!(
        store.apply_committed(3, vec![no_target]),
        Err(StoreError::Invalid(_))
    ));
    // Empty entries (raft membership changes) only advance the index.
    store.apply_committed(5, Vec::new()).expect("empty");
    assert_eq!(store.last_index(), 5);
}

/// Task names are not indexed (see `StoreObject::NAME_INDEXED`); lookups by name still find tasks
/// by their current name, case-insensitively, by prefix, and inside a transaction.
#[tokio::test]
async fn task_names_are_found_without_an_index() {
    let store = MemoryStore::new(None);
    store
        .update(|tx| {
            tx.create_task(task("t1", "s1", 0, "", api::TaskState::Running))?;
            tx.create_task(task("t2", "s1", 2, "", api::TaskState::Running))?;
            // Seen by the transaction that wrote it.
            assert_eq!(ids(&tx.find_tasks(By::Name("WEB.2.t2"))), ["t2"]);
            Ok(())
        })
        .await
        .expect("create");
    store
        .update(|tx| {
            let mut t1 = tx.get_task("t1").expect("stored");
            t1.node_id = "n1".into();
            tx.update_task(t1)
        })
        .await
        .expect("assign");
    store.view(|tx| {
        assert_eq!(ids(&tx.find_tasks(By::Name("web.n1.t1"))), ["t1"]);
        assert!(tx.find_tasks(By::Name("web.0.t1")).is_empty(), "old name");
        assert_eq!(ids(&tx.find_tasks(By::NamePrefix("Web."))), ["t1", "t2"]);
        assert_eq!(ids(&tx.find_tasks(By::NamePrefix("web.2"))), ["t2"]);
        let either = By::Or(vec![By::Name("web.2.t2"), By::NodeId("n1")]);
        assert_eq!(ids(&tx.find_tasks(either)), ["t1", "t2"]);
    });
    store
        .update(|tx| tx.delete_task("t2"))
        .await
        .expect("delete");
    store.view(|tx| assert!(tx.find_tasks(By::Name("web.2.t2")).is_empty()));
}

/// A store whose writes go through a [`RecordingProposer`].
fn recorded_store() -> (MemoryStore, Arc<RecordingProposer>) {
    let proposer = Arc::new(RecordingProposer {
        store: Mutex::new(None),
        proposals: Mutex::new(Vec::new()),
        next_index: Mutex::new(0),
    });
    let store = MemoryStore::new(Some(proposer.clone()));
    *proposer.store.lock().expect("lock") = Some(store.clone());
    (store, proposer)
}

/// A config whose data is `len` bytes.
fn config(id: &str, len: usize) -> api::Config {
    api::Config {
        id: id.into(),
        spec: Some(api::ConfigSpec {
            annotations: annotations(id),
            data: vec![b'x'; len],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What creating `config(id, len)` makes the transaction's entry, without writing it.
async fn entry_len_of_create(store: &MemoryStore, id: &str, len: usize) -> usize {
    let mut measured = 0;
    let probe = store
        .update(|tx| {
            tx.create_config(config(id, len))?;
            measured = tx.proposal_len();
            Err::<(), _>(StoreError::Invalid("probe".into()))
        })
        .await;
    assert!(probe.is_err());
    measured
}

/// The data length whose create makes an entry of exactly `target` bytes.
async fn data_len_for_entry(store: &MemoryStore, id: &str, target: usize) -> usize {
    let base = entry_len_of_create(store, id, 0).await;
    let mut len = target - base;
    // Length prefixes grow with the data: step down until the entry is exact.
    while entry_len_of_create(store, id, len).await > target {
        len -= 1;
    }
    assert_eq!(entry_len_of_create(store, id, len).await, target);
    len
}

#[tokio::test]
async fn the_entry_size_a_transaction_counts_is_the_encoded_raft_request() {
    let (store, proposer) = recorded_store();
    let mut counted = 0;
    store
        .update(|tx| {
            tx.create_config(config("a", 1000))?;
            tx.create_service(service("s", "web"))?;
            tx.create_task(task("t", "s", 1, "", api::TaskState::Running))?;
            counted = tx.proposal_len();
            Ok(())
        })
        .await
        .expect("write");
    store
        .update(|tx| {
            let mut t = tx.get_task("t").expect("stored");
            t.node_id = "n".into();
            tx.update_task(t)?;
            tx.delete_config("a")
        })
        .await
        .expect("write");
    let proposals = proposer.proposals.lock().expect("lock").clone();
    assert_eq!(proposals.len(), 2);
    // The raft crate draws request IDs with the top bit set: the widest varint.
    let encoded = |action: &Vec<api::StoreAction>| {
        prost::Message::encoded_len(&api::InternalRaftRequest {
            id: 1 << 63,
            action: action.clone(),
        })
    };
    assert_eq!(counted, encoded(&proposals[0]));
    assert_eq!(proposal_len(&proposals[0]), encoded(&proposals[0]));
    assert_eq!(proposal_len(&proposals[1]), encoded(&proposals[1]));
}

#[tokio::test]
async fn a_write_over_the_transaction_limit_is_refused_and_changes_nothing() {
    assert_eq!(MAX_TRANSACTION_BYTES, 1_572_864);
    let (store, proposer) = recorded_store();
    let at_limit = data_len_for_entry(&store, "big", MAX_TRANSACTION_BYTES).await;
    let mut watcher = store.watch(WatchFilter::all());

    // One byte over: refused before it is proposed, with SwarmKit's message.
    let err = store
        .update(|tx| tx.create_config(config("big", at_limit + 1)))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err, StoreError::Propose(ProposeError::TooLarge)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "raft: raft message is too large and can't be sent"
    );
    assert!(proposer.proposals.lock().expect("lock").is_empty());
    assert_eq!(store.view(|tx| tx.count::<api::Config>()), 0);
    assert_eq!(store.last_index(), 0);
    assert_eq!(watcher.try_recv(), None);

    // Exactly at the limit: written.
    store
        .update(|tx| tx.create_config(config("big", at_limit)))
        .await
        .expect("at the limit");
    let proposals = proposer.proposals.lock().expect("lock").clone();
    assert_eq!(proposals.len(), 1);
    assert_eq!(proposal_len(&proposals[0]), MAX_TRANSACTION_BYTES);

    // Two objects that fit alone but not together in one write: refused as a whole.
    let half = at_limit / 2 + 16;
    let err = store
        .update(|tx| {
            tx.create_config(config("h1", half))?;
            tx.create_config(config("h2", half))
        })
        .await
        .expect_err("together over the limit");
    assert!(matches!(err, StoreError::Propose(ProposeError::TooLarge)));
    assert_eq!(store.view(|tx| tx.count::<api::Config>()), 1);

    // Without a proposer the limit holds as well.
    let local = MemoryStore::new(None);
    let err = local
        .update(|tx| tx.create_config(config("big", at_limit + 1)))
        .await
        .expect_err("over the limit");
    assert!(matches!(err, StoreError::Propose(ProposeError::TooLarge)));
    assert_eq!(local.last_index(), 0);
}

#[tokio::test]
async fn a_batch_is_cut_by_size_and_never_refused_for_items_that_fit_alone() {
    let (store, proposer) = recorded_store();
    // 0.9 MB each: two would pass 3/4 of the limit only together, and exceed the limit then.
    let sizes = [900_000, 900_000, 100, 600_000, 600_000, 600_000, 100, 100];
    let items: Vec<(String, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| (format!("c{i}"), *len))
        .collect();
    let errors = store
        .batch(&items, |tx, (id, len)| tx.create_config(config(id, *len)))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(store.view(|tx| tx.count::<api::Config>()), items.len());
    let proposals = proposer.proposals.lock().expect("lock").clone();
    let sizes: Vec<usize> = proposals.iter().map(|p| proposal_len(p)).collect();
    assert!(
        sizes.iter().all(|s| *s <= MAX_TRANSACTION_BYTES),
        "entries {sizes:?}"
    );
    // [0.9] (a second 0.9 would pass the limit), [0.9 + 100 + 0.6] (past 3/4 of it),
    // [0.6 + 0.6] (past 3/4), [100 + 100].
    let counts: Vec<usize> = proposals.iter().map(Vec::len).collect();
    assert_eq!(counts, [1, 3, 2, 2], "entries {sizes:?}");

    // Many small writes: 200 changes per transaction, as SwarmKit's batch.
    let small: Vec<String> = (0..450).map(|i| format!("s{i:03}")).collect();
    let before = proposer.proposals.lock().expect("lock").len();
    let errors = store
        .batch(&small, |tx, id| tx.create_config(config(id, 10)))
        .await;
    assert!(errors.is_empty());
    let counts: Vec<usize> = proposer.proposals.lock().expect("lock")[before..]
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(counts, [200, 200, 50]);
}

#[tokio::test]
async fn a_batch_leaves_out_only_the_items_that_fail_or_are_too_large_alone() {
    let (store, _proposer) = recorded_store();
    store
        .update(|tx| tx.create_config(config("taken", 1)))
        .await
        .expect("seed");
    let items: Vec<(&str, usize)> = vec![
        ("a", 10),
        ("taken", 10),
        ("pair", 10),
        ("b", 10),
        ("p1", 10),
        ("huge", MAX_TRANSACTION_BYTES),
        ("c", 10),
    ];
    let errors = store
        .batch(&items, |tx, (id, len)| {
            if *id == "pair" {
                // Writes p1, then fails: p1 is taken back with it.
                tx.create_config(config("p1", 10))?;
                return tx.create_config(config("taken", 10));
            }
            tx.create_config(config(id, *len))
        })
        .await;
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "object already exists",
            "object already exists",
            "raft: raft message is too large and can't be sent"
        ]
    );
    let mut ids: Vec<String> =
        store.view(|tx| tx.find_configs(By::All).into_iter().map(|c| c.id).collect());
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "p1", "taken"]);
}

/// A proposer that holds every proposal until the test lets it go (`release`), records what it
/// was given, and fails the proposals the test asks it to; it applies the others at increasing
/// indexes, as raft would.
struct GatedProposer {
    store: std::sync::OnceLock<MemoryStore>,
    proposals: Mutex<Vec<Vec<api::StoreAction>>>,
    /// Proposals that arrived so far (held or not).
    arrived: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
    /// Numbers (from 1) of the proposals to fail.
    fail: Mutex<BTreeSet<usize>>,
}

impl GatedProposer {
    fn store() -> (Arc<GatedProposer>, MemoryStore) {
        let proposer = Arc::new(GatedProposer {
            store: std::sync::OnceLock::new(),
            proposals: Mutex::new(Vec::new()),
            arrived: std::sync::atomic::AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
            fail: Mutex::new(BTreeSet::new()),
        });
        let store = MemoryStore::new(Some(proposer.clone()));
        proposer.store.set(store.clone()).expect("set once");
        (proposer, store)
    }

    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets every proposal through from now on.
    fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// Sizes (in actions) of the proposals made so far.
    fn sizes(&self) -> Vec<usize> {
        let proposals = self.proposals.lock().expect("lock");
        proposals.iter().map(Vec::len).collect()
    }
}

impl Proposer for GatedProposer {
    fn propose(
        &self,
        actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>> {
        Box::pin(async move {
            let number = self
                .arrived
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            self.gate.acquire().await.expect("gate open").forget();
            if self.fail.lock().expect("lock").contains(&number) {
                return Err(ProposeError::LostLeadership);
            }
            let store = self.store.get().expect("store set");
            let index = store.last_index() + 1;
            self.proposals.lock().expect("lock").push(actions.clone());
            store
                .apply_committed(index, actions)
                .map_err(|e| ProposeError::Other(e.to_string()))?;
            Ok(index)
        })
    }
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

type Writes = Vec<tokio::task::JoinHandle<Result<(), StoreError>>>;

/// Starts a write that creates a secret `id` named `name`.
fn create_secret(
    store: &MemoryStore,
    id: &str,
    name: &str,
) -> tokio::task::JoinHandle<Result<(), StoreError>> {
    let (store, secret) = (store.clone(), secret_named(id, name));
    tokio::spawn(async move { store.update(|tx| tx.create_secret(secret)).await })
}

fn secret_named(id: &str, name: &str) -> api::Secret {
    api::Secret {
        id: id.into(),
        spec: Some(api::SecretSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Starts one write.
type Start<'a> = Box<dyn FnOnce() -> tokio::task::JoinHandle<Result<(), StoreError>> + 'a>;

/// [`Start`]s of the writes given, in order.
macro_rules! starts {
    ($($write:expr),* $(,)?) => {
        vec![$(Box::new(|| $write) as Start<'_>),*]
    };
}

/// A first write held in flight by the gate, then `starts` started one after the other while it
/// is, each once the one before queued behind it (or failed, as a write refused by its own checks
/// answers at once).
async fn queue_behind_first(
    proposer: &GatedProposer,
    store: &MemoryStore,
    starts: Vec<Start<'_>>,
) -> (tokio::task::JoinHandle<Result<(), StoreError>>, Writes) {
    let before = proposer.arrived();
    let first = create_secret(store, "first", "first");
    until("the first proposal", || proposer.arrived() == before + 1).await;
    let mut writes: Writes = Vec::new();
    for start in starts {
        writes.push(start());
        until("the writer to queue or fail", || {
            let failed = writes.iter().filter(|w| w.is_finished()).count();
            store.queued_writers() + failed == writes.len()
        })
        .await;
    }
    (first, writes)
}

/// Lets the proposals go and expects the first write and `writes` committed.
async fn commit_all(
    proposer: &GatedProposer,
    first: tokio::task::JoinHandle<Result<(), StoreError>>,
    writes: Writes,
) {
    proposer.open();
    first.await.expect("ran").expect("committed");
    for answer in answers(writes).await {
        answer.expect("committed");
    }
}

async fn answers(writes: Writes) -> Vec<Result<(), StoreError>> {
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.expect("writer ran"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_one_proposal() {
    let (proposer, store) = GatedProposer::store();
    let (first, writes) = queue_behind_first(&proposer, &store, {
        let store = &store;
        (0..8)
            .map(|i| {
                Box::new(move || create_secret(store, &format!("s{i}"), &format!("secret-{i}")))
                    as Start<'_>
            })
            .collect()
    })
    .await;
    proposer.open();
    first.await.expect("ran").expect("first committed");
    for answer in answers(writes).await {
        answer.expect("committed");
    }
    assert_eq!(
        proposer.sizes(),
        [1, 8],
        "the 8 queued writes share one entry"
    );
    assert_eq!(store.view(|tx| tx.count::<api::Secret>()), 9);
    // Each write got its own object version: the index of the entry that carried it.
    let s0 = store.view(|tx| tx.get_secret("s0")).expect("stored");
    assert_eq!(s0.version(), 2);

    // Serial writes: one entry each, proposed at once.
    for i in 0..3 {
        create_secret(&store, &format!("later{i}"), &format!("later-{i}"))
            .await
            .expect("ran")
            .expect("committed");
    }
    assert_eq!(proposer.sizes(), [1, 8, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_write_fails_alone() {
    let (proposer, store) = GatedProposer::store();
    let (first, writes) = queue_behind_first(
        &proposer,
        &store,
        starts![
            create_secret(&store, "a", "shared-name"),
            // Same name as the queued, uncommitted "a": refused as if "a" were committed.
            create_secret(&store, "b", "SHARED-name"),
            create_secret(&store, "c", "other"),
            // Same ID as the secret in flight.
            create_secret(&store, "first", "yet-another"),
        ],
    )
    .await;
    proposer.open();
    first.await.expect("ran").expect("committed");
    let answers = answers(writes).await;
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert!(
        matches!(answers[1], Err(StoreError::NameConflict { .. })),
        "{:?}",
        answers[1]
    );
    assert!(answers[2].is_ok(), "{:?}", answers[2]);
    assert!(
        matches!(answers[3], Err(StoreError::Exists { .. })),
        "{:?}",
        answers[3]
    );
    assert_eq!(proposer.sizes(), [1, 2]);
    let names: BTreeSet<String> = store
        .view(|tx| tx.find_secrets(By::All))
        .iter()
        .map(|s| s.name())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["first".into(), "shared-name".into(), "other".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_proposal_fails_its_writers_and_those_that_read_them() {
    let (proposer, store) = GatedProposer::store();
    proposer.fail.lock().expect("lock").insert(1);
    let mut watcher = store.watch(WatchFilter::all());
    let (first, writes) = queue_behind_first(
        &proposer,
        &store,
        starts![
            create_secret(&store, "a", "a"),
            // Reads the secret in flight: must not outlive it.
            {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .update(|tx| {
                            let mut s = tx.get_secret("first").ok_or(StoreError::NotFound {
                                kind: Kind::Secret,
                                id: "first".into(),
                            })?;
                            s.spec.as_mut().expect("spec").data = b"changed".to_vec();
                            tx.update_secret(s)
                        })
                        .await
                })
            },
        ],
    )
    .await;
    proposer.open();
    let lost = first.await.expect("ran").expect_err("proposal failed");
    assert!(
        matches!(lost, StoreError::Propose(ProposeError::LostLeadership)),
        "{lost:?}"
    );
    for answer in answers(writes).await {
        let err = answer.expect_err("read a failed write");
        assert!(
            matches!(err, StoreError::Propose(ProposeError::LostLeadership)),
            "{err:?}"
        );
    }
    assert_eq!(proposer.sizes(), Vec::<usize>::new(), "nothing was applied");
    assert_eq!(store.view(|tx| tx.count::<api::Secret>()), 0);
    assert_eq!(watcher.try_recv(), None);
    assert_eq!(store.last_index(), 0);

    // The pipeline goes on, over the committed state only.
    create_secret(&store, "a", "a")
        .await
        .expect("ran")
        .expect("committed");
    assert_eq!(store.view(|tx| tx.count::<api::Secret>()), 1);
    assert_eq!(proposer.sizes(), [1]);
}

/// "Delete secret S if no service uses it" and "create a service using S", concurrently: never
/// both, whichever comes first in the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referential_checks_hold_across_a_group() {
    for delete_first in [true, false] {
        let (proposer, store) = GatedProposer::store();
        proposer.open();
        create_secret(&store, "s", "s")
            .await
            .expect("ran")
            .expect("seeded");
        proposer.gate.forget_permits(usize::MAX);
        let delete_unused = || {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update(|tx| {
                        if !tx.find_services(By::ReferencedSecret("s")).is_empty() {
                            return Err(StoreError::Invalid("secret in use".into()));
                        }
                        tx.delete_secret("s")
                    })
                    .await
            })
        };
        let use_it = || {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update(|tx| {
                        if tx.get_secret("s").is_none() {
                            return Err(StoreError::NotFound {
                                kind: Kind::Secret,
                                id: "s".into(),
                            });
                        }
                        let mut svc = service("svc", "svc");
                        let spec = svc.spec.as_mut().expect("spec");
                        spec.task = Some(api::TaskSpec {
                            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                                api::ContainerSpec {
                                    secrets: vec![api::SecretReference {
                                        secret_id: "s".into(),
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                },
                            ))),
                            ..Default::default()
                        });
                        tx.create_service(svc)
                    })
                    .await
            })
        };
        let (first, writes) = queue_behind_first(
            &proposer,
            &store,
            if delete_first {
                starts![delete_unused(), use_it()]
            } else {
                starts![use_it(), delete_unused()]
            },
        )
        .await;
        proposer.open();
        first.await.expect("ran").expect("committed");
        let answers = answers(writes).await;
        assert!(
            answers[0].is_ok(),
            "the first of the group wins: {answers:?}"
        );
        assert!(answers[1].is_err(), "never both: {answers:?}");
        let used = !delete_first;
        assert_eq!(proposer.sizes(), [1, 1, 1], "one entry for the group");
        let (secret, services) = store.view(|tx| {
            (
                tx.get_secret("s").is_some(),
                tx.find_services(By::ReferencedSecret("s")).len(),
            )
        });
        assert_eq!((secret, services), (used, usize::from(used)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_stops_waiting_loses_no_other_answer() {
    let (proposer, store) = GatedProposer::store();
    let (first, mut writes) = queue_behind_first(
        &proposer,
        &store,
        starts![
            create_secret(&store, "a", "a"),
            create_secret(&store, "b", "b"),
            create_secret(&store, "c", "c"),
        ],
    )
    .await;
    let dropped = writes.remove(1);
    dropped.abort();
    assert!(dropped.await.expect_err("aborted").is_cancelled());
    commit_all(&proposer, first, writes).await;
    // The abandoned write was queued, and later ones may have read it: it is committed too.
    assert_eq!(proposer.sizes(), [1, 3]);
    assert!(store.view(|tx| tx.get_secret("b")).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transaction_does_not_wedge_the_group() {
    let (proposer, store) = GatedProposer::store();
    let (first, writes) =
        queue_behind_first(&proposer, &store, starts![create_secret(&store, "a", "a")]).await;
    let panicking = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update(|tx| {
                    tx.create_secret(secret_named("p", "p"))?;
                    if tx.get_secret("p").is_some() {
                        panic!("injected: transaction panics after a write");
                    }
                    Ok(())
                })
                .await
        })
    };
    assert!(panicking.await.expect_err("panicked").is_panic());
    let after = create_secret(&store, "c", "c");
    until("the later writer to queue", || store.queued_writers() == 2).await;
    commit_all(&proposer, first, writes).await;
    after.await.expect("ran").expect("committed");
    assert_eq!(proposer.sizes(), [1, 2]);
    assert!(store.view(|tx| tx.get_secret("p")).is_none(), "rolled back");
    create_secret(&store, "d", "d")
        .await
        .expect("ran")
        .expect("still writable");
}

/// A client holding the committed version of an object that a queued write changed is refused,
/// as it would be once that write committed; a writer that read the queued version may write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_update_moves_the_version_on() {
    let (proposer, store) = GatedProposer::store();
    proposer.open();
    create_secret(&store, "s", "s")
        .await
        .expect("ran")
        .expect("seeded");
    let committed = store.view(|tx| tx.get_secret("s")).expect("stored");
    proposer.gate.forget_permits(usize::MAX);
    let change = |data: &'static [u8], from: Option<api::Secret>| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update(move |tx| {
                    let mut s = match from {
                        Some(s) => s,
                        None => tx.get_secret("s").expect("stored"),
                    };
                    s.spec.as_mut().expect("spec").data = data.to_vec();
                    tx.update_secret(s)
                })
                .await
        })
    };
    let (first, writes) = queue_behind_first(
        &proposer,
        &store,
        starts![
            change(b"one", Some(committed.clone())),
            // Stale: the first queued update moved the version on.
            change(b"two", Some(committed.clone())),
            change(b"three", None),
            // A client naming the queued version, which it cannot have read.
            change(b"four", {
                let mut s = committed.clone();
                s.meta.as_mut().expect("meta").version =
                    Some(crate::client_version(api::Version { index: u64::MAX }));
                Some(s)
            }),
        ],
    )
    .await;
    proposer.open();
    first.await.expect("ran").expect("committed");
    let answers = answers(writes).await;
    assert!(answers[0].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[1], Err(StoreError::SequenceConflict { .. })),
        "{answers:?}"
    );
    assert!(answers[2].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[3], Err(StoreError::SequenceConflict { .. })),
        "{answers:?}"
    );
    assert_eq!(proposer.sizes(), [1, 1, 2]);
    let s = store.view(|tx| tx.get_secret("s")).expect("stored");
    assert_eq!(s.spec.as_ref().expect("spec").data, b"three");
    assert_eq!(s.version(), store.last_index());
}

/// Queued writes too large together for one raft entry are cut between writers into entries
/// proposed in order; a failing entry fails its writers and the ones after it, not those before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_larger_than_an_entry_is_cut_between_writers() {
    let (proposer, store) = GatedProposer::store();
    // Entries: 1 = the first write; 2 and 3 = the group cut in two; 3 fails.
    proposer.fail.lock().expect("lock").insert(3);
    let big = |id: &str| {
        let (store, id) = (store.clone(), id.to_string());
        tokio::spawn(async move {
            let mut secret = secret_named(&id, &id);
            secret.spec.as_mut().expect("spec").data = vec![7; MAX_TRANSACTION_BYTES * 2 / 5];
            store.update(|tx| tx.create_secret(secret)).await
        })
    };
    let (first, writes) =
        queue_behind_first(&proposer, &store, starts![big("a"), big("b"), big("c")]).await;
    proposer.open();
    first.await.expect("ran").expect("committed");
    let answers = answers(writes).await;
    assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
    assert!(
        matches!(
            answers[2],
            Err(StoreError::Propose(ProposeError::LostLeadership))
        ),
        "{answers:?}"
    );
    assert_eq!(proposer.sizes(), [1, 2]);
    let proposals = proposer.proposals.lock().expect("lock").clone();
    assert!(
        proposals
            .iter()
            .all(|p| proposal_len(p) <= MAX_TRANSACTION_BYTES)
    );
    assert!(store.view(|tx| tx.get_secret("c")).is_none());
}

/// `MemoryStore::batch` joins the group commit: its transactions count their limits from where
/// they begin, and share entries with concurrent writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_joins_the_group() {
    let (proposer, store) = GatedProposer::store();
    let (first, writes) =
        queue_behind_first(&proposer, &store, starts![create_secret(&store, "a", "a")]).await;
    let batch = {
        let store = store.clone();
        tokio::spawn(async move {
            let items: Vec<usize> = (0..MAX_CHANGES_PER_TRANSACTION + 10).collect();
            store
                .batch(&items, |tx, i| {
                    tx.create_secret(secret_named(&format!("b{i}"), &format!("b-{i}")))
                })
                .await
        })
    };
    until("the batch to queue", || store.queued_writers() == 2).await;
    commit_all(&proposer, first, writes).await;
    let errors = batch.await.expect("ran");
    assert!(errors.is_empty(), "{errors:?}");
    let sizes = proposer.sizes();
    assert_eq!(
        sizes[..2],
        [1, 1 + MAX_CHANGES_PER_TRANSACTION],
        "{sizes:?}"
    );
    assert_eq!(sizes[2..], [10]);
    assert_eq!(
        store.view(|tx| tx.count::<api::Secret>()),
        2 + MAX_CHANGES_PER_TRANSACTION + 10
    );
}

/// A background write ([`MemoryStore::background`]) alone is proposed once it has waited
/// [`crate::LINGER`] (the clock is paused: it moves only while every task waits), and a
/// foreground write is proposed at once.
#[tokio::test(start_paused = true)]
async fn a_lone_background_write_goes_after_the_linger_and_a_foreground_one_at_once() {
    let (proposer, store) = GatedProposer::store();
    proposer.open();
    let start = tokio::time::Instant::now();
    store
        .background()
        .update(|tx| tx.create_secret(secret_named("b", "b")))
        .await
        .expect("committed");
    assert!(start.elapsed() >= crate::LINGER, "{:?}", start.elapsed());
    let start = tokio::time::Instant::now();
    store
        .update(|tx| tx.create_secret(secret_named("f", "f")))
        .await
        .expect("committed");
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    assert_eq!(proposer.sizes(), [1, 1]);
    assert_eq!(store.view(|tx| tx.count::<api::Secret>()), 2);
}

/// A background write queued while nothing is in flight waits for the next foreground write
/// and shares its entry; neither waits for the linger.
#[tokio::test(start_paused = true)]
async fn a_background_write_shares_the_entry_of_the_next_foreground_write() {
    let (proposer, store) = GatedProposer::store();
    proposer.open();
    let start = tokio::time::Instant::now();
    let background = {
        let store = store.background();
        tokio::spawn(async move {
            store
                .update(|tx| tx.create_secret(secret_named("b", "b")))
                .await
        })
    };
    while store.queued_writers() == 0 && !background.is_finished() {
        // Lets the spawned write run without moving the paused clock.
        tokio::task::yield_now().await;
    }
    store
        .update(|tx| tx.create_secret(secret_named("f", "f")))
        .await
        .expect("committed");
    background.await.expect("ran").expect("committed");
    assert_eq!(proposer.sizes(), [2], "one entry for both");
    assert!(start.elapsed() < crate::LINGER, "{:?}", start.elapsed());
}

/// A background batch of several transactions lingers only with its last one: the ones before
/// it are full and gain nothing by waiting.
#[tokio::test(start_paused = true)]
async fn a_background_batch_lingers_only_with_its_last_transaction() {
    let (proposer, store) = GatedProposer::store();
    proposer.open();
    let start = tokio::time::Instant::now();
    let items: Vec<usize> = (0..MAX_CHANGES_PER_TRANSACTION + 10).collect();
    let errors = store
        .background()
        .batch(&items, |tx, i| {
            tx.create_secret(secret_named(&format!("b{i}"), &format!("b-{i}")))
        })
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(proposer.sizes(), [MAX_CHANGES_PER_TRANSACTION, 10]);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= crate::LINGER && elapsed < 2 * crate::LINGER,
        "{elapsed:?}"
    );
}
