//! Service logs end to end (spec 5.12): `swarmctl service logs` against a manager and a worker
//! running process tasks (the manager's own agent publishes over the control socket, the
//! worker's over the remote API), with and without follow, `--tail`, across a task restart; a
//! Docker task's logs (skipped, saying why, without an engine); and a publisher sending lines
//! of a task that is not on its node, refused.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::harness::{SWARMCTL, Swarmd, tls_material, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A `swarmctl service logs -f` running in the background, its output lines arriving on a
/// channel (`O ` or `E ` before each, for its stream).
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The swarmd it talks to (its socket), for the tasks and log shown when a wait fails.
    socket: std::path::PathBuf,
}

impl Follower {
    fn start(socket: &std::path::Path, args: &[&str]) -> Follower {
        let mut child = Command::new(SWARMCTL)
            .arg("-s")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swarmctl");
        let (tx, lines) = mpsc::channel();
        for (tag, out) in [
            (
                "O ",
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            ),
            ("E ", Box::new(child.stderr.take().expect("stderr"))),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(format!("{tag}{line}")).is_err() {
                        return;
                    }
                }
            });
        }
        Follower {
            child,
            lines,
            seen: Vec::new(),
            socket: socket.to_path_buf(),
        }
    }

    /// Waits (bounded) until `done` holds of the lines seen so far.
    fn wait_until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "{what}: not seen in {WAIT:?}; lines: {:#?}\n{}",
                    self.seen,
                    self.diagnostics()
                ),
            }
        }
    }
}

impl Follower {
    /// The tasks and the end of the log of the swarmd followed (when the socket is in its
    /// directory, as the harness puts it), to tell a hang apart from a slow engine.
    fn diagnostics(&self) -> String {
        let tasks = crate::harness::ctl_at(&self.socket, &["task", "ls"], None);
        let log = self
            .socket
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join("swarmd.log")).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("task ls: {tasks:?}\nswarmd.log (end):\n{}", tail.join("\n"))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create(d: &Swarmd, name: &str, replicas: &str, script: &str, extra: &[&str]) {
    let mut flags = vec!["--image", "busybox", "--replicas", replicas];
    flags.extend_from_slice(extra);
    d.create_shell_service(name, &flags, script);
}

#[test]
fn process_task_logs_with_and_without_follow_across_a_restart() {
    let c = Cluster::start(1, &[], "1s");
    // One task per node: the manager's agent and the worker's both publish. Each run prints
    // its own random token, so a restarted task's lines tell apart.
    create(
        &c.manager,
        "logs-p",
        "2",
        "echo out-a;echo err-a >&2;sleep 0.3;echo out-b;sleep 600",
        &[],
    );
    c.wait_running("logs-p running", 2, WAIT, |nodes| nodes.len() == 2);

    // Without follow: every line of both tasks, then the command ends.
    let lines = wait_for("both tasks' lines", WAIT, || {
        let out = c.manager.ctl(&["service", "logs", "logs-p"]);
        assert_eq!(out.code, 0, "{out:?}");
        (out.stdout.matches("out-b").count() == 2).then_some(out)
    });
    for node in ["node-1", "node-2"] {
        let prefix = |slot: &str| format!("logs-p.{slot}@{node}❯ ");
        let on_node = |text: &str, what: &str| {
            ["1", "2"]
                .iter()
                .any(|slot| text.lines().any(|l| l == format!("{}{what}", prefix(slot))))
        };
        assert!(on_node(&lines.stdout, "out-a"), "{lines:?}");
        assert!(on_node(&lines.stdout, "out-b"), "{lines:?}");
        assert!(on_node(&lines.stderr, "err-a"), "{lines:?}");
        assert!(!lines.stdout.contains("err-a"), "{lines:?}");
    }
    // --tail 1: the last line of each task only.
    let tail = c.manager.ctl(&["service", "logs", "--tail", "1", "logs-p"]);
    assert_eq!(tail.code, 0, "{tail:?}");
    assert_eq!(tail.stdout.lines().count(), 2, "{tail:?}");
    assert!(
        tail.stdout.lines().all(|l| l.ends_with("❯ out-b")),
        "{tail:?}"
    );
    assert_eq!(tail.stderr, "", "{tail:?}");
    // --since now: nothing written since.
    let since = c
        .manager
        .ctl(&["service", "logs", "--since", "0s", "logs-p"]);
    assert_eq!(since.code, 0, "{since:?}");
    assert_eq!(since.stdout, "", "{since:?}");

    // Followed: a task that ends is restarted as a new task, whose lines come on the same
    // stream.
    create(
        &c.manager,
        "logs-r",
        "1",
        "echo run-$(cat /proc/sys/kernel/random/uuid);sleep 1;exit 1",
        &["--restart-delay", "1s"],
    );
    let mut f = Follower::start(&c.manager.socket(), &["service", "logs", "-f", "logs-r"]);
    f.wait_until("lines of two runs", |seen| {
        let mut runs: Vec<&String> = seen.iter().filter(|l| l.contains("❯ run-")).collect();
        runs.dedup();
        runs.len() >= 2
    });
    assert!(
        f.seen.iter().all(|l| l.starts_with("O logs-r.1@")),
        "{:?}",
        f.seen
    );
    drop(f);

    // Bad input.
    let out = c.manager.ctl(&["service", "logs"]);
    assert!(
        out.err().starts_with("Error: missing service IDs"),
        "{out:?}"
    );
    let out = c.manager.ctl(&["service", "logs", "nope"]);
    assert!(out.err().contains("service nope not found"), "{out:?}");
    c.stop();
}

#[test]
fn a_node_going_away_ends_its_part() {
    let mut c = Cluster::start(1, &[], "1s");
    create(&c.manager, "logs-gone", "2", "echo hi;sleep 600", &[]);
    c.wait_running("logs-gone running", 2, WAIT, |nodes| nodes.len() == 2);
    let mut f = Follower::start(&c.manager.socket(), &["service", "logs", "-f", "logs-gone"]);
    f.wait_until("both tasks' lines", |seen| {
        seen.iter().filter(|l| l.ends_with("❯ hi")).count() == 2
    });
    c.workers[0].kill9();
    f.wait_until("the worker's end", |seen| {
        seen.iter().any(|l| {
            l.starts_with("E @node-2❯ node ")
                && l.ends_with("disconnected unexpectedly: no more logs from its tasks")
        })
    });
    c.stop();
}

#[test]
fn a_publisher_may_not_send_another_nodes_task() {
    let c = Cluster::start(1, &[], "1s");
    create(
        &c.manager,
        "logs-own",
        "1",
        "echo mine;sleep 600",
        &["--constraint", "node.role==manager"],
    );
    c.wait_running("logs-own running", 1, WAIT, |_| true);
    let worker = tls_material(&c.workers[0].state_dir());
    let worker_id = crate::harness::node_cert(&c.workers[0].state_dir()).node_id;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (denied_task, denied_node) = rt.block_on(async {
        // A subscription that names the worker's node too, so the worker hears its ID.
        let control = ca::control_channel(&c.manager.socket()).expect("control");
        let task = api::control_client::ControlClient::new(control.clone())
            .list_tasks(api::ListTasksRequest::default())
            .await
            .expect("tasks")
            .into_inner()
            .tasks
            .into_iter()
            .next()
            .expect("a task");
        let mut logs = api::logs_client::LogsClient::new(control)
            .subscribe_logs(api::SubscribeLogsRequest {
                selector: Some(api::LogSelector {
                    service_ids: vec![task.service_id.clone()],
                    node_ids: vec![worker_id.clone()],
                    ..Default::default()
                }),
                options: Some(api::LogSubscriptionOptions {
                    follow: true,
                    ..Default::default()
                }),
            })
            .await
            .expect("subscribe")
            .into_inner();
        let cfg =
            ca::mtls_client_config(&worker.root_pem, Some((&worker.cert_pem, &worker.key_pem)))
                .expect("client config");
        let channel =
            ca::tls_channel(&c.manager.remote_addr(), cfg, "swarm-manager").expect("channel");
        let mut broker = api::log_broker_client::LogBrokerClient::new(channel);
        let mut subs = broker
            .listen_subscriptions(api::ListenSubscriptionsRequest {})
            .await
            .expect("listen")
            .into_inner();
        let sub = tokio::time::timeout(WAIT, subs.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("a subscription");
        let publish = |node: &str| api::PublishLogsMessage {
            subscription_id: sub.id.clone(),
            messages: vec![api::LogMessage {
                context: Some(api::LogContext {
                    service_id: task.service_id.clone(),
                    node_id: node.to_string(),
                    task_id: task.id.clone(),
                }),
                data: b"forged\n".to_vec(),
                ..Default::default()
            }],
            close: false,
        };
        let as_worker = broker
            .publish_logs(tokio_stream::iter(vec![publish(&worker_id)]))
            .await
            .expect_err("a task of another node");
        let as_manager = broker
            .publish_logs(tokio_stream::iter(vec![publish(&task.node_id)]))
            .await
            .expect_err("another node's ID");
        // Nothing forged reached the client, the task's own line did.
        let mut seen = Vec::new();
        while !seen.iter().any(|d: &Vec<u8>| d == b"mine\n") {
            let batch = tokio::time::timeout(WAIT, logs.message())
                .await
                .expect("in time")
                .expect("stream")
                .expect("lines");
            seen.extend(batch.messages.into_iter().map(|m| m.data));
        }
        assert!(!seen.iter().any(|d| d == b"forged\n"), "{seen:?}");
        (as_worker, as_manager)
    });
    assert_eq!(
        denied_task.code(),
        tonic::Code::PermissionDenied,
        "{denied_task:?}"
    );
    assert!(
        denied_task.message().starts_with("invalid TaskID: task "),
        "{denied_task:?}"
    );
    assert_eq!(
        denied_node.code(),
        tonic::Code::PermissionDenied,
        "{denied_node:?}"
    );
    assert!(
        denied_node
            .message()
            .starts_with(&format!("invalid NodeID: expected={worker_id};received=")),
        "{denied_node:?}"
    );
    c.stop();
}

#[test]
fn docker_task_logs() {
    if !crate::docker::engine_ready() {
        return;
    }
    let d = Swarmd::start_with(&["--executor", "docker"]);
    d.ctl(&[
        "service",
        "create",
        "--name",
        "logs-docker",
        "--image",
        crate::docker::IMAGE,
        "--restart-delay",
        "1s",
        "--command",
        "/bin/sh",
        "--args",
        "-c,echo run-$(cat /proc/sys/kernel/random/uuid);echo err-d >&2;sleep 1;exit 1",
    ])
    .ok();
    let mut f = Follower::start(&d.socket(), &["service", "logs", "-f", "logs-docker"]);
    f.wait_until("lines of two runs", |seen| {
        let mut runs: Vec<&String> = seen.iter().filter(|l| l.contains("❯ run-")).collect();
        runs.dedup();
        runs.len() >= 2
            && seen
                .iter()
                .any(|l| l.starts_with("E ") && l.ends_with("❯ err-d"))
    });
    drop(f);
    let out = d.ctl(&["service", "logs", "logs-docker"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("❯ run-"), "{out:?}");
    assert!(out.stderr.contains("❯ err-d"), "{out:?}");
    d.ctl(&["service", "rm", "logs-docker"]).ok();
    wait_for("containers gone", WAIT, || {
        crate::docker::containers("logs-docker")
            .is_empty()
            .then_some(())
    });
}

/// Three managers, each running a task: `service logs` on a follower's socket (forwarded to the
/// leader's broker) gets the lines of the tasks on every node, the leader's and the followers'
/// agents all publishing, with and without follow.
#[test]
fn a_followers_socket_serves_logs_of_every_node() {
    let mut c = crate::ha_cluster::Cluster::start_with(3, 100, &["--executor", "process"]);
    let leader = c.leader(WAIT);
    let follower = (leader + 1) % 3;
    create(
        &c.managers[leader],
        "logs-ha",
        "3",
        "echo line-$(cat /proc/sys/kernel/random/uuid);sleep 600",
        &[],
    );
    let nodes_in = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.contains("❯ line-"))
            .filter_map(|l| {
                l.split_once('@')?
                    .1
                    .split_once('❯')
                    .map(|(n, _)| n.to_string())
            })
            .collect()
    };
    let mut last = None;
    let deadline = std::time::Instant::now() + WAIT;
    let out = loop {
        let out = c.managers[follower].ctl(&["service", "logs", "logs-ha"]);
        if out.code == 0 && nodes_in(&out.stdout).len() == 3 {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lines from the three nodes: last {last:?}; tasks {:?}",
            c.managers[leader].ctl(&["task", "ls"])
        );
        last = Some(out);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    let mut f = Follower::start(
        &c.managers[follower].socket(),
        &["service", "logs", "-f", "logs-ha"],
    );
    f.wait_until("followed lines from the three nodes", |seen| {
        nodes_in(&seen.join("\n")).len() == 3
    });
    drop(f);
}
