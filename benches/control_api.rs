//! Benchmark (figures printed, nothing asserted): CreateService of a 1-replica service over the
//! control socket from a tonic client (TLS over the unix socket), every node drained first so that
//! tasks stay PENDING, against our swarmd and, when `SWARMKIT_REF_BIN` names SwarmKit's build
//! folder, against SwarmKit's: each side alone on the machine, one after the other, in one run.
//!
//! Phases (`BENCH_PHASES`, a comma-separated subset of `single,growth,ha`; all by default):
//! - single: one manager; 1, 8 and 64 clients making `BENCH_REQUESTS` creates each (1000):
//!   creates/s, p50, p99 and the manager's CPU per create (utime + stime from /proc over the
//!   level and until the manager is idle again); the raft entries/s at each level (the raft index
//!   is the services' meta.version; entries carry the orchestrator's and allocator's writes too)
//!   and creates per entry, next to the raw rate of 4 KiB write + fdatasync on the same disk,
//!   measured in the same run. `BENCH_STRACE=1` also counts the
//!   manager's fsync and fdatasync calls over the 64-client level with strace (which slows it).
//! - growth: serial creates on a new manager up to `BENCH_GROWTH_SERVICES` services (10000; 0
//!   skips the phase): the p50 of the last 100 creates over the p50 of the first 100. With
//!   `BENCH_GROWTH_NETWORK=1` every service is attached to one overlay network made first
//!   (CreateNetwork, driver overlay, 10.128.0.0/16 or larger when needed) with endpoint mode
//!   VIP, so each gets a VIP; at the end it says how many services have one.
//! - ha: three managers on loopback; serial and 8 clients (`BENCH_HA_REQUESTS` creates, 300) on
//!   the leader's socket, then on a follower's, which forwards to the leader.
//!
//! Each figure is the median of `BENCH_RUNS` runs (2), each on new managers. Last comes a table:
//! metric | ours | SwarmKit | ratio (ours / SwarmKit) | target (the issue's) | met?.
//! `BENCH_PERF=<file>` records a perf profile (call graphs) of our manager over the serial level
//! of the first run (BUILDING.md, "Benchmarks").
//!
//! Run with `make bench` or `SWARMKIT_REF_BIN=/work/ref/bin cargo bench --bench control_api`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::control_client::ControlClient;
use common::{
    Cluster, Figures, Flavor, Row, Target, Tracer, Usage, connect, env_u64, print_table, runs,
    settle,
};
use testkit::fixtures::service_spec;
use tonic::transport::Channel;

/// mimalloc rather than glibc malloc (BUILDING.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concurrent clients of the single-manager levels.
const LEVELS: [usize; 3] = [1, 8, 64];
/// Concurrent clients of the three-manager levels.
const HA_LEVELS: [usize; 2] = [1, 8];
/// Creates whose p50 the growth phase compares, at its start and at its end.
const GROWTH_WINDOW: usize = 100;
/// Target of the growth ratio: within 10 %.
const GROWTH_TARGET: f64 = 1.10;

struct Config {
    requests: usize,
    ha_requests: usize,
    growth_services: usize,
    /// Growth with every service attached to one overlay network, so each gets a VIP
    /// (`BENCH_GROWTH_NETWORK=1`).
    growth_network: bool,
    strace: bool,
    perf: Option<PathBuf>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

fn p50(lat: &[Duration]) -> f64 {
    let mut sorted = lat.to_vec();
    sorted.sort();
    percentile(&sorted, 0.5)
}

/// Highest raft index among the services' versions.
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

/// `total` CreateService calls spread over `clients` clients on `socket` (each connected before
/// the clock starts), services named `prefix-<client>-<i>`, attached to `network` when given:
/// their latencies, client by client in call order, and the wall time.
async fn creates(
    socket: &Path,
    clients: usize,
    total: usize,
    prefix: &str,
    network: Option<&str>,
) -> (Vec<Duration>, Duration) {
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(connect(socket).await);
    }
    let start = Instant::now();
    let mut handles = Vec::with_capacity(clients);
    for (c, mut client) in connected.into_iter().enumerate() {
        let n = total / clients + usize::from(c < total % clients);
        let prefix = format!("{prefix}-{c}");
        let network = network.map(str::to_string);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let mut spec = service_spec(&format!("{prefix}-{i}"), 1, "busybox:latest");
                if let Some(network) = &network {
                    spec = common::attached(spec, network);
                }
                let t = Instant::now();
                client
                    .create_service(api::CreateServiceRequest { spec: Some(spec) })
                    .await
                    .expect("create service");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for h in handles {
        all.extend(h.await.expect("client task"));
    }
    (all, start.elapsed())
}

/// Raw rate of 4 KiB write + fdatasync on the disk holding `dir`, for `secs` seconds.
fn fsync_rate(dir: &Path, secs: f64) -> f64 {
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
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

/// fsync and fdatasync calls in an `strace -c` summary.
fn strace_syncs(summary: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.last() {
                Some(&"fsync") | Some(&"fdatasync") => f.get(3)?.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

fn level_name(managers: &str, clients: usize) -> String {
    let s = if clients == 1 { "" } else { "s" };
    format!("{managers}, {clients} client{s}")
}

/// One manager: the creates of each level, then the manager's CPU over all of them.
async fn single(cfg: &Config, flavor: &Flavor, perf: bool, figures: &mut Figures) {
    let cluster = Cluster::start(flavor, 1)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flavor.name()));
    let m = &cluster.managers[0];
    let pid = m.pid();
    let mut probe = connect(&m.socket).await;
    let (mut cpu_total, mut creates_total) = (0.0, 0);
    for clients in LEVELS {
        let name = level_name("1 manager", clients);
        let index_before = max_index(&mut probe).await;
        let strace = (cfg.strace && clients == 64).then(|| {
            let out = cluster.dir.path().join("strace.out");
            let args = ["-c", "-f", "-e", "trace=fsync,fdatasync", "-p", &pid, "-o"];
            let mut args: Vec<&str> = args.to_vec();
            let out_str = out.to_string_lossy().into_owned();
            args.push(&out_str);
            let t = Tracer::start("strace", &args, cluster.dir.path(), |e| {
                e.contains("attached")
            });
            (t, out)
        });
        let perf = (perf && clients == 1).then(|| {
            common::perf_record(
                &pid,
                cfg.perf.as_ref().expect("perf output"),
                cluster.dir.path(),
            )
        });
        let usage = Usage::begin(&pid);
        let (lat, elapsed) = creates(
            &m.socket,
            clients,
            cfg.requests,
            &format!("s{clients}"),
            None,
        )
        .await;
        let index_after = max_index(&mut probe).await;
        settle(&pid).await;
        let cpu = usage.end().cpu();
        // Stopped now, so that it records none of the next level; said after the level's line.
        let perf_note =
            perf.map(|t| t.stop_perf(cfg.perf.as_ref().expect("perf output"), "that level"));
        let n = lat.len();
        let mut sorted = lat;
        sorted.sort();
        let rate = n as f64 / elapsed.as_secs_f64();
        let (p50, p99) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99));
        let cpu_ms = cpu * 1e3 / n as f64;
        cpu_total += cpu;
        creates_total += n;
        figures.add(flavor, &format!("{name}: creates/s"), rate);
        figures.add(flavor, &format!("{name}: p50 ms"), p50);
        figures.add(flavor, &format!("{name}: p99 ms"), p99);
        figures.add(flavor, &format!("{name}: manager CPU ms/create"), cpu_ms);
        let mut line = format!(
            "  {}, {name}: {rate:.1} creates/s, p50 {p50:.2} ms, p99 {p99:.2} ms, manager CPU {cpu_ms:.3} ms/create",
            flavor.name()
        );
        let entries = index_after.saturating_sub(index_before).max(1) as f64;
        let per_s = entries / elapsed.as_secs_f64();
        figures.add(flavor, &format!("{name}: raft entries/s"), per_s);
        figures.add(
            flavor,
            &format!("{name}: creates per raft entry"),
            n as f64 / entries,
        );
        line += &format!(
            ", {per_s:.1} raft entries/s, {:.2} creates per entry",
            n as f64 / entries
        );
        if let Some((t, out)) = strace {
            let err = t.stop();
            let summary = std::fs::read_to_string(&out).unwrap_or_default();
            let syncs = strace_syncs(&summary);
            if syncs == 0 {
                line += &format!(", strace counted no fsync ({})", err.trim());
            } else {
                let (syncs, n) = (syncs as f64, n as f64);
                figures.add(
                    flavor,
                    &format!("{name}: creates per fsync (strace)"),
                    n / syncs,
                );
                let per_fsync = entries / syncs;
                figures.add(
                    flavor,
                    &format!("{name}: raft entries per fsync (strace)"),
                    per_fsync,
                );
                line += &format!(", {syncs} fsync+fdatasync calls (strace)");
            }
        }
        println!("{line}");
        if let Some(note) = perf_note {
            println!("{note}");
        }
    }
    figures.add(
        flavor,
        "1 manager, all levels: manager CPU ms/create",
        cpu_total * 1e3 / creates_total as f64,
    );
}

/// Serial creates on a new manager up to `cfg.growth_services` services, each attached to one
/// overlay network when `cfg.growth_network` (created first, with room for a VIP and a task
/// address per service: a /16, or larger when needed).
async fn growth(cfg: &Config, flavor: &Flavor, figures: &mut Figures) {
    let cluster = Cluster::start(flavor, 1)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flavor.name()));
    let total = cfg.growth_services;
    let socket = &cluster.managers[0].socket;
    let mut control = connect(socket).await;
    let network = if cfg.growth_network {
        let prefix = common::prefix_for(2 * total as u64, 16).max(9);
        let subnet = format!("10.128.0.0/{prefix}");
        let id = common::create_overlay(&mut control, "growth-net", Some(&subnet), false)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", flavor.name()));
        println!(
            "  {}, growth: every service attached to overlay network {id} on {subnet}",
            flavor.name()
        );
        Some(id)
    } else {
        None
    };
    let (lat, elapsed) = creates(socket, 1, total, "g", network.as_deref()).await;
    let window = GROWTH_WINDOW.min(total);
    let first = p50(&lat[..window]);
    let last = p50(&lat[total - window..]);
    figures.add(flavor, &growth_metric(cfg, "first"), first);
    figures.add(flavor, &growth_metric(cfg, "last"), last);
    figures.add(flavor, &growth_metric(cfg, "ratio"), last / first);
    println!(
        "  {}, growth to {total} services in {:.1} s: p50 {first:.2} ms of the first {window}, {last:.2} ms of the last {window} ({:.2}x)",
        flavor.name(),
        elapsed.as_secs_f64(),
        last / first
    );
    if let Some(id) = &network {
        // What the allocator made of them, once it is idle: the services with a VIP on it.
        settle(&cluster.managers[0].pid()).await;
        let services = control
            .list_services(api::ListServicesRequest::default())
            .await
            .expect("list services")
            .into_inner()
            .services;
        let with_vip = services
            .iter()
            .filter(|s| {
                s.endpoint.as_ref().is_some_and(|e| {
                    e.virtual_ips
                        .iter()
                        .any(|v| &v.network_id == id && !v.addr.is_empty())
                })
            })
            .count();
        println!(
            "  {}, growth: {with_vip} of {} services have a VIP on the network",
            flavor.name(),
            services.len()
        );
    }
}

fn growth_metric(cfg: &Config, which: &str) -> String {
    let total = cfg.growth_services;
    let vip = if cfg.growth_network {
        " (a VIP each)"
    } else {
        ""
    };
    match which {
        "first" => format!("growth{vip}: p50 ms of creates 1-{GROWTH_WINDOW}"),
        "last" => format!(
            "growth{vip}: p50 ms of creates {}-{total}",
            total.saturating_sub(GROWTH_WINDOW) + 1
        ),
        _ => format!("growth{vip}: last / first p50"),
    }
}

/// Three managers: each level on the leader's socket, then on a follower's.
async fn ha(cfg: &Config, flavor: &Flavor, figures: &mut Figures) {
    let cluster = Cluster::start(flavor, 3)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flavor.name()));
    let mut control = connect(&cluster.managers[0].socket).await;
    let leader = cluster
        .leader(&mut control)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flavor.name()));
    let follower = (leader + 1) % cluster.managers.len();
    for (role, idx) in [("leader", leader), ("follower", follower)] {
        for clients in HA_LEVELS {
            let name = level_name(&format!("3 managers, {role}"), clients);
            let socket = &cluster.managers[idx].socket;
            let (mut lat, elapsed) = creates(
                socket,
                clients,
                cfg.ha_requests,
                &format!("{role}{clients}"),
                None,
            )
            .await;
            lat.sort();
            let rate = lat.len() as f64 / elapsed.as_secs_f64();
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            figures.add(flavor, &format!("{name}: creates/s"), rate);
            figures.add(flavor, &format!("{name}: p50 ms"), p50);
            println!(
                "  {}, {name}: {rate:.1} creates/s, p50 {p50:.2} ms, p99 {p99:.2} ms",
                flavor.name()
            );
        }
    }
}

fn rows(cfg: &Config, phases: &[String], fsync: Option<f64>) -> Vec<Row> {
    let mut rows = Vec::new();
    if phases.iter().any(|p| p == "single") {
        for (clients, target) in LEVELS.into_iter().zip([1.5, 2.0, 3.0]) {
            let name = level_name("1 manager", clients);
            rows.push(Row::new(
                format!("{name}: creates/s"),
                Target::RatioAtLeast(target),
            ));
            rows.push(Row::new(format!("{name}: p50 ms"), Target::None));
            rows.push(Row::new(format!("{name}: p99 ms"), Target::None));
            rows.push(Row::new(
                format!("{name}: manager CPU ms/create"),
                Target::None,
            ));
            rows.push(Row::new(
                format!("{name}: creates per raft entry"),
                Target::None,
            ));
        }
        rows.push(Row::new(
            "1 manager, all levels: manager CPU ms/create",
            Target::RatioAtMost(0.7),
        ));
        let name = level_name("1 manager", 64);
        let commits = fsync.map_or(Target::None, |f| Target::OursAtLeast(0.8 * f));
        rows.push(Row::new(format!("{name}: raft entries/s"), commits));
        if cfg.strace {
            rows.push(Row::new(
                format!("{name}: creates per fsync (strace)"),
                Target::None,
            ));
            rows.push(Row::new(
                format!("{name}: raft entries per fsync (strace)"),
                Target::None,
            ));
        }
        rows.push(Row::new(FSYNC_METRIC, Target::None));
    }
    if phases.iter().any(|p| p == "growth") && cfg.growth_services > 0 {
        rows.push(Row::new(growth_metric(cfg, "first"), Target::None));
        rows.push(Row::new(growth_metric(cfg, "last"), Target::None));
        rows.push(Row::new(
            growth_metric(cfg, "ratio"),
            Target::OursAtMost(GROWTH_TARGET),
        ));
    }
    if phases.iter().any(|p| p == "ha") {
        for role in ["leader", "follower"] {
            for (clients, target) in HA_LEVELS.into_iter().zip([1.5, 2.0]) {
                let name = level_name(&format!("3 managers, {role}"), clients);
                rows.push(Row::new(
                    format!("{name}: creates/s"),
                    Target::RatioAtLeast(target),
                ));
                rows.push(Row::new(format!("{name}: p50 ms"), Target::None));
            }
        }
    }
    rows
}

const FSYNC_METRIC: &str = "raw 4 KiB write + fdatasync /s (same disk)";

fn main() {
    // `cargo bench` passes --bench; the environment variables above are the knobs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flavors = Flavor::all();
    let runs = runs();
    let phases: Vec<String> = std::env::var("BENCH_PHASES")
        .unwrap_or_else(|_| "single,growth,ha".into())
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    for p in &phases {
        assert!(
            ["single", "growth", "ha"].contains(&p.as_str()),
            "BENCH_PHASES: unknown phase {p} (known: single, growth, ha)"
        );
    }
    let perf = std::env::var_os("BENCH_PERF")
        .filter(|p| !p.is_empty())
        .map(|p| std::path::absolute(PathBuf::from(p)).expect("BENCH_PERF path"));
    let cfg = Config {
        requests: env_u64("BENCH_REQUESTS", 1000).max(1) as usize,
        ha_requests: env_u64("BENCH_HA_REQUESTS", 300).max(1) as usize,
        growth_services: env_u64("BENCH_GROWTH_SERVICES", 10_000) as usize,
        growth_network: env_u64("BENCH_GROWTH_NETWORK", 0) != 0,
        strace: std::env::var("BENCH_STRACE").is_ok_and(|v| v == "1"),
        perf,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "control_api benchmark: CreateService of 1-replica services, nodes drained; {} run(s) of phases {} ({} creates per single-manager level, {} per three-manager level, growth to {} services{}); ours: {}",
        runs,
        phases.join(","),
        cfg.requests,
        cfg.ha_requests,
        cfg.growth_services,
        if cfg.growth_network {
            " attached to one overlay network"
        } else {
            ""
        },
        common::SWARMD
    );
    let mut figures = Figures::default();
    for phase in &phases {
        if phase == "growth" && cfg.growth_services == 0 {
            println!("growth: skipped (BENCH_GROWTH_SERVICES=0)");
            continue;
        }
        for run in 0..runs {
            println!("{phase}, run {}/{runs}:", run + 1);
            if phase == "single" {
                let rate = fsync_rate(&std::env::temp_dir(), 2.0);
                figures.add(&Flavor::Ours, FSYNC_METRIC, rate);
                println!("  raw 4 KiB write + fdatasync: {rate:.1}/s");
            }
            for flavor in &flavors {
                match phase.as_str() {
                    "single" => rt.block_on(single(
                        &cfg,
                        flavor,
                        run == 0 && *flavor == Flavor::Ours && cfg.perf.is_some(),
                        &mut figures,
                    )),
                    "growth" => rt.block_on(growth(&cfg, flavor, &mut figures)),
                    _ => rt.block_on(ha(&cfg, flavor, &mut figures)),
                }
            }
        }
    }
    let fsync = figures.median("ours", FSYNC_METRIC);
    print_table(&figures, &rows(&cfg, &phases, fsync));
}
