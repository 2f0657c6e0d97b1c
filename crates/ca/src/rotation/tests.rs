use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;

use super::*;
use crate::tls::{provider, root_store};
use crate::{MIN_NODE_CERT_EXPIRY, NodeKey};

fn x509(pem: &[u8]) -> (CertificateDer<'static>, Vec<u8>) {
    let der = certificates_der(pem).expect("pem").remove(0);
    let bytes = der.to_vec();
    (der, bytes)
}

fn leaf(signer: &RootCa, id: &str) -> Vec<u8> {
    let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
    signer
        .issue(
            csr.as_bytes(),
            id,
            api::NodeRole::Worker,
            "cluster1",
            MIN_NODE_CERT_EXPIRY,
        )
        .expect("issue")
}

/// Whether webpki accepts `chain_pem` (leaf first) as a client certificate under `root_pem`.
fn verifies(root_pem: &[u8], chain_pem: &[u8]) -> bool {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        root_store(root_pem).expect("roots"),
        provider(),
    )
    .build()
    .expect("verifier");
    let mut chain = certificates_der(chain_pem).expect("chain");
    let end_entity = chain.remove(0);
    verifier
        .verify_client_cert(&end_entity, &chain, UnixTime::now())
        .is_ok()
}

#[test]
fn cross_signed_intermediate_is_the_new_root_signed_by_the_old_key() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate().expect("new root");
    let cross = old.cross_sign(new.cert_pem()).expect("cross-sign");
    let (_, cross_der) = x509(&cross);
    let (_, new_der) = x509(new.cert_pem());
    let (_, old_der) = x509(old.cert_pem());
    let (cross, new, old) = (
        parse_der(&cross_der).expect("cross"),
        parse_der(&new_der).expect("new"),
        parse_der(&old_der).expect("old"),
    );
    assert_eq!(cross.subject().as_raw(), new.subject().as_raw());
    assert_eq!(cross.issuer().as_raw(), old.subject().as_raw());
    assert_eq!(cross.public_key().raw, new.public_key().raw);
    assert_eq!(cross.raw_serial(), new.raw_serial());
    assert_eq!(cross.validity().not_before, new.validity().not_before);
    assert_eq!(cross.validity().not_after, new.validity().not_after);
    let bc = cross.basic_constraints().expect("bc").expect("present");
    assert!(bc.critical && bc.value.ca);
    let ku = cross.key_usage().expect("ku").expect("present");
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    let ski = |c: &X509Certificate<'_>| {
        c.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    };
    assert_eq!(ski(&cross), ski(&new));
    let aki = cross
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert_eq!(aki, ski(&old));
    assert!(cross.verify_signature(Some(old.public_key())).is_ok());
    assert!(cross.verify_signature(Some(new.public_key())).is_err());
}

#[test]
fn new_leaf_verifies_against_old_root_through_the_intermediate() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate().expect("new root");
    let cross = old.cross_sign(new.cert_pem()).expect("cross-sign");
    let new_leaf = leaf(&new, "n1");
    let mut chain = new_leaf.clone();
    chain.extend_from_slice(&cross);

    assert!(
        verifies(old.cert_pem(), &chain),
        "old root, through the intermediate"
    );
    assert!(verifies(new.cert_pem(), &new_leaf), "new root, leaf alone");
    assert!(verifies(new.cert_pem(), &chain), "new root, chain");
    assert!(!verifies(old.cert_pem(), &new_leaf), "old root, leaf alone");
    assert!(verifies(old.cert_pem(), &leaf(&old, "n2")));
    assert!(!verifies(new.cert_pem(), &leaf(&old, "n2")));
}

#[test]
fn has_issued_tells_the_root_by_its_key() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate().expect("new root");
    let cross = old.cross_sign(new.cert_pem()).expect("cross-sign");
    let mut chain = leaf(&new, "n1");
    chain.extend_from_slice(&cross);
    assert!(new.has_issued(&chain));
    assert!(new.has_issued(&leaf(&new, "n2")));
    assert!(!old.has_issued(&chain));
    let old_leaf = leaf(&old, "n3");
    assert!(old.has_issued(&old_leaf));
    assert!(!new.has_issued(&old_leaf));
    // Without its key the root still knows its own certificates.
    let public = RootCa::from_pem(new.cert_pem(), None).expect("public");
    assert!(public.has_issued(&chain));
    assert!(!new.has_issued(b""));
    assert!(!new.has_issued(b"not a certificate"));
}

#[test]
fn only_a_ca_is_cross_signed_and_only_with_a_key() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate().expect("new root");
    let err = old.cross_sign(&leaf(&new, "n1")).expect_err("a leaf");
    assert_eq!(err.to_string(), "certificate not a CA");
    let public = RootCa::from_pem(old.cert_pem(), None).expect("public");
    assert!(matches!(
        public.cross_sign(new.cert_pem()),
        Err(CaError::NoSigningKey)
    ));
    assert!(matches!(
        old.cross_sign(b""),
        Err(CaError::NoRootCertificate)
    ));
}

/// A self-signed CA valid from `from` to `to` days from now.
fn root_valid(from: i64, to: i64) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "other-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

#[track_caller]
fn refused(cert: &[u8], key: Option<&[u8]>, message: &str) {
    let err = RootCa::from_offered_pem(cert, key).expect_err(message);
    assert_eq!(err.to_string(), message);
}

#[test]
fn offered_roots_are_checked_with_swarmkit_messages() {
    let good = RootCa::generate().expect("root");
    let other = RootCa::generate().expect("root");
    let key = good.key_pem().expect("key");
    let offered = RootCa::from_offered_pem(good.cert_pem(), Some(key)).expect("valid");
    assert_eq!(
        offered.cert_pem(),
        good.cert_pem(),
        "rcgen PEM is already normal"
    );
    RootCa::from_offered_pem(good.cert_pem(), None).expect("valid without key");

    refused(b"", None, "no valid root CA certificates found");
    refused(good.cert_pem(), other.key_pem(), "certificate key mismatch");
    assert!(
        RootCa::from_offered_pem(good.cert_pem(), Some(b"junk"))
            .expect_err("junk key")
            .to_string()
            .starts_with("malformed private key: ")
    );
    let mut bundle = good.cert_pem().to_vec();
    bundle.extend_from_slice(other.cert_pem());
    refused(
        &bundle,
        None,
        "the desired CA certificate cannot contain multiple certificates",
    );
    let (soon, soon_key) = root_valid(-1, 300);
    refused(&soon, Some(&soon_key), "CA certificate expires too soon");
    let (expired, _) = root_valid(-10, -1);
    refused(
        &expired,
        None,
        "error while validating Root CA Certificate: x509: certificate has expired or is not yet valid",
    );
    // Same subject as the old root, but signed by another key: not self-signed.
    let cross = good.cross_sign(other.cert_pem()).expect("cross-sign");
    refused(
        &cross,
        None,
        "error while validating Root CA Certificate: x509: certificate signed by unknown authority",
    );
}

#[test]
fn pem_bundles_compare_by_their_certificates() {
    let a = RootCa::generate().expect("root");
    let b = RootCa::generate().expect("root");
    let text = std::str::from_utf8(a.cert_pem()).expect("utf8");
    let crlf = format!("\n\n{}\r\n", text.replace('\n', "\r\n"));
    assert!(same_certificates(a.cert_pem(), crlf.as_bytes()));
    assert_eq!(
        normalize_pem(crlf.as_bytes()).expect("normalize"),
        a.cert_pem()
    );
    assert!(!same_certificates(a.cert_pem(), b.cert_pem()));
    assert!(same_certificates(b"CERT", b"CERT\n"));
    assert!(!same_certificates(b"CERT", a.cert_pem()));
    assert!(!same_certificates(b"", a.cert_pem()));
}

#[test]
fn signing_ca_follows_the_rotation() {
    let old = RootCa::generate().expect("old root");
    let new = RootCa::generate().expect("new root");
    let cross = old.cross_sign(new.cert_pem()).expect("cross-sign");
    let mut root_ca = api::RootCa {
        ca_cert: old.cert_pem().to_vec(),
        ca_key: old.key_pem().expect("key").to_vec(),
        ..Default::default()
    };
    let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
    let issue = |signer: &SigningCa| {
        signer
            .issue(
                csr.as_bytes(),
                "n1",
                api::NodeRole::Manager,
                "cluster1",
                MIN_NODE_CERT_EXPIRY,
            )
            .expect("issue")
    };
    let before = issue(&SigningCa::for_cluster(&root_ca).expect("signer"));
    assert_eq!(certificates_der(&before).expect("pem").len(), 1);
    assert!(old.has_issued(&before));

    root_ca.root_rotation = Some(api::RootRotation {
        ca_cert: new.cert_pem().to_vec(),
        ca_key: new.key_pem().expect("key").to_vec(),
        cross_signed_ca_cert: cross.clone(),
    });
    let signer = SigningCa::for_cluster(&root_ca).expect("signer");
    assert_eq!(signer.root().cert_pem(), new.cert_pem());
    let during = issue(&signer);
    let chain = certificates_der(&during).expect("pem");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], x509(&cross).0);
    assert!(new.has_issued(&during));
    assert!(verifies(old.cert_pem(), &during));

    root_ca
        .root_rotation
        .as_mut()
        .expect("rotation")
        .ca_key
        .clear();
    let keyless = SigningCa::for_cluster(&root_ca).expect("signer");
    assert!(matches!(
        keyless.issue(
            csr.as_bytes(),
            "n1",
            api::NodeRole::Worker,
            "c",
            MIN_NODE_CERT_EXPIRY
        ),
        Err(CaError::NoSigningKey)
    ));
}
