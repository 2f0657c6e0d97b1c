//! What a certificate says about its node: CN (node ID), OU (role), O (cluster ID), validity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::*;

use crate::{CaError, MANAGER_ROLE};

/// The fields of a node (or CA) certificate that SwarmKit reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject CN: the node ID (`swarm-ca` for a root).
    pub node_id: String,
    /// Role from the subject OU; worker when the OU is not `swarm-manager`.
    pub role: api::NodeRole,
    /// The raw OU, empty when absent.
    pub ou: String,
    /// Subject O: the cluster ID.
    pub cluster_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether basic constraints say CA.
    pub is_ca: bool,
    /// The subject public key bits.
    pub public_key_raw: Vec<u8>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
}

fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn first<'a>(mut it: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>) -> String {
    it.next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl CertInfo {
    /// Reads the first certificate of a PEM chain.
    pub fn parse(cert_pem: &[u8]) -> Result<CertInfo, CaError> {
        let (_, pem) = parse_x509_pem(cert_pem)
            .map_err(|e| CaError::Parse(format!("certificate PEM: {e}")))?;
        CertInfo::parse_der(&pem.contents)
    }

    /// Reads one DER certificate (as a TLS peer presents it).
    pub fn parse_der(der: &[u8]) -> Result<CertInfo, CaError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CaError::Parse(format!("certificate: {e}")))?;
        let subject = cert.subject();
        let ou = first(subject.iter_organizational_unit());
        let role = if ou == MANAGER_ROLE {
            api::NodeRole::Manager
        } else {
            api::NodeRole::Worker
        };
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        let dns_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(CertInfo {
            node_id: first(subject.iter_common_name()),
            role,
            ou,
            cluster_id: first(subject.iter_organization()),
            not_before: system_time(cert.validity().not_before),
            not_after: system_time(cert.validity().not_after),
            is_ca,
            public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
            dns_names,
        })
    }
}
