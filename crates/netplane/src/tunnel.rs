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
//! its VXLAN socket. A packet for a node without a key, one that fails to open, one opened that
//! is not the sending peer's VXLAN packet, or one of a VNI that is not of an encrypted network
//! this node shares with that peer is dropped and counted: nothing of an encrypted network ever
//! goes out in clear, and a peer cannot slip frames into a network it has no part in.
//!
//! A datagram's peer is told by what it carries, not by the address it comes from (a node's route
//! to its peers may leave from another address than its data path address): a handshake
//! initiation by the initiator's static key, anything else by the receiver index of the session.
//! The socket is bound to the data path address when it is known, so what it sends comes from
//! there; a peer's endpoint (where its packets go, its data path address at first) moves only to
//! the source of a datagram that proved to be the peer's (opened, or a handshake completed).
//!
//! Keys: each node makes a static X25519 key pair ([`NodeKey`]) when its data plane starts, kept
//! in memory only (a restart makes a new one), and announces the public half on its network plane
//! stream, whether or not the tunnel is open (it opens with the node's first encrypted network);
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
//! nftables table are removed by [`remove_leftovers`] (the rules also by [`Tunnel::close`], which
//! leaves the guard until the data plane stops).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
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

/// Handshakes a second the node answers without asking for a cookie first (boringtun's own
/// device uses the same figure).
const HANDSHAKES_PER_SECOND: u64 = 100;

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
    /// Packets dropped: no key for their destination, from no known peer, failing to open, or
    /// not a peer's VXLAN packet of a network shared with it once opened.
    pub dropped: u64,
    /// Of those, opened packets of a VXLAN network (VNI) the peer shares no encrypted network
    /// of this node's in.
    pub foreign_vni: u64,
    /// Times the tunnel failed to open.
    pub open_failures: u64,
}

/// One other node as the tunnel is to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its WireGuard public key.
    pub key: [u8; 32],
    /// The UDP port its tunnel receives on, as it announced it; `None`: not announced, this
    /// node's own port is used.
    pub port: Option<u16>,
    /// The VNIs of the encrypted networks this node shares with it: its opened packets of any
    /// other VNI are dropped.
    pub vnis: HashSet<u32>,
}

/// What the tunnels of a data plane did, kept across the tunnel's openings.
#[derive(Debug, Default)]
pub struct Counters {
    sealed: AtomicU64,
    opened: AtomicU64,
    dropped: AtomicU64,
    foreign_vni: AtomicU64,
    open_failures: AtomicU64,
}

impl Counters {
    /// Counts a failed opening of the tunnel.
    pub(crate) fn open_failed(&self) {
        self.open_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// What they count so far.
    pub fn stats(&self) -> TunnelStats {
        TunnelStats {
            sealed: self.sealed.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            foreign_vni: self.foreign_vni.load(Ordering::Relaxed),
            open_failures: self.open_failures.load(Ordering::Relaxed),
        }
    }
}

/// A node's static WireGuard key pair, made once when its data plane starts (kept in memory
/// only) and announced from then on, whether or not the tunnel is open.
pub struct NodeKey {
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh key pair from the system's randomness.
    pub fn generate() -> Result<NodeKey, Error> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
            |_| kernel("making the WireGuard key")(io::Error::other("no system randomness")),
        )?;
        let secret = StaticSecret::from(key);
        zeroize::Zeroize::zeroize(&mut key);
        let public = PublicKey::from(&secret).to_bytes();
        Ok(NodeKey { secret, public })
    }

    /// The public half, to announce.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// One other node: its key and the session with it.
struct PeerTunnel {
    /// Its data path address: what its VXLAN packets come from.
    addr: Ipv4Addr,
    key: [u8; 32],
    /// The UDP port it announced for its tunnel (or this node's own): where its packets go
    /// until an authenticated packet of its comes from elsewhere.
    port: u16,
    /// The index boringtun puts (shifted left by 8) in the receiver field of what the peer
    /// sends this node once a handshake is under way.
    index: u32,
    /// Where its WireGuard packets go: its data path address and port at first, then wherever
    /// its last authenticated packet came from (a node whose datagrams leave from another
    /// address).
    endpoint: Mutex<SocketAddr>,
    vnis: RwLock<HashSet<u32>>,
    tunn: Mutex<Tunn>,
}

impl PeerTunnel {
    fn endpoint(&self) -> SocketAddr {
        *lock(&self.endpoint)
    }
}

/// The peers, by data path address (for what goes out) and by index and key (for what comes
/// in: a peer is told by what it sends, never by the address it comes from).
#[derive(Default)]
struct Peers {
    by_addr: HashMap<Ipv4Addr, Arc<PeerTunnel>>,
    by_index: HashMap<u32, Arc<PeerTunnel>>,
    by_key: HashMap<[u8; 32], Arc<PeerTunnel>>,
}

struct Shared {
    secret: StaticSecret,
    public: PublicKey,
    tun: tokio_tun::Tun,
    udp: tokio::net::UdpSocket,
    peers: RwLock<Peers>,
    next_index: AtomicU32,
    /// Checks handshake messages' MAC (keyed by this node's public key) before any key exchange
    /// is spent on them, and asks for cookies once handshakes come faster than
    /// [`HANDSHAKES_PER_SECOND`] on the whole node (each peer's session keeps its own limit
    /// too).
    limiter: RateLimiter,
    vxlan_port: u16,
    wg_port: u16,
    counters: Arc<Counters>,
}

impl Shared {
    fn peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn peer(&self, addr: Ipv4Addr) -> Option<Arc<PeerTunnel>> {
        self.peers().by_addr.get(&addr).cloned()
    }

    /// The peer `packet` (parsed from a datagram) is from, by what it carries: the initiator's
    /// static key (decrypted from a handshake initiation) or the receiver index (boringtun's own
    /// index of the session, the peer's in its low 8 bits).
    fn sender_of(&self, packet: Packet<'_>) -> Option<Arc<PeerTunnel>> {
        let peers = self.peers();
        match packet {
            Packet::HandshakeInit(init) => {
                let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
                peers.by_key.get(&half.peer_static_public).cloned()
            }
            Packet::HandshakeResponse(p) => peers.by_index.get(&(p.receiver_idx >> 8)).cloned(),
            Packet::PacketCookieReply(p) => peers.by_index.get(&(p.receiver_idx >> 8)).cloned(),
            Packet::PacketData(p) => peers.by_index.get(&(p.receiver_idx >> 8)).cloned(),
        }
    }
}

/// The node's tunnel (see the module docs).
pub struct Tunnel {
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
    /// the caller's), the rule and table routing `vxlan_port` into the device; then starts moving
    /// packets, sealed with `key`, counted in `counters`. The guard table is replaced in one transaction, never
    /// removed here: VXLAN devices a crashed run left (still bridged to containers that outlived
    /// it) must not send in clear for a moment. On an error nothing else is left behind.
    ///
    /// The socket is bound to `local`, the node's data path address, when it is given (and is
    /// the node's), so that what it sends comes from the address its peers know it by whatever
    /// the route to them prefers.
    pub async fn start(
        nl: &Handle,
        netns: Option<&Path>,
        local: Option<Ipv4Addr>,
        ports: (u16, u16),
        key: &NodeKey,
        counters: Arc<Counters>,
    ) -> Result<Tunnel, Error> {
        let (wg_port, vxlan_port) = ports;
        let secret = key.secret.clone();
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
            let bind = |addr: Ipv4Addr| {
                UdpSocket::bind((addr, wg_port)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("binding WireGuard port {addr}:{wg_port}: {e}"),
                    )
                })
            };
            let udp = match local.map(bind) {
                Some(Ok(udp)) => udp,
                // An address that is not the node's (one a NAT maps to it): any address; the
                // peers tell this node by what it sends, whatever address it comes from.
                Some(Err(e)) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                    tracing::warn!("{e}: bound to every address instead");
                    bind(Ipv4Addr::UNSPECIFIED)?
                }
                Some(Err(e)) => return Err(e),
                None => bind(Ipv4Addr::UNSPECIFIED)?,
            };
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
        let public = PublicKey::from(&secret);
        let shared = Arc::new(Shared {
            limiter: RateLimiter::new(&public, HANDSHAKES_PER_SECOND),
            public,
            secret,
            tun,
            udp,
            peers: RwLock::new(Peers::default()),
            next_index: AtomicU32::new(1),
            vxlan_port,
            wg_port,
            counters,
        });
        let tasks = vec![
            tokio::spawn(outbound(shared.clone())),
            tokio::spawn(inbound(shared.clone())),
            tokio::spawn(timers(shared.clone())),
        ];
        tracing::info!(tun = %name, wireguard_port = wg_port, "WireGuard tunnel started");
        Ok(Tunnel { shared, tasks })
    }

    /// Makes the peers those of `wanted` (data path address -> key and shared networks): a peer
    /// whose key changed starts a new session, one no longer wanted is forgotten. Two addresses
    /// with one key (a view in flux) keep only the first peer seen.
    pub fn set_peers(&self, wanted: &HashMap<Ipv4Addr, PeerSpec>) {
        let mut peers = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Peers {
            by_addr,
            by_index,
            by_key,
        } = &mut *peers;
        let port = |spec: &PeerSpec| spec.port.unwrap_or(self.shared.wg_port);
        by_addr.retain(|addr, p| {
            wanted
                .get(addr)
                .is_some_and(|w| w.key == p.key && port(w) == p.port)
        });
        for (addr, spec) in wanted {
            if let Some(p) = by_addr.get(addr) {
                *p.vnis.write().unwrap_or_else(PoisonError::into_inner) = spec.vnis.clone();
                continue;
            }
            if by_addr.values().any(|p| p.key == spec.key) {
                tracing::warn!(%addr, "a WireGuard key announced by two nodes: ignored for the second");
                continue;
            }
            let index = loop {
                let i = self.shared.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                if !by_addr.values().any(|p| p.index == i) {
                    break i;
                }
            };
            let tunn = Tunn::new(
                self.shared.secret.clone(),
                PublicKey::from(spec.key),
                None,
                None,
                index,
                None,
            );
            by_addr.insert(
                *addr,
                Arc::new(PeerTunnel {
                    addr: *addr,
                    key: spec.key,
                    port: port(spec),
                    index,
                    endpoint: Mutex::new(SocketAddr::new(IpAddr::V4(*addr), port(spec))),
                    vnis: RwLock::new(spec.vnis.clone()),
                    tunn: Mutex::new(tunn),
                }),
            );
        }
        *by_index = by_addr.values().map(|p| (p.index, p.clone())).collect();
        *by_key = by_addr.values().map(|p| (p.key, p.clone())).collect();
    }

    /// Stops moving packets, removes the rules, and closes the device (with the table's route)
    /// and the socket once the tasks holding them are gone. The guard stays: a VXLAN device of
    /// an encrypted network whose removal failed could otherwise send in clear; it goes with
    /// [`remove_leftovers`] when the data plane stops.
    pub async fn close(mut self, nl: &Handle) -> Result<(), Error> {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        tracing::info!(tun = %self.shared.tun.name(), "WireGuard tunnel closed");
        remove_leftover_rules(nl, self.shared.vxlan_port).await
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
                .send_to(&out[off..off + len], peer.endpoint())
                .await
            {
                tracing::debug!(%dst, "sending to the peer: {e}");
            }
        }
    }
}

/// The VNI of `packet` (opened, from `from`) if it is `from`'s VXLAN packet to port
/// `vxlan_port`.
fn peer_vxlan_vni(packet: &[u8], from: Ipv4Addr, vxlan_port: u16) -> Option<u32> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    // UDP header (8 bytes), then VXLAN's: flags (with I, "VNI valid"), 3 reserved, VNI (3), 1
    // reserved.
    let vxlan = packet.get(header + 8..header + 16)?;
    let is_vxlan = packet[9] == 17
        && src == from
        && u16::from_be_bytes([packet[header + 2], packet[header + 3]]) == vxlan_port
        && vxlan[0] & 0x08 != 0;
    is_vxlan.then(|| u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]))
}

/// Whether what boringtun made of a datagram of message type `kind` shows that the datagram
/// was the peer's (so its source may become the peer's endpoint): data opened, a keepalive
/// opened, a handshake initiation answered, or a handshake response completed. Not a cookie
/// reply, nor what the rate limiter answers without looking (a cookie: type 3).
fn authenticated(kind: u8, result: &TunnResult<'_>) -> bool {
    match result {
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => true,
        TunnResult::WriteToNetwork(p) => {
            (kind == 1 && p.first() == Some(&2)) || (kind == 2 && p.first() == Some(&4))
        }
        TunnResult::Done => kind == 4,
        TunnResult::Err(_) => false,
    }
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
        // A handshake must carry a valid MAC (and, under load, a cookie) before the key exchange
        // that tells its sender: a flood of forged ones costs a keyed hash each, no more.
        let packet = match shared
            .limiter
            .verify_packet(Some(from.ip()), &datagram[..n], &mut out)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                let _ = shared.udp.send_to(cookie, from).await;
                continue;
            }
            Err(_) => {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "a malformed WireGuard packet, or a handshake failing its MAC: dropped");
                continue;
            }
        };
        // The message type.
        let kind = datagram[0];
        let Some(peer) = shared.sender_of(packet) else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "a WireGuard packet from no known peer: dropped");
            continue;
        };
        let src = peer.addr;
        let mut input: &[u8] = &datagram[..n];
        loop {
            let base = out.as_ptr() as usize;
            let first = !input.is_empty();
            let next = {
                let mut tunn = lock(&peer.tunn);
                let result = tunn.decapsulate(Some(from.ip()), input, &mut out);
                if first && authenticated(kind, &result) {
                    let mut endpoint = lock(&peer.endpoint);
                    if *endpoint != from {
                        tracing::debug!(%src, old = %*endpoint, new = %from, "the peer's WireGuard endpoint moved");
                        *endpoint = from;
                    }
                }
                match result {
                    TunnResult::Done => Next::Done,
                    TunnResult::Err(e) => {
                        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%src, %from, "opening: {e:?}");
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
                }
            };
            match next {
                Next::Done => break,
                Next::Send(off, len) => {
                    // An answer (handshake response, cookie) goes where the datagram came from;
                    // a cookie is bound to that address.
                    let to = if first { from } else { peer.endpoint() };
                    let _ = shared.udp.send_to(&out[off..off + len], to).await;
                    // Packets queued while the handshake was under way go out now.
                    input = &[];
                }
                Next::Deliver(off, len, inner) => {
                    let packet = &out[off..off + len];
                    let vni = (inner == src)
                        .then(|| peer_vxlan_vni(packet, src, shared.vxlan_port))
                        .flatten();
                    let shared_vni = vni.is_some_and(|vni| {
                        peer.vnis
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .contains(&vni)
                    });
                    if shared_vni {
                        match shared.tun.send(packet).await {
                            Ok(_) => {
                                shared.counters.opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::debug!("writing to the TUN device: {e}"),
                        }
                    } else if let Some(vni) = vni {
                        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        shared.counters.foreign_vni.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%src, vni, "an opened VXLAN packet of a network not shared with the peer: dropped");
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
        shared.limiter.reset_count();
        let peers: Vec<Arc<PeerTunnel>> = shared
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_addr
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
                    .send_to(&out[off..off + len], peer.endpoint())
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_packet(src: [u8; 4], proto: u8, dport: u16, vni: u32) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 8];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[28] = 0x08;
        p[32..35].copy_from_slice(&vni.to_be_bytes()[1..]);
        p
    }

    #[test]
    fn only_the_peers_own_vxlan_packets_are_delivered_with_their_vni() {
        let peer = Ipv4Addr::new(192, 168, 9, 2);
        let good = vxlan_packet([192, 168, 9, 2], 17, 4788, 4243);
        assert_eq!(peer_vxlan_vni(&good, peer, 4788), Some(4243));
        let mut no_vni = good.clone();
        no_vni[28] = 0;
        // Another source, another port, TCP, too short, or no VNI: dropped.
        for bad in [
            vxlan_packet([192, 168, 9, 3], 17, 4788, 4243),
            vxlan_packet([192, 168, 9, 2], 17, 22, 4243),
            vxlan_packet([192, 168, 9, 2], 6, 4788, 4243),
            good[..35].to_vec(),
            no_vni,
        ] {
            assert_eq!(peer_vxlan_vni(&bad, peer, 4788), None, "{bad:?}");
        }
    }

    #[test]
    fn only_an_authenticated_packet_moves_a_peers_endpoint() {
        let mut buf = [2u8, 0, 0, 0];
        assert!(authenticated(1, &TunnResult::WriteToNetwork(&mut buf)));
        let mut cookie = [3u8, 0, 0, 0];
        for kind in 1..=4 {
            assert!(!authenticated(
                kind,
                &TunnResult::WriteToNetwork(&mut cookie)
            ));
            assert!(!authenticated(
                kind,
                &TunnResult::Err(boringtun::noise::errors::WireGuardError::InvalidMac)
            ));
        }
        assert!(!authenticated(3, &TunnResult::Done));
        assert!(authenticated(4, &TunnResult::Done));
    }
}
