//! Fault tests of a 3-manager cluster (issue 6 item 9a-9c) and the HA figures (item 10): client
//! tasks write over the managers' control sockets (unique creates and versioned updates of a few
//! registers) while managers are killed, paused or cut off; the history is then checked
//! (history.rs): acknowledged creates everywhere, nothing unattempted, registers linearizable.
//!
//! Clients write to one manager and move to the next one when it fails, so they find the leader
//! whether or not followers forward writes. A register op is a read then a compare-and-set on the
//! version read; the read is kept in the history only when that write was accepted on the same
//! socket (so the value read was current then), a rule older than the forwarding of reads to the
//! leader that still costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::control_client::ControlClient;
use testkit::fixtures::service_spec;
use tonic::transport::Channel;

use crate::ha_cluster::Cluster;
use crate::harness::local_read;
use crate::history::{self, Op, OpKind, Outcome};

const REGISTERS: usize = 3;
const INITIAL: &str = "0";
const COUNTER: &str = "counter";

pub(crate) fn client(socket: &std::path::Path) -> ControlClient<Channel> {
    ControlClient::new(ca::control_channel(socket).expect("control channel"))
}

pub(crate) fn config_spec(name: &str, counter: Option<&str>) -> api::ConfigSpec {
    api::ConfigSpec {
        annotations: Some(api::Annotations {
            name: name.to_string(),
            labels: counter
                .map(|v| BTreeMap::from([(COUNTER.to_string(), v.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        }),
        data: b"v".to_vec(),
        ..Default::default()
    }
}

fn counter_of(c: &api::Config) -> String {
    c.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .and_then(|a| a.labels.get(COUNTER))
        .cloned()
        .unwrap_or_default()
}

/// How a client behaves.
#[derive(Clone, Default)]
pub(crate) struct ClientCfg {
    /// Always this manager (to see what it acknowledges), else the next one after a failure.
    pub pinned: Option<usize>,
    /// Always the manager this names at the time of each op (overrides `pinned`).
    pub follow: Option<Arc<AtomicUsize>>,
    pub timeout: Duration,
    /// Sends `timeout` as the request's deadline (`grpc-timeout`) too.
    pub deadline: bool,
}

/// Client tasks running on a runtime until `finish`.
pub(crate) struct Workload {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Op>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    t0: Instant,
}

fn classify(status: &tonic::Status) -> Outcome {
    if status.message().contains("update out of sequence") {
        Outcome::Failed(status.message().to_string())
    } else {
        Outcome::Unknown(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// `msg` as a request, with the client's deadline if it sends one.
fn request<T>(cfg: &ClientCfg, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if cfg.deadline {
        req.set_timeout(cfg.timeout);
    }
    req
}

/// One client's loop: creates and register read-then-write cycles.
async fn run_client(
    id: usize,
    cfg: ClientCfg,
    sockets: Vec<PathBuf>,
    regs: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Op>>>,
) {
    let clients: Vec<_> = sockets.iter().map(|s| client(s)).collect();
    let n = clients.len();
    let mut target = cfg.pinned.unwrap_or(id % n);
    let mut seq = 0usize;
    let record = |op: Op| log.lock().expect("log").push(op);
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if let Some(follow) = &cfg.follow {
            target = follow.load(Ordering::Relaxed);
        }
        let mut c = clients[target].clone();
        let start = Instant::now();
        let ok = if !seq.is_multiple_of(3) {
            let service = seq % 6 == 1;
            let name = if service {
                format!("s{id}-{seq}")
            } else {
                format!("c{id}-{seq}")
            };
            let res = if service {
                tokio::time::timeout(
                    cfg.timeout,
                    c.create_service(request(
                        &cfg,
                        api::CreateServiceRequest {
                            spec: Some(service_spec(&name, 0, "busybox:latest")),
                        },
                    )),
                )
                .await
                .map(|r| r.map(|_| ()))
            } else {
                tokio::time::timeout(
                    cfg.timeout,
                    c.create_config(request(
                        &cfg,
                        api::CreateConfigRequest {
                            spec: Some(config_spec(&name, None)),
                        },
                    )),
                )
                .await
                .map(|r| r.map(|_| ()))
            };
            let outcome = match res {
                Ok(Ok(())) => Outcome::Ack,
                Ok(Err(s)) => Outcome::Unknown(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Outcome::Unknown("timeout".into()),
            };
            let ok = outcome == Outcome::Ack;
            let kind = if service { "service" } else { "config" };
            record(Op {
                client: id,
                target,
                kind: OpKind::Create(format!("{kind}:{name}")),
                start,
                end: Instant::now(),
                outcome,
            });
            ok
        } else {
            let (reg, reg_id) = &regs[(seq / 3 + id) % regs.len()];
            let read = tokio::time::timeout(
                cfg.timeout,
                c.get_config(request(
                    &cfg,
                    api::GetConfigRequest {
                        config_id: reg_id.clone(),
                    },
                )),
            )
            .await;
            let read_end = Instant::now();
            match read {
                Ok(Ok(resp)) => {
                    let config = resp.into_inner().config.expect("config");
                    let seen = counter_of(&config);
                    let value = format!("{id}.{seq}");
                    let mut spec = config.spec.clone().expect("spec");
                    spec.annotations
                        .get_or_insert_with(Default::default)
                        .labels
                        .insert(COUNTER.into(), value.clone());
                    let wstart = Instant::now();
                    let res = tokio::time::timeout(
                        cfg.timeout,
                        c.update_config(request(
                            &cfg,
                            api::UpdateConfigRequest {
                                config_id: reg_id.clone(),
                                config_version: config.meta.and_then(|m| m.version),
                                spec: Some(spec),
                            },
                        )),
                    )
                    .await;
                    let outcome = match res {
                        Ok(Ok(_)) => Outcome::Ack,
                        Ok(Err(s)) => classify(&s),
                        Err(_) => Outcome::Unknown("timeout".into()),
                    };
                    // Only an accepted compare-and-set shows the read was current: a follower
                    // refuses a stale version as out of sequence too.
                    let acted_as_leader = outcome == Outcome::Ack;
                    let ok = matches!(outcome, Outcome::Ack | Outcome::Failed(_));
                    record(Op {
                        client: id,
                        target,
                        kind: OpKind::Read {
                            reg: reg.clone(),
                            value: seen,
                        },
                        start,
                        end: read_end,
                        outcome: if acted_as_leader {
                            Outcome::Ack
                        } else {
                            Outcome::Unknown("not confirmed by a write on the same manager".into())
                        },
                    });
                    record(Op {
                        client: id,
                        target,
                        kind: OpKind::Write {
                            reg: reg.clone(),
                            value,
                        },
                        start: wstart,
                        end: Instant::now(),
                        outcome,
                    });
                    ok
                }
                _ => false,
            }
        };
        if !ok {
            if cfg.pinned.is_none() {
                target = (target + 1) % n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Workload {
    pub(crate) fn start(
        rt: &tokio::runtime::Runtime,
        sockets: Vec<PathBuf>,
        regs: &[(String, String)],
        clients: &[ClientCfg],
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handles = clients
            .iter()
            .enumerate()
            .map(|(id, cfg)| {
                rt.spawn(run_client(
                    id,
                    cfg.clone(),
                    sockets.clone(),
                    regs.to_vec(),
                    stop.clone(),
                    log.clone(),
                ))
            })
            .collect();
        Workload {
            stop,
            log,
            handles,
            t0: Instant::now(),
        }
    }

    /// The ops recorded so far.
    pub(crate) fn snapshot(&self) -> Vec<Op> {
        self.log.lock().expect("log").clone()
    }

    /// First acknowledged write (create or register write) that started after `t`, and where,
    /// on another manager than `not_by` (whose answers sent before `t` may still be read after).
    /// One started before `t` may have been committed before it (a follower's forward to the
    /// leader killed at `t`, answered just after): no sign of a new leader.
    pub(crate) fn first_write_ack_after(
        &self,
        t: Instant,
        not_by: usize,
    ) -> Option<(Instant, usize)> {
        self.snapshot()
            .iter()
            .filter(|op| op.outcome == Outcome::Ack && op.start > t && op.target != not_by)
            .filter(|op| !matches!(op.kind, OpKind::Read { .. }))
            .map(|op| (op.end, op.target))
            .min_by_key(|(end, _)| *end)
    }

    /// Waits (bounded) until a write is acknowledged after now, by any manager: the workload
    /// makes progress.
    pub(crate) fn wait_progress(&self, what: &str) {
        let t = Instant::now();
        crate::harness::wait_for(what, Duration::from_secs(30), || {
            self.first_write_ack_after(t, usize::MAX)
        });
    }

    pub(crate) fn finish(self, rt: &tokio::runtime::Runtime) -> (Vec<Op>, Instant) {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for h in self.handles {
                tokio::time::timeout(Duration::from_secs(60), h)
                    .await
                    .expect("client stops within 60s")
                    .expect("client task");
            }
        });
        let log = self.log.lock().expect("log").clone();
        (log, self.t0)
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Creates the registers on the leader: (name, config id).
pub(crate) fn create_registers(
    rt: &tokio::runtime::Runtime,
    c: &mut Cluster,
) -> Vec<(String, String)> {
    let leader = c.leader(Duration::from_secs(30));
    let socket = c.managers[leader].socket();
    rt.block_on(async {
        let mut cl = client(&socket);
        let mut regs = Vec::new();
        for k in 0..REGISTERS {
            let name = format!("reg-{k}");
            let config = cl
                .create_config(api::CreateConfigRequest {
                    spec: Some(config_spec(&name, Some(INITIAL))),
                })
                .await
                .expect("create register")
                .into_inner()
                .config
                .expect("config");
            regs.push((name, config.id));
        }
        regs
    })
}

/// A manager's configs and services (`config:<name>`, `service:<name>`) and register values,
/// read from its own store (the `swarmd-local-read` header: a plain read on any socket is
/// answered by the leader); None when it does not answer.
async fn store_view(socket: PathBuf) -> Option<(BTreeSet<String>, BTreeMap<String, String>)> {
    let mut cl = client(&socket);
    let limit = Duration::from_secs(10);
    let configs = tokio::time::timeout(
        limit,
        cl.list_configs(local_read(api::ListConfigsRequest::default())),
    )
    .await
    .ok()?
    .ok()?
    .into_inner()
    .configs;
    let services = tokio::time::timeout(
        limit,
        cl.list_services(local_read(api::ListServicesRequest::default())),
    )
    .await
    .ok()?
    .ok()?
    .into_inner()
    .services;
    let name = |a: Option<&api::Annotations>| a.map(|a| a.name.clone()).unwrap_or_default();
    let mut set = BTreeSet::new();
    let mut regs = BTreeMap::new();
    for c in &configs {
        let n = name(c.spec.as_ref().and_then(|s| s.annotations.as_ref()));
        if n.starts_with("reg-") {
            regs.insert(n.clone(), counter_of(c));
        }
        set.insert(format!("config:{n}"));
    }
    for s in &services {
        set.insert(format!(
            "service:{}",
            name(s.spec.as_ref().and_then(|s| s.annotations.as_ref()))
        ));
    }
    Some((set, regs))
}

/// Waits (bounded) until every manager holds the same store, then checks the history against it.
pub(crate) fn verify(rt: &tokio::runtime::Runtime, c: &mut Cluster, history: &[Op], t0: Instant) {
    if let Err(e) = check(rt, c, history, t0) {
        panic!("{e}");
    }
}

/// What `verify` checks, as an error instead of a panic (for a cluster whose history is only
/// reported, as SwarmKit's).
pub(crate) fn check(
    rt: &tokio::runtime::Runtime,
    c: &mut Cluster,
    history: &[Op],
    t0: Instant,
) -> Result<(), String> {
    let running = c.running();
    let sockets: Vec<PathBuf> = running.iter().map(|&i| c.managers[i].socket()).collect();
    let start = Instant::now();
    let views = loop {
        let views: Vec<_> = rt.block_on(async {
            let mut v = Vec::new();
            for s in &sockets {
                v.push(store_view(s.clone()).await);
            }
            v
        });
        let all_equal = views.iter().all(|v| v.is_some() && *v == views[0]);
        if all_equal {
            break views.into_iter().flatten().collect::<Vec<_>>();
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "managers' stores still differ after 60s: {:?}",
                views
                    .iter()
                    .map(|v| v.as_ref().map(|(s, r)| (s.len(), r.clone())))
                    .collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("history: {}", history::summary(history));
    let scope = |n: &str| n.starts_with("config:c") || n.starts_with("service:s");
    for (i, (set, _)) in views.iter().enumerate() {
        history::check_creates(history, set, scope).map_err(|e| format!("manager {i}: {e}"))?;
    }
    // The final values, read once everything settled, close each register's history.
    let now = Instant::now();
    let mut full = history.to_vec();
    for (reg, value) in &views[0].1 {
        full.push(Op {
            client: usize::MAX,
            target: 0,
            kind: OpKind::Read {
                reg: reg.clone(),
                value: value.clone(),
            },
            start: now,
            end: now,
            outcome: Outcome::Ack,
        });
    }
    for k in 0..REGISTERS {
        let reg = format!("reg-{k}");
        let ops = history::register_ops(&full, &reg, t0);
        history::check_register(INITIAL, &ops)
            .map_err(|e| format!("register {reg} is not linearizable: {e}"))?;
        println!("register {reg}: {} ops linearizable", ops.len());
    }
    Ok(())
}

fn rotating(n: usize, timeout: Duration) -> Vec<ClientCfg> {
    vec![
        ClientCfg {
            timeout,
            ..Default::default()
        };
        n
    ]
}

/// Campaigns logged so far by every manager (`raft::election`'s line).
fn campaigns(c: &Cluster) -> usize {
    c.managers
        .iter()
        .map(|m| m.log().matches("campaigning").count())
        .sum()
}

/// Kills the leader `kills` times (restarting it each time) under the workload; returns the
/// time from each SIGKILL to the next acknowledged write with the campaigns it took, and the
/// restart error that ended the rounds early if one did (see `Cluster::restart`).
fn kill_leader_rounds(
    rt: &tokio::runtime::Runtime,
    c: &mut Cluster,
    w: &Workload,
    kills: usize,
) -> (Vec<(Duration, usize)>, Option<String>) {
    let mut failovers = Vec::new();
    let bound = c.election_timeout() * 30 + Duration::from_secs(30);
    for round in 0..kills {
        let leader = c.leader(bound);
        let before = campaigns(c);
        let t_kill = Instant::now();
        c.kill(leader);
        let (acked, by) =
            crate::harness::wait_for("a write acknowledged after the kill", bound, || {
                w.first_write_ack_after(t_kill, leader)
            });
        let failover = acked - t_kill;
        let campaigned = campaigns(c) - before;
        println!(
            "kill {}: leader node-{} SIGKILLed; node-{} acknowledged a write {failover:?} later ({campaigned} campaigns)",
            round + 1,
            leader + 1,
            by + 1
        );
        failovers.push((failover, campaigned));
        // The fault itself: the cluster runs on the others for a while before the restart.
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = c.restart(leader) {
            println!("BUG: {e}");
            return (failovers, Some(e));
        }
        c.wait_reachable(c.managers.len(), bound);
        // The restarted member has caught up: its own store holds a create acknowledged after it
        // came back (a leader killed before that fails over more slowly).
        let t = Instant::now();
        let created = crate::harness::wait_for(
            "a create acknowledged with every manager back",
            bound,
            || {
                w.snapshot().into_iter().find_map(|op| match op.kind {
                    OpKind::Create(name) if op.outcome == Outcome::Ack && op.end > t => Some(name),
                    _ => None,
                })
            },
        );
        let socket = c.managers[leader].socket();
        crate::harness::wait_for("the restarted member's store to catch up", bound, || {
            rt.block_on(store_view(socket.clone()))
                .filter(|(set, _)| set.contains(&created))
                .map(|_| ())
        });
    }
    (failovers, None)
}

/// 9a: the leader SIGKILLed 5 times under writes.
#[test]
fn ha_leader_sigkill_five_times_keeps_acknowledged_writes_and_linearizable_registers() {
    let rt = runtime();
    let mut c = Cluster::start(3, 100);
    let regs = create_registers(&rt, &mut c);
    let w = Workload::start(
        &rt,
        c.sockets(),
        &regs,
        &rotating(3, Duration::from_secs(5)),
    );
    w.wait_progress("the workload's first acknowledged write");
    let (failovers, restart_bug) = kill_leader_rounds(&rt, &mut c, &w, 5);
    w.wait_progress("a write acknowledged after the last restart");
    let (history, t0) = w.finish(&rt);
    // Checked on the managers that run (all of them unless a restart failed).
    verify(&rt, &mut c, &history, t0);
    println!("failover times and campaigns (short ticks, 100 ms): {failovers:?}");
    // Within three election timeouts (1 s here): a follower campaigns 1-1.5 election timeouts
    // after its leader went silent (crates/raft/src/election.rs).
    for (f, _) in &failovers {
        assert!(
            *f < Duration::from_secs(3),
            "a new leader acknowledged a write only {f:?} after the kill: {failovers:?}"
        );
    }
    // A SIGKILLed leader comes back on its state dir while the others have a newer leader (see
    // `Cluster::restart`).
    assert!(
        restart_bug.is_none(),
        "a killed leader could not restart (after {} of 5 kills): {}",
        failovers.len(),
        restart_bug.unwrap_or_default()
    );
}

/// 9b: the leader SIGSTOPped for 3 election timeouts, then continued.
#[test]
fn ha_leader_paused_for_three_election_timeouts_acknowledges_nothing_it_should_not() {
    let rt = runtime();
    let mut c = Cluster::start(3, 100);
    let regs = create_registers(&rt, &mut c);
    let leader = c.leader(Duration::from_secs(30));
    let mut clients = rotating(3, Duration::from_secs(5));
    // One client stays on the old leader, its requests in flight across the pause.
    clients.push(ClientCfg {
        pinned: Some(leader),
        timeout: Duration::from_secs(10),
        ..Default::default()
    });
    let w = Workload::start(&rt, c.sockets(), &regs, &clients);
    w.wait_progress("the workload's first acknowledged write");
    c.managers[leader].pause();
    c.unreachable.push(leader);
    let t_pause = Instant::now();
    // The fault itself: paused for three election timeouts.
    std::thread::sleep(c.election_timeout() * 3);
    let new_leader = c.leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    let progress = crate::harness::wait_for(
        "a write acknowledged during the pause",
        Duration::from_secs(30),
        || w.first_write_ack_after(t_pause, leader),
    );
    assert_ne!(progress.1, leader, "the paused leader acknowledged");
    c.managers[leader].resume();
    c.unreachable.retain(|&u| u != leader);
    let t_resume = Instant::now();
    crate::harness::wait_for(
        "the old leader answering again after SIGCONT",
        Duration::from_secs(30),
        || {
            w.snapshot()
                .iter()
                .any(|op| op.target == leader && op.start > t_resume)
                .then_some(())
        },
    );
    c.wait_reachable(3, Duration::from_secs(60));
    let (history, t0) = w.finish(&rt);
    let by_old: Vec<&Op> = history
        .iter()
        .filter(|op| op.target == leader && op.end > t_pause)
        .collect();
    println!(
        "old leader node-{}: {} ops answered after the pause began ({} acknowledged; {} acknowledged after SIGCONT)",
        leader + 1,
        by_old.len(),
        by_old
            .iter()
            .filter(|op| op.outcome == Outcome::Ack)
            .count(),
        by_old
            .iter()
            .filter(|op| op.outcome == Outcome::Ack && op.start > t_resume)
            .count()
    );
    verify(&rt, &mut c, &history, t0);
}

/// 9c: a follower partitioned and healed, then the leader isolated in the minority.
#[test]
fn ha_partitioned_minority_acknowledges_nothing_and_stores_converge_after_heal() {
    let rt = runtime();
    let Some(mut c) = Cluster::start_in_netns(3, 100) else {
        return;
    };
    let regs = create_registers(&rt, &mut c);
    let et = c.election_timeout();
    let mut clients = rotating(2, Duration::from_secs(5));
    for i in 0..3 {
        clients.push(ClientCfg {
            pinned: Some(i),
            timeout: Duration::from_secs(3),
            ..Default::default()
        });
    }
    let w = Workload::start(&rt, c.sockets(), &regs, &clients);
    w.wait_progress("the workload's first acknowledged write");

    // A follower cut off: the majority goes on.
    let leader = c.leader(Duration::from_secs(30));
    let follower = (leader + 1) % 3;
    c.isolate(follower);
    let t1 = Instant::now();
    // The fault itself: the follower stays cut off for three election timeouts.
    std::thread::sleep(et * 3);
    crate::harness::wait_for(
        "the majority acknowledges with a follower cut off",
        Duration::from_secs(30),
        || w.first_write_ack_after(t1 + et, follower),
    );
    c.heal(follower);
    c.wait_reachable(3, Duration::from_secs(60));

    // The leader in the minority.
    let leader = c.leader(Duration::from_secs(30));
    c.isolate(leader);
    let t2 = Instant::now();
    let new_leader = c.leader(et * 30 + Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    let (acked, by) = crate::harness::wait_for(
        "the majority acknowledges with the leader cut off",
        Duration::from_secs(30),
        || w.first_write_ack_after(t2, leader),
    );
    assert_ne!(by, leader);
    println!(
        "leader node-{} isolated; node-{} elected, first write acknowledged {:?} later",
        leader + 1,
        new_leader + 1,
        acked - t2
    );
    // The fault itself: the old leader stays in the minority for three election timeouts, in
    // which it must acknowledge nothing.
    std::thread::sleep(et * 3);
    let t3 = Instant::now();
    let during = w.snapshot();
    c.heal(leader);
    let minority: Vec<&Op> = during
        .iter()
        .filter(|op| op.target == leader && op.start >= t2 && op.end <= t3)
        .filter(|op| !matches!(op.kind, OpKind::Read { .. }))
        .collect();
    let acked_by_minority: Vec<&&Op> = minority
        .iter()
        .filter(|op| op.outcome == Outcome::Ack)
        .collect();
    println!(
        "minority: {} writes answered while isolated, e.g. {:?}",
        minority.len(),
        minority.first().map(|op| &op.outcome)
    );
    assert!(
        acked_by_minority.is_empty(),
        "the isolated old leader acknowledged: {acked_by_minority:#?}"
    );
    c.wait_reachable(3, Duration::from_secs(60));
    w.wait_progress("a write acknowledged after the heal");
    let (history, t0) = w.finish(&rt);
    verify(&rt, &mut c, &history, t0);
}

/// Config creates per second on `socket` by `clients` concurrent clients, `per_client` each.
fn create_rate(
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    clients: usize,
    per_client: usize,
    tag: &str,
) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        let mut handles = Vec::new();
        for k in 0..clients {
            let mut cl = client(socket);
            let tag = tag.to_string();
            handles.push(tokio::spawn(async move {
                for i in 0..per_client {
                    cl.create_config(api::CreateConfigRequest {
                        spec: Some(config_spec(&format!("t{tag}-{k}-{i}"), None)),
                    })
                    .await
                    .expect("create config");
                }
            }));
        }
        for h in handles {
            h.await.expect("client");
        }
        (clients * per_client) as f64 / start.elapsed().as_secs_f64()
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Issue 14 item 4's figures, printed (nothing asserted): 20 leader SIGKILLs with default ticks
/// (1 s, election after 10) under the workload, each killed leader restarted; the time from the
/// kill to the next acknowledged write (min, median, p90, p99, max) and the campaigns each
/// failover took (more than one: a split vote or a candidate refused for its shorter log). Run
/// with `cargo nextest run --test it --run-ignored only failover_distribution --no-capture`.
#[test]
#[ignore = "figures, run by hand (about 10 minutes)"]
fn failover_distribution() {
    let rt = runtime();
    let mut c = Cluster::start(3, 1000);
    let regs = create_registers(&rt, &mut c);
    let w = Workload::start(
        &rt,
        c.sockets(),
        &regs,
        &rotating(4, Duration::from_secs(5)),
    );
    w.wait_progress("the workload's first acknowledged write");
    let (rounds, restart_bug) = kill_leader_rounds(&rt, &mut c, &w, 20);
    w.finish(&rt);
    let mut times: Vec<Duration> = rounds.iter().map(|(t, _)| *t).collect();
    times.sort();
    let rank = |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    let extra: Vec<usize> = rounds.iter().map(|(_, n)| n.saturating_sub(1)).collect();
    let in_a_row = extra.iter().filter(|&&n| n >= 2).count();
    println!(
        "FIGURE failover over {} leader kills, default ticks: min {:?} median {:?} p90 {:?} p99 {:?} max {:?}; \
         failovers that took more than one campaign {}, of which two or more extra in a row {in_a_row}; \
         campaigns per failover {:?}; restart error {restart_bug:?}",
        times.len(),
        times[0],
        rank(0.5),
        rank(0.9),
        rank(0.99),
        times[times.len() - 1],
        extra.iter().filter(|&&n| n > 0).count(),
        rounds.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
    );
}

/// Item 10's figures, printed (nothing asserted): failover time (leader SIGKILL to the next
/// acknowledged write, a fresh 3-manager cluster per kill since a killed leader cannot restart
/// yet, see `Cluster::restart`) with short and default ticks, and config-create throughput of
/// 3 managers against 1. Run with
/// `cargo nextest run --test it --run-ignored only ha_figures --no-capture`.
#[test]
#[ignore = "figures, run by hand"]
fn ha_figures() {
    let rt = runtime();
    for (label, tick, kills) in [
        ("short ticks (100 ms)", 100, 3),
        ("default ticks (1 s)", 1000, 3),
    ] {
        let mut times = Vec::new();
        for _ in 0..kills {
            let mut c = Cluster::start(3, tick);
            let regs = create_registers(&rt, &mut c);
            let w = Workload::start(
                &rt,
                c.sockets(),
                &regs,
                &rotating(3, Duration::from_secs(5)),
            );
            std::thread::sleep(Duration::from_secs(1));
            let leader = c.leader(Duration::from_secs(120));
            let t = Instant::now();
            c.kill(leader);
            let (acked, _) = crate::harness::wait_for(
                "a write after the kill",
                Duration::from_secs(120),
                || w.first_write_ack_after(t, leader),
            );
            times.push(acked - t);
            w.finish(&rt);
        }
        println!(
            "FIGURE failover, {label}: median {:?} of {times:?}",
            median(times.clone())
        );
    }
    let mut rates = BTreeMap::new();
    for n in [1usize, 3] {
        let mut c = Cluster::start(n, 100);
        let leader = c.leader(Duration::from_secs(60));
        let socket = c.managers[leader].socket();
        let mut seq = Vec::new();
        let mut conc = Vec::new();
        for round in 0..3 {
            seq.push(create_rate(&rt, &socket, 1, 100, &format!("s{round}")));
            conc.push(create_rate(&rt, &socket, 8, 25, &format!("c{round}")));
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (s, cc) = (med(seq.clone()), med(conc.clone()));
        println!(
            "FIGURE throughput, {n} manager(s): sequential {s:.0}/s {seq:.0?}, 8 clients {cc:.0}/s {conc:.0?}"
        );
        rates.insert(n, (s, cc));
    }
    let (one, three) = (rates[&1], rates[&3]);
    println!(
        "FIGURE throughput ratio 3 vs 1 managers: sequential {:.2}, 8 clients {:.2}",
        three.0 / one.0,
        three.1 / one.1
    );
}
