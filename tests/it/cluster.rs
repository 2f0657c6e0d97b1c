//! A manager and two workers on loopback with the process executor (spec 5.7, 6): services run
//! on every node, a killed worker's tasks move, a returning one stops its stale tasks, restarts
//! and renewals re-run nothing, drains move tasks, role changes and root rotations reach workers
//! through their sessions. Every task runs `sleep` under a shell whose command line carries a
//! marker unique to the test, so the test counts what actually runs on the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ca::CertInfo;

use crate::harness::{Swarmd, free_port, node_cert, tls_material, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A manager (`node-1`) and workers (`node-2`, ...), all with the process executor.
pub struct Cluster {
    pub manager: Swarmd,
    pub workers: Vec<Swarmd>,
}

impl Cluster {
    /// Starts the manager with `manager_args`, sets the heartbeat period, joins `workers`.
    pub fn start(workers: usize, manager_args: &[&str], heartbeat: &str) -> Cluster {
        Self::start_with(workers, manager_args, &[], heartbeat)
    }

    /// Like `start`, each worker started with the extra flags `worker_args` too.
    pub fn start_with(
        workers: usize,
        manager_args: &[&str],
        worker_args: &[&str],
        heartbeat: &str,
    ) -> Cluster {
        let mut args = vec!["--executor", "process"];
        args.extend_from_slice(manager_args);
        let manager = Swarmd::start_with(&args);
        manager
            .ctl(&[
                "cluster",
                "update",
                "default",
                "--heartbeatperiod",
                heartbeat,
            ])
            .ok();
        let mut c = Cluster {
            manager,
            workers: Vec::new(),
        };
        for i in 0..workers {
            let w = c.join_with(&format!("node-{}", i + 2), worker_args);
            c.workers.push(w);
        }
        c.wait_ready(workers + 1);
        c
    }

    pub fn join(&self, hostname: &str) -> Swarmd {
        self.join_with(hostname, &[])
    }

    /// Joins worker `hostname` started with the extra flags `extra`.
    pub fn join_with(&self, hostname: &str, extra: &[&str]) -> Swarmd {
        let addr = self.manager.remote_addr();
        let token = self.manager.join_tokens().0;
        // A fixed remote port: a worker promoted to manager and restarted must come back at
        // the address raft knows it by (a member's address is not updated yet, and with a new
        // one a two-manager cluster has no quorum, so no read or write is served).
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--join-addr",
            &addr,
            "--join-token",
            &token,
            "--executor",
            "process",
            "--hostname",
            hostname,
            "--listen-remote-api",
            &listen,
        ];
        args.extend_from_slice(extra);
        let (w, code) = Swarmd::start_node(&args, "worker node is ready", WAIT);
        assert_eq!(code, None, "worker exited; log:\n{}", w.log());
        w
    }

    /// Waits until `n` nodes are READY.
    pub fn wait_ready(&self, n: usize) {
        wait_for("nodes READY", WAIT, || {
            let ls = self.manager.ctl(&["node", "ls"]);
            let ready = ls.ok().lines().filter(|l| l.contains(" READY ")).count();
            (ready == n).then_some(())
        });
    }

    /// `(service.slot, desired, state, node)` of every task, as `task ls` shows them.
    pub fn tasks(&self) -> Vec<(String, String, String, String)> {
        let out = self.manager.ctl(&["task", "ls"]);
        out.ok()
            .lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // ID, service.slot, desired, state, <ago...>, node
                (f.len() >= 5).then(|| {
                    (
                        f[1].to_string(),
                        f[2].to_string(),
                        f[3].to_string(),
                        f.last().expect("node").to_string(),
                    )
                })
            })
            .collect()
    }

    /// Nodes of the tasks that are desired and observed RUNNING, by service slot.
    pub fn running(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (slot, desired, state, node) in self.tasks() {
            if desired == "RUNNING" && state == "RUNNING" {
                out.entry(slot).or_default().push(node);
            }
        }
        out
    }

    /// Waits until `n` slots have exactly one RUNNING task each and `check` holds of the nodes.
    pub fn wait_running(
        &self,
        what: &str,
        n: usize,
        limit: Duration,
        check: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) -> BTreeMap<String, usize> {
        wait_for(what, limit, || {
            let running = self.running();
            if running.len() != n || running.values().any(|nodes| nodes.len() != 1) {
                return None;
            }
            let mut per_node = BTreeMap::new();
            for nodes in running.values() {
                *per_node.entry(nodes[0].clone()).or_insert(0) += 1;
            }
            check(&per_node).then_some(per_node)
        })
    }

    /// Stops every node gracefully (their agents shut their tasks down).
    pub fn stop(mut self) {
        for w in &mut self.workers {
            if w.child.is_some() {
                w.stop();
            }
        }
        self.manager.stop();
    }
}

/// Waits until `on`'s `node ls` shows node `hostname` READY.
pub fn wait_node_ready(on: &Swarmd, hostname: &str, limit: Duration) {
    wait_for(&format!("{hostname} READY"), limit, || {
        let out = on.ctl(&["node", "ls"]);
        (out.code == 0
            && out
                .stdout
                .lines()
                .any(|l| l.contains(hostname) && l.contains(" READY ")))
        .then_some(())
    });
}

/// The task processes marked `marker` are still `before`: none was restarted or lost.
#[track_caller]
pub fn assert_same_processes(marker: &str, before: &BTreeSet<u32>) {
    assert_eq!(
        &pids_with(marker),
        before,
        "a task process was restarted or lost"
    );
}

/// PIDs of the processes whose command line contains `marker`.
pub fn pids_with(marker: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            out.insert(pid);
        }
    }
    out
}

pub fn marker(test: &str) -> String {
    format!("swarmkit-it-{test}-{}", std::process::id())
}

pub fn create_sleepers(c: &Cluster, name: &str, replicas: usize, marker: &str) {
    let replicas = replicas.to_string();
    c.manager.create_shell_service(
        name,
        &[
            "--image",
            "busybox",
            "--replicas",
            &replicas,
            "--restart-delay",
            "1s",
        ],
        &format!("sleep 120 # {marker}"),
    );
}

pub fn wait_processes(marker: &str, n: usize) -> BTreeSet<u32> {
    wait_for(&format!("{n} task processes"), WAIT, || {
        let pids = pids_with(marker);
        (pids.len() == n).then_some(pids)
    })
}

#[test]
fn three_nodes_run_a_spread_service_and_drain_moves_it() {
    let c = Cluster::start(2, &[], "1s");
    let ls = c.manager.ctl(&["node", "ls"]);
    for name in ["node-1", "node-2", "node-3"] {
        assert!(ls.ok().contains(name), "{}", ls.stdout);
    }
    let m = marker("spread");
    create_sleepers(&c, "web", 6, &m);
    let per_node = c.wait_running("6 tasks spread", 6, WAIT, |per| {
        per.len() == 3 && per.values().all(|&n| n == 2)
    });
    assert_eq!(per_node.len(), 3);
    wait_processes(&m, 6);

    c.manager.ctl(&["node", "drain", "node-2"]).ok();
    c.wait_running("tasks off the drained node", 6, WAIT, |per| {
        !per.contains_key("node-2") && per.values().all(|&n| n == 3)
    });
    wait_processes(&m, 6);
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn a_killed_worker_is_replaced_and_its_stale_tasks_stop_when_it_returns() {
    let mut c = Cluster::start(2, &[], "1s");
    let m = marker("kill");
    create_sleepers(&c, "web", 6, &m);
    c.wait_running("6 tasks spread", 6, WAIT, |per| per.len() == 3);
    let before = wait_processes(&m, 6);

    // SIGKILL: its processes keep running, but the manager replaces its tasks elsewhere within
    // 3 heartbeats + the restart delay + 5 s.
    let killed = Instant::now();
    c.workers[0].kill9();
    c.wait_running(
        "tasks replaced off the killed worker",
        6,
        Duration::from_secs(3) + Duration::from_secs(1) + Duration::from_secs(5),
        |per| !per.contains_key("node-2"),
    );
    eprintln!(
        "tasks RUNNING elsewhere {:?} after SIGKILL",
        killed.elapsed()
    );
    assert_eq!(
        pids_with(&m).len(),
        8,
        "the killed worker's 2 processes still run"
    );

    // Back: within a heartbeat of reconnecting its stale tasks are shut down, and no slot has
    // two tasks actually running.
    c.workers[0].spawn_until("agent session registered", WAIT);
    let back = Instant::now();
    let pids = wait_processes(&m, 6);
    // Heartbeat 1 s; the stale tasks' SIGTERM and the status round trip take the rest.
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "stale tasks stopped {:?} after reconnecting",
        back.elapsed()
    );
    eprintln!(
        "stale tasks stopped {:?} after reconnecting",
        back.elapsed()
    );
    assert!(pids.iter().filter(|p| before.contains(p)).count() >= 4);
    c.wait_running("converged", 6, WAIT, |per| per.len() == 2);
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn an_agent_restart_reruns_nothing() {
    let mut c = Cluster::start(2, &[], "5s");
    let m = marker("restart");
    create_sleepers(&c, "web", 6, &m);
    c.wait_running("6 tasks spread", 6, WAIT, |per| per.len() == 3);
    let before = wait_processes(&m, 6);
    let tasks_before = c.tasks();

    // Restart one worker (SIGKILL, then start again) well within the heartbeat grace.
    c.workers[1].kill9();
    c.workers[1].spawn_until("agent session registered", WAIT);
    // Nothing may happen here: the time a restarted agent would need to re-run its tasks.
    std::thread::sleep(Duration::from_secs(3));
    assert_same_processes(&m, &before);
    assert_eq!(
        c.tasks(),
        tasks_before,
        "tasks changed across an agent restart"
    );
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn renewal_while_a_service_runs_restarts_no_task() {
    let c = Cluster::start(2, &["--test-cert-expiry", "6s"], "5s");
    let m = marker("renew");
    create_sleepers(&c, "web", 6, &m);
    c.wait_running("6 tasks spread", 6, WAIT, |per| per.len() == 3);
    let before = wait_processes(&m, 6);
    let tasks_before = c.tasks();
    let first = node_cert(&c.workers[0].state_dir());
    wait_for("two renewals", Duration::from_secs(30), || {
        let now = node_cert(&c.workers[0].state_dir());
        (now.not_after > first.not_after + Duration::from_secs(4)).then_some(())
    });
    assert_eq!(pids_with(&m), before);
    assert_eq!(c.tasks(), tasks_before);
    c.wait_ready(3);
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn a_promoted_worker_gets_a_manager_certificate() {
    let c = Cluster::start(1, &[], "1s");
    let w = &c.workers[0];
    let id = node_cert(&w.state_dir()).node_id;
    c.manager.ctl_update(&["node", "promote", &id]).ok();
    wait_for("a manager certificate", WAIT, || {
        let m = ca::KeyStore::new(&w.state_dir()).load().ok()??;
        let info = CertInfo::parse(&m.cert_pem).ok()?;
        (info.ou == "swarm-manager" && info.node_id == id).then_some(())
    });
    // The promoted node then starts its manager and joins raft; stop it once that is done.
    wait_for("the promoted node's manager", WAIT, || {
        w.log()
            .contains("the promoted node runs its manager")
            .then_some(())
    });
    c.stop();
}

/// Waits until `cluster inspect` on `manager` shows no root rotation in progress.
fn wait_rotation_done(manager: &Swarmd, limit: Duration) {
    wait_for("the root rotation to complete", limit, || {
        let text = manager
            .ctl(&["cluster", "inspect", "default"])
            .ok()
            .to_string();
        (!text.contains("rotation")).then_some(())
    });
}

#[test]
fn root_rotation_with_a_worker_down_completes_when_it_returns() {
    let mut c = Cluster::start(2, &[], "1s");
    let old_root = tls_material(&c.manager.state_dir()).root_pem;
    let live_cert = tls_material(&c.workers[0].state_dir()).cert_pem;
    c.workers[1].stop();
    let started = Instant::now();
    c.manager
        .ctl(&["cluster", "update", "default", "--rotate-ca"])
        .ok();
    // The live worker renews through its session; the down one holds the rotation up.
    wait_for("the live worker's renewed certificate", WAIT, || {
        (tls_material(&c.workers[0].state_dir()).cert_pem != live_cert).then_some(())
    });
    let inspect = c.manager.ctl(&["cluster", "inspect", "default"]);
    assert!(
        inspect.ok().contains("Root CA rotation: in progress"),
        "{}",
        inspect.stdout
    );

    c.workers[1].spawn_until("agent session registered", WAIT);
    wait_rotation_done(&c.manager, WAIT);
    eprintln!(
        "root rotation with a worker down for part of it took {:?}",
        started.elapsed()
    );
    // The cluster object swaps the root first; the manager installs it on disk when it sees that.
    let new_root = wait_for("the manager to install the new root", WAIT, || {
        let root = ca::KeyStore::new(&c.manager.state_dir())
            .load()
            .ok()??
            .root_pem;
        (root != old_root).then_some(root)
    });
    for w in &c.workers {
        wait_for("the worker to trust the new root", WAIT, || {
            let m = ca::KeyStore::new(&w.state_dir()).load().ok()??;
            (m.root_pem == new_root).then_some(())
        });
    }
    c.wait_ready(3);
    c.stop();
}

#[test]
fn second_root_rotation_supersedes_the_first() {
    let c = Cluster::start(1, &[], "1s");
    let started = Instant::now();
    for _ in 0..2 {
        c.manager
            .ctl(&["cluster", "update", "default", "--rotate-ca"])
            .ok();
    }
    // One rotation alone takes a few seconds; the second must not hold the first up.
    wait_rotation_done(&c.manager, Duration::from_secs(20));
    eprintln!(
        "two root rotations back to back took {:?}",
        started.elapsed()
    );
    let root = wait_for("the manager to install the new root", WAIT, || {
        let m = ca::KeyStore::new(&c.manager.state_dir()).load().ok()??;
        let issued_by_root = ca::RootCa::from_pem(&m.root_pem, None)
            .ok()?
            .has_issued(&m.cert_pem);
        issued_by_root.then_some(m.root_pem)
    });
    wait_for("the worker to trust the new root", WAIT, || {
        let m = ca::KeyStore::new(&c.workers[0].state_dir()).load().ok()??;
        (m.root_pem == root).then_some(())
    });
    for node in [&c.manager, &c.workers[0]] {
        let log = node.log();
        assert!(!log.contains("failed to install"), "{log}");
    }
    c.wait_ready(2);
    c.stop();
}
