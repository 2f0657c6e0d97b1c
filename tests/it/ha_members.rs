//! Raft membership through the real binaries (spec 1.3, 4.2, 5.8): three managers joined with
//! the manager token (short raft ticks, as the harness starts every node), a stopped manager shown
//! UNREACHABLE, demotion of a follower and of the leader removing them from raft, changes that
//! would lose quorum refused with SwarmKit's messages, and the managers list agents are given.

use std::time::{Duration, Instant};

use crate::harness::{Swarmd, free_port, wait_for};

const LIMIT: Duration = Duration::from_secs(60);

fn join(addr: &str, token: &str, hostname: &str, ready: &str) -> Swarmd {
    // A manager restarted on the same state dir must keep its raft address.
    let listen = format!("127.0.0.1:{}", free_port());
    let (m, code) = Swarmd::start_node(
        &[
            "--join-addr",
            addr,
            "--join-token",
            token,
            "--hostname",
            hostname,
            "--listen-remote-api",
            &listen,
        ],
        ready,
        LIMIT,
    );
    if let Some(code) = code {
        panic!("{hostname} exited with {code}; log:\n{}", m.log());
    }
    m
}

/// The `node ls` row of `hostname`, if listed.
fn row(ls: &str, hostname: &str) -> Option<String> {
    ls.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(hostname))
        .map(str::to_string)
}

/// The manager status column of a row (the sixth: ID, name, membership, status, availability,
/// manager status, then `*` for the leader): REACHABLE, UNREACHABLE, ... or empty.
fn status(row: &str) -> &str {
    row.split_whitespace().nth(5).unwrap_or("")
}

/// How many rows of a `node ls` listing carry a manager status.
fn manager_rows(ls: &str) -> usize {
    ls.lines()
        .filter(|l| ["REACHABLE", "UNREACHABLE", "UNKNOWN"].contains(&status(l)))
        .count()
}

fn node_id(ls: &str, hostname: &str) -> String {
    row(ls, hostname)
        .and_then(|r| r.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| panic!("no {hostname} in\n{ls}"))
}

/// Waits until `m`'s `node ls` satisfies `f`; returns the listing.
fn wait_ls(m: &Swarmd, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = m.ctl(&["node", "ls"]);
        if out.code == 0 && f(&out.stdout) {
            return out.stdout;
        }
        if Instant::now() >= deadline {
            let log = m.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out after {LIMIT:?} waiting for {what}; last node ls: {out:?}\nlog tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port of `host:port` (managers on a fixed port advertise `0.0.0.0:<port>` unless told an
/// address).
fn port(addr: &str) -> String {
    addr.rsplit_once(':').map_or("", |(_, p)| p).to_string()
}

/// The (node ID, port) pairs a worker's sessions told it, sorted.
fn managers_in_state_json(worker: &Swarmd) -> Vec<(String, String)> {
    let Ok(bytes) = std::fs::read(worker.state_dir().join("state.json")) else {
        return Vec::new();
    };
    let peers: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut out: Vec<(String, String)> = peers
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap_or_default().to_string(),
                port(p["addr"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    out.sort();
    out
}

/// Whether `leader`'s role manager logged `node_id`'s change to worker.
fn role_changed(leader: &Swarmd, node_id: &str) -> bool {
    leader.log().lines().any(|l| {
        l.contains("node role changed") && l.contains(node_id) && l.contains("swarm-worker")
    })
}

/// Every one of `hosts` is a manager and REACHABLE in a `node ls`.
fn all_reachable(ls: &str, hosts: &[&str]) -> bool {
    hosts
        .iter()
        .all(|h| row(ls, h).is_some_and(|r| status(&r) == "REACHABLE"))
}

fn wait_role_change(leader: &Swarmd, node_id: &str) {
    wait_for("the node's role changed to worker", LIMIT, || {
        role_changed(leader, node_id).then_some(())
    });
}

#[test]
fn demotions_and_removals_change_raft_membership_safely() {
    let m1 = Swarmd::start();
    let (worker_token, manager_token) = m1.join_tokens();
    let addr = m1.remote_addr();
    let mut m2 = join(&addr, &manager_token, "node-2", "node is ready");
    let mut m3 = join(&addr, &manager_token, "node-3", "node is ready");
    let ls = wait_ls(&m1, "three reachable managers", |ls| {
        all_reachable(ls, &["node-1", "node-2", "node-3"])
    });
    assert!(
        row(&ls, "node-1").expect("node-1").ends_with("REACHABLE *"),
        "{ls}"
    );
    let (id1, id2, id3) = (
        node_id(&ls, "node-1"),
        node_id(&ls, "node-2"),
        node_id(&ls, "node-3"),
    );

    // A worker's sessions list every manager with its remote address.
    let worker = join(&addr, &worker_token, "worker-1", "worker node is ready");
    let mut expected = vec![
        (id1.clone(), port(&m1.remote_addr())),
        (id2.clone(), port(&m2.remote_addr())),
        (id3.clone(), port(&m3.remote_addr())),
    ];
    expected.sort();
    let deadline = Instant::now() + LIMIT;
    while managers_in_state_json(&worker) != expected {
        assert!(
            Instant::now() < deadline,
            "the worker was not told of all three managers: {:?}, want {expected:?}",
            managers_in_state_json(&worker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Three managers, one stopped: it turns UNREACHABLE within a bound; demoting another would
    // leave two members with one reachable (a loss of quorum) and is refused; removing any
    // manager is refused; nothing changes.
    m3.kill9();
    let stopped = Instant::now();
    wait_ls(&m1, "node-3 unreachable", |ls| {
        row(ls, "node-3").is_some_and(|r| status(&r) == "UNREACHABLE")
    });
    let unreachable_after = stopped.elapsed();
    // Election timeout is 1 s with the harness's 100 ms ticks.
    assert!(
        unreachable_after < Duration::from_secs(15),
        "{unreachable_after:?}"
    );
    eprintln!("a killed manager showed UNREACHABLE after {unreachable_after:?}");
    let out = m1.ctl_update(&["node", "demote", &id2]);
    assert!(
        out.err()
            .contains("can't remove member from the raft: this would result in a loss of quorum"),
        "{out:?}"
    );
    for id in [&id1, &id2, &id3] {
        for force in [false, true] {
            let args: Vec<&str> = if force {
                vec!["node", "rm", "--force", id]
            } else {
                vec!["node", "rm", id]
            };
            let out = m1.ctl(&args);
            let msg = format!(
                "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
            );
            assert!(out.err().contains(&msg), "{args:?}: {out:?}");
        }
    }
    assert_eq!(m3.spawn_until("node is ready", LIMIT), None, "{}", m3.log());
    wait_ls(&m1, "three managers reachable again", |ls| {
        all_reachable(ls, &["node-1", "node-2", "node-3"])
    });
    assert!(!role_changed(&m1, &id1) && !role_changed(&m1, &id2) && !role_changed(&m1, &id3));

    // Demoting a running follower leaves two raft members; it shows no manager status and its
    // role changes to worker.
    m1.ctl_update(&["node", "demote", &id3]).ok();
    let ls = wait_ls(&m1, "node-3 demoted and out of raft", |ls| {
        row(ls, "node-3").is_some_and(|r| status(&r).is_empty())
    });
    wait_role_change(&m1, &id3);
    let managers = manager_rows(&ls);
    assert_eq!(managers, 2, "{ls}");
    wait_for("the worker told of two managers", LIMIT, || {
        let m = managers_in_state_json(&worker);
        (m.len() == 2 && m.iter().all(|(id, _)| *id != id3)).then_some(())
    });
    let log = m1.log();
    assert!(log.contains("demoted node removed from raft"), "{log}");
    // The removed member, still running, disturbs nobody: after several election timeouts the
    // same manager leads and writes commit.
    std::thread::sleep(Duration::from_secs(4));
    let ls = m1.ctl(&["node", "ls"]).ok().to_string();
    assert!(
        row(&ls, "node-1").expect("node-1").ends_with("REACHABLE *"),
        "{ls}"
    );
    m1.ctl_stdin(&["config", "create", "after-demotion"], b"x")
        .ok();
    m3.kill9();

    // Two managers, one stopped: the survivor is a minority and answers every call with the
    // no-leader message (as SwarmKit's leader, which steps down without a quorum), changing
    // nothing.
    m2.kill9();
    for args in [vec!["node", "ls"], vec!["node", "demote", id1.as_str()]] {
        let out = m1.ctl_update(&args);
        assert!(
            out.err().contains("The swarm does not have a leader"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(m2.spawn_until("node is ready", LIMIT), None, "{}", m2.log());
    wait_ls(&m1, "both managers back and reachable", |ls| {
        all_reachable(ls, &["node-1", "node-2"])
    });
    assert!(!role_changed(&m1, &id1) && !role_changed(&m1, &id2));

    // Demoting the leader: it leaves raft and the other manager leads.
    let demoted = Instant::now();
    m1.ctl_update(&["node", "demote", &id1]).ok();
    let ls = wait_ls(
        &m2,
        "node-2 leads and node-1 is a worker out of raft",
        |ls| {
            row(ls, "node-2").is_some_and(|r| r.ends_with("REACHABLE *"))
                && row(ls, "node-1").is_some_and(|r| status(&r).is_empty())
        },
    );
    eprintln!(
        "demoting the leader: node-2 listed as leader after {:?}",
        demoted.elapsed()
    );
    wait_for("node-1's role changed to worker", LIMIT, || {
        (role_changed(&m1, &id1) || role_changed(&m2, &id1)).then_some(())
    });
    assert_eq!(manager_rows(&ls), 1, "{ls}");
    // The new leader accepts writes.
    m2.ctl_stdin(&["config", "create", "after-handover"], b"x")
        .ok();
    drop(worker);
}

#[test]
fn a_demoted_leader_of_three_hands_over_to_a_follower() {
    let m1 = Swarmd::start();
    let (_, manager_token) = m1.join_tokens();
    let addr = m1.remote_addr();
    let m2 = join(&addr, &manager_token, "node-2", "node is ready");
    let m3 = join(&addr, &manager_token, "node-3", "node is ready");
    let ls = wait_ls(&m1, "three reachable managers", |ls| {
        all_reachable(ls, &["node-1", "node-2", "node-3"])
    });
    let id1 = node_id(&ls, "node-1");
    m1.ctl_stdin(&["config", "create", "before-handover"], b"x")
        .ok();

    let demoted = Instant::now();
    m1.ctl_update(&["node", "demote", &id1]).ok();
    // A follower's own listing shows itself and its leader reachable; wait until one of them
    // leads without node-1 in raft.
    let (_, ls) = wait_for("a follower leads without node-1", LIMIT, || {
        [&m2, &m3].into_iter().find_map(|m| {
            let out = m.ctl(&["node", "ls"]);
            let ls = out.stdout;
            let leads = ls
                .lines()
                .any(|l| l.ends_with("REACHABLE *") && !l.contains(&id1));
            let out_of_raft = row(&ls, "node-1").is_some_and(|r| status(&r).is_empty());
            (out.code == 0 && leads && out_of_raft).then_some((m, ls))
        })
    });
    eprintln!(
        "demoting the leader of three: a follower listed as leader after {:?}",
        demoted.elapsed()
    );
    assert_eq!(manager_rows(&ls), 2, "{ls}");
    let new_leader = if row(&ls, "node-2").is_some_and(|r| r.ends_with("REACHABLE *")) {
        &m2
    } else {
        &m3
    };
    // The new leader's role manager finishes the demotion.
    let deadline = Instant::now() + LIMIT;
    while !role_changed(new_leader, &id1) {
        if Instant::now() >= deadline {
            let pick = |m: &Swarmd| {
                m.log()
                    .lines()
                    .filter(|l| l.contains("role") || l.contains("demot") || l.contains("leader"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "node-1's role never changed to worker\nm1:\n{}\nm2:\n{}\nm3:\n{}",
                pick(&m1),
                pick(&m2),
                pick(&m3)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every acknowledged write is there and new ones commit on two voters.
    assert!(
        new_leader
            .ctl(&["config", "ls"])
            .ok()
            .contains("before-handover")
    );
    new_leader
        .ctl_stdin(&["config", "create", "after-handover"], b"x")
        .ok();
}
