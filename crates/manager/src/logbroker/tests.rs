//! The broker without gRPC: subscriptions, listeners and publishers over a raft-less store.

use std::collections::VecDeque;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::*;

/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(5);

struct Messages(VecDeque<api::PublishLogsMessage>);

#[tonic::async_trait]
impl PublishSource for Messages {
    async fn next_message(&mut self) -> Result<Option<api::PublishLogsMessage>, Status> {
        Ok(self.0.pop_front())
    }
}

fn task(id: &str, service: &str, node: &str, state: api::TaskState) -> api::Task {
    api::Task {
        node_id: node.into(),
        ..testkit::fixtures::task(id, service, state)
    }
}

async fn broker_with(tasks: Vec<api::Task>) -> (LogBroker, CancellationToken, MemoryStore) {
    let store = MemoryStore::new(None);
    store
        .update(|tx| {
            for t in tasks {
                tx.create(t)?;
            }
            Ok(())
        })
        .await
        .expect("tasks");
    let broker = LogBroker::new(store.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(broker.clone().run(shutdown.clone()));
    tokio::time::timeout(WAIT, async {
        while broker.term().is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("broker running");
    (broker, shutdown, store)
}

fn request(services: &[&str], follow: bool) -> api::SubscribeLogsRequest {
    api::SubscribeLogsRequest {
        selector: Some(api::LogSelector {
            service_ids: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        options: Some(api::LogSubscriptionOptions {
            follow,
            ..Default::default()
        }),
    }
}

fn line(node: &str, task: &str, data: &str) -> api::LogMessage {
    api::LogMessage {
        context: Some(api::LogContext {
            service_id: "svc".into(),
            node_id: node.into(),
            task_id: task.into(),
        }),
        timestamp: Some(SystemTime::now().into()),
        stream: api::LogStream::Stdout as i32,
        data: data.as_bytes().to_vec(),
        attrs: Vec::new(),
    }
}

fn publish_msgs(sub: &str, lines: Vec<api::LogMessage>) -> Messages {
    Messages(VecDeque::from(vec![
        api::PublishLogsMessage {
            subscription_id: sub.into(),
            messages: lines,
            close: false,
        },
        api::PublishLogsMessage {
            subscription_id: sub.into(),
            messages: Vec::new(),
            close: true,
        },
    ]))
}

async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    tokio::time::timeout(WAIT, s.next()).await.expect("in time")
}

#[tokio::test]
async fn empty_or_missing_selectors_get_swarmkits_messages() {
    let (broker, _stop, _) = broker_with(vec![]).await;
    let err = broker
        .subscribe(api::SubscribeLogsRequest::default())
        .expect_err("no selector");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "log selector must be provided");
    let err = broker
        .subscribe(api::SubscribeLogsRequest {
            selector: Some(api::LogSelector::default()),
            options: None,
        })
        .expect_err("empty selector");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "log selector must not be empty");
}

#[tokio::test]
async fn outside_a_term_nothing_is_served() {
    let broker = LogBroker::new(MemoryStore::new(None));
    let err = broker
        .subscribe(request(&["s"], false))
        .expect_err("stopped");
    assert_eq!(err.message(), "broker is not running");
    assert!(broker.listen("n1".into()).is_err());
}

#[tokio::test]
async fn lines_of_the_running_tasks_node_reach_the_client_and_the_stream_ends() {
    let (broker, _stop, _) = broker_with(vec![
        task("t1", "svc", "n1", api::TaskState::Running),
        // Never ran: not asked for without follow.
        task("t2", "svc", "n2", api::TaskState::Assigned),
    ])
    .await;
    let mut n1 = broker.listen("n1".into()).expect("listen");
    let mut n2 = broker.listen("n2".into()).expect("listen");
    let mut client = broker
        .subscribe(request(&["svc"], false))
        .expect("subscribe");
    let sub = next(&mut n1).await.expect("subscription").expect("ok");
    assert!(!sub.close);
    broker
        .publish(
            "n1",
            publish_msgs(&sub.id, vec![line("n1", "t1", "hello\n")]),
        )
        .await
        .expect("published");
    let got = next(&mut client).await.expect("message").expect("ok");
    assert_eq!(got.messages[0].data, b"hello\n");
    assert!(next(&mut client).await.is_none(), "ends once n1 closed");
    // n2 was never asked, and n1, done, is not told again.
    for listener in [&mut n1, &mut n2] {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), listener.next())
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_node_not_connected_makes_the_stream_incomplete() {
    let (broker, _stop, _) =
        broker_with(vec![task("t1", "svc", "n1", api::TaskState::Running)]).await;
    let mut client = broker
        .subscribe(request(&["svc"], false))
        .expect("subscribe");
    let err = next(&mut client)
        .await
        .expect("end")
        .expect_err("incomplete");
    assert_eq!(
        err.message(),
        "warning: incomplete log stream. some logs could not be retrieved for the following reasons: node n1 is not available"
    );
}

#[tokio::test]
async fn a_node_going_away_ends_its_part() {
    let (broker, _stop, _) =
        broker_with(vec![task("t1", "svc", "n1", api::TaskState::Running)]).await;
    let n1 = broker.listen("n1".into()).expect("listen");
    let mut client = broker
        .subscribe(request(&["svc"], false))
        .expect("subscribe");
    drop(n1);
    let err = next(&mut client)
        .await
        .expect("end")
        .expect_err("incomplete");
    assert!(
        err.message().ends_with("node n1 disconnected unexpectedly"),
        "{err:?}"
    );

    // Followed, the client hears it as a line and the stream goes on.
    let n1 = broker.listen("n1".into()).expect("listen");
    let mut client = broker
        .subscribe(request(&["svc"], true))
        .expect("subscribe");
    drop(n1);
    let got = next(&mut client).await.expect("line").expect("ok");
    let text = String::from_utf8_lossy(&got.messages[0].data).to_string();
    assert_eq!(
        text,
        "node n1 disconnected unexpectedly: no more logs from its tasks\n"
    );
    assert_eq!(got.messages[0].stream, api::LogStream::Stderr as i32);
}

#[tokio::test]
async fn publishers_may_only_send_their_own_tasks() {
    let (broker, _stop, _) = broker_with(vec![
        task("t1", "svc", "n1", api::TaskState::Running),
        task("t2", "svc", "n2", api::TaskState::Running),
    ])
    .await;
    let mut n1 = broker.listen("n1".into()).expect("listen");
    let _n2 = broker.listen("n2".into()).expect("listen");
    let _client = broker
        .subscribe(request(&["svc"], false))
        .expect("subscribe");
    let sub = next(&mut n1).await.expect("subscription").expect("ok");
    // Another node's ID in the context: SwarmKit's refusal.
    let err = broker
        .publish("n1", publish_msgs(&sub.id, vec![line("n2", "t2", "x")]))
        .await
        .expect_err("impersonation");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "invalid NodeID: expected=n1;received=n2");
    // Its own node ID but a task of another node.
    let err = broker
        .publish("n1", publish_msgs(&sub.id, vec![line("n1", "t2", "x")]))
        .await
        .expect_err("foreign task");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "invalid TaskID: task t2 is not assigned to node n1"
    );
    let err = broker
        .publish("n1", publish_msgs("nope", vec![]))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "unknown subscription ID");
}

#[tokio::test]
async fn followed_subscriptions_reach_nodes_of_later_tasks() {
    let (broker, _stop, store) =
        broker_with(vec![task("t1", "svc", "n1", api::TaskState::Running)]).await;
    let mut n1 = broker.listen("n1".into()).expect("listen");
    let mut n2 = broker.listen("n2".into()).expect("listen");
    let mut client = broker
        .subscribe(request(&["svc"], true))
        .expect("subscribe");
    let sub = next(&mut n1).await.expect("subscription").expect("ok");
    store
        .update(|tx| tx.create(task("t2", "svc", "n2", api::TaskState::Assigned)))
        .await
        .expect("t2");
    let sub2 = next(&mut n2).await.expect("subscription").expect("ok");
    assert_eq!(sub2.id, sub.id);
    broker
        .publish(
            "n2",
            publish_msgs(&sub.id, vec![line("n2", "t2", "later\n")]),
        )
        .await
        .expect("published");
    let got = next(&mut client).await.expect("message").expect("ok");
    assert_eq!(got.messages[0].data, b"later\n");
    // The client leaves: the agents hear the close.
    drop(client);
    let closed = next(&mut n1).await.expect("close").expect("ok");
    assert!(closed.close);
}

#[tokio::test]
async fn the_end_of_the_term_ends_every_stream() {
    let (broker, stop, _) =
        broker_with(vec![task("t1", "svc", "n1", api::TaskState::Running)]).await;
    let mut n1 = broker.listen("n1".into()).expect("listen");
    let mut client = broker
        .subscribe(request(&["svc"], true))
        .expect("subscribe");
    let _ = next(&mut n1).await;
    stop.cancel();
    let err = next(&mut client).await.expect("end").expect_err("stopped");
    assert_eq!(err.message(), "broker is not running");
    assert!(next(&mut n1).await.is_none());
}
