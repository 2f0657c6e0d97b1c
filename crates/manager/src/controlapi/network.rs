//! Control API calls on networks (SwarmKit manager/controlapi/network.go at the reference commit):
//! spec validation (names, built-in drivers only since swarmd has no plugin getter, IPAM subnets,
//! ranges and gateways, the ingress rules), create, get, list and remove with the predefined,
//! in-use and ingress refusals. Allocation (driver state, IPAM pools, VXLAN IDs) is the
//! allocator's job; unlike SwarmKit, which accepts a network it will never allocate (an
//! overlapping subnet, a gateway on a reserved address, an exhausted default pool) and only logs
//! the allocator's error, create refuses it, asking the allocator's IPAM about the stored networks
//! (`allocator::ipam::check_network`).

use std::net::IpAddr;

use allocator::ipam::{IpamError, PoolConfig, check_network};
use api::TaskState;
use store::By;
use tonic::Status;

use super::service::ingress_network_needed;
use super::validate::{invalid_argument, validate_annotations};
use super::{
    ControlApi, any_of, filter_contains, filter_contains_prefix, filter_match_labels, labels_of,
    name_of,
};

/// Label marking the networks the manager creates itself (bridge, host).
pub(super) const PREDEFINED_LABEL: &str = "com.docker.swarm.predefined";

/// Network drivers the manager knows without a plugin (cnmallocator's initializers on Linux).
const BUILT_IN_DRIVERS: [&str; 5] = ["overlay", "macvlan", "bridge", "ipvlan", "host"];

/// The IPAM driver that needs no plugin.
const DEFAULT_IPAM: &str = "default";

fn not_found(id: &str) -> Status {
    Status::not_found(format!("network {id} not found"))
}

fn annotations(n: &api::Network) -> Option<api::Annotations> {
    n.spec.as_ref().and_then(|s| s.annotations.clone())
}

/// Whether `n` is the ingress (routing mesh) network, including legacy ones marked only by name
/// and the internal label.
pub(super) fn is_ingress_network(n: &api::Network) -> bool {
    let Some(spec) = &n.spec else { return false };
    if spec.ingress {
        return true;
    }
    let a = annotations(n);
    labels_of(&a).contains_key("com.docker.swarm.internal") && name_of(&a) == "ingress"
}

/// Checks a driver name: built-in ones pass; anything else would need a plugin, which swarmd
/// does not have.
fn validate_driver(
    driver: Option<&api::Driver>,
    built_in: impl Fn(&str) -> bool,
) -> Result<(), Status> {
    let Some(driver) = driver else { return Ok(()) };
    if driver.name.is_empty() {
        return Err(Status::invalid_argument(
            "driver name: if driver is specified name is required",
        ));
    }
    if built_in(&driver.name.to_lowercase()) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "plugin {} not supported",
        driver.name
    )))
}

/// Parses `addr/prefix` as Go's net.ParseCIDR: the address as written and the prefix length.
fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, prefix) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u32 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Whether `ip` lies in the subnet `net/prefix` (IPv4-mapped IPv6 addresses count as IPv4).
fn subnet_contains(net: IpAddr, prefix: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), ip) => {
            let ip = match ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => v4,
                    None => return false,
                },
            };
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(n) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(n) & mask == u128::from(ip) & mask
        }
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
    }
}

fn validate_ipam_config(c: &api::IpamConfig) -> Result<(), Status> {
    let Some((net, prefix)) = parse_cidr(&c.subnet) else {
        return Err(Status::invalid_argument(format!(
            "ipam configuration: invalid subnet {}",
            c.subnet
        )));
    };
    if !c.range.is_empty() {
        let Some((ip, _)) = parse_cidr(&c.range) else {
            return Err(Status::invalid_argument(format!(
                "ipam configuration: invalid range {}",
                c.range
            )));
        };
        if !subnet_contains(net, prefix, ip) {
            return Err(Status::invalid_argument(format!(
                "ipam configuration: subnet {} does not contain range {}",
                c.subnet, c.range
            )));
        }
    }
    if !c.gateway.is_empty() {
        let Ok(ip) = c.gateway.parse::<IpAddr>() else {
            return Err(Status::invalid_argument(format!(
                "ipam configuration: invalid gateway {}",
                c.gateway
            )));
        };
        if !subnet_contains(net, prefix, ip) {
            return Err(Status::invalid_argument(format!(
                "ipam configuration: subnet {} does not contain gateway {}",
                c.subnet, c.gateway
            )));
        }
    }
    Ok(())
}

/// Validates a network spec (network.go validateNetworkSpec) and returns it.
pub(super) fn validate_network_spec(
    spec: Option<&api::NetworkSpec>,
) -> Result<&api::NetworkSpec, Status> {
    let Some(spec) = spec else {
        return Err(invalid_argument());
    };
    if spec.ingress
        && spec
            .driver_config
            .as_ref()
            .is_some_and(|d| d.name != "overlay")
    {
        return Err(Status::unimplemented(
            "only overlay driver is currently supported for ingress network",
        ));
    }
    if spec.attachable && spec.ingress {
        return Err(Status::invalid_argument(
            "ingress network cannot be attachable",
        ));
    }
    validate_annotations(spec.annotations.as_ref())?;
    if labels_of(&spec.annotations).contains_key(PREDEFINED_LABEL) {
        return Err(Status::permission_denied(format!(
            "label {PREDEFINED_LABEL} is for internally created predefined networks and cannot be applied by users"
        )));
    }
    validate_driver(spec.driver_config.as_ref(), |d| {
        BUILT_IN_DRIVERS.contains(&d)
    })?;
    if let Some(ipam) = &spec.ipam {
        validate_driver(ipam.driver.as_ref(), |d| d == DEFAULT_IPAM)?;
        for c in &ipam.configs {
            validate_ipam_config(c)?;
        }
    }
    Ok(spec)
}

pub(super) async fn create(
    ctl: &ControlApi,
    req: api::CreateNetworkRequest,
) -> Result<api::CreateNetworkResponse, Status> {
    let spec = validate_network_spec(req.spec.as_ref())?.clone();
    let id = api::naming::new_id();
    let network = api::Network {
        id: id.clone(),
        spec: Some(spec.clone()),
        ..Default::default()
    };
    ctl.write(|tx| {
        if spec.ingress
            && let Some(existing) = tx
                .find_networks(By::All)
                .iter()
                .find(|n| is_ingress_network(n))
        {
            return Err(Status::already_exists(format!(
                "ingress network ({}) is already present",
                existing.id
            ))
            .into());
        }
        let existing = tx.find_networks(By::All);
        let pools = tx
            .find_clusters(By::All)
            .first()
            .and_then(|c| PoolConfig::from_cluster(c).ok())
            .unwrap_or_default();
        if let Err(e) = check_network(&pools, &existing, &network) {
            return Err(ipam_refusal(e, &existing).into());
        }
        tx.create_network(network)?;
        Ok(())
    })
    .await?;
    tracing::info!(network.id = %id, "network created");
    let network = ctl.store.view(|tx| tx.get_network(&id));
    Ok(api::CreateNetworkResponse { network })
}

/// The refusal of a network the allocator could not allocate next to `existing`.
fn ipam_refusal(e: IpamError, existing: &[api::Network]) -> Status {
    let message = match &e {
        IpamError::PoolExhausted => return Status::invalid_argument(e.to_string()),
        IpamError::SubnetOverlap {
            subnet,
            other,
            network_id,
        } => match existing.iter().find(|n| &n.id == network_id) {
            Some(n) => format!(
                "subnet {subnet} overlaps with subnet {other} of network {} ({network_id})",
                name_of(&annotations(n))
            ),
            None => format!("subnet {subnet} overlaps with subnet {other} of the same network"),
        },
        _ => e.to_string(),
    };
    Status::invalid_argument(format!("ipam configuration: {message}"))
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetNetworkRequest,
) -> Result<api::GetNetworkResponse, Status> {
    if req.network_id.is_empty() {
        return Err(invalid_argument());
    }
    let network = ctl
        .store
        .view(|tx| tx.get_network(&req.network_id))
        .ok_or_else(|| not_found(&req.network_id))?;
    Ok(api::GetNetworkResponse {
        network: Some(network),
    })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveNetworkRequest,
) -> Result<api::RemoveNetworkResponse, Status> {
    if req.network_id.is_empty() {
        return Err(invalid_argument());
    }
    let id = req.network_id;
    ctl.write(|tx| {
        let network = tx.get_network(&id).ok_or_else(|| not_found(&id))?;
        let a = annotations(&network);
        if labels_of(&a)
            .get(PREDEFINED_LABEL)
            .is_some_and(|v| v == "true")
        {
            return Err(Status::failed_precondition(format!(
                "network {id} ({}) is a swarm predefined network and cannot be removed",
                name_of(&a)
            ))
            .into());
        }
        if is_ingress_network(&network) {
            if let Some(s) = tx
                .find_services(By::All)
                .iter()
                .find(|s| ingress_network_needed(s.spec.as_ref()))
            {
                return Err(Status::failed_precondition(format!(
                    "ingress network cannot be removed because service {} depends on it",
                    s.id
                ))
                .into());
            }
        } else {
            if let Some(s) = tx.find_services(By::ReferencedNetwork(&id)).first() {
                return Err(Status::failed_precondition(format!(
                    "network {id} is in use by service {}",
                    s.id
                ))
                .into());
            }
            let running = TaskState::Running as i32;
            if let Some(t) = tx.find_tasks(By::ReferencedNetwork(&id)).iter().find(|t| {
                t.desired_state <= running && t.status.as_ref().map_or(0, |s| s.state) <= running
            }) {
                return Err(Status::failed_precondition(format!(
                    "network {id} is in use by task {}",
                    t.id
                ))
                .into());
            }
        }
        tx.delete_network(&id)?;
        Ok(())
    })
    .await?;
    tracing::info!(network.id = %id, "network removed");
    Ok(api::RemoveNetworkResponse {})
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListNetworksRequest,
) -> Result<api::ListNetworksResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let networks = ctl.store.view(|tx| {
        let by = if !f.names.is_empty() {
            any_of(&f.names, By::Name)
        } else if !f.name_prefixes.is_empty() {
            any_of(&f.name_prefixes, By::NamePrefix)
        } else if !f.id_prefixes.is_empty() {
            any_of(&f.id_prefixes, By::IdPrefix)
        } else {
            By::All
        };
        tx.find_networks(by)
    });
    let networks = networks
        .into_iter()
        .filter(|n| {
            let a = annotations(n);
            filter_contains(name_of(&a), &f.names)
                && filter_contains_prefix(name_of(&a), &f.name_prefixes)
                && filter_contains_prefix(&n.id, &f.id_prefixes)
                && filter_match_labels(&labels_of(&a), &f.labels)
        })
        .collect();
    Ok(api::ListNetworksResponse { networks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_containment() {
        let (net, prefix) = parse_cidr("10.1.0.0/16").expect("valid");
        assert!(subnet_contains(
            net,
            prefix,
            "10.1.255.1".parse().expect("ip")
        ));
        assert!(!subnet_contains(
            net,
            prefix,
            "10.2.0.1".parse().expect("ip")
        ));
        assert!(parse_cidr("bogus").is_none());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        let (net, prefix) = parse_cidr("fd00::/64").expect("valid");
        assert!(subnet_contains(net, prefix, "fd00::5".parse().expect("ip")));
        let (net, prefix) = parse_cidr("0.0.0.0/0").expect("valid");
        assert!(subnet_contains(net, prefix, "1.2.3.4".parse().expect("ip")));
    }
}
