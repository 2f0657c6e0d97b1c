//! Control API calls on the cluster object (SwarmKit manager/controlapi/cluster.go): get and list
//! (always redacted: no CA keys, unlock keys or network bootstrap keys leave the manager), and
//! update with spec validation, join-token rotation, manager unlock-key creation/rotation/removal
//! for autolock, expiry of old blacklisted certificates, and the start of a root CA rotation (new
//! signing cert/key or force_rotate; the leader's root rotation subsystem, `crate::rootrotation`,
//! drives it to its end). External CAs are not supported yet and are refused.

use std::time::{Duration, SystemTime};

use store::By;
use tonic::Status;

use super::validate::{duration_error, duration_nanos, invalid_argument};
use super::{
    ControlApi, any_of, filter_contains, filter_contains_prefix, filter_match_labels, labels_of,
    name_of, set_version,
};

/// How long a removed node's certificate stays blacklisted past its expiry.
const EXPIRED_CERT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shown when the cluster has no address pool of its own.
const INBUILT_DEFAULT_ADDRESS_POOL: &str = "10.0.0.0/8";
const INBUILT_SUBNET_SIZE: u32 = 24;
const DEFAULT_VXLAN_PORT: u32 = 4789;
/// ca.MinNodeCertExpiration.
const MIN_NODE_CERT_EXPIRY_NANOS: i128 = 3600 * 1_000_000_000;
/// The only cluster name there is (store.DefaultClusterName).
const DEFAULT_CLUSTER_NAME: &str = "default";

fn not_found(id: &str) -> Status {
    Status::not_found(format!("cluster {id} not found"))
}

/// A duration Go's DurationFromProto accepts ([`duration_error`]).
fn valid_duration(d: &prost_types::Duration) -> bool {
    duration_error(d).is_none()
}

fn validate_cluster_spec(spec: Option<&api::ClusterSpec>) -> Result<&api::ClusterSpec, Status> {
    let Some(spec) = spec else {
        return Err(invalid_argument());
    };
    if let Some(expiry) = spec
        .ca_config
        .as_ref()
        .and_then(|c| c.node_cert_expiry.as_ref())
    {
        if !valid_duration(expiry) {
            return Err(invalid_argument());
        }
        if duration_nanos(expiry) < MIN_NODE_CERT_EXPIRY_NANOS {
            return Err(Status::invalid_argument(
                "minimum certificate expiry time is: 1h0m0s",
            ));
        }
    }
    let policies = spec
        .acceptance_policy
        .as_ref()
        .map(|p| p.policies.as_slice())
        .unwrap_or(&[]);
    for p in policies {
        if let Some(secret) = &p.secret
            && secret.alg.to_lowercase() != "bcrypt"
        {
            return Err(Status::invalid_argument(format!(
                "hashing algorithm is not supported: {}",
                secret.alg
            )));
        }
    }
    if let Some(hb) = spec
        .dispatcher
        .as_ref()
        .and_then(|d| d.heartbeat_period.as_ref())
    {
        if !valid_duration(hb) {
            return Err(invalid_argument());
        }
        if duration_nanos(hb) < 0 {
            return Err(Status::invalid_argument(
                "heartbeat time period cannot be a negative duration",
            ));
        }
    }
    if name_of(&spec.annotations) != DEFAULT_CLUSTER_NAME {
        return Err(Status::invalid_argument(
            "modification of cluster name is not allowed",
        ));
    }
    Ok(spec)
}

/// Drops blacklist entries whose certificate expired more than a week ago.
pub(super) fn expire_blacklisted_certs(cluster: &mut api::Cluster) {
    let cutoff = SystemTime::now() - EXPIRED_CERT_GRACE;
    let cutoff = prost_types::Timestamp::from(cutoff);
    cluster
        .blacklisted_certificates
        .retain(|_, c| match &c.expiry {
            Some(expiry) => (expiry.seconds, expiry.nanos) >= (cutoff.seconds, cutoff.nanos),
            None => true,
        });
}

/// The copy of a cluster object that may leave the manager (cluster.go redactClusters): only
/// whitelisted fields, with every private key removed and display defaults filled in.
pub fn redact_cluster(cluster: &api::Cluster) -> api::Cluster {
    let mut spec = cluster.spec.clone();
    if let Some(ca) = spec.as_mut().and_then(|s| s.ca_config.as_mut()) {
        ca.signing_ca_key.clear();
        // The cert is public, but handing it out makes a get-then-update round trip look like a
        // request to rotate to it.
        ca.signing_ca_cert.clear();
    }
    let mut root_ca = cluster.root_ca.clone();
    if let Some(root) = root_ca.as_mut() {
        root.ca_key.clear();
        if let Some(rotation) = root.root_rotation.as_mut() {
            rotation.ca_key.clear();
        }
    }
    let mut redacted = api::Cluster {
        id: cluster.id.clone(),
        meta: cluster.meta,
        spec,
        root_ca,
        blacklisted_certificates: cluster.blacklisted_certificates.clone(),
        default_address_pool: cluster.default_address_pool.clone(),
        subnet_size: cluster.subnet_size,
        vxlanudp_port: cluster.vxlanudp_port,
        ..Default::default()
    };
    if redacted.default_address_pool.is_empty() {
        redacted.default_address_pool = vec![INBUILT_DEFAULT_ADDRESS_POOL.to_string()];
        redacted.subnet_size = INBUILT_SUBNET_SIZE;
    }
    if redacted.vxlanudp_port == 0 {
        redacted.vxlanudp_port = DEFAULT_VXLAN_PORT;
    }
    redacted
}

/// A new manager unlock key (32 random bytes, as encryption.GenerateSecretKey).
fn generate_secret_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    rand::fill(&mut key[..]);
    key
}

fn not_external_ca() -> Status {
    Status::unimplemented("not supported yet: external CA")
}

/// Applies the CA part of the new spec to the root CA (SwarmKit's ca_rotation.go
/// validateCAConfig): a new `signing_ca_cert` (+ key), or a `force_rotate` other than the last
/// one, starts a root rotation; naming the current root again ends any rotation in progress;
/// naming the rotation's target again leaves it alone. Roots without a key here (external CAs)
/// are not supported yet.
fn apply_ca_config(cluster: &mut api::Cluster) -> Result<(), Status> {
    let ca_config = cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.clone())
        .unwrap_or_default();
    let (cert, key) = (&ca_config.signing_ca_cert, &ca_config.signing_ca_key);
    if !key.is_empty() && cert.is_empty() {
        return Err(Status::invalid_argument(
            "if a signing CA key is provided, the signing CA cert must also be provided",
        ));
    }
    let root = cluster.root_ca.get_or_insert_with(Default::default);
    let force_rotate = ca_config.force_rotate;
    if !cert.is_empty() && ca::same_certificates(cert, &root.ca_cert) {
        if !key.is_empty() {
            ca::RootCa::from_offered_pem(&root.ca_cert, Some(key))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            root.ca_key = key.clone();
        }
        if root.root_rotation.take().is_some() {
            tracing::info!("root CA rotation aborted: the current root CA was requested");
        }
        root.last_forced_rotation = force_rotate;
        return Ok(());
    }
    if cert.is_empty() && root.last_forced_rotation == force_rotate {
        return Ok(());
    }
    if root.ca_key.is_empty() {
        return Err(not_external_ca());
    }
    let next = if cert.is_empty() {
        ca::RootCa::generate().map_err(|e| Status::internal(e.to_string()))?
    } else {
        let key = (!key.is_empty()).then_some(key.as_slice());
        let next = ca::RootCa::from_offered_pem(cert, key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rotating_to_it = root
            .root_rotation
            .as_ref()
            .is_some_and(|r| ca::same_certificates(&r.ca_cert, next.cert_pem()));
        if key.is_none() && !rotating_to_it {
            return Err(not_external_ca());
        }
        let current_key = ca::CertInfo::parse(&root.ca_cert).map(|c| c.public_key_raw);
        let next_key = ca::CertInfo::parse(next.cert_pem()).map(|c| c.public_key_raw);
        if matches!((current_key, next_key), (Ok(a), Ok(b)) if a == b) {
            return Err(Status::invalid_argument(
                "Cannot update to a cert with an identical key",
            ));
        }
        if let Some(rotation) = root.root_rotation.as_mut().filter(|_| rotating_to_it) {
            if let Some(key) = key {
                rotation.ca_key = key.to_vec();
            }
            root.last_forced_rotation = force_rotate;
            return Ok(());
        }
        next
    };
    start_root_rotation(root, &next, force_rotate)
}

/// Starts (or restarts) a rotation to `next`: cross-signed by the current root's key, so nodes
/// that trust only the current root accept what `next` signs.
fn start_root_rotation(
    root: &mut api::RootCa,
    next: &ca::RootCa,
    force_rotate: u64,
) -> Result<(), Status> {
    let cross_signed = ca::RootCa::from_pem(&root.ca_cert, Some(&root.ca_key))
        .and_then(|current| current.cross_sign(next.cert_pem()))
        .map_err(|e| {
            tracing::error!(error = %e, "unable to generate a cross-signed certificate for root rotation");
            Status::internal("unable to generate a cross-signed certificate for root rotation")
        })?;
    let replaced = root.root_rotation.replace(api::RootRotation {
        ca_cert: next.cert_pem().to_vec(),
        ca_key: next.key_pem().map(<[u8]>::to_vec).unwrap_or_default(),
        cross_signed_ca_cert: cross_signed,
    });
    root.last_forced_rotation = force_rotate;
    tracing::info!(
        ca.cert_hash = %next.cert_hash(),
        restarted = replaced.is_some(),
        "root CA rotation started"
    );
    Ok(())
}

/// Keeps the managers' unlock key in line with autolock: created when turned on, rotated on
/// request, dropped when turned off.
fn apply_autolock(cluster: &mut api::Cluster, rotate: bool) {
    let autolock = cluster
        .spec
        .as_ref()
        .and_then(|s| s.encryption_config.as_ref())
        .is_some_and(|e| e.auto_lock_managers);
    cluster
        .unlock_keys
        .retain(|k| autolock || k.subsystem != ca::MANAGER_ROLE);
    if !autolock {
        return;
    }
    match cluster
        .unlock_keys
        .iter_mut()
        .find(|k| k.subsystem == ca::MANAGER_ROLE)
    {
        None => cluster.unlock_keys.push(api::EncryptionKey {
            subsystem: ca::MANAGER_ROLE.to_string(),
            key: generate_secret_key(),
            ..Default::default()
        }),
        Some(key) if rotate => key.key = generate_secret_key(),
        Some(_) => {}
    }
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetClusterRequest,
) -> Result<api::GetClusterResponse, Status> {
    if req.cluster_id.is_empty() {
        return Err(invalid_argument());
    }
    let cluster = ctl
        .store
        .view(|tx| tx.get_cluster(&req.cluster_id))
        .ok_or_else(|| not_found(&req.cluster_id))?;
    Ok(api::GetClusterResponse {
        cluster: Some(redact_cluster(&cluster)),
    })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateClusterRequest,
) -> Result<api::UpdateClusterResponse, Status> {
    let (Some(version), false) = (req.cluster_version, req.cluster_id.is_empty()) else {
        return Err(invalid_argument());
    };
    let spec = validate_cluster_spec(req.spec.as_ref())?.clone();
    let rotation = req.rotation.unwrap_or_default();
    let id = req.cluster_id;
    ctl.write(|tx| {
        let mut cluster = tx.get_cluster(&id).ok_or_else(|| not_found(&id))?;
        set_version(&mut cluster.meta, version);
        cluster.spec = Some(spec);
        expire_blacklisted_certs(&mut cluster);

        if rotation.worker_join_token || rotation.manager_join_token {
            let root = cluster.root_ca.get_or_insert_with(Default::default);
            let root_ca = ca::RootCa::from_pem(&root.ca_cert, None).map_err(|e| {
                tracing::error!(error = %e, "invalid cluster root CA");
                Status::internal("error loading cluster rootCA for update")
            })?;
            let tokens = root.join_tokens.get_or_insert_with(Default::default);
            if rotation.worker_join_token {
                tokens.worker = ca::generate_join_token(&root_ca);
            }
            if rotation.manager_join_token {
                tokens.manager = ca::generate_join_token(&root_ca);
            }
        }
        apply_ca_config(&mut cluster)?;
        apply_autolock(&mut cluster, rotation.manager_unlock_key);
        tx.update_cluster(cluster)?;
        Ok(())
    })
    .await?;
    tracing::info!(cluster.id = %id, "cluster updated");
    let cluster = ctl.store.view(|tx| tx.get_cluster(&id));
    Ok(api::UpdateClusterResponse {
        cluster: cluster.as_ref().map(redact_cluster),
    })
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListClustersRequest,
) -> Result<api::ListClustersResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let clusters = ctl.store.view(|tx| {
        let by = if !f.names.is_empty() {
            any_of(&f.names, By::Name)
        } else if !f.name_prefixes.is_empty() {
            any_of(&f.name_prefixes, By::NamePrefix)
        } else if !f.id_prefixes.is_empty() {
            any_of(&f.id_prefixes, By::IdPrefix)
        } else {
            By::All
        };
        tx.find_clusters(by)
    });
    let clusters = clusters
        .iter()
        .filter(|c| {
            let a = c.spec.as_ref().and_then(|s| s.annotations.clone());
            filter_contains(name_of(&a), &f.names)
                && filter_contains_prefix(name_of(&a), &f.name_prefixes)
                && filter_contains_prefix(&c.id, &f.id_prefixes)
                && filter_match_labels(&labels_of(&a), &f.labels)
        })
        .map(redact_cluster)
        .collect();
    Ok(api::ListClustersResponse { clusters })
}

#[cfg(test)]
mod tests;
