//! What the benches that drive real managers share: ours or SwarmKit's swarmd (SwarmKit's build
//! folder in `SWARMKIT_REF_BIN`), a cluster of one or three managers on loopback with every node
//! drained, the control client, a process's CPU time and peak RSS from /proc, the medians of
//! several runs, and the final table of ours against SwarmKit's next to the targets.
//! Their service spec is `testkit::fixtures::service_spec`.

// Each bench uses only a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api::control_client::ControlClient;
use tonic::transport::Channel;

pub const SWARMD: &str = env!("CARGO_BIN_EXE_swarmd");
/// Largest response a bench accepts (ListTasks of 10 000 tasks is over tonic's 4 MiB default).
pub const MAX_MESSAGE: usize = 256 << 20;
/// Bound for a manager to come up, for a joining one to be listed reachable, and for draining.
const START_LIMIT: Duration = Duration::from_secs(120);

/// Whose swarmd a figure is of.
#[derive(Clone, Debug, PartialEq)]
pub enum Flavor {
    Ours,
    /// SwarmKit's Go build: the folder holding its `swarmd`.
    SwarmKit(PathBuf),
}

impl Flavor {
    /// Ours, then SwarmKit's when `SWARMKIT_REF_BIN` names its build folder; otherwise says that
    /// the SwarmKit figures are skipped.
    pub fn all() -> Vec<Flavor> {
        let mut all = vec![Flavor::Ours];
        match std::env::var_os("SWARMKIT_REF_BIN").filter(|d| !d.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                assert!(
                    dir.join("swarmd").is_file(),
                    "SWARMKIT_REF_BIN={} holds no swarmd",
                    dir.display()
                );
                all.push(Flavor::SwarmKit(dir));
            }
            None => println!("skipped: SWARMKIT_REF_BIN not set (SwarmKit figures)"),
        }
        all
    }

    pub fn name(&self) -> &'static str {
        match self {
            Flavor::Ours => "ours",
            Flavor::SwarmKit(_) => "SwarmKit",
        }
    }

    pub fn program(&self) -> PathBuf {
        match self {
            Flavor::Ours => PathBuf::from(SWARMD),
            Flavor::SwarmKit(dir) => dir.join("swarmd"),
        }
    }
}

/// An unsigned number from environment variable `name`, or `default` when unset.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        _ => default,
    }
}

/// Runs per figure (`BENCH_RUNS`, 2 by default); the table shows their median.
pub fn runs() -> usize {
    env_u64("BENCH_RUNS", 2).max(1) as usize
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One swarmd process with its state, control socket and log in its own folder; killed and
/// reaped on drop.
pub struct Manager {
    child: Child,
    pub socket: PathBuf,
    /// Its remote API address (listened on and advertised).
    pub addr: String,
    log: PathBuf,
}

impl Manager {
    /// Starts `flavor`'s swarmd in `dir`, joining the manager at `join` (address, token) if given.
    /// `BENCH_LOG_LEVEL` (warn by default) sets its log level.
    fn spawn(flavor: &Flavor, dir: &Path, hostname: &str, join: Option<(&str, &str)>) -> Manager {
        std::fs::create_dir_all(dir).expect("manager dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let socket = dir.join("swarmd.sock");
        let log = dir.join("swarmd.log");
        let level = std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
        let mut cmd = Command::new(flavor.program());
        cmd.arg("-d")
            .arg(dir.join("state"))
            .arg("--listen-control-api")
            .arg(&socket)
            .args(["--listen-remote-api", &addr])
            .args(["--advertise-remote-api", &addr])
            .args(["--hostname", hostname, "--log-level", &level]);
        if let Some((join_addr, token)) = join {
            cmd.args(["--join-addr", join_addr, "--join-token", token]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", flavor.program().display()));
        Manager {
            child,
            socket,
            addr,
            log,
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Why the manager is of no use: it exited, with the end of its log.
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "swarmd ({}) exited with {status}; end of its log:\n{}",
                self.addr,
                self.log_tail()
            )),
            Err(e) => Err(format!("swarmd ({}): {e}", self.addr)),
        }
    }

    /// Lines of its log so far that contain `pattern`.
    pub fn log_count(&self, pattern: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(pattern))
            .count()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Sends `child` SIGINT, as an operator's Ctrl-C: swarmd then removes the network devices and
/// rules it made in the host's namespace, which a kill leaves behind.
fn interrupt(child: &Child) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::INT);
    }
}

/// Interrupts `child`, waits for it to exit (`within` at most), then kills it if it has not.
fn stop(child: &mut Child, within: Duration) {
    interrupt(child);
    let deadline = Instant::now() + within;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How long a manager may take to stop once interrupted before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl Drop for Manager {
    fn drop(&mut self) {
        stop(&mut self.child, STOP_WAIT);
    }
}

/// A Control API client on `socket`, once swarmd answers there (30 s at most).
pub async fn connect(socket: &Path) -> ControlClient<Channel> {
    try_connect(socket, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no control API on {}", socket.display()))
}

async fn try_connect(socket: &Path, limit: Duration) -> Option<ControlClient<Channel>> {
    let deadline = Instant::now() + limit;
    loop {
        if socket.exists() {
            let ch = ca::control_channel(socket).expect("channel");
            let mut c = ControlClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
            if c.list_clusters(api::ListClustersRequest::default())
                .await
                .is_ok()
            {
                return Some(c);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` managers of one flavor on loopback, every node drained (UpdateNode availability DRAIN, as
/// `swarmctl node update --availability drain` does) so that tasks stay PENDING. Managers are
/// stopped when it drops, before their folder goes.
pub struct Cluster {
    pub managers: Vec<Manager>,
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Interrupts every manager at once (each then waits for its own in its drop): stopped one
    /// by one, the last ones would wait on a quorum that is gone.
    fn drop(&mut self) {
        for m in &self.managers {
            interrupt(&m.child);
        }
    }
}

impl Cluster {
    /// Starts the first manager, then each other one joining it with the manager token (from
    /// ListClusters) once the one before is listed as a reachable manager, then drains all nodes.
    pub async fn start(flavor: &Flavor, n: usize) -> Result<Cluster, String> {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let mut c = Cluster {
            managers: vec![Manager::spawn(
                flavor,
                &dir.path().join("m1"),
                "node-1",
                None,
            )],
            dir,
        };
        let mut control = match try_connect(&c.managers[0].socket, START_LIMIT).await {
            Some(control) => control,
            None => {
                c.managers[0].check_running()?;
                return Err("the first manager's control API did not answer".into());
            }
        };
        c.wait_managers(&mut control, 1).await?;
        if n > 1 {
            let token = join_tokens(&mut control)
                .await?
                .map(|t| t.manager)
                .filter(|t| !t.is_empty())
                .ok_or("no manager join token")?;
            let first = c.managers[0].addr.clone();
            for i in 1..n {
                let name = format!("node-{}", i + 1);
                let m = Manager::spawn(
                    flavor,
                    &c.dir.path().join(format!("m{}", i + 1)),
                    &name,
                    Some((&first, &token)),
                );
                c.managers.push(m);
                c.wait_managers(&mut control, i + 1).await?;
            }
        }
        c.drain(&mut control, n).await?;
        Ok(c)
    }

    /// Waits until ListNodes shows `count` managers REACHABLE, one of them the leader.
    async fn wait_managers(
        &mut self,
        control: &mut ControlClient<Channel>,
        count: usize,
    ) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            for m in &mut self.managers {
                m.check_running()?;
            }
            if let Ok(resp) = control.list_nodes(api::ListNodesRequest::default()).await {
                let statuses: Vec<api::ManagerStatus> = resp
                    .into_inner()
                    .nodes
                    .into_iter()
                    .filter_map(|n| n.manager_status)
                    .collect();
                let reachable = statuses
                    .iter()
                    .filter(|s| {
                        s.reachability == api::raft_member_status::Reachability::Reachable as i32
                    })
                    .count();
                if reachable >= count && statuses.iter().any(|s| s.leader) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{count} managers not all reachable within {START_LIMIT:?}; end of the last one's log:\n{}",
                    self.managers
                        .last()
                        .map(Manager::log_tail)
                        .unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drains every node until `count` nodes are listed DRAIN. An update can lose the race with
    /// the dispatcher writing the node (its registration): it is retried at the next version.
    async fn drain(
        &self,
        control: &mut ControlClient<Channel>,
        count: usize,
    ) -> Result<(), String> {
        let drain = api::node_spec::Availability::Drain as i32;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let nodes = list_nodes(control).await?;
            let mut drained = 0;
            for node in nodes {
                let mut spec = node.spec.clone().unwrap_or_default();
                if spec.availability == drain {
                    drained += 1;
                    continue;
                }
                spec.availability = drain;
                let update = control.update_node(api::UpdateNodeRequest {
                    node_id: node.id.clone(),
                    node_version: node.meta.and_then(|m| m.version),
                    spec: Some(spec),
                });
                if update.await.is_ok() {
                    drained += 1;
                }
            }
            if drained >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("only {drained} of {count} nodes drained"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the manager ListNodes shows as the leader (by its address).
    pub async fn leader(&self, control: &mut ControlClient<Channel>) -> Result<usize, String> {
        let nodes = list_nodes(control).await?;
        let addr = nodes
            .iter()
            .filter_map(|n| n.manager_status.as_ref())
            .find(|s| s.leader)
            .map(|s| s.addr.clone())
            .ok_or("no leader listed")?;
        self.managers
            .iter()
            .position(|m| m.addr == addr)
            .ok_or_else(|| format!("the leader's address {addr} is none of the managers'"))
    }
}

/// A tracer (strace, perf) attached to a process over one phase of a bench, stopped with SIGINT as at a
/// terminal, so that it writes its summary or data.
pub struct Tracer {
    child: Child,
    stderr: PathBuf,
}

impl Tracer {
    /// Starts `program args`, and waits (5 s at most) until `ready` says it is attached.
    pub fn start(program: &str, args: &[&str], dir: &Path, ready: impl Fn(&str) -> bool) -> Tracer {
        let stderr = dir.join(format!("{program}.err"));
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("tracer log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !ready(&std::fs::read_to_string(&stderr).unwrap_or_default())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Tracer { child, stderr }
    }

    /// SIGINT, then waits for it to exit (60 s at most, then SIGKILL); returns its stderr.
    pub fn stop(mut self) -> String {
        stop(&mut self.child, Duration::from_secs(60));
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// `perf record` of process `pid` into `out`, with call graphs by DWARF unwinding (so a release
/// build without debug info will do), until [`Tracer::stop_perf`].
pub fn perf_record(pid: &str, out: &Path, dir: &Path) -> Tracer {
    let out_str = out.to_string_lossy().into_owned();
    let args = [
        "record",
        "-F",
        "499",
        "--call-graph",
        "dwarf",
        "-p",
        pid,
        "-o",
        &out_str,
    ];
    let _ = std::fs::remove_file(out);
    let out_check = out.to_path_buf();
    Tracer::start("perf", &args, dir, move |_| out_check.exists())
}

impl Tracer {
    /// Stops a [`perf_record`] into `out`; says where the profile of `what` is, or why perf failed.
    pub fn stop_perf(self, out: &Path, what: &str) -> String {
        let err = self.stop();
        if out.exists() {
            format!(
                "  perf profile of {what}: {} (BUILDING.md, \"Benchmarks\")",
                out.display()
            )
        } else {
            format!("  perf failed: {err}")
        }
    }
}

/// CPU time (utime, stime) of process `pid` (or "self") in clock ticks.
fn cpu_ticks(pid: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field(14), field(15))
}

/// A `kB` line of /proc/`pid`/status, in KiB.
fn status_kib(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Clock ticks per second of /proc's CPU times.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Waits (3 s at most) until process `pid` is idle: under one clock tick of CPU in 200 ms. A
/// phase's CPU time then includes the work its requests left behind (tasks to create).
pub async fn settle(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = cpu_ticks(pid);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cpu_ticks(pid);
        if now.0 + now.1 <= last.0 + last.1 + 1 {
            return;
        }
        last = now;
    }
}

/// CPU time and peak RSS of a process over one phase of a bench.
pub struct Usage {
    pid: String,
    start: (u64, u64),
    peak_reset: bool,
}

/// What a [`Usage`] measured.
pub struct UsageFigures {
    pub user: f64,
    pub sys: f64,
    /// Peak RSS since the phase began (or of the whole process when it could not be reset), MB.
    pub peak_mb: f64,
    pub rss_mb: f64,
    peak_reset: bool,
}

impl Usage {
    /// Starts measuring process `pid` ("self" for this one), resetting its peak RSS.
    pub fn begin(pid: &str) -> Usage {
        Usage {
            pid: pid.to_string(),
            start: cpu_ticks(pid),
            peak_reset: reset_peak_rss(pid),
        }
    }

    pub fn end(&self) -> UsageFigures {
        let (u, s) = cpu_ticks(&self.pid);
        let tck = clk_tck();
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        UsageFigures {
            user: u.saturating_sub(self.start.0) as f64 / tck,
            sys: s.saturating_sub(self.start.1) as f64 / tck,
            peak_mb: mb(status_kib(&self.pid, "VmHWM")),
            rss_mb: mb(status_kib(&self.pid, "VmRSS")),
            peak_reset: self.peak_reset,
        }
    }
}

impl UsageFigures {
    pub fn cpu(&self) -> f64 {
        self.user + self.sys
    }

    pub fn describe(&self, who: &str) -> String {
        let since = if self.peak_reset {
            "since the phase began"
        } else {
            "of the whole process: clear_refs failed"
        };
        format!(
            "{who} cpu {:.2} s (user {:.2} + sys {:.2}), peak RSS {:.1} MB ({since}), RSS now {:.1} MB",
            self.cpu(),
            self.user,
            self.sys,
            self.peak_mb,
            self.rss_mb
        )
    }
}

/// Figures of several runs, by flavor and metric; the table shows their medians.
#[derive(Default)]
pub struct Figures(Vec<(&'static str, String, f64)>);

impl Figures {
    pub fn add(&mut self, flavor: &Flavor, metric: &str, value: f64) {
        self.0.push((flavor.name(), metric.to_string(), value));
    }

    /// The median of `flavor`'s figures of `metric` (None when there are none).
    pub fn median(&self, flavor: &str, metric: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .0
            .iter()
            .filter(|(f, m, _)| *f == flavor && m == metric)
            .map(|(_, _, v)| *v)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }
}

/// What a row of the final table is held to (the targets); ratios are ours / SwarmKit's.
#[derive(Clone, Copy)]
pub enum Target {
    None,
    RatioAtLeast(f64),
    RatioAtMost(f64),
    OursAtLeast(f64),
    OursAtMost(f64),
    OursExactly(f64),
}

/// One row of the final table: a metric (its unit in its name) and its target.
pub struct Row {
    pub metric: String,
    pub target: Target,
}

impl Row {
    pub fn new(metric: impl Into<String>, target: Target) -> Row {
        Row {
            metric: metric.into(),
            target,
        }
    }
}

fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Prints `metric | ours | SwarmKit | ratio | target | met?` with the medians of `figures`.
pub fn print_table(figures: &Figures, rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "\n{:<width$} | {:>9} | {:>9} | {:>6} | {:<18} | met?",
        "metric", "ours", "SwarmKit", "ratio", "target"
    );
    println!("{}", "-".repeat(width + 63));
    for row in rows {
        let ours = figures.median("ours", &row.metric);
        let theirs = figures.median("SwarmKit", &row.metric);
        let ratio = ours.zip(theirs).map(|(o, t)| o / t);
        let (target, met) = match row.target {
            Target::None => (String::new(), None),
            Target::RatioAtLeast(x) => (format!("ratio >= {x}"), ratio.map(|r| r >= x)),
            Target::RatioAtMost(x) => (format!("ratio <= {x}"), ratio.map(|r| r <= x)),
            Target::OursAtLeast(x) => {
                (format!("ours >= {}", number(Some(x))), ours.map(|o| o >= x))
            }
            Target::OursAtMost(x) => (format!("ours <= {}", number(Some(x))), ours.map(|o| o <= x)),
            Target::OursExactly(x) => (format!("ours = {}", number(Some(x))), ours.map(|o| o == x)),
        };
        let met = match met {
            None if target.is_empty() => "",
            None => "-",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        println!(
            "{:<width$} | {:>9} | {:>9} | {:>6} | {target:<18} | {met}",
            row.metric,
            number(ours),
            number(theirs),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
        );
    }
}

/// Creates an overlay network named `name` (an ingress network when `ingress`) whose one IPAM
/// config is `subnet` (the default pool's next one when `None`); returns its ID.
pub async fn create_overlay(
    control: &mut ControlClient<Channel>,
    name: &str,
    subnet: Option<&str>,
    ingress: bool,
) -> Result<String, String> {
    let ipam = subnet.map(|subnet| api::IpamOptions {
        driver: None,
        configs: vec![api::IpamConfig {
            subnet: subnet.to_string(),
            ..Default::default()
        }],
    });
    let spec = api::NetworkSpec {
        annotations: Some(api::Annotations {
            name: name.into(),
            ..Default::default()
        }),
        driver_config: Some(api::Driver {
            name: "overlay".into(),
            ..Default::default()
        }),
        ipam,
        ingress,
        ..Default::default()
    };
    control
        .create_network(api::CreateNetworkRequest { spec: Some(spec) })
        .await
        .map_err(|s| format!("create network {name}: {s}"))?
        .into_inner()
        .network
        .map(|n| n.id)
        .ok_or_else(|| format!("create network {name}: no network in the answer"))
}

/// The ingress network, as ListNetworks answers (`None` when there is none).
pub async fn ingress_network(
    control: &mut ControlClient<Channel>,
) -> Result<Option<api::Network>, String> {
    Ok(control
        .list_networks(api::ListNetworksRequest::default())
        .await
        .map_err(|s| format!("list networks: {s}"))?
        .into_inner()
        .networks
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress)))
}

/// Replaces the cluster's ingress network by one named `ingress` on `subnet`, as SwarmKit's API
/// allows (RemoveNetwork, then CreateNetwork with `ingress` set) while no service uses it.
pub async fn replace_ingress(
    control: &mut ControlClient<Channel>,
    subnet: &str,
) -> Result<String, String> {
    if let Some(old) = ingress_network(control).await? {
        control
            .remove_network(api::RemoveNetworkRequest {
                network_id: old.id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("remove the ingress network {}: {s}", old.id))?;
    }
    create_overlay(control, "ingress", Some(subnet), true).await
}

/// `spec` attached to network `network_id` with a virtual IP (endpoint mode VIP).
pub fn attached(mut spec: api::ServiceSpec, network_id: &str) -> api::ServiceSpec {
    if let Some(task) = spec.task.as_mut() {
        task.networks.push(api::NetworkAttachmentConfig {
            target: network_id.to_string(),
            ..Default::default()
        });
    }
    spec.endpoint = Some(api::EndpointSpec {
        mode: api::endpoint_spec::ResolutionMode::Vip as i32,
        ports: Vec::new(),
    });
    spec
}

/// The longest IPv4 prefix, `at_most` or shorter, whose subnet holds `addresses` besides its
/// network, broadcast and gateway addresses (a /8 when none does).
pub fn prefix_for(addresses: u64, at_most: u32) -> u32 {
    (8..=at_most)
        .rev()
        .find(|p| subnet_capacity(*p) >= addresses)
        .unwrap_or(8)
}

/// Addresses an IPv4 /`prefix` has for tasks, nodes and VIPs: all but its network, broadcast and
/// gateway addresses.
pub fn subnet_capacity(prefix: u32) -> u64 {
    (1u64 << (32 - prefix.min(32))).saturating_sub(3)
}

/// Every node, as ListNodes answers.
pub async fn list_nodes(control: &mut ControlClient<Channel>) -> Result<Vec<api::Node>, String> {
    Ok(control
        .list_nodes(api::ListNodesRequest::default())
        .await
        .map_err(|s| format!("list nodes: {s}"))?
        .into_inner()
        .nodes)
}

/// The cluster's join tokens, as ListClusters answers (`None` if it shows none).
pub async fn join_tokens(
    control: &mut ControlClient<Channel>,
) -> Result<Option<api::JoinTokens>, String> {
    Ok(control
        .list_clusters(api::ListClustersRequest::default())
        .await
        .map_err(|s| format!("list clusters: {s}"))?
        .into_inner()
        .clusters
        .into_iter()
        .next()
        .and_then(|cl| cl.root_ca?.join_tokens))
}
