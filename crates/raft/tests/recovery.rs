//! Recovery paths of a raft member over the real transport on localhost (plaintext here; the
//! manager serves it behind mutual TLS): a member behind the compacted log catches up from a
//! snapshot, and `force_new_cluster` turns a member of a cluster that lost its quorum into a
//! one-member cluster that keeps every entry of its log.

use std::sync::Arc;
use std::time::Duration;

use raft::{NetworkFactory, RaftConfig, RaftError, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;

mod common;
use common::{WAIT, config, create_node, network, wait_until};

/// A localhost address that was free a moment ago.
async fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Serves `node`'s transport on `addr` until the returned task is aborted.
async fn serve_at(node: &RaftNode, addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let svc = node.transport().into_server();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
}

fn node_ids(store: &MemoryStore) -> Vec<String> {
    let mut ids: Vec<String> = store.view(|tx| {
        tx.find_nodes(store::By::All)
            .into_iter()
            .map(|n| n.id)
            .collect()
    });
    ids.sort();
    ids
}

async fn start(cfg: RaftConfig, store: &MemoryStore, addr: &str) -> Arc<RaftNode> {
    tokio::time::timeout(
        WAIT,
        RaftNode::start(cfg, store.clone(), addr.to_string(), network()),
    )
    .await
    .expect("raft start within bound")
    .expect("raft starts")
}

/// Starts a member over `dir` that joins `leader` and waits until it is a voter.
async fn join(leader: &RaftNode, dir: &std::path::Path, cfg: RaftConfig) -> Joined {
    let store = MemoryStore::new(None);
    let addr = free_addr().await;
    let node = RaftNode::start_joining(
        RaftConfig {
            dir: dir.to_path_buf(),
            keys: common::keys(dir),
            ..cfg
        },
        store.clone(),
        network(),
    )
    .await
    .expect("start joining");
    let server = serve_at(&node, &addr).await;
    leader
        .add_member(node.raft_id(), addr.clone(), WAIT)
        .await
        .expect("add member");
    node.wait_joined(WAIT).await.expect("joined");
    Joined {
        node,
        store,
        addr,
        server,
    }
}

/// A member that joined, with its store, address and transport server.
struct Joined {
    node: Arc<RaftNode>,
    store: MemoryStore,
    addr: String,
    server: tokio::task::JoinHandle<()>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let cfg = RaftConfig {
        snapshot_interval: 20,
        log_entries_for_slow_followers: 5,
        ..config(d1.path())
    };
    let leader_store = MemoryStore::new(None);
    let a1 = free_addr().await;
    let leader = start(cfg.clone(), &leader_store, &a1).await;
    let s1 = serve_at(&leader, &a1).await;
    for i in 0..100 {
        create_node(&leader_store, &format!("obj{i:03}")).await;
    }
    // The log before the snapshot is gone: a new member cannot be sent entries 1.. any more.
    wait_until("a snapshot and a purged log", || {
        let b = leader.log_bounds().expect("bounds");
        b.snapshot_index.is_some() && b.first_index.is_some_and(|f| f > 50)
    })
    .await;
    let first = leader.log_bounds().expect("bounds").first_index;

    let joined = join(&leader, d2.path(), cfg.clone()).await;
    let (follower, follower_store) = (joined.node.clone(), joined.store.clone());
    wait_until("the follower has the leader's store", || {
        node_ids(&follower_store) == node_ids(&leader_store)
    })
    .await;
    assert_eq!(node_ids(&follower_store).len(), 100);
    // It got there through a snapshot: it holds one, and no entry the leader had purged.
    let m = follower.metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "{m:?}");
    let b = follower.log_bounds().expect("bounds");
    assert!(b.snapshot_index.is_some(), "{b:?}");
    assert!(
        b.first_index.is_none_or(|f| Some(f) >= first),
        "follower log {b:?}, leader's first entry {first:?}"
    );
    // And it keeps following.
    create_node(&leader_store, "after").await;
    wait_until("the follower sees a later write", || {
        follower_store.view(|tx| tx.get_node("after").is_some())
    })
    .await;
    follower.shutdown().await;
    leader.shutdown().await;
    s1.abort();
    joined.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_makes_a_follower_lead_alone_with_every_entry() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let cfg = config(d1.path());
    let leader_store = MemoryStore::new(None);
    let a1 = free_addr().await;
    let leader = start(cfg.clone(), &leader_store, &a1).await;
    let s1 = serve_at(&leader, &a1).await;
    let joined = join(&leader, d2.path(), cfg.clone()).await;
    for i in 0..30 {
        create_node(&leader_store, &format!("obj{i:03}")).await;
    }
    let written = node_ids(&leader_store);
    let old_leader = leader.raft_id();
    // The leader is gone for good; the follower alone has no quorum.
    leader.shutdown().await;
    s1.abort();
    joined.node.shutdown().await;
    joined.server.abort();
    let follower_id = joined.node.raft_id();

    let store = MemoryStore::new(None);
    let forced = start(
        RaftConfig {
            dir: d2.path().to_path_buf(),
            force_new_cluster: true,
            keys: common::keys(d2.path()),
            ..cfg.clone()
        },
        &store,
        &joined.addr,
    )
    .await;
    assert_eq!(forced.raft_id(), follower_id);
    wait_until("the forced member leads", || forced.is_leader()).await;
    let members = forced.members();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].raft_id, follower_id);
    assert!(members[0].voter && members.iter().all(|m| m.raft_id != old_leader));
    wait_until("every write is in the store", || {
        node_ids(&store) == written
    })
    .await;
    create_node(&store, "after-force").await;
    forced.shutdown().await;

    // A plain restart afterwards stays a one-member cluster with everything.
    let again = MemoryStore::new(None);
    let node = start(
        RaftConfig {
            dir: d2.path().to_path_buf(),
            keys: common::keys(d2.path()),
            ..cfg
        },
        &again,
        &joined.addr,
    )
    .await;
    wait_until("restart leads", || node.is_leader()).await;
    wait_until("restart has every write", || {
        node_ids(&again).len() == written.len() + 1
    })
    .await;
    assert_eq!(node.members().len(), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn force_new_cluster_refuses_an_empty_raft_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = RaftNode::start(
        RaftConfig {
            force_new_cluster: true,
            ..config(dir.path())
        },
        MemoryStore::new(None),
        "127.0.0.1:1".into(),
        NetworkFactory::unconnected(),
    )
    .await
    .expect_err("nothing to recover");
    assert!(matches!(err, RaftError::ForceNewCluster(_)), "{err}");
    assert!(err.to_string().contains("holds no cluster state"), "{err}");
    let err = RaftNode::start_joining(
        RaftConfig {
            force_new_cluster: true,
            ..config(dir.path())
        },
        MemoryStore::new(None),
        NetworkFactory::unconnected(),
    )
    .await
    .expect_err("a joining member has nothing to recover");
    assert!(matches!(err, RaftError::ForceNewCluster(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_objects_raft_settings_drive_snapshots_and_compaction() {
    let dir = tempfile::tempdir().expect("tmp");
    // The start-up values would not snapshot within this test.
    let store = MemoryStore::new(None);
    let node = start(config(dir.path()), &store, "127.0.0.1:1").await;
    for i in 0..40 {
        create_node(&store, &format!("before{i:02}")).await;
    }
    // Nothing may happen here: the time a (wrong) snapshot would need to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.log_bounds().expect("bounds").snapshot_index, None);

    // As SwarmKit, the cluster object's Spec.Raft is read as entries are applied.
    let cluster = api::Cluster {
        id: "c1".into(),
        spec: Some(api::ClusterSpec {
            annotations: Some(api::Annotations {
                name: "default".into(),
                ..Default::default()
            }),
            raft: Some(api::RaftConfig {
                snapshot_interval: 20,
                log_entries_for_slow_followers: 5,
                keep_old_snapshots: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .update(move |tx| tx.create_cluster(cluster))
        .await
        .expect("create cluster");
    for i in 0..80 {
        create_node(&store, &format!("after{i:02}")).await;
    }
    let last = store.view(|tx| {
        tx.get_node("after79")
            .and_then(|n| n.meta)
            .and_then(|m| m.version)
            .map(|v| v.index)
            .expect("version")
    });
    wait_until(
        "a snapshot within 20 entries of the end and the log purged behind it",
        || {
            let b = node.log_bounds().expect("bounds");
            b.snapshot_index.is_some_and(|s| s + 20 >= last)
                && b.last_purged_index
                    .is_some_and(|p| p + 5 == b.snapshot_index.unwrap_or(0))
        },
    )
    .await;
    // KeepOldSnapshots 2: the two snapshots before the current one stay, older ones go.
    wait_until("two old snapshots kept", || {
        node.log_bounds()
            .expect("bounds")
            .old_snapshot_indexes
            .len()
            == 2
    })
    .await;
    let b = node.log_bounds().expect("bounds");
    assert!(
        b.old_snapshot_indexes
            .iter()
            .all(|i| *i < b.snapshot_index.expect("snapshot")),
        "{b:?}"
    );
    node.shutdown().await;
}
