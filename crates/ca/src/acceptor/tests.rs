//! The TLS servers with real gRPC calls: our rustls clients, and an OpenSSL client that sends
//! the server names grpc-go sends (a socket path, an IP address), which rustls clients cannot.
//! The control socket (OpenSSL) takes any name; the remote API (rustls) DNS names, IP addresses
//! or none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::health_check_response::ServingStatus;
use api::health_client::HealthClient;
use api::health_server::{Health, HealthServer};
use api::{HealthCheckRequest, HealthCheckResponse};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use super::*;
use crate::test_client::{OpenSslClient, Target};
use crate::{
    NodeKey, RootCa, control_channel, insecure_client_config, mtls_client_config, tls_channel,
};
use tokio::io::AsyncWriteExt;

/// SERVING to a client whose certificate says worker `w1` of cluster `c1`, NOT_SERVING to one
/// without a certificate, PermissionDenied to any other identity; Internal when the caller's
/// address is not what the listener says (loopback over TCP, none on a unix socket).
struct PeerCheck {
    tcp: bool,
}

#[tonic::async_trait]
impl Health for PeerCheck {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let ip = peer_ip(&req);
        let addr = peer_addr_http(req.extensions());
        let expected = if self.tcp {
            ip.is_some_and(|ip| ip.is_loopback()) && addr.map(|a| a.ip()) == ip
        } else {
            ip.is_none() && addr.is_none()
        };
        if !expected {
            return Err(Status::internal(format!("peer address {addr:?}")));
        }
        let status = match peer_cert_info(&req) {
            Some(info)
                if info.node_id == "w1"
                    && info.role == api::NodeRole::Worker
                    && info.cluster_id == "c1" =>
            {
                ServingStatus::Serving
            }
            Some(info) => return Err(Status::permission_denied(info.node_id)),
            None => ServingStatus::NotServing,
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
}

const SERVING: i32 = ServingStatus::Serving as i32;
const ANONYMOUS: i32 = ServingStatus::NotServing as i32;

/// A key and a certificate for it signed by `root`: (cert PEM, key PEM).
fn node_cert(root: &RootCa, id: &str, role: api::NodeRole) -> (Vec<u8>, Vec<u8>) {
    let key = NodeKey::generate().expect("key");
    let cert = root
        .issue(
            key.csr_pem().expect("csr").as_bytes(),
            id,
            role,
            "c1",
            crate::MIN_NODE_CERT_EXPIRY,
        )
        .expect("cert");
    (cert, key.key_pem().into_bytes())
}

/// Serves [`PeerCheck`] on the connections of `incoming`; sending on (or dropping) the
/// returned sender stops it.
fn serve_peer_check<S>(
    incoming: ReceiverStream<io::Result<TlsConnection<S>>>,
    tcp: bool,
) -> tokio::sync::oneshot::Sender<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(PeerCheck { tcp }))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    stop_tx
}

/// Serves [`PeerCheck`] on a fresh unix socket in `dir`.
fn start_unix(
    dir: &Path,
    tls: impl Into<ServerTls>,
) -> (PathBuf, tokio::sync::oneshot::Sender<()>) {
    let sock = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    (sock, serve_peer_check(serve_unix_tls(listener, tls), false))
}

/// Serves [`PeerCheck`] on 127.0.0.1.
async fn start_tcp(tls: impl Into<ServerTls>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (addr, serve_peer_check(serve_tcp_tls(listener, tls), true))
}

/// One Health check on `channel`, bounded.
async fn check_on(channel: Channel) -> Result<i32, Status> {
    tokio::time::timeout(
        Duration::from_secs(10),
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await
    .expect("no hang")
    .map(|r| r.into_inner().status)
}

/// A Health check from our rustls client for the remote API.
async fn check(addr: &str, cfg: Arc<rustls::ClientConfig>, name: &str) -> Result<i32, Status> {
    check_on(tls_channel(addr, cfg, name).expect("channel")).await
}

#[tokio::test]
async fn grpc_over_tls_on_unix_socket() {
    let root = RootCa::generate().expect("root");
    let (cert, key) = node_cert(&root, "m1", api::NodeRole::Manager);
    let cfg = control_server_config(&cert, &key).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, stop) = start_unix(dir.path(), cfg);

    // Our swarmctl's client: no certificate, so no identity.
    let ours = control_channel(&sock).expect("channel");
    assert_eq!(check_on(ours).await.expect("check over TLS"), ANONYMOUS);

    // A plaintext client cannot talk to it.
    let sock2 = sock.clone();
    let plain = Endpoint::from_static("http://x")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = sock2.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await;
    if let Ok(ch) = plain {
        assert!(check_on(ch).await.is_err(), "plaintext call succeeded");
    }

    // A missing socket fails at the first call, not before.
    let missing = control_channel(&dir.path().join("nope.sock")).expect("lazy channel");
    assert!(check_on(missing).await.is_err());
    let _ = stop.send(());
}

/// What grpc-go (SwarmKit's swarmctl) does: the socket path as the server name.
#[tokio::test]
async fn control_socket_accepts_any_server_name() {
    let root = RootCa::generate().expect("root");
    let (cert, key) = node_cert(&root, "m1", api::NodeRole::Manager);
    let cfg = control_server_config(&cert, &key).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, stop) = start_unix(dir.path(), cfg);
    let target = Target::Unix(sock.clone());
    let path = sock.to_str().expect("utf-8 path").to_string();

    for sni in [
        path.as_str(),
        "127.0.0.1",
        "::1",
        "swarm-manager",
        "not a_dns name!",
    ] {
        let client = OpenSslClient::new(sni);
        let tls = client.connect(&target).await.expect(sni);
        assert_eq!(
            tls.ssl().selected_alpn_protocol(),
            Some(&b"h2"[..]),
            "{sni}"
        );
        assert_eq!(
            check_on(client.channel(&target)).await.expect(sni),
            ANONYMOUS,
            "{sni}"
        );
    }
    let no_sni = OpenSslClient {
        sni: None,
        ..OpenSslClient::new("")
    };
    assert_eq!(
        check_on(no_sni.channel(&target)).await.expect("no SNI"),
        ANONYMOUS
    );

    // h2 or nothing: a client offering only HTTP/1.1 is refused in the handshake.
    let http1 = OpenSslClient {
        alpn: b"\x08http/1.1",
        ..OpenSslClient::new(&path)
    };
    assert!(http1.connect(&target).await.is_err());
    let _ = stop.send(());
}

/// What grpc-go clients dialling `host:port` send (a DNS name, an IP address, nothing) is
/// accepted on the remote API, and client certificates are still verified; a server name that
/// is neither a DNS name nor an IP address (a socket path) is refused by rustls, as is a client
/// offering application protocols but not `h2`.
#[tokio::test]
async fn remote_api_accepts_dns_names_and_ip_addresses_and_still_verifies_clients() {
    let root = RootCa::generate().expect("root");
    let other = RootCa::generate().expect("other root");
    let (mcert, mkey) = node_cert(&root, "m1", api::NodeRole::Manager);
    let worker = node_cert(&root, "w1", api::NodeRole::Worker);
    let stranger = node_cert(&other, "w1", api::NodeRole::Worker);
    let root_pem = root.cert_pem();
    let no_sni = OpenSslClient {
        sni: None,
        ..OpenSslClient::new("")
    };
    let clients = [
        "127.0.0.1",
        "::1",
        "swarm-manager",
        "swarm-ca",
        "other.example",
    ]
    .map(OpenSslClient::new)
    .into_iter()
    .chain([no_sni])
    .collect::<Vec<_>>();

    // Client certificates optional (as on a manager's remote port), then required.
    for required in [false, true] {
        let cfg = mtls_server_config(&mcert, &mkey, root_pem, required).expect("server cfg");
        let (addr, stop) = start_tcp(cfg).await;
        let target = Target::Tcp(addr);
        for client in clients.iter().cloned() {
            let sni = format!("{:?}", client.sni);
            let with_cert = check_on(client.clone().with_cert(&worker).channel(&target)).await;
            assert_eq!(with_cert.expect(&sni), SERVING, "{sni}");
            let anonymous = check_on(client.channel(&target)).await;
            if required {
                assert!(anonymous.is_err(), "{sni}: let in without a certificate");
            } else {
                assert_eq!(anonymous.expect(&sni), ANONYMOUS, "{sni}");
            }
            let refused = check_on(client.with_cert(&stranger).channel(&target)).await;
            assert!(
                refused.is_err(),
                "{sni}: a certificate of another CA was accepted"
            );
        }
        for sni in ["/var/run/swarmd.sock", "not a_dns name!"] {
            let client = OpenSslClient::new(sni).with_cert(&worker);
            assert!(client.connect(&target).await.is_err(), "{sni}");
        }
        let http1 = OpenSslClient {
            alpn: b"\x08http/1.1",
            ..OpenSslClient::new("swarm-manager")
        };
        assert!(http1.connect(&target).await.is_err(), "ALPN without h2");
        let h2 = OpenSslClient::new("swarm-manager").connect(&target).await;
        let h2 = h2.expect("handshake");
        assert_eq!(h2.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        let _ = stop.send(());
    }
}

/// No session resumption on the remote API: a rustls client that would resume (its default
/// session store) makes a full handshake every time, so each connection's client certificate
/// is verified against the roots current at its accept.
#[tokio::test]
async fn remote_api_resumes_no_session() {
    let root = RootCa::generate().expect("root");
    let (mcert, mkey) = node_cert(&root, "m1", api::NodeRole::Manager);
    let (wcert, wkey) = node_cert(&root, "w1", api::NodeRole::Worker);
    let cfg = mtls_server_config(&mcert, &mkey, root.cert_pem(), false).expect("server cfg");
    let (addr, stop) = start_tcp(cfg).await;
    let client = mtls_client_config(root.cert_pem(), Some((&wcert, &wkey))).expect("client");
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = rustls::pki_types::ServerName::try_from("swarm-manager").expect("name");
    for _ in 0..3 {
        let tcp = TcpStream::connect(&addr).await.expect("connect");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
        // Under TLS 1.3 a ticket would come after the handshake: let the client read it.
        tls.write_all(PREFACE).await.expect("preface");
        tls.write_all(EMPTY_SETTINGS).await.expect("settings");
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
    }
    let _ = stop.send(());
}

#[tokio::test]
async fn mutual_tls_over_tcp() {
    let root = RootCa::generate().expect("root");
    let other = RootCa::generate().expect("other root");
    let (mcert, mkey) = node_cert(&root, "m1", api::NodeRole::Manager);
    let (wcert, wkey) = node_cert(&root, "w1", api::NodeRole::Worker);
    let (xcert, xkey) = node_cert(&other, "w1", api::NodeRole::Worker);
    let root_pem = root.cert_pem();

    // Client certificates optional, as on a manager's remote port.
    let cfg = mtls_server_config(&mcert, &mkey, root_pem, false).expect("server cfg");
    let (addr, stop) = start_tcp(cfg).await;
    let worker = mtls_client_config(root_pem, Some((&wcert, &wkey))).expect("client cfg");
    for name in ["swarm-ca", "swarm-manager", "m1"] {
        assert_eq!(
            check(&addr, worker.clone(), name).await.expect(name),
            SERVING,
            "{name}"
        );
    }
    // The server's certificate does not name this host.
    assert!(check(&addr, worker.clone(), "evil.example").await.is_err());
    // Anonymous: let in, but without an identity.
    let anon = mtls_client_config(root_pem, None).expect("anon cfg");
    assert_eq!(
        check(&addr, anon, "swarm-ca").await.expect("anonymous"),
        ANONYMOUS
    );
    // A certificate of another CA is refused.
    let stranger = mtls_client_config(root_pem, Some((&xcert, &xkey))).expect("cfg");
    assert!(check(&addr, stranger, "swarm-ca").await.is_err());
    // A client trusting another root refuses this server.
    let distrust = mtls_client_config(other.cert_pem(), Some((&wcert, &wkey))).expect("cfg");
    assert!(check(&addr, distrust, "swarm-ca").await.is_err());
    let _ = stop.send(());

    // Client certificates required.
    let cfg = mtls_server_config(&mcert, &mkey, root_pem, true).expect("server cfg");
    let (addr, stop) = start_tcp(cfg).await;
    assert_eq!(
        check(&addr, worker, "swarm-manager").await.expect("worker"),
        SERVING
    );
    let anon = mtls_client_config(root_pem, None).expect("anon cfg");
    assert!(check(&addr, anon, "swarm-manager").await.is_err());
    let _ = stop.send(());

    assert!(mtls_client_config(b"", None).is_err());
    assert!(mtls_server_config(&mcert, &mkey, b"junk", false).is_err());
    assert!(mtls_server_config(&mcert, &xkey, root_pem, false).is_err());
    assert!(control_server_config(b"", &mkey).is_err());
}

/// Root rotation as the remote port sees it: a leaf of the next root travels with the next
/// root cross-signed by the current one, and a server trusting only the current root accepts
/// it; a swapped config (trusting the next root) applies to new connections.
#[tokio::test]
async fn remote_api_follows_root_rotation() {
    let current = RootCa::generate().expect("current root");
    let next = RootCa::generate().expect("next root");
    let (mcert, mkey) = node_cert(&current, "m1", api::NodeRole::Manager);
    let (leaf, wkey) = node_cert(&next, "w1", api::NodeRole::Worker);
    let cross = current.cross_sign(next.cert_pem()).expect("cross-sign");
    let chain = [leaf.clone(), cross].concat();

    let cfg = mtls_server_config(&mcert, &mkey, current.cert_pem(), false).expect("cfg");
    let (tx, rx) = watch::channel(cfg);
    let (addr, stop) = start_tcp(ServerTls::reloadable(rx)).await;
    let rustls_client = |pem: &[u8]| {
        mtls_client_config(current.cert_pem(), Some((pem, &wkey))).expect("client cfg")
    };
    let cross_signed = check(&addr, rustls_client(&chain), "swarm-manager").await;
    assert_eq!(cross_signed.expect("cross-signed chain"), SERVING);
    assert!(
        check(&addr, rustls_client(&leaf), "swarm-manager")
            .await
            .is_err(),
        "a leaf of the next root without the cross-signed intermediate was accepted"
    );

    // The server now trusts the next root only: the bare leaf gets in, a leaf of the old root
    // no longer does.
    let (mcert2, mkey2) = node_cert(&next, "m1", api::NodeRole::Manager);
    tx.send_replace(mtls_server_config(&mcert2, &mkey2, next.cert_pem(), false).expect("cfg"));
    let target = Target::Tcp(addr);
    let bare = OpenSslClient::new("127.0.0.1").with_cert(&(leaf, wkey));
    assert_eq!(
        check_on(bare.channel(&target)).await.expect("next root"),
        SERVING
    );
    let old = node_cert(&current, "w1", api::NodeRole::Worker);
    let old = OpenSslClient::new("127.0.0.1").with_cert(&old);
    assert!(
        check_on(old.channel(&target)).await.is_err(),
        "old root still trusted"
    );
    let _ = stop.send(());
}

/// A control socket config (certificate of manager `m1`).
fn control_cfg() -> ServerConfig {
    let root = RootCa::generate().expect("root");
    let (cert, key) = node_cert(&root, "m1", api::NodeRole::Manager);
    control_server_config(&cert, &key).expect("config")
}

/// Serves [`PeerCheck`] on a fresh unix socket in `dir`, with `limits`.
fn start_unix_limited(dir: &Path, limits: Limits) -> (PathBuf, tokio::sync::oneshot::Sender<()>) {
    let sock = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let incoming = tls_incoming(listener, control_cfg().into(), limits);
    (sock, serve_peer_check(incoming, false))
}

/// A SETTINGS frame with no setting: the rest of an HTTP/2 client's handshake after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];

/// Whether the peer closes `s` within `bound` (whatever it sends before is read and dropped).
async fn closed_within(s: &mut (impl AsyncRead + Unpin), bound: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// TLS done, then nothing: the connection is closed once the connection timeout (shortened
/// here) has passed since accept, not before; so is one that sends the preface but no SETTINGS.
/// A client that completes the HTTP/2 handshake is served, and its connection stays open past it.
#[tokio::test]
async fn connection_without_http2_preface_is_closed() {
    let limits = Limits {
        connection: Duration::from_millis(800),
        ..Limits::DEFAULT
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, stop) = start_unix_limited(dir.path(), limits);
    let target = Target::Unix(sock.clone());
    let client = OpenSslClient::new("swarm-manager");

    let started = std::time::Instant::now();
    let mut silent = client.connect(&target).await.expect("TLS");
    let mut preface_only = client.connect(&target).await.expect("TLS");
    preface_only.write_all(PREFACE).await.expect("write");
    let mut complete = client.connect(&target).await.expect("TLS");
    complete.write_all(PREFACE).await.expect("write");
    complete.write_all(EMPTY_SETTINGS).await.expect("write");

    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "silent one left open"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "closed after {waited:?}, before the bound"
    );
    assert!(
        closed_within(&mut preface_only, Duration::from_secs(10)).await,
        "preface only left open"
    );
    assert!(
        !closed_within(&mut complete, Duration::from_millis(1500)).await,
        "a connection that completed the HTTP/2 handshake was closed"
    );
    // The preface read during set-up reached the server: real calls work.
    assert_eq!(
        check_on(control_channel(&sock).expect("channel"))
            .await
            .expect("check"),
        ANONYMOUS
    );
    let _ = stop.send(());
}

/// Something else than HTTP/2 after TLS is closed at once.
#[tokio::test]
async fn preface_must_be_http2_then_settings() {
    let mut ok: &[u8] = &[
        PREFACE.as_slice(),
        &[0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0xff],
    ]
    .concat();
    assert_eq!(
        read_preface(&mut ok).await.expect("preface").len(),
        24 + 9 + 6
    );
    assert_eq!(ok, &[0xff], "nothing past the SETTINGS frame is read");
    let mut http1: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore bytes here";
    assert!(read_preface(&mut http1).await.is_err());
    let mut ping_first: &[u8] = &[PREFACE.as_slice(), &[0, 0, 8, 6, 0, 0, 0, 0, 0]].concat();
    assert!(read_preface(&mut ping_first).await.is_err());
    let mut short: &[u8] = &PREFACE[..10];
    assert!(read_preface(&mut short).await.is_err());
}

/// A flood of half-open connections (TCP only, a partial ClientHello, TLS without preface) on
/// the control socket: at most `setting_up` of them stay open, the oldest being closed for the
/// newer ones, and a client still gets its answer at once.
#[tokio::test]
async fn handshake_flood_leaves_the_socket_answering() {
    let limits = Limits {
        setting_up: 16,
        ..Limits::DEFAULT
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, stop) = start_unix_limited(dir.path(), limits);
    let mut flood: Vec<Box<dyn crate::test_client::Io>> = Vec::new();
    for i in 0..150 {
        let mut s = UnixStream::connect(&sock).await.expect("connect");
        if i % 3 == 1 {
            // The start of a TLS record holding a ClientHello, and nothing more.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("write");
        }
        if i % 3 == 2 {
            let tls = OpenSslClient::new("x")
                .connect(&Target::Unix(sock.clone()))
                .await
                .expect("TLS");
            flood.push(Box::new(tls));
        }
        flood.push(Box::new(s));
    }
    let started = std::time::Instant::now();
    assert_eq!(
        check_on(control_channel(&sock).expect("channel"))
            .await
            .expect("check"),
        ANONYMOUS
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the check took {took:?}");

    let mut probes = tokio::task::JoinSet::new();
    for mut s in flood {
        probes.spawn(async move { closed_within(&mut s, Duration::from_secs(2)).await });
    }
    let open = probes
        .join_all()
        .await
        .into_iter()
        .filter(|closed| !closed)
        .count();
    assert!(open <= 16, "{open} half-open connections still open");
    assert!(
        open > 0,
        "even the newest half-open connections were closed"
    );
    let _ = stop.send(());
}

/// A client with `per_client` connections (set up or not) has its next one closed at accept,
/// and gets one again once it closes one. Over TCP the bound is per source IP.
#[tokio::test]
async fn connections_per_client_are_bounded() {
    let limits = Limits {
        per_client: 4,
        ..Limits::DEFAULT
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = serve_peer_check(tls_incoming(listener, control_cfg().into(), limits), true);
    let target = Target::Tcp(addr.clone());
    let client = OpenSslClient::new("127.0.0.1");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = client.connect(&target).await.expect("TLS");
        c.write_all(PREFACE).await.expect("write");
        c.write_all(EMPTY_SETTINGS).await.expect("write");
        held.push(c);
    }
    let raw = TcpStream::connect(&addr).await.expect("connect");
    // The fifth is closed before TLS: the handshake fails.
    let fifth = tokio::time::timeout(Duration::from_secs(10), client.connect(&target)).await;
    assert!(matches!(fifth, Ok(Err(_))), "a fifth connection got in");
    drop(raw);
    let cfg = insecure_client_config().expect("client config");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let answered = loop {
        let channel = tls_channel(&addr, cfg.clone(), "swarm-manager").expect("channel");
        if check_on(channel).await.is_ok() {
            break true;
        }
        if std::time::Instant::now() > until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answered, "no room again after one connection closed");
    let _ = stop.send(());
}

/// Accepted and dialled TCP sockets probe a silent peer: keepalive on, first probe after 15 s
/// of silence, then every 15 s, 9 of them; no delay.
#[tokio::test]
async fn tcp_sockets_keep_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let s = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let before = socket2::SockRef::from(&s);
    assert!(
        !before.keepalive().expect("SO_KEEPALIVE"),
        "on before tuning"
    );
    tune_tcp(&s).expect("tune");
    let sock = socket2::SockRef::from(&s);
    assert!(sock.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(sock.tcp_keepalive_time().expect("idle"), TCP_KEEPALIVE);
    assert_eq!(
        sock.tcp_keepalive_interval().expect("interval"),
        TCP_KEEPALIVE
    );
    assert_eq!(
        sock.tcp_keepalive_retries().expect("count"),
        TCP_KEEPALIVE_PROBES
    );
    assert!(s.nodelay().expect("nodelay"));
}
