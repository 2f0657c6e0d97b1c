//! Nodes on separate hosts (issue 13 item 5): each node runs in a network namespace of its own
//! with a non-loopback address, and no manager is told its address (`--advertise-remote-api`).
//! The first manager listens on its namespace's address only, so its agent cannot reach it on
//! loopback; the others listen on every address, so the leader records them where it saw their
//! raft join come from. Every manager must then be reachable from the other hosts at the address
//! raft and the sessions' manager lists give, and a worker must fail over between them.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::{
    Cluster, create_sleepers, marker, pids_with, wait_node_ready, wait_processes,
};
use crate::ha_cluster::Netns;
use crate::harness::{Swarmd, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const PORT: u16 = 4242;

/// Starts swarmd in namespace `ns` with `args` and waits for `ready` in its log.
fn start_in(ns: &str, args: &[&str], ready: &str) -> Swarmd {
    let (node, code) = Swarmd::start_node_in(Some(ns), args, ready, WAIT);
    if let Some(code) = code {
        panic!("swarmd exited with {code}; log:\n{}", node.log());
    }
    node
}

/// The `Address` that `node inspect` shows for `name` in `section` ("Status:" for the node's
/// IP, "Manager status:" for its raft address).
fn inspect_addr(on: &Swarmd, name: &str, section: &str) -> Option<String> {
    let out = on.ctl(&["node", "inspect", name]);
    if out.code != 0 {
        return None;
    }
    out.stdout
        .lines()
        .skip_while(|l| !l.starts_with(section))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .find_map(|l| l.trim().strip_prefix("Address"))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string())
        .filter(|a| !a.is_empty())
}

/// The manager addresses the worker's sessions gave it (what `state.json` remembers).
fn remembered(worker: &Swarmd) -> BTreeSet<String> {
    let Ok(bytes) = std::fs::read(worker.state_dir().join("state.json")) else {
        return BTreeSet::new();
    };
    let peers: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    peers
        .iter()
        .filter_map(|p| p["addr"].as_str().map(str::to_string))
        .collect()
}

/// The `manager=` field of the last `agent session registered` line of `log`.
fn session_manager(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter(|l| l.contains("agent session registered"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("manager="))
        })
        .map(str::to_string)
}

#[test]
fn nodes_on_separate_hosts_reach_every_manager_at_the_address_it_was_seen_at() {
    let net = match Netns::create(4) {
        Ok(net) => net,
        Err(reason) => {
            println!("skipping: network namespaces unavailable: {reason}");
            return;
        }
    };
    let addr = |i: usize| format!("{}:{PORT}", net.addr(i));
    let common = ["--executor", "process", "--raft-tick-ms", "100"];

    // --- node-1 creates the cluster, listening on its namespace's address only
    let pinned = addr(0);
    let mut args = vec!["--hostname", "node-1", "--listen-remote-api", &pinned];
    args.extend(common);
    let m1 = start_in(net.name(0), &args, "node is ready");
    m1.ctl(&["cluster", "update", "default", "--heartbeatperiod", "1s"])
        .ok();
    let (worker_token, manager_token) = m1.join_tokens();
    let mut c = Cluster {
        manager: m1,
        workers: Vec::new(),
    };

    // --- node-2 joins through node-1, node-3 through node-2 (a follower, which forwards the
    // raft join to the leader), both on every address of their namespaces
    let wildcard = format!("0.0.0.0:{PORT}");
    for (i, through) in [(1, addr(0)), (2, addr(1))] {
        let hostname = format!("node-{}", i + 1);
        let mut args = vec![
            "--hostname",
            &hostname,
            "--listen-remote-api",
            &wildcard,
            "--join-addr",
            &through,
            "--join-token",
            &manager_token,
        ];
        args.extend(common);
        let m = start_in(net.name(i), &args, "node is ready");
        c.workers.push(m);
    }

    // --- node-4, a worker, joins through node-1, the leader: its session stays there, so the
    // failover below also needs node-2 and node-3 to elect a leader at the addresses raft
    // recorded for them
    let through = addr(0);
    let mut args = vec![
        "--hostname",
        "node-4",
        "--join-addr",
        &through,
        "--join-token",
        &worker_token,
    ];
    args.extend(common);
    let w = start_in(net.name(3), &args, "worker node is ready");
    c.workers.push(w);
    c.wait_ready(4);

    // --- raft and the sessions give every manager at its own address
    let managers: BTreeSet<String> = (0..3).map(addr).collect();
    for i in 0..3 {
        let name = format!("node-{}", i + 1);
        let recorded = wait_for(&format!("{name}'s raft address"), WAIT, || {
            inspect_addr(&c.manager, &name, "Manager status:")
        });
        assert_eq!(recorded, addr(i), "{name}'s raft address");
    }
    // And every node's IP is the one it has on its host.
    for i in 0..4 {
        let name = format!("node-{}", i + 1);
        let ip = wait_for(&format!("{name}'s address"), WAIT, || {
            inspect_addr(&c.manager, &name, "Status:")
        });
        assert_eq!(ip, net.addr(i), "{name}'s address");
    }
    // Each manager's own agent talks to it over the local connection.
    for m in std::iter::once(&c.manager).chain(&c.workers[..2]) {
        let log = m.log();
        assert_eq!(session_manager(&log).as_deref(), Some("local"), "{log}");
    }
    let worker = 2;
    wait_for("the worker remembers the 3 managers", WAIT, || {
        (remembered(&c.workers[worker]) == managers).then_some(())
    });

    // --- a service runs a task on every node, managers included
    let m = marker("hosts");
    create_sleepers(&c, "web", 4, &m);
    c.wait_running("a task on each node", 4, WAIT, |per| per.len() == 4);
    let before = wait_processes(&m, 4);

    // --- the worker's manager dies; the worker goes on through another one
    let log = c.workers[worker].log();
    let current = session_manager(&log).expect("the worker's session");
    let killed = (0..3)
        .find(|&i| addr(i) == current)
        .unwrap_or_else(|| panic!("the worker's manager {current} is none of {managers:?}"));
    eprintln!(
        "the worker's session is with node-{}: killing it",
        killed + 1
    );
    if killed == 0 {
        // `c.manager` answers the checks below: make it a manager that stays.
        std::mem::swap(&mut c.manager, &mut c.workers[0]);
    }
    let victim = if killed == 0 { 0 } else { killed - 1 };
    let skip = log.len();
    c.workers[victim].kill9();
    let failover = std::time::Instant::now();
    let other = wait_for("a session with another manager", WAIT, || {
        let log = c.workers[worker].log();
        session_manager(log.get(skip..)?).filter(|a| *a != current)
    });
    eprintln!(
        "the worker registered with {other} {:?} after the SIGKILL",
        failover.elapsed()
    );
    assert!(managers.contains(&other), "{other} is none of {managers:?}");
    wait_node_ready(&c.manager, "node-4", WAIT);
    assert!(
        before.is_subset(&pids_with(&m)),
        "a task process was restarted or lost"
    );

    c.stop();
    // The killed manager's task outlived it; it is ours to end: each task is a process group
    // led by the marked shell.
    for pid in pids_with(&m) {
        let _ = std::process::Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status();
    }
    drop(net);
}
