//! Elections in an in-process cluster of three members over localhost gRPC: round after round
//! the leader goes away and its address blackholes connections (accepted, never answered), and
//! a follower campaigns and wins within the bound, never after two split votes in a row; the old
//! leader then restarts on its address and rejoins as a follower.

use std::time::{Duration, Instant};

use raft::{RaftConfig, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;

mod common;
use common::{Member, WAIT, cluster_with, create_node, network, serve, wait_until};

/// 100 ms ticks: election timeout E = 1 s, heartbeat 100 ms.
fn config(dir: &std::path::Path) -> RaftConfig {
    RaftConfig {
        dir: dir.to_path_buf(),
        tick: Duration::from_millis(100),
        keys: common::keys(dir),
        ..Default::default()
    }
}

/// Accepts connections on `addr` and holds them without a word, until dropped.
async fn blackhole(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the dead leader's address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    })
}

/// The index of the member that leads, once one does and every running member agrees.
async fn agreed_leader(m: &[Member]) -> usize {
    let leader = std::sync::Mutex::new(None);
    wait_until("every member follows one leader", || {
        let ids: Vec<Option<u64>> = m.iter().map(|x| x.node.leader_id()).collect();
        let l = m.iter().position(|x| x.node.is_leader());
        let agreed = l.is_some_and(|l| ids.iter().all(|i| *i == Some(m[l].node.raft_id())));
        *leader.lock().expect("lock") = l;
        agreed
    })
    .await;
    leader.into_inner().expect("lock").expect("a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wins_within_the_bound_when_the_dead_leader_blackholes() {
    let mut m = cluster_with(config).await;
    let cfg = config(std::path::Path::new("/"));
    let e = cfg.election_timeout();
    // A campaign starts within 1.5 E of the last heartbeat. A member restarted in the round
    // before may lag: refused for its shorter log, or refusing a campaign at its own term, the
    // other campaigns again at once above it, or within 1.5 E of its last campaign if it began
    // before the lease ran out. A second split in a row would need a third campaign, at least
    // 3 E after the leader went silent.
    let bound = e * 5 / 2;
    let mut times = Vec::new();
    let mut terms = Vec::new();
    for round in 0..8 {
        let l = agreed_leader(&m).await;
        create_node(&m[l].store, &format!("before-kill-{round}")).await;
        let old_term = m[l].node.metrics().borrow().current_term;
        m[l].stop().await;
        let hole = blackhole(&m[l].addr).await;
        let killed = Instant::now();
        let others: Vec<usize> = (0..m.len()).filter(|&i| i != l).collect();
        let winner = std::sync::Mutex::new(None);
        wait_until("a new leader among the others", || {
            let w = others.iter().copied().find(|&i| m[i].node.is_leader());
            *winner.lock().expect("lock") = w;
            w.is_some()
        })
        .await;
        let took = killed.elapsed();
        let w = winner.into_inner().expect("lock").expect("winner");
        let term = m[w].node.metrics().borrow().current_term;
        times.push(took);
        terms.push(term - old_term);
        assert!(
            took <= bound,
            "round {round}: no leader for {took:?} after the leader died (bound {bound:?}); terms {old_term} -> {term}"
        );
        // The new leader commits.
        create_node(&m[w].store, &format!("after-kill-{round}")).await;

        // The old leader restarts on its address and follows.
        hole.abort();
        let _ = hole.await;
        let store = MemoryStore::new(None);
        let node = tokio::time::timeout(
            WAIT,
            RaftNode::open_member(
                &config(m[l].dir.path()),
                store.clone(),
                m[l].addr.clone(),
                network(),
            ),
        )
        .await
        .expect("bounded")
        .expect("reopen");
        let listener = TcpListener::bind(&m[l].addr).await.expect("rebind");
        m[l].stop_server = Some(serve(&node, listener));
        m[l].node = node;
        m[l].store = store;
    }
    println!("failover times {times:?}, terms per failover {terms:?}");
    for member in &mut m {
        member.stop().await;
    }
}

/// A follower cut off from the leader lags behind and campaigns in vain at ever higher terms;
/// it comes back just as the leader dies. Its vote requests, at terms above the other
/// follower's, are refused for its shorter log: the other follower campaigns at once above them
/// and wins, with every entry, and the lagging one follows. (openraft's own timer made the
/// refusing member campaign later at the candidate's very term, a split vote, and the refused one
/// wait two leases more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_with_a_higher_term_does_not_stall_the_failover() {
    let mut m = cluster_with(config).await;
    let e = config(std::path::Path::new("/")).election_timeout();
    let l = agreed_leader(&m).await;
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    // `a` hears nothing more (its raft runs and still reaches the others).
    if let Some(tx) = m[a].stop_server.take() {
        let _ = tx.send(());
    }
    for i in 0..5 {
        create_node(&m[l].store, &format!("while-lagging-{i}")).await;
    }
    let term = m[l].node.metrics().borrow().current_term;
    let lagging = m[a].node.clone();
    wait_until(
        "the cut-off follower campaigns above the leader's term",
        || lagging.metrics().borrow().current_term > term,
    )
    .await;
    assert!(m[l].node.is_leader(), "the lease keeps the leader in place");
    m[l].stop().await;
    let killed = Instant::now();
    let listener = TcpListener::bind(&m[a].addr).await.expect("rebind");
    m[a].stop_server = Some(serve(&m[a].node, listener));
    let winner = m[b].node.clone();
    wait_until("the follower with every entry leads", || winner.is_leader()).await;
    let took = killed.elapsed();
    println!("failover with a lagging follower: {took:?}");
    // `a` campaigns up to 1.5 E after its last vain campaign, while `b`'s lease may still refuse
    // it; then `b` campaigns within 1.5 E of the leader's death, above `a`'s term once it knows
    // it. A second split in a row would take at least 3 E.
    assert!(took <= e * 5 / 2, "no leader for {took:?}");
    create_node(&m[b].store, "after-failover").await;
    let follower = m[a].store.clone();
    wait_until("the lagging follower catches up", || {
        follower.view(|tx| {
            tx.get_node("after-failover").is_some() && tx.get_node("while-lagging-4").is_some()
        })
    })
    .await;
    for member in &mut m {
        member.stop().await;
    }
}
