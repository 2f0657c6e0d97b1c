//! TLS as SwarmKit's Go clients speak it: grpc-go sends its dial target as the server name (the
//! socket path for swarmctl on the control socket, an IP address or a name on the remote port),
//! which our servers accept and ignore (the control socket any name, the remote port, served by
//! rustls, a DNS name, an IP address or none). Checked with Debian's `openssl s_client` (the handshake
//! and ALPN `h2`) and with gRPC calls on connections that sent such names (`ca::test_client`).

use std::path::Path;
use std::process::{Command, Stdio};

use ca::test_client::{OpenSslClient, Target};
use tracing::info;

use crate::harness::{Swarmd, impostor_cert, list_nodes_on, tls_material};

/// Runs `openssl s_client` with `args` and no input (it leaves right after the handshake);
/// panics unless the handshake succeeded with ALPN `h2`.
fn s_client_handshake(args: &[&str]) {
    let out = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client (Debian package openssl, installed by .ci/run)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl s_client {args:?}:\n{text}");
    assert!(
        text.contains("ALPN protocol: h2") && !text.contains("alert"),
        "openssl s_client {args:?}:\n{text}"
    );
}

/// Control.ListNodes by `client` at `target`: the number of nodes.
fn list_nodes(
    rt: &tokio::runtime::Runtime,
    client: &OpenSslClient,
    target: &Target,
) -> Result<usize, tonic::Status> {
    list_nodes_on(rt, || client.channel(target))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn grpc_go_server_names_are_accepted_on_the_control_socket_and_the_remote_port() {
    let m = Swarmd::start();
    let sock = m.socket();
    let sock = path_str(&sock);
    let addr = m.remote_addr();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    info!("--- openssl s_client: the socket path as server name, ALPN h2");
    s_client_handshake(&["-unix", sock, "-servername", sock, "-alpn", "h2"]);
    for sni in ["127.0.0.1", "swarm-manager", "swarm-ca"] {
        s_client_handshake(&["-connect", &addr, "-servername", sni, "-alpn", "h2"]);
    }
    s_client_handshake(&["-connect", &addr, "-noservername", "-alpn", "h2"]);

    info!("--- a gRPC call on a control socket connection that sent the socket path");
    let control = Target::Unix(m.socket());
    let nodes = list_nodes(&rt, &OpenSslClient::new(sock), &control);
    assert_eq!(nodes.expect("ListNodes over the control socket"), 1);

    info!("--- the remote port: the manager's certificate with an IP or a name as server name");
    let remote = Target::Tcp(addr.clone());
    let mgr = tls_material(&m.state_dir());
    let mgr = (mgr.cert_pem, mgr.key_pem);
    for sni in ["127.0.0.1", "swarm-manager"] {
        let client = OpenSslClient::new(sni).with_cert(&mgr);
        let nodes = list_nodes(&rt, &client, &remote);
        assert_eq!(nodes.expect(sni), 1, "{sni}");
    }
    // No grpc-go client sends a path over TCP; rustls refuses a name that is no DNS name.
    let path = OpenSslClient::new(sock).with_cert(&mgr);
    assert!(rt.block_on(path.connect(&remote)).is_err(), "a path as SNI");

    info!("--- and still: no certificate is anonymous, a certificate of another CA is refused");
    let anonymous = OpenSslClient::new("swarm-manager");
    let err = list_nodes(&rt, &anonymous, &remote).expect_err("anonymous");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let (_, cert, key) = impostor_cert();
    let impostor = OpenSslClient::new("127.0.0.1").with_cert(&(cert, key.key_pem().into_bytes()));
    let err = list_nodes(&rt, &impostor, &remote).expect_err("another CA");
    // Refused in the handshake, never answered: under TLS 1.3 the client learns it after its
    // own Finished, as a closed or reset connection (a transport error), not as a gRPC status.
    let source = std::error::Error::source(&err);
    assert!(
        source.is_some_and(|e| e.is::<tonic::transport::Error>()),
        "{err}"
    );
}

/// HPACK's integer with a 7-bit prefix (RFC 7541, 5.1), as a string literal's length.
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// One HTTP/2 frame: type, flags, stream and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the server answered to one gRPC call made by hand on stream 1.
#[derive(Debug, PartialEq)]
enum RawAnswer {
    /// Response headers and a gRPC message of this many bytes.
    Message(usize),
    /// The stream was reset with this HTTP/2 error code.
    Reset(u32),
}

/// Makes the unary gRPC call `path` with an empty request on `tls`, sending `authority` as
/// `:authority` byte for byte, as grpc-go does with the socket path it dialed (a client built
/// on `http::Uri` cannot send such a value). HPACK literals without indexing, so no table state.
async fn raw_grpc_call<S>(tls: &mut S, authority: &str, path: &str) -> RawAnswer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;

    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0); // literal without indexing, new name
        hpack_len(&mut block, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_len(&mut block, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    out.extend(h2_frame(HEADERS, END_HEADERS, 1, &block));
    // An empty request message: not compressed, length 0.
    out.extend(h2_frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    tls.write_all(&out).await.expect("write the request");

    let mut headers_seen = false;
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head)
            .await
            .expect("read a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.expect("read a frame");
        match (head[3], stream) {
            (SETTINGS, 0) if head[4] & 1 == 0 => {
                // Acknowledge the server's settings, as a client must.
                tls.write_all(&h2_frame(SETTINGS, 1, 0, &[]))
                    .await
                    .expect("write SETTINGS ack");
            }
            (RST_STREAM, 1) => {
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                return RawAnswer::Reset(code);
            }
            (HEADERS, 1) => headers_seen = true,
            (DATA, 1) if headers_seen && len >= 5 => {
                let n = u32::from_be_bytes(payload[1..5].try_into().expect("4 bytes"));
                return RawAnswer::Message(n as usize);
            }
            _ => {}
        }
    }
}

/// grpc-go dialing a unix socket sends the socket's path as `:authority` (SwarmKit's swarmctl
/// does), which is no URI authority: the request must be served, not reset (h2 is patched for
/// this: vendor/h2/PATCHED.md). A valid authority is served the same way.
#[test]
fn a_socket_path_as_http2_authority_is_served_on_the_control_socket() {
    let m = Swarmd::start();
    let sock = m.socket();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = OpenSslClient::new(path_str(&sock));
    let target = Target::Unix(sock.clone());
    for authority in [path_str(&sock), "localhost"] {
        let answer = rt.block_on(async {
            let mut tls = client.connect(&target).await.expect("TLS handshake");
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                raw_grpc_call(&mut tls, authority, "/docker.swarmkit.v1.Control/ListNodes"),
            )
            .await
            .expect("an answer within 10 s")
        });
        // One node listed: a non-empty ListNodesResponse.
        assert!(
            matches!(answer, RawAnswer::Message(n) if n > 0),
            "authority {authority:?}: {answer:?}"
        );
    }
}
