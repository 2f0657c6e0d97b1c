//! Benchmark (figures printed, nothing asserted): the dispatcher under many nodes. One process
//! hosts N simulated agents ("hollow nodes") that speak the real Dispatcher protocol over mutual
//! TLS to one real manager, a swarmd child on a temp state dir: ours, and SwarmKit's too when
//! `SWARMKIT_REF_BIN` names its build folder (each alone on the machine, one after the other).
//! Each hollow node joins with the worker token (NodeCA.IssueNodeCertificate, then
//! NodeCertificateStatus until issued, against the root CA from CA.GetRootCACertificate checked
//! against the token's digest), opens a Session with a small node description (whose engine lists
//! the plugins a Docker engine reports, overlay among them: SwarmKit's scheduler places a task on
//! a network only on such a node), heartbeats at the period the dispatcher gives, follows its
//! Assignments stream (COMPLETE, then INCREMENTAL) and reports every task it is given with
//! desired state RUNNING as RUNNING at once, one UpdateTaskStatus call per Assignments message.
//! The manager's own node is drained first, as no agent runs its tasks. Printed: the join time of
//! the N nodes (certificates, sessions, READY in the store; at most `--join-concurrency` joins at
//! a time), then the time from CreateService with R replicas to all R tasks RUNNING in the store
//! (ListTasks on the control socket), with the manager's CPU seconds (utime + stime from /proc)
//! and peak RSS (VmHWM, reset through clear_refs at the start of each phase) over each phase, the
//! same for this process, and what the bench's own ListTasks polls cost the manager.
//!
//! Each run does that twice, each time on a new manager: once with a service attached to no
//! network, then (unless `--no-network` or `BENCH_NETWORK=0`) with the service attached to an
//! overlay network made through CreateNetwork (driver overlay, subnet 10.128.0.0/16, larger when
//! the replicas and nodes need more addresses) with a VIP on it (endpoint mode VIP); the table
//! shows both times and their ratio, against the target (at most 1.5). The network run
//! also prints what the allocator gave: the service's VIPs, and how many tasks and nodes have an
//! address on the network.
//!
//! The attachments mode (`--attachments`, not part of the default run) runs no service: the N
//! nodes join a manager whose ingress network was replaced (RemoveNetwork, then CreateNetwork
//! with `ingress` set, as SwarmKit's API allows) by one on `--ingress-subnet` (the default
//! ingress, a /24 as SwarmKit's, when not given), then ListNodes is polled
//! (`--attach-timeout-secs`, 120, at most) until every node, the manager's included, has an
//! address on the ingress network (`node.attachments`), or as many as the subnet holds. Then the
//! manager's log is watched for 10 s more and its lines holding `HOLLOW_EXHAUSTED_PATTERN`
//! ("could not find an available IP") are counted: the table expects all N + 1 nodes attached
//! and no such line when the subnet has room, else as many as it holds and one line (SwarmKit
//! logs one per node it could not attach, again at every retry). The manager's log level is
//! `BENCH_LOG_LEVEL` (warn).
//!
//! Last comes a table of the medians of `BENCH_RUNS` runs (2): metric | ours | SwarmKit | ratio |
//! target (the issue's) | met?.
//!
//! Run with `make bench` or `SWARMKIT_REF_BIN=/work/ref/bin cargo bench --bench dispatcher` (1000
//! nodes, 10000 replicas); smaller with `cargo bench --bench dispatcher -- --nodes 50 --replicas
//! 500` (or the environment variables `HOLLOW_NODES`, `HOLLOW_REPLICAS`,
//! `HOLLOW_JOIN_CONCURRENCY`, `HOLLOW_TIMEOUT_SECS`; a phase that does not finish within the
//! timeout, 900 s by default, fails the bench). The attachments mode: `cargo bench --bench
//! dispatcher -- --attachments --nodes 5000 --ingress-subnet 10.128.0.0/19` (or
//! `HOLLOW_ATTACHMENTS=1`, `HOLLOW_INGRESS_SUBNET`, `HOLLOW_ATTACH_TIMEOUT_SECS`). The bench
//! raises its own open-file limit (and so swarmd's, which inherits it) to the hard limit when N
//! nodes need more descriptors than the soft limit allows. `BENCH_PERF=<file>` records a perf
//! profile (call graphs) of our manager over the join of the first run (BUILDING.md,
//! "Benchmarks").

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use api::TaskState;
use api::control_client::ControlClient;
use api::dispatcher_client::DispatcherClient;
use common::{
    Cluster, Figures, Flavor, MAX_MESSAGE, Row, Target, Usage, connect, env_u64, print_table, runs,
};
use testkit::fixtures::service_spec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;

/// mimalloc rather than glibc malloc (BUILDING.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deadline of each unary call to the dispatcher (as the agent's).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most status updates in one UpdateTaskStatus call (as the agent's).
const STATUS_BATCH: usize = 1024;
/// Store poll period while the hollow nodes have not all had their reports acknowledged, and
/// after. The slow poll keeps the bench's own ListTasks calls from weighing on the manager.
const SLOW_POLL: Duration = Duration::from_secs(5);
const FAST_POLL: Duration = Duration::from_millis(100);
/// ListTasks calls made after the run to tell what one costs the manager.
const POLL_COST_SAMPLES: u32 = 5;

struct Args {
    nodes: usize,
    replicas: u64,
    join_concurrency: usize,
    timeout: Duration,
    /// Whether each run also runs the R replicas attached to an overlay network (`BENCH_NETWORK`,
    /// 1 by default; `--network`, `--no-network`).
    network: bool,
    /// The attachments mode (`--attachments`): N nodes join, then every node should get an
    /// address on the ingress network; no service runs.
    attachments: bool,
    /// The subnet of the ingress network that replaces the default one in the attachments mode
    /// (`--ingress-subnet`, `HOLLOW_INGRESS_SUBNET`; the default ingress when unset).
    ingress_subnet: Option<String>,
    /// Bound of the wait for the attachments after the join (`--attach-timeout-secs`).
    attach_timeout: Duration,
    /// What the manager logs when a network has no address left (`HOLLOW_EXHAUSTED_PATTERN`).
    exhausted_pattern: String,
    /// Where to record a perf profile of our manager's join phase (`BENCH_PERF`).
    perf: Option<PathBuf>,
}

fn parse_args() -> Args {
    let text = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut args = Args {
        nodes: env_u64("HOLLOW_NODES", 1000) as usize,
        replicas: env_u64("HOLLOW_REPLICAS", 10_000),
        join_concurrency: env_u64("HOLLOW_JOIN_CONCURRENCY", 32) as usize,
        timeout: Duration::from_secs(env_u64("HOLLOW_TIMEOUT_SECS", 900)),
        network: env_u64("BENCH_NETWORK", 1) != 0,
        attachments: env_u64("HOLLOW_ATTACHMENTS", 0) != 0,
        ingress_subnet: text("HOLLOW_INGRESS_SUBNET"),
        attach_timeout: Duration::from_secs(env_u64("HOLLOW_ATTACH_TIMEOUT_SECS", 120)),
        exhausted_pattern: text("HOLLOW_EXHAUSTED_PATTERN")
            .unwrap_or_else(|| "could not find an available IP".into()),
        perf: std::env::var_os("BENCH_PERF")
            .filter(|p| !p.is_empty())
            .map(|p| std::path::absolute(PathBuf::from(p)).expect("BENCH_PERF path")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut text = || inline.clone().or_else(|| it.next()).unwrap_or_default();
        let mut value = || -> u64 {
            let v = text();
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} wants a number, got {v:?}"))
        };
        match flag.as_str() {
            // `cargo bench` passes --bench to a harness-less bench.
            "--bench" => {}
            "--nodes" => args.nodes = value() as usize,
            "--replicas" => args.replicas = value(),
            "--join-concurrency" => args.join_concurrency = value() as usize,
            "--timeout-secs" => args.timeout = Duration::from_secs(value()),
            "--network" => args.network = true,
            "--no-network" => args.network = false,
            "--attachments" => args.attachments = true,
            "--ingress-subnet" => args.ingress_subnet = Some(text()),
            "--attach-timeout-secs" => args.attach_timeout = Duration::from_secs(value()),
            other if other.starts_with('-') => panic!(
                "unknown flag {other} (known: --nodes, --replicas, --join-concurrency, --timeout-secs, \
                 --network, --no-network, --attachments, --ingress-subnet, --attach-timeout-secs)"
            ),
            // A bench name filter from `cargo bench NAME`: nothing to filter here.
            _ => {}
        }
    }
    assert!(args.nodes > 0, "--nodes must be at least 1");
    if let Some(subnet) = &args.ingress_subnet {
        assert!(
            prefix_len(subnet).is_some(),
            "--ingress-subnet wants an IPv4 subnet such as 10.128.0.0/20, got {subnet:?}"
        );
    }
    args.join_concurrency = args.join_concurrency.max(1);
    args
}

/// The prefix length of IPv4 subnet `a.b.c.d/p`.
fn prefix_len(subnet: &str) -> Option<u32> {
    let (ip, len) = subnet.split_once('/')?;
    ip.parse::<std::net::Ipv4Addr>().ok()?;
    len.parse().ok().filter(|l| *l <= 32)
}

/// Raises the soft open-file limit to the hard one when `needed` descriptors would not fit, and
/// says what it was and is. swarmd, spawned afterwards, inherits the raised limit.
fn raise_nofile(needed: u64) -> String {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return soft.to_string();
    }
    let target = lim.maximum.unwrap_or(needed);
    let now = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        },
    ) {
        Ok(()) => target,
        Err(e) => {
            eprintln!("could not raise the open-file limit from {soft} to {target}: {e}");
            soft
        }
    };
    if now < needed {
        eprintln!(
            "warning: the open-file limit {now} is below the {needed} or so this run needs \
             (raise the hard limit, `ulimit -Hn`, or run fewer nodes)"
        );
    }
    format!("{now} (raised from {soft})")
}

/// What the hollow nodes share with the driver: counters, and when each milestone was reached.
struct Shared {
    addr: String,
    root: Vec<u8>,
    start: Instant,
    certs: AtomicUsize,
    certs_done_us: AtomicU64,
    registered: AtomicUsize,
    registered_done_us: AtomicU64,
    /// Distinct tasks given to some node with desired state RUNNING.
    delivered: AtomicUsize,
    /// RUNNING reports the dispatcher acknowledged.
    acked: AtomicUsize,
    join_failures: AtomicUsize,
    session_failures: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn mark(&self, at: &AtomicU64) {
        at.fetch_max(self.start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn error(&self, counter: &AtomicUsize, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("lock") = Some(what);
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| "none".into())
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("code = {:?} desc = {}", s.code(), s.message())
}

/// The plugins a Docker engine reports of itself: SwarmKit's scheduler places a task on a network
/// only on a node whose engine lists the network's driver.
const ENGINE_PLUGINS: [(&str, &str); 8] = [
    ("Volume", "local"),
    ("Network", "bridge"),
    ("Network", "host"),
    ("Network", "ipvlan"),
    ("Network", "macvlan"),
    ("Network", "null"),
    ("Network", "overlay"),
    ("Log", "json-file"),
];

fn description(idx: usize) -> api::NodeDescription {
    api::NodeDescription {
        hostname: format!("hollow-{idx}"),
        platform: Some(api::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        }),
        resources: Some(api::Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            generic: Vec::new(),
        }),
        engine: Some(api::EngineDescription {
            engine_version: "hollow".into(),
            plugins: ENGINE_PLUGINS
                .iter()
                .map(|(kind, name)| api::PluginDescription {
                    r#type: kind.to_string(),
                    name: name.to_string(),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One hollow node: join (holding a join slot until its session is registered), then keep a
/// session, re-registering after a pause when one fails.
///
/// Its session leaves from an address of its own ([`source_addr`]), as a real node's would: a
/// manager refuses a client address more than 2,048 connections, which 5,000 nodes on 127.0.0.1
/// would pass.
async fn hollow_node(idx: usize, token: Arc<String>, shared: Arc<Shared>, sem: Arc<Semaphore>) {
    let mut permit = Some(sem.acquire_owned().await.expect("semaphore"));
    let mut attempt = 0;
    let issued = loop {
        let req = ca::request_certificate(
            &shared.addr,
            &shared.root,
            ca::Credential::Token(&token),
            api::node_spec::Availability::Active,
        );
        match req.await {
            Ok(issued) => break issued,
            Err(e) => {
                shared.error(&shared.join_failures, format!("hollow-{idx} join: {e}"));
                attempt += 1;
                if attempt >= 5 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    shared.certs.fetch_add(1, Ordering::Relaxed);
    shared.mark(&shared.certs_done_us);
    let key_pem = issued.key.key_pem();
    let channel =
        ca::mtls_client_config(&shared.root, Some((&issued.cert_pem, key_pem.as_bytes())))
            .and_then(|cfg| {
                ca::tls_channel_from(&shared.addr, cfg, ca::MANAGER_ROLE, source_addr(idx))
            })
            .expect("node channel");
    let mut node = HollowNode {
        idx,
        shared: shared.clone(),
        seen: HashSet::new(),
        reported: HashSet::new(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let why = node.session(channel.clone(), &mut permit).await;
        shared.error(
            &shared.session_failures,
            format!("hollow-{idx} ({}) session: {why}", issued.node_id),
        );
        // Registration is rate limited (more than 3 within 8 s is refused).
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

struct HollowNode {
    idx: usize,
    shared: Arc<Shared>,
    /// Tasks given with desired state RUNNING (counted once in `delivered`).
    seen: HashSet<String>,
    /// Tasks whose RUNNING report the dispatcher acknowledged.
    reported: HashSet<String>,
}

impl HollowNode {
    /// Runs one session until it fails; returns why.
    async fn session(
        &mut self,
        channel: Channel,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> String {
        let mut client = DispatcherClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let request = api::SessionRequest {
            description: Some(description(self.idx)),
            session_id: String::new(),
        };
        let mut stream = match client.session(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return status_text(&s),
        };
        let session_id = match stream.message().await {
            Ok(Some(m)) => m.session_id,
            Ok(None) => return "the session stream ended at once".into(),
            Err(s) => return status_text(&s),
        };
        if permit.take().is_some() {
            self.shared.registered.fetch_add(1, Ordering::Relaxed);
            self.shared.mark(&self.shared.registered_done_us);
        }
        let request = api::AssignmentsRequest {
            session_id: session_id.clone(),
        };
        let mut assignments = match client.assignments(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return format!("assignments: {}", status_text(&s)),
        };
        let mut heartbeat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(heartbeat) => {
                    let beat = client.heartbeat(api::HeartbeatRequest { session_id: session_id.clone() });
                    match tokio::time::timeout(CALL_TIMEOUT, beat).await {
                        Ok(Ok(resp)) => {
                            let period = resp
                                .into_inner()
                                .period
                                .and_then(|p| Duration::try_from(p).ok())
                                .unwrap_or(Duration::from_secs(5));
                            heartbeat = tokio::time::Instant::now() + period;
                        }
                        Ok(Err(s)) => return format!("heartbeat: {}", status_text(&s)),
                        Err(_) => return "heartbeat timed out".into(),
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(_)) => {}
                    Ok(None) => return "the manager ended the session".into(),
                    Err(s) => return status_text(&s),
                },
                msg = assignments.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(e) = self.run_tasks(&mut client, &session_id, m).await {
                            return e;
                        }
                    }
                    Ok(None) => return "the assignments stream ended".into(),
                    Err(s) => return format!("assignments: {}", status_text(&s)),
                },
            }
        }
    }

    /// Reports RUNNING for every task of `msg` that should run and is not running yet.
    async fn run_tasks(
        &mut self,
        client: &mut DispatcherClient<Channel>,
        session_id: &str,
        msg: api::AssignmentsMessage,
    ) -> Result<(), String> {
        let mut start = Vec::new();
        for change in msg.changes {
            if change.action == api::assignment_change::AssignmentAction::Remove as i32 {
                continue;
            }
            let Some(api::assignment::Item::Task(task)) = change.assignment.and_then(|a| a.item)
            else {
                continue;
            };
            if task.desired_state != TaskState::Running as i32 {
                continue;
            }
            if self.seen.insert(task.id.clone()) {
                self.shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            let state = task.status.as_ref().map_or(0, |s| s.state);
            if state < TaskState::Running as i32 && !self.reported.contains(&task.id) {
                start.push(task.id);
            }
        }
        for batch in start.chunks(STATUS_BATCH) {
            let now = SystemTime::now();
            let updates = batch
                .iter()
                .map(|id| api::update_task_status_request::TaskStatusUpdate {
                    task_id: id.clone(),
                    status: Some(api::TaskStatus {
                        timestamp: Some(now.into()),
                        state: TaskState::Running as i32,
                        message: "started".into(),
                        ..Default::default()
                    }),
                })
                .collect();
            let call = client.update_task_status(api::UpdateTaskStatusRequest {
                session_id: session_id.to_string(),
                updates,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(s)) => return Err(format!("update task status: {}", status_text(&s))),
                Err(_) => return Err("update task status timed out".into()),
            }
            self.shared.acked.fetch_add(batch.len(), Ordering::Relaxed);
            self.reported.extend(batch.iter().cloned());
        }
        Ok(())
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Hollow nodes the store shows READY.
async fn ready_nodes(control: &mut ControlClient<Channel>) -> usize {
    let nodes = match control.list_nodes(api::ListNodesRequest::default()).await {
        Ok(r) => r.into_inner().nodes,
        Err(_) => return 0,
    };
    nodes
        .iter()
        .filter(|n| {
            n.role == api::NodeRole::Worker as i32
                && n.status
                    .as_ref()
                    .is_some_and(|s| s.state == api::node_status::State::Ready as i32)
        })
        .count()
}

/// Tasks of `service_id` in the store: (RUNNING with desired RUNNING, total).
async fn running_tasks(control: &mut ControlClient<Channel>, service_id: &str) -> (usize, usize) {
    let request = api::ListTasksRequest {
        filters: Some(api::list_tasks_request::Filters {
            service_ids: vec![service_id.to_string()],
            ..Default::default()
        }),
    };
    let tasks = match control.list_tasks(request).await {
        Ok(r) => r.into_inner().tasks,
        Err(_) => return (0, 0),
    };
    let running = tasks
        .iter()
        .filter(|t| {
            t.desired_state == TaskState::Running as i32
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.state == TaskState::Running as i32)
        })
        .count();
    (running, tasks.len())
}

/// Targets of the issue: join in at most half SwarmKit's time, all RUNNING within 2 s, the
/// manager's peak RSS at most 160 MB, on an overlay network all RUNNING within 1.5 times the time
/// without one.
const JOIN_RATIO: f64 = 0.5;
const RUNNING_SECS: f64 = 2.0;
const PEAK_MB: f64 = 160.0;
const NETWORK_RATIO: f64 = 1.5;
/// Subnet of the overlay network of the network run: a /16, or larger when the replicas and
/// nodes need more addresses.
const NETWORK_BASE: &str = "10.128.0.0";
const NETWORK_PREFIX: u32 = 16;
/// How long the attachments mode watches the manager's log once the attachments are done, for
/// the message of an exhausted network to come back.
const LOG_WATCH: Duration = Duration::from_secs(10);
/// ListNodes period of the attachments mode.
const ATTACH_POLL: Duration = Duration::from_secs(1);

/// What one run measures after the join.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// R replicas, attached to no network.
    Plain,
    /// R replicas attached to an overlay network (created through the control API).
    Network,
    /// No service: every node's address on the ingress network.
    Attachments,
}

/// One run against one manager: the join of the N nodes (recorded by perf into `perf` when
/// given), then what `kind` measures. Returns the time to all RUNNING (the run kinds).
async fn bench(
    args: &Args,
    flavor: &Flavor,
    kind: Kind,
    perf: Option<&Path>,
    figures: &mut Figures,
) -> Result<f64, String> {
    let cluster = Cluster::start(flavor, 1).await?;
    let manager = &cluster.managers[0];
    let (pid, addr) = (manager.pid(), manager.addr.clone());
    let who = match kind {
        Kind::Plain => flavor.name().to_string(),
        Kind::Network => format!("{}, overlay network", flavor.name()),
        Kind::Attachments => format!("{}, attachments", flavor.name()),
    };
    println!(
        "  {who}: swarmd {} (pid {pid}, remote API {addr})",
        flavor.program().display()
    );
    let mut control = connect(&manager.socket).await;
    if let (Kind::Attachments, Some(subnet)) = (kind, &args.ingress_subnet) {
        let id = common::replace_ingress(&mut control, subnet).await?;
        println!("  {who}: the ingress network is now {id} on {subnet}");
    }
    let token = common::join_tokens(&mut control)
        .await?
        .map(|t| t.worker)
        .filter(|t| !t.is_empty())
        .ok_or("no worker join token")?;
    let parsed = ca::ParsedToken::parse(&token).map_err(|e| format!("worker token: {e}"))?;
    let root = ca::download_root_ca(&addr, &parsed)
        .await
        .map_err(|e| format!("download the root CA: {e}"))?;

    let shared = Arc::new(Shared {
        addr,
        root,
        start: Instant::now(),
        certs: AtomicUsize::new(0),
        certs_done_us: AtomicU64::new(0),
        registered: AtomicUsize::new(0),
        registered_done_us: AtomicU64::new(0),
        delivered: AtomicUsize::new(0),
        acked: AtomicUsize::new(0),
        join_failures: AtomicUsize::new(0),
        session_failures: AtomicUsize::new(0),
        last_error: Mutex::new(None),
    });

    // Phase 1: N nodes join (certificate, session registered), then the store has them READY.
    let tracer = perf.map(|out| common::perf_record(&pid, out, cluster.dir.path()));
    let join_usage = Usage::begin(&pid);
    let own_join = Usage::begin("self");
    let sem = Arc::new(Semaphore::new(args.join_concurrency));
    let token = Arc::new(token);
    // Dropped (every hollow node aborted) before the cluster, so that none sees its session fail.
    let mut nodes = tokio::task::JoinSet::new();
    for idx in 0..args.nodes {
        nodes.spawn(hollow_node(idx, token.clone(), shared.clone(), sem.clone()));
    }
    let deadline = Instant::now() + args.timeout;
    let mut last_print = Instant::now();
    while shared.registered.load(Ordering::Relaxed) < args.nodes {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out joining: {} certificates, {} sessions of {} nodes; {} join and {} session failures, last error: {}",
                shared.certs.load(Ordering::Relaxed),
                shared.registered.load(Ordering::Relaxed),
                args.nodes,
                shared.join_failures.load(Ordering::Relaxed),
                shared.session_failures.load(Ordering::Relaxed),
                shared.last_error()
            ));
        }
        if last_print.elapsed() >= SLOW_POLL {
            last_print = Instant::now();
            eprintln!(
                "  joining: {} certificates, {} sessions; {} join, {} session failures, last error: {}",
                shared.certs.load(Ordering::Relaxed),
                shared.registered.load(Ordering::Relaxed),
                shared.join_failures.load(Ordering::Relaxed),
                shared.session_failures.load(Ordering::Relaxed),
                shared.last_error()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while ready_nodes(&mut control).await < args.nodes {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out waiting for the nodes to be READY in the store ({} of {})",
                ready_nodes(&mut control).await,
                args.nodes
            ));
        }
        tokio::time::sleep(FAST_POLL).await;
    }
    let ready_at = shared.start.elapsed().as_secs_f64();
    let certs_at = secs(shared.certs_done_us.load(Ordering::Relaxed));
    println!(
        "  {who}, join: {} nodes ({} at a time): all certificates issued in {certs_at:.2} s, all sessions registered in {:.2} s, all READY in the store in {ready_at:.2} s",
        args.nodes,
        args.join_concurrency,
        secs(shared.registered_done_us.load(Ordering::Relaxed)),
    );
    let manager_join = join_usage.end();
    println!("  {who}, join: {}", manager_join.describe("manager"));
    if let (Some(t), Some(out)) = (tracer, perf) {
        println!("{}", t.stop_perf(out, "the join"));
    }
    println!(
        "  {who}, join: {}",
        own_join.end().describe("hollow process")
    );
    // The join figures are those of the runs without a network: the network runs join alike.
    if kind != Kind::Network {
        let m = join_metrics(args);
        figures.add(flavor, &m[0], ready_at);
        figures.add(flavor, &m[1], certs_at);
        figures.add(flavor, &m[2], manager_join.cpu());
    }
    if kind == Kind::Attachments {
        let result = attachments(args, flavor, &who, manager, &mut control, figures).await;
        nodes.abort_all();
        while nodes.join_next().await.is_some() {}
        return result.map(|()| 0.0);
    }

    // Phase 2: CreateService with R replicas until all R tasks are RUNNING in the store.
    let mut spec = service_spec("hollow", args.replicas, "busybox:latest");
    if kind == Kind::Network {
        // Room for a task address per replica, a node address per node and the VIP.
        let need = args.replicas + args.nodes as u64 + 1;
        let subnet = format!(
            "{NETWORK_BASE}/{}",
            common::prefix_for(need, NETWORK_PREFIX).max(9)
        );
        let id = common::create_overlay(&mut control, "hollow-net", Some(&subnet), false).await?;
        println!("  {who}: overlay network {id} on {subnet}; the service has a VIP on it");
        spec = common::attached(spec, &id);
    }
    let run_usage = Usage::begin(&pid);
    let own_run = Usage::begin("self");
    let failures_before = shared.session_failures.load(Ordering::Relaxed);
    let created = Instant::now();
    let service = control
        .create_service(api::CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| format!("create service: {s}"))?
        .into_inner()
        .service
        .ok_or("no service in the answer")?;
    let replicas = args.replicas as usize;
    let deadline = Instant::now() + args.timeout;
    let (mut delivered_at, mut acked_at) = (None, None);
    let mut next_poll = Instant::now() + SLOW_POLL;
    let mut polls = 0u32;
    let (running_at, last_poll) = loop {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        if delivered_at.is_none() && delivered >= replicas {
            delivered_at = Some(created.elapsed());
        }
        if acked_at.is_none() && acked >= replicas {
            acked_at = Some(created.elapsed());
            next_poll = Instant::now();
        }
        if Instant::now() >= next_poll {
            let poll = Instant::now();
            let (running, total) = running_tasks(&mut control, &service.id).await;
            polls += 1;
            if running >= replicas {
                break (created.elapsed(), poll.elapsed());
            }
            let period = if acked_at.is_some() {
                FAST_POLL
            } else {
                eprintln!(
                    "  {:.1} s: store {running}/{total} RUNNING; hollow nodes given {delivered}, acknowledged {acked}; {} session failures, last error: {}",
                    created.elapsed().as_secs_f64(),
                    shared.session_failures.load(Ordering::Relaxed) - failures_before,
                    shared.last_error()
                );
                SLOW_POLL
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out: {running}/{replicas} RUNNING in the store after {:.1} s; hollow nodes given {delivered}, acknowledged {acked}; last error: {}",
                    created.elapsed().as_secs_f64(),
                    shared.last_error()
                ));
            }
            next_poll = Instant::now() + period;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let manager_run = run_usage.end();
    let own_run = own_run.end();
    // What the bench's own polls cost the manager: a few more, now that it is idle.
    let poll_usage = Usage::begin(&pid);
    for _ in 0..POLL_COST_SAMPLES {
        running_tasks(&mut control, &service.id).await;
    }
    let poll_cpu = poll_usage.end().cpu() / f64::from(POLL_COST_SAMPLES);
    let fmt = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    let running_s = running_at.as_secs_f64();
    println!(
        "  {who}, run: service create --replicas {replicas} on {} nodes: all tasks given to the nodes in {}, all RUNNING reports acknowledged in {}, all RUNNING in the store in {running_s:.2} s ({:.0} tasks/s)",
        args.nodes,
        fmt(delivered_at),
        fmt(acked_at),
        replicas as f64 / running_s
    );
    println!("  {who}, run: {}", manager_run.describe("manager"));
    println!("  {who}, run: {}", own_run.describe("hollow process"));
    println!(
        "  {who}, run: of that manager cpu, about {:.2} s went to the bench's {polls} ListTasks polls ({:.0} ms cpu each, {:.0} ms the last one's round trip; every {} s, then every {} ms once all reports were acknowledged)",
        poll_cpu * f64::from(polls),
        poll_cpu * 1e3,
        last_poll.as_secs_f64() * 1e3,
        SLOW_POLL.as_secs(),
        FAST_POLL.as_millis(),
    );
    if kind == Kind::Network {
        println!(
            "  {who}, run: {}",
            network_allocation(&mut control, &service.id).await?
        );
    }
    let failures = shared.session_failures.load(Ordering::Relaxed);
    if failures > 0 {
        println!(
            "  {who}, note: {failures} hollow sessions failed and re-registered; last error: {}",
            shared.last_error()
        );
    }
    nodes.abort_all();
    while nodes.join_next().await.is_some() {}

    let m = run_metrics(args, kind);
    figures.add(flavor, &m[0], running_s);
    figures.add(flavor, &m[1], manager_run.cpu());
    figures.add(flavor, &m[2], manager_join.peak_mb.max(manager_run.peak_mb));
    Ok(running_s)
}

/// Nodes with an address on a network that `on` accepts (`node.attachments`).
fn with_address(nodes: &[api::Node], on: impl Fn(&api::Network) -> bool) -> usize {
    nodes
        .iter()
        .filter(|n| {
            n.attachments
                .iter()
                .any(|a| !a.addresses.is_empty() && a.network.as_ref().is_some_and(&on))
        })
        .count()
}

/// What the allocator gave the service of the network run: its VIPs, and how many of its tasks
/// and of the nodes have an address on the network.
async fn network_allocation(
    control: &mut ControlClient<Channel>,
    service_id: &str,
) -> Result<String, String> {
    let service = control
        .get_service(api::GetServiceRequest {
            service_id: service_id.to_string(),
            insert_defaults: false,
        })
        .await
        .map_err(|s| format!("get service: {s}"))?
        .into_inner()
        .service
        .unwrap_or_default();
    let vips: Vec<String> = service
        .endpoint
        .map(|e| e.virtual_ips.into_iter().map(|v| v.addr).collect())
        .unwrap_or_default();
    let request = api::ListTasksRequest {
        filters: Some(api::list_tasks_request::Filters {
            service_ids: vec![service_id.to_string()],
            ..Default::default()
        }),
    };
    let tasks = control
        .list_tasks(request)
        .await
        .map_err(|s| format!("list tasks: {s}"))?
        .into_inner()
        .tasks;
    let addressed = tasks
        .iter()
        .filter(|t| t.networks.iter().any(|a| !a.addresses.is_empty()))
        .count();
    let nodes = common::list_nodes(control).await?;
    let attached = with_address(&nodes, |n| n.spec.as_ref().is_some_and(|s| !s.ingress));
    Ok(format!(
        "the service's VIPs: {vips:?}; {addressed} of {} tasks and {attached} of {} nodes have an address on a non-ingress network",
        tasks.len(),
        nodes.len()
    ))
}

/// The attachments mode after the join: waits (`--attach-timeout-secs` at most) until every node,
/// the manager's included, has an address on the ingress network, or as many as its subnet holds,
/// then watches the manager's log for `LOG_WATCH` and counts the lines saying that a network has
/// no address left.
async fn attachments(
    args: &Args,
    flavor: &Flavor,
    who: &str,
    manager: &common::Manager,
    control: &mut ControlClient<Channel>,
    figures: &mut Figures,
) -> Result<(), String> {
    let started = Instant::now();
    let wanted = args.nodes as u64 + 1;
    let deadline = started + args.attach_timeout;
    let mut last_print = Instant::now();
    let (ingress, subnet, attached, done) = loop {
        let ingress = common::ingress_network(control)
            .await?
            .ok_or("no ingress network")?;
        // The allocated subnet (the network's IPAM), else the one its spec asks for.
        let subnet = ingress
            .ipam
            .iter()
            .chain(ingress.spec.as_ref().and_then(|s| s.ipam.as_ref()))
            .flat_map(|i| i.configs.iter())
            .map(|c| c.subnet.clone())
            .find(|s| !s.is_empty());
        let capacity = subnet
            .as_deref()
            .and_then(prefix_len)
            .map(common::subnet_capacity);
        let expected = capacity.map_or(wanted, |c| c.min(wanted));
        let nodes = common::list_nodes(control).await?;
        let attached = with_address(&nodes, |n| n.id == ingress.id) as u64;
        if attached >= expected || Instant::now() >= deadline {
            break (ingress, subnet, attached, attached >= expected);
        }
        if last_print.elapsed() >= SLOW_POLL {
            last_print = Instant::now();
            eprintln!(
                "  {:.1} s: {attached} of {wanted} nodes have an ingress address (subnet {}, room for {})",
                started.elapsed().as_secs_f64(),
                subnet.as_deref().unwrap_or("unknown"),
                capacity.map_or("?".into(), |c| c.to_string())
            );
        }
        tokio::time::sleep(ATTACH_POLL).await;
    };
    let attached_at = started.elapsed().as_secs_f64();
    let capacity = subnet
        .as_deref()
        .and_then(prefix_len)
        .map(common::subnet_capacity);
    let exhausted = capacity.is_some_and(|c| c < wanted);
    // The message may come after the last attachment: wait for it (bounded), then watch.
    let pattern = &args.exhausted_pattern;
    if exhausted {
        while manager.log_count(pattern) == 0 && Instant::now() < deadline {
            tokio::time::sleep(FAST_POLL).await;
        }
    }
    tokio::time::sleep(LOG_WATCH).await;
    let messages = manager.log_count(pattern);
    let when = if done {
        format!("{attached_at:.2} s after all were READY")
    } else {
        format!("when the wait ended, {attached_at:.0} s after all were READY")
    };
    println!(
        "  {who}: {attached} of {wanted} nodes (the manager's included) have an address on ingress {} (subnet {}, room for {}) {when}",
        ingress.id,
        subnet.as_deref().unwrap_or("unknown"),
        capacity.map_or("?".into(), |c| c.to_string())
    );
    println!(
        "  {who}: {messages} manager log lines hold {pattern:?} ({:.0} s after the attachments; log level {})",
        LOG_WATCH.as_secs_f64(),
        std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into())
    );
    let m = attach_metrics(args);
    figures.add(flavor, &m[0], attached as f64);
    if done {
        figures.add(flavor, &m[1], attached_at);
    }
    figures.add(flavor, &m[2], messages as f64);
    Ok(())
}

/// The join rows of the table, in the order `bench` records them.
fn join_metrics(args: &Args) -> [String; 3] {
    let n = args.nodes;
    [
        format!("join of {n} nodes: all READY, s"),
        format!("join of {n} nodes: all certificates issued, s"),
        format!("join of {n} nodes: manager CPU s"),
    ]
}

/// The rows of a run of `kind`, in the order `bench` records them.
fn run_metrics(args: &Args, kind: Kind) -> [String; 3] {
    let (n, r) = (args.nodes, args.replicas);
    let on = if kind == Kind::Network {
        ", overlay network"
    } else {
        ""
    };
    [
        format!("{r} replicas on {n} nodes{on}: all RUNNING, s"),
        format!("{r} replicas on {n} nodes{on}: manager CPU s"),
        format!("manager peak RSS over join and run{on}, MB"),
    ]
}

const NETWORK_RATIO_METRIC: &str = "all RUNNING: overlay network / none";

/// The rows of the attachments mode, in the order `attachments` records them.
fn attach_metrics(args: &Args) -> [String; 3] {
    [
        format!("nodes with an ingress address, of {}", args.nodes + 1),
        "ingress addresses: s after all READY".into(),
        format!("manager log lines {:?}", args.exhausted_pattern),
    ]
}

/// The attachments mode's expectations: every node attached, or as many as the asked subnet
/// holds, and then the message of an exhausted network once.
fn attach_rows(args: &Args) -> Vec<Row> {
    let wanted = args.nodes as u64 + 1;
    let capacity = args
        .ingress_subnet
        .as_deref()
        .and_then(prefix_len)
        .map(common::subnet_capacity);
    // The default ingress is a /24, as SwarmKit's.
    let capacity = capacity.unwrap_or(common::subnet_capacity(24));
    let m = attach_metrics(args);
    let messages = if capacity < wanted { 1.0 } else { 0.0 };
    vec![
        Row::new(
            m[0].clone(),
            Target::OursExactly(capacity.min(wanted) as f64),
        ),
        Row::new(m[1].clone(), Target::None),
        Row::new(m[2].clone(), Target::OursExactly(messages)),
    ]
}

fn main() {
    let args = parse_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flavors = Flavor::all();
    let runs = runs();
    // Per node: one connection here and one in swarmd, plus those of joins in flight.
    let nofile = raise_nofile(args.nodes as u64 + 2 * args.join_concurrency as u64 + 256);
    let kinds: &[Kind] = if args.attachments {
        &[Kind::Attachments]
    } else if args.network {
        &[Kind::Plain, Kind::Network]
    } else {
        &[Kind::Plain]
    };
    let what = if args.attachments {
        format!(
            "attachments on ingress {}",
            args.ingress_subnet.as_deref().unwrap_or("(the default)")
        )
    } else if args.network {
        format!(
            "{} replicas without a network, then on an overlay network",
            args.replicas
        )
    } else {
        format!("{} replicas", args.replicas)
    };
    println!(
        "dispatcher benchmark: {} hollow nodes, {what}, {runs} run(s), open-file limit {nofile}",
        args.nodes
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut figures = Figures::default();
    for run in 0..runs {
        println!("run {}/{runs}:", run + 1);
        for flavor in &flavors {
            let mut plain = None;
            for &kind in kinds {
                let perf = args
                    .perf
                    .as_deref()
                    .filter(|_| run == 0 && *flavor == Flavor::Ours && kind != Kind::Network);
                match rt.block_on(bench(&args, flavor, kind, perf, &mut figures)) {
                    Ok(secs) if kind == Kind::Plain => plain = Some(secs),
                    Ok(secs) if kind == Kind::Network => {
                        if let Some(plain) = plain {
                            figures.add(flavor, NETWORK_RATIO_METRIC, secs / plain);
                        }
                    }
                    Ok(_) => {}
                    // SwarmKit's figures with a network are a comparison: the bench goes on
                    // without them.
                    Err(e) if kind == Kind::Network && *flavor != Flavor::Ours => {
                        println!("  {}, overlay network: no figures: {e}", flavor.name());
                    }
                    Err(e) => {
                        eprintln!(
                            "dispatcher benchmark failed ({}, {kind:?}): {e}",
                            flavor.name()
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    let mut rows: Vec<Row> = join_metrics(&args)
        .into_iter()
        .zip([Target::RatioAtMost(JOIN_RATIO), Target::None, Target::None])
        .map(|(m, t)| Row::new(m, t))
        .collect();
    if args.attachments {
        rows.extend(attach_rows(&args));
    } else {
        let targets = [
            Target::OursAtMost(RUNNING_SECS),
            Target::None,
            Target::OursAtMost(PEAK_MB),
        ];
        for (m, t) in run_metrics(&args, Kind::Plain).into_iter().zip(targets) {
            rows.push(Row::new(m, t));
        }
        if args.network {
            for m in run_metrics(&args, Kind::Network) {
                rows.push(Row::new(m, Target::None));
            }
            rows.push(Row::new(
                NETWORK_RATIO_METRIC,
                Target::OursAtMost(NETWORK_RATIO),
            ));
        }
    }
    print_table(&figures, &rows);
}

/// The loopback address hollow node `idx` connects from for its session: 127.1.0.1, 127.1.0.2,
/// ... (250 per third byte; the benchmark's managers listen on loopback). `None` past 64,000 nodes.
fn source_addr(idx: usize) -> Option<std::net::IpAddr> {
    let third = u8::try_from(idx / 250).ok()?;
    let fourth = u8::try_from(idx % 250 + 1).ok()?;
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127, 1, third, fourth,
    )))
}
