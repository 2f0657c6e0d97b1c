//! Benchmark (figures printed, nothing asserted): what encryption at rest costs the write path.
//! The same store writes (CreateService of a 1-replica service, as the control API makes them)
//! go through raft to a redb log and are applied, once with the raft database plain and once
//! encrypted (ChaCha20-Poly1305 under a data key, as every manager runs), the two modes taking
//! turns in each run (the first one alternating between runs) so that both see the same machine:
//! - one member: serial writes (`BENCH_SERIAL`, 500), then 64 concurrent writers
//!   (`BENCH_CONCURRENT`, 2000 writes in all): writes/s and the serial p50;
//! - three members on loopback (plaintext transport, 50 ms ticks): serial writes on the leader
//!   (`BENCH_HA_SERIAL`, 200).
//!
//! Each figure is the median of `BENCH_RUNS` runs (3). Last comes a table: metric | plain |
//! encrypted | encrypted / plain | within 10%?
//!
//! Run with `cargo bench -p raft --bench encryption`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::{KeySource, RaftConfig, RaftNode};
use store::MemoryStore;
use testkit::fixtures::service_spec;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A member over `dir` with 50 ms ticks and no data keys: the database stays plain.
fn plain(dir: &std::path::Path) -> RaftConfig {
    RaftConfig {
        keys: KeySource::default(),
        ..common::config(dir)
    }
}

/// The same with its data keys (as a manager always runs).
fn encrypted(dir: &std::path::Path) -> RaftConfig {
    common::config(dir)
}

/// One write as the control API's CreateService makes it.
async fn create_service(store: &MemoryStore, n: usize) {
    let service = api::Service {
        id: format!("svc{n:07}bench{n:013}"),
        spec: Some(service_spec(&format!("bench-{n}"), 1, "busybox:latest")),
        ..Default::default()
    };
    tokio::time::timeout(
        common::WAIT,
        store.update(move |tx| tx.create_service(service)),
    )
    .await
    .expect("write within bound")
    .expect("write succeeds");
}

/// Serial writes: (writes/s, p50).
async fn serial(store: &MemoryStore, count: usize, first: usize) -> (f64, Duration) {
    let mut took = Vec::with_capacity(count);
    let start = Instant::now();
    for n in first..first + count {
        let t = Instant::now();
        create_service(store, n).await;
        took.push(t.elapsed());
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    took.sort();
    (rate, took[took.len() / 2])
}

/// `count` writes from 64 concurrent writers: writes/s.
async fn concurrent(store: &MemoryStore, count: usize, first: usize) -> f64 {
    const WRITERS: usize = 64;
    let start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let mut n = first + w;
            while n < first + count {
                create_service(&store, n).await;
                n += WRITERS;
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// One member: (serial writes/s, serial p50, concurrent writes/s).
async fn single(config: fn(&std::path::Path) -> RaftConfig) -> (f64, Duration, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MemoryStore::new(None);
    let node: Arc<RaftNode> = RaftNode::start(
        config(dir.path()),
        store.clone(),
        "127.0.0.1:1".into(),
        common::network(),
    )
    .await
    .expect("raft starts");
    let n_serial = env_usize("BENCH_SERIAL", 500);
    let (rate, p50) = serial(&store, n_serial, 0).await;
    let conc = concurrent(&store, env_usize("BENCH_CONCURRENT", 2000), n_serial).await;
    node.shutdown().await;
    (rate, p50, conc)
}

/// Three members: serial writes/s on the leader.
async fn three(config: fn(&std::path::Path) -> RaftConfig) -> f64 {
    let mut members = common::cluster_with(config).await;
    let (rate, _) = serial(&members[0].store, env_usize("BENCH_HA_SERIAL", 200), 0).await;
    for m in &mut members {
        m.stop().await;
    }
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("raft encryption benchmark: {runs} run(s), plain and encrypted taking turns");
    // metric -> (plain figures, encrypted figures)
    let mut figures: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("1 member, serial writes/s", vec![], vec![]),
        ("1 member, serial p50 (ms)", vec![], vec![]),
        ("1 member, 64 writers, writes/s", vec![], vec![]),
        ("3 members, serial writes/s on the leader", vec![], vec![]),
    ];
    for run in 1..=runs {
        let mut modes = [
            ("plain", plain as fn(&std::path::Path) -> RaftConfig),
            ("encrypted", encrypted),
        ];
        // Who goes first changes each run, so neither mode always meets a cold cache.
        if run % 2 == 0 {
            modes.reverse();
        }
        for (mode, config) in modes {
            let (rate, p50, conc) = rt.block_on(single(config));
            let ha = rt.block_on(three(config));
            println!(
                "run {run} {mode:>9}: serial {rate:.0}/s p50 {:.2} ms; 64 writers {conc:.0}/s; 3 members serial {ha:.0}/s",
                p50.as_secs_f64() * 1000.0
            );
            let values = [rate, p50.as_secs_f64() * 1000.0, conc, ha];
            for (row, v) in figures.iter_mut().zip(values) {
                if mode == "plain" {
                    row.1.push(v);
                } else {
                    row.2.push(v);
                }
            }
        }
    }
    println!();
    println!("| metric | plain | encrypted | encrypted / plain | within 10%? |");
    println!("|---|---|---|---|---|");
    for (name, p, e) in figures {
        let (p, e) = (median(p), median(e));
        let ratio = e / p;
        // For a latency lower is better, for a rate higher is.
        let within = if name.contains("p50") {
            ratio <= 1.10
        } else {
            ratio >= 0.90
        };
        println!(
            "| {name} | {p:.2} | {e:.2} | {ratio:.3} | {} |",
            if within { "yes" } else { "no" }
        );
    }
}
