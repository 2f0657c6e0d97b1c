//! The Dispatcher service on the remote port over real mutual TLS, in process: a joined worker
//! opens a session, beats, receives its assignments and reports task status; callers without a
//! certificate, removed nodes and registration storms are refused (spec 4.2, 5.7).

use std::sync::Arc;
use std::time::Duration;

use api::TaskState;
use api::control_server::Control;
use api::dispatcher_client::DispatcherClient;
use api::node_status::State as NodeState;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::controlapi::ControlApi;
use crate::security_tests::{Cluster, OnlyMe, start};

const WAIT: Duration = Duration::from_secs(10);

struct Worker {
    node_id: String,
    client: DispatcherClient<Channel>,
}

async fn worker(c: &Cluster) -> Worker {
    let issued = c.join(&c.tokens().worker).await.expect("join");
    let key = issued.key.key_pem();
    let channel = c.channel(Some((&issued.cert_pem, key.as_bytes())));
    Worker {
        node_id: issued.node_id,
        client: DispatcherClient::new(channel),
    }
}

fn description() -> api::NodeDescription {
    api::NodeDescription {
        hostname: "worker-1".into(),
        platform: Some(api::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        }),
        resources: Some(api::Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            generic: Vec::new(),
        }),
        engine: Some(api::EngineDescription {
            engine_version: "27.0.0".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn open(
    w: &mut Worker,
) -> Result<(api::SessionMessage, tonic::Streaming<api::SessionMessage>), tonic::Status> {
    let mut stream = w
        .client
        .session(api::SessionRequest {
            description: Some(description()),
            session_id: String::new(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("first message in time")
        .expect("first message")?;
    Ok((first, stream))
}

#[tokio::test]
async fn a_worker_session_over_mutual_tls() {
    let c = start().await;
    let mut w = worker(&c).await;

    let (first, _stream) = open(&mut w).await.expect("session");
    assert!(!first.session_id.is_empty());
    assert_eq!(first.root_ca, c.root.cert_pem());
    assert_eq!(
        first.managers,
        vec![dispatcher::weighted_peer(&c.manager_id, &c.addr)]
    );
    assert_eq!(
        first.node.as_ref().map(|n| n.id.as_str()),
        Some(w.node_id.as_str())
    );

    let node = c.store.view(|tx| tx.get_node(&w.node_id)).expect("node");
    let status = node.status.expect("status");
    assert_eq!(status.state, NodeState::Ready as i32);
    assert_eq!(status.addr, "127.0.0.1");
    assert_eq!(node.description, Some(description()));

    let period = w
        .client
        .heartbeat(api::HeartbeatRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect("heartbeat")
        .into_inner()
        .period
        .expect("period");
    let period = Duration::try_from(period).expect("duration");
    assert!(
        period >= Duration::from_millis(4500) && period < Duration::from_millis(5500),
        "{period:?}"
    );
    let err = w
        .client
        .heartbeat(api::HeartbeatRequest {
            session_id: "stale".into(),
        })
        .await
        .expect_err("stale session");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "session invalid");

    // A task assigned to the worker arrives in the COMPLETE message; its status reports land.
    let (mine, theirs) = (w.node_id.clone(), c.manager_id.clone());
    c.store
        .update(move |tx| {
            for (id, node_id) in [("t-mine", mine), ("t-theirs", theirs)] {
                tx.create_task(api::Task {
                    id: id.into(),
                    node_id,
                    service_id: "svc".into(),
                    desired_state: TaskState::Running as i32,
                    status: Some(api::TaskStatus {
                        state: TaskState::Assigned as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })?;
            }
            Ok(())
        })
        .await
        .expect("tasks");
    let mut assignments = w
        .client
        .assignments(api::AssignmentsRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect("assignments")
        .into_inner();
    let complete = tokio::time::timeout(WAIT, assignments.next())
        .await
        .expect("in time")
        .expect("message")
        .expect("ok");
    assert_eq!(
        complete.r#type,
        api::assignments_message::Type::Complete as i32
    );
    assert_eq!(complete.results_in, "1");
    assert_eq!(complete.changes.len(), 1, "{complete:?}");

    let report = |id: &str| api::UpdateTaskStatusRequest {
        session_id: first.session_id.clone(),
        updates: vec![api::update_task_status_request::TaskStatusUpdate {
            task_id: id.into(),
            status: Some(api::TaskStatus {
                state: TaskState::Running as i32,
                message: "started".into(),
                ..Default::default()
            }),
        }],
    };
    w.client
        .update_task_status(report("t-mine"))
        .await
        .expect("own task");
    let err = w
        .client
        .update_task_status(report("t-theirs"))
        .await
        .expect_err("foreign task");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "cannot update a task not assigned this node");
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let t = c.store.view(|tx| tx.get_task("t-mine")).expect("task");
        let status = t.status.unwrap_or_default();
        if status.state == TaskState::Running as i32 {
            assert_eq!(status.applied_by, c.manager_id);
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "status not written: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let theirs = c.store.view(|tx| tx.get_task("t-theirs")).expect("task");
    assert_eq!(
        theirs.status.map(|s| s.state),
        Some(TaskState::Assigned as i32)
    );

    #[allow(deprecated)]
    let err = w
        .client
        .tasks(api::TasksRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect_err("deprecated");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn anonymous_removed_and_storming_nodes_are_refused() {
    let c = start().await;
    let mut anonymous = DispatcherClient::new(c.channel(None));
    let err = anonymous
        .session(api::SessionRequest::default())
        .await
        .expect_err("no certificate");
    assert_eq!(err.code(), Code::PermissionDenied);

    // More than three registrations within 8 s.
    let mut w = worker(&c).await;
    for _ in 0..4 {
        open(&mut w).await.expect("within the limit");
    }
    let err = open(&mut w).await.expect_err("rate limit");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        format!(
            "node {} exceeded rate limit count of registrations",
            w.node_id
        )
    );

    // A removed node's certificate no longer reaches the dispatcher.
    let mut removed = worker(&c).await;
    ControlApi::new(c.store.clone(), Arc::new(OnlyMe(String::new())))
        .remove_node(tonic::Request::new(api::RemoveNodeRequest {
            node_id: removed.node_id.clone(),
            force: true,
        }))
        .await
        .expect("remove");
    let err = open(&mut removed).await.expect_err("removed");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().ends_with(&format!(
            "Permission denied: node {} was removed from swarm",
            removed.node_id
        )),
        "{}",
        err.message()
    );
    assert!(c.dispatcher.is_running());
}
