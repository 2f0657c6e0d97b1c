//! Benchmark (figures printed, nothing asserted): the dispatcher under many nodes. One process
//! hosts N simulated agents ("hollow nodes") that speak the real Dispatcher protocol over mutual
//! TLS to one real manager, a swarmd child on a temp state dir. Each hollow node joins with the
//! worker token (CA certificate request), opens a Session with a small node description,
//! heartbeats at the period the dispatcher gives, follows its Assignments stream (COMPLETE, then
//! INCREMENTAL) and reports every task it is given with desired state RUNNING as RUNNING at once,
//! one UpdateTaskStatus call per Assignments message. The manager's own node is drained first, as
//! no agent runs its tasks. Printed: the join time of the N nodes (certificates, sessions, READY
//! in the store; at most `--join-concurrency` joins at a time), then the time from CreateService
//! with R replicas to all R tasks RUNNING in the store (ListTasks on the control socket), with the
//! manager's CPU seconds (utime + stime from /proc) and peak RSS (VmHWM, reset through clear_refs
//! at the start of each phase) over each phase, the same for this process, and what the bench's
//! own ListTasks polls cost the manager.
//!
//! Run with `make bench` or `cargo bench --bench dispatcher` (1000 nodes, 10000 replicas); smaller
//! with `cargo bench --bench dispatcher -- --nodes 50 --replicas 500` (or the environment
//! variables `HOLLOW_NODES`, `HOLLOW_REPLICAS`, `HOLLOW_JOIN_CONCURRENCY`, `HOLLOW_TIMEOUT_SECS`;
//! a phase that does not finish within the timeout, 900 s by default, fails the bench).
//! The bench raises its own open-file limit (and so swarmd's, which inherits it) to the hard
//! limit when N nodes need more descriptors than the soft limit allows.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use api::TaskState;
use api::control_client::ControlClient;
use api::dispatcher_client::DispatcherClient;
use common::{MAX_MESSAGE, SWARMD, connect, start_swarmd};
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
}

fn parse_args() -> Args {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
            })
            .unwrap_or(default)
    };
    let mut args = Args {
        nodes: env("HOLLOW_NODES", 1000) as usize,
        replicas: env("HOLLOW_REPLICAS", 10_000),
        join_concurrency: env("HOLLOW_JOIN_CONCURRENCY", 32) as usize,
        timeout: Duration::from_secs(env("HOLLOW_TIMEOUT_SECS", 900)),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> u64 {
            let v = inline.clone().or_else(|| it.next()).unwrap_or_default();
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
            other if other.starts_with('-') => panic!(
                "unknown flag {other} (known: --nodes, --replicas, --join-concurrency, --timeout-secs)"
            ),
            // A bench name filter from `cargo bench NAME`: nothing to filter here.
            _ => {}
        }
    }
    assert!(args.nodes > 0, "--nodes must be at least 1");
    args.join_concurrency = args.join_concurrency.max(1);
    args
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

/// The remote API address from swarmd's `Listening for connections ... addr=127.0.0.1:NNNN`.
fn remote_addr(log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if line.contains("Listening for connections")
                && line.contains("tcp")
                && let Some((_, rest)) = line.split_once(" addr=")
            {
                let addr: String = rest
                    .trim_start_matches('"')
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                if !addr.is_empty() {
                    return addr;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "swarmd logged no remote listener; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (utime, stime) of process `pid` in clock ticks.
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

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds and peak RSS of a process over one phase of the bench.
struct Usage {
    pid: String,
    tck: f64,
    start: (u64, u64),
    peak_reset: bool,
}

impl Usage {
    fn begin(pid: &str, tck: f64) -> Usage {
        Usage {
            pid: pid.to_string(),
            tck,
            start: cpu_ticks(pid),
            peak_reset: reset_peak_rss(pid),
        }
    }

    fn report(&self, who: &str) -> String {
        let (u, s) = cpu_ticks(&self.pid);
        let (du, ds) = (
            u.saturating_sub(self.start.0) as f64 / self.tck,
            s.saturating_sub(self.start.1) as f64 / self.tck,
        );
        let peak = status_kib(&self.pid, "VmHWM") as f64 / 1024.0;
        let rss = status_kib(&self.pid, "VmRSS") as f64 / 1024.0;
        let since = if self.peak_reset {
            "since the phase began"
        } else {
            "of the whole process: clear_refs failed"
        };
        format!(
            "{who} cpu {:.2} s (user {du:.2} + sys {ds:.2}), peak RSS {peak:.1} MiB ({since}), RSS now {rss:.1} MiB",
            du + ds
        )
    }
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
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One hollow node: join (holding a join slot until its session is registered), then keep a
/// session, re-registering after a pause when one fails.
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
            .and_then(|cfg| ca::tls_channel(&shared.addr, cfg, ca::MANAGER_ROLE))
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

/// Drains the manager's own node so that no task lands where no hollow agent runs it.
async fn drain_managers(control: &mut ControlClient<Channel>) {
    let nodes = control
        .list_nodes(api::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    for node in nodes {
        let mut spec = node.spec.clone().unwrap_or_default();
        spec.availability = api::node_spec::Availability::Drain as i32;
        control
            .update_node(api::UpdateNodeRequest {
                node_id: node.id.clone(),
                node_version: node.meta.and_then(|m| m.version),
                spec: Some(spec),
            })
            .await
            .expect("drain the manager node");
    }
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

async fn bench(
    args: &Args,
    socket: &Path,
    addr: String,
    pid: &str,
    tck: f64,
) -> Result<(), String> {
    let mut control = connect(socket).await;
    let cluster = control
        .list_clusters(api::ListClustersRequest::default())
        .await
        .expect("list clusters")
        .into_inner()
        .clusters
        .into_iter()
        .next()
        .expect("a cluster");
    let token = cluster
        .root_ca
        .and_then(|r| r.join_tokens)
        .map(|t| t.worker)
        .filter(|t| !t.is_empty())
        .expect("the cluster's worker join token");
    let parsed = ca::ParsedToken::parse(&token).expect("worker token");
    let root = ca::download_root_ca(&addr, &parsed)
        .await
        .expect("download the root CA");
    drain_managers(&mut control).await;

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
    let join_usage = Usage::begin(pid, tck);
    let own_join = Usage::begin("self", tck);
    let sem = Arc::new(Semaphore::new(args.join_concurrency));
    let token = Arc::new(token);
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
    let ready_at = shared.start.elapsed();
    println!(
        "join: {} nodes ({} at a time): all certificates issued in {:.2} s, all sessions registered in {:.2} s, all READY in the store in {:.2} s",
        args.nodes,
        args.join_concurrency,
        secs(shared.certs_done_us.load(Ordering::Relaxed)),
        secs(shared.registered_done_us.load(Ordering::Relaxed)),
        ready_at.as_secs_f64()
    );
    println!("join: {}", join_usage.report("manager"));
    println!("join: {}", own_join.report("hollow process"));

    // Phase 2: CreateService with R replicas until all R tasks are RUNNING in the store.
    let run_usage = Usage::begin(pid, tck);
    let own_run = Usage::begin("self", tck);
    let failures_before = shared.session_failures.load(Ordering::Relaxed);
    let created = Instant::now();
    let service = control
        .create_service(api::CreateServiceRequest {
            spec: Some(service_spec("hollow", args.replicas, "busybox:latest")),
        })
        .await
        .expect("create service")
        .into_inner()
        .service
        .expect("the created service");
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
    let manager_run = run_usage.report("manager");
    let own_run = own_run.report("hollow process");
    // What the bench's own polls cost the manager: a few more, now that it is idle.
    let before = cpu_ticks(pid);
    for _ in 0..POLL_COST_SAMPLES {
        running_tasks(&mut control, &service.id).await;
    }
    let after = cpu_ticks(pid);
    let poll_cpu = (after.0 + after.1).saturating_sub(before.0 + before.1) as f64
        / tck
        / f64::from(POLL_COST_SAMPLES);
    let fmt = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "run: service create --replicas {replicas} on {} nodes: all tasks given to the nodes in {}, all RUNNING reports acknowledged in {}, all RUNNING in the store in {:.2} s ({:.0} tasks/s)",
        args.nodes,
        fmt(delivered_at),
        fmt(acked_at),
        running_at.as_secs_f64(),
        replicas as f64 / running_at.as_secs_f64()
    );
    println!("run: {manager_run}");
    println!("run: {own_run}");
    println!(
        "run: of that manager cpu, about {:.2} s went to the bench's {polls} ListTasks polls ({:.0} ms cpu each, {:.0} ms the last one's round trip; every {} s, then every {} ms once all reports were acknowledged)",
        poll_cpu * f64::from(polls),
        poll_cpu * 1e3,
        last_poll.as_secs_f64() * 1e3,
        SLOW_POLL.as_secs(),
        FAST_POLL.as_millis(),
    );
    let failures = shared.session_failures.load(Ordering::Relaxed);
    if failures > 0 {
        println!(
            "note: {failures} hollow sessions failed and re-registered; last error: {}",
            shared.last_error()
        );
    }
    nodes.abort_all();
    Ok(())
}

fn main() {
    let args = parse_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Per node: one connection here and one in swarmd, plus those of joins in flight.
    let nofile = raise_nofile(args.nodes as u64 + 2 * args.join_concurrency as u64 + 256);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let log = dir.path().join("swarmd.log");
    let file = std::fs::File::create(&log).expect("swarmd log file");
    // At info, for the line that tells the remote API's port.
    let daemon = start_swarmd(dir.path(), "info", file);
    let pid = daemon.0.id().to_string();
    let addr = remote_addr(&log);
    let tck = clk_tck();
    println!(
        "dispatcher benchmark: {} hollow nodes, {} replicas, swarmd {SWARMD} (pid {pid}, remote API {addr}), open-file limit {nofile}",
        args.nodes, args.replicas
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket = dir.path().join("swarmd.sock");
    let result = rt.block_on(bench(&args, &socket, addr, &pid, tck));
    // The hollow nodes go before the manager, so that none sees its session fail.
    drop(rt);
    drop(daemon);
    if let Err(e) = result {
        eprintln!("dispatcher benchmark failed: {e}");
        std::process::exit(1);
    }
}
