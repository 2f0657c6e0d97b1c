//! Raft membership changes in an in-process cluster of three members talking gRPC over localhost
//! (plaintext; the manager serves the transport behind mutual TLS): removing a follower, the quorum
//! check over reachable voters, the leader removing itself (leadership handover), and removed raft
//! IDs refused afterwards.

use std::time::{Duration, Instant};

use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Vote};
use raft::{RaftNode, Reachability};
use store::MemoryStore;

mod common;
use common::{WAIT, cluster, config, network, wait_until};

async fn write(store: &MemoryStore, id: &str) -> Result<(), store::StoreError> {
    let node = api::Node {
        id: id.into(),
        ..Default::default()
    };
    store.update(move |tx| tx.create_node(node)).await
}

#[tokio::test]
async fn a_removed_follower_leaves_two_voters_and_its_raft_id_is_refused_for_good() {
    let mut m = cluster().await;
    let (leader, gone) = (m[0].node.clone(), m[2].node.raft_id());
    wait_until("every peer answers the leader", || {
        leader.reachability(m[1].node.raft_id()) == Reachability::Reachable
            && leader.reachability(gone) == Reachability::Reachable
    })
    .await;
    assert!(leader.can_remove_member(gone));
    leader.remove_member(gone, WAIT).await.expect("remove");
    let ids: Vec<u64> = leader.members().iter().map(|x| x.raft_id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&gone));
    assert!(leader.is_removed_id(gone));
    let follower = m[1].node.clone();
    wait_until("the follower applies the removal", || {
        follower.is_removed_id(gone) && follower.members().len() == 2
    })
    .await;
    // Two voters still commit writes.
    write(&m[0].store, "after-removal").await.expect("write");

    // The ID is never added again.
    let err = leader
        .add_member(gone, m[2].addr.clone(), WAIT)
        .await
        .expect_err("a removed raft ID must not rejoin");
    assert!(err.to_string().contains(raft::ERR_ID_REMOVED), "{err}");
    assert_eq!(leader.members().len(), 2);

    // Messages from the removed member are refused by the remaining members.
    let mut client = network()
        .new_client(follower.raft_id(), &BasicNode::new(m[1].addr.clone()))
        .await;
    let err = client
        .vote(
            VoteRequest::new(Vote::new(1000, gone), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .expect_err("a removed member's vote request is refused");
    assert!(err.to_string().contains(raft::ERR_MEMBER_REMOVED), "{err}");
    assert!(follower.leader_id() == Some(leader.raft_id()));

    // The record is durable: a restarted member still knows the ID was removed.
    m[1].stop().await;
    let again = RaftNode::start_joining(config(m[1].dir.path()), MemoryStore::new(None), network())
        .await
        .expect("restart");
    assert!(again.is_removed_id(gone));
    assert!(!again.is_removed());
    again.shutdown().await;

    for x in m.iter_mut() {
        x.stop().await;
    }
}

#[tokio::test]
async fn a_stopped_member_is_unreachable_and_removing_another_voter_would_lose_quorum() {
    let mut m = cluster().await;
    let leader = m[0].node.clone();
    let (up, down) = (m[1].node.raft_id(), m[2].node.raft_id());
    wait_until("both peers answer", || {
        leader.reachability(up) == Reachability::Reachable
            && leader.reachability(down) == Reachability::Reachable
    })
    .await;
    m[2].stop().await;
    let stopped = Instant::now();
    wait_until("the stopped member turns unreachable", || {
        leader.reachability(down) == Reachability::Unreachable
    })
    .await;
    // Election timeout is 10 ticks (1 s); allow for heartbeat spacing and a loaded machine.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(leader.reachability(up), Reachability::Reachable);
    // Removing the live follower would leave the leader alone among three voters' worth.
    assert!(!leader.can_remove_member(up));
    let err = leader
        .remove_member(up, WAIT)
        .await
        .expect_err("quorum loss refused");
    assert_eq!(
        err.to_string(),
        format!("raft: {}", raft::ERR_LOSS_OF_QUORUM)
    );
    assert_eq!(leader.members().len(), 3, "nothing changed");
    // Removing the stopped one is fine: two reachable voters remain.
    assert!(leader.can_remove_member(down));
    leader.remove_member(down, WAIT).await.expect("remove down");
    assert_eq!(leader.members().len(), 2);
    // A follower knows no peer's reachability but its leader's.
    assert_eq!(
        m[1].node.reachability(leader.raft_id()),
        Reachability::Reachable
    );
    assert!(!m[1].node.can_remove_member(leader.raft_id()));
    for x in m.iter_mut() {
        x.stop().await;
    }
}

#[tokio::test]
async fn a_leader_that_removes_itself_hands_leadership_to_a_remaining_voter() {
    let mut m = cluster().await;
    let old = m[0].node.clone();
    wait_until("both peers answer", || {
        old.reachability(m[1].node.raft_id()) == Reachability::Reachable
            && old.reachability(m[2].node.raft_id()) == Reachability::Reachable
    })
    .await;
    write(&m[0].store, "before-handover").await.expect("write");
    let started = Instant::now();
    old.remove_member(old.raft_id(), WAIT)
        .await
        .expect("leader removes itself");
    let (a, b) = (m[1].node.clone(), m[2].node.clone());
    wait_until("a remaining voter leads", || a.is_leader() || b.is_leader()).await;
    let handover = started.elapsed();
    let new = if a.is_leader() { 1 } else { 2 };
    let members: Vec<u64> = m[new].node.members().iter().map(|x| x.raft_id).collect();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(!members.contains(&old.raft_id()));
    assert!(m[new].node.is_removed_id(old.raft_id()));
    wait_until("the old leader steps down", || !old.is_leader()).await;
    // The new leader holds every acknowledged write and accepts new ones.
    assert!(
        m[new]
            .store
            .view(|tx| tx.get_node("before-handover").is_some())
    );
    write(&m[new].store, "after-handover")
        .await
        .expect("write through the new leader");
    assert!(write(&m[0].store, "on-the-old-leader").await.is_err());
    eprintln!("leader handover took {handover:?}");
    for x in m.iter_mut() {
        x.stop().await;
    }
}
