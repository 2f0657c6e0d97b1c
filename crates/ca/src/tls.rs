//! TLS for the control socket, as SwarmKit serves it: the manager presents its node certificate
//! on the unix socket and asks for none; swarmctl sends none and does not verify the server (it
//! trusts the socket's file mode instead), but still checks the handshake signatures. Also the
//! accept loops that turn a listener into a stream of TLS connections for tonic, and the mutual
//! TLS configurations of the remote (TCP) API, where both sides verify against the root CA.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::debug;

use crate::{CaError, CertInfo, MANAGER_ROLE};

/// A handshake that takes longer than this is dropped, so a stalled client cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server; beyond this, accepting waits.
const PENDING_CONNECTIONS: usize = 64;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Server config presenting `cert_chain_pem` with `key_pem`, asking for no client certificate,
/// offering ALPN `h2` (recent grpc-go clients require it).
pub fn control_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, CaError> {
    let (chain, key) = cert_and_key(cert_chain_pem, key_pem)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate but verifies handshake signatures, like Go's
/// `InsecureSkipVerify` that SwarmKit's swarmctl uses on the local socket.
#[derive(Debug)]
struct SkipServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client config that verifies no server certificate (handshake signatures only): for the
/// control socket, and for a joining node's first call, which fetches the root CA that it then
/// checks against the join token's digest before it sends anything secret.
pub fn insecure_client_config() -> Result<Arc<rustls::ClientConfig>, CaError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipServerVerification(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A lazy gRPC channel to the control socket at `path`: TLS, no client certificate, no server
/// verification. Nothing is dialled until the first call, so a missing socket shows up there,
/// as an `Unavailable` status whose source is the `io::Error` of the dial.
pub fn control_channel(path: &Path) -> Result<Channel, CaError> {
    let connector = TlsConnector::from(insecure_client_config()?);
    let path = path.to_path_buf();
    let server_name = ServerName::try_from(MANAGER_ROLE)
        .map_err(|e| CaError::Transport(e.to_string()))?
        .to_owned();
    let endpoint =
        Endpoint::from_static("http://swarm-manager").connect_timeout(Duration::from_secs(10));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, path, server_name) =
                (connector.clone(), path.clone(), server_name.clone());
            async move {
                let stream = UnixStream::connect(&path).await?;
                let tls = connector.connect(server_name, stream).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

pub(crate) fn root_store(root_pem: &[u8]) -> Result<Arc<RootCertStore>, CaError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem) {
        let cert = cert.map_err(|e| CaError::Parse(format!("root certificate: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(CaError::Parse("no root certificate".into()));
    }
    Ok(Arc::new(roots))
}

fn cert_and_key(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse(format!("certificate chain: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CaError::Parse(format!("private key: {e}")))?;
    Ok((chain, key))
}

/// Server config for the remote (TCP) API: presents `cert_chain_pem`, verifies client
/// certificates against `root_pem`. With `require_client_cert` false a client without a
/// certificate is let in (a joining node asking the CA for its first certificate), but a
/// certificate that does not chain to the root is refused; ALPN `h2`.
pub fn mtls_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    root_pem: &[u8],
    require_client_cert: bool,
) -> Result<Arc<rustls::ServerConfig>, CaError> {
    let (chain, key) = cert_and_key(cert_chain_pem, key_pem)?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(root_pem)?, provider());
    if !require_client_cert {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| CaError::Parse(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config for the remote API: verifies the server against `root_pem` (use server name
/// `swarm-ca` for the CA service, `swarm-manager` otherwise: both are manager SANs) and presents
/// `client` (certificate chain PEM, key PEM) when given; ALPN `h2`.
pub fn mtls_client_config(
    root_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, CaError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(root_store(root_pem)?);
    let mut cfg = match client {
        Some((cert_chain_pem, key_pem)) => {
            let (chain, key) = cert_and_key(cert_chain_pem, key_pem)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A lazy gRPC channel to `addr` (`host:port`) over TCP with TLS configured by `cfg` (for
/// instance [`mtls_client_config`]), expecting `server_name` in the server's certificate.
pub fn tls_channel(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel, CaError> {
    let connector = TlsConnector::from(cfg);
    let addr = addr.to_string();
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| CaError::Transport(e.to_string()))?;
    let endpoint =
        Endpoint::from_static("http://swarm-manager").connect_timeout(Duration::from_secs(10));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, addr, server_name) =
                (connector.clone(), addr.clone(), server_name.clone());
            async move {
                let stream = TcpStream::connect(&addr).await?;
                stream.set_nodelay(true)?;
                let tls = connector.connect(server_name, stream).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// Who called: the original caller of a request another manager forwarded (a
/// [`crate::ForwardedPeer`] the authorization layer accepted), else what the verified client
/// certificate of the request's TLS connection (TCP or unix, as accepted by [`serve_tcp_tls`] /
/// [`serve_unix_tls`]) says; `None` without one.
pub fn peer_cert_info<T>(req: &tonic::Request<T>) -> Option<CertInfo> {
    peer_cert_info_http(req.extensions())
}

/// [`peer_cert_info`] for middleware that sees the HTTP request under the gRPC one.
pub fn peer_cert_info_http(ext: &tonic::codegen::http::Extensions) -> Option<CertInfo> {
    if let Some(fwd) = ext.get::<crate::ForwardedPeer>() {
        return fwd.cert.clone();
    }
    tls_peer_cert_info_http(ext)
}

/// The certificate of the request's own TLS connection, ignoring any forwarded caller (the
/// forwarding manager, for a forwarded request).
pub fn tls_peer_cert_info_http(ext: &tonic::codegen::http::Extensions) -> Option<CertInfo> {
    peer_of(
        ext.get::<TlsConnectInfo<TcpConnectInfo>>(),
        ext.get::<TlsConnectInfo<UdsConnectInfo>>(),
    )
}

/// The caller's IP: the forwarded caller's address for a forwarded request, else the TCP peer's.
pub fn peer_ip<T>(req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    if let Some(fwd) = req.extensions().get::<crate::ForwardedPeer>() {
        return fwd
            .remote_addr
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
    }
    req.remote_addr().map(|a| a.ip())
}

/// The TCP peer address of the HTTP request under a gRPC one, when it came over TCP.
pub fn peer_addr_http(ext: &tonic::codegen::http::Extensions) -> Option<std::net::SocketAddr> {
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
}

fn peer_of(
    tcp: Option<&TlsConnectInfo<TcpConnectInfo>>,
    uds: Option<&TlsConnectInfo<UdsConnectInfo>>,
) -> Option<CertInfo> {
    let certs = tcp
        .and_then(TlsConnectInfo::peer_certs)
        .or_else(|| uds.and_then(TlsConnectInfo::peer_certs))?;
    CertInfo::parse_der(certs.first()?).ok()
}

/// A listener whose connections the TLS accept loop can take.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> io::Result<(UnixStream, String)> {
        let (s, _) = self.accept().await?;
        Ok((s, "unix".to_string()))
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<(TcpStream, String)> {
        let (s, peer) = self.accept().await?;
        Ok((s, peer.to_string()))
    }
}

/// The server config an accept loop uses: fixed, or replaced at run time (a renewed certificate,
/// a new root CA) through the sending side of a watch channel. Each new connection takes the
/// config current at its accept; live connections keep theirs.
#[derive(Clone, Debug)]
pub struct ServerTls(watch::Receiver<Arc<rustls::ServerConfig>>);

impl ServerTls {
    /// A config that follows `rx`.
    pub fn reloadable(rx: watch::Receiver<Arc<rustls::ServerConfig>>) -> ServerTls {
        ServerTls(rx)
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.borrow().clone()
    }
}

impl From<Arc<rustls::ServerConfig>> for ServerTls {
    fn from(cfg: Arc<rustls::ServerConfig>) -> ServerTls {
        // The sender is dropped: the receiver keeps the last value forever.
        ServerTls(watch::channel(cfg).1)
    }
}

/// Runs the accept loop: every connection is handshaken in its own task (bounded by
/// [`HANDSHAKE_TIMEOUT`]) and handed over when done; the loop ends when the stream is dropped.
fn tls_incoming<L: Accept>(
    listener: L,
    tls: ServerTls,
) -> ReceiverStream<io::Result<TlsStream<L::Stream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(PENDING_CONNECTIONS);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                res = listener.accept_one() => res,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (TlsAcceptor::from(tls.current()), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// TLS connections accepted on a unix socket, for `Server::serve_with_incoming_shutdown`.
pub fn serve_unix_tls(
    listener: UnixListener,
    tls: impl Into<ServerTls>,
) -> ReceiverStream<io::Result<TlsStream<UnixStream>>> {
    tls_incoming(listener, tls.into())
}

/// TLS connections accepted on a TCP listener, for `Server::serve_with_incoming_shutdown`.
pub fn serve_tcp_tls(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    tls_incoming(listener, tls.into())
}

#[cfg(test)]
mod tests {
    use api::health_check_response::ServingStatus;
    use api::health_client::HealthClient;
    use api::health_server::{Health, HealthServer};
    use api::{HealthCheckRequest, HealthCheckResponse};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::{NodeKey, RootCa};

    struct AlwaysServing;

    #[tonic::async_trait]
    impl Health for AlwaysServing {
        async fn check(
            &self,
            _: Request<HealthCheckRequest>,
        ) -> Result<Response<HealthCheckResponse>, Status> {
            Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            }))
        }
    }

    #[tokio::test]
    async fn grpc_over_tls_on_unix_socket() {
        let root = RootCa::generate().expect("root");
        let key = NodeKey::generate().expect("key");
        let cert = root
            .issue(
                key.csr_pem().expect("csr").as_bytes(),
                "n1",
                api::NodeRole::Manager,
                "c1",
                crate::MIN_NODE_CERT_EXPIRY,
            )
            .expect("cert");
        let cfg = control_server_config(&cert, key.key_pem().as_bytes()).expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(AlwaysServing))
                .serve_with_incoming_shutdown(serve_unix_tls(listener, cfg), async {
                    let _ = stop_rx.await;
                }),
        );

        let mut client = HealthClient::new(control_channel(&sock).expect("channel"));
        let resp = client
            .check(HealthCheckRequest::default())
            .await
            .expect("check over TLS");
        assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);

        // A plaintext client cannot talk to it.
        let sock2 = sock.clone();
        let plain = Endpoint::from_static("http://x")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = sock2.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
            }))
            .await;
        if let Ok(ch) = plain {
            let res = tokio::time::timeout(
                Duration::from_secs(10),
                HealthClient::new(ch).check(HealthCheckRequest::default()),
            )
            .await;
            assert!(!matches!(res, Ok(Ok(_))), "plaintext call succeeded");
        }

        // A missing socket fails at the first call, not before.
        let mut missing = HealthClient::new(
            control_channel(&dir.path().join("nope.sock")).expect("lazy channel"),
        );
        assert!(missing.check(HealthCheckRequest::default()).await.is_err());

        let _ = stop_tx.send(());
        server.await.expect("join").expect("server");
    }

    /// Reports SERVING to a client whose certificate says worker `w1`, NOT_SERVING to one
    /// without a certificate.
    struct PeerCheck;

    #[tonic::async_trait]
    impl Health for PeerCheck {
        async fn check(
            &self,
            req: Request<HealthCheckRequest>,
        ) -> Result<Response<HealthCheckResponse>, Status> {
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

    async fn start_tcp(
        cfg: Arc<rustls::ServerConfig>,
    ) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(PeerCheck))
                .serve_with_incoming_shutdown(serve_tcp_tls(listener, cfg), async {
                    let _ = stop_rx.await;
                }),
        );
        (addr, stop_tx)
    }

    async fn check(addr: &str, cfg: Arc<rustls::ClientConfig>, name: &str) -> Result<i32, Status> {
        let mut client = HealthClient::new(tls_channel(addr, cfg, name).expect("channel"));
        tokio::time::timeout(
            Duration::from_secs(10),
            client.check(HealthCheckRequest::default()),
        )
        .await
        .expect("no hang")
        .map(|r| r.into_inner().status)
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
                ServingStatus::Serving as i32,
                "{name}"
            );
        }
        // The server's certificate does not name this host.
        assert!(check(&addr, worker.clone(), "evil.example").await.is_err());
        // Anonymous: let in, but without an identity.
        let anon = mtls_client_config(root_pem, None).expect("anon cfg");
        assert_eq!(
            check(&addr, anon, "swarm-ca").await.expect("anonymous"),
            ServingStatus::NotServing as i32
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
            ServingStatus::Serving as i32
        );
        let anon = mtls_client_config(root_pem, None).expect("anon cfg");
        assert!(check(&addr, anon, "swarm-manager").await.is_err());
        let _ = stop.send(());

        assert!(mtls_client_config(b"", None).is_err());
        assert!(mtls_server_config(&mcert, &mkey, b"junk", false).is_err());
    }
}
