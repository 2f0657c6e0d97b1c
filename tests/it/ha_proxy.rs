//! Leader forwarding and linearizable reads through the real binaries (issue 6 items 3 and 6):
//! three managers (the harness shortens the raft tick to 100 ms, so the election timeout is
//! 1 s), every kind of Control call on a follower's control socket, a worker and a manager
//! joining through a follower, a forwarding loop refused, and a manager cut off from its quorum
//! answering reads and writes with SwarmKit's no-leader message within 2 x election timeout.

use std::time::{Duration, Instant};

use crate::harness::{Swarmd, local_read, tls_material, wait_for};

const JOIN_LIMIT: Duration = Duration::from_secs(60);
const WORKER_READY: &str = "worker node is ready";
/// `--raft-tick-ms 100` (the harness) x the default election tick 10.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

/// A manager joining through `via` with the manager token, as `hostname`.
fn join_manager(via: &Swarmd, token: &str, hostname: &str) -> Swarmd {
    let addr = via.remote_addr();
    let (m, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &addr,
            "--join-token",
            token,
            "--hostname",
            hostname,
        ],
        "node is ready",
        JOIN_LIMIT,
    );
    assert_eq!(code, None, "{hostname} exited; log:\n{}", m.log());
    assert!(m.log().contains("joined the raft cluster"), "{}", m.log());
    m
}

/// Three managers: node-1 leads, node-2 joined through it, node-3 through node-2 (a follower).
fn three_managers() -> (Swarmd, Swarmd, Swarmd, String) {
    let m1 = Swarmd::start();
    let (worker_token, manager_token) = m1.join_tokens();
    let m2 = join_manager(&m1, &manager_token, "node-2");
    let m3 = join_manager(&m2, &manager_token, "node-3");
    wait_for("three reachable managers", JOIN_LIMIT, || {
        let text = m1.ctl(&["node", "ls"]).ok().to_string();
        (text.matches("REACHABLE").count() == 3).then_some(())
    });
    (m1, m2, m3, worker_token)
}

#[test]
fn every_control_call_works_on_a_followers_socket_and_nodes_join_through_a_follower() {
    let (m1, m2, m3, worker_token) = three_managers();
    // node-3 joined raft through node-2, which is not the leader.
    let ls = m3.ctl(&["node", "ls"]).ok().to_string();
    let leaders: Vec<&str> = ls.lines().filter(|l| l.ends_with("REACHABLE *")).collect();
    assert_eq!(leaders.len(), 1, "{ls}");
    assert!(leaders[0].contains("node-1"), "{ls}");

    // Services: create, list, inspect, update, remove, all on the follower node-3.
    m3.ctl(&["service", "create", "--name", "web", "--image", "nginx"])
        .ok();
    assert!(m3.ctl(&["service", "ls"]).ok().contains("web"));
    m3.ctl(&["service", "update", "web", "--replicas", "3"])
        .ok();
    let inspect = m3.ctl(&["service", "inspect", "web"]).ok().to_string();
    assert!(inspect.contains("Replicas"), "{inspect}");
    assert!(
        inspect
            .lines()
            .any(|l| l.contains("Replicas") && l.contains('3')),
        "{inspect}"
    );
    // The leader has it at once: the write was acknowledged by the leader.
    assert!(m1.ctl(&["service", "inspect", "web"]).ok().contains("web"));
    m3.ctl(&["service", "rm", "web"]).ok();
    let err = m3.ctl(&["service", "inspect", "web"]);
    assert_ne!(err.code, 0, "{err:?}");
    assert!(!m1.ctl(&["service", "ls"]).ok().contains("web"));

    // Configs: create, list, inspect, remove on node-2.
    m2.ctl_stdin(&["config", "create", "cfg-a"], b"payload")
        .ok();
    assert!(m2.ctl(&["config", "ls"]).ok().contains("cfg-a"));
    assert!(
        m2.ctl(&["config", "inspect", "cfg-a"])
            .ok()
            .contains("cfg-a")
    );
    // Linearizable: what the leader acknowledged is read at once on a follower (no waiting
    // for replication, the read is served by the leader).
    for i in 0..5 {
        let name = format!("cfg-l{i}");
        m1.ctl_stdin(&["config", "create", &name], b"x").ok();
        let out = m3.ctl(&["config", "inspect", &name]);
        assert_eq!(out.code, 0, "a follower's read missed {name}: {out:?}");
    }
    m2.ctl(&["config", "rm", "cfg-a"]).ok();
    assert!(!m1.ctl(&["config", "ls"]).ok().contains("cfg-a"));
    // A refused call comes back with the leader's error.
    let dup = m3.ctl_stdin(&["config", "create", "cfg-l0"], b"y");
    assert_ne!(dup.code, 0, "{dup:?}");
    assert!(
        dup.stderr.contains("AlreadyExists") || dup.stderr.contains("already exists"),
        "{dup:?}"
    );

    // A worker joining through a follower gets its certificate and a dispatcher session.
    let addr = m3.remote_addr();
    let (w, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &addr,
            "--join-token",
            &worker_token,
            "--hostname",
            "worker-1",
        ],
        WORKER_READY,
        JOIN_LIMIT,
    );
    assert_eq!(code, None, "worker exited; log:\n{}", w.log());
    let wid = crate::harness::node_cert(&w.state_dir()).node_id;
    wait_for("the worker READY, seen on a follower", JOIN_LIMIT, || {
        let out = m2.ctl(&["node", "ls"]);
        out.ok()
            .lines()
            .any(|l| l.starts_with(&wid) && l.contains("worker-1") && l.contains(" READY "))
            .then_some(())
    });
    drop(w);
    drop((m3, m2, m1));
}

#[test]
fn a_forwarded_call_is_not_forwarded_again() {
    let (m1, m2, _m3, _) = three_managers();
    // A manager certificate of this cluster calling a follower with a `redirect` header (as a
    // forwarding manager does) is refused, not sent on.
    let material = tls_material(&m1.state_dir());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let status = rt.block_on(async {
        let cfg = ca::mtls_client_config(
            &material.root_pem,
            Some((&material.cert_pem, &material.key_pem)),
        )
        .expect("client config");
        let channel = ca::tls_channel(&m2.remote_addr(), cfg, "swarm-manager").expect("channel");
        let mut req = tonic::Request::new(api::ListServicesRequest::default());
        req.metadata_mut()
            .insert("redirect", "127.0.0.1:1".parse().expect("value"));
        tokio::time::timeout(
            Duration::from_secs(20),
            api::control_client::ControlClient::new(channel).list_services(req),
        )
        .await
        .expect("answer in time")
        .expect_err("a second redirect is refused")
    });
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "more than one redirect to leader from: [127.0.0.1:1]"
    );
}

/// Runs swarmctl `args` on `m` and asserts it fails with the no-leader message within
/// 2 x election timeout; returns how long it took.
fn fails_without_leader(m: &Swarmd, args: &[&str], bound: u32) -> Duration {
    let start = Instant::now();
    let out = m.ctl(args);
    let took = start.elapsed();
    assert_ne!(out.code, 0, "{args:?} should fail: {out:?}");
    assert!(out.stderr.contains(NO_LEADER), "{args:?}: {out:?}");
    assert!(
        took < ELECTION_TIMEOUT * bound,
        "{args:?} answered after {took:?}, over {bound} x election timeout"
    );
    took
}

/// The names of the services in `m`'s own store, read on its control socket with the
/// local-read header (not forwarded, not confirmed by a leader).
pub(crate) fn local_services(m: &Swarmd) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = ca::control_channel(&m.socket()).expect("channel");
        let req = local_read(api::ListServicesRequest::default());
        let resp = tokio::time::timeout(
            Duration::from_secs(20),
            api::control_client::ControlClient::new(channel).list_services(req),
        )
        .await
        .expect("answer in time")
        .expect("a local read answers without a leader");
        resp.into_inner()
            .services
            .into_iter()
            .filter_map(|s| s.spec?.annotations.map(|a| a.name))
            .collect()
    })
}

/// Prints the slowest and the median answer of each kind (the figures of the HA note).
fn report(what: &str, times: &[(&str, Duration)]) {
    for kind in ["ls", "create"] {
        let mut t: Vec<Duration> = times
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .collect();
        t.sort();
        eprintln!(
            "{what}: {kind}: {} calls, median {:?}, max {:?}",
            t.len(),
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
}

#[test]
fn a_minority_leader_and_a_follower_without_leader_answer_no_leader_in_time() {
    // The leader left alone: it cannot confirm its leadership, so it serves no read and
    // commits no write, and says so within 2 x election timeout.
    let (m1, mut m2, mut m3, _) = three_managers();
    m1.ctl(&["service", "create", "--name", "before", "--image", "nginx"])
        .ok();
    m2.kill9();
    m3.kill9();
    let mut times = Vec::new();
    let deadline = Instant::now() + ELECTION_TIMEOUT * 4;
    let mut n = 0;
    while Instant::now() < deadline || n < 3 {
        times.push(("ls", fails_without_leader(&m1, &["service", "ls"], 2)));
        let name = format!("after-{n}");
        times.push((
            "create",
            fails_without_leader(
                &m1,
                &["service", "create", "--name", &name, "--image", "nginx"],
                2,
            ),
        ));
        n += 1;
    }
    report("minority leader", &times);
    // Its own store still answers a read that asks for it (ours: `swarmd-local-read`).
    assert!(local_services(&m1).contains(&"before".to_string()));
    drop((m1, m2, m3));

    // A follower left alone: at first its leader is known but gone, then it has none. A call
    // waits for a new leader (it would ride through an election) until the follower has had
    // none for an election timeout, or three election timeouts in all (a client without
    // deadline); one more is the margin for swarmctl's start on a loaded machine.
    let (mut m1, mut m2, m3, _) = three_managers();
    m1.ctl(&["service", "create", "--name", "before", "--image", "nginx"])
        .ok();
    wait_for(
        "the service in the follower's own store",
        JOIN_LIMIT,
        || {
            local_services(&m3)
                .contains(&"before".to_string())
                .then_some(())
        },
    );
    m1.kill9();
    m2.kill9();
    let mut times = Vec::new();
    let deadline = Instant::now() + ELECTION_TIMEOUT * 4;
    let mut n = 0;
    while Instant::now() < deadline || n < 3 {
        times.push(("ls", fails_without_leader(&m3, &["service", "ls"], 4)));
        let name = format!("after-{n}");
        times.push((
            "create",
            fails_without_leader(
                &m3,
                &["service", "create", "--name", &name, "--image", "nginx"],
                4,
            ),
        ));
        n += 1;
    }
    report("follower without leader", &times);
    assert!(local_services(&m3).contains(&"before".to_string()));
}
