//! Network driver state (SwarmKit's cnmallocator `allocateDriverState` and the overlay driver's
//! manager side, libnetwork's `ovmanager`): which driver a network uses, and for overlay networks
//! the VXLAN IDs (VNIs), one per IPv4 subnet, handed out from [`VXLAN_ID_START`] up. Node-local
//! drivers (bridge, host, macvlan, ipvlan) get their name only: nothing of theirs is cluster-wide.
//! IPAM (subnets, gateways) is not allocated here yet.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;

/// The driver of a network whose spec names none (cnmallocator's `DefaultDriver`).
pub const DEFAULT_DRIVER: &str = "overlay";

/// Driver option (and driver state option) listing an overlay network's VNIs, comma-separated.
pub const VXLAN_ID_LIST_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// The lowest VNI handed out: below it lie the 802.1Q VLAN IDs, which Windows cannot overlap.
pub const VXLAN_ID_START: u32 = 4096;

/// The highest VNI (RFC 7348: 24 bits).
pub const VXLAN_ID_END: u32 = (1 << 24) - 1;

/// Drivers a manager knows without a plugin whose resources are local to each node.
const NODE_LOCAL_DRIVERS: [&str; 4] = ["bridge", "host", "macvlan", "ipvlan"];

/// IPAMConfig.AddressFamily IPV6 (its subnets get no VNI).
const FAMILY_IPV6: i32 = 6;

/// The driver state of every network allocated so far and the VNIs they hold.
#[derive(Debug)]
pub(crate) struct NetworkDrivers {
    /// Network ID -> the VNIs it holds (none for a node-local network).
    networks: BTreeMap<String, Vec<u32>>,
    used: BTreeSet<u32>,
    /// Where the search for a free VNI starts: after the last one handed out (the overlay
    /// driver allocates serially, so a freed VNI is reused only once the range wraps around, or
    /// after a restart).
    next: u32,
    start: u32,
    end: u32,
}

impl Default for NetworkDrivers {
    fn default() -> Self {
        NetworkDrivers::with_range(VXLAN_ID_START, VXLAN_ID_END)
    }
}

/// The driver a network's spec asks for.
pub(crate) fn driver_name(network: &api::Network) -> &str {
    network
        .spec
        .as_ref()
        .and_then(|s| s.driver_config.as_ref())
        .map(|d| d.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_DRIVER)
}

/// Whether the network's driver is node-local (bridge, host, macvlan, ipvlan): nothing of it is
/// allocated cluster-wide but the driver's name.
pub(crate) fn is_node_local(network: &api::Network) -> bool {
    NODE_LOCAL_DRIVERS.contains(&driver_name(network))
}

/// How many IPv4 subnets the network has: one per IPv4 IPAM config (of its allocated IPAM state,
/// else of its spec), or the single default subnet when it has none.
fn ipv4_subnets(network: &api::Network) -> usize {
    let configs = match &network.ipam {
        Some(ipam) => &ipam.configs,
        None => match network.spec.as_ref().and_then(|s| s.ipam.as_ref()) {
            Some(ipam) => &ipam.configs,
            None => return 1,
        },
    };
    if configs.is_empty() {
        return 1;
    }
    configs
        .iter()
        .filter(|c| c.family != FAMILY_IPV6)
        .count()
        .max(1)
}

/// Parses a VNI list option (`4096,4097`).
fn parse_vni_list(value: &str) -> Result<Vec<u32>, Error> {
    value
        .split(',')
        .map(|v| {
            v.parse::<u32>().map_err(|_| Error::InvalidVxlanId {
                value: v.to_string(),
            })
        })
        .collect()
}

impl NetworkDrivers {
    pub(crate) fn with_range(start: u32, end: u32) -> Self {
        NetworkDrivers {
            networks: BTreeMap::new(),
            used: BTreeSet::new(),
            next: 0,
            start,
            end,
        }
    }

    pub(crate) fn is_allocated(&self, network_id: &str) -> bool {
        self.networks.contains_key(network_id)
    }

    /// Allocates `network`'s driver state and returns it. The options are the spec's driver
    /// options overlaid with the current driver state's; VNIs already listed there (a restored
    /// network, or ones the user chose) are reserved as they are, the others are handed out.
    pub(crate) fn allocate(&mut self, network: &api::Network) -> Result<api::Driver, Error> {
        if self.is_allocated(&network.id) {
            return Err(Error::NetworkAlreadyAllocated {
                id: network.id.clone(),
            });
        }
        let name = driver_name(network).to_string();
        if is_node_local(network) {
            self.networks.insert(network.id.clone(), Vec::new());
            return Ok(api::Driver {
                name,
                options: Default::default(),
            });
        }
        if name != DEFAULT_DRIVER {
            return Err(Error::UnknownNetworkDriver { name });
        }
        let mut options = network
            .spec
            .as_ref()
            .and_then(|s| s.driver_config.as_ref())
            .map(|d| d.options.clone())
            .unwrap_or_default();
        if let Some(state) = &network.driver_state {
            options.extend(state.options.clone());
        }
        let chosen = match options.remove(VXLAN_ID_LIST_OPTION) {
            Some(list) => parse_vni_list(&list)?,
            None => Vec::new(),
        };
        // Every listed VNI is kept even beyond the subnets counted: without allocated IPAM state,
        // a stored list is what says how many subnets a network holds.
        let mut vnis = Vec::new();
        for i in 0..ipv4_subnets(network).max(chosen.len()) {
            let vni = match chosen.get(i) {
                Some(&vni) => self.reserve(vni),
                None => self.take_any(),
            };
            match vni {
                Ok(vni) => vnis.push(vni),
                Err(e) => {
                    self.release(&vnis);
                    return Err(e);
                }
            }
        }
        let list = vnis
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        options.insert(VXLAN_ID_LIST_OPTION.to_string(), list);
        self.networks.insert(network.id.clone(), vnis);
        Ok(api::Driver { name, options })
    }

    /// Frees what the network holds; false if it was not allocated.
    pub(crate) fn deallocate(&mut self, network_id: &str) -> bool {
        match self.networks.remove(network_id) {
            Some(vnis) => {
                self.release(&vnis);
                true
            }
            None => false,
        }
    }

    fn release(&mut self, vnis: &[u32]) {
        for vni in vnis {
            self.used.remove(vni);
        }
    }

    /// Marks a given VNI (any of the 24-bit range) as used.
    fn reserve(&mut self, vni: u32) -> Result<u32, Error> {
        if vni > VXLAN_ID_END {
            return Err(Error::InvalidVxlanId {
                value: vni.to_string(),
            });
        }
        if !self.used.insert(vni) {
            return Err(Error::VxlanIdInUse { vni });
        }
        Ok(vni)
    }

    /// The first free VNI from the one after the last handed out, wrapping around to the start.
    fn take_any(&mut self) -> Result<u32, Error> {
        let from_next = (self.next > self.start)
            .then(|| self.first_free(self.next))
            .flatten();
        let vni = from_next
            .or_else(|| self.first_free(self.start))
            .ok_or(Error::VxlanIdsExhausted)?;
        self.used.insert(vni);
        self.next = vni + 1;
        Ok(vni)
    }

    fn first_free(&self, from: u32) -> Option<u32> {
        let mut candidate = from;
        for &used in self.used.range(from..) {
            if used != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate <= self.end).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(id: &str, options: &[(&str, &str)], subnets: usize) -> api::Network {
        api::Network {
            id: id.into(),
            spec: Some(api::NetworkSpec {
                driver_config: Some(api::Driver {
                    name: "overlay".into(),
                    options: options
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                ipam: Some(api::IpamOptions {
                    driver: None,
                    configs: (0..subnets)
                        .map(|i| api::IpamConfig {
                            subnet: format!("10.{i}.0.0/24"),
                            ..Default::default()
                        })
                        .collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_driver(mut network: api::Network, name: &str) -> api::Network {
        if let Some(d) = network.spec.as_mut().and_then(|s| s.driver_config.as_mut()) {
            d.name = name.into();
        }
        network
    }

    fn vnis(driver: &api::Driver) -> &str {
        &driver.options[VXLAN_ID_LIST_OPTION]
    }

    #[test]
    fn one_vni_per_ipv4_subnet_and_the_other_options_copied() {
        let mut d = NetworkDrivers::default();
        let a = d
            .allocate(&overlay(
                "a",
                &[("com.docker.network.driver.mtu", "1400")],
                0,
            ))
            .expect("a");
        assert_eq!(a.name, "overlay");
        assert_eq!(vnis(&a), "4096");
        assert_eq!(a.options["com.docker.network.driver.mtu"], "1400");
        let b = d.allocate(&overlay("b", &[], 2)).expect("b");
        assert_eq!(vnis(&b), "4097,4098");
        let mut v6 = overlay("c", &[], 2);
        v6.spec.as_mut().unwrap().ipam.as_mut().unwrap().configs[1].family = FAMILY_IPV6;
        assert_eq!(vnis(&d.allocate(&v6).expect("c")), "4099");
    }

    #[test]
    fn chosen_vnis_are_reserved_and_a_taken_one_fails_without_leaking() {
        let mut d = NetworkDrivers::default();
        let a = d
            .allocate(&overlay("a", &[(VXLAN_ID_LIST_OPTION, "5000")], 0))
            .expect("a");
        assert_eq!(vnis(&a), "5000");
        let clash = overlay("b", &[(VXLAN_ID_LIST_OPTION, "6000,5000")], 2);
        assert!(matches!(
            d.allocate(&clash),
            Err(Error::VxlanIdInUse { vni: 5000 })
        ));
        assert!(!d.is_allocated("b"));
        // 6000 was given back when the second one failed.
        let c = d
            .allocate(&overlay("c", &[(VXLAN_ID_LIST_OPTION, "6000")], 0))
            .expect("c");
        assert_eq!(vnis(&c), "6000");
        assert!(matches!(
            d.allocate(&overlay("d", &[(VXLAN_ID_LIST_OPTION, "x")], 0)),
            Err(Error::InvalidVxlanId { .. })
        ));
    }

    #[test]
    fn vnis_are_handed_out_serially_and_wrap_around_to_freed_ones() {
        let mut d = NetworkDrivers::with_range(10, 12);
        for (id, want) in [("a", "10"), ("b", "11")] {
            assert_eq!(vnis(&d.allocate(&overlay(id, &[], 0)).expect(id)), want);
        }
        assert!(d.deallocate("a"));
        assert!(!d.deallocate("a"));
        // The freed 10 waits until the range wraps.
        assert_eq!(vnis(&d.allocate(&overlay("c", &[], 0)).expect("c")), "12");
        assert_eq!(vnis(&d.allocate(&overlay("d", &[], 0)).expect("d")), "10");
        assert!(matches!(
            d.allocate(&overlay("e", &[], 0)),
            Err(Error::VxlanIdsExhausted)
        ));
    }

    #[test]
    fn node_local_drivers_get_their_name_only_and_plugins_are_unknown() {
        let mut d = NetworkDrivers::default();
        let bridge = with_driver(overlay("br", &[("x", "y")], 0), "bridge");
        let state = d.allocate(&bridge).expect("bridge");
        assert_eq!(state.name, "bridge");
        assert!(state.options.is_empty());
        let plugin = with_driver(overlay("p", &[], 0), "weave");
        assert!(matches!(
            d.allocate(&plugin),
            Err(Error::UnknownNetworkDriver { .. })
        ));
        assert!(!d.is_allocated("p"));
        // The default driver is overlay.
        let mut default = overlay("def", &[], 0);
        default.spec.as_mut().unwrap().driver_config = None;
        assert_eq!(d.allocate(&default).expect("def").name, "overlay");
    }
}
