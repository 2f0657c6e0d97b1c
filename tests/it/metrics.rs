//! `--listen-metrics` and `--listen-debug` (issue 19, item 3): /metrics is Prometheus text with
//! SwarmKit's metric names, which a Prometheus text parser reads and whose counts follow the
//! cluster; /debug/state is JSON; an address in use stops swarmd before it touches anything.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};

use crate::harness::{Swarmd, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// `GET path` on `addr` over HTTP/1.1: (status line, content type, body).
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn scrape(addr: &str) -> Scrape {
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The samples named `name` whose labels include `labels`.
fn samples<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one gauge or counter sample `name{labels}`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match samples(s, name, labels).as_slice() {
        [one] => match one.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

/// The observation count of histogram `name`.
fn observations(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    match samples(s, name, labels).as_slice() {
        [one] => match &one.value {
            Value::Histogram(buckets) => buckets.last().map_or(0, |b| b.count as u64),
            other => panic!("{name} is no histogram: {other:?}"),
        },
        other => panic!("{name}{labels:?}: {} samples", other.len()),
    }
}

#[test]
fn metrics_have_swarmkit_names_and_follow_services_and_debug_state_is_json() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let debug = format!("127.0.0.1:{}", free_port());
    let m = Swarmd::start_with(&[
        "--executor",
        "process",
        "--listen-metrics",
        &metrics,
        "--listen-debug",
        &debug,
    ]);

    tracing_line("--- a single manager: leader, manager node, one ready node, no service");
    let s = wait_for("the leader gauge and a ready node", WAIT, || {
        let s = scrape(&metrics);
        (value(&s, "swarm_manager_leader", &[]) == Some(1.0)
            && value(&s, "swarm_manager_nodes", &[("state", "ready")]) == Some(1.0))
        .then_some(s)
    });
    assert_eq!(value(&s, "swarm_node_manager", &[]), Some(1.0));
    let info = samples(&s, "swarm_node_info", &[]);
    assert_eq!(info.len(), 1, "one swarm_node_info");
    let node_id = info[0].labels.get("node_id").expect("node_id").to_string();
    assert_eq!(node_id.len(), 25, "a node ID: {node_id}");
    assert!(
        info[0]
            .labels
            .get("swarm_id")
            .is_some_and(|v| v.len() == 25)
    );
    assert_eq!(value(&s, "swarm_manager_services_total", &[]), Some(0.0));
    assert_eq!(
        value(&s, "swarm_manager_tasks_total", &[("state", "orphaned")]),
        Some(0.0),
        "every task state is shown"
    );
    assert_eq!(
        value(&s, "swarm_manager_networks_total", &[]),
        Some(3.0),
        "ingress, bridge, host"
    );
    assert!(observations(&s, "swarm_raft_transaction_latency_seconds", &[]) > 0);
    assert!(observations(&s, "swarm_store_write_tx_latency_seconds", &[]) > 0);
    assert!(observations(&s, "swarm_store_read_tx_latency_seconds", &[]) > 0);
    // Creating the cluster object and the node looked their IDs up first.
    assert!(observations(&s, "swarm_store_lookup_latency_seconds", &[]) > 0);
    for name in [
        "swarm_raft_snapshot_latency_seconds",
        "swarm_store_batch_latency_seconds",
        "swarm_store_memory_store_lock_duration_seconds",
        "swarm_dispatcher_scheduling_delay_seconds",
    ] {
        observations(&s, name, &[]);
    }
    let create = [
        ("grpc_service", "docker.swarmkit.v1.Control"),
        ("grpc_method", "CreateService"),
        ("grpc_type", "unary"),
    ];
    assert_eq!(
        value(&s, "grpc_server_started_total", &create),
        Some(0.0),
        "served methods are shown before their first call"
    );

    tracing_line("--- two services of two tasks: the counts move");
    for name in ["metrics-a", "metrics-b"] {
        m.create_shell_service(
            name,
            &["--image", "busybox", "--replicas", "2"],
            "sleep 120 # swarmkit-it-metrics",
        );
    }
    // The dispatcher records a task's scheduling delay once its RUNNING write is stored, just
    // after the store's watchers (the counts) saw it: wait for both.
    let s = wait_for(
        "2 services, 4 running tasks, their scheduling delays",
        WAIT,
        || {
            let s = scrape(&metrics);
            (value(&s, "swarm_manager_services_total", &[]) == Some(2.0)
                && value(&s, "swarm_manager_tasks_total", &[("state", "running")]) == Some(4.0)
                && observations(&s, "swarm_dispatcher_scheduling_delay_seconds", &[]) >= 4)
                .then_some(s)
        },
    );
    assert_eq!(value(&s, "grpc_server_started_total", &create), Some(2.0));
    assert_eq!(
        value(
            &s,
            "grpc_server_handled_total",
            &[create[0], create[1], ("grpc_code", "OK")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "grpc_server_msg_sent_total", &create),
        Some(2.0),
        "one answer each"
    );
    assert_eq!(observations(&s, "grpc_server_handling_seconds", &create), 2);
    let session = [
        ("grpc_service", "docker.swarmkit.v1.Dispatcher"),
        ("grpc_method", "Session"),
        ("grpc_type", "server_stream"),
    ];
    assert!(value(&s, "grpc_server_started_total", &session).is_some_and(|v| v >= 1.0));
    assert!(value(&s, "grpc_server_msg_sent_total", &session).is_some_and(|v| v >= 1.0));

    tracing_line("--- a refused call is handled with its code");
    m.ctl(&["service", "rm", "no-such-service"]);
    let s = scrape(&metrics);
    let get_service = [
        ("grpc_service", "docker.swarmkit.v1.Control"),
        ("grpc_method", "GetService"),
    ];
    assert!(
        value(
            &s,
            "grpc_server_handled_total",
            &[get_service[0], get_service[1], ("grpc_code", "NotFound")]
        )
        .is_some_and(|v| v >= 1.0),
        "swarmctl looked the name up"
    );

    tracing_line("--- removing a service moves the gauge back");
    m.ctl(&["service", "rm", "metrics-b"]).ok();
    wait_for("1 service, 2 running tasks", WAIT, || {
        let s = scrape(&metrics);
        (value(&s, "swarm_manager_services_total", &[]) == Some(1.0)
            && value(&s, "swarm_manager_tasks_total", &[("state", "running")]) == Some(2.0))
        .then_some(())
    });

    tracing_line("--- the debug endpoint answers the node's state as JSON");
    let (status, content_type, body) = get(&debug, "/debug/state");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "application/json");
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(state["node"]["node_id"], node_id.as_str());
    assert_eq!(state["node"]["runs_manager"], true);
    assert_eq!(state["manager"]["raft"]["leader"], true);
    assert_eq!(state["manager"]["store"]["objects"]["services"], 1);
    assert!(
        state["process"]["tokio"]["workers"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    let (status, _, _) = get(&debug, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = get(&metrics, "/debug/state");
    assert_eq!(
        status, "HTTP/1.1 404 Not Found",
        "each listener serves its own"
    );

    m.ctl(&["service", "rm", "metrics-a"]).ok();
}

#[test]
fn a_metrics_or_debug_address_in_use_stops_swarmd_before_it_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for flag in ["--listen-metrics", "--listen-debug"] {
        let (s, code) = Swarmd::start_node(&[flag, &addr], "node is ready", WAIT);
        assert_eq!(code, Some(1), "swarmd exits 1; log:\n{}", s.log());
        let log = s.log();
        assert!(
            log.contains(&format!(
                "Error: failed to listen on {addr} ({flag}): Address already in use"
            )),
            "{log}"
        );
        assert!(log.contains("level=fatal"), "{log}");
        assert!(
            !s.state_dir().join("certificates").exists(),
            "nothing was created"
        );
        assert!(!s.socket().exists(), "no control socket");
    }
    drop(taken);
}

/// Marks a phase of a test in its output.
fn tracing_line(phase: &str) {
    println!("{phase}");
}
