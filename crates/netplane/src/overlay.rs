//! One swarm network on this node: a bridge `swbr-<vni>` carrying the subnets' gateways and the
//! node's attachment address, and a VXLAN device `swvx-<vni>` enslaved to it (no learning, ARP
//! answered from its neighbour entries, no flooding, zero outer UDP checksums). For every remote
//! address (another node's attachment, a task on another node) it holds a neighbour entry
//! (IP -> MAC) and a forwarding entry (MAC -> that node's data path address). MACs are derived
//! from the IPs ([`mac_of`]), so the view needs to carry only addresses.
//!
//! An encrypted network's VXLAN device uses the encrypted VXLAN port, which a routing rule sends
//! into the node's WireGuard tunnel ([`crate::tunnel`]), and a smaller MTU
//! ([`ENCRYPTED_OVERLAY_MTU`]) leaving room for WireGuard's headers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkBridge, LinkVxlan};

use crate::netlink::{self, kernel, to_io};
use crate::{Error, NetworkView};

/// MTU inside the overlay: a 1500-byte underlay less VXLAN's 50 bytes of headers.
pub const OVERLAY_MTU: u32 = 1450;

/// MTU inside an encrypted overlay: the tunnel's MTU less VXLAN's 50 bytes of headers.
pub const ENCRYPTED_OVERLAY_MTU: u32 = crate::tunnel::TUNNEL_MTU - 50;

/// The bridge of the network with VXLAN ID `vni`.
pub fn bridge_name(vni: u32) -> String {
    format!("swbr-{vni}")
}

/// The VXLAN device of the network with VXLAN ID `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("swvx-{vni}")
}

/// The MAC of an overlay address: 02:42 and the address's four bytes, the same on every node.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// An IPv4 address with its prefix length, as "10.0.1.5/24".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The address with its host bits cleared: the subnet's own address.
    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.addr) & mask)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is no IPv4 address"))?;
        let prefix = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} has no valid prefix length"))?;
        Ok(Cidr { addr, prefix })
    }
}

/// What it takes to make a network's devices: its ID, VNI and gateways (with their subnets'
/// prefix lengths), and whether its traffic between nodes goes through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub id: String,
    pub vni: u32,
    pub gateways: Vec<Cidr>,
    pub encrypted: bool,
}

/// The option of a network's driver state listing its VXLAN IDs.
const VXLAN_ID_LIST: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// Gateway `gateway` with the prefix length of `subnet`.
fn gateway(subnet: &str, gateway: &str) -> Result<Cidr, String> {
    let subnet: Cidr = subnet.parse()?;
    let addr = gateway
        .parse()
        .map_err(|_| format!("gateway {gateway:?} is no IPv4 address"))?;
    Ok(Cidr {
        addr,
        prefix: subnet.prefix,
    })
}

impl NetSpec {
    /// From the leader's view of the network.
    pub fn from_view(n: &NetworkView) -> Result<NetSpec, String> {
        let gateways = n
            .subnets
            .iter()
            .filter(|s| !s.gateway.is_empty())
            .map(|s| gateway(&s.cidr, &s.gateway))
            .collect::<Result<_, String>>()?;
        if n.vni == 0 {
            return Err(format!("network {} has no VXLAN ID", n.name));
        }
        Ok(NetSpec {
            id: n.id.clone(),
            vni: n.vni,
            gateways,
            encrypted: n.encrypted,
        })
    }

    /// The MTU of the network's devices and its tasks' interfaces.
    pub fn mtu(&self) -> u32 {
        if self.encrypted {
            ENCRYPTED_OVERLAY_MTU
        } else {
            OVERLAY_MTU
        }
    }

    /// From the network object a task's attachment carries (its driver state's first VXLAN ID,
    /// its IPAM configs' subnets and gateways, the `encrypted` option of its spec's driver or of
    /// its driver state).
    pub fn from_network(n: &api::Network) -> Result<NetSpec, String> {
        let name = n
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map_or(n.id.as_str(), |a| a.name.as_str());
        let vni = n
            .driver_state
            .as_ref()
            .and_then(|d| d.options.get(VXLAN_ID_LIST))
            .and_then(|list| list.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .filter(|v| *v != 0)
            .ok_or_else(|| format!("network {name} has no VXLAN ID allocated"))?;
        let gateways = n
            .ipam
            .iter()
            .flat_map(|i| &i.configs)
            .filter(|c| !c.gateway.is_empty() && !c.subnet.contains(':'))
            .map(|c| gateway(&c.subnet, &c.gateway))
            .collect::<Result<_, String>>()?;
        let encrypted = n.encrypted();
        Ok(NetSpec {
            id: n.id.clone(),
            vni,
            gateways,
            encrypted,
        })
    }
}

/// The remote addresses of `view` a node must reach through the VXLAN: overlay IP -> the data
/// path address of the node holding it (other nodes' attachment addresses, and tasks on nodes
/// listed as peers; an endpoint of a node not listed is this node's own or one whose data path
/// address is not known yet).
pub fn remote_entries(view: &NetworkView) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
    let mut peers = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in &view.peers {
        let Ok(underlay) = p.data_path_addr.parse::<Ipv4Addr>() else {
            continue;
        };
        peers.insert(p.node_id.as_str(), underlay);
        if let Ok(addr) = p.node_addr.parse::<Cidr>() {
            out.insert(addr.addr, underlay);
        }
    }
    for e in &view.endpoints {
        if let (Some(underlay), Ok(addr)) = (peers.get(e.node_id.as_str()), e.addr.parse::<Cidr>())
        {
            out.insert(addr.addr, *underlay);
        }
    }
    out
}

/// A network's devices on this node and the entries installed on its VXLAN device.
#[derive(Debug)]
pub struct Overlay {
    pub spec: NetSpec,
    pub bridge: u32,
    pub vxlan: u32,
    /// Overlay IP -> data path address of its node, as installed.
    entries: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The node's own attachment address, as put on the bridge.
    node_addr: Option<Cidr>,
}

impl Overlay {
    /// Makes (or takes as they are) the network's bridge and VXLAN device, up, with the gateways
    /// on the bridge. `local`: the data path address VXLAN packets leave from, if known. On an
    /// error neither device is left behind.
    pub async fn ensure(
        nl: &Handle,
        spec: &NetSpec,
        local: Option<IpAddr>,
        port: u16,
    ) -> Result<Overlay, Error> {
        let made = Self::make(nl, spec, local, port).await;
        if made.is_err() {
            for name in [vxlan_name(spec.vni), bridge_name(spec.vni)] {
                if let Ok(Some(idx)) = netlink::link_index(nl, &name).await {
                    let _ = netlink::del_link(nl, idx, &name).await;
                }
            }
        }
        made
    }

    async fn make(
        nl: &Handle,
        spec: &NetSpec,
        local: Option<IpAddr>,
        port: u16,
    ) -> Result<Overlay, Error> {
        let br_name = bridge_name(spec.vni);
        let vx_name = vxlan_name(spec.vni);
        let bridge = netlink::add_link(
            nl,
            LinkBridge::new(&br_name).mtu(spec.mtu()).build(),
            &br_name,
        )
        .await?;
        // Outer UDP checksums zero, as RFC 7348 asks for over IPv4 (and Docker's overlay
        // sends): the tunnel's GSO packets stay plain `udp_tnl` ones, which NICs without
        // `tx-udp_tnl-csum-segmentation` still segment in hardware, and neither end computes
        // or checks a checksum the inner TCP/UDP checksum already covers. The kernel's
        // default (without the attribute) is a checksum.
        let mut vxlan = LinkVxlan::new(&vx_name, spec.vni)
            .port(port)
            .learning(false)
            .proxy(true)
            .udp_csum(false)
            .mtu(spec.mtu());
        if let Some(IpAddr::V4(local)) = local {
            vxlan = vxlan.local(local);
        }
        let vxlan = netlink::add_link(nl, vxlan.build(), &vx_name).await?;
        netlink::set_link(
            nl,
            netlink::change(vxlan).controller(bridge).up().build(),
            &format!("attaching {vx_name} to {br_name}"),
        )
        .await?;
        netlink::set_link(
            nl,
            netlink::change(bridge).up().build(),
            &format!("setting {br_name} up"),
        )
        .await?;
        for gw in &spec.gateways {
            netlink::add_addr(nl, bridge, gw.addr, gw.prefix, &br_name).await?;
        }
        Ok(Overlay {
            spec: spec.clone(),
            bridge,
            vxlan,
            entries: BTreeMap::new(),
            node_addr: None,
        })
    }

    /// Puts the node's attachment address on the bridge (as a /32), once known.
    pub async fn set_node_addr(&mut self, nl: &Handle, addr: Option<Cidr>) -> Result<(), Error> {
        let Some(addr) = addr else {
            return Ok(());
        };
        if self.node_addr == Some(addr) {
            return Ok(());
        }
        netlink::add_addr(nl, self.bridge, addr.addr, 32, &bridge_name(self.spec.vni)).await?;
        self.node_addr = Some(addr);
        Ok(())
    }

    /// Makes the VXLAN device's entries those of `wanted` (overlay IP -> data path address).
    pub async fn sync(
        &mut self,
        nl: &Handle,
        wanted: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    ) -> Result<(), Error> {
        let gone: Vec<_> = self
            .entries
            .iter()
            .filter(|(ip, under)| wanted.get(ip) != Some(under))
            .map(|(ip, under)| (*ip, *under))
            .collect();
        for (ip, under) in gone {
            self.del_entry(nl, ip, under).await?;
            self.entries.remove(&ip);
        }
        for (ip, under) in wanted {
            if self.entries.get(ip) == Some(under) {
                continue;
            }
            self.add_entry(nl, *ip, *under).await?;
            self.entries.insert(*ip, *under);
        }
        Ok(())
    }

    async fn add_entry(&self, nl: &Handle, ip: Ipv4Addr, under: Ipv4Addr) -> Result<(), Error> {
        let mac = mac_of(ip);
        nl.neighbours()
            .add_bridge(self.vxlan, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(under))
            .replace()
            .execute()
            .await
            .map_err(|e| kernel(format!("forwarding entry {ip} -> {under}"))(to_io(e)))?;
        nl.neighbours()
            .add(self.vxlan, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel(format!("neighbour entry {ip}"))(to_io(e)))
    }

    async fn del_entry(&self, nl: &Handle, ip: Ipv4Addr, under: Ipv4Addr) -> Result<(), Error> {
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.header.ifindex = self.vxlan;
        fdb.header.flags = NeighbourFlags::Own;
        fdb.header.state = NeighbourState::Permanent;
        fdb.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac_of(ip).to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(under)),
        ];
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        neigh.header.ifindex = self.vxlan;
        neigh.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
        for (msg, what) in [(fdb, "forwarding"), (neigh, "neighbour")] {
            match nl.neighbours().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m))
                    if m.raw_code().abs() == nix::libc::ENOENT => {}
                Err(e) => {
                    return Err(kernel(format!("removing the {what} entry of {ip}"))(to_io(
                        e,
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes both devices (their entries and addresses go with them).
    pub async fn remove(self, nl: &Handle) -> Result<(), Error> {
        netlink::del_link(nl, self.vxlan, &vxlan_name(self.spec.vni)).await?;
        netlink::del_link(nl, self.bridge, &bridge_name(self.spec.vni)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::netplane::{Endpoint, Peer};

    #[test]
    fn a_cidrs_network_clears_its_host_bits() {
        let network = |s: &str| s.parse::<Cidr>().expect("cidr").network().to_string();
        assert_eq!(network("10.233.7.5/24"), "10.233.7.0");
        assert_eq!(network("10.233.7.5/20"), "10.233.0.0");
        assert_eq!(network("10.233.7.5/32"), "10.233.7.5");
        assert_eq!(network("10.233.7.5/0"), "0.0.0.0");
    }

    #[test]
    fn remote_entries_cover_peers_and_their_tasks_only() {
        let view = NetworkView {
            peers: vec![
                Peer {
                    node_id: "b".into(),
                    data_path_addr: "192.168.5.2".into(),
                    node_addr: "10.0.1.3/24".into(),
                    ..Default::default()
                },
                Peer {
                    node_id: "c".into(),
                    data_path_addr: String::new(),
                    node_addr: "10.0.1.4/24".into(),
                    ..Default::default()
                },
            ],
            endpoints: vec![
                Endpoint {
                    node_id: "a".into(),
                    addr: "10.0.1.7/24".into(),
                    ..Default::default()
                },
                Endpoint {
                    node_id: "b".into(),
                    addr: "10.0.1.8/24".into(),
                    ..Default::default()
                },
                Endpoint {
                    node_id: "c".into(),
                    addr: "10.0.1.9/24".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let b: Ipv4Addr = "192.168.5.2".parse().unwrap();
        let want = BTreeMap::from([
            ("10.0.1.3".parse().unwrap(), b),
            ("10.0.1.8".parse().unwrap(), b),
        ]);
        assert_eq!(remote_entries(&view), want);
    }

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(
            mac_of(Ipv4Addr::new(10, 0, 1, 7)),
            [0x02, 0x42, 10, 0, 1, 7]
        );
        assert_eq!(
            "10.0.1.7/24".parse::<Cidr>(),
            Ok(Cidr {
                addr: Ipv4Addr::new(10, 0, 1, 7),
                prefix: 24
            })
        );
        assert!("10.0.1.7/33".parse::<Cidr>().is_err());
    }
}
