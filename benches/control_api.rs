//! Benchmark (figures printed, nothing asserted): Control API CreateService throughput and
//! latency percentiles with 1, 8 and 64 concurrent clients over the control socket of a real
//! swarmd, and the raft commit rate next to the raw fsync rate of the same disk, measured in the
//! same run. Run with `make bench` (or `cargo bench --bench control_api`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::control_client::ControlClient;
use common::{SWARMD, connect, start_swarmd};
use testkit::fixtures::service_spec;
use tonic::transport::Channel;

/// mimalloc rather than glibc malloc (BUILDING.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests per concurrency level.
const REQUESTS: usize = 640;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Highest raft index seen in the services' versions.
async fn max_index(client: &mut ControlClient<Channel>) -> u64 {
    let resp = client
        .list_services(api::ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner();
    resp.services
        .iter()
        .filter_map(|s| s.meta.as_ref()?.version.as_ref().map(|v| v.index))
        .max()
        .unwrap_or(0)
}

async fn run_level(socket: &Path, clients: usize, level: usize) -> (f64, Duration, Duration, f64) {
    let mut probe = connect(socket).await;
    let index_before = max_index(&mut probe).await;
    let per_client = REQUESTS / clients;
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let socket = socket.to_path_buf();
        handles.push(tokio::spawn(async move {
            let mut client = connect(&socket).await;
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let name = format!("b{level}-{c}-{i}");
                let t = Instant::now();
                client
                    .create_service(api::CreateServiceRequest {
                        spec: Some(service_spec(&name, 1, "busybox:latest")),
                    })
                    .await
                    .expect("create service");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    let index_after = max_index(&mut probe).await;
    all.sort();
    let throughput = all.len() as f64 / elapsed.as_secs_f64();
    let commits = (index_after - index_before) as f64 / elapsed.as_secs_f64();
    (
        throughput,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        commits,
    )
}

/// Raw rate of 4 KiB write + fdatasync on the disk holding `dir`, for `secs` seconds.
fn fsync_rate(dir: &Path, secs: f64) -> f64 {
    let path: PathBuf = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = vec![0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fsync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let _daemon = start_swarmd(dir.path(), "warn", Stdio::inherit());
    let socket = dir.path().join("swarmd.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!("control_api benchmark: {REQUESTS} CreateService calls per level, swarmd {SWARMD}");
    let fsync_before = fsync_rate(dir.path(), 2.0);
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>16}",
        "clients", "creates/s", "p50", "p99", "raft commits/s"
    );
    for (level, clients) in [1usize, 8, 64].into_iter().enumerate() {
        let (tput, p50, p99, commits) = rt.block_on(run_level(&socket, clients, level));
        println!(
            "{clients:>8} {tput:>12.1} {:>10} {:>10} {commits:>16.1}",
            format!("{:.2}ms", p50.as_secs_f64() * 1e3),
            format!("{:.2}ms", p99.as_secs_f64() * 1e3),
        );
    }
    let fsync_after = fsync_rate(dir.path(), 2.0);
    println!(
        "raw fsync rate (4 KiB write + fdatasync, same disk): {:.1}/s before, {:.1}/s after",
        fsync_before, fsync_after
    );
}
