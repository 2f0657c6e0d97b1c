//! The Watch API on a real manager (spec 5.12): the empty first message, one message per commit
//! in commit order with its version, `swarmctl watch --resume-from` replaying what came after a
//! version, an unknown kind refused, and a follower's socket serving watches too.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use api::watch_client::WatchClient;

use crate::harness::{SWARMCTL, Swarmd};

const LIMIT: Duration = Duration::from_secs(30);

/// `(action, service ID, version)` of each message of a service watch.
type Seen = Vec<(i32, String, u64)>;

/// Watches services on `socket`, runs `act` once the watch is in place (after the empty first
/// message), and returns the first `n` events.
fn watch_services(socket: &std::path::Path, n: usize, act: impl FnOnce()) -> Seen {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The channel's connector needs a runtime when it is built.
    let _in_runtime = rt.enter();
    let channel = ca::control_channel(socket).expect("channel");
    let mut stream = rt
        .block_on(WatchClient::new(channel).watch(api::WatchRequest {
            entries: vec![api::watch_request::WatchEntry {
                kind: "service".into(),
                action: 7,
                filters: Vec::new(),
            }],
            ..Default::default()
        }))
        .expect("watch")
        .into_inner();
    let next = |stream: &mut tonic::Streaming<api::WatchMessage>| {
        rt.block_on(tokio::time::timeout(LIMIT, stream.message()))
            .expect("a message in time")
            .expect("no error")
            .expect("the stream goes on")
    };
    assert_eq!(next(&mut stream), api::WatchMessage::default());
    act();
    let mut seen = Vec::new();
    while seen.len() < n {
        let msg = next(&mut stream);
        let version = msg.version.expect("a version").index;
        for e in msg.events {
            let id = match e.object.and_then(|o| o.object) {
                Some(api::object::Object::Service(s)) => s.id,
                other => panic!("not a service: {other:?}"),
            };
            seen.push((e.action, id, version));
        }
    }
    seen
}

#[test]
fn watch_sees_commits_in_order_and_resumes_from_a_version() {
    let m = Swarmd::start_with(&["--executor", "process"]);
    let mut id = String::new();
    let seen = watch_services(&m.socket(), 3, || {
        let out = m.ctl(&[
            "service",
            "create",
            "--name",
            "w",
            "--image",
            "busybox",
            "--replicas",
            "0",
        ]);
        id = out.ok().trim().to_string();
        m.ctl(&["service", "update", "w", "--label", "a=b"]).ok();
        m.ctl(&["service", "rm", "w"]).ok();
    });
    let actions: Vec<(i32, &str)> = seen.iter().map(|(a, i, _)| (*a, i.as_str())).collect();
    assert_eq!(
        actions,
        [(1, id.as_str()), (2, id.as_str()), (4, id.as_str())]
    );
    let versions: Vec<u64> = seen.iter().map(|s| s.2).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "commit order: {versions:?}"
    );

    // swarmctl replays what came after the create's version, one line per event.
    let mut child = Command::new(SWARMCTL)
        .arg("-s")
        .arg(m.socket())
        .args(["watch", "--kind", "service", "--resume-from"])
        .arg(versions[0].to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("swarmctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let lines: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(LIMIT).expect("a line in time"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines,
        [
            format!("{} update service {id} w", versions[1]),
            format!("{} remove service {id} w", versions[2]),
        ]
    );

    // An unknown kind is refused, and the manager goes on serving.
    let err = m.ctl(&["watch", "--kind", "gadget"]);
    assert!(
        err.err()
            .starts_with("Error: unknown kind of object \"gadget\""),
        "{err:?}"
    );
    m.ctl(&["service", "ls"]).ok();
}

#[test]
fn a_followers_socket_serves_watches() {
    let mut c = crate::ha_cluster::Cluster::start(3, 100);
    let leader = c.leader(LIMIT);
    let follower = (leader + 1) % 3;
    let mut id = String::new();
    let seen = watch_services(&c.managers[follower].socket(), 1, || {
        let out = c.managers[leader].ctl(&[
            "service",
            "create",
            "--name",
            "f",
            "--image",
            "busybox",
            "--replicas",
            "0",
        ]);
        id = out.ok().trim().to_string();
    });
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].0, seen[0].1.as_str()), (1, id.as_str()));
}
