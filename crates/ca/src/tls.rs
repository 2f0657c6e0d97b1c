//! The client side of TLS, on rustls: the control socket's client as SwarmKit's swarmctl dials
//! it (no client certificate, no server verification: it trusts the socket's file mode instead,
//! but still checks the handshake signatures), the mutual TLS client of the remote (TCP) API that
//! verifies the server against the root CA, and the gRPC channels over them. The servers are in
//! `acceptor.rs` (OpenSSL for the control socket, rustls for the remote API).

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{CaError, MANAGER_ROLE};

/// HTTP/2 pings on a connection with calls in flight, so a call to a manager that stopped
/// answering (paused, or gone where TCP does not tell) fails instead of hanging: one after this
/// much silence. Not shorter: grpc-go servers (SwarmKit's) close a connection pinged more often
/// than every 5 minutes while they send nothing (their keepalive enforcement's default).
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(300);
/// How long a ping may go unanswered before the connection is closed (grpc-go's default).
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The endpoint every channel of ours is made from: a dial bounded by 10 s, HTTP/2 keepalive
/// while calls are in flight.
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://swarm-manager")
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(HTTP2_KEEPALIVE)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false)
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2, for our clients and the remote API's server.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

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
    Ok(
        endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
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
    for cert in root_certs(root_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The certificates of `root_pem`, at least one.
fn root_certs(root_pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(root_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse(format!("root certificate: {e}")))?;
    if certs.is_empty() {
        return Err(CaError::Parse("no root certificate".into()));
    }
    Ok(certs)
}

pub(crate) fn cert_and_key(
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
    tls_channel_from(addr, cfg, server_name, None)
}

/// [`tls_channel`] whose connections leave from `local` (any port), for a client that must not
/// share its source address with others: a server counts connections per client address, so
/// thousands of simulated nodes on one host each take an address of their own (127.x.y.z).
pub fn tls_channel_from(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
    local: Option<IpAddr>,
) -> Result<Channel, CaError> {
    let connector = TlsConnector::from(cfg);
    let addr = addr.to_string();
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| CaError::Transport(e.to_string()))?;
    Ok(
        endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, addr, server_name) =
                (connector.clone(), addr.clone(), server_name.clone());
            async move {
                let stream = match local {
                    None => TcpStream::connect(&addr).await?,
                    Some(local) => connect_from(local, &addr).await?,
                };
                crate::acceptor::tune_tcp(&stream)?;
                let tls = connector.connect(server_name, stream).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// A TCP connection to the first address `addr` resolves to of `local`'s family, bound to `local`.
async fn connect_from(local: IpAddr, addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("{addr} has no address of the family of {local}"),
    );
    for remote in tokio::net::lookup_host(addr).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(remote).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}
