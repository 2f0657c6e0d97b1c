//! The raft transport over a real gRPC server on localhost (plaintext here; the manager serves
//! it behind mutual TLS): a peer's RPCs reach the member and its answers come back.

use std::time::Duration;

use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::{BasicNode, Vote};
use raft::{NetworkFactory, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;

mod common;
use common::{config, plain_dialer};

const WAIT: Duration = Duration::from_secs(20);

/// Serves `node`'s transport on a fresh localhost port; returns the address.
async fn serve(node: &RaftNode) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let svc = node.transport().into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    addr
}

#[tokio::test]
async fn a_vote_from_a_stale_candidate_is_answered_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MemoryStore::new(None);
    let node = tokio::time::timeout(
        WAIT,
        RaftNode::start(
            config(dir.path()),
            store,
            "127.0.0.1:1".into(),
            NetworkFactory::unconnected(),
        ),
    )
    .await
    .expect("bounded")
    .expect("start");
    let addr = serve(&node).await;
    let mut client = NetworkFactory::new(plain_dialer())
        .new_client(0x99, &BasicNode::new(addr))
        .await;
    let resp = tokio::time::timeout(
        WAIT,
        client.vote(
            VoteRequest::new(Vote::new(0, 0x99), None),
            RPCOption::new(Duration::from_secs(5)),
        ),
    )
    .await
    .expect("bounded")
    .expect("the member answers");
    assert!(
        !resp.vote_granted,
        "a term-0 candidate must not get the vote"
    );
    assert_eq!(resp.vote.leader_id().voted_for(), Some(node.raft_id()));

    // An append from a stale leader is answered with the member's higher vote.
    let resp = client
        .append_entries(
            AppendEntriesRequest {
                vote: Vote::new_committed(0, 0x99),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            },
            RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .expect("the member answers");
    assert!(
        matches!(resp, AppendEntriesResponse::HigherVote(_)),
        "{resp:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_joining_member_becomes_a_voter_and_receives_the_store() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (s1, s2) = (MemoryStore::new(None), MemoryStore::new(None));
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a1 = l1.local_addr().expect("addr").to_string();
    drop(l1);
    let n1 = tokio::time::timeout(
        WAIT,
        RaftNode::start(
            config(d1.path()),
            s1.clone(),
            a1.clone(),
            NetworkFactory::new(plain_dialer()),
        ),
    )
    .await
    .expect("bounded")
    .expect("start");
    // A write before the join reaches the new member through replication.
    let before = api::Node {
        id: "before".into(),
        ..Default::default()
    };
    s1.update(move |tx| tx.create_node(before))
        .await
        .expect("write");
    let _ = serve_at(&n1, &a1).await;
    let n2 = RaftNode::start_joining(
        config(d2.path()),
        s2.clone(),
        NetworkFactory::new(plain_dialer()),
    )
    .await
    .expect("start joining");
    let a2 = serve(&n2).await;
    n1.add_member(n2.raft_id(), a2, WAIT)
        .await
        .expect("add member");
    n2.wait_joined(WAIT).await.expect("joined");
    let members = n1.members();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m.voter), "{members:?}");
    assert_eq!(n2.leader_id(), Some(n1.raft_id()));
    assert!(n1.is_leader() && !n2.is_leader());

    let after = api::Node {
        id: "after".into(),
        ..Default::default()
    };
    s1.update(move |tx| tx.create_node(after))
        .await
        .expect("write with two voters");
    testkit::wait_for(WAIT, &s2, "the follower store to catch up", |tx| {
        (tx.get_node("before").is_some() && tx.get_node("after").is_some()).then_some(())
    })
    .await;
    // The follower cannot propose.
    let x = api::Node {
        id: "x".into(),
        ..Default::default()
    };
    assert!(s2.update(move |tx| tx.create_node(x)).await.is_err());
    n2.shutdown().await;
    n1.shutdown().await;
}

/// Serves `node`'s transport on `addr` (a port just freed).
async fn serve_at(node: &RaftNode, addr: &str) -> String {
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let svc = node.transport().into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    addr.to_string()
}
