//! End-to-end tests of a single-voter `RaftNode` over a real `MemoryStore`: restart replay,
//! snapshot plus log compaction across a restart, and durability of acknowledged writes when the
//! process is killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft::{NetworkFactory, RaftConfig, RaftNode};
use store::MemoryStore;

mod common;
use common::{WAIT, create_node, wait_until};

fn config(dir: &Path, snapshot_interval: u64, keep: u64) -> RaftConfig {
    RaftConfig {
        dir: dir.to_path_buf(),
        snapshot_interval,
        log_entries_for_slow_followers: keep,
        tick: Duration::from_millis(50),
        election_tick: 10,
        heartbeat_tick: 1,
        force_new_cluster: false,
        keys: common::keys(dir),
    }
}

async fn start(cfg: RaftConfig, store: &MemoryStore) -> Arc<RaftNode> {
    tokio::time::timeout(
        WAIT,
        RaftNode::start(
            cfg,
            store.clone(),
            "127.0.0.1:4242".into(),
            NetworkFactory::unconnected(),
        ),
    )
    .await
    .expect("raft start within bound")
    .expect("raft starts")
}

fn version(store: &MemoryStore, id: &str) -> Option<u64> {
    store.view(|tx| {
        tx.get_node(id)
            .map(|n| n.meta.and_then(|m| m.version).map_or(0, |v| v.index))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_the_log_into_a_fresh_store() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("raft");
    let cfg = config(&dir, 10_000, 500);

    let store = MemoryStore::new(None);
    let node = start(cfg.clone(), &store).await;
    assert!(node.is_leader());
    assert_eq!(node.leader_id(), Some(node.raft_id()));
    let raft_id = node.raft_id();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(raft::DB_FILE)), 0o600);

    let ids: Vec<String> = (0..30).map(|i| format!("node{i:03}")).collect();
    for id in &ids {
        create_node(&store, id).await;
    }
    let before: Vec<u64> = ids
        .iter()
        .map(|id| version(&store, id).expect("written node present"))
        .collect();
    assert!(
        before.windows(2).all(|w| w[0] < w[1]),
        "versions increase: {before:?}"
    );
    node.shutdown().await;
    // A stopped core leads nothing, although its role's metrics keep their last values.
    assert!(!node.is_leader());
    assert_eq!(node.leader_id(), None);

    let err = tokio::time::timeout(
        WAIT,
        store.update(|tx| {
            tx.create_node(api::Node {
                id: "late".into(),
                ..Default::default()
            })
        }),
    )
    .await
    .expect("bounded");
    assert!(err.is_err(), "a write after shutdown must fail");

    let fresh = MemoryStore::new(None);
    let node = start(cfg, &fresh).await;
    assert_eq!(node.raft_id(), raft_id, "raft ID is persisted");
    for (id, v) in ids.iter().zip(&before) {
        assert_eq!(version(&fresh, id), Some(*v), "{id} after restart");
    }
    assert_eq!(version(&fresh, "late"), None);
    // The restarted member keeps taking writes, after the replayed ones.
    create_node(&fresh, "after").await;
    assert!(version(&fresh, "after").expect("present") > *before.last().expect("some"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_compacts_the_log_and_restart_restores_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("raft");
    let cfg = config(&dir, 20, 5);

    let store = MemoryStore::new(None);
    let node = start(cfg.clone(), &store).await;
    let ids: Vec<String> = (0..100).map(|i| format!("obj{i:03}")).collect();
    for id in &ids {
        create_node(&store, id).await;
    }
    let before: Vec<u64> = ids
        .iter()
        .map(|id| version(&store, id).expect("present"))
        .collect();
    let last = *before.last().expect("some");
    // Snapshots are built in the background: wait for one covering most of the writes and for
    // the log before it (minus the entries kept for slow followers) to be gone from disk.
    wait_until("a snapshot and a purged log", || {
        let b = node.log_bounds().expect("log bounds");
        b.snapshot_index.is_some_and(|s| s + 20 >= last) && b.first_index.is_some_and(|f| f > 50)
    })
    .await;
    let bounds = node.log_bounds().expect("log bounds");
    assert_eq!(
        bounds.first_index,
        bounds.last_purged_index.map(|p| p + 1),
        "{bounds:?}"
    );
    assert!(bounds.snapshot_index.expect("snapshot") >= bounds.last_purged_index.expect("purged"));
    // No cluster object, so SwarmKit's default KeepOldSnapshots 0: only the latest snapshot.
    assert!(bounds.old_snapshot_indexes.is_empty(), "{bounds:?}");
    let m = node.metrics().borrow().clone();
    assert!(m.snapshot.is_some() && m.purged.is_some(), "{m:?}");
    node.shutdown().await;

    let fresh = MemoryStore::new(None);
    let node = start(cfg, &fresh).await;
    for (id, v) in ids.iter().zip(&before) {
        assert_eq!(version(&fresh, id), Some(*v), "{id} after restart");
    }
    let after = node.log_bounds().expect("log bounds");
    assert!(after.first_index.expect("log kept") > 1, "{after:?}");
    assert!(after.last_purged_index.is_some(), "{after:?}");
    node.shutdown().await;
}

/// Set in the child process: the raft directory the writer uses.
const WRITER_DIR_ENV: &str = "RAFT_TEST_SIGKILL_WRITER_DIR";
/// Acknowledged writes the parent reads before it kills the writer.
const ACKS_BEFORE_KILL: usize = 40;

#[test]
fn sigkill_loses_no_acknowledged_write() {
    if let Some(dir) = std::env::var_os(WRITER_DIR_ENV) {
        run_writer(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("raft");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sigkill_loses_no_acknowledged_write",
            "--nocapture",
        ])
        .env(WRITER_DIR_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ack ")
                && tx.send(id.to_string()).is_err()
            {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = Instant::now() + WAIT;
    while acked.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(id) => acked.push(id),
            Err(e) => {
                let _ = child.kill();
                panic!("writer gave {} acks before {e:?}", acked.len());
            }
        }
    }
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap the writer");
    // Acks printed between the last read and the kill count too.
    acked.extend(rx.try_iter());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = MemoryStore::new(None);
        let node = start(config(&dir, 10_000, 500), &store).await;
        for id in &acked {
            assert!(version(&store, id).is_some(), "acknowledged {id} lost");
        }
        node.shutdown().await;
    });
}

/// Child mode: writes objects until killed (bounded by a deadline), printing `ack <id>` after
/// each acknowledged write.
fn run_writer(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = MemoryStore::new(None);
        let _node = start(config(dir, 10_000, 500), &store).await;
        let deadline = Instant::now() + WAIT * 2;
        let mut i = 0u64;
        while Instant::now() < deadline {
            let id = format!("w{i:06}");
            create_node(&store, &id).await;
            println!("ack {id}");
            i += 1;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_refuses_a_proposal_over_the_transaction_limit() {
    use store::Proposer;
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = MemoryStore::new(None);
    let node = start(config(&tmp.path().join("raft"), 10_000, 500), &store).await;
    let action = |len: usize| api::StoreAction {
        action: api::StoreActionKind::StoreActionCreate as i32,
        target: Some(api::store_action::Target::Config(api::Config {
            id: "c".into(),
            spec: Some(api::ConfigSpec {
                data: vec![b'x'; len],
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    // The data length whose entry is exactly the limit.
    let mut len = store::MAX_TRANSACTION_BYTES;
    while store::proposal_len(&[action(len)]) > store::MAX_TRANSACTION_BYTES {
        len -= 1;
    }
    assert_eq!(
        store::proposal_len(&[action(len)]),
        store::MAX_TRANSACTION_BYTES
    );
    let before = store.last_index();
    let err = node
        .propose(vec![action(len + 1)])
        .await
        .expect_err("one byte over");
    assert_eq!(err, store::ProposeError::TooLarge);
    assert_eq!(
        err.to_string(),
        "raft: raft message is too large and can't be sent"
    );
    assert_eq!(store.last_index(), before, "nothing proposed");
    node.propose(vec![action(len)])
        .await
        .expect("exactly the limit");
    assert_eq!(store.view(|tx| tx.count::<api::Config>()), 1);
    node.shutdown().await;
}
