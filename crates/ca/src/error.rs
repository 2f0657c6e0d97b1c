//! Errors of the CA crate; messages keep SwarmKit's wording where users see them.

/// What can go wrong with certificates, keys, tokens and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to build or sign something.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER blob could not be read.
    #[error("invalid certificate or key: {0}")]
    Parse(String),
    /// The CSR's signature does not verify.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// The requested validity is below SwarmKit's minimum.
    #[error("minimum certificate expiry time is: 1h0m0s")]
    ExpiryTooShort,
    /// This root CA has no key, so it cannot sign.
    #[error("the root CA key is not available on this node")]
    NoSigningKey,
    /// A root CA certificate offered for rotation holds no certificate.
    #[error("no valid root CA certificates found")]
    NoRootCertificate,
    /// A root CA certificate offered for rotation does not parse.
    #[error("invalid root certificates: {0}")]
    InvalidRootCertificates(String),
    /// A root CA certificate offered for rotation is not a valid self-signed certificate now.
    #[error("error while validating Root CA Certificate: {0}")]
    InvalidRootCertificate(String),
    /// A root CA key offered for rotation does not parse.
    #[error("malformed private key: {0}")]
    MalformedKey(String),
    /// A root CA key offered for rotation is not the certificate's.
    #[error("certificate key mismatch")]
    KeyMismatch,
    /// A root CA offered for rotation is a bundle of several certificates.
    #[error("the desired CA certificate cannot contain multiple certificates")]
    MultipleRootCertificates,
    /// A root CA offered for rotation expires within a year.
    #[error("CA certificate expires too soon")]
    RootExpiresTooSoon,
    /// Only a CA certificate can be cross-signed.
    #[error("certificate not a CA")]
    NotCa,
    /// A join token that is not `SWMTKN-1-<digest>-<secret>`.
    #[error("invalid join token")]
    InvalidToken,
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// OpenSSL refused a server configuration (certificate, key, roots or settings).
    #[error("tls: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// A file of the key store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A manager's certificate does not chain to this node's root CA.
    #[error(
        "x509: certificate signed by unknown authority (the manager at {0} does not chain to this node's root CA)"
    )]
    UnknownAuthority(String),
    /// The root CA a manager sent is not the one the join token names.
    #[error("remote CA does not match fingerprint. Expected: {0}")]
    FingerprintMismatch(String),
    /// A call to a manager failed; shown as grpc-go prints a status, which is what users of
    /// SwarmKit see (`rpc error: code = InvalidArgument desc = ...`).
    #[error("rpc error: code = {code:?} desc = {desc}", code = .0.code(), desc = .0.message())]
    Rpc(tonic::Status),
    /// The CA answered but did not give this node a usable certificate.
    #[error("certificate issuance failed: {0}")]
    IssuanceFailed(String),
    /// The node key is locked (autolock) and no unlock key, or a wrong one, was given.
    #[error("node is locked, and needs a valid unlock key")]
    Locked,
    /// An unlock key that is not `SWMKEY-1-` and unpadded base64.
    #[error("invalid key string")]
    InvalidUnlockKey,
    /// A gRPC endpoint could not be built.
    #[error("{0}")]
    Transport(String),
}
