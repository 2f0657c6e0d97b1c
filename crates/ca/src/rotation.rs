//! The certificate side of root CA rotation (spec 5.10): cross-signing the next root with the
//! current one, so that a node which trusts only the current root accepts what the next root signs
//! (leaf + cross-signed intermediate); telling whether a node certificate comes from a root; the
//! checks a root offered through UpdateCluster must pass; and [`SigningCa`], which picks the key
//! that signs node certificates while a rotation is in progress. When to rotate, and which nodes
//! still hold old certificates, is decided by the manager from the Cluster and Node objects.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::root::to_str;
use crate::{CaError, RootCa};

/// A root offered for rotation must stay valid at least this long (SwarmKit: one year).
pub const MIN_ROOT_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The DER certificates of a PEM bundle, in order; blocks of other types are skipped.
fn certificates_der(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::InvalidRootCertificates(e.to_string()))
}

fn parse_der<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CaError::InvalidRootCertificates(e.to_string()))
}

/// The certificates of `pem` re-encoded the one way (64 columns, LF), so that the same bundle
/// always has the same bytes, and so the same digest in join tokens.
pub fn normalize_pem(pem: &[u8]) -> Result<Vec<u8>, CaError> {
    let blocks: Vec<pem::Pem> = certificates_der(pem)?
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.to_vec()))
        .collect();
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    Ok(pem::encode_many_config(&blocks, config).into_bytes())
}

/// Whether two PEM bundles hold the same certificates, however they are wrapped; blobs that are
/// not PEM at all are compared as text.
pub fn same_certificates(a: &[u8], b: &[u8]) -> bool {
    match (certificates_der(a), certificates_der(b)) {
        (Ok(a), Ok(b)) if !a.is_empty() || !b.is_empty() => a == b,
        _ => a.trim_ascii() == b.trim_ascii(),
    }
}

/// The subject of `name` as rcgen writes it, string types kept, so a certificate with this
/// subject chains to the original.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, CaError> {
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let unreadable = || CaError::Parse(format!("certificate subject {name}"));
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unreadable)?.collect();
        let text = attr.as_str().map_err(|_| unreadable())?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(text.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into()?),
            _ => DnValue::Utf8String(text.to_string()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

fn key_usages(cert: &X509Certificate<'_>) -> Vec<KeyUsagePurpose> {
    let Ok(Some(ku)) = cert.key_usage() else {
        return Vec::new();
    };
    let ku = ku.value;
    [
        (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
        (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
        (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
        (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
        (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
        (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
        (ku.crl_sign(), KeyUsagePurpose::CrlSign),
        (ku.encipher_only(), KeyUsagePurpose::EncipherOnly),
        (ku.decipher_only(), KeyUsagePurpose::DecipherOnly),
    ]
    .into_iter()
    .filter_map(|(set, usage)| set.then_some(usage))
    .collect()
}

/// The fields of CA certificate `cert` that its cross-signed copy keeps: subject, serial,
/// validity, CA constraints, key usages and subject key identifier (as SwarmKit's
/// CrossSignCACertificate, which re-signs the parsed certificate as its own template).
fn cross_sign_params(cert: &X509Certificate<'_>) -> Result<CertificateParams, CaError> {
    let constraints = cert
        .basic_constraints()
        .ok()
        .flatten()
        .filter(|bc| bc.value.ca)
        .ok_or(CaError::NotCa)?;
    let mut params = CertificateParams::default();
    params.is_ca = match constraints.value.path_len_constraint {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(
            u8::try_from(n).unwrap_or(u8::MAX),
        )),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.distinguished_name = distinguished_name(cert.subject())?;
    params.serial_number = Some(SerialNumber::from_slice(cert.raw_serial()));
    params.not_before = cert.validity().not_before.to_datetime();
    params.not_after = cert.validity().not_after.to_datetime();
    params.key_usages = key_usages(cert);
    if let Some(ski) = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
    {
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    }
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl RootCa {
    /// An intermediate CA certificate with the subject, public key, serial and validity of the
    /// CA certificate `other_ca_pem`, signed by this root's key: appended to a leaf that
    /// `other_ca_pem`'s key signed, it lets nodes that trust only this root verify the leaf.
    pub fn cross_sign(&self, other_ca_pem: &[u8]) -> Result<Vec<u8>, CaError> {
        let key_pem = self.key_pem.as_deref().ok_or(CaError::NoSigningKey)?;
        let key = KeyPair::from_pem(to_str(key_pem)?)?;
        let issuer = Issuer::from_ca_cert_pem(to_str(&self.cert_pem)?, key)?;
        let der = certificates_der(other_ca_pem)?
            .into_iter()
            .next()
            .ok_or(CaError::NoRootCertificate)?;
        let other = parse_der(&der)?;
        let params = cross_sign_params(&other)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(other.public_key().raw)?;
        Ok(params.signed_by(&public_key, &issuer)?.pem().into_bytes())
    }

    /// Whether this root's key signed the first certificate of `cert_pem` (a node's leaf, alone
    /// or followed by its chain) under this root's subject. A leaf signed by a rotation's new
    /// root counts whether it travels with the cross-signed intermediate or not: both carry the
    /// new root's subject and key.
    pub fn has_issued(&self, cert_pem: &[u8]) -> bool {
        let first = |pem: &[u8]| certificates_der(pem).ok()?.into_iter().next();
        let (Some(root_der), Some(leaf_der)) = (first(&self.cert_pem), first(cert_pem)) else {
            return false;
        };
        let (Ok(root), Ok(leaf)) = (parse_der(&root_der), parse_der(&leaf_der)) else {
            return false;
        };
        leaf.issuer().as_raw() == root.subject().as_raw()
            && leaf.verify_signature(Some(root.public_key())).is_ok()
    }

    /// A root offered as the cluster's next one (UpdateCluster `signing_ca_cert`/`signing_ca_key`),
    /// checked as SwarmKit does, with its messages: each certificate parses, is valid now and is
    /// self-signed; the key, when given, parses and is the first certificate's; there is exactly
    /// one certificate; it stays valid for at least [`MIN_ROOT_EXPIRY`]. The certificate is
    /// normalized ([`normalize_pem`]).
    pub fn from_offered_pem(cert_pem: &[u8], key_pem: Option<&[u8]>) -> Result<RootCa, CaError> {
        let ders = certificates_der(cert_pem)?;
        let mut parsed = Vec::with_capacity(ders.len());
        for der in &ders {
            let cert = parse_der(der)?;
            if !cert.validity().is_valid() {
                return Err(CaError::InvalidRootCertificate(
                    "x509: certificate has expired or is not yet valid".into(),
                ));
            }
            if cert.issuer().as_raw() != cert.subject().as_raw()
                || cert.verify_signature(None).is_err()
            {
                return Err(CaError::InvalidRootCertificate(
                    "x509: certificate signed by unknown authority".into(),
                ));
            }
            parsed.push(cert);
        }
        let Some(first) = parsed.first() else {
            return Err(CaError::NoRootCertificate);
        };
        if let Some(key) = key_pem {
            let key = std::str::from_utf8(key)
                .map_err(|e| e.to_string())
                .and_then(|k| KeyPair::from_pem(k).map_err(|e| e.to_string()))
                .map_err(CaError::MalformedKey)?;
            if first.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(CaError::KeyMismatch);
            }
        }
        if parsed.len() != 1 {
            return Err(CaError::MultipleRootCertificates);
        }
        let not_after = first.validity().not_after.timestamp();
        let deadline = SystemTime::now() + MIN_ROOT_EXPIRY;
        let deadline = deadline
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if not_after < deadline {
            return Err(CaError::RootExpiresTooSoon);
        }
        Ok(RootCa {
            cert_pem: normalize_pem(cert_pem)?,
            key_pem: key_pem.map(<[u8]>::to_vec),
        })
    }
}

/// What signs node certificates for a cluster's `root_ca`: the rotation's new root while a
/// rotation is in progress, with the cross-signed intermediate appended to every leaf so that
/// nodes still trusting only the old root accept it; the root itself otherwise.
#[derive(Clone, Debug)]
pub struct SigningCa {
    root: RootCa,
    intermediates: Vec<u8>,
    any_expiry: bool,
}

impl SigningCa {
    /// The signer for the Cluster object's `root_ca` (`root_rotation` first). An empty key field
    /// means no key: [`SigningCa::issue`] then fails with [`CaError::NoSigningKey`].
    pub fn for_cluster(root_ca: &api::RootCa) -> Result<SigningCa, CaError> {
        let key = |k: &[u8]| (!k.is_empty()).then_some(k.to_vec());
        let (cert, key, intermediates) = match &root_ca.root_rotation {
            Some(r) => (&r.ca_cert, key(&r.ca_key), r.cross_signed_ca_cert.clone()),
            None => (&root_ca.ca_cert, key(&root_ca.ca_key), Vec::new()),
        };
        Ok(SigningCa {
            root: RootCa::from_pem(cert, key.as_deref())?,
            intermediates,
            any_expiry: false,
        })
    }

    /// Lets [`SigningCa::issue`] sign validities below the 1 h minimum (as
    /// [`RootCa::issue_any_expiry`]): swarmd's test option only.
    pub fn allow_any_expiry(mut self) -> SigningCa {
        self.any_expiry = true;
        self
    }

    /// The root whose key signs.
    pub fn root(&self) -> &RootCa {
        &self.root
    }

    /// A node certificate chain, PEM: the leaf [`RootCa::issue`] makes, then the intermediates.
    /// This is what goes into `node.certificate.certificate`.
    pub fn issue(
        &self,
        csr_pem: &[u8],
        node_id: &str,
        role: api::NodeRole,
        cluster_id: &str,
        expiry: Duration,
    ) -> Result<Vec<u8>, CaError> {
        let mut chain = if self.any_expiry {
            self.root
                .issue_any_expiry(csr_pem, node_id, role, cluster_id, expiry)?
        } else {
            self.root
                .issue(csr_pem, node_id, role, cluster_id, expiry)?
        };
        if !self.intermediates.is_empty() && !chain.ends_with(b"\n") {
            chain.push(b'\n');
        }
        chain.extend_from_slice(&self.intermediates);
        Ok(chain)
    }
}

#[cfg(test)]
mod tests;
