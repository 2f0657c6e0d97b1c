//! The root CA: created once per cluster (ECDSA P-256, CN `swarm-ca`, 20 years) and the signer of
//! node certificates (spec 5.10). Its key lives in the Cluster object, never on disk.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{CA_CN, CaError, role_ou};

/// The shortest node certificate validity SwarmKit accepts.
pub const MIN_NODE_CERT_EXPIRY: Duration = Duration::from_secs(3600);
/// Root CA validity: 20 years.
const ROOT_VALIDITY: time::Duration = time::Duration::days(20 * 365);
/// The root's not-before is backdated a little against clock skew.
const ROOT_BACKDATE: time::Duration = time::Duration::minutes(5);
/// Node certificates are backdated an hour against clock skew.
const NODE_BACKDATE: time::Duration = time::Duration::hours(1);

/// A root CA certificate, with its key when this node may sign.
#[derive(Clone)]
pub struct RootCa {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_hash", &self.cert_hash())
            .field("key", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A random positive 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut serial = [0u8; 16];
    rand::fill(&mut serial);
    serial[0] &= 0x7f;
    SerialNumber::from_slice(&serial)
}

pub(crate) fn to_str(pem: &[u8]) -> Result<&str, CaError> {
    std::str::from_utf8(pem).map_err(|e| CaError::Parse(e.to_string()))
}

impl RootCa {
    /// Creates a new self-signed root CA.
    pub fn generate() -> Result<RootCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_CN);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - ROOT_BACKDATE;
        params.not_after = now + ROOT_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(RootCa {
            cert_pem: cert.pem().into_bytes(),
            key_pem: Some(key.serialize_pem().into_bytes()),
        })
    }

    /// A root CA from its PEM certificate and, when this node may sign, its PEM key.
    pub fn from_pem(cert_pem: &[u8], key_pem: Option<&[u8]>) -> Result<RootCa, CaError> {
        let cert_text = to_str(cert_pem)?;
        let info = crate::CertInfo::parse(cert_pem)?;
        if !info.is_ca {
            return Err(CaError::Parse("root certificate is not a CA".into()));
        }
        if let Some(key) = key_pem {
            let key = KeyPair::from_pem(to_str(key)?)?;
            // The key must belong to the certificate, or signing would produce garbage.
            Issuer::from_ca_cert_pem(cert_text, &key)?;
            if info.public_key_raw != key.public_key_raw() {
                return Err(CaError::Parse(
                    "root CA key does not match its certificate".into(),
                ));
            }
        }
        Ok(RootCa {
            cert_pem: cert_pem.to_vec(),
            key_pem: key_pem.map(<[u8]>::to_vec),
        })
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The key, PEM (PKCS#8), when known.
    pub fn key_pem(&self) -> Option<&[u8]> {
        self.key_pem.as_deref()
    }

    /// SHA-256 of the certificate PEM bytes: the digest join tokens carry.
    pub fn digest(&self) -> [u8; 32] {
        let d = Sha256::digest(&self.cert_pem);
        let mut out = [0u8; 32];
        out.copy_from_slice(&d[..]);
        out
    }

    /// `sha256:<hex>`, as `Cluster.root_ca.ca_cert_hash`.
    pub fn cert_hash(&self) -> String {
        format!("sha256:{}", hex::encode(self.digest()))
    }

    /// Signs a node certificate for the key in `csr_pem`. Only the CSR's public key is used:
    /// the subject (CN node ID, OU role, O cluster ID), SANs, usages and validity are the CA's.
    pub fn issue(
        &self,
        csr_pem: &[u8],
        node_id: &str,
        role: api::NodeRole,
        cluster_id: &str,
        expiry: Duration,
    ) -> Result<Vec<u8>, CaError> {
        if expiry < MIN_NODE_CERT_EXPIRY {
            return Err(CaError::ExpiryTooShort);
        }
        self.issue_any_expiry(csr_pem, node_id, role, cluster_id, expiry)
    }

    /// [`RootCa::issue`] without the 1 h floor on the validity. Only for swarmd's test option
    /// that shortens node certificates so that renewal can be watched in seconds.
    pub fn issue_any_expiry(
        &self,
        csr_pem: &[u8],
        node_id: &str,
        role: api::NodeRole,
        cluster_id: &str,
        expiry: Duration,
    ) -> Result<Vec<u8>, CaError> {
        let key_pem = self.key_pem.as_deref().ok_or(CaError::NoSigningKey)?;
        let ca_key = KeyPair::from_pem(to_str(key_pem)?)?;
        let issuer = Issuer::from_ca_cert_pem(to_str(&self.cert_pem)?, ca_key)?;
        let csr = CertificateSigningRequestParams::from_pem(to_str(csr_pem)?)
            .map_err(|e| CaError::Csr(e.to_string()))?;

        let ou = role_ou(role);
        let mut sans = vec![ou.to_string(), node_id.to_string()];
        if role == api::NodeRole::Manager {
            sans.push(crate::CA_CN.to_string());
        }
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, ou);
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        let validity = time::Duration::try_from(expiry)
            .map_err(|e| CaError::Parse(format!("certificate expiry: {e}")))?;
        // A test-length certificate is backdated by a tenth of its validity instead of an hour,
        // or its renewal point (50-80% of the validity, from its start) would already be past.
        let backdate = if expiry < MIN_NODE_CERT_EXPIRY {
            validity / 10
        } else {
            NODE_BACKDATE
        };
        params.not_before = now - backdate;
        params.not_after = now + validity;
        let cert = params.signed_by(&csr.public_key, &issuer)?;
        Ok(cert.pem().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{CertInfo, NodeKey};

    fn secs_between(a: SystemTime, b: SystemTime) -> i64 {
        match b.duration_since(a) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn root_is_a_20_year_swarm_ca() {
        let root = RootCa::generate().expect("root");
        let info = CertInfo::parse(root.cert_pem()).expect("parse");
        assert_eq!(info.node_id, "swarm-ca");
        assert!(info.is_ca);
        let years = secs_between(info.not_before, info.not_after) / (365 * 86400);
        assert_eq!(years, 20);
        let back = secs_between(info.not_before, SystemTime::now());
        assert!((295..=400).contains(&back), "backdated {back}s");

        // Usages and constraints, parsed back with x509-parser.
        let (_, p) = x509_parser::pem::parse_x509_pem(root.cert_pem()).expect("pem");
        let cert = p.parse_x509().expect("x509");
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && bc.value.ca);
        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(!ku.value.digital_signature() && !ku.value.key_encipherment());
        assert_eq!(cert.subject().to_string(), "CN=swarm-ca");
        assert_eq!(cert.issuer().to_string(), "CN=swarm-ca");
        let other = RootCa::generate().expect("second root");
        let (_, p2) = x509_parser::pem::parse_x509_pem(other.cert_pem()).expect("pem");
        assert_ne!(
            p2.parse_x509().expect("x509").raw_serial(),
            cert.raw_serial(),
            "serials are random"
        );
        assert_ne!(other.digest(), root.digest());
        assert!(root.cert_hash().starts_with("sha256:"));
        assert_eq!(root.cert_hash().len(), "sha256:".len() + 64);
        assert!(!format!("{root:?}").contains("PRIVATE KEY"));
        let key = String::from_utf8(root.key_pem().expect("key").to_vec()).expect("utf8");
        assert!(key.contains("BEGIN PRIVATE KEY"));
        // Round trip with and without the key.
        RootCa::from_pem(root.cert_pem(), root.key_pem()).expect("with key");
        RootCa::from_pem(root.cert_pem(), None).expect("without key");
        assert!(RootCa::from_pem(root.cert_pem(), other.key_pem()).is_err());
    }

    #[test]
    fn issued_manager_certificate_has_swarmkit_fields() {
        let root = RootCa::generate().expect("root");
        let key = NodeKey::generate().expect("key");
        let csr = key.csr_pem().expect("csr");
        let expiry = Duration::from_secs(2160 * 3600);
        let pem = root
            .issue(
                csr.as_bytes(),
                "node1",
                api::NodeRole::Manager,
                "cluster1",
                expiry,
            )
            .expect("issue");
        let info = CertInfo::parse(&pem).expect("parse");
        assert_eq!(info.node_id, "node1");
        assert_eq!(info.ou, "swarm-manager");
        assert_eq!(info.role, api::NodeRole::Manager);
        assert_eq!(info.cluster_id, "cluster1");
        assert!(!info.is_ca);
        assert_eq!(info.dns_names, vec!["swarm-manager", "node1", "swarm-ca"]);
        let now = SystemTime::now();
        let back = secs_between(info.not_before, now);
        assert!((3590..=3700).contains(&back), "backdated {back}s");
        let ahead = secs_between(now, info.not_after);
        assert!((expiry.as_secs() as i64 - 60..=expiry.as_secs() as i64).contains(&ahead));

        // Usages, parsed back with x509-parser.
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let cert = p.parse_x509().expect("x509");
        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        assert_eq!(cert.issuer().to_string(), "CN=swarm-ca");
        // The node's public key is the CSR's.
        assert_eq!(info.public_key_raw, {
            let kp = rcgen::KeyPair::from_pem(&key.key_pem()).expect("kp");
            kp.public_key_raw().to_vec()
        });
    }

    #[test]
    fn csr_subject_is_ignored_and_worker_has_no_ca_san() {
        let root = RootCa::generate().expect("root");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".into()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "attacker");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "swarm-manager");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = root
            .issue(
                csr.as_bytes(),
                "w1",
                api::NodeRole::Worker,
                "c1",
                MIN_NODE_CERT_EXPIRY,
            )
            .expect("issue");
        let info = CertInfo::parse(&pem).expect("parse");
        assert_eq!(info.node_id, "w1");
        assert_eq!(info.ou, "swarm-worker");
        assert_eq!(info.role, api::NodeRole::Worker);
        assert!(!info.is_ca);
        assert_eq!(info.dns_names, vec!["swarm-worker", "w1"]);
    }

    /// Standard base64 with padding, wrapped for PEM (tests only).
    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("ascii"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    #[test]
    fn tampered_csr_is_refused() {
        let root = RootCa::generate().expect("root");
        let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).expect("pem");
        // Re-encoding the untouched DER still works: the encoder is right.
        let same = pem_encode("CERTIFICATE REQUEST", &pem.contents);
        root.issue(
            same.as_bytes(),
            "n",
            api::NodeRole::Worker,
            "c",
            MIN_NODE_CERT_EXPIRY,
        )
        .expect("untouched CSR");
        // Change one letter of the placeholder subject: the signature no longer matches.
        let mut der = pem.contents.clone();
        let at = der
            .windows(b"swarm-node".len())
            .position(|w| w == b"swarm-node")
            .expect("placeholder CN in the CSR");
        der[at] = b'x';
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        let err = root
            .issue(
                tampered.as_bytes(),
                "n",
                api::NodeRole::Worker,
                "c",
                MIN_NODE_CERT_EXPIRY,
            )
            .expect_err("tampered CSR");
        assert!(matches!(err, CaError::Csr(_)), "{err}");
    }

    #[test]
    fn short_expiry_and_missing_key_are_refused() {
        let root = RootCa::generate().expect("root");
        let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
        let err = root
            .issue(
                csr.as_bytes(),
                "n",
                api::NodeRole::Worker,
                "c",
                Duration::from_secs(600),
            )
            .expect_err("too short");
        assert_eq!(
            err.to_string(),
            "minimum certificate expiry time is: 1h0m0s"
        );
        let public = RootCa::from_pem(root.cert_pem(), None).expect("public");
        assert!(matches!(
            public.issue(
                csr.as_bytes(),
                "n",
                api::NodeRole::Worker,
                "c",
                MIN_NODE_CERT_EXPIRY
            ),
            Err(CaError::NoSigningKey)
        ));
        assert!(
            root.issue(
                b"not a csr",
                "n",
                api::NodeRole::Worker,
                "c",
                MIN_NODE_CERT_EXPIRY
            )
            .is_err()
        );
    }
}
