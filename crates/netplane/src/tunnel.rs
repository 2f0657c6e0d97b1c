//! The node's WireGuard tunnel for encrypted networks, in userspace: a TUN device `swwg-<port>`
//! and a UDP socket on the WireGuard port, with Cloudflare's boringtun doing the Noise IK
//! handshakes and the ChaCha20-Poly1305 sealing of each packet (the kernel here may have neither
//! a WireGuard module nor XFRM's ESP).
//!
//! An encrypted network's VXLAN device sends to the other nodes' data path addresses, as a plain
//! one does, but on a UDP port of its own ([`crate::Config::encrypted_vxlan_port`]). A routing
//! rule sends UDP to that port through a table whose only route is the TUN device, so those
//! VXLAN packets (the whole IPv4 packet: outer header, VXLAN header, the task's frame) reach
//! swarmd instead of the wire. swarmd seals each one for the peer its destination names and sends
//! it from the WireGuard port to that peer's WireGuard port. The peer opens it and writes it
//! into its own TUN device, where the kernel takes it as arriving from the sender and hands it to
//! its VXLAN socket. A packet for a node without a key, one that fails to open, or one opened
//! that is not the sending peer's VXLAN packet is dropped and counted: nothing of an encrypted
//! network ever goes out in clear.
//!
//! Keys: each node makes a static X25519 key pair when its data plane starts, kept in memory
//! only (a restart makes a new one), and announces the public half on its network plane stream;
//! the leader lists each peer's public key in the views (proto/netplane.proto).
//!
//! The encrypted VXLAN port must not take packets from the wire either: an nftables table
//! `swarmd-wg-<port>` drops UDP to it that did not come out of the TUN device, so nobody on the
//! underlay can slip a frame into an encrypted network in clear; and it drops UDP to it leaving
//! by any other device, so that should the rules go (removed by hand, or by a second swarmd in
//! the same namespace) those packets are lost rather than sent in clear. A data plane removes an
//! earlier run's rules and table only once it holds the TUN device, which a live process would
//! still hold.
//!
//! The TUN device goes with the process (it is not persistent); the rule, its table and the
//! nftables table are removed by [`Tunnel::remove`] and, after a crash, by [`remove_leftovers`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use tokio::task::JoinHandle;

use crate::Error;
use crate::netlink::{self, kernel, to_io};

/// WireGuard's usual port, which every node uses.
pub const WIREGUARD_PORT: u16 = 51820;

/// The VXLAN port of encrypted networks' devices: its packets never leave the node as they are.
pub const ENCRYPTED_VXLAN_PORT: u16 = 4788;

/// The TUN device's MTU: a 1500-byte underlay less the outer IPv4 and UDP headers (28 bytes)
/// and WireGuard's data header and tag (32).
pub const TUNNEL_MTU: u32 = 1440;

/// The WireGuard socket's receive and send buffers.
const SOCKET_BUFFER: usize = 8 << 20;

/// How often each peer's handshake and keepalive timers are looked at (boringtun's advice).
const TIMER_TICK: Duration = Duration::from_millis(250);

/// The TUN device of the tunnel on WireGuard port `port`.
pub fn tun_name(port: u16) -> String {
    format!("swwg-{port}")
}

/// The priority of the rule routing the encrypted VXLAN port into the tunnel: before the main
/// table's (32766).
const RULE_PRIORITY: u32 = 30_000;

/// The routing table sending UDP to `vxlan_port` into the tunnel.
fn table_of(vxlan_port: u16) -> u32 {
    0x5357_0000 | u32::from(vxlan_port)
}

/// What the tunnel did, since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    /// Packets sealed and sent to a peer (data, not handshakes).
    pub sealed: u64,
    /// Packets opened and handed to the kernel.
    pub opened: u64,
    /// Packets dropped: no key for their destination, failing to open, or not a peer's VXLAN
    /// packet once opened.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sealed: AtomicU64,
    opened: AtomicU64,
    dropped: AtomicU64,
}

/// One other node: its key and the session with it.
struct PeerTunnel {
    key: [u8; 32],
    endpoint: SocketAddr,
    tunn: Mutex<Tunn>,
}

struct Shared {
    secret: StaticSecret,
    tun: tokio_tun::Tun,
    udp: tokio::net::UdpSocket,
    /// Data path address -> peer.
    peers: RwLock<HashMap<Ipv4Addr, Arc<PeerTunnel>>>,
    next_index: AtomicU32,
    vxlan_port: u16,
    wg_port: u16,
    counters: Counters,
}

impl Shared {
    fn peer(&self, addr: Ipv4Addr) -> Option<Arc<PeerTunnel>> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .cloned()
    }
}

/// The node's tunnel (see the module docs).
pub struct Tunnel {
    public: [u8; 32],
    /// The network namespace it works in (`None`: the process's).
    netns: Option<PathBuf>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("tun", &self.shared.tun.name())
            .field("wireguard_port", &self.shared.wg_port)
            .finish_non_exhaustive()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tunnel {
    /// Makes the TUN device and the WireGuard socket (in the network namespace at `netns`, else
    /// the caller's), the rule and table routing `vxlan_port` into the device, and a fresh key
    /// pair; then starts moving packets. The guard table is replaced in one transaction, never
    /// removed here: VXLAN devices a crashed run left (still bridged to containers that outlived
    /// it) must not send in clear for a moment. On an error nothing else is left behind.
    pub async fn start(
        nl: &Handle,
        netns: Option<&Path>,
        wg_port: u16,
        vxlan_port: u16,
    ) -> Result<Tunnel, Error> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
            |_| kernel("making the WireGuard key")(io::Error::other("no system randomness")),
        )?;
        let secret = StaticSecret::from(key);
        zeroize::Zeroize::zeroize(&mut key);
        let public = PublicKey::from(&secret).to_bytes();
        let runtime = tokio::runtime::Handle::current();
        let name = tun_name(wg_port);
        let open = || -> io::Result<(tokio_tun::Tun, UdpSocket)> {
            let _entered = runtime.enter();
            let tun = tokio_tun::Tun::builder()
                .name(&name)
                .mtu(TUNNEL_MTU as i32)
                .up()
                .build()
                .map_err(|e| io::Error::other(format!("creating TUN device {name}: {e}")))?
                .pop()
                .ok_or_else(|| io::Error::other(format!("creating TUN device {name}")))?;
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, wg_port)).map_err(|e| {
                io::Error::new(e.kind(), format!("binding WireGuard port {wg_port}: {e}"))
            })?;
            udp.set_nonblocking(true)?;
            // Room for bursts while the task opening packets is behind: a full buffer drops
            // datagrams, which TCP inside takes for congestion. Forced past `rmem_max` (swarmd
            // has CAP_NET_ADMIN); a failure only leaves the default.
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&udp, SOCKET_BUFFER);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(&udp, SOCKET_BUFFER);
            Ok((tun, udp))
        };
        let (tun, udp) = match netns {
            Some(path) => netlink::in_netns(path, open),
            None => open(),
        }
        .map_err(kernel("starting the WireGuard tunnel"))?;
        let udp = tokio::net::UdpSocket::from_std(udp)
            .map_err(kernel("registering the WireGuard socket"))?;
        let index = netlink::link_index(nl, &name).await?.ok_or_else(|| {
            kernel(format!("creating TUN device {name}"))(io::Error::other("it vanished at once"))
        })?;
        remove_leftover_rules(nl, vxlan_port).await?;
        set_guard(netns, vxlan_port, Some(name.clone())).await?;
        if let Err(e) = route_into(nl, index, vxlan_port).await {
            // The guard stays: it only drops what would otherwise leave in clear.
            let _ = remove_leftover_rules(nl, vxlan_port).await;
            return Err(e);
        }
        let shared = Arc::new(Shared {
            secret,
            tun,
            udp,
            peers: RwLock::new(HashMap::new()),
            next_index: AtomicU32::new(1),
            vxlan_port,
            wg_port,
            counters: Counters::default(),
        });
        let tasks = vec![
            tokio::spawn(outbound(shared.clone())),
            tokio::spawn(inbound(shared.clone())),
            tokio::spawn(timers(shared.clone())),
        ];
        tracing::info!(tun = %name, wireguard_port = wg_port, "WireGuard tunnel started");
        Ok(Tunnel {
            public,
            netns: netns.map(Path::to_path_buf),
            shared,
            tasks,
        })
    }

    /// The node's public key, to announce.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Makes the peers those of `wanted` (data path address -> public key): a peer whose key
    /// changed starts a new session, one no longer wanted is forgotten.
    pub fn set_peers(&self, wanted: &HashMap<Ipv4Addr, [u8; 32]>) {
        let mut peers = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        peers.retain(|addr, p| wanted.get(addr) == Some(&p.key));
        for (addr, key) in wanted {
            if peers.contains_key(addr) {
                continue;
            }
            let index = self.shared.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            let tunn = Tunn::new(
                self.shared.secret.clone(),
                PublicKey::from(*key),
                None,
                None,
                index,
                None,
            );
            peers.insert(
                *addr,
                Arc::new(PeerTunnel {
                    key: *key,
                    endpoint: SocketAddr::new(IpAddr::V4(*addr), self.shared.wg_port),
                    tunn: Mutex::new(tunn),
                }),
            );
        }
    }

    /// What the tunnel did so far.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.shared.counters;
        TunnelStats {
            sealed: c.sealed.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Stops moving packets and removes the rule (the device goes when the last handle on it
    /// does, with the table's route).
    pub async fn remove(&self, nl: &Handle) -> Result<(), Error> {
        for t in &self.tasks {
            t.abort();
        }
        remove_leftovers(nl, self.netns.as_deref(), self.shared.vxlan_port).await
    }
}

/// The rule sending UDP to `vxlan_port` to its table, and the table's route into link `index`.
async fn route_into(nl: &Handle, index: u32, vxlan_port: u16) -> Result<(), Error> {
    let table = table_of(vxlan_port);
    let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(index)
        .table_id(table)
        .build();
    nl.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| kernel(format!("adding the route of table {table:#x}"))(to_io(e)))?;
    // UDP to the port goes into the tunnel; and UDP from it, which only the reverse-path check
    // of what the tunnel delivers asks about (the kernel swaps the ports for it): under a strict
    // `rp_filter` the delivered packets would be dropped otherwise.
    let range = RulePortRange {
        start: vxlan_port,
        end: vxlan_port,
    };
    for port in [
        RuleAttribute::DestinationPortRange(range),
        RuleAttribute::SourcePortRange(range),
    ] {
        let mut rule = nl
            .rule()
            .add()
            .v4()
            .table_id(table)
            .action(RuleAction::ToTable)
            .priority(RULE_PRIORITY);
        let attributes = &mut rule.message_mut().attributes;
        attributes.push(RuleAttribute::IpProtocol(IpProtocol::Udp));
        attributes.push(port);
        rule.execute().await.map_err(|e| {
            kernel(format!(
                "adding a rule routing UDP port {vxlan_port} into the tunnel"
            ))(to_io(e))
        })?;
    }
    Ok(())
}

/// The nftables table guarding the encrypted VXLAN port `vxlan_port`.
fn guard_table(vxlan_port: u16) -> String {
    format!("swarmd-wg-{vxlan_port}")
}

/// Makes the guard of `vxlan_port` drop UDP to it not coming in on `tun`, and UDP to it going
/// out elsewhere (were the rules gone, encrypted networks' packets would leave in clear), or
/// (`None`) removes it.
async fn set_guard(
    netns: Option<&Path>,
    vxlan_port: u16,
    tun: Option<String>,
) -> Result<(), Error> {
    use crate::lb::nft;
    let name = guard_table(vxlan_port);
    let chain = |name: &str, hook, interface| nft::Chain {
        name: name.into(),
        nat: false,
        hook,
        priority: nft::PRIORITY_FILTER,
        rules: vec![vec![
            nft::Expr::Dport(nft::L4::Udp, vxlan_port),
            interface,
            nft::Expr::Drop,
        ]],
    };
    let content = tun.map(|tun| nft::Table {
        chains: vec![
            chain(
                "in",
                nft::Hook::Input,
                nft::Expr::Iifname(tun.clone(), false),
            ),
            chain("out", nft::Hook::Output, nft::Expr::Oifname(tun, false)),
        ],
        maps: Vec::new(),
    });
    let netns = netns.map(Path::to_path_buf);
    let what = format!("the nftables table {name} guarding UDP port {vxlan_port}");
    tokio::task::spawn_blocking(move || {
        nft::in_netns(netns.as_deref(), move || {
            nft::replace_table(&name, content.as_ref(), b"1")
        })
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r)
    .map_err(kernel(what))
}

/// Removes what routes `vxlan_port` into a tunnel and guards it (an earlier run's, after a
/// crash).
pub async fn remove_leftovers(
    nl: &Handle,
    netns: Option<&Path>,
    vxlan_port: u16,
) -> Result<(), Error> {
    remove_leftover_rules(nl, vxlan_port).await?;
    set_guard(netns, vxlan_port, None).await
}

/// Removes the rules routing `vxlan_port` into a tunnel.
async fn remove_leftover_rules(nl: &Handle, vxlan_port: u16) -> Result<(), Error> {
    let table = table_of(vxlan_port);
    let rules: Vec<RuleMessage> = nl
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("listing routing rules")(to_io(e)))?;
    for rule in rules {
        if rule.attributes.contains(&RuleAttribute::Table(table)) {
            nl.rule()
                .del(rule)
                .execute()
                .await
                .map_err(|e| kernel(format!("removing the rule of table {table:#x}"))(to_io(e)))?;
        }
    }
    Ok(())
}

/// Where a result of boringtun was written in the buffer starting at address `base`: (offset,
/// length).
fn span(base: usize, packet: &[u8]) -> (usize, usize) {
    (
        (packet.as_ptr() as usize).saturating_sub(base),
        packet.len(),
    )
}

/// Largest packet read from the device or the socket, and room for WireGuard's header and tag.
const BUF: usize = 65_536;

/// Seals what the kernel routes into the device and sends it to the peer it is for.
async fn outbound(shared: Arc<Shared>) {
    let mut packet = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + 64];
    loop {
        let n = match shared.tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(e) => {
                // Retried, not given up: a tunnel that stopped reading while the node still
                // announces its key would drop every encrypted packet for good.
                tracing::warn!("reading the WireGuard TUN device: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if n < 20 || packet[0] >> 4 != 4 {
            continue;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let peer = shared.peer(dst);
        let Some(peer) = peer else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%dst, "no WireGuard key for the node: packet dropped");
            continue;
        };
        let base = out.as_ptr() as usize;
        let sealed = match lock(&peer.tunn).encapsulate(&packet[..n], &mut out) {
            TunnResult::WriteToNetwork(p) => Some(span(base, p)),
            TunnResult::Err(e) => {
                tracing::debug!(%dst, "sealing: {e:?}");
                None
            }
            _ => None,
        };
        if let Some((off, len)) = sealed {
            // WireGuard's message type 4: data (else a handshake initiation, the packet queued
            // until it completes).
            if out[off] == 4 {
                shared.counters.sealed.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = shared
                .udp
                .send_to(&out[off..off + len], peer.endpoint)
                .await
            {
                tracing::debug!(%dst, "sending to the peer: {e}");
            }
        }
    }
}

/// Whether `packet` (opened, from `from`) is `from`'s VXLAN packet to port `vxlan_port`.
fn is_peer_vxlan(packet: &[u8], from: Ipv4Addr, vxlan_port: u16) -> bool {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return false;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    packet[9] == 17
        && src == from
        && packet.len() >= header + 8
        && u16::from_be_bytes([packet[header + 2], packet[header + 3]]) == vxlan_port
}

/// What to do with what boringtun made of a datagram.
enum Next {
    Done,
    Send(usize, usize),
    Deliver(usize, usize, Ipv4Addr),
}

/// Opens what peers send and hands their VXLAN packets to the kernel.
async fn inbound(shared: Arc<Shared>) {
    let mut datagram = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + 64];
    loop {
        let (n, from) = match shared.udp.recv_from(&mut datagram).await {
            Ok(x) => x,
            Err(e) => {
                // (Not a busy loop should the error last.)
                tracing::warn!("reading the WireGuard socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let IpAddr::V4(src) = from.ip() else {
            continue;
        };
        let peer = shared.peer(src);
        let Some(peer) = peer else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut input: &[u8] = &datagram[..n];
        loop {
            let base = out.as_ptr() as usize;
            let next = match lock(&peer.tunn).decapsulate(Some(from.ip()), input, &mut out) {
                TunnResult::Done => Next::Done,
                TunnResult::Err(e) => {
                    shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%src, "opening: {e:?}");
                    Next::Done
                }
                TunnResult::WriteToNetwork(p) => {
                    let (off, len) = span(base, p);
                    Next::Send(off, len)
                }
                TunnResult::WriteToTunnelV4(p, inner) => {
                    let (off, len) = span(base, p);
                    Next::Deliver(off, len, inner)
                }
                TunnResult::WriteToTunnelV6(..) => {
                    shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    Next::Done
                }
            };
            match next {
                Next::Done => break,
                Next::Send(off, len) => {
                    let _ = shared
                        .udp
                        .send_to(&out[off..off + len], peer.endpoint)
                        .await;
                    // Packets queued while the handshake was under way go out now.
                    input = &[];
                }
                Next::Deliver(off, len, inner) => {
                    let packet = &out[off..off + len];
                    if inner == src && is_peer_vxlan(packet, src, shared.vxlan_port) {
                        match shared.tun.send(packet).await {
                            Ok(_) => {
                                shared.counters.opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::debug!("writing to the TUN device: {e}"),
                        }
                    } else {
                        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%src, %inner, "an opened packet that is not the peer's VXLAN: dropped");
                    }
                    break;
                }
            }
        }
    }
}

/// Drives every peer's handshake retries, rekeying and keepalives.
async fn timers(shared: Arc<Shared>) {
    let mut out = vec![0u8; 256];
    let mut tick = tokio::time::interval(TIMER_TICK);
    loop {
        tick.tick().await;
        let peers: Vec<Arc<PeerTunnel>> = shared
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for peer in peers {
            let base = out.as_ptr() as usize;
            let send = match lock(&peer.tunn).update_timers(&mut out) {
                TunnResult::WriteToNetwork(p) => Some(span(base, p)),
                _ => None,
            };
            if let Some((off, len)) = send {
                let _ = shared
                    .udp
                    .send_to(&out[off..off + len], peer.endpoint)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_packet(src: [u8; 4], proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 8];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn only_the_peers_own_vxlan_packets_are_delivered() {
        let peer = Ipv4Addr::new(192, 168, 9, 2);
        let good = vxlan_packet([192, 168, 9, 2], 17, 4788);
        assert!(is_peer_vxlan(&good, peer, 4788));
        // Another source, another port, TCP, or too short: dropped.
        for bad in [
            vxlan_packet([192, 168, 9, 3], 17, 4788),
            vxlan_packet([192, 168, 9, 2], 17, 22),
            vxlan_packet([192, 168, 9, 2], 6, 4788),
            good[..24].to_vec(),
        ] {
            assert!(!is_peer_vxlan(&bad, peer, 4788), "{bad:?}");
        }
    }
}
