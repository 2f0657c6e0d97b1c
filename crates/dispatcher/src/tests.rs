//! The dispatcher against a raft-less store on a paused clock: registration, heartbeats and their
//! expiry, the leader-change grace, the rate limit, assignments and task status reports.

use std::time::Duration;

use api::TaskState;
use api::assignment_change::AssignmentAction;
use api::assignments_message::Type as AssignmentsType;
use api::node_status::State as NodeState;
use store::MemoryStore;
use testkit::fixtures::{AssignmentItem, assignment_items, node_in_state as node};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{Config, Dispatcher, DispatcherError, DispatcherStream, weighted_peer};

const ROOT: &[u8] = b"-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
const PERIOD: Duration = Duration::from_secs(1);

struct Fixture {
    store: MemoryStore,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), crate::RunError>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn task(id: &str, node_id: &str, state: TaskState) -> api::Task {
    api::Task {
        node_id: node_id.into(),
        ..testkit::fixtures::task(id, "svc", state)
    }
}

fn description(hostname: &str) -> api::NodeDescription {
    api::NodeDescription {
        hostname: hostname.into(),
        platform: Some(api::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        }),
        resources: Some(api::Resources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
            generic: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Writes `nodes` and `tasks` in batches (large tasks would not fit one raft entry together).
async fn seed(store: &MemoryStore, nodes: Vec<api::Node>, tasks: Vec<api::Task>) {
    let mut errors = store.batch(&nodes, |tx, n| tx.create_node(n.clone())).await;
    errors.extend(store.batch(&tasks, |tx, t| tx.create_task(t.clone())).await);
    assert!(errors.is_empty(), "seed: {errors:?}");
}

/// A store with the cluster (1 s heartbeat period) and `nodes`, and a running dispatcher.
async fn start(nodes: Vec<api::Node>, tasks: Vec<api::Task>, config: Config) -> Fixture {
    let store = MemoryStore::new(None);
    let cluster = api::Cluster {
        id: "cluster".into(),
        spec: Some(api::ClusterSpec {
            annotations: Some(api::Annotations {
                name: "default".into(),
                ..Default::default()
            }),
            dispatcher: Some(api::DispatcherConfig {
                heartbeat_period: prost_types::Duration::try_from(PERIOD).ok(),
            }),
            ..Default::default()
        }),
        root_ca: Some(api::RootCa {
            ca_cert: ROOT.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .update(move |tx| tx.create_cluster(cluster))
        .await
        .expect("cluster");
    seed(&store, nodes, tasks).await;
    let dispatcher = Dispatcher::new(store.clone(), "mgr".into(), config);
    dispatcher.set_managers(vec![weighted_peer("mgr", "10.0.0.1:4242")]);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    for _ in 0..100 {
        if dispatcher.is_running() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(dispatcher.is_running(), "dispatcher did not start");
    Fixture {
        store,
        dispatcher,
        shutdown,
        run,
    }
}

fn exact() -> Config {
    Config {
        heartbeat_epsilon: Duration::ZERO,
        ..Config::default()
    }
}

async fn next<T>(stream: &mut DispatcherStream<T>) -> Result<T, Status> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a stream message within 30 s")
        .expect("stream ended without a status")
}

/// The status a stream ends with, skipping the messages before it.
async fn end<T: std::fmt::Debug>(stream: &mut DispatcherStream<T>) -> Status {
    for _ in 0..10 {
        if let Err(status) = next(stream).await {
            return status;
        }
    }
    panic!("the stream goes on");
}

impl Fixture {
    fn node(&self, id: &str) -> api::Node {
        self.store
            .view(|tx| tx.get_node(id))
            .expect("node in store")
    }

    fn node_state(&self, id: &str) -> (i32, String) {
        let status = self.node(id).status.unwrap_or_default();
        (status.state, status.message)
    }

    fn task_state(&self, id: &str) -> i32 {
        self.store
            .view(|tx| tx.get_task(id))
            .and_then(|t| t.status)
            .map_or(-1, |s| s.state)
    }

    /// Waits (bounded, re-checking at every store commit) until `node_id` is in `state`; fails
    /// with the last state seen.
    async fn wait_node(&self, node_id: &str, state: NodeState, within: Duration) {
        let what = format!("node {node_id} {state:?}");
        testkit::wait_for(within, &self.store, &what, |tx| {
            let seen = tx
                .get_node(node_id)
                .and_then(|n| n.status)
                .unwrap_or_default();
            if seen.state == state as i32 {
                Ok(())
            } else {
                Err(format!("last seen {:?}", (seen.state, seen.message)))
            }
        })
        .await;
    }

    async fn open(&self, node_id: &str) -> (String, DispatcherStream<api::SessionMessage>) {
        let mut stream = self
            .dispatcher
            .session(
                node_id,
                "10.0.0.7",
                api::SessionRequest {
                    description: Some(description(node_id)),
                    session_id: String::new(),
                },
            )
            .await
            .expect("session");
        let first = next(&mut stream).await.expect("first message");
        assert!(!first.session_id.is_empty());
        (first.session_id, stream)
    }
}

#[tokio::test(start_paused = true)]
async fn registration_records_the_description_and_makes_the_node_ready() {
    let f = start(vec![node("n1", NodeState::Unknown)], vec![], exact()).await;
    let mut stream = f
        .dispatcher
        .session(
            "n1",
            "10.0.0.7",
            api::SessionRequest {
                description: Some(description("host-1")),
                session_id: String::new(),
            },
        )
        .await
        .expect("session");
    let first = next(&mut stream).await.expect("first message");
    assert_eq!(first.session_id.len(), 25);
    assert_eq!(first.root_ca, ROOT);
    assert_eq!(first.managers, vec![weighted_peer("mgr", "10.0.0.1:4242")]);
    assert_eq!(first.managers[0].weight, 10);
    let sent = first.node.expect("node object");
    assert_eq!(sent.id, "n1");
    assert_eq!(
        sent.status.as_ref().map(|s| s.state),
        Some(NodeState::Ready as i32),
        "the node object is sent after the READY write"
    );

    let n = f.node("n1");
    let status = n.status.expect("status");
    assert_eq!(status.state, NodeState::Ready as i32);
    assert_eq!(status.message, "");
    assert_eq!(status.addr, "10.0.0.7");
    assert_eq!(n.description, Some(description("host-1")));

    // A change of the node object, of the managers or of the root CA sends a new message.
    let mut changed = f.node("n1");
    changed.spec = Some(api::NodeSpec {
        availability: api::node_spec::Availability::Drain as i32,
        ..Default::default()
    });
    f.store
        .update(move |tx| tx.update_node(changed))
        .await
        .expect("update");
    let msg = next(&mut stream).await.expect("node message");
    assert_eq!(msg.session_id, first.session_id);
    assert_eq!(
        msg.node.and_then(|n| n.spec).map(|s| s.availability),
        Some(api::node_spec::Availability::Drain as i32)
    );
    f.dispatcher.set_managers(vec![
        weighted_peer("mgr", "10.0.0.1:4242"),
        weighted_peer("mgr2", "10.0.0.2:4242"),
    ]);
    assert_eq!(next(&mut stream).await.expect("managers").managers.len(), 2);
    let mut cluster = f
        .store
        .view(|tx| tx.get_cluster("cluster"))
        .expect("cluster");
    cluster.root_ca.get_or_insert_default().ca_cert = b"new root".to_vec();
    let key = api::EncryptionKey {
        subsystem: "networking:gossip".into(),
        key: vec![7; 16],
        lamport_time: 1,
        ..Default::default()
    };
    cluster.network_bootstrap_keys = vec![key.clone()];
    f.store
        .update(move |tx| tx.update_cluster(cluster))
        .await
        .expect("update cluster");
    let msg = next(&mut stream).await.expect("root");
    assert_eq!(msg.root_ca, b"new root");
    // Both changed in one commit; a second message, if any, carries the same.
    let msg = if msg.network_bootstrap_keys.is_empty() {
        next(&mut stream).await.expect("keys")
    } else {
        msg
    };
    assert_eq!(msg.network_bootstrap_keys, vec![key]);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_node_ready_and_missing_ones_take_it_down() {
    let f = start(vec![node("n1", NodeState::Unknown)], vec![], exact()).await;
    let (session, mut stream) = f.open("n1").await;
    for _ in 0..10 {
        let period = f.dispatcher.heartbeat("n1", &session).expect("beat");
        assert_eq!(period, PERIOD);
        tokio::time::sleep(period).await;
        assert_eq!(f.node_state("n1").0, NodeState::Ready as i32);
    }
    assert_eq!(
        f.dispatcher.heartbeat("n1", "other").expect_err("wrong"),
        DispatcherError::SessionInvalid
    );

    // No beat for 3 periods: DOWN, and the session is gone.
    f.wait_node("n1", NodeState::Down, PERIOD * 4).await;
    assert_eq!(f.node_state("n1").1, "heartbeat failure");
    let err: Status = f
        .dispatcher
        .heartbeat("n1", &session)
        .expect_err("expired")
        .into();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "node not registered");
    let end = end(&mut stream).await;
    assert_eq!(end.code(), Code::NotFound);
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_the_epsilon() {
    let f = start(
        vec![node("n1", NodeState::Unknown)],
        vec![],
        Config::default(),
    )
    .await;
    let (session, _stream) = f.open("n1").await;
    for _ in 0..50 {
        let p = f.dispatcher.heartbeat("n1", &session).expect("beat");
        assert!(
            p >= PERIOD - Duration::from_millis(500) && p < PERIOD + Duration::from_millis(500)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_change_gives_nodes_a_longer_grace_and_keeps_down_nodes_down() {
    let config = exact();
    let f = start(
        vec![
            node("n1", NodeState::Ready),
            node("n2", NodeState::Ready),
            node("n3", NodeState::Down),
        ],
        vec![],
        config,
    )
    .await;
    f.wait_node("n1", NodeState::Unknown, PERIOD).await;
    assert_eq!(
        f.node_state("n1").1,
        r#"Node moved to "unknown" state due to leadership change in cluster"#
    );
    assert_eq!(f.node_state("n3").0, NodeState::Down as i32);

    // n1 comes back and beats; n2 never does.
    let (session, _stream) = f.open("n1").await;
    for i in 0..8 {
        if i == 4 {
            assert_eq!(f.node_state("n2").0, NodeState::Unknown as i32, "6x grace");
        }
        f.dispatcher.heartbeat("n1", &session).expect("beat");
        tokio::time::sleep(PERIOD).await;
    }
    f.wait_node("n2", NodeState::Down, PERIOD * 2).await;
    assert_eq!(
        f.node_state("n2").1,
        r#"heartbeat failure for node in "unknown" state"#
    );
    assert_eq!(f.node_state("n1").0, NodeState::Ready as i32);
    assert_eq!(f.node_state("n3").0, NodeState::Down as i32);
}

#[tokio::test(start_paused = true)]
async fn registering_too_often_is_refused_and_a_new_session_ends_the_old() {
    let f = start(vec![node("n1", NodeState::Ready)], vec![], exact()).await;
    let (_, mut first) = f.open("n1").await;
    let (second_id, _second) = f.open("n1").await;
    let end = end(&mut first).await;
    assert_eq!(end.code(), Code::InvalidArgument);
    assert_eq!(end.message(), "session invalid");
    let (third_id, _third) = f.open("n1").await;
    let err: Status = f
        .dispatcher
        .session("n1", "10.0.0.7", api::SessionRequest::default())
        .await
        .expect_err("rate limit")
        .into();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        "node n1 exceeded rate limit count of registrations"
    );
    // Re-opening the current session is no registration, so the limit does not apply.
    let reopened = f
        .dispatcher
        .session(
            "n1",
            "10.0.0.7",
            api::SessionRequest {
                description: None,
                session_id: third_id.clone(),
            },
        )
        .await;
    assert!(reopened.is_ok(), "same session");
    assert!(second_id != third_id);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let again = f
        .dispatcher
        .session("n1", "10.0.0.7", api::SessionRequest::default())
        .await;
    assert!(again.is_ok(), "allowed again after the period");
}

#[tokio::test(start_paused = true)]
async fn a_node_missing_from_the_store_is_refused() {
    let f = start(vec![], vec![], exact()).await;
    let err: Status = f
        .dispatcher
        .session("ghost", "10.0.0.7", api::SessionRequest::default())
        .await
        .expect_err("unknown")
        .into();
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(err.message(), "node not found");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_dispatcher_refuses_calls_and_disconnects_sessions() {
    let f = start(vec![node("n1", NodeState::Ready)], vec![], exact()).await;
    let (session, mut stream) = f.open("n1").await;
    f.shutdown.cancel();
    let last = next(&mut stream).await.expect("a last message");
    assert_eq!(last.session_id, session);
    let end = next(&mut stream).await.expect_err("disconnect");
    assert_eq!(end.code(), Code::Aborted);
    assert_eq!(end.message(), "node must disconnect");
    tokio::time::timeout(Duration::from_secs(5), f.dispatcher.clone().wait_stopped())
        .await
        .expect("stops");
    let err: Status = f
        .dispatcher
        .heartbeat("n1", &session)
        .expect_err("stopped")
        .into();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.message(), "dispatcher is stopped");
}

impl Dispatcher {
    async fn wait_stopped(self) {
        while self.is_running() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn changes(msg: &api::AssignmentsMessage) -> Vec<(String, AssignmentAction)> {
    msg.changes
        .iter()
        .map(|c| {
            let Some(api::assignment::Item::Task(t)) =
                c.assignment.as_ref().and_then(|a| a.item.as_ref())
            else {
                panic!("not a task: {c:?}");
            };
            (
                t.id.clone(),
                AssignmentAction::try_from(c.action).expect("action"),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn assignments_start_complete_then_follow_changes() {
    let f = start(
        vec![node("n1", NodeState::Ready), node("n2", NodeState::Ready)],
        vec![
            task("t1", "n1", TaskState::Assigned),
            task("t2", "n1", TaskState::Pending),
            task("t3", "n2", TaskState::Assigned),
            task("t4", "n1", TaskState::Running),
        ],
        exact(),
    )
    .await;
    let (session, _s) = f.open("n1").await;
    let err = f.dispatcher.assignments("n1", "nope").expect_err("bad");
    assert_eq!(err, DispatcherError::SessionInvalid);
    let mut stream = f.dispatcher.assignments("n1", &session).expect("stream");
    let complete = next(&mut stream).await.expect("complete");
    assert_eq!(complete.r#type, AssignmentsType::Complete as i32);
    assert_eq!(
        (complete.applies_to.as_str(), complete.results_in.as_str()),
        ("", "1")
    );
    // The tasks the agent already reported on first.
    assert_eq!(
        changes(&complete),
        vec![
            ("t4".to_string(), AssignmentAction::Update),
            ("t1".to_string(), AssignmentAction::Update)
        ]
    );

    // The scheduler assigns t2; the agent's own report on t1 is not sent back; t4 is deleted.
    let store = f.store.clone();
    store
        .update(|tx| {
            let mut t2 = tx.get_task("t2").expect("t2");
            t2.status.get_or_insert_default().state = TaskState::Assigned as i32;
            tx.update_task(t2)?;
            let mut t1 = tx.get_task("t1").expect("t1");
            t1.status.get_or_insert_default().state = TaskState::Running as i32;
            tx.update_task(t1)?;
            let mut t3 = tx.get_task("t3").expect("t3");
            t3.desired_state = TaskState::Shutdown as i32;
            tx.update_task(t3)
        })
        .await
        .expect("update");
    store
        .update(|tx| tx.delete_task("t4"))
        .await
        .expect("delete");
    let inc = next(&mut stream).await.expect("incremental");
    assert_eq!(inc.r#type, AssignmentsType::Incremental as i32);
    assert_eq!(
        (inc.applies_to.as_str(), inc.results_in.as_str()),
        ("1", "2")
    );
    assert_eq!(
        changes(&inc),
        vec![
            ("t2".to_string(), AssignmentAction::Update),
            ("t4".to_string(), AssignmentAction::Remove)
        ]
    );

    // A desired state change of t1 is for the agent.
    store
        .update(|tx| {
            let mut t1 = tx.get_task("t1").expect("t1");
            t1.desired_state = TaskState::Shutdown as i32;
            tx.update_task(t1)
        })
        .await
        .expect("update");
    let inc = next(&mut stream).await.expect("incremental");
    assert_eq!(
        (inc.applies_to.as_str(), inc.results_in.as_str()),
        ("2", "3")
    );
    assert_eq!(
        changes(&inc),
        vec![("t1".to_string(), AssignmentAction::Update)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_coalesced() {
    let tasks: Vec<_> = (0..150)
        .map(|i| task(&format!("t{i:03}"), "n1", TaskState::Pending))
        .collect();
    let f = start(vec![node("n1", NodeState::Ready)], tasks, exact()).await;
    let (session, _s) = f.open("n1").await;
    let mut stream = f.dispatcher.assignments("n1", &session).expect("stream");
    assert!(
        next(&mut stream)
            .await
            .expect("complete")
            .changes
            .is_empty()
    );
    for i in 0..150 {
        f.store
            .update(move |tx| {
                let mut t = tx.get_task(&format!("t{i:03}")).expect("task");
                t.status.get_or_insert_default().state = TaskState::Assigned as i32;
                tx.update_task(t)
            })
            .await
            .expect("assign");
    }
    let first = next(&mut stream).await.expect("first batch");
    let second = next(&mut stream).await.expect("second batch");
    assert_eq!(first.changes.len(), 100, "the batch limit");
    assert_eq!(second.changes.len(), 50);
}

#[tokio::test(start_paused = true)]
async fn task_status_reports_are_written_forward_only_and_for_own_tasks() {
    let f = start(
        vec![node("n1", NodeState::Ready), node("n2", NodeState::Ready)],
        vec![
            task("t1", "n1", TaskState::Assigned),
            task("t2", "n2", TaskState::Assigned),
        ],
        exact(),
    )
    .await;
    let (session, _s) = f.open("n1").await;
    let report = |id: &str, state: TaskState| api::update_task_status_request::TaskStatusUpdate {
        task_id: id.into(),
        status: Some(api::TaskStatus {
            state: state as i32,
            message: "started".into(),
            ..Default::default()
        }),
    };
    f.dispatcher
        .update_task_status(
            "n1",
            api::UpdateTaskStatusRequest {
                session_id: session.clone(),
                updates: vec![
                    report("t1", TaskState::Running),
                    report("gone", TaskState::Running),
                ],
            },
        )
        .expect("own task");
    for _ in 0..20 {
        if f.task_state("t1") == TaskState::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t1 = f.store.view(|tx| tx.get_task("t1")).expect("t1");
    let status = t1.status.expect("status");
    assert_eq!(status.state, TaskState::Running as i32);
    assert_eq!(status.applied_by, "mgr");
    assert!(status.applied_at.is_some());

    // Backwards: ignored.
    f.dispatcher
        .update_task_status(
            "n1",
            api::UpdateTaskStatusRequest {
                session_id: session.clone(),
                updates: vec![report("t1", TaskState::Preparing)],
            },
        )
        .expect("accepted but not applied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.task_state("t1"), TaskState::Running as i32);

    let err: Status = f
        .dispatcher
        .update_task_status(
            "n1",
            api::UpdateTaskStatusRequest {
                session_id: session.clone(),
                updates: vec![report("t2", TaskState::Running)],
            },
        )
        .expect_err("foreign")
        .into();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "cannot update a task not assigned this node");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.task_state("t2"), TaskState::Assigned as i32);
    assert!(!f.run.is_finished());
}

#[tokio::test(start_paused = true)]
async fn the_local_service_speaks_for_this_manager_and_the_remote_one_wants_a_certificate() {
    use api::dispatcher_server::Dispatcher as _;

    let f = start(vec![node("mgr", NodeState::Ready)], vec![], exact()).await;
    let local = crate::DispatcherService::local(f.dispatcher.clone(), "mgr".into());
    let mut stream = local
        .session(tonic::Request::new(api::SessionRequest {
            description: Some(description("manager-host")),
            session_id: String::new(),
        }))
        .await
        .expect("local session")
        .into_inner();
    let first = next(&mut stream).await.expect("first");
    assert_eq!(first.node.map(|n| n.id), Some("mgr".to_string()));
    assert_eq!(f.node("mgr").description, Some(description("manager-host")));

    let remote = crate::DispatcherService::remote(f.dispatcher.clone());
    let err = remote
        .heartbeat(tonic::Request::new(api::HeartbeatRequest {
            session_id: first.session_id,
        }))
        .await
        .expect_err("no certificate");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = remote
        .update_volume_status(tonic::Request::new(
            api::UpdateVolumeStatusRequest::default(),
        ))
        .await
        .expect_err("volumes");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test(start_paused = true)]
async fn tasks_of_a_node_down_for_a_day_become_orphaned() {
    let f = start(
        vec![node("n1", NodeState::Down), node("n2", NodeState::Down)],
        vec![
            task("t1", "n1", TaskState::Running),
            task("t2", "n1", TaskState::Failed),
            task("t3", "n2", TaskState::Running),
        ],
        exact(),
    )
    .await;
    // n2 comes back before the day is over; its task is left alone.
    let (session, _s) = f.open("n2").await;
    for _ in 0..10 {
        f.dispatcher.heartbeat("n2", &session).expect("beat");
        tokio::time::sleep(PERIOD).await;
    }
    tokio::time::sleep(Duration::from_secs(24 * 60 * 60)).await;
    for _ in 0..20 {
        if f.task_state("t1") == TaskState::Orphaned as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.task_state("t1"), TaskState::Orphaned as i32);
    assert_eq!(f.task_state("t2"), TaskState::Failed as i32);
    assert_eq!(f.task_state("t3"), TaskState::Running as i32);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_nodes_registering_at_once_cost_a_few_store_writes() {
    let nodes: Vec<_> = (0..1000)
        .map(|i| node(&format!("n{i:04}"), NodeState::Ready))
        .collect();
    let f = start(nodes, vec![], exact()).await;
    // Let the new term's UNKNOWN marking land first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut commits = f.store.watch(store::WatchFilter::none());
    let sessions: Vec<_> = (0..1000)
        .map(|i| {
            let d = f.dispatcher.clone();
            tokio::spawn(async move {
                let id = format!("n{i:04}");
                let mut s = d
                    .session(
                        &id,
                        "10.0.0.9",
                        api::SessionRequest {
                            description: Some(description(&id)),
                            session_id: String::new(),
                        },
                    )
                    .await
                    .expect("session");
                next(&mut s).await.expect("first message");
                s
            })
        })
        .collect();
    let mut streams = Vec::new();
    for s in sessions {
        streams.push(s.await.expect("task"));
    }
    let mut writes = 0;
    while commits.try_recv().is_some() {
        writes += 1;
    }
    assert!(writes <= 5, "{writes} store writes for 1000 registrations");
    assert_eq!(f.dispatcher.registered_nodes(), 1000);
    for i in [0, 499, 999] {
        assert_eq!(f.node_state(&format!("n{i:04}")).0, NodeState::Ready as i32);
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_term_invalidates_old_sessions_and_keeps_returning_nodes_ready() {
    let f = start(vec![node("n1", NodeState::Ready)], vec![], exact()).await;
    let (old, _s) = f.open("n1").await;
    f.shutdown.cancel();
    f.dispatcher.clone().wait_stopped().await;

    // This manager leads again.
    let term = CancellationToken::new();
    let _guard = term.clone().drop_guard();
    tokio::spawn(f.dispatcher.clone().run(term.clone()));
    while !f.dispatcher.is_running() {
        tokio::task::yield_now().await;
    }
    let err = f.dispatcher.heartbeat("n1", &old).expect_err("old session");
    assert_eq!(err, DispatcherError::SessionInvalid);
    f.wait_node("n1", NodeState::Unknown, PERIOD).await;
    let (session, _s) = f.open("n1").await;
    assert_ne!(session, old);
    for _ in 0..10 {
        f.dispatcher.heartbeat("n1", &session).expect("beat");
        tokio::time::sleep(PERIOD).await;
        assert_eq!(f.node_state("n1").0, NodeState::Ready as i32);
    }
}

/// The resynchronising COMPLETE set lists the secret the tasks use too.
#[tokio::test(start_paused = true)]
async fn an_assignments_reader_that_falls_behind_gets_a_complete_set_again() {
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            task_using(
                &format!("t{i:02}"),
                "n1",
                TaskState::Assigned,
                &["sec"],
                &[],
            )
        })
        .collect();
    let f = start(vec![node("n1", NodeState::Ready)], tasks, exact()).await;
    create_secret(&f.store, "sec", b"top secret").await;
    let (session, _s) = f.open("n1").await;
    let mut stream = f.dispatcher.assignments("n1", &session).expect("stream");
    assert_eq!(next(&mut stream).await.expect("complete").changes.len(), 51);

    // Nobody reads: messages fill the stream, then events fill the routing channel.
    for round in 0..40 {
        f.store
            .update(move |tx| {
                for i in 0..50 {
                    let mut t = tx.get_task(&format!("t{i:02}")).expect("task");
                    t.desired_state = TaskState::Running as i32 + round % 2;
                    tx.update_task(t)?;
                }
                Ok(())
            })
            .await
            .expect("update");
        f.dispatcher.heartbeat("n1", &session).expect("beat");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut saw_complete = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        let msg = msg.expect("message");
        if msg.r#type == AssignmentsType::Complete as i32 {
            assert_eq!(msg.changes.len(), 51, "the whole set");
            assert_eq!(items(&msg)[0], up("secret", "sec", b"top secret"));
            saw_complete = true;
        }
    }
    assert!(saw_complete, "no resynchronising COMPLETE message");
}

/// A task of `node_id` whose encoded size is about `bytes` (one large environment variable).
fn big_task(id: &str, node_id: &str, state: TaskState, bytes: usize) -> api::Task {
    let mut t = task(id, node_id, state);
    t.spec = Some(api::TaskSpec {
        runtime: Some(api::task_spec::Runtime::Container(Box::new(
            api::ContainerSpec {
                command: vec!["/bin/sleep".into()],
                env: vec![format!("E={}", "x".repeat(bytes))],
                ..Default::default()
            },
        ))),
        ..Default::default()
    });
    t
}

/// Reads messages until one is not marked as followed by more parts; checks each is under the
/// bound and chained to the one before. Returns the messages.
async fn read_set(
    stream: &mut DispatcherStream<api::AssignmentsMessage>,
    last: &mut String,
) -> Vec<api::AssignmentsMessage> {
    let mut msgs = Vec::new();
    loop {
        let msg = next(stream).await.expect("message");
        let len = prost::Message::encoded_len(&msg);
        assert!(
            len <= api::assignment_parts::MAX_MESSAGE_BYTES,
            "a message of {len} bytes"
        );
        assert_eq!(&msg.applies_to, last, "chained");
        last.clone_from(&msg.results_in);
        let more = api::assignment_parts::more_parts_follow(&msg.results_in);
        msgs.push(msg);
        if !more {
            return msgs;
        }
    }
}

/// Sets tasks `big0`..`big<n>` desired SHUTDOWN, in as many transactions as their size needs.
async fn shut_down(store: &MemoryStore, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("big{i}")).collect();
    let errors = store
        .batch(&ids, |tx, id| {
            let mut t = tx.get_task(id).expect("task");
            t.desired_state = TaskState::Shutdown as i32;
            tx.update_task(t)
        })
        .await;
    assert!(errors.is_empty(), "shut down: {errors:?}");
}

/// The issue's repro, scaled up: a COMPLETE set of tasks far over gRPC's 4 MiB goes out as a
/// COMPLETE part then INCREMENTAL parts, chained and marked, none over the bound; a change of
/// every task goes out as several INCREMENTAL messages, unmarked.
#[tokio::test(start_paused = true)]
async fn a_set_too_large_for_one_message_is_split_and_chained() {
    let mut tasks: Vec<_> = (0..6)
        .map(|i| big_task(&format!("big{i}"), "n1", TaskState::Assigned, 1_400_000))
        .collect();
    tasks[4].status.get_or_insert_default().state = TaskState::Running as i32;
    tasks.push(task("small", "n1", TaskState::Running));
    let f = start(vec![node("n1", NodeState::Ready)], tasks, exact()).await;
    let (session, _s) = f.open("n1").await;
    let mut stream = f.dispatcher.assignments("n1", &session).expect("stream");
    let mut last = String::new();
    let set = read_set(&mut stream, &mut last).await;
    assert!(set.len() >= 3, "{} messages", set.len());
    assert_eq!(set[0].r#type, AssignmentsType::Complete as i32);
    assert_eq!(set[0].results_in, "1+");
    assert!(
        set[1..]
            .iter()
            .all(|m| m.r#type == AssignmentsType::Incremental as i32),
        "the rest of the set must not replace the first part in a SwarmKit agent"
    );
    let mut ids: Vec<String> = set.iter().flat_map(changes).map(|(id, _)| id).collect();
    // What the agent runs comes first.
    assert_eq!(ids[..2], ["big4".to_string(), "small".to_string()]);
    ids.sort();
    assert_eq!(
        ids,
        ["big0", "big1", "big2", "big3", "big4", "big5", "small"]
    );

    // Every big task changes at once: several INCREMENTAL messages, each complete in itself.
    shut_down(&f.store, 6).await;
    let mut updated = 0;
    while updated < 6 {
        let msg = next(&mut stream).await.expect("incremental");
        assert!(prost::Message::encoded_len(&msg) <= api::assignment_parts::MAX_MESSAGE_BYTES);
        assert_eq!(msg.r#type, AssignmentsType::Incremental as i32);
        assert_eq!(msg.applies_to, last, "chained");
        assert!(!api::assignment_parts::more_parts_follow(&msg.results_in));
        last.clone_from(&msg.results_in);
        updated += msg.changes.len();
    }
    assert_eq!(updated, 6);
}

/// One node's status report that cannot be written (the task with it would make a raft entry
/// over the limit) fails alone: the other reports of the same batch, another node's among them,
/// are written.
#[tokio::test(start_paused = true)]
async fn an_unwritable_task_costs_only_its_own_status_report() {
    let f = start(
        vec![node("n1", NodeState::Ready), node("n2", NodeState::Ready)],
        vec![
            task("poison", "n1", TaskState::Assigned),
            task("t1", "n1", TaskState::Assigned),
            task("t2", "n2", TaskState::Assigned),
        ],
        exact(),
    )
    .await;
    let (s1, _a) = f.open("n1").await;
    let (s2, _b) = f.open("n2").await;
    let report = |id: &str| api::update_task_status_request::TaskStatusUpdate {
        task_id: id.into(),
        status: Some(api::TaskStatus {
            state: TaskState::Running as i32,
            message: if id == "poison" {
                "x".repeat(store::MAX_TRANSACTION_BYTES)
            } else {
                "started".into()
            },
            ..Default::default()
        }),
    };
    // Both in the same batch (one flush window).
    f.dispatcher
        .update_task_status(
            "n1",
            api::UpdateTaskStatusRequest {
                session_id: s1,
                updates: vec![report("poison"), report("t1")],
            },
        )
        .expect("n1");
    f.dispatcher
        .update_task_status(
            "n2",
            api::UpdateTaskStatusRequest {
                session_id: s2,
                updates: vec![report("t2")],
            },
        )
        .expect("n2");
    for _ in 0..40 {
        if f.task_state("t1") == TaskState::Running as i32
            && f.task_state("t2") == TaskState::Running as i32
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.task_state("t1"), TaskState::Running as i32);
    assert_eq!(f.task_state("t2"), TaskState::Running as i32);
    assert_eq!(f.task_state("poison"), TaskState::Assigned as i32);
    assert!(!f.run.is_finished());
}

/// Status reports are written as soon as they arrive, a lone one as a full transaction's worth:
/// no timer holds them (SwarmKit's dispatcher waits for its 100 ms tick).
#[tokio::test(start_paused = true)]
async fn reports_are_written_without_waiting_for_a_timer() {
    let full = store::MAX_CHANGES_PER_TRANSACTION;
    let tasks = (0..full)
        .map(|i| task(&format!("t{i}"), "n1", TaskState::Assigned))
        .collect();
    let f = start(vec![node("n1", NodeState::Ready)], tasks, exact()).await;
    let (session, _a) = f.open("n1").await;
    let report = |id: String| api::update_task_status_request::TaskStatusUpdate {
        task_id: id,
        status: Some(api::TaskStatus {
            state: TaskState::Running as i32,
            message: "started".into(),
            ..Default::default()
        }),
    };
    let running = |f: &Fixture, n: usize| {
        (0..n).all(|i| f.task_state(&format!("t{i}")) == TaskState::Running as i32)
    };
    // On the paused clock, time passes only while every task sleeps: a write that waited for a
    // timer would show its length here.
    let wait = async |f: &Fixture, n: usize| {
        let from = tokio::time::Instant::now();
        for _ in 0..100 {
            if running(f, n) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(running(f, n), "the reports are written");
        from.elapsed()
    };
    for (first, updates) in [(0, 1), (1, full - 1)] {
        f.dispatcher
            .update_task_status(
                "n1",
                api::UpdateTaskStatusRequest {
                    session_id: session.clone(),
                    updates: (first..first + updates)
                        .map(|i| report(format!("t{i}")))
                        .collect(),
                },
            )
            .expect("reports");
        let took = wait(&f, first + updates).await;
        assert!(
            took <= Duration::from_millis(2),
            "{updates} report(s) written after {took:?}"
        );
    }
}

/// Through the gRPC service: an agent that did not ask for split sets (SwarmKit's, which
/// applies each COMPLETE message as the whole set) gets the COMPLETE set in one message, as
/// SwarmKit's dispatcher sends it, and its INCREMENTAL batches split; one whose request carries
/// the header (ours) gets the set in parts.
#[tokio::test(start_paused = true)]
async fn a_complete_set_is_split_only_for_an_agent_that_asked() {
    use api::dispatcher_server::Dispatcher as _;
    let tasks: Vec<_> = (0..4)
        .map(|i| big_task(&format!("big{i}"), "n1", TaskState::Running, 1_400_000))
        .collect();
    let f = start(vec![node("n1", NodeState::Ready)], tasks, exact()).await;
    let service = crate::DispatcherService::local(f.dispatcher.clone(), "n1".into());
    let mut session = service
        .session(tonic::Request::new(api::SessionRequest::default()))
        .await
        .expect("session")
        .into_inner();
    let session_id = next(&mut session).await.expect("first").session_id;
    let open = |split: bool| {
        let mut req = tonic::Request::new(api::AssignmentsRequest {
            session_id: session_id.clone(),
        });
        if split {
            req.metadata_mut().insert(
                api::assignment_parts::SPLIT_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let service = service.clone();
        async move {
            service
                .assignments(req)
                .await
                .expect("assignments")
                .into_inner()
        }
    };

    let mut ours = open(true).await;
    let mut last = String::new();
    let parts = read_set(&mut ours, &mut last).await;
    assert!(parts.len() >= 2, "{} parts", parts.len());
    drop(ours);

    let mut theirs = open(false).await;
    let complete = next(&mut theirs).await.expect("complete");
    assert_eq!(complete.r#type, AssignmentsType::Complete as i32);
    assert_eq!(complete.results_in, "1");
    assert_eq!(complete.changes.len(), 4, "the whole set in one message");
    shut_down(&f.store, 4).await;
    let inc = next(&mut theirs).await.expect("incremental");
    assert_eq!(inc.applies_to, "1");
    assert!(inc.changes.len() < 4, "the batch is split");
    assert!(prost::Message::encoded_len(&inc) <= api::assignment_parts::MAX_MESSAGE_BYTES);
}

fn items(msg: &api::AssignmentsMessage) -> Vec<AssignmentItem> {
    assignment_items(&msg.changes)
}

fn up(kind: &'static str, id: &str, data: &[u8]) -> AssignmentItem {
    (
        kind,
        id.to_string(),
        AssignmentAction::Update as i32,
        data.to_vec(),
    )
}

fn rm(kind: &'static str, id: &str) -> AssignmentItem {
    (
        kind,
        id.to_string(),
        AssignmentAction::Remove as i32,
        Vec::new(),
    )
}

async fn create_secret(store: &MemoryStore, id: &str, data: &[u8]) {
    let secret = api::Secret {
        id: id.into(),
        spec: Some(api::SecretSpec {
            data: data.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .update(move |tx| tx.create_secret(secret))
        .await
        .expect("secret");
}

/// Task `id` of `node_id`, its container referencing `secrets` and `configs` by ID.
fn task_using(
    id: &str,
    node_id: &str,
    state: TaskState,
    secrets: &[&str],
    configs: &[&str],
) -> api::Task {
    let mut t = task(id, node_id, state);
    if let Some(api::task_spec::Runtime::Container(c)) =
        t.spec.as_mut().and_then(|s| s.runtime.as_mut())
    {
        c.secrets = secrets
            .iter()
            .map(|s| api::SecretReference {
                secret_id: s.to_string(),
                secret_name: s.to_string(),
                target: Some(api::secret_reference::Target::File(api::FileTarget {
                    name: s.to_string(),
                    mode: 0o444,
                    ..Default::default()
                })),
            })
            .collect();
        c.configs = configs
            .iter()
            .map(|s| api::ConfigReference {
                config_id: s.to_string(),
                config_name: s.to_string(),
                target: Some(api::config_reference::Target::File(api::FileTarget {
                    name: s.to_string(),
                    mode: 0o444,
                    ..Default::default()
                })),
            })
            .collect();
    }
    t
}

/// Issue 16: node A's assignments carry the secret and the config its tasks reference, with
/// their data, each once however many tasks share it, before the tasks; each is removed (after
/// the task changes) when its last user ends or goes. Node B, whose tasks reference neither,
/// never receives either.
#[tokio::test(start_paused = true)]
async fn secrets_and_configs_reach_only_the_nodes_whose_tasks_use_them() {
    let f = start(
        vec![node("a", NodeState::Ready), node("b", NodeState::Ready)],
        vec![
            task_using("t1", "a", TaskState::Running, &["sec"], &["cfg"]),
            task_using("t2", "a", TaskState::Assigned, &["sec"], &[]),
            task("t3", "b", TaskState::Running),
        ],
        exact(),
    )
    .await;
    create_secret(&f.store, "sec", b"top secret").await;
    f.store
        .update(|tx| {
            tx.create_config(api::Config {
                id: "cfg".into(),
                spec: Some(api::ConfigSpec {
                    data: b"key=value".to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .await
        .expect("secret and config");
    let (session_a, _sa) = f.open("a").await;
    let (session_b, _sb) = f.open("b").await;
    let mut a = f.dispatcher.assignments("a", &session_a).expect("stream a");
    let mut b = f.dispatcher.assignments("b", &session_b).expect("stream b");
    let never_for_b = |msg: &api::AssignmentsMessage| {
        assert!(
            items(msg).iter().all(|(kind, ..)| *kind == "task"),
            "node b got a dependency: {:?}",
            items(msg)
        );
    };

    let complete = next(&mut a).await.expect("complete a");
    assert_eq!(
        items(&complete),
        vec![
            up("secret", "sec", b"top secret"),
            up("config", "cfg", b"key=value"),
            up("task", "t1", b""),
            up("task", "t2", b""),
        ]
    );
    let complete_b = next(&mut b).await.expect("complete b");
    never_for_b(&complete_b);
    assert_eq!(items(&complete_b), vec![up("task", "t3", b"")]);

    // t1 ends: the config was only its own; the secret stays for t2.
    let report = |id: &'static str, state: TaskState| {
        let store = f.store.clone();
        async move {
            store
                .update(move |tx| {
                    let mut t = tx.get_task(id).expect("task");
                    t.status.get_or_insert_default().state = state as i32;
                    tx.update_task(t)
                })
                .await
                .expect("report");
        }
    };
    report("t1", TaskState::Complete).await;
    assert_eq!(
        items(&next(&mut a).await.expect("inc")),
        vec![rm("config", "cfg")]
    );

    // t2 is removed: the secret goes after it.
    f.store
        .update(|tx| tx.delete_task("t2"))
        .await
        .expect("delete");
    assert_eq!(
        items(&next(&mut a).await.expect("inc")),
        vec![rm("task", "t2"), rm("secret", "sec")]
    );

    // Two new tasks sharing the secret: sent once, before them; removed after the last one.
    seed(
        &f.store,
        vec![],
        vec![
            task_using("t4", "a", TaskState::Assigned, &["sec"], &[]),
            task_using("t5", "a", TaskState::Assigned, &["sec"], &[]),
            task("t6", "b", TaskState::Assigned),
        ],
    )
    .await;
    assert_eq!(
        items(&next(&mut a).await.expect("inc")),
        vec![
            up("secret", "sec", b"top secret"),
            up("task", "t4", b""),
            up("task", "t5", b""),
        ]
    );
    report("t4", TaskState::Failed).await;
    f.store
        .update(|tx| tx.delete_task("t4"))
        .await
        .expect("delete");
    assert_eq!(
        items(&next(&mut a).await.expect("inc")),
        vec![rm("task", "t4")]
    );
    report("t5", TaskState::Shutdown).await;
    assert_eq!(
        items(&next(&mut a).await.expect("inc")),
        vec![rm("secret", "sec")]
    );

    let inc_b = next(&mut b).await.expect("inc b");
    never_for_b(&inc_b);
    assert_eq!(items(&inc_b), vec![up("task", "t6", b"")]);
}
