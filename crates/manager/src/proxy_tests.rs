//! The caller's identity across a forwarding hop, in process over real mutual TLS: the leader
//! believes forwarding headers only from a manager certificate of its cluster, authorizes the
//! original caller, and binds a forwarded dispatcher session to the original caller's node.

use std::time::Duration;

use api::control_client::ControlClient;
use api::dispatcher_client::DispatcherClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::security_tests::{Cluster, start};

const WAIT: Duration = Duration::from_secs(10);

/// Forwarding headers naming `cn`/`ou`/`org` (blank `cn`: an anonymous caller) from `addr`.
fn forwarded<T>(msg: T, cn: &str, ou: &str, org: &str, addr: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let md = req.metadata_mut();
    md.insert(ca::FORWARDED_KEY, "true".parse().expect("value"));
    md.insert(ca::FORWARDED_CN_KEY, cn.parse().expect("value"));
    md.insert(ca::FORWARDED_OU_KEY, ou.parse().expect("value"));
    md.insert(ca::FORWARDED_ORG_KEY, org.parse().expect("value"));
    md.insert(ca::REMOTE_ADDR_KEY, addr.parse().expect("value"));
    req
}

struct Worker {
    node_id: String,
    cert_pem: Vec<u8>,
    key_pem: String,
}

async fn worker(c: &Cluster) -> Worker {
    let issued = c.join(&c.tokens().worker).await.expect("join");
    Worker {
        node_id: issued.node_id,
        key_pem: issued.key.key_pem(),
        cert_pem: issued.cert_pem,
    }
}

fn manager_channel(c: &Cluster) -> Channel {
    c.channel(Some((&c.manager.cert_pem, &c.manager.key_pem)))
}

/// Calls ListNodes with `req` over `channel`, expecting PermissionDenied with a message ending in
/// `want`.
async fn assert_list_nodes_denied(
    channel: &Channel,
    req: tonic::Request<api::ListNodesRequest>,
    want: &str,
) {
    let err = ControlClient::new(channel.clone())
        .list_nodes(req)
        .await
        .expect_err(want);
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().ends_with(want), "{}", err.message());
}

async fn session_node(channel: Channel, req: tonic::Request<api::SessionRequest>) -> String {
    let mut stream = DispatcherClient::new(channel)
        .session(req)
        .await
        .expect("session")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("first message in time")
        .expect("first message")
        .expect("session message");
    first.node.expect("node").id
}

#[tokio::test]
async fn a_forged_forwarded_identity_from_a_worker_is_ignored() {
    let c = start().await;
    let w = worker(&c).await;
    let channel = c.channel(Some((&w.cert_pem, w.key_pem.as_bytes())));

    // The worker claims to forward for the manager: the claim is dropped and the worker
    // itself is refused Control.
    let req = forwarded(
        api::ListNodesRequest::default(),
        &c.manager_id,
        ca::MANAGER_ROLE,
        &c.cluster_id,
        "10.9.9.9:1",
    );
    assert_list_nodes_denied(
        &channel,
        req,
        "remote certificate not part of OUs: [swarm-manager]",
    )
    .await;

    // Its session is its own node's, whatever node the headers name.
    let req = forwarded(
        api::SessionRequest::default(),
        &c.manager_id,
        ca::MANAGER_ROLE,
        &c.cluster_id,
        "10.9.9.9:1",
    );
    assert_eq!(session_node(channel, req).await, w.node_id);
    let node = c.store.view(|tx| tx.get_node(&w.node_id)).expect("node");
    assert_eq!(node.status.expect("status").addr, "127.0.0.1");
}

#[tokio::test]
async fn a_manager_forwards_the_original_callers_identity() {
    let c = start().await;
    let w = worker(&c).await;
    let channel = manager_channel(&c);

    // Forwarded for a worker: Control is refused as it is to the worker itself.
    let req = forwarded(
        api::ListNodesRequest::default(),
        &w.node_id,
        ca::WORKER_ROLE,
        &c.cluster_id,
        "10.1.2.3:4000",
    );
    assert_list_nodes_denied(
        &channel,
        req,
        "remote certificate not part of OUs: [swarm-manager]",
    )
    .await;
    // Forwarded for nobody (a joining node): refused as an anonymous caller.
    let req = forwarded(
        api::ListNodesRequest::default(),
        "",
        "",
        "",
        "10.1.2.3:4000",
    );
    assert_list_nodes_denied(&channel, req, "no client certificates in request").await;
    // Forwarded for a node of another cluster.
    let req = forwarded(
        api::ListNodesRequest::default(),
        "x1",
        ca::MANAGER_ROLE,
        "othercluster",
        "10.1.2.3:4000",
    );
    let want = format!(
        "remote certificate not part of organization: {}",
        c.cluster_id
    );
    assert_list_nodes_denied(&channel, req, &want).await;
    // Forwarded for a manager of this cluster: served.
    let req = forwarded(
        api::ListNodesRequest::default(),
        &c.manager_id,
        ca::MANAGER_ROLE,
        &c.cluster_id,
        "10.1.2.3:4000",
    );
    let nodes = ControlClient::new(channel.clone())
        .list_nodes(req)
        .await
        .expect("forwarded manager");
    assert_eq!(nodes.into_inner().nodes.len(), 2);

    // A worker's session forwarded by a manager is the worker's, at the worker's address.
    let req = forwarded(
        api::SessionRequest::default(),
        &w.node_id,
        ca::WORKER_ROLE,
        &c.cluster_id,
        "10.1.2.3:4000",
    );
    assert_eq!(session_node(channel, req).await, w.node_id);
    let node = c.store.view(|tx| tx.get_node(&w.node_id)).expect("node");
    assert_eq!(node.status.expect("status").addr, "10.1.2.3");
}
