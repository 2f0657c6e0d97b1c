//! TLS as SwarmKit's Go clients speak it: grpc-go sends its dial target as the server name (the
//! socket path for swarmctl on the control socket, an IP address or a name on the remote port),
//! which our servers accept and ignore. Checked with Debian's `openssl s_client` (the handshake
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
fn any_server_name_is_accepted_on_the_control_socket_and_the_remote_port() {
    let m = Swarmd::start();
    let sock = m.socket();
    let sock = path_str(&sock);
    let addr = m.remote_addr();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    info!("--- openssl s_client: the socket path as server name, ALPN h2");
    s_client_handshake(&["-unix", sock, "-servername", sock, "-alpn", "h2"]);
    for sni in ["127.0.0.1", sock, "swarm-manager"] {
        s_client_handshake(&["-connect", &addr, "-servername", sni, "-alpn", "h2"]);
    }

    info!("--- a gRPC call on a control socket connection that sent the socket path");
    let control = Target::Unix(m.socket());
    let nodes = list_nodes(&rt, &OpenSslClient::new(sock), &control);
    assert_eq!(nodes.expect("ListNodes over the control socket"), 1);

    info!("--- the remote port: the manager's certificate with an IP or a path as server name");
    let remote = Target::Tcp(addr.clone());
    let mgr = tls_material(&m.state_dir());
    let mgr = (mgr.cert_pem, mgr.key_pem);
    for sni in ["127.0.0.1", sock] {
        let client = OpenSslClient::new(sni).with_cert(&mgr);
        let nodes = list_nodes(&rt, &client, &remote);
        assert_eq!(nodes.expect(sni), 1, "{sni}");
    }

    info!("--- and still: no certificate is anonymous, a certificate of another CA is refused");
    let err = list_nodes(&rt, &OpenSslClient::new(sock), &remote).expect_err("anonymous");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let (_, cert, key) = impostor_cert();
    let impostor = OpenSslClient::new("127.0.0.1").with_cert(&(cert, key.key_pem().into_bytes()));
    let err = list_nodes(&rt, &impostor, &remote).expect_err("another CA");
    // Refused in the handshake, never answered: under TLS 1.3 the client learns it after its
    // own Finished, as a closed connection (a transport error), not as a gRPC status.
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
            && err.message().contains("transport error"),
        "{err}"
    );
}
