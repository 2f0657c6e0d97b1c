//! IPAM, after libnetwork's default IPAM driver as SwarmKit's cnmallocator drives it
//! (`ipam/allocator.go`, `ipamutils`, cnmallocator `allocatePools`): the subnets of overlay
//! networks and the addresses in them. Pure bookkeeping: the allocator loop and the control API
//! feed it networks and store what it returns.
//!
//! A network's subnet comes from its IPAM configs (`--subnet`, with an optional `--ip-range` to
//! hand addresses out of and `--gateway`) or, when it has none, from the default address pool:
//! the cluster's `defaultAddressPool` cut into `/subnetSize` subnets (10.0.0.0/8 in /24s unless
//! the cluster says otherwise), the first one that overlaps no allocated subnet, searched from
//! the one after the last handed out and wrapping around. Subnets never overlap (libnetwork
//! refuses it too). Each subnet reserves its network address and, in IPv4 subnets larger than
//! /31, its broadcast address; its gateway is the given one or else the first free address of
//! its range. Addresses are handed out serially: the first free one after the last handed out in
//! that subnet, wrapping around, so a released address is not reused at once. Used addresses are
//! kept as runs of numbers, so thousands of them in a /16 cost a few entries.
//!
//! Addresses are strings in the CIDR form SwarmKit stores (`10.0.0.3/24`, the subnet's length);
//! requested ones may be written with or without a length. Node-local networks (`bridge`,
//! `host`, `macvlan`, `ipvlan`) are not IPAM-managed: they get an empty IPAM state, as in SwarmKit.

mod intervals;
mod prefix;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use intervals::Intervals;
use prefix::{Family, Prefix, parse_ip};

use crate::networks::is_node_local;

/// The IPAM driver swarmd has (libnetwork's built-in one); no other needs no plugin.
pub const DEFAULT_IPAM_DRIVER: &str = "default";

/// The default address pool of a cluster that names none (libnetwork's global scope default).
pub const DEFAULT_ADDRESS_POOL: &str = "10.0.0.0/8";

/// The length of the subnets cut from the default address pool when the cluster names none.
pub const DEFAULT_SUBNET_SIZE: u32 = 24;

/// The most subnets one default pool may be cut into (a /8 in /32s).
const MAX_SUBNETS_PER_POOL_BITS: u8 = 24;

/// `IPAMConfig.AddressFamily` IPV4.
const FAMILY_IPV4: i32 = api::ipam_config::AddressFamily::Ipv4 as i32;
const FAMILY_IPV6: i32 = api::ipam_config::AddressFamily::Ipv6 as i32;

/// The config family of addresses of `family`.
fn family_number(family: Family) -> i32 {
    match family {
        Family::V4 => FAMILY_IPV4,
        Family::V6 => FAMILY_IPV6,
    }
}

/// Why an IPAM request failed. The texts name the value at fault; SwarmKit's words where it has
/// them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// A default address pool that is no subnet.
    #[error("invalid base pool {pool:?}")]
    InvalidBasePool {
        /// The pool as written.
        pool: String,
    },
    /// A default address pool of IPv6: the default pool only serves IPv4 subnets.
    #[error("default address pool {pool} is not IPv4")]
    Ipv6BasePool {
        /// The pool as written.
        pool: String,
    },
    /// A subnet size the default address pool cannot be cut into.
    #[error("invalid pools size: default address pool {pool} cannot be cut into /{size} subnets")]
    InvalidSubnetSize {
        /// The pool as written.
        pool: String,
        /// The subnet size.
        size: u32,
    },
    /// An IPAM driver other than `default`.
    #[error("could not resolve IPAM driver {name}")]
    UnknownDriver {
        /// The driver's name.
        name: String,
    },
    /// An IPv6 config without a subnet: the default pool is IPv4 only.
    #[error("an IPv6 configuration needs a subnet")]
    Ipv6NeedsSubnet,
    /// A config whose family is not that of its subnet.
    #[error("subnet {subnet} is not {family}")]
    FamilyMismatch {
        /// The subnet as written.
        subnet: String,
        /// The family the config names.
        family: &'static str,
    },
    /// A subnet that does not parse.
    #[error("invalid subnet {subnet}")]
    InvalidSubnet {
        /// The subnet as written.
        subnet: String,
    },
    /// A range that does not parse.
    #[error("invalid range {range}")]
    InvalidRange {
        /// The range as written.
        range: String,
    },
    /// A gateway that does not parse.
    #[error("invalid gateway {gateway}")]
    InvalidGateway {
        /// The gateway as written.
        gateway: String,
    },
    /// A range not inside its subnet.
    #[error("subnet {subnet} does not contain range {range}")]
    RangeOutsideSubnet {
        /// The subnet as written.
        subnet: String,
        /// The range as written.
        range: String,
    },
    /// A gateway outside its subnet.
    #[error("subnet {subnet} does not contain gateway {gateway}")]
    GatewayOutsideSubnet {
        /// The subnet as written.
        subnet: String,
        /// The gateway as written.
        gateway: String,
    },
    /// A gateway on the network or broadcast address of its subnet.
    #[error("gateway {gateway} is the network or broadcast address of subnet {subnet}")]
    GatewayReserved {
        /// The subnet as written.
        subnet: String,
        /// The gateway as written.
        gateway: String,
    },
    /// A subnet that shares addresses with another network's subnet.
    #[error("subnet {subnet} overlaps with subnet {other} of network {network_id}")]
    SubnetOverlap {
        /// The subnet as written.
        subnet: String,
        /// The allocated subnet it overlaps.
        other: String,
        /// The network holding `other` (empty for another subnet of the same network).
        network_id: String,
    },
    /// No subnet of the default pool is free.
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    PoolExhausted,
    /// A subnet with no address left for its gateway.
    #[error("no available address for the gateway of subnet {subnet}")]
    NoGatewayAddress {
        /// The subnet.
        subnet: String,
    },
    /// An IPAM operation on a network it does not know (never allocated, or released).
    #[error("network {network_id} has no IPAM state")]
    NetworkNotAllocated {
        /// The network's ID.
        network_id: String,
    },
    /// A network allocated twice.
    #[error("network {network_id} already allocated")]
    NetworkAlreadyAllocated {
        /// The network's ID.
        network_id: String,
    },
    /// An address that does not parse.
    #[error("could not parse address string {address}")]
    InvalidAddress {
        /// The address as written.
        address: String,
    },
    /// A requested address in none of the network's subnets.
    #[error("requested address {address} is out of range of network {network_id}")]
    AddressOutOfRange {
        /// The address as written.
        address: String,
        /// The network's ID.
        network_id: String,
    },
    /// A requested address already handed out.
    #[error("address {address} is already in use on network {network_id}")]
    AddressInUse {
        /// The address as written.
        address: String,
        /// The network's ID.
        network_id: String,
    },
    /// A requested address that is a subnet's network, broadcast or gateway address.
    #[error("address {address} is reserved on network {network_id}")]
    AddressReserved {
        /// The address as written.
        address: String,
        /// The network's ID.
        network_id: String,
    },
    /// Every address of the network's subnets (their ranges) is in use.
    #[error("could not find an available IP on network {network_id}")]
    NoAvailableAddress {
        /// The network's ID.
        network_id: String,
    },
}

/// The default address pool: the subnets networks without a subnet of their own get (the
/// cluster's `defaultAddressPool` and `subnetSize`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    bases: Vec<Prefix>,
    /// Index of each base's first subnet among all subnets of the pool.
    starts: Vec<u64>,
    subnet_size: u8,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig::new(&[DEFAULT_ADDRESS_POOL.to_string()], DEFAULT_SUBNET_SIZE)
            .expect("the built-in default address pool is valid")
    }
}

impl PoolConfig {
    /// The pool made of `pools` (CIDR subnets, IPv4) cut into `/subnet_size` subnets (0: 24).
    pub fn new(pools: &[String], subnet_size: u32) -> Result<PoolConfig, IpamError> {
        let size = if subnet_size == 0 {
            DEFAULT_SUBNET_SIZE
        } else {
            subnet_size
        };
        let mut bases = Vec::new();
        let mut starts = Vec::new();
        let mut total = 0u64;
        for pool in pools {
            let Some((_, base)) = Prefix::parse_cidr(pool) else {
                return Err(IpamError::InvalidBasePool { pool: pool.clone() });
            };
            if base.family != Family::V4 {
                return Err(IpamError::Ipv6BasePool { pool: pool.clone() });
            }
            let fits = u8::try_from(size)
                .ok()
                .filter(|&s| s <= 32 && s >= base.len && s - base.len <= MAX_SUBNETS_PER_POOL_BITS);
            let Some(size) = fits else {
                return Err(IpamError::InvalidSubnetSize {
                    pool: pool.clone(),
                    size,
                });
            };
            starts.push(total);
            total += 1u64 << (size - base.len);
            bases.push(base);
        }
        if bases.is_empty() {
            return Err(IpamError::InvalidBasePool {
                pool: String::new(),
            });
        }
        Ok(PoolConfig {
            bases,
            starts,
            subnet_size: size as u8,
        })
    }

    /// The cluster's pool: its `defaultAddressPool` and `subnetSize`, the built-in default when
    /// it names no pool.
    pub fn from_cluster(cluster: &api::Cluster) -> Result<PoolConfig, IpamError> {
        if cluster.default_address_pool.is_empty() {
            return Ok(PoolConfig::default());
        }
        PoolConfig::new(&cluster.default_address_pool, cluster.subnet_size)
    }

    /// The base subnets, as CIDR strings.
    pub fn pools(&self) -> Vec<String> {
        self.bases.iter().map(Prefix::to_string).collect()
    }

    /// The length of the subnets handed out.
    pub fn subnet_size(&self) -> u32 {
        u32::from(self.subnet_size)
    }

    fn len(&self) -> u64 {
        let last = self.bases.len() - 1;
        self.starts[last] + (1u64 << (self.subnet_size - self.bases[last].len))
    }

    /// The base holding the subnet of index `i` and `i`'s index within it.
    fn locate(&self, i: u64) -> (usize, u64) {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        (b, i - self.starts[b])
    }

    fn subnet(&self, i: u64) -> Prefix {
        let (b, within) = self.locate(i);
        let base = self.bases[b];
        Prefix {
            first: base.first + (u128::from(within) << (32 - self.subnet_size)),
            len: self.subnet_size,
            ..base
        }
    }

    /// The index of the first subnet after the one holding `number` in the base of subnet `i`
    /// (the end of that base when `number` lies beyond it).
    fn index_after(&self, i: u64, number: u128) -> u64 {
        let (b, _) = self.locate(i);
        let base = self.bases[b];
        let end = self.starts[b] + (1u64 << (self.subnet_size - base.len));
        if number >= base.last() {
            return end;
        }
        let within = (number - base.first) >> (32 - self.subnet_size);
        self.starts[b] + u64::try_from(within).unwrap_or(u64::MAX - self.starts[b]) + 1
    }
}

/// One allocated subnet: its bookkeeping of addresses.
#[derive(Clone, Debug)]
struct Pool {
    prefix: Prefix,
    network_id: String,
    /// Offsets (from the subnet's first address) addresses are handed out from, inclusive: the
    /// IP range, or the whole subnet.
    range: (u128, u128),
    used: Intervals,
    /// Offsets that are never handed out nor released: network, broadcast and gateway.
    reserved: Vec<u128>,
    /// Where the serial search starts: after the last address handed out (0: the range's start).
    next: u128,
}

impl Pool {
    fn new(prefix: Prefix, network_id: &str, range: (u128, u128)) -> Pool {
        let mut pool = Pool {
            prefix,
            network_id: network_id.to_string(),
            range,
            used: Intervals::default(),
            reserved: Vec::new(),
            next: 0,
        };
        let last = prefix.last_offset();
        // libnetwork reserves the network address unless an IPv4 subnet is a /31 or /32, and the
        // broadcast address of IPv4 subnets larger than that.
        if prefix.family == Family::V6 || last > 1 {
            pool.reserve(0);
        }
        if prefix.family == Family::V4 && last > 1 {
            pool.reserve(last);
        }
        pool
    }

    fn reserve(&mut self, offset: u128) {
        self.used.insert(offset);
        self.reserved.push(offset);
    }

    /// The first free offset of the range after the last handed out, wrapping around.
    fn take_serial(&mut self) -> Option<u128> {
        let (start, end) = self.range;
        let from_next = (self.next > start)
            .then(|| self.used.first_free(self.next, end))
            .flatten();
        let offset = from_next.or_else(|| self.used.first_free(start, end))?;
        self.used.insert(offset);
        self.next = offset.wrapping_add(1);
        Some(offset)
    }
}

/// The IPAM state of a cluster: allocated subnets and the addresses in them.
#[derive(Clone, Debug, Default)]
pub struct Ipam {
    pools: PoolConfig,
    /// Index in the default pool where the search for a free subnet starts.
    next_default: u64,
    /// Allocated subnets per family, by first address.
    subnets: [BTreeMap<u128, Pool>; 2],
    /// Network ID -> its subnets, in the order of its IPAM configs.
    networks: BTreeMap<String, Vec<Prefix>>,
    /// Networks an address was freed on since [`Ipam::take_freed`] was last called.
    freed: BTreeSet<String>,
}

/// Whether the network's subnets and addresses are allocated here: overlay networks are, node-local
/// ones (`bridge`, `host`, `macvlan`, `ipvlan`) are not.
pub fn is_ipam_managed(network: &api::Network) -> bool {
    !is_node_local(network)
}

impl Ipam {
    /// An IPAM with nothing allocated over the default pool `pools`.
    pub fn new(pools: PoolConfig) -> Ipam {
        Ipam {
            pools,
            ..Default::default()
        }
    }

    /// The default pool.
    pub fn pool_config(&self) -> &PoolConfig {
        &self.pools
    }

    /// Whether `network_id` holds subnets here.
    pub fn is_allocated(&self, network_id: &str) -> bool {
        self.networks.contains_key(network_id)
    }

    /// Allocates the network's subnets and gateways and returns its IPAM state, for the network's
    /// `ipam` field: the driver (`default` unless the spec names it) and one config per subnet with
    /// its subnet and gateway filled in. The configs are those of the network's IPAM state when it
    /// has one (restoring it), else its spec's, else one IPv4 config served by the default pool.
    /// A node-local network gets an empty state and holds nothing. On error nothing is held.
    pub fn allocate_network(
        &mut self,
        network: &api::Network,
    ) -> Result<api::IpamOptions, IpamError> {
        if !is_ipam_managed(network) {
            return Ok(api::IpamOptions {
                driver: Some(api::Driver::default()),
                configs: Vec::new(),
            });
        }
        if self.is_allocated(&network.id) {
            return Err(IpamError::NetworkAlreadyAllocated {
                network_id: network.id.clone(),
            });
        }
        let spec_ipam = network.spec.as_ref().and_then(|s| s.ipam.as_ref());
        let driver = spec_ipam.and_then(|i| i.driver.as_ref());
        let name = driver
            .map(|d| d.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_IPAM_DRIVER);
        if !name.eq_ignore_ascii_case(DEFAULT_IPAM_DRIVER) {
            return Err(IpamError::UnknownDriver {
                name: name.to_string(),
            });
        }
        let mut configs = match &network.ipam {
            Some(ipam) => ipam.configs.clone(),
            None => spec_ipam.map(|i| i.configs.clone()).unwrap_or_default(),
        };
        if configs.is_empty() {
            configs.push(api::IpamConfig {
                family: FAMILY_IPV4,
                ..Default::default()
            });
        }
        let mut held = Vec::new();
        for config in &mut configs {
            match self.allocate_subnet(&network.id, config) {
                Ok(prefix) => held.push(prefix),
                Err(e) => {
                    for prefix in held {
                        self.subnets[prefix.family.index()].remove(&prefix.first);
                    }
                    return Err(e);
                }
            }
        }
        self.networks.insert(network.id.clone(), held);
        Ok(api::IpamOptions {
            driver: Some(api::Driver {
                name: name.to_string(),
                options: driver.map(|d| d.options.clone()).unwrap_or_default(),
            }),
            configs,
        })
    }

    /// Takes the subnet of one config (the user's, or one of the default pool) with its range and
    /// gateway, and fills in the config's subnet and gateway.
    fn allocate_subnet(
        &mut self,
        network_id: &str,
        config: &mut api::IpamConfig,
    ) -> Result<Prefix, IpamError> {
        let prefix = if config.subnet.is_empty() {
            self.free_default_subnet()?
        } else {
            let Some((_, prefix)) = Prefix::parse_cidr(&config.subnet) else {
                return Err(IpamError::InvalidSubnet {
                    subnet: config.subnet.clone(),
                });
            };
            if let Some(other) = self.overlapping(&prefix) {
                return Err(IpamError::SubnetOverlap {
                    subnet: config.subnet.clone(),
                    other: other.prefix.to_string(),
                    network_id: other.network_id.clone(),
                });
            }
            prefix
        };
        let subnet_text = || {
            if config.subnet.is_empty() {
                prefix.to_string()
            } else {
                config.subnet.clone()
            }
        };
        let range = if config.range.is_empty() {
            (0, prefix.last_offset())
        } else {
            let Some((_, range)) = Prefix::parse_cidr(&config.range) else {
                return Err(IpamError::InvalidRange {
                    range: config.range.clone(),
                });
            };
            if range.len < prefix.len || !prefix.contains(range.family, range.first) {
                return Err(IpamError::RangeOutsideSubnet {
                    subnet: subnet_text(),
                    range: config.range.clone(),
                });
            }
            (range.first - prefix.first, range.last() - prefix.first)
        };
        let mut pool = Pool::new(prefix, network_id, range);
        if config.gateway.is_empty() {
            let Some(offset) = pool.take_serial() else {
                return Err(IpamError::NoGatewayAddress {
                    subnet: subnet_text(),
                });
            };
            pool.reserved.push(offset);
            config.gateway = prefix::to_ip(prefix.family, prefix.first + offset).to_string();
        } else {
            let Some((family, number)) = parse_ip(&config.gateway) else {
                return Err(IpamError::InvalidGateway {
                    gateway: config.gateway.clone(),
                });
            };
            if !prefix.contains(family, number) {
                return Err(IpamError::GatewayOutsideSubnet {
                    subnet: subnet_text(),
                    gateway: config.gateway.clone(),
                });
            }
            let offset = number - prefix.first;
            if pool.used.contains(offset) {
                return Err(IpamError::GatewayReserved {
                    subnet: subnet_text(),
                    gateway: config.gateway.clone(),
                });
            }
            pool.reserve(offset);
        }
        if config.subnet.is_empty() {
            config.subnet = prefix.to_string();
        }
        // The family is that of the subnet, whatever the config named.
        config.family = family_number(prefix.family);
        self.subnets[prefix.family.index()].insert(prefix.first, pool);
        Ok(prefix)
    }

    /// The allocated subnet sharing addresses with `prefix`, if any.
    fn overlapping(&self, prefix: &Prefix) -> Option<&Pool> {
        self.subnets[prefix.family.index()]
            .range(..=prefix.last())
            .next_back()
            .map(|(_, pool)| pool)
            .filter(|pool| pool.prefix.overlaps(prefix))
    }

    /// The first subnet of the default pool overlapping no allocated one, from the one after the
    /// last handed out, wrapping around (libnetwork's `allocatePredefinedPool`).
    fn free_default_subnet(&mut self) -> Result<Prefix, IpamError> {
        let total = self.pools.len();
        let start = self.next_default.min(total);
        for (from, to) in [(start, total), (0, start)] {
            let mut i = from;
            while i < to {
                let candidate = self.pools.subnet(i);
                match self.overlapping(&candidate) {
                    None => {
                        self.next_default = if i + 1 >= total { 0 } else { i + 1 };
                        return Ok(candidate);
                    }
                    // Skip every candidate the allocated subnet covers.
                    Some(pool) => i = self.pools.index_after(i, pool.prefix.last()).max(i + 1),
                }
            }
        }
        Err(IpamError::PoolExhausted)
    }

    /// Rebuilds what a stored network holds from its IPAM state (`network.ipam`), so that no
    /// subnet or gateway is handed out twice. A node-local network holds nothing.
    pub fn restore_network(&mut self, network: &api::Network) -> Result<(), IpamError> {
        if is_ipam_managed(network) && network.ipam.is_none() {
            return Err(IpamError::NetworkNotAllocated {
                network_id: network.id.clone(),
            });
        }
        self.allocate_network(network).map(|_| ())
    }

    /// Frees the network's subnets and every address in them; false if it held none.
    pub fn release_network(&mut self, network_id: &str) -> bool {
        let Some(prefixes) = self.networks.remove(network_id) else {
            return false;
        };
        for prefix in prefixes {
            self.subnets[prefix.family.index()].remove(&prefix.first);
        }
        true
    }

    /// The pools of a network, in the order of its configs.
    fn pools_of(&self, network_id: &str) -> Result<Vec<Prefix>, IpamError> {
        self.networks
            .get(network_id)
            .cloned()
            .ok_or_else(|| IpamError::NetworkNotAllocated {
                network_id: network_id.to_string(),
            })
    }

    fn pool_mut(&mut self, prefix: &Prefix) -> &mut Pool {
        self.subnets[prefix.family.index()]
            .get_mut(&prefix.first)
            .expect("a network's subnets are in the subnet table")
    }

    /// Hands out an address of the network, in CIDR form (`10.0.0.3/24`): `requested` if given
    /// (with or without a length; in any subnet of the network, inside or outside its range),
    /// else the next free one of the first subnet with one left (serially, in its range).
    pub fn allocate_address(
        &mut self,
        network_id: &str,
        requested: Option<&str>,
    ) -> Result<String, IpamError> {
        let prefixes = self.pools_of(network_id)?;
        if let Some(address) = requested {
            let (prefix, offset) = self.locate_address(network_id, &prefixes, address)?;
            let pool = self.pool_mut(&prefix);
            if pool.reserved.contains(&offset) {
                return Err(IpamError::AddressReserved {
                    address: address.to_string(),
                    network_id: network_id.to_string(),
                });
            }
            if !pool.used.insert(offset) {
                return Err(IpamError::AddressInUse {
                    address: address.to_string(),
                    network_id: network_id.to_string(),
                });
            }
            return Ok(prefix.address_cidr(offset));
        }
        for prefix in prefixes {
            if let Some(offset) = self.pool_mut(&prefix).take_serial() {
                return Ok(prefix.address_cidr(offset));
            }
        }
        Err(IpamError::NoAvailableAddress {
            network_id: network_id.to_string(),
        })
    }

    /// Marks a stored address of the network as used (restoring an allocation); fails as
    /// [`Ipam::allocate_address`] does for a requested address.
    pub fn reserve_address(&mut self, network_id: &str, address: &str) -> Result<(), IpamError> {
        self.allocate_address(network_id, Some(address)).map(|_| ())
    }

    /// Frees an address handed out on the network; false if the network does not hold it (or it
    /// is a network, broadcast or gateway address, which are never freed).
    pub fn release_address(&mut self, network_id: &str, address: &str) -> bool {
        let Ok(prefixes) = self.pools_of(network_id) else {
            return false;
        };
        let Ok((prefix, offset)) = self.locate_address(network_id, &prefixes, address) else {
            return false;
        };
        let pool = self.pool_mut(&prefix);
        let freed = !pool.reserved.contains(&offset) && pool.used.remove(offset);
        if freed {
            self.freed.insert(network_id.to_string());
        }
        freed
    }

    /// The networks an address was freed on since the last call.
    pub fn take_freed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.freed)
    }

    /// The subnet of the network holding `address` and the address's offset in it.
    fn locate_address(
        &self,
        network_id: &str,
        prefixes: &[Prefix],
        address: &str,
    ) -> Result<(Prefix, u128), IpamError> {
        let parsed = match Prefix::parse_cidr(address) {
            Some((number, p)) => Some((p.family, number)),
            None => parse_ip(address),
        };
        let Some((family, number)) = parsed else {
            return Err(IpamError::InvalidAddress {
                address: address.to_string(),
            });
        };
        prefixes
            .iter()
            .find(|p| p.contains(family, number))
            .map(|p| (*p, number - p.first))
            .ok_or_else(|| IpamError::AddressOutOfRange {
                address: address.to_string(),
                network_id: network_id.to_string(),
            })
    }
}

/// Whether `network` can be allocated next to the networks already stored: a pure check for the
/// control API, on an IPAM rebuilt from `existing` (their IPAM states, then the subnets the
/// unallocated ones ask for, then default subnets for the others, as the allocator will give
/// them) over the cluster's pool. Fails as [`Ipam::allocate_network`] would for `network`.
pub fn check_network(
    pools: &PoolConfig,
    existing: &[api::Network],
    network: &api::Network,
) -> Result<(), IpamError> {
    let configs = network
        .spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .map(|i| i.configs.as_slice())
        .unwrap_or_default();
    for config in configs {
        check_family(config)?;
    }
    let mut ipam = Ipam::new(pools.clone());
    let managed = || existing.iter().filter(|n| is_ipam_managed(n));
    for n in managed().filter(|n| n.ipam.is_some()) {
        // A stored network that cannot be restored holds nothing in the allocator either.
        let _ = ipam.allocate_network(n);
    }
    let asks_subnet = |n: &api::Network| {
        n.spec
            .as_ref()
            .and_then(|s| s.ipam.as_ref())
            .is_some_and(|i| i.configs.iter().any(|c| !c.subnet.is_empty()))
    };
    for n in managed().filter(|n| n.ipam.is_none() && asks_subnet(n)) {
        let _ = ipam.allocate_network(n);
    }
    for n in managed().filter(|n| n.ipam.is_none() && !asks_subnet(n)) {
        let _ = ipam.allocate_network(n);
    }
    ipam.allocate_network(network).map(|_| ())
}

/// Refuses an IPv6 config without a subnet (default subnets are IPv4) and a config naming a family
/// its subnet is not of; an unset family takes the subnet's.
fn check_family(config: &api::IpamConfig) -> Result<(), IpamError> {
    if config.subnet.is_empty() {
        return if config.family == FAMILY_IPV6 {
            Err(IpamError::Ipv6NeedsSubnet)
        } else {
            Ok(())
        };
    }
    let Some((_, prefix)) = Prefix::parse_cidr(&config.subnet) else {
        return Err(IpamError::InvalidSubnet {
            subnet: config.subnet.clone(),
        });
    };
    let family = match config.family {
        FAMILY_IPV4 => Family::V4,
        FAMILY_IPV6 => Family::V6,
        _ => return Ok(()),
    };
    if family == prefix.family {
        return Ok(());
    }
    Err(IpamError::FamilyMismatch {
        subnet: config.subnet.clone(),
        family: match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        },
    })
}
