//! A TLS client on OpenSSL for tests only (this crate's and, through the `test-client` feature,
//! the integration tests'): it behaves as grpc-go does towards our servers, sending any string
//! as the server name (a socket path, an IP address), which rustls clients cannot, and verifying
//! nothing. Never for production: our own clients are rustls (`tls.rs`).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use hyper_util::rt::TokioIo;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_openssl::SslStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the client connects.
#[derive(Clone, Debug)]
pub enum Target {
    /// A unix socket (the control socket).
    Unix(PathBuf),
    /// `host:port` over TCP (the remote API).
    Tcp(String),
}

/// The stream under the client: a unix or a TCP socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An OpenSSL client: sends `sni` as the server name (none when `None`), offers `alpn` (ALPN
/// wire format), verifies no server certificate and presents `cert` (certificate PEM, key PEM)
/// when given.
#[derive(Clone, Debug)]
pub struct OpenSslClient {
    /// The server name sent, any string.
    pub sni: Option<String>,
    /// The application protocols offered, in wire format (`b"\x02h2"`).
    pub alpn: &'static [u8],
    /// The client certificate (PEM, the leaf first) and its key (PEM).
    pub cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl OpenSslClient {
    /// A client sending `sni`, offering `h2`, without a certificate.
    pub fn new(sni: &str) -> OpenSslClient {
        OpenSslClient {
            sni: Some(sni.to_string()),
            alpn: b"\x02h2",
            cert: None,
        }
    }

    /// The same client presenting `cert` (certificate chain PEM, key PEM).
    pub fn with_cert(mut self, cert: &(Vec<u8>, Vec<u8>)) -> OpenSslClient {
        self.cert = Some(cert.clone());
        self
    }

    /// Connects to `target` and makes the client side of the handshake.
    pub async fn connect(&self, target: &Target) -> io::Result<SslStream<Box<dyn Io>>> {
        let stream: Box<dyn Io> = match target {
            Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
            Target::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
        };
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(self.alpn)?;
        if let Some((chain, key)) = &self.cert {
            let mut chain = X509::stack_from_pem(chain)?.into_iter();
            let leaf = chain
                .next()
                .ok_or_else(|| io::Error::other("no client certificate"))?;
            b.set_certificate(&leaf)?;
            for cert in chain {
                b.add_extra_chain_cert(cert)?;
            }
            let key = PKey::private_key_from_pem(key)?;
            b.set_private_key(&key)?;
        }
        // SNI is set below, as given: OpenSSL's own choice skips IP addresses.
        let mut ssl = b
            .build()
            .configure()?
            .use_server_name_indication(false)
            .verify_hostname(false)
            .into_ssl("")?;
        if let Some(sni) = &self.sni {
            ssl.set_hostname(sni)?;
        }
        let mut tls = SslStream::new(ssl, stream)?;
        Pin::new(&mut tls)
            .connect()
            .await
            .map_err(io::Error::other)?;
        Ok(tls)
    }

    /// A lazy gRPC channel whose connections this client makes to `target`.
    pub fn channel(&self, target: &Target) -> Channel {
        let (client, target) = (self.clone(), target.clone());
        Endpoint::from_static("http://x").connect_with_connector_lazy(tower::service_fn(
            move |_: Uri| {
                let (client, target) = (client.clone(), target.clone());
                async move { Ok::<_, io::Error>(TokioIo::new(client.connect(&target).await?)) }
            },
        ))
    }
}
