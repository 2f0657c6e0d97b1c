//! The node side of certificate issuance (spec 5.10): fetch the root CA from a manager and check
//! it against the join token's digest before anything secret is sent, then send a CSR (with the
//! join token for a first certificate, or over mutual TLS with the current certificate for a
//! renewal) and wait until the CA has signed it.

use std::time::Duration;

use api::ca_client::CaClient;
use api::node_ca_client::NodeCaClient;
use tracing::{debug, warn};

use crate::{CA_CN, CaError, CertInfo, NodeKey, ParsedToken, insecure_client_config};
use crate::{mtls_client_config, tls_channel};

/// Attempts at fetching a root CA whose digest matches the token.
const ROOT_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const ROOT_RETRY: Duration = Duration::from_secs(2);
/// Deadline of each call to a manager.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between certificate status polls.
const POLL_MIN: Duration = Duration::from_secs(1);
const POLL_MAX: Duration = Duration::from_secs(30);
/// How long a node waits in all for its certificate to be signed.
const ISSUE_DEADLINE: Duration = Duration::from_secs(120);

/// A certificate the CA signed for this node, with its new key.
pub struct IssuedCertificate {
    /// The node ID the CA chose (the certificate's CN).
    pub node_id: String,
    /// The certificate chain PEM (leaf first).
    pub cert_pem: Vec<u8>,
    /// The key the certificate is for.
    pub key: NodeKey,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

async fn with_timeout<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CaError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(CaError::Rpc(status)),
        Err(_) => Err(CaError::Rpc(tonic::Status::deadline_exceeded(
            "context deadline exceeded",
        ))),
    }
}

/// Fetches the root CA certificate from the manager at `addr` over TLS without verifying the
/// server (nothing secret is sent), and accepts it only if its SHA-256 is the token's digest.
/// Tries [`ROOT_ATTEMPTS`] times, [`ROOT_RETRY`] apart, as SwarmKit does for a manager that is
/// briefly not answering properly.
pub async fn download_root_ca(addr: &str, token: &ParsedToken) -> Result<Vec<u8>, CaError> {
    let mut last = None;
    for attempt in 1..=ROOT_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(ROOT_RETRY).await;
        }
        let channel = tls_channel(addr, insecure_client_config()?, CA_CN)?;
        let got = with_timeout(
            CaClient::new(channel).get_root_ca_certificate(api::GetRootCaCertificateRequest {}),
        )
        .await;
        let err = match got {
            Ok(resp) if token.matches_pem(&resp.certificate) => return Ok(resp.certificate),
            Ok(_) => CaError::FingerprintMismatch(token.digest_hex()),
            Err(e) => e,
        };
        warn!(
            addr,
            attempt, "failed to retrieve remote root CA certificate: {err}"
        );
        last = Some(err);
    }
    Err(last.expect("at least one attempt"))
}

/// Checks that the manager at `addr` presents a certificate that chains to the roots `cfg`
/// trusts (SwarmKit fails a node's start when it does not: `certificate signed by unknown
/// authority`). A manager that does not answer is not an error here: the node retries later.
pub async fn check_manager_trust(
    addr: &str,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(), CaError> {
    let channel = tls_channel(addr, cfg, crate::MANAGER_ROLE)?;
    let mut client = CaClient::new(channel);
    let call = client.get_root_ca_certificate(api::GetRootCaCertificateRequest {});
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) | Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => {
            let chain = format!("{status:?}");
            if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
                Err(CaError::UnknownAuthority(addr.to_string()))
            } else {
                Ok(())
            }
        }
    }
}

/// How a node proves it may have a certificate.
pub enum Credential<'a> {
    /// A join token (first certificate); the role follows from which token it is.
    Token(&'a str),
    /// The node's current certificate chain and key (renewal for the same node ID).
    Certificate {
        /// Certificate chain PEM.
        cert_pem: &'a [u8],
        /// Key PEM.
        key_pem: &'a [u8],
    },
}

/// Sends a CSR for a new key to the manager at `addr` (verified against `root_pem`, server name
/// `swarm-ca`), then polls until the CA has signed it, and checks that the certificate is for
/// that key and that node.
pub async fn request_certificate(
    addr: &str,
    root_pem: &[u8],
    credential: Credential<'_>,
    availability: api::node_spec::Availability,
) -> Result<IssuedCertificate, CaError> {
    let key = NodeKey::generate()?;
    let csr = key.csr_pem()?.into_bytes();
    let (client_auth, token) = match credential {
        Credential::Token(t) => (None, t.to_string()),
        Credential::Certificate { cert_pem, key_pem } => (Some((cert_pem, key_pem)), String::new()),
    };
    let cfg = mtls_client_config(root_pem, client_auth)?;
    let mut client = NodeCaClient::new(tls_channel(addr, cfg, CA_CN)?);
    // `role` is deprecated on the wire: the CA decides the role (from the token or the node).
    let request = api::IssueNodeCertificateRequest {
        csr: csr.clone(),
        token,
        availability: availability as i32,
        ..Default::default()
    };
    let issued = with_timeout(client.issue_node_certificate(request)).await?;
    let node_id = issued.node_id;
    debug!(node.id = %node_id, "certificate requested, waiting for it to be issued");

    let deadline = tokio::time::Instant::now() + ISSUE_DEADLINE;
    let mut pause = POLL_MIN;
    loop {
        let status = with_timeout(client.node_certificate_status(
            api::NodeCertificateStatusRequest {
                node_id: node_id.clone(),
            },
        ))
        .await;
        match status {
            Ok(resp) => {
                use api::issuance_status::State;
                let state = resp.status.as_ref().map_or(0, |s| s.state);
                let cert = resp.certificate.unwrap_or_default();
                // ROTATE means issued, and then asked to rotate again (a root rotation that
                // started meanwhile): the certificate is still ours to take, as in SwarmKit. A
                // certificate for another CSR is the one before ours: wait for ours.
                if (state == State::Issued as i32 || state == State::Rotate as i32)
                    && cert.csr == csr
                {
                    check_issued(&cert, &node_id, &key)?;
                    return Ok(IssuedCertificate {
                        node_id,
                        cert_pem: cert.certificate,
                        key,
                    });
                }
                if state == State::Failed as i32 {
                    let err = resp.status.map(|s| s.err).unwrap_or_default();
                    return Err(CaError::IssuanceFailed(err));
                }
            }
            Err(CaError::Rpc(s)) if s.code() == tonic::Code::DeadlineExceeded => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CaError::Rpc(tonic::Status::deadline_exceeded(format!(
                "certificate for node {node_id} was not issued within {ISSUE_DEADLINE:?}"
            ))));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// The CA answers for a node ID; a certificate for another key (a CSR that is not ours, say a
/// concurrent renewal) or another node is not taken.
fn check_issued(cert: &api::Certificate, node_id: &str, key: &NodeKey) -> Result<(), CaError> {
    let info = CertInfo::parse(&cert.certificate)?;
    if info.public_key_raw != key.public_key_raw() {
        return Err(CaError::IssuanceFailed(
            "the issued certificate is not for the key this node sent".into(),
        ));
    }
    if info.node_id != node_id {
        return Err(CaError::IssuanceFailed(format!(
            "the issued certificate is for node {}, not {node_id}",
            info.node_id
        )));
    }
    Ok(())
}
