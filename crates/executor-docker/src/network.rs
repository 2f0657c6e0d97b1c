//! The node's local data plane: one Docker bridge network per swarm network its tasks use.
//!
//! A plain engine cannot create overlay networks (SwarmKit's own dockerapi executor fails there),
//! so each swarm network a task is attached to becomes a local `bridge` network with the subnet
//! and gateway the allocator gave the swarm network. Containers of one node on one swarm network
//! reach each other by their allocated addresses. With the node's data plane the local network
//! is made on the data plane's bridge for the swarm network ([`Attachment::on_bridge`]), where
//! its VXLAN device reaches the other nodes; without it, nothing crosses nodes.
//!
//! A local network is named `swarmd-<network name>-<first 12 characters of its ID>` and labelled
//! [`NETWORK_ID_LABEL`] (the swarm network's ID) and [`LOCAL_NETWORK_LABEL`] (ours), and is always
//! found again by those labels, never by its name alone, so a restarted swarmd reuses it. It is
//! created when a task first needs it (two tasks racing both succeed: the loser of the create
//! finds the winner's) and removed once no container refers to it, running or not (a prepared
//! task's container is created and not started): when a task is removed, and by a sweep when
//! the executor starts.
//!
//! One lock per executor orders the steps that make a network, attach a container to it, start
//! a container on it and remove it, so that a removal never takes a network between its
//! creation and the container that needs it.
//!
//! Other swarmd on the same engine (several nodes sharing one engine, as in tests) are not under
//! that lock, and the rules below keep them apart:
//! - A network counts as used while any container refers to it, running or not. The engine's
//!   own list on the network holds running containers only, so containers are also listed by
//!   the network's ID *and* name: a container created and never started refers to its networks
//!   by name only.
//! - The startup sweep takes only networks created more than [`SWEEP_MIN_AGE`] ago, so it does
//!   not take a network another process has just made and not yet put a container on.
//! - A create that loses a race (the engine answers 409, or 403 "Pool overlaps" since an engine
//!   without a duplicate check makes a second network of the same name on the same subnet)
//!   finds the winner's network by its labels; a container create that finds its network gone
//!   ensures it again once; `start` ensures the task's networks before it starts the container
//!   (a created container joins its networks by name when it starts, so a network made again
//!   under the same name serves).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent::ExecutorError;
use bollard::Docker;
use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use tokio::sync::{Mutex, MutexGuard};

use crate::engine::Engine;
use crate::error::{classify, is_not_found, status};

/// The label holding the ID of the swarm network a local network stands for.
pub const NETWORK_ID_LABEL: &str = "com.docker.swarm.network.id";

/// The label holding the swarm network's name (informative: lookups go by ID).
pub const NETWORK_NAME_LABEL: &str = "com.docker.swarm.network.name";

/// The label marking a local network as made by swarmd's Docker executor (value `true`), so that
/// only ours are ever reused or removed.
pub const LOCAL_NETWORK_LABEL: &str = "swarmd.local-network";

/// The label holding the data plane bridge a local network is made on (absent: the engine's
/// own bridge): a network found for an attachment must be on the bridge the attachment wants.
pub const BRIDGE_LABEL: &str = "swarmd.bridge";

/// The bridge driver's option naming the Linux bridge (one that exists is taken as it is, with
/// its devices and addresses, and left in place when the network is removed).
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The bridge driver's option setting the containers' interfaces' MTU.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// How old one of our networks must be before the startup sweep may remove it: younger ones may
/// belong to a task another swarmd on this engine is creating.
pub const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

/// How many times, and how far apart, a create that lost a race looks for the winner's network.
const RACE_LOOKS: u32 = 20;
const RACE_LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// The driver of every local network.
const DRIVER: &str = "bridge";

/// One swarm network a task is attached to, as the task's container joins it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The swarm network's ID.
    pub network_id: String,
    /// The swarm network's name.
    pub network_name: String,
    /// The name of the local network made for it (see [`local_network_name`]).
    pub local_name: String,
    /// Its IPAM configs: subnet, range and gateway, as allocated.
    pub ipam: Vec<api::IpamConfig>,
    /// The container's IPv4 address on it, without the prefix length.
    pub ipv4: Option<String>,
    /// The container's IPv6 address on it, without the prefix length.
    pub ipv6: Option<String>,
    /// The names the container answers to on it: the attachment's aliases, then the service
    /// name and the task name (on the data plane, the task name only: see
    /// [`Attachment::on_bridge`]).
    pub aliases: Vec<String>,
    /// The node's data plane bridge of the network (`swbr-<vni>`), when the local network is
    /// made on it; `None`: a bridge of the engine's own, reaching this node only.
    pub bridge: Option<String>,
    /// The MTU of the containers' interfaces on that bridge: the data plane's for the network
    /// (smaller on an encrypted network, whose frames cross the WireGuard tunnel).
    mtu: u32,
    task_name: String,
}

impl Attachment {
    /// The attachment of `na` for a task of `service` named `task_name`. An attachment without
    /// a network or with an address that does not parse is refused: the task cannot have the
    /// address it was given.
    pub fn new(
        na: &api::NetworkAttachment,
        service: &str,
        task_name: &str,
    ) -> Result<Self, ExecutorError> {
        let Some(network) = &na.network else {
            return Err(ExecutorError::Fatal(
                "dockerexec: network attachment without a network".into(),
            ));
        };
        let network_name = network
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let (mut ipv4, mut ipv6) = (None, None);
        for addr in &na.addresses {
            let ip = addr.split_once('/').map_or(addr.as_str(), |(ip, _)| ip);
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ipv4 = Some(ip.to_string()),
                Ok(IpAddr::V6(ip)) => ipv6 = Some(ip.to_string()),
                Err(_) => {
                    return Err(ExecutorError::Fatal(format!(
                        "dockerexec: network {network_name}: invalid address {addr:?}"
                    )));
                }
            }
        }
        let mut aliases: Vec<String> = Vec::new();
        for a in na
            .aliases
            .iter()
            .map(String::as_str)
            .chain([service, task_name])
        {
            if !a.is_empty() && !aliases.iter().any(|b| b == a) {
                aliases.push(a.to_string());
            }
        }
        Ok(Self {
            local_name: local_network_name(&network_name, &network.id),
            network_id: network.id.clone(),
            network_name,
            ipam: network
                .ipam
                .as_ref()
                .map(|i| i.configs.clone())
                .unwrap_or_default(),
            ipv4,
            ipv6,
            aliases,
            bridge: None,
            mtu: netplane::overlay::OVERLAY_MTU,
            task_name: task_name.to_string(),
        })
    }

    /// The same attachment on the node's data plane, whose bridge for the network is `bridge`:
    /// the local network is made on that bridge (where the network's VXLAN device is), and the
    /// engine's embedded DNS is given the task name only, so that the service name and the
    /// network aliases reach the node's resolver and answer its virtual IP, as SwarmKit's do.
    /// `mtu` is the MTU of the network's devices there (`NetSpec::mtu`).
    pub fn on_bridge(mut self, bridge: String, mtu: u32) -> Self {
        self.bridge = Some(bridge);
        self.mtu = mtu;
        self.aliases = vec![self.task_name.clone()];
        self
    }

    /// The labels of the local network.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (NETWORK_ID_LABEL.to_string(), self.network_id.clone()),
            (NETWORK_NAME_LABEL.to_string(), self.network_name.clone()),
            (LOCAL_NETWORK_LABEL.to_string(), "true".to_string()),
        ]);
        if let Some(bridge) = &self.bridge {
            labels.insert(BRIDGE_LABEL.to_string(), bridge.clone());
        }
        labels
    }

    /// The engine's create request for the local network.
    pub fn create_request(&self) -> NetworkCreateRequest {
        let ipv6 = self.ipam.iter().any(|c| {
            c.family == api::ipam_config::AddressFamily::Ipv6 as i32 || c.subnet.contains(':')
        });
        NetworkCreateRequest {
            name: self.local_name.clone(),
            driver: Some(DRIVER.to_string()),
            labels: Some(self.labels()),
            enable_ipv6: ipv6.then_some(true),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(
                    self.ipam
                        .iter()
                        .filter(|c| !c.subnet.is_empty())
                        .map(|c| IpamConfig {
                            subnet: Some(c.subnet.clone()),
                            ip_range: (!c.range.is_empty()).then(|| c.range.clone()),
                            gateway: (!c.gateway.is_empty()).then(|| c.gateway.clone()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            options: self.bridge.as_ref().map(|bridge| {
                HashMap::from([
                    (BRIDGE_NAME_OPTION.to_string(), bridge.clone()),
                    (MTU_OPTION.to_string(), self.mtu.to_string()),
                ])
            }),
            ..Default::default()
        }
    }

    /// How the container joins the local network: its allocated addresses and its aliases.
    pub fn endpoint_settings(&self) -> EndpointSettings {
        let ipam = (self.ipv4.is_some() || self.ipv6.is_some()).then(|| EndpointIpamConfig {
            ipv4_address: self.ipv4.clone(),
            ipv6_address: self.ipv6.clone(),
            ..Default::default()
        });
        EndpointSettings {
            ipam_config: ipam,
            aliases: (!self.aliases.is_empty()).then(|| self.aliases.clone()),
            ..Default::default()
        }
    }
}

/// The name of the local network standing for the swarm network `name` with ID `id`.
pub fn local_network_name(name: &str, id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("swarmd-{name}-{short}")
}

/// The executor's local networks: finds, creates and removes them on one engine.
#[derive(Clone)]
pub(crate) struct LocalNetworks {
    engine: Engine,
    /// Held from making a task's networks until its container is attached, and while removing
    /// one (see the module documentation).
    lock: Arc<Mutex<()>>,
}

impl LocalNetworks {
    pub(crate) fn new(engine: Engine) -> Self {
        Self {
            engine,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Takes the lock that orders network changes on this executor.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// The name of our local network for the swarm network `network_id` on the data plane
    /// bridge `bridge` (`None`: on a bridge of the engine's), if there is one.
    pub(crate) async fn find(
        &self,
        docker: &Docker,
        network_id: &str,
        bridge: Option<&str>,
    ) -> Result<Option<String>, ExecutorError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{NETWORK_ID_LABEL}={network_id}"),
                format!("{LOCAL_NETWORK_LABEL}=true"),
            ],
        )]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let found = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| classify("listing networks failed", e))?;
        let mut names: Vec<String> = found
            .into_iter()
            .filter(|n| {
                n.labels
                    .as_ref()
                    .and_then(|l| l.get(BRIDGE_LABEL))
                    .map(String::as_str)
                    == bridge
            })
            .filter_map(|n| n.name)
            .collect();
        names.sort();
        Ok(names.into_iter().next())
    }

    /// The local network for `a`, created unless it exists; its name. Call under [`Self::lock`].
    pub(crate) async fn ensure(&self, a: &Attachment) -> Result<String, ExecutorError> {
        let docker = self.engine.client().await?;
        if let Some(name) = self
            .find(&docker, &a.network_id, a.bridge.as_deref())
            .await?
        {
            return Ok(name);
        }
        match docker.create_network(a.create_request()).await {
            Ok(_) => {
                tracing::info!(
                    network = a.network_name,
                    network.id = a.network_id,
                    local = a.local_name,
                    "created local network"
                );
                Ok(a.local_name.clone())
            }
            // Made meanwhile by another swarmd on this engine: use it if it is ours. The engine
            // refuses the name (409), or, checking no duplicate names, the subnet (403), which
            // it may do while the winner's create has not ended: look a few times.
            Err(e) if matches!(status(&e), Some(403 | 409)) => {
                for _ in 0..RACE_LOOKS {
                    if let Some(name) = self
                        .find(&docker, &a.network_id, a.bridge.as_deref())
                        .await?
                    {
                        return Ok(name);
                    }
                    tokio::time::sleep(RACE_LOOK_INTERVAL).await;
                }
                Err(ExecutorError::Fatal(if status(&e) == Some(409) {
                    format!(
                        "dockerexec: a network named {} exists and is not swarmd's",
                        a.local_name
                    )
                } else {
                    format!(
                        "dockerexec: creating network {} for {} failed: {e}",
                        a.local_name, a.network_name
                    )
                }))
            }
            Err(e) => Err(match classify("creating network failed", e) {
                ExecutorError::Fatal(m) => ExecutorError::Fatal(format!(
                    "dockerexec: creating network {} for {} failed: {m}",
                    a.local_name, a.network_name
                )),
                t => t,
            }),
        }
    }

    /// Removes our local network `name` if no container refers to it, running or not. Call
    /// under [`Self::lock`]. Whether it went is logged; an error is the engine's failure to
    /// answer (temporary) or an answer that left the question open (fatal), and the network is
    /// then left for a later removal or sweep.
    pub(crate) async fn remove_if_unused(&self, name: &str) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        let network = match docker.inspect_network(name, None).await {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(classify("inspecting network failed", e)),
        };
        let ours = network
            .labels
            .as_ref()
            .is_some_and(|l| l.get(LOCAL_NETWORK_LABEL).is_some_and(|v| v == "true"));
        if !ours || network.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        // The network's own list holds running containers only. The engine's `network` filter
        // matches a container's network by name, or by a prefix of the ID it joined with, which
        // a container created and never started (a prepared task) does not have yet: ask for
        // both (the values are OR'd).
        let mut refs = vec![network.name.clone().unwrap_or_else(|| name.to_string())];
        refs.extend(network.id.clone());
        let filters = HashMap::from([("network", refs)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let users = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| classify("listing containers failed", e))?;
        if !users.is_empty() {
            return Ok(());
        }
        match docker.remove_network(name).await {
            Ok(()) => {
                tracing::info!(local = name, "removed unused local network");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            // In use by a container that joined meanwhile (another swarmd on this engine).
            Err(e) if matches!(status(&e), Some(403 | 409)) => {
                tracing::debug!(local = name, error = %e, "local network still in use");
                Ok(())
            }
            Err(e) => Err(classify("removing network failed", e)),
        }
    }

    /// Removes every local network of ours created more than `min_age` ago that no container
    /// refers to (left by tasks removed while swarmd was down, or by a removal that failed);
    /// `label`, when given (`key=value`), narrows the sweep to networks that carry it. One
    /// network that cannot be removed is logged and the sweep goes on; only failing to list
    /// the networks is an error.
    pub(crate) async fn sweep(
        &self,
        min_age: Duration,
        label: Option<&str>,
    ) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        let mut labels = vec![format!("{LOCAL_NETWORK_LABEL}=true")];
        labels.extend(label.map(str::to_string));
        let filters = HashMap::from([("label", labels)]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let ours = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| classify("listing networks failed", e))?;
        let now = SystemTime::now();
        let _guard = self.lock().await;
        for n in ours {
            let Some(name) = n.name else { continue };
            if !old_enough(n.created.as_deref(), now, min_age) {
                tracing::debug!(local = name, "local network too young to sweep");
                continue;
            }
            if let Err(e) = self.remove_if_unused(&name).await {
                tracing::warn!(local = name, error = %e, "sweeping local network failed");
            }
        }
        Ok(())
    }
}

/// Whether a network the engine says was `created` (RFC 3339) is at least `min_age` old at
/// `now`. A time that does not parse is young unless `min_age` is zero: the sweep leaves alone
/// what it cannot date.
fn old_enough(created: Option<&str>, now: SystemTime, min_age: Duration) -> bool {
    if min_age.is_zero() {
        return true;
    }
    let Some(created) = created.and_then(|c| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return false;
    };
    let created = SystemTime::from(created);
    now.duration_since(created).is_ok_and(|age| age >= min_age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(addresses: &[&str], aliases: &[&str]) -> api::NetworkAttachment {
        api::NetworkAttachment {
            network: Some(api::Network {
                id: "n7l0w0c9p5xr2k3m4q1z8d6yv".into(),
                spec: Some(api::NetworkSpec {
                    annotations: Some(api::Annotations {
                        name: "backend".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ipam: Some(api::IpamOptions {
                    configs: vec![api::IpamConfig {
                        family: api::ipam_config::AddressFamily::Ipv4 as i32,
                        subnet: "10.0.7.0/24".into(),
                        gateway: "10.0.7.1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_attachment_joins_with_its_address_and_aliases() {
        let a = Attachment::new(
            &attachment(&["10.0.7.3/24"], &["db", "web"]),
            "web",
            "web.1.t1",
        )
        .expect("attachment");
        assert_eq!(a.local_name, "swarmd-backend-n7l0w0c9p5xr");
        assert_eq!(a.ipv4.as_deref(), Some("10.0.7.3"));
        assert_eq!(a.ipv6, None);
        // The service name is not repeated.
        assert_eq!(a.aliases, ["db", "web", "web.1.t1"]);
        let ep = a.endpoint_settings();
        assert_eq!(
            ep.ipam_config.and_then(|c| c.ipv4_address).as_deref(),
            Some("10.0.7.3")
        );
        assert_eq!(
            ep.aliases.expect("aliases"),
            ["db", "web", "web.1.t1"].map(String::from)
        );
    }

    #[test]
    fn the_local_network_has_the_swarm_networks_subnet_gateway_and_labels() {
        let a = Attachment::new(&attachment(&["10.0.7.3/24"], &[]), "web", "web.1.t1")
            .expect("attachment");
        let req = a.create_request();
        assert_eq!(req.name, "swarmd-backend-n7l0w0c9p5xr");
        assert_eq!(req.driver.as_deref(), Some("bridge"));
        assert_eq!(req.enable_ipv6, None);
        let labels = req.labels.expect("labels");
        assert_eq!(labels[NETWORK_ID_LABEL], "n7l0w0c9p5xr2k3m4q1z8d6yv");
        assert_eq!(labels[NETWORK_NAME_LABEL], "backend");
        assert_eq!(labels[LOCAL_NETWORK_LABEL], "true");
        let config = req.ipam.and_then(|i| i.config).expect("ipam config");
        assert_eq!(config.len(), 1);
        assert_eq!(config[0].subnet.as_deref(), Some("10.0.7.0/24"));
        assert_eq!(config[0].gateway.as_deref(), Some("10.0.7.1"));
        assert_eq!(config[0].ip_range, None);
    }

    #[test]
    fn on_the_data_plane_the_network_is_on_its_bridge_and_only_the_task_name_is_an_alias() {
        let a = Attachment::new(&attachment(&["10.0.7.3/24"], &["db"]), "web", "web.1.t1")
            .expect("attachment")
            .on_bridge("swbr-4097".into(), netplane::overlay::OVERLAY_MTU);
        assert_eq!(a.aliases, ["web.1.t1"]);
        assert_eq!(
            a.endpoint_settings().aliases.expect("aliases"),
            ["web.1.t1"].map(String::from)
        );
        let req = a.create_request();
        let options = req.options.expect("driver options");
        assert_eq!(options[BRIDGE_NAME_OPTION], "swbr-4097");
        assert_eq!(options[MTU_OPTION], "1450");
        assert_eq!(req.labels.expect("labels")[BRIDGE_LABEL], "swbr-4097");
        // Off the data plane: the engine's own bridge, no such label.
        let local = Attachment::new(&attachment(&["10.0.7.3/24"], &[]), "web", "web.1.t1")
            .expect("attachment");
        let req = local.create_request();
        assert_eq!(req.options, None);
        assert!(!req.labels.expect("labels").contains_key(BRIDGE_LABEL));
    }

    #[test]
    fn a_bad_address_or_a_missing_network_is_fatal() {
        let err = Attachment::new(&attachment(&["10.0.7.300/24"], &[]), "web", "web.1.t1")
            .expect_err("bad address");
        assert_eq!(
            err,
            ExecutorError::Fatal(
                "dockerexec: network backend: invalid address \"10.0.7.300/24\"".into()
            )
        );
        let mut none = attachment(&[], &[]);
        none.network = None;
        assert!(matches!(
            Attachment::new(&none, "web", "web.1.t1"),
            Err(ExecutorError::Fatal(_))
        ));
    }

    #[test]
    fn only_networks_older_than_the_minimum_age_are_swept() {
        let created = "2026-12-07T08:30:00.123456789Z";
        let at = |s: &str| {
            SystemTime::from(
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .expect("time"),
            )
        };
        let minute = Duration::from_secs(60);
        assert!(!old_enough(
            Some(created),
            at("2026-12-07T08:31:00Z"),
            minute
        ));
        assert!(old_enough(
            Some(created),
            at("2026-12-07T08:31:01Z"),
            minute
        ));
        // An offset other than Z, as an engine outside UTC writes it.
        assert!(old_enough(
            Some("2026-12-07T09:30:00+01:00"),
            at("2026-12-07T08:31:00Z"),
            minute
        ));
        // A clock behind the engine's, or no date at all: left alone.
        assert!(!old_enough(
            Some(created),
            at("2026-12-07T08:00:00Z"),
            minute
        ));
        assert!(!old_enough(None, at("2026-12-07T08:31:00Z"), minute));
        assert!(!old_enough(
            Some("yesterday"),
            at("2026-12-07T08:31:00Z"),
            minute
        ));
        assert!(old_enough(None, at("2026-12-07T08:31:00Z"), Duration::ZERO));
    }

    #[test]
    fn ipv6_addresses_go_to_the_ipv6_field() {
        let a = Attachment::new(
            &attachment(&["10.0.7.3/24", "fd00::3/64"], &[]),
            "web",
            "web.1.t1",
        )
        .expect("attachment");
        assert_eq!(a.ipv4.as_deref(), Some("10.0.7.3"));
        assert_eq!(a.ipv6.as_deref(), Some("fd00::3"));
    }
}
