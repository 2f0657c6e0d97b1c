//! Recovery of a three-manager cluster through the real binaries on loopback: `--force-new-cluster`
//! on the survivor of a lost quorum, all managers killed with SIGKILL and restarted (fault test
//! 9d), and a follower that was down while the others snapshotted and compacted their log
//! (fault test 9e). Managers listen on fixed loopback ports so that a restarted member is found
//! at the address the raft membership names.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cluster::pids_with;
use crate::harness::{SWARMD, Swarmd, free_port, local_read, wait_for};

/// Bound of every wait for a start, a join or a convergence (the machine is shared).
const LIMIT: Duration = Duration::from_secs(90);
/// One raft tick in these tests (`--raft-tick-ms`, the harness's) times the default 10 ticks.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// The flags of manager `host` on `addr`, followed by `extra`.
fn manager_args(host: &str, addr: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--hostname",
        host,
        "--listen-remote-api",
        addr,
        "--advertise-remote-api",
        addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Three managers m1 (leader), m2, m3, each started with `extra`; returns them and their
/// remote addresses once m1 sees three reachable managers.
fn three_managers(extra: &[&str]) -> (Vec<Swarmd>, Vec<String>) {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let m1 = Swarmd::start_with(&refs(&manager_args("m1", &addrs[0], extra)));
    let (_, manager_token) = m1.join_tokens();
    let mut managers = vec![m1];
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let mut args = manager_args(&format!("m{}", i + 1), addr, extra);
        args.extend(["--join-addr".into(), addrs[0].clone()]);
        args.extend(["--join-token".into(), manager_token.clone()]);
        let (m, code) = Swarmd::start_node(&refs(&args), "node is ready", LIMIT);
        if let Some(code) = code {
            panic!("manager m{} exited with {code}; log:\n{}", i + 1, m.log());
        }
        managers.push(m);
    }
    wait_for("three reachable managers", LIMIT, || {
        let text = managers[0].ctl(&["node", "ls"]).ok().to_string();
        (text.matches("REACHABLE").count() == 3).then_some(())
    });
    (managers, addrs)
}

/// Creates config `name`; true if the write was acknowledged.
fn write_config(m: &Swarmd, name: &str) -> bool {
    m.ctl_stdin(&["config", "create", name], name.as_bytes())
        .code
        == 0
}

/// The `ha-` configs in `m`'s own store (a read with the `swarmd-local-read` header: a plain
/// read on any manager's socket is answered by the leader); None when it does not answer.
fn config_names(m: &Swarmd) -> Option<BTreeSet<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = ca::control_channel(&m.socket()).ok()?;
        let req = local_read(api::ListConfigsRequest::default());
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            api::control_client::ControlClient::new(channel).list_configs(req),
        )
        .await
        .ok()?
        .ok()?;
        Some(
            resp.into_inner()
                .configs
                .into_iter()
                .filter_map(|c| c.spec?.annotations.map(|a| a.name))
                .filter(|n| n.starts_with("ha-"))
                .collect(),
        )
    })
}

fn wait_configs(m: &Swarmd, who: &str, want: &BTreeSet<String>) {
    wait_for(&format!("{who} lists every written config"), LIMIT, || {
        (config_names(m).as_ref() == Some(want)).then_some(())
    });
}

#[test]
fn force_new_cluster_refuses_a_worker_and_an_empty_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(SWARMD)
        .arg("-d")
        .arg(dir.path().join("s"))
        .arg("--listen-control-api")
        .arg(dir.path().join("sock"))
        .args(["--listen-remote-api", "127.0.0.1:0", "--force-new-cluster"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force-new-cluster: state directory")
            && err.contains("there is no cluster to recover"),
        "{err}"
    );
    assert!(!dir.path().join("sock").exists(), "nothing may start");
    assert!(
        !dir.path().join("s").join("certificates").exists(),
        "no new cluster may be created"
    );

    let m = Swarmd::start();
    let (worker_token, _) = m.join_tokens();
    let (mut w, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &m.remote_addr(),
            "--join-token",
            &worker_token,
            "--hostname",
            "w1",
        ],
        "node is ready",
        LIMIT,
    );
    assert_eq!(code, None, "{}", w.log());
    w.kill9();
    w.set_extra_args(&["--hostname", "w1", "--force-new-cluster"]);
    let code = w.spawn_until("node is ready", LIMIT);
    assert_eq!(code, Some(1), "{}", w.log());
    assert!(
        w.log()
            .contains("--force-new-cluster can only be used on a manager: this node is a worker"),
        "{}",
        w.log()
    );
}

#[test]
fn election_and_heartbeat_ticks_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, want) in [
        (
            vec!["--heartbeat-tick", "0"],
            "--heartbeat-tick must be at least 1",
        ),
        (
            vec!["--election-tick", "3", "--heartbeat-tick", "3"],
            "--election-tick must be greater than --heartbeat-tick",
        ),
        (
            vec!["--raft-tick-ms", "0"],
            "--raft-tick-ms must be positive",
        ),
    ] {
        let out = std::process::Command::new(SWARMD)
            .arg("-d")
            .arg(dir.path().join("s"))
            .arg("--listen-control-api")
            .arg(dir.path().join("sock"))
            .args(["--listen-remote-api", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!dir.path().join("sock").exists(), "nothing may start");
    }
    // The ticks reach raft: with 3 election ticks of 100 ms a lone manager elects itself in
    // 300-600 ms and says so with its timings.
    let m = Swarmd::start_with(&["--election-tick", "3", "--heartbeat-tick", "1"]);
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("starting raft member"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("election_timeout=300ms") && line.contains("heartbeat_interval=100ms"),
        "{line}"
    );
}

#[test]
fn force_new_cluster_on_the_survivor_keeps_every_object_and_takes_writes() {
    let (mut managers, addrs) = three_managers(&[]);
    let mut written = BTreeSet::new();
    for i in 0..15 {
        let name = format!("ha-force-{i:02}");
        assert!(write_config(&managers[0], &name), "write {name}");
        written.insert(name);
    }
    // m3 survives; it has every acknowledged write before the others go.
    wait_configs(&managers[2], "m3", &written);
    managers[0].kill9();
    managers[1].kill9();
    // Without a quorum the survivor has no leader: a write fails.
    wait_for("the survivor refusing writes", LIMIT, || {
        (!write_config(&managers[2], "ha-force-lost")).then_some(())
    });

    let m3 = &mut managers[2];
    m3.kill9();
    m3.set_extra_args(&refs(&manager_args(
        "m3",
        &addrs[2],
        &["--force-new-cluster"],
    )));
    let started = Instant::now();
    let code = m3.spawn_until("node is ready", LIMIT);
    assert_eq!(code, None, "{}", m3.log());
    let log = m3.log();
    assert!(log.contains("forcing a new cluster"), "{log}");
    assert!(log.contains("raft member is leader"), "{log}");
    eprintln!(
        "force-new-cluster: leading and ready in {:?}",
        started.elapsed()
    );
    wait_configs(m3, "the forced manager", &written);
    assert!(write_config(m3, "ha-force-after"), "a write after forcing");
    written.insert("ha-force-after".into());
    // The other managers keep their Node objects (and role) but are no raft members any more.
    let ls = m3.ctl(&["node", "ls"]).ok().to_string();
    assert!(ls.contains("m1") && ls.contains("m2"), "{ls}");
    let own = ls.lines().find(|l| l.contains(" m3 ")).expect("m3's row");
    assert!(own.ends_with("REACHABLE *"), "{ls}");
    // A plain restart stays a one-member cluster with everything.
    assert_eq!(m3.stop(), Some(0), "{}", m3.log());
    m3.set_extra_args(&refs(&manager_args("m3", &addrs[2], &[])));
    assert_eq!(m3.spawn_until("node is ready", LIMIT), None, "{}", m3.log());
    wait_configs(m3, "the restarted manager", &written);
    assert!(write_config(m3, "ha-force-restart"));
}

/// `task ls -q` IDs of the tasks desired running.
fn task_ids(m: &Swarmd) -> Option<Vec<String>> {
    let out = m.ctl(&["task", "ls", "-q"]);
    (out.code == 0).then(|| out.stdout.lines().map(str::to_string).collect())
}

#[test]
fn all_managers_killed_and_restarted_keep_every_write_and_the_workers_tasks() {
    let (mut managers, addrs) = three_managers(&["--executor", "process"]);
    // Tasks go to the worker only.
    for host in ["m1", "m2", "m3"] {
        // A node is known by its hostname once its agent has registered.
        wait_for(&format!("{host} drained"), LIMIT, || {
            (managers[0].ctl(&["node", "drain", host]).code == 0).then_some(())
        });
    }
    let (worker_token, _) = managers[0].join_tokens();
    let (worker, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &addrs[0],
            "--join-token",
            &worker_token,
            "--hostname",
            "w1",
            "--executor",
            "process",
        ],
        "node is ready",
        LIMIT,
    );
    assert_eq!(code, None, "{}", worker.log());
    let marker = format!("ha-recovery-{}-{}", std::process::id(), free_port());
    managers[0]
        .ctl(&[
            "service",
            "create",
            "--name",
            "sleeper",
            "--image",
            "busybox",
            "--command",
            "/bin/sh",
            "--args",
            &format!("-c,sleep 600 # {marker}"),
        ])
        .ok();
    let pid = wait_for("the task's process on the worker", LIMIT, || {
        let pids = pids_with(&marker);
        (pids.len() == 1).then(|| *pids.first().expect("one"))
    });
    let task = wait_for("one task", LIMIT, || {
        task_ids(&managers[0]).filter(|t| t.len() == 1)
    });
    let mut written = BTreeSet::new();
    for i in 0..20 {
        let name = format!("ha-all-{i:02}");
        assert!(write_config(&managers[0], &name), "write {name}");
        written.insert(name);
    }

    let sessions_before = worker.log().matches("agent session registered").count();
    for m in &mut managers {
        m.kill9();
    }
    // m1 is the only manager the worker knows (agents fail over between managers elsewhere), so
    // m1 should lead again: it led with a committed vote, which openraft resumes at once, and the
    // others restart with a longer election timeout so that they do not campaign before it.
    let mut skips = Vec::new();
    let restarted = Instant::now();
    for (i, m) in managers.iter_mut().enumerate() {
        let extra: &[&str] = if i == 0 {
            &["--executor", "process"]
        } else {
            &["--executor", "process", "--election-tick", "40"]
        };
        m.set_extra_args(&refs(&manager_args(
            &format!("m{}", i + 1),
            &addrs[i],
            extra,
        )));
        skips.push(m.spawn_detached());
    }
    // From the moment a quorum (m1 and one other) has raft open to the first write m1
    // acknowledges (which needs a leader with a quorum; swarmctl's own run time included).
    let logs = |managers: &[Swarmd]| -> Vec<String> {
        managers
            .iter()
            .zip(&skips)
            .map(|(m, skip)| m.log().get(*skip..).unwrap_or_default().to_string())
            .collect()
    };
    let deadline = Instant::now() + LIMIT;
    let mut quorum_at = None;
    let acked_at = loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "no acknowledged write after the restart: {:#?}",
            logs(&managers)
        );
        let l = logs(&managers);
        let open = l
            .iter()
            .filter(|l| l.contains("starting raft member"))
            .count();
        if quorum_at.is_none() && l[0].contains("starting raft member") && open >= 2 {
            quorum_at = Some(now);
        }
        if managers[0].socket().exists() && write_config(&managers[0], "ha-all-probe") {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    written.insert("ha-all-probe".to_string());
    let quorum_at = quorum_at.expect("a write needs a quorum");
    let election = acked_at - quorum_at;
    eprintln!(
        "all managers restarted: first acknowledged write {election:?} after a quorum had raft open, {:?} after the restart",
        acked_at - restarted
    );
    assert!(
        election <= ELECTION_TIMEOUT * 3,
        "a write acknowledged only after {election:?}, more than 3 election timeouts"
    );
    for (i, m) in managers.iter_mut().enumerate() {
        wait_for(&format!("m{} ready", i + 1), LIMIT, || {
            m.log()
                .get(skips[i]..)
                .is_some_and(|l| l.contains("node is ready"))
                .then_some(())
        });
    }
    assert!(logs(&managers)[0].contains("raft member is leader"));
    for (i, m) in managers.iter().enumerate() {
        wait_configs(m, &format!("m{}", i + 1), &written);
    }
    assert!(write_config(&managers[0], "ha-all-after"));

    // The worker's task was not restarted: same task, same process, after its session is back
    // and a few heartbeats more.
    let deadline = Instant::now() + LIMIT;
    while worker.log().matches("agent session registered").count() <= sessions_before {
        assert!(
            Instant::now() < deadline,
            "the worker's session never came back; worker log:\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(task_ids(&managers[0]), Some(task));
    assert_eq!(
        pids_with(&marker),
        BTreeSet::from([pid]),
        "the task's process changed"
    );
    let ls = managers[0].ctl(&["task", "ls"]).ok().to_string();
    assert!(ls.contains("RUNNING") && ls.contains("w1"), "{ls}");
}

#[test]
fn a_follower_down_during_a_snapshot_catches_up_from_it() {
    let extra = [
        "--snapshot-interval",
        "20",
        "--log-entries-for-slow-followers",
        "5",
    ];
    let (mut managers, addrs) = three_managers(&extra);
    let mut written = BTreeSet::new();
    for i in 0..5 {
        let name = format!("ha-snap-{i:02}");
        assert!(write_config(&managers[0], &name));
        written.insert(name);
    }
    wait_configs(&managers[2], "m3", &written);
    managers[2].kill9();
    // Enough entries for several snapshots, each purging the log up to 5 entries behind it:
    // what m3 is missing is no longer in anyone's log.
    let skip = managers[0].log().len();
    for i in 5..70 {
        let name = format!("ha-snap-{i:02}");
        assert!(write_config(&managers[0], &name), "write {name}");
        written.insert(name);
    }
    wait_for("snapshots on the leader", LIMIT, || {
        (managers[0]
            .log()
            .get(skip..)
            .unwrap_or_default()
            .matches("raft snapshot built")
            .count()
            >= 2)
            .then_some(())
    });
    let m3 = &mut managers[2];
    m3.set_extra_args(&refs(&manager_args("m3", &addrs[2], &extra)));
    let skip = m3.log().len();
    assert_eq!(m3.spawn_until("node is ready", LIMIT), None, "{}", m3.log());
    wait_configs(m3, "the restarted follower", &written);
    let log = m3.log().get(skip..).unwrap_or_default().to_string();
    assert!(log.contains("installing raft snapshot"), "{log}");
    assert_eq!(config_names(&managers[0]), config_names(&managers[2]));
}
