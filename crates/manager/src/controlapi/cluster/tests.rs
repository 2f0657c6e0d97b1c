//! The CA part of UpdateCluster: when a root rotation starts, restarts, is left alone or ends,
//! and SwarmKit's refusals.

use tonic::Code;

use super::*;

/// A cluster whose root CA is `root` (with its key).
fn cluster_with(root: &ca::RootCa) -> api::Cluster {
    api::Cluster {
        id: "cluster1".into(),
        spec: Some(api::ClusterSpec::default()),
        root_ca: Some(api::RootCa {
            ca_cert: root.cert_pem().to_vec(),
            ca_key: root.key_pem().expect("key").to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Applies `ca_config` to `cluster` and returns the resulting root CA.
fn apply(cluster: &mut api::Cluster, ca_config: api::CaConfig) -> Result<api::RootCa, Status> {
    cluster.spec.get_or_insert_with(Default::default).ca_config = Some(ca_config);
    apply_ca_config(cluster)?;
    Ok(cluster.root_ca.clone().expect("root ca"))
}

fn force(n: u64) -> api::CaConfig {
    api::CaConfig {
        force_rotate: n,
        ..Default::default()
    }
}

fn signing(root: &ca::RootCa, with_key: bool) -> api::CaConfig {
    api::CaConfig {
        signing_ca_cert: root.cert_pem().to_vec(),
        signing_ca_key: match with_key {
            true => root.key_pem().expect("key").to_vec(),
            false => Vec::new(),
        },
        ..Default::default()
    }
}

#[track_caller]
fn refused(result: Result<api::RootCa, Status>, code: Code, message: &str) {
    let err = result.expect_err(message);
    assert_eq!((err.code(), err.message()), (code, message));
}

#[test]
fn force_rotate_starts_a_rotation_to_a_fresh_cross_signed_root() {
    let current = ca::RootCa::generate().expect("root");
    let mut cluster = cluster_with(&current);
    let unchanged = apply(&mut cluster, force(0)).expect("no change");
    assert!(unchanged.root_rotation.is_none());

    let root = apply(&mut cluster, force(1)).expect("rotate");
    assert_eq!(root.last_forced_rotation, 1);
    assert_eq!(
        root.ca_cert,
        current.cert_pem(),
        "the root stays until the end"
    );
    let rotation = root.root_rotation.clone().expect("rotation");
    let next = ca::RootCa::from_pem(&rotation.ca_cert, Some(&rotation.ca_key)).expect("new root");
    assert_ne!(next.cert_hash(), current.cert_hash());
    assert!(current.has_issued(&rotation.cross_signed_ca_cert));
    let cross = ca::CertInfo::parse(&rotation.cross_signed_ca_cert).expect("cross-signed");
    let new = ca::CertInfo::parse(&rotation.ca_cert).expect("new");
    assert_eq!(cross.public_key_raw, new.public_key_raw);
    assert!(cross.is_ca);

    // The same request again changes nothing; a higher one starts over with another root.
    let again = apply(&mut cluster, force(1)).expect("same");
    assert_eq!(again.root_rotation.as_ref(), Some(&rotation));
    let restarted = apply(&mut cluster, force(2)).expect("restart");
    let second = restarted.root_rotation.expect("rotation");
    assert_ne!(second.ca_cert, rotation.ca_cert);
    assert_eq!(restarted.last_forced_rotation, 2);
}

#[test]
fn a_given_signing_root_is_rotated_to_once() {
    let current = ca::RootCa::generate().expect("root");
    let next = ca::RootCa::generate().expect("root");
    let mut cluster = cluster_with(&current);
    let root = apply(&mut cluster, signing(&next, true)).expect("rotate");
    let rotation = root.root_rotation.clone().expect("rotation");
    assert_eq!(rotation.ca_cert, next.cert_pem());
    assert_eq!(rotation.ca_key, next.key_pem().expect("key"));

    // Asking for the rotation's target again, with or without its key, leaves it alone.
    let same = apply(&mut cluster, signing(&next, true)).expect("same target");
    assert_eq!(same.root_rotation.as_ref(), Some(&rotation));
    let keyless = apply(&mut cluster, signing(&next, false)).expect("same target, no key");
    assert_eq!(keyless.root_rotation.as_ref(), Some(&rotation));

    // Another root replaces the rotation; naming the current root ends it.
    let other = ca::RootCa::generate().expect("root");
    let replaced = apply(&mut cluster, signing(&other, true)).expect("replace");
    assert_eq!(
        replaced.root_rotation.map(|r| r.ca_cert),
        Some(other.cert_pem().to_vec())
    );
    let aborted = apply(&mut cluster, signing(&current, false)).expect("abort");
    assert!(aborted.root_rotation.is_none());
    assert_eq!(aborted.ca_key, current.key_pem().expect("key"));
}

#[test]
fn bad_signing_roots_are_refused_with_swarmkit_messages() {
    let current = ca::RootCa::generate().expect("root");
    let next = ca::RootCa::generate().expect("root");
    let mut cluster = cluster_with(&current);
    refused(
        apply(
            &mut cluster,
            api::CaConfig {
                signing_ca_key: next.key_pem().expect("key").to_vec(),
                ..Default::default()
            },
        ),
        Code::InvalidArgument,
        "if a signing CA key is provided, the signing CA cert must also be provided",
    );
    let mut mismatched = signing(&next, true);
    mismatched.signing_ca_key = current.key_pem().expect("key").to_vec();
    refused(
        apply(&mut cluster, mismatched),
        Code::InvalidArgument,
        "certificate key mismatch",
    );
    refused(
        apply(
            &mut cluster,
            api::CaConfig {
                signing_ca_cert: b"nope".to_vec(),
                ..Default::default()
            },
        ),
        Code::InvalidArgument,
        "no valid root CA certificates found",
    );
    refused(
        apply(&mut cluster, signing(&next, false)),
        Code::Unimplemented,
        "not supported yet: external CA",
    );

    // A new certificate for the current key cannot be rotated to.
    let key = rcgen::KeyPair::from_pem(
        std::str::from_utf8(current.key_pem().expect("key")).expect("utf8"),
    )
    .expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swarm-ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let reissued = params.self_signed(&key).expect("reissued");
    refused(
        apply(
            &mut cluster,
            api::CaConfig {
                signing_ca_cert: reissued.pem().into_bytes(),
                signing_ca_key: current.key_pem().expect("key").to_vec(),
                ..Default::default()
            },
        ),
        Code::InvalidArgument,
        "Cannot update to a cert with an identical key",
    );
    assert!(cluster.root_ca.and_then(|r| r.root_rotation).is_none());
}

#[test]
fn a_root_without_key_here_cannot_rotate() {
    let current = ca::RootCa::generate().expect("root");
    let mut cluster = cluster_with(&current);
    cluster.root_ca.as_mut().expect("root ca").ca_key.clear();
    apply(&mut cluster, force(0)).expect("no change");
    refused(
        apply(&mut cluster, force(1)),
        Code::Unimplemented,
        "not supported yet: external CA",
    );
    // Handing over the current root's key is no rotation.
    let root = apply(&mut cluster, signing(&current, true)).expect("key added");
    assert_eq!(root.ca_key, current.key_pem().expect("key"));
}

#[test]
fn rotation_keys_are_redacted() {
    let current = ca::RootCa::generate().expect("root");
    let mut cluster = cluster_with(&current);
    apply(&mut cluster, force(1)).expect("rotate");
    let redacted = redact_cluster(&cluster);
    let root = redacted.root_ca.expect("root ca");
    assert!(root.ca_key.is_empty());
    let rotation = root.root_rotation.expect("rotation shown");
    assert!(rotation.ca_key.is_empty());
    assert!(!rotation.ca_cert.is_empty() && !rotation.cross_signed_ca_cert.is_empty());
}

/// Found by tests/control_fuzz.rs: `i32::MIN` nanoseconds overflowed the validity check
/// (a panic in debug builds) instead of being refused as an invalid duration.
#[test]
fn durations_with_the_lowest_nanos_are_refused() {
    let min_nanos = |seconds| {
        Some(prost_types::Duration {
            seconds,
            nanos: i32::MIN,
        })
    };
    let mut spec = api::ClusterSpec {
        annotations: Some(api::Annotations {
            name: "default".into(),
            ..Default::default()
        }),
        ca_config: Some(api::CaConfig {
            node_cert_expiry: min_nanos(7_776_000),
            ..Default::default()
        }),
        ..Default::default()
    };
    let refused = |spec: &api::ClusterSpec| {
        let e = validate_cluster_spec(Some(spec)).expect_err("refused");
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "invalid argument")
        );
    };
    refused(&spec);
    spec.ca_config = None;
    spec.dispatcher = Some(api::DispatcherConfig {
        heartbeat_period: min_nanos(-5),
    });
    refused(&spec);
}
