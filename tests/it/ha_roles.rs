//! Role changes and agent failover of running nodes (issue 6 items 1, 4 and 7, node side): a
//! promoted worker starts its manager in the same process and joins raft, a demoted manager
//! stops its manager and goes on as a worker, and an agent finds a manager that serves it among
//! the ones it knows. Tasks run `sleep` under the process executor and are counted on the
//! machine by a marker unique to the test, so "no task restarted" means the same PIDs.

use std::time::Duration;

use crate::cluster::{
    Cluster, assert_same_processes, create_sleepers, marker, pids_with, wait_node_ready,
    wait_processes,
};
use crate::harness::{Swarmd, node_cert, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// A second manager (`hostname`) joining `m`'s raft with the manager token.
fn join_manager(m: &Swarmd, hostname: &str) -> Swarmd {
    let (m2, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &m.remote_addr(),
            "--join-token",
            &m.join_tokens().1,
            "--executor",
            "process",
            "--hostname",
            hostname,
        ],
        "node is ready",
        WAIT,
    );
    assert_eq!(code, None, "the joining manager exited; log:\n{}", m2.log());
    m2
}

/// The `manager=` field of a log line.
fn manager_field(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("manager="))
}

/// Rows of `node ls` (through `on`'s control socket) that show a manager status.
fn manager_rows(on: &Swarmd) -> Vec<String> {
    let out = on.ctl(&["node", "ls"]);
    if out.code != 0 {
        return Vec::new();
    }
    out.stdout
        .lines()
        .filter(|l| l.contains("REACHABLE"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_promoted_worker_runs_a_manager_and_keeps_its_task() {
    let mut c = Cluster::start(1, &[], "1s");
    let m = marker("promote");
    create_sleepers(&c, "web", 2, &m);
    c.wait_running("a task on each node", 2, WAIT, |per| per.len() == 2);
    let before = wait_processes(&m, 2);
    let tasks_before = c.tasks();
    let w = &c.workers[0];
    assert!(!w.socket().exists(), "a worker has no control socket");
    let id = node_cert(&w.state_dir()).node_id;

    let promoted = std::time::Instant::now();
    c.manager.ctl_update(&["node", "promote", &id]).ok();
    wait_for("the promoted node's manager", WAIT, || {
        w.log()
            .contains("the promoted node runs its manager")
            .then_some(())
    });
    eprintln!(
        "the promoted node ran its manager {:?} after node promote",
        promoted.elapsed()
    );
    assert_eq!(node_cert(&w.state_dir()).ou, "swarm-manager");
    let log = w.log();
    assert!(log.contains("joined the raft cluster as"), "{log}");
    // Its own control socket answers, and both stores show two managers, one leading.
    for on in [&c.manager, w] {
        let rows = wait_for("two managers", WAIT, || {
            let rows = manager_rows(on);
            (rows.len() == 2).then_some(rows)
        });
        assert_eq!(
            rows.iter().filter(|r| r.ends_with("REACHABLE *")).count(),
            1,
            "{rows:?}"
        );
        assert!(rows.iter().any(|r| r.contains("node-2")), "{rows:?}");
    }
    // Nothing was restarted: same processes, same tasks; the node stays READY.
    assert_same_processes(&m, &before);
    assert_eq!(
        c.tasks(),
        tasks_before,
        "tasks changed across the promotion"
    );
    c.wait_ready(2);

    // Restarted (SIGKILL keeps the tasks), it starts as the manager it now is.
    c.workers[0].kill9();
    assert_eq!(
        c.workers[0].spawn_until("node is ready", WAIT),
        None,
        "{}",
        c.workers[0].log()
    );
    let w = &c.workers[0];
    assert!(w.ctl(&["node", "ls"]).ok().contains("node-2"));
    assert!(w.log().contains("raft member follows"), "{}", w.log());
    c.wait_running("the tasks still run", 2, WAIT, |per| per.len() == 2);
    assert_same_processes(&m, &before);
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn a_worker_finds_the_manager_that_serves_it_among_those_it_remembers() {
    let mut c = Cluster::start(0, &[], "1s");
    let m2 = join_manager(&c.manager, "node-2");
    let follower = m2.remote_addr();
    c.workers.push(m2);
    let w = c.join("node-3");
    c.workers.push(w);
    c.wait_ready(3);
    let m = marker("failover");
    create_sleepers(&c, "web", 3, &m);
    c.wait_running("a task on each node", 3, WAIT, |per| per.len() == 3);
    let before = wait_processes(&m, 3);
    let tasks_before = c.tasks();

    // The worker stops (SIGKILL: its tasks keep running) and comes back remembering a manager
    // that is gone, a follower (which forwards the session to the leader) and the leader.
    let leader = c.manager.remote_addr();
    c.workers[1].kill9();
    let state = c.workers[1].state_dir().join("state.json");
    let remembered = serde_json::json!([
        {"node_id": "", "addr": "127.0.0.1:1"},
        {"node_id": "", "addr": follower},
        {"node_id": "", "addr": leader},
    ]);
    std::fs::write(&state, remembered.to_string()).expect("write state.json");
    c.workers[1].set_extra_args(&["--executor", "process", "--hostname", "node-3"]);
    let skip = c.workers[1].log().len();
    let restarted = std::time::Instant::now();
    assert_eq!(
        c.workers[1].spawn_until("worker node is ready", WAIT),
        None,
        "{}",
        c.workers[1].log()
    );
    let port = |a: &str| a.rsplit(':').next().expect("port").to_string();
    let serving = [port(&leader), port(&follower)];
    wait_for("a session with the leader or the follower", WAIT, || {
        let log = c.workers[1].log();
        log.get(skip..)?
            .lines()
            .any(|l| {
                l.contains("agent session registered")
                    && manager_field(l).is_some_and(|a| serving.contains(&port(a)))
            })
            .then_some(())
    });
    eprintln!(
        "session with a serving manager {:?} after the restart",
        restarted.elapsed()
    );
    let log = c.workers[1].log()[skip..].to_string();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("agent session failed"))
        .collect();
    eprintln!(
        "{} failed session(s) before the leader's: {failed:#?}",
        failed.len()
    );
    for l in &failed {
        let failed_with = manager_field(l).unwrap_or_default();
        assert!(
            failed_with == "127.0.0.1:1",
            "a session failed with a manager that serves it: {l}"
        );
    }
    c.wait_ready(3);
    assert_same_processes(&m, &before);
    assert_eq!(c.tasks(), tasks_before, "tasks changed across the failover");
    // What the session listed (the leader's list, also through the follower) replaced the
    // remembered managers.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state.json")).expect("json");
    let addrs: Vec<&str> = saved
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["addr"].as_str())
        .collect();
    assert!(!addrs.contains(&"127.0.0.1:1"), "{saved}");
    assert!(addrs.iter().any(|a| port(a) == serving[0]), "{saved}");
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn a_demoted_manager_runs_as_a_worker_and_keeps_its_task() {
    let mut c = Cluster::start(0, &[], "1s");
    let m2 = join_manager(&c.manager, "node-2");
    c.workers.push(m2);
    c.wait_ready(2);
    let m = marker("demote");
    create_sleepers(&c, "web", 2, &m);
    c.wait_running("a task on each node", 2, WAIT, |per| per.len() == 2);
    let before = wait_processes(&m, 2);
    let tasks_before = c.tasks();
    let id = node_cert(&c.workers[0].state_dir()).node_id;

    c.manager.ctl_update(&["node", "demote", &id]).ok();
    wait_for("the demoted node runs as a worker", WAIT, || {
        c.workers[0]
            .log()
            .contains("this node now runs as a worker")
            .then_some(())
    });
    let d = &c.workers[0];
    assert_eq!(node_cert(&d.state_dir()).ou, "swarm-worker");
    assert!(!d.socket().exists(), "the control socket is closed");
    let raft = std::fs::read_dir(d.state_dir().join("raft")).expect("raft dir");
    assert_eq!(raft.count(), 0, "raft data removed");
    wait_for("one manager", WAIT, || {
        (manager_rows(&c.manager).len() == 1).then_some(())
    });
    assert_same_processes(&m, &before);
    assert_eq!(c.tasks(), tasks_before, "tasks changed across the demotion");
    c.wait_ready(2);

    // Restarted, it is a worker.
    c.workers[0].kill9();
    assert_eq!(
        c.workers[0].spawn_until("worker node is ready", WAIT),
        None,
        "{}",
        c.workers[0].log()
    );
    assert!(!c.workers[0].socket().exists());
    c.wait_ready(2);
    assert_same_processes(&m, &before);
    c.stop();
    wait_processes(&m, 0);
}

#[test]
fn a_worker_moves_to_the_new_leader_when_the_leader_dies() {
    let mut c = Cluster::start(0, &[], "1s");
    for name in ["node-2", "node-3"] {
        let mgr = join_manager(&c.manager, name);
        c.workers.push(mgr);
    }
    let w = c.join("node-4");
    c.workers.push(w);
    c.wait_ready(4);
    let m = marker("leaderdeath");
    create_sleepers(&c, "web", 4, &m);
    c.wait_running("a task on each node", 4, WAIT, |per| per.len() == 4);
    let before = wait_processes(&m, 4);
    let state = c.workers[2].state_dir().join("state.json");
    wait_for("the worker remembers 3 managers", WAIT, || {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        (saved.as_array()?.len() == 3).then_some(())
    });

    let leader_port = c
        .manager
        .remote_addr()
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let skip = c.workers[2].log().len();
    c.manager.kill9();
    let killed = std::time::Instant::now();
    wait_for("a session with another manager", WAIT, || {
        let log = c.workers[2].log();
        log.get(skip..)?
            .lines()
            .any(|l| {
                l.contains("agent session registered")
                    && manager_field(l).is_some_and(|a| !a.ends_with(&format!(":{leader_port}")))
            })
            .then_some(())
    });
    eprintln!(
        "the worker's session moved to another manager {:?} after the leader's SIGKILL",
        killed.elapsed()
    );
    // The worker is READY on the new leader and none of the processes that ran is gone.
    let survivor = &c.workers[0];
    wait_node_ready(survivor, "node-4", WAIT);
    assert!(
        before.is_subset(&pids_with(&m)),
        "a task process was restarted or lost"
    );
    for w in &mut c.workers {
        w.stop();
    }
}
