//! The server side of TLS for the control socket and the remote API: the server configurations
//! (the control socket presents the node certificate and asks for none, as SwarmKit serves it;
//! the remote API verifies client certificates against the root CA, optional so that a joining
//! node can reach the CA), a config that can be swapped at run time, the accept loops that turn a
//! listener into a stream of TLS connections for tonic, and what a request's connection says
//! about its peer. Our clients are rustls (`tls.rs`).
//!
//! Two TLS stacks (BUILDING.md "TLS"): the control socket is served by OpenSSL because grpc-go
//! clients, SwarmKit's swarmctl among them, send their dial target as the SNI (there a socket
//! path), and rustls 0.23 answers a server name that is not a DNS name with an
//! `illegal_parameter` alert; OpenSSL accepts any name. The remote API is served by rustls: its
//! clients dial `host:port`, so they send a DNS name (SwarmKit's agents send `swarm-manager` or
//! `swarm-ca`), an IP address (which rustls ignores) or nothing, and a rustls handshake costs the
//! manager a fraction of an OpenSSL 3 one (every joining node makes two). Either way the SNI
//! means nothing to us: the same certificate is presented whatever it says.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{
    AlpnError, Ssl, SslAcceptor, SslAcceptorBuilder, SslMethod, SslMode, SslOptions,
    SslSessionCacheMode, SslVersion, select_next_proto,
};
use openssl::x509::{X509, X509VerifyResult};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio_openssl::SslStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

use crate::tls::{VERSIONS, cert_and_key, provider, root_store};
use crate::{CaError, CertInfo};

/// A TLS handshake that takes longer than this is dropped, so a stalled client cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept to the client's HTTP/2 preface and first SETTINGS frame, TLS included: a
/// connection that has not got that far by then is closed (grpc-go's server ConnectionTimeout,
/// whose default SwarmKit keeps).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections of one listener being set up (TLS handshake, then the HTTP/2 preface) at once. A
/// connection accepted beyond it drops the oldest one still setting up: a flood of half-open
/// handshakes costs at most this many sockets and tasks, and never keeps a newcomer out.
const MAX_SETTING_UP: usize = 512;
/// Set-up connections per client: per source IP on TCP, in all on a unix socket (whose clients are
/// this host's). A connection beyond it is closed at accept. The TCP bound leaves room for many
/// nodes behind one address (the dispatcher benchmark runs 1000 from loopback).
const MAX_CONNECTIONS_PER_CLIENT: usize = 2048;
/// TCP keepalive on accepted sockets, as Go's listeners (and so SwarmKit's) set it: the first
/// probe after this much silence, then one each interval, the peer dropped after
/// [`TCP_KEEPALIVE_PROBES`] unanswered.
pub(crate) const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// Unanswered keepalive probes after which the kernel drops a TCP connection (Go's count).
pub(crate) const TCP_KEEPALIVE_PROBES: u32 = 9;
/// Connections set up but not yet taken by the server; beyond this, set-up connections wait.
const PENDING_CONNECTIONS: usize = 64;
/// The HTTP/2 client preface (RFC 9113 3.4), before the client's first SETTINGS frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The frame header: 24-bit length, type, flags, 31-bit stream ID.
const FRAME_HEADER: usize = 9;
/// The SETTINGS frame type.
const SETTINGS: u8 = 0x4;
/// Largest first SETTINGS payload taken (the default maximum frame size).
const MAX_SETTINGS_LEN: usize = 16_384;
/// The one application protocol offered, in ALPN wire format: `h2` (recent grpc-go clients
/// require it). A client offering others but not `h2` is refused.
const ALPN_H2: &[u8] = b"\x02h2";
/// TLS 1.2 suites of the OpenSSL server: ECDHE with an AEAD cipher, the ones rustls (our
/// clients, the remote API's server) has. The TLS 1.3 suites are OpenSSL's defaults (AES-GCM and
/// ChaCha20-Poly1305, as rustls).
const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
     ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
     ECDHE-RSA-CHACHA20-POLY1305";
/// Key exchange groups of the OpenSSL server, those of rustls with ring.
const GROUPS: &str = "X25519:P-256:P-384";

/// A TLS server configuration, shared by the connections accepted with it (cloning is cheap).
#[derive(Clone)]
pub struct ServerConfig(Engine);

/// The TLS stack that serves a config (see the module's header for why two).
#[derive(Clone)]
enum Engine {
    /// The control socket's: OpenSSL, which accepts any server name.
    OpenSsl(SslAcceptor),
    /// The remote API's: rustls.
    Rustls {
        config: Arc<rustls::ServerConfig>,
        /// The certificate presented, as DER (rustls keeps it behind its resolver).
        #[cfg(test)]
        leaf: Arc<Vec<u8>>,
    },
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self.0 {
            Engine::OpenSsl(_) => "OpenSSL",
            Engine::Rustls { .. } => "rustls",
        };
        f.debug_struct("ServerConfig")
            .field("engine", &engine)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl ServerConfig {
    /// The certificate this config presents, as DER.
    pub(crate) fn certificate_der(&self) -> Option<Vec<u8>> {
        match &self.0 {
            Engine::OpenSsl(a) => a.context().certificate()?.to_der().ok(),
            Engine::Rustls { leaf, .. } => Some(leaf.to_vec()),
        }
    }
}

/// OpenSSL: TLS 1.2 and 1.3, presenting `cert_chain_pem` with `key_pem`, ALPN `h2`, any SNI.
fn server_builder(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<SslAcceptorBuilder, CaError> {
    let (chain, key) = cert_and_key(cert_chain_pem, key_pem)?;
    let mut chain = chain
        .iter()
        .map(|c| X509::from_der(c))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| CaError::Parse("certificate chain: no certificate".into()))?;
    let key = PKey::private_key_from_der(key.secret_der())?;
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list(TLS12_CIPHERS)?;
    b.set_groups_list(GROUPS)?;
    b.set_certificate(&leaf)?;
    for cert in chain {
        b.add_extra_chain_cert(cert)?;
    }
    b.set_private_key(&key)?;
    b.check_private_key()?;
    // No session resumption: every connection makes a full handshake, so its client certificate
    // is verified against the roots of the config current at its accept, and nothing of a
    // session outlives a swapped config (renewal, root rotation).
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.set_num_tickets(0)?;
    b.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
    // An idle connection keeps no TLS read or write buffer (some 16 KiB each otherwise).
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_alpn_select_callback(|_, offered| {
        select_next_proto(ALPN_H2, offered).ok_or(AlpnError::ALERT_FATAL)
    });
    Ok(b)
}

/// Server config presenting `cert_chain_pem` with `key_pem` and asking for no client
/// certificate: the control socket's.
pub fn control_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServerConfig, CaError> {
    Ok(ServerConfig(Engine::OpenSsl(
        server_builder(cert_chain_pem, key_pem)?.build(),
    )))
}

/// Server config for the remote (TCP) API, on rustls: TLS 1.2 and 1.3 with the provider's suites
/// and groups (as our clients), presents `cert_chain_pem`, ALPN `h2`, verifies client
/// certificates against `root_pem` (every certificate in it is a trust anchor; a chain the
/// client sends supplies the intermediates, such as a cross-signed root during a root rotation)
/// and names those roots in its certificate request (Go clients send their certificate only when
/// it chains to one of these names). With `require_client_cert` false a client without a
/// certificate is let in (a joining node asking the CA for its first certificate), but a
/// certificate that does not chain to the roots is refused. The server name must be a DNS name,
/// an IP address or absent (see the module's header).
pub fn mtls_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    root_pem: &[u8],
    require_client_cert: bool,
) -> Result<ServerConfig, CaError> {
    let (chain, key) = cert_and_key(cert_chain_pem, key_pem)?;
    #[cfg(test)]
    let leaf = chain.first().map(|c| c.to_vec()).unwrap_or_default();
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
    // A client offering other protocols but not `h2` is refused (rustls's
    // no_application_protocol alert); one offering none is served.
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption, as on the OpenSSL side: no session cache, no TLS 1.3 tickets
    // (rustls's default ticketer makes none for TLS 1.2).
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(ServerConfig(Engine::Rustls {
        config: Arc::new(cfg),
        #[cfg(test)]
        leaf: Arc::new(leaf),
    }))
}

/// What a request's TLS connection says about the peer: its TCP address (none on a unix socket)
/// and its verified client certificate (none when it sent none). Tonic puts it in the
/// extensions of every request on the connection.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    remote_addr: Option<SocketAddr>,
    cert: Option<CertInfo>,
}

/// A TLS connection accepted by [`serve_unix_tls`] or [`serve_tcp_tls`], for tonic's server:
/// its TLS handshake is done and the client's HTTP/2 preface and first SETTINGS frame are in
/// (read to see them, and given back to the server first).
pub struct TlsConnection<S> {
    stream: TlsStream<S>,
    peer: TlsPeer,
    /// The preface and SETTINGS frame read during set-up, not yet given to the server.
    replay: Vec<u8>,
    replayed: usize,
    /// The connection's place in its client's bound, given back when it closes.
    _slot: Option<ClientSlot>,
}

/// A TLS stream of either stack.
enum TlsStream<S> {
    OpenSsl(SslStream<S>),
    // Boxed: rustls's connection state is several times the size of OpenSSL's handle.
    Rustls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::OpenSsl(s) => Pin::new(s).poll_read(cx, buf),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::OpenSsl(s) => Pin::new(s).poll_write(cx, buf),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::OpenSsl(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TlsStream::OpenSsl(s) => s.is_write_vectored(),
            TlsStream::Rustls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::OpenSsl(s) => Pin::new(s).poll_flush(cx),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::OpenSsl(s) => Pin::new(s).poll_shutdown(cx),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<S> Connected for TlsConnection<S> {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Who called: the original caller of a request another manager forwarded (a
/// [`crate::ForwardedPeer`] the authorization layer accepted), else what the verified client
/// certificate of the request's TLS connection says; `None` without one.
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
    ext.get::<TlsPeer>()?.cert.clone()
}

/// The caller's IP: the forwarded caller's address for a forwarded request, else the TCP peer's.
pub fn peer_ip<T>(req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    if let Some(fwd) = req.extensions().get::<crate::ForwardedPeer>() {
        return fwd
            .remote_addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip());
    }
    peer_addr_http(req.extensions()).map(|a| a.ip())
}

/// The TCP peer address of the HTTP request under a gRPC one, when it came over TCP.
pub fn peer_addr_http(ext: &tonic::codegen::http::Extensions) -> Option<SocketAddr> {
    ext.get::<TlsPeer>()?.remote_addr
}

/// A listener whose connections the TLS accept loop can take.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and, over TCP, the peer's address.
    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> io::Result<(UnixStream, Option<SocketAddr>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<(TcpStream, Option<SocketAddr>)> {
        let (s, peer) = self.accept().await?;
        if let Err(e) = tune_tcp(&s) {
            debug!(%peer, "TCP options: {e}");
        }
        Ok((s, Some(peer)))
    }
}

/// No delay (as Go's sockets) and keepalive probes that find a peer gone without a word (its
/// host down, the network cut) within [`TCP_KEEPALIVE`] x (1 + [`TCP_KEEPALIVE_PROBES`]).
pub(crate) fn tune_tcp(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE)
        .with_retries(TCP_KEEPALIVE_PROBES);
    socket2::SockRef::from(s).set_tcp_keepalive(&keepalive)
}

/// The bounds of an accept loop ([`Limits::DEFAULT`] in production; tests shorten them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The TLS handshake's bound.
    pub handshake: Duration,
    /// From accept to the HTTP/2 preface and first SETTINGS frame.
    pub connection: Duration,
    /// Connections setting up at once.
    pub setting_up: usize,
    /// Connections per client (source IP; a unix socket's clients count as one).
    pub per_client: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        handshake: HANDSHAKE_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
        setting_up: MAX_SETTING_UP,
        per_client: MAX_CONNECTIONS_PER_CLIENT,
    };
}

/// What an accept loop counts: the connections setting up, oldest first, each with the sender
/// whose drop tells its task to give up; the connections of each client.
#[derive(Default)]
struct Tracker {
    next: u64,
    setting_up: BTreeMap<u64, oneshot::Sender<()>>,
    clients: HashMap<Option<IpAddr>, usize>,
}

type SharedTracker = Arc<Mutex<Tracker>>;

fn lock(t: &SharedTracker) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().expect("accept tracker mutex is never poisoned")
}

/// One connection of a client, from accept until it closes.
struct ClientSlot {
    tracker: SharedTracker,
    client: Option<IpAddr>,
}

impl ClientSlot {
    /// A slot for `client`, unless it already holds `max`.
    fn take(tracker: &SharedTracker, client: Option<IpAddr>, max: usize) -> Option<ClientSlot> {
        let mut t = lock(tracker);
        let n = t.clients.entry(client).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            tracker: tracker.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = lock(&self.tracker);
        if let Some(n) = t.clients.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                t.clients.remove(&self.client);
            }
        }
    }
}

/// The server config an accept loop uses: fixed, or replaced at run time (a renewed certificate,
/// a new root CA) through the sending side of a watch channel. Each new connection takes the
/// config current at its accept; live connections keep theirs.
#[derive(Clone, Debug)]
pub struct ServerTls(watch::Receiver<ServerConfig>);

impl ServerTls {
    /// A config that follows `rx`.
    pub fn reloadable(rx: watch::Receiver<ServerConfig>) -> ServerTls {
        ServerTls(rx)
    }

    fn current(&self) -> ServerConfig {
        self.0.borrow().clone()
    }
}

impl From<ServerConfig> for ServerTls {
    fn from(cfg: ServerConfig) -> ServerTls {
        // The sender is dropped: the receiver keeps the last value forever.
        ServerTls(watch::channel(cfg).1)
    }
}

/// The server side of the handshake on `stream` with `cfg`.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    cfg: &ServerConfig,
    stream: S,
    remote_addr: Option<SocketAddr>,
) -> io::Result<TlsConnection<S>> {
    let (stream, cert) = match &cfg.0 {
        Engine::OpenSsl(acceptor) => {
            let mut stream = SslStream::new(Ssl::new(acceptor.context())?, stream)?;
            Pin::new(&mut stream)
                .accept()
                .await
                .map_err(io::Error::other)?;
            let ssl = stream.ssl();
            // The OpenSSL configs ask for no client certificate; should one be taken anyway,
            // it counts only when it verified.
            let cert = match ssl.peer_certificate() {
                Some(_) if ssl.verify_result() != X509VerifyResult::OK => {
                    return Err(io::Error::other(format!(
                        "client certificate: {}",
                        ssl.verify_result()
                    )));
                }
                Some(cert) => CertInfo::parse_der(&cert.to_der()?).ok(),
                None => None,
            };
            (TlsStream::OpenSsl(stream), cert)
        }
        Engine::Rustls { config, .. } => {
            // A client certificate that does not verify ends the handshake: one that is there
            // afterwards is verified.
            let stream = TlsAcceptor::from(config.clone()).accept(stream).await?;
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| CertInfo::parse_der(leaf).ok());
            (TlsStream::Rustls(Box::new(stream)), cert)
        }
    };
    Ok(TlsConnection {
        stream,
        peer: TlsPeer { remote_addr, cert },
        replay: Vec::new(),
        replayed: 0,
        _slot: None,
    })
}

/// Reads the client's HTTP/2 preface and its first frame, which must be SETTINGS; returns the
/// bytes read, for the server.
async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let start = PREFACE.len() + FRAME_HEADER;
    let mut buf = vec![0; start];
    r.read_exact(&mut buf).await?;
    if buf[..PREFACE.len()] != PREFACE[..] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no HTTP/2 client preface",
        ));
    }
    let header = &buf[PREFACE.len()..];
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || len > MAX_SETTINGS_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the HTTP/2 client preface is not followed by SETTINGS",
        ));
    }
    buf.resize(start + len, 0);
    r.read_exact(&mut buf[start..]).await?;
    Ok(buf)
}

/// Sets a connection up: the TLS handshake (within `limits.handshake`), then the client's HTTP/2
/// preface and SETTINGS. The caller bounds the whole by `limits.connection`.
async fn set_up<S: AsyncRead + AsyncWrite + Unpin>(
    cfg: &ServerConfig,
    stream: S,
    remote_addr: Option<SocketAddr>,
    limits: Limits,
) -> io::Result<TlsConnection<S>> {
    let mut conn = tokio::time::timeout(limits.handshake, handshake(cfg, stream, remote_addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    conn.replay = read_preface(&mut conn.stream).await?;
    Ok(conn)
}

/// Runs the accept loop: a connection beyond its client's bound is closed at once; every other
/// one is set up in its own task ([`set_up`], bounded by `limits.connection` from accept, and
/// given up for a newer one when `limits.setting_up` are setting up) and handed over when done.
/// The loop ends when the stream is dropped.
fn tls_incoming<L: Accept>(
    listener: L,
    tls: ServerTls,
    limits: Limits,
) -> ReceiverStream<io::Result<TlsConnection<L::Stream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(PENDING_CONNECTIONS);
    let tracker = SharedTracker::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                res = listener.accept_one() => res,
            };
            let (stream, remote_addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + limits.connection;
            let peer = remote_addr.map_or_else(|| "unix".to_string(), |a| a.to_string());
            let client = remote_addr.map(|a| a.ip());
            let Some(slot) = ClientSlot::take(&tracker, client, limits.per_client) else {
                debug!(%peer, "connection closed: the client has {} already", limits.per_client);
                continue;
            };
            let (id, given_up) = {
                let mut t = lock(&tracker);
                if t.setting_up.len() >= limits.setting_up {
                    // Dropping the sender tells the oldest one's task to give up.
                    t.setting_up.pop_first();
                    debug!(
                        "{} connections setting up: the oldest closed",
                        limits.setting_up
                    );
                }
                let (give_up, given_up) = oneshot::channel();
                let id = t.next;
                t.next += 1;
                t.setting_up.insert(id, give_up);
                (id, given_up)
            };
            let (cfg, tx, tracker) = (tls.current(), tx.clone(), tracker.clone());
            tokio::spawn(async move {
                let res = tokio::select! {
                    _ = given_up => Err("given up for newer connections".to_string()),
                    res = tokio::time::timeout_at(deadline, set_up(&cfg, stream, remote_addr, limits)) => match res {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no HTTP/2 preface within {:?}", limits.connection)),
                    },
                };
                lock(&tracker).setting_up.remove(&id);
                match res {
                    Ok(mut conn) => {
                        conn._slot = Some(slot);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => debug!(%peer, "connection closed while setting up: {e}"),
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
) -> ReceiverStream<io::Result<TlsConnection<UnixStream>>> {
    tls_incoming(listener, tls.into(), Limits::DEFAULT)
}

/// TLS connections accepted on a TCP listener, for `Server::serve_with_incoming_shutdown`.
pub fn serve_tcp_tls(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
) -> ReceiverStream<io::Result<TlsConnection<TcpStream>>> {
    tls_incoming(listener, tls.into(), Limits::DEFAULT)
}

#[cfg(test)]
mod tests;
