use std::time::Duration;

use api::watch_server::Watch;
use api::{SelectBy, WatchActionKind as A};
use testkit::fixtures;
use tokio_stream::StreamExt;

use super::*;

type Stream = ReceiverStream<Result<api::WatchMessage, Status>>;

fn entry(kind: &str, action: i32, filters: Vec<By>) -> api::watch_request::WatchEntry {
    api::watch_request::WatchEntry {
        kind: kind.into(),
        action,
        filters: filters
            .into_iter()
            .map(|by| SelectBy { by: Some(by) })
            .collect(),
    }
}

const ALL: i32 =
    A::WatchActionCreate as i32 | A::WatchActionUpdate as i32 | A::WatchActionRemove as i32;

fn service(id: &str, name: &str) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(fixtures::service_spec(name, 1, "busybox")),
        ..Default::default()
    }
}

async fn start(
    store: &MemoryStore,
    entries: Vec<api::watch_request::WatchEntry>,
    resume_from: Option<u64>,
    include_old_object: bool,
) -> Result<Stream, Status> {
    let svc = WatchService::new(store.clone(), None, CancellationToken::new());
    let req = api::WatchRequest {
        entries,
        resume_from: resume_from.map(|index| api::Version { index }),
        include_old_object,
    };
    let mut stream = svc.watch(Request::new(req)).await?.into_inner();
    let first = next(&mut stream).await;
    assert_eq!(
        first,
        api::WatchMessage::default(),
        "the empty first message"
    );
    Ok(stream)
}

async fn next(stream: &mut Stream) -> api::WatchMessage {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message within 5 s")
        .expect("the stream goes on")
        .expect("no error")
}

/// `action id` per event of a message, and its version.
fn summary(msg: &api::WatchMessage) -> (Vec<String>, u64) {
    let events = msg
        .events
        .iter()
        .map(|e| {
            let action = A::try_from(e.action).map_or("?", |a| match a {
                A::WatchActionCreate => "create",
                A::WatchActionUpdate => "update",
                A::WatchActionRemove => "remove",
                A::WatchActionUnknown => "unknown",
            });
            let id = match e.object.as_ref().and_then(|o| o.object.as_ref()) {
                Some(object::Object::Service(s)) => s.id.clone(),
                Some(object::Object::Node(n)) => n.id.clone(),
                Some(object::Object::Task(t)) => t.id.clone(),
                Some(object::Object::Resource(r)) => r.id.clone(),
                _ => "?".into(),
            };
            format!("{action} {id}")
        })
        .collect();
    (events, msg.version.map_or(0, |v| v.index))
}

#[tokio::test]
async fn sees_creates_updates_and_removes_one_message_per_commit_in_order() {
    let store = MemoryStore::new(None);
    let mut stream = start(&store, vec![entry("service", ALL, vec![])], None, false)
        .await
        .expect("watch");
    store
        .update(|tx| tx.create_service(service("s1", "web")))
        .await
        .unwrap();
    // A node write is no service event: no message for its commit.
    store
        .update(|tx| tx.create_node(fixtures::node("n1")))
        .await
        .unwrap();
    store
        .update(|tx| {
            tx.create_service(service("s2", "db"))?;
            let mut s1 = tx.get_service("s1").expect("s1");
            s1.spec
                .as_mut()
                .unwrap()
                .annotations
                .as_mut()
                .unwrap()
                .labels
                .insert("a".into(), "b".into());
            tx.update_service(s1)
        })
        .await
        .unwrap();
    store.update(|tx| tx.delete_service("s1")).await.unwrap();

    let (events, v1) = summary(&next(&mut stream).await);
    assert_eq!(events, ["create s1"]);
    let msg = next(&mut stream).await;
    let (events, v3) = summary(&msg);
    assert_eq!(events, ["create s2", "update s1"]);
    assert!(
        msg.events[1].old_object.is_none(),
        "old objects only when asked"
    );
    let (events, v4) = summary(&next(&mut stream).await);
    assert_eq!(events, ["remove s1"]);
    assert_eq!(
        (v1, v3, v4),
        (1, 3, 4),
        "each message carries its commit's version"
    );
}

#[tokio::test]
async fn old_objects_come_with_updates_when_asked() {
    let store = MemoryStore::new(None);
    store
        .update(|tx| tx.create_service(service("s1", "web")))
        .await
        .unwrap();
    let update = A::WatchActionUpdate as i32;
    let mut stream = start(&store, vec![entry("service", update, vec![])], None, true)
        .await
        .expect("watch");
    store
        .update(|tx| {
            let mut s1 = tx.get_service("s1").expect("s1");
            s1.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "web2".into();
            tx.update_service(s1)
        })
        .await
        .unwrap();
    store.update(|tx| tx.delete_service("s1")).await.unwrap();
    store
        .update(|tx| tx.create_service(service("s3", "other")))
        .await
        .unwrap();
    let msg = next(&mut stream).await;
    let name = |o: &Option<api::Object>| match o.as_ref().and_then(|o| o.object.as_ref()) {
        Some(object::Object::Service(s)) => s
            .spec
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
            .name
            .clone(),
        _ => panic!("a service"),
    };
    assert_eq!(msg.events.len(), 1);
    assert_eq!(name(&msg.events[0].object), "web2");
    assert_eq!(name(&msg.events[0].old_object), "web");
    // Only updates were asked for: the remove and the create are not sent, and the stream
    // holds nothing more.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn filters_hold_together_within_an_entry_and_entries_are_alternatives() {
    let store = MemoryStore::new(None);
    let create = A::WatchActionCreate as i32;
    let mut stream = start(
        &store,
        vec![
            entry(
                "node",
                create,
                vec![
                    By::NamePrefix("east".into()),
                    By::Custom(api::SelectByCustom {
                        kind: String::new(),
                        index: "myindex".into(),
                        value: "myval".into(),
                    }),
                ],
            ),
            entry(
                "node",
                create,
                vec![By::Role(api::NodeRole::Manager as i32)],
            ),
            entry(
                "task",
                create,
                vec![By::Slot(api::SelectBySlot {
                    service_id: "s1".into(),
                    slot: 2,
                })],
            ),
        ],
        None,
        false,
    )
    .await
    .expect("watch");
    let node = |id: &str, host: &str, role: api::NodeRole, indexed: bool| {
        let mut n = fixtures::node(id);
        n.description.as_mut().unwrap().hostname = host.into();
        n.role = role as i32;
        if indexed {
            n.spec
                .as_mut()
                .unwrap()
                .annotations
                .as_mut()
                .unwrap()
                .indices = vec![api::IndexEntry {
                key: "myindex".into(),
                val: "myval".into(),
            }];
        }
        n
    };
    for n in [
        node("m1", "west-1", api::NodeRole::Manager, false),
        node("w1", "east-1", api::NodeRole::Worker, false),
        node("w2", "west-2", api::NodeRole::Worker, true),
        node("w3", "east-95", api::NodeRole::Worker, true),
    ] {
        store.update(|tx| tx.create_node(n)).await.unwrap();
    }
    let mut t1 = fixtures::task("t1", "s1", api::TaskState::New);
    let mut t2 = t1.clone();
    t2.id = "t2".into();
    t2.slot = 2;
    t1.node_id = "w1".into();
    store
        .update(|tx| {
            tx.create_task(t1)?;
            tx.create_task(t2)
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(summary(&next(&mut stream).await).0);
    }
    assert_eq!(seen, ["create m1", "create w3", "create t2"]);
}

#[tokio::test]
async fn resumes_from_a_version_then_goes_on_live() {
    let store = MemoryStore::new(None);
    for i in 1..=3 {
        let s = service(&format!("s{i}"), &format!("svc{i}"));
        store.update(|tx| tx.create_service(s)).await.unwrap();
    }
    let mut stream = start(&store, vec![entry("service", ALL, vec![])], Some(1), false)
        .await
        .expect("watch");
    store.update(|tx| tx.delete_service("s2")).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(summary(&next(&mut stream).await));
    }
    assert_eq!(
        seen,
        [
            (vec!["create s2".to_string()], 2),
            (vec!["create s3".to_string()], 3),
            (vec!["remove s2".to_string()], 4),
        ]
    );
    let err = start(&store, vec![entry("service", ALL, vec![])], Some(9), false)
        .await
        .expect_err("a version not reached");
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(err.message(), "versions are out of order");
}

#[tokio::test]
async fn a_version_older_than_the_history_gets_swarmkits_compaction_error() {
    let store = MemoryStore::new(None);
    for i in 0..store::HISTORY_EVENTS + 1 {
        let mut n = fixtures::node(&format!("n{i}"));
        n.role = api::NodeRole::Worker as i32;
        store.update(|tx| tx.create_node(n)).await.unwrap();
    }
    let err = start(&store, vec![entry("node", ALL, vec![])], Some(0), false)
        .await
        .expect_err("compacted");
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(
        err.message(),
        "requested index is unavailable due to compaction"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_with_swarmkits_messages() {
    let store = MemoryStore::new(None);
    let refused = |entries| {
        let store = store.clone();
        async move {
            let err = start(&store, entries, None, false)
                .await
                .expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            err.message().to_string()
        }
    };
    assert_eq!(
        refused(vec![entry("", ALL, vec![])]).await,
        "no kind of object specified"
    );
    assert_eq!(
        refused(vec![entry("service", 0, vec![])]).await,
        "unrecognized action"
    );
    assert_eq!(
        refused(vec![entry(
            "task",
            ALL,
            vec![
                By::ServiceId("a".into()),
                By::Slot(api::SelectBySlot::default())
            ]
        )])
        .await,
        "conflicting filters specified"
    );
    assert_eq!(
        refused(vec![entry(
            "service",
            ALL,
            vec![By::Id("a".into()), By::IdPrefix("b".into())]
        )])
        .await,
        "conflicting filters specified"
    );
    let unknown = refused(vec![entry("gadget", ALL, vec![])]).await;
    assert!(
        unknown.starts_with("unknown kind of object \"gadget\""),
        "{unknown}"
    );
    // Filters a kind does not take are ignored, even twice.
    assert!(
        start(
            &store,
            vec![entry(
                "service",
                ALL,
                vec![By::NodeId("a".into()), By::NodeId("b".into())]
            )],
            None,
            false
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn an_extension_names_its_resources() {
    let store = MemoryStore::new(None);
    store
        .update(|tx| {
            tx.create_extension(api::Extension {
                id: "e1".into(),
                annotations: Some(api::Annotations {
                    name: "gadget".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .await
        .unwrap();
    let mut stream = start(&store, vec![entry("gadget", ALL, vec![])], None, false)
        .await
        .expect("an extension's kind");
    let resource = |id: &str, kind: &str| api::Resource {
        id: id.into(),
        kind: kind.into(),
        annotations: Some(api::Annotations {
            name: id.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .update(|tx| {
            tx.create_resource(resource("r1", "other"))?;
            tx.create_resource(resource("r2", "gadget"))
        })
        .await
        .unwrap();
    assert_eq!(summary(&next(&mut stream).await).0, ["create r2"]);
}

#[tokio::test]
async fn streams_end_when_the_manager_stops() {
    let store = MemoryStore::new(None);
    let stop = CancellationToken::new();
    let svc = WatchService::new(store.clone(), None, stop.clone());
    let req = api::WatchRequest {
        entries: vec![entry("node", ALL, vec![])],
        ..Default::default()
    };
    let mut stream = svc.watch(Request::new(req)).await.unwrap().into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    stop.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("ends");
    assert_eq!(end.unwrap().unwrap_err().code(), tonic::Code::Cancelled);
}
