//! swarmd as an operator sees it: flags, the state directory it lays out, signals.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use crate::harness::{SWARMD, Swarmd};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn first_start_lays_out_state_dir_with_private_modes() {
    let d = Swarmd::start();
    let state = d.state_dir();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("certificates")), 0o700);
    assert_eq!(mode(&state.join("raft")), 0o700);
    assert_eq!(mode(&state.join("worker")), 0o700);
    assert_eq!(mode(&state.join("certificates/swarm-node.key")), 0o600);
    assert_eq!(mode(&state.join("certificates/swarm-node.crt")), 0o644);
    assert_eq!(mode(&state.join("certificates/swarm-root-ca.crt")), 0o644);
    assert_eq!(mode(&state.join("state.json")), 0o600);
    let sock = std::fs::metadata(d.socket()).expect("socket");
    assert!(sock.file_type().is_socket());
    assert_eq!(mode(&d.socket()), 0o600);

    // The root CA key never reaches the disk; the node key is a PKCS#8 key.
    for entry in std::fs::read_dir(state.join("certificates")).expect("certs") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().contains("root-ca.key"),
            "root CA key on disk: {name:?}"
        );
    }
    let key = std::fs::read_to_string(state.join("certificates/swarm-node.key")).expect("key");
    assert!(key.contains("-----BEGIN PRIVATE KEY-----"), "{key}");

    // state.json lists this manager, at the address it listens on (no advertise address given,
    // and not a wildcard one).
    let peers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).expect("state.json"))
            .expect("json");
    let node_id = peers[0]["node_id"].as_str().expect("node_id");
    assert_eq!(node_id.len(), 25);
    assert_eq!(peers[0]["addr"].as_str().expect("addr"), d.remote_addr());
}

#[test]
fn version_flag_prints_version() {
    let out = Command::new(SWARMD).arg("-v").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("swarmd github.com/moby/swarmkit/v2 "),
        "{text}"
    );
}

#[test]
fn flags_of_later_features_fail_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let args = ["--external-ca", "protocol=cfssl,url=https://ca.example"];
        let out = Command::new(SWARMD)
            .arg("-d")
            .arg(dir.path().join("s"))
            .arg("--listen-control-api")
            .arg(dir.path().join("sock"))
            .args(["--listen-remote-api", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = args[0];
        assert!(
            err.contains(&format!("Error: not supported yet: {flag}")),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("sock").exists(), "nothing may start");
    }
}

#[test]
fn bad_generic_node_resources_stop_swarmd_with_swarmkits_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = "Error: could not parse GenericResource: ";
    for (arg, err) in [
        (
            "gpu",
            "incorrect term gpu, missing '=' or malformed expression",
        ),
        (
            "gpu=1,gpu=UUID1",
            "mixed discrete and named resources in expression 'gpu=[1 UUID1]'",
        ),
        ("ssd=-2", "cannot ask for negative resource ssd"),
        ("", "found multiple records while parsing cmd []"),
    ] {
        let out = Command::new(SWARMD)
            .arg("-d")
            .arg(dir.path().join("s"))
            .arg("--listen-control-api")
            .arg(dir.path().join("sock"))
            .args(["--listen-remote-api", "127.0.0.1:0"])
            .args(["--executor", "process", "--generic-node-resources", arg])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{arg:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{prefix}{err}\n")),
            "{arg:?}: {stderr}"
        );
        assert!(!dir.path().join("sock").exists(), "nothing may start");
        assert!(!dir.path().join("s").exists(), "nothing may be written");
    }
}

#[test]
fn sigint_stops_gracefully_and_removes_socket() {
    let mut d = Swarmd::start();
    let code = d.signal_and_wait(2);
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(!d.socket().exists(), "socket left behind");
    let log = d.log();
    assert!(log.contains("Stopping manager"), "{log}");
    assert!(log.contains("Manager shut down"), "{log}");
}

#[test]
fn sigterm_exits_at_once_leaving_socket() {
    let mut d = Swarmd::start();
    let code = d.signal_and_wait(15);
    assert_eq!(code, Some(143));
    assert!(d.socket().exists(), "SwarmKit leaves the socket on SIGTERM");
}

#[test]
fn loopback_remote_api_prints_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(SWARMD)
        .arg("-d")
        .arg(dir.path().join("s"))
        .arg("--listen-control-api")
        .arg(dir.path().join("sock"))
        .args(["--listen-remote-api", "127.0.0.1:0", "--election-tick", "1"])
        .output()
        .expect("run");
    // election-tick 1 is not greater than heartbeat-tick 1: a config error, after the warning.
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Warning: Specifying a valid address with --listen-remote-api may be necessary for other managers to reach this one."),
        "{stdout}"
    );
}

#[test]
fn listen_errors_name_the_flag_and_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").expect("write");
    let bad_socket = not_a_dir.join("swarmd.sock");
    let cases = [
        (
            vec!["--listen-remote-api".to_string(), "notanaddr".to_string()],
            "Error: failed to listen on remote API address notanaddr (--listen-remote-api): "
                .to_string(),
        ),
        (
            vec!["--listen-remote-api".to_string(), taken.clone()],
            format!(
                "Error: failed to listen on remote API address {taken} (--listen-remote-api): Address already in use"
            ),
        ),
        (
            vec![
                "--listen-control-api".to_string(),
                bad_socket.display().to_string(),
            ],
            format!(
                "Error: failed to listen on control API socket {} (--listen-control-api): ",
                bad_socket.display()
            ),
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let mut cmd = Command::new(SWARMD);
        cmd.arg("-d").arg(dir.path().join(format!("s{i}")));
        if args[0] != "--listen-control-api" {
            cmd.arg("--listen-control-api")
                .arg(dir.path().join(format!("sock{i}")));
        }
        if args[0] != "--listen-remote-api" {
            cmd.args(["--listen-remote-api", "127.0.0.1:0"]);
        }
        let out = cmd.args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want.as_str()), "{args:?}: {err}");
        assert!(!err.contains("state directory"), "{args:?}: {err}");
    }
}
