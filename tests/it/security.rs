//! Membership and security through the real binaries on loopback (spec 2.4, 4.1, 5.10): joining
//! with good and bad tokens, the joiner's check of the CA against the token, certificates and
//! key files, authorization of remote callers, and renewal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ca::CertInfo;

use crate::harness::{Swarmd, free_port, impostor_cert, list_nodes_on, tls_material, wait_for};

const JOIN_LIMIT: Duration = Duration::from_secs(30);
const WORKER_READY: &str = "worker node is ready";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn node_ids(m: &Swarmd) -> Vec<String> {
    m.ctl(&["node", "ls", "-q"])
        .ok()
        .lines()
        .map(str::to_string)
        .collect()
}

fn cluster_id(m: &Swarmd) -> String {
    m.ctl(&["cluster", "ls", "-q"]).ok().trim().to_string()
}

/// Starts a worker joining `m` with `token`; panics unless it becomes ready.
fn join_worker(m: &Swarmd, token: &str) -> Swarmd {
    let addr = m.remote_addr();
    let (w, code) = Swarmd::start_node(
        &["--join-addr", &addr, "--join-token", token],
        WORKER_READY,
        JOIN_LIMIT,
    );
    assert_eq!(code, None, "worker exited; log:\n{}", w.log());
    w
}

/// Starts a node joining `addr` with `token` and expects it to fail; returns its log.
fn join_fails(addr: &str, token: &str) -> String {
    let (w, code) = Swarmd::start_node(
        &["--join-addr", addr, "--join-token", token],
        WORKER_READY,
        JOIN_LIMIT,
    );
    assert_eq!(code, Some(1), "join should have failed; log:\n{}", w.log());
    assert!(
        !w.state_dir().join("certificates/swarm-node.key").exists(),
        "a failed join leaves no key"
    );
    w.log()
}

#[test]
fn worker_joins_with_a_certificate_the_ca_chose() {
    let m = Swarmd::start();
    let (worker_token, _) = m.join_tokens();
    let started = std::time::Instant::now();
    let w = join_worker(&m, &worker_token);
    eprintln!(
        "join took {:?} (process start to certificate issued)",
        started.elapsed()
    );

    let certs = w.state_dir().join("certificates");
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("swarm-node.key")), 0o600);
    assert_eq!(mode(&certs.join("swarm-node.crt")), 0o644);
    assert_eq!(mode(&certs.join("swarm-root-ca.crt")), 0o644);
    let mine = tls_material(&w.state_dir());
    let theirs = tls_material(&m.state_dir());
    assert_eq!(
        mine.root_pem, theirs.root_pem,
        "the worker trusts the cluster's root"
    );
    let info = CertInfo::parse(&mine.cert_pem).expect("worker cert");
    assert_eq!(info.ou, "swarm-worker");
    assert_eq!(info.cluster_id, cluster_id(&m));
    assert_eq!(
        info.dns_names,
        vec!["swarm-worker".to_string(), info.node_id.clone()]
    );
    let days = info
        .not_after
        .duration_since(SystemTime::now())
        .expect("valid")
        .as_secs()
        / 86400;
    assert!(
        (89..=90).contains(&days),
        "default validity is 2160h, got {days} days"
    );

    // The manager lists it as an accepted worker; it runs no control socket.
    assert!(node_ids(&m).contains(&info.node_id));
    let ls = m.ctl(&["node", "ls"]);
    let row = ls
        .ok()
        .lines()
        .find(|l| l.starts_with(&info.node_id))
        .unwrap_or_else(|| panic!("{}", ls.stdout))
        .to_string();
    assert!(row.contains("ACCEPTED") && row.contains("ACTIVE"), "{row}");
    assert!(!w.socket().exists());
    let peers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.state_dir().join("state.json")).expect("state"))
            .expect("json");
    // The join address, or (once a session listed the managers) the manager's advertised one.
    let port = m
        .remote_addr()
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let saved = peers[0]["addr"].as_str().expect("addr");
    assert!(
        saved == m.remote_addr() || saved == format!("0.0.0.0:{port}"),
        "{peers}"
    );
}

#[test]
fn bad_tokens_fail_with_swarmkit_messages_and_leave_no_node() {
    let m = Swarmd::start();
    let addr = m.remote_addr();
    let (worker_token, manager_token) = m.join_tokens();
    let before = node_ids(&m);

    let log = join_fails(&addr, "SWMTKN-1-nonsense");
    assert!(log.contains("Error: invalid join token"), "{log}");

    // The right digest with a made-up secret.
    let forged = format!(
        "{}{}",
        &worker_token[..worker_token.len() - 25],
        "1".repeat(25)
    );
    let log = join_fails(&addr, &forged);
    assert!(
        log.contains("rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"),
        "{log}"
    );

    // Rotation makes the old worker token fail at once, and changes only its secret.
    m.ctl(&[
        "cluster",
        "update",
        "default",
        "--rotate-join-token",
        "worker",
    ])
    .ok();
    let (rotated, manager_after) = m.join_tokens();
    assert_ne!(rotated, worker_token);
    assert_eq!(
        rotated[..rotated.len() - 25],
        worker_token[..worker_token.len() - 25]
    );
    assert_eq!(manager_after, manager_token);
    let log = join_fails(&addr, &worker_token);
    assert!(log.contains("A valid join token is necessary"), "{log}");
    assert_eq!(node_ids(&m), before, "failed joins created Node objects");

    // The rotated token works.
    let w = join_worker(&m, &rotated);
    let info = CertInfo::parse(&tls_material(&w.state_dir()).cert_pem).expect("cert");
    assert_eq!(info.ou, "swarm-worker");
}

#[test]
fn a_second_manager_joins_raft_and_follows_the_leaders_store() {
    let m = Swarmd::start();
    let (_, manager_token) = m.join_tokens();
    let addr = m.remote_addr();
    // A fixed remote port, so that the restart below comes back at the address raft knows
    // (the second of two voters: without it the leader has no quorum and serves no read).
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut m2, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &addr,
            "--join-token",
            &manager_token,
            "--hostname",
            "node-2",
            "--listen-remote-api",
            &listen,
        ],
        "node is ready",
        JOIN_LIMIT,
    );
    if let Some(code) = code {
        panic!("the joining manager exited with {code}; log:\n{}", m2.log());
    }
    let log = m2.log();
    assert!(log.contains("node.role=swarm-manager"), "{log}");
    assert!(log.contains("joined the raft cluster"), "{log}");
    let info = CertInfo::parse(&tls_material(&m2.state_dir()).cert_pem).expect("cert");
    assert_eq!(info.ou, "swarm-manager");

    // Both are managers, reachable, the first one leads.
    let ls = wait_for("two reachable managers", JOIN_LIMIT, || {
        let out = m.ctl(&["node", "ls"]);
        let text = out.ok().to_string();
        (text.matches("REACHABLE").count() == 2).then_some(text)
    });
    let rows: Vec<&str> = ls.lines().filter(|l| l.contains("REACHABLE")).collect();
    assert_eq!(rows.len(), 2, "{ls}");
    let leaders: Vec<&&str> = rows.iter().filter(|l| l.ends_with("REACHABLE *")).collect();
    assert_eq!(leaders.len(), 1, "{ls}");
    assert!(leaders[0].contains("node-1"), "{ls}");

    // A write on the leader shows on the follower's own control socket (reads there are
    // forwarded to the leader, which serves them linearizably).
    m.ctl_stdin(&["config", "create", "replicated"], b"hello")
        .ok();
    wait_for("the config on the follower", JOIN_LIMIT, || {
        let out = m2.ctl(&["config", "ls"]);
        (out.code == 0 && out.stdout.contains("replicated")).then_some(())
    });
    // The follower sees both managers too, and its own agent reaches the leader's dispatcher.
    wait_for(
        "the follower's node READY on the follower",
        JOIN_LIMIT,
        || {
            let out = m2.ctl(&["node", "ls"]);
            let text = out.ok().to_string();
            let ready = text
                .lines()
                .any(|l| l.contains("node-2") && l.contains(" READY ") && l.ends_with("REACHABLE"));
            (ready && text.matches("REACHABLE").count() == 2).then_some(())
        },
    );

    // Restarted, the follower resumes its membership (no new join) and still has the object.
    assert_eq!(m2.stop(), Some(0), "{}", m2.log());
    assert_eq!(
        m2.spawn_until("node is ready", JOIN_LIMIT),
        None,
        "{}",
        m2.log()
    );
    let log = m2.log();
    assert!(log.contains("raft member follows"), "{log}");
    assert_eq!(log.matches("joined the raft cluster").count(), 1, "{log}");
    let out = m2.ctl(&["config", "ls"]);
    assert!(out.ok().contains("replicated"), "{out:?}");
    assert_eq!(m2.stop(), Some(0), "{}", m2.log());
}

/// A CA and NodeCA server with a root the token does not name, counting certificate requests.
mod impostor {
    use super::*;
    use tonic::{Request, Response, Status};

    #[derive(Clone)]
    pub struct Impostor {
        pub root_pem: Vec<u8>,
        pub issue_calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl api::ca_server::Ca for Impostor {
        async fn get_root_ca_certificate(
            &self,
            _: Request<api::GetRootCaCertificateRequest>,
        ) -> Result<Response<api::GetRootCaCertificateResponse>, Status> {
            Ok(Response::new(api::GetRootCaCertificateResponse {
                certificate: self.root_pem.clone(),
            }))
        }
        async fn get_unlock_key(
            &self,
            _: Request<api::GetUnlockKeyRequest>,
        ) -> Result<Response<api::GetUnlockKeyResponse>, Status> {
            Err(Status::permission_denied("no"))
        }
    }

    #[tonic::async_trait]
    impl api::node_ca_server::NodeCa for Impostor {
        async fn issue_node_certificate(
            &self,
            _: Request<api::IssueNodeCertificateRequest>,
        ) -> Result<Response<api::IssueNodeCertificateResponse>, Status> {
            self.issue_calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::internal("stolen"))
        }
        async fn node_certificate_status(
            &self,
            _: Request<api::NodeCertificateStatusRequest>,
        ) -> Result<Response<api::NodeCertificateStatusResponse>, Status> {
            Err(Status::internal("stolen"))
        }
    }
}

#[test]
fn a_ca_not_matching_the_token_is_refused_before_the_secret_is_sent() {
    let m = Swarmd::start();
    let (worker_token, _) = m.join_tokens();
    let expected = ca::ParsedToken::parse(&worker_token)
        .expect("token")
        .digest_hex();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (root, cert, key) = impostor_cert();
    let cfg = ca::mtls_server_config(&cert, key.key_pem().as_bytes(), root.cert_pem(), false)
        .expect("server cfg");
    let impostor = impostor::Impostor {
        root_pem: root.cert_pem().to_vec(),
        issue_calls: Arc::new(AtomicUsize::new(0)),
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = impostor.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(api::ca_server::CaServer::new(server.clone()))
            .add_service(api::node_ca_server::NodeCaServer::new(server))
            .serve_with_incoming(ca::serve_tcp_tls(listener, cfg))
            .await
    });

    let log = join_fails(&addr, &worker_token);
    assert!(
        log.contains(&format!(
            "remote CA does not match fingerprint. Expected: {expected}"
        )),
        "{log}"
    );
    assert_eq!(
        impostor.issue_calls.load(Ordering::SeqCst),
        0,
        "the token reached a CA it does not name"
    );
}

/// Calls Control.ListNodes on `addr` presenting `client` (certificate chain, key).
fn list_nodes(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    root_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<usize, tonic::Status> {
    let cfg = ca::mtls_client_config(root_pem, client).expect("client cfg");
    list_nodes_on(rt, || {
        ca::tls_channel(addr, cfg, "swarm-manager").expect("channel")
    })
}

#[test]
fn remote_control_api_is_for_manager_certificates_only() {
    let m = Swarmd::start();
    let (worker_token, _) = m.join_tokens();
    let w = join_worker(&m, &worker_token);
    let addr = m.remote_addr();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mgr = tls_material(&m.state_dir());
    let wrk = tls_material(&w.state_dir());

    let n = list_nodes(
        &rt,
        &addr,
        &mgr.root_pem,
        Some((&mgr.cert_pem, &mgr.key_pem)),
    )
    .expect("manager certificate");
    assert_eq!(n, 2);
    let err = list_nodes(
        &rt,
        &addr,
        &wrk.root_pem,
        Some((&wrk.cert_pem, &wrk.key_pem)),
    )
    .expect_err("worker certificate");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("remote certificate not part of OUs: [swarm-manager]"),
        "{}",
        err.message()
    );
    let err = list_nodes(&rt, &addr, &mgr.root_pem, None).expect_err("no certificate");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A certificate from another CA does not get through the handshake.
    let other = Swarmd::start();
    let foreign = tls_material(&other.state_dir());
    let err = list_nodes(
        &rt,
        &addr,
        &mgr.root_pem,
        Some((&foreign.cert_pem, &foreign.key_pem)),
    )
    .expect_err("foreign CA");
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_ne!(
        err.code(),
        tonic::Code::PermissionDenied,
        "refused at the handshake: {err:?}"
    );

    // Once the worker is removed, its certificate is refused with SwarmKit's message.
    let id = CertInfo::parse(&wrk.cert_pem).expect("cert").node_id;
    m.ctl(&["node", "rm", "--force", &id]).ok();
    let err = list_nodes(
        &rt,
        &addr,
        &wrk.root_pem,
        Some((&wrk.cert_pem, &wrk.key_pem)),
    )
    .expect_err("removed worker");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[test]
fn renewal_with_a_short_test_expiry_keeps_the_node_id() {
    let m = Swarmd::start_with(&["--test-cert-expiry", "6s"]);
    let (worker_token, _) = m.join_tokens();
    let w = join_worker(&m, &worker_token);
    let first = CertInfo::parse(&tls_material(&w.state_dir()).cert_pem).expect("cert");
    let validity = first
        .not_after
        .duration_since(first.not_before)
        .expect("order");
    assert!(validity < Duration::from_secs(8), "{validity:?}");
    let renewed = wait_for("a renewed certificate", Duration::from_secs(20), || {
        let now = CertInfo::parse(&tls_material(&w.state_dir()).cert_pem).ok()?;
        (now.not_after > first.not_after).then_some(now)
    });
    assert_eq!(renewed.node_id, first.node_id);
    assert_eq!(renewed.ou, "swarm-worker");
    assert_ne!(
        renewed.public_key_raw, first.public_key_raw,
        "renewal uses a new key"
    );
    // And again: renewal keeps going with the renewed certificate (mutual TLS with it).
    wait_for("a second renewal", Duration::from_secs(20), || {
        let now = CertInfo::parse(&tls_material(&w.state_dir()).cert_pem).ok()?;
        (now.not_after > renewed.not_after).then_some(())
    });
    assert!(w.log().contains("node certificate renewed"));
    assert_eq!(node_ids(&m).len(), 2, "renewal made no new node");
}

#[test]
fn root_rotation_on_a_single_manager_completes() {
    let m = Swarmd::start();
    let (worker0, manager0) = m.join_tokens();
    let before = tls_material(&m.state_dir());
    let node_id = CertInfo::parse(&before.cert_pem).expect("cert").node_id;

    let started = std::time::Instant::now();
    m.ctl(&["cluster", "update", "default", "--rotate-ca"]).ok();
    let inspect = m.ctl(&["cluster", "inspect", "default"]);
    assert!(
        inspect.ok().contains("Root CA rotation: in progress"),
        "{}",
        inspect.stdout
    );

    // Done: the root swapped on disk and in the cluster, both tokens regenerated.
    let (worker1, manager1) = wait_for("the rotation to complete", Duration::from_secs(30), || {
        let text = m.ctl(&["cluster", "inspect", "default"]).ok().to_string();
        let swapped = tls_material(&m.state_dir()).root_pem != before.root_pem;
        (swapped && !text.contains("rotation")).then(|| m.join_tokens())
    });
    eprintln!(
        "root rotation took {:?} with one manager",
        started.elapsed()
    );
    let after = tls_material(&m.state_dir());
    let new_root = ca::RootCa::from_pem(&after.root_pem, None).expect("new root");
    for (old, new) in [(&worker0, &worker1), (&manager0, &manager1)] {
        assert_ne!(
            old[..old.len() - 25],
            new[..new.len() - 25],
            "digest changed"
        );
        assert_ne!(
            old[old.len() - 25..],
            new[new.len() - 25..],
            "secret changed"
        );
        assert!(
            ca::ParsedToken::parse(new)
                .expect("token")
                .matches_root(&new_root)
        );
    }
    // The manager's own certificate was re-issued by the new root, for the same node.
    let info = CertInfo::parse(&after.cert_pem).expect("cert");
    assert_eq!(info.node_id, node_id);
    assert!(
        new_root.has_issued(&after.cert_pem),
        "not issued by the new root"
    );
    assert_ne!(after.key_pem, before.key_pem);

    // Everything keeps working with the new identity: the control socket, and a join with the
    // new token, whose digest is the new root's.
    m.ctl(&["node", "ls"]).ok();
    let w = join_worker(&m, &worker1);
    assert_eq!(tls_material(&w.state_dir()).root_pem, after.root_pem);
    assert_eq!(node_ids(&m).len(), 2);
}

#[test]
fn a_worker_restarted_with_another_cas_certificates_fails_to_start() {
    let m = Swarmd::start();
    let (worker_token, _) = m.join_tokens();
    let mut w = join_worker(&m, &worker_token);
    w.stop();
    // First a plain restart works.
    assert_eq!(w.spawn_until(WORKER_READY, JOIN_LIMIT), None, "{}", w.log());
    w.stop();

    // Then its certificates are replaced by a worker's of another cluster (root, certificate and
    // key), and it is started again against its manager.
    let other = Swarmd::start();
    let (other_token, _) = other.join_tokens();
    let stranger = join_worker(&other, &other_token);
    let foreign = tls_material(&stranger.state_dir());
    ca::KeyStore::new(&w.state_dir())
        .save(&foreign.root_pem, &foreign.cert_pem, &foreign.key_pem)
        .expect("swap certificates");
    let code = w.spawn_until(WORKER_READY, JOIN_LIMIT);
    assert_eq!(code, Some(1), "{}", w.log());
    assert!(
        w.log().contains("certificate signed by unknown authority"),
        "{}",
        w.log()
    );
}
