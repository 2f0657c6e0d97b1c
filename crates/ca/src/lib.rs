//! The cluster's certificate authority and everything TLS: the root CA, node keys and CSRs,
//! issuing node certificates (the CA, never the CSR, decides the subject), join tokens, the
//! key files in the state directory, the TLS configurations of the control socket and the
//! remote API (the control socket's server on OpenSSL, the rest on rustls), a node's live
//! (renewable) TLS identity, the node side of joining and renewal, and the certificate work of
//! root CA rotation (cross-signing, telling which root issued a certificate).
//! No store here: the CA signing server that reads and writes Node objects is a manager
//! subsystem (STYLE.md).

mod acceptor;
mod certinfo;
mod client;
mod error;
mod forward;
mod key;
mod keylock;
mod keystore;
mod root;
mod rotation;
mod security;
#[cfg(any(test, feature = "test-client"))]
pub mod test_client;
mod tls;
mod token;

pub use acceptor::{
    CONNECTION_TIMEOUT, ServerConfig, ServerTls, TlsConnection, TlsPeer, control_server_config,
    mtls_server_config, peer_addr_http, peer_cert_info, peer_cert_info_http, peer_ip,
    serve_tcp_tls, serve_unix_tls, tls_peer_cert_info_http,
};
pub use certinfo::CertInfo;
pub use client::{
    Credential, IssuedCertificate, check_manager_trust, download_root_ca, request_certificate,
};
pub use error::CaError;
pub use forward::{
    FORWARDED_CN_KEY, FORWARDED_KEY, FORWARDED_ORG_KEY, FORWARDED_OU_KEY, ForwardedPeer,
    REDIRECT_KEY, REMOTE_ADDR_KEY, forwarded_peer, is_forwarded, set_forwarded, strip_forwarded,
};
pub use key::NodeKey;
pub use keylock::{ERR_LOCKED, StoredDataKeys, format_unlock_key, parse_unlock_key};
pub use keystore::{KeyStore, NodeTlsMaterial};
pub use root::{MIN_NODE_CERT_EXPIRY, RootCa};
pub use rotation::{MIN_ROOT_EXPIRY, SigningCa, normalize_pem, same_certificates};
pub use security::SecurityConfig;
pub use tls::{
    control_channel, insecure_client_config, mtls_client_config, tls_channel, tls_channel_from,
};
pub use token::{ParsedToken, generate_join_token, tokens_equal};

/// OU of manager certificates.
pub const MANAGER_ROLE: &str = "swarm-manager";
/// OU of worker certificates.
pub const WORKER_ROLE: &str = "swarm-worker";
/// CN of every SwarmKit root CA, and a SAN of manager certificates.
pub const CA_CN: &str = "swarm-ca";

/// The OU a certificate for `role` carries.
pub fn role_ou(role: api::NodeRole) -> &'static str {
    match role {
        api::NodeRole::Manager => MANAGER_ROLE,
        api::NodeRole::Worker => WORKER_ROLE,
    }
}
