//! The node's resolver for tasks on swarm networks (what Docker's embedded DNS server does for
//! swarm services), served with hickory-server.
//!
//! One server per network, on the network's gateway address (port 53, UDP and TCP), which the
//! overlay puts on the network's bridge: a query is answered from the names of the network it
//! arrived on only, so a task never learns another network's names. It answers, from the view:
//! - `<service>`: the service's virtual IP on the network, or the addresses of its running tasks
//!   for a DNSRR service;
//! - `tasks.<service>`: the addresses of its running tasks on the network;
//! - a network alias of a service's tasks: as the service's name (its VIP, or the tasks with the
//!   alias in DNSRR mode), and `tasks.<alias>` as `tasks.<service>`;
//! - a task's name (`<service>.<slot>.<task id>`): its address while it runs.
//!
//! A service's own name wins over another service's alias that spells it (SwarmKit's control API
//! accepts such an alias; libnetwork would answer both). Names are matched case-insensitively,
//! with or without the final dot. A known name asked for another record type (AAAA, MX, ...)
//! gets an empty answer; every other name goes to the node's own resolvers (the `nameserver`
//! lines of /etc/resolv.conf, read again at each [`Resolver::update`]), over UDP or TCP as the
//! query came, and their answer is passed on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::{Error, NodeView};

/// The DNS port tasks send their queries to.
pub const DNS_PORT: u16 = 53;
/// The TTL of the answers (Docker's embedded server gives 600 s).
const TTL: u32 = 600;
/// How long the node's resolvers get to answer, each.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends no query for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Where the resolver listens and forwards.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The port on each gateway ([`DNS_PORT`]; tests use another).
    pub port: u16,
    /// The file naming the node's own resolvers (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// The port of the node's resolvers ([`DNS_PORT`]; tests use another).
    pub upstream_port: u16,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            port: DNS_PORT,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstream_port: DNS_PORT,
        }
    }
}

/// The names of one network, lowercased, without the final dot, each with its addresses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Names {
    records: HashMap<String, Vec<IpAddr>>,
}

/// The address of a CIDR (`10.0.1.5/24`) or plain address.
fn ip_of(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

impl Names {
    /// The names of network `net` in `view` (empty if the view lacks it).
    pub fn of(view: &NodeView, net: &str) -> Names {
        let mut names = Names::default();
        let Some(n) = view.networks.iter().find(|n| n.id == net) else {
            return names;
        };
        let running: Vec<_> = n
            .endpoints
            .iter()
            .filter(|e| e.running)
            .filter_map(|e| Some((e, ip_of(&e.addr)?)))
            .collect();
        let tasks_of = |service: &str, alias: Option<&str>| -> Vec<IpAddr> {
            running
                .iter()
                .filter(|(e, _)| e.service_id == service)
                .filter(|(e, _)| alias.is_none_or(|a| e.aliases.iter().any(|x| x == a)))
                .map(|(_, ip)| *ip)
                .collect()
        };
        let mut services = HashMap::new();
        for s in &n.services {
            let answer = if s.dnsrr {
                tasks_of(&s.id, None)
            } else {
                ip_of(&s.vip).into_iter().collect()
            };
            services.insert(s.id.as_str(), s);
            names.add(&s.name, answer);
            names.add(&format!("tasks.{}", s.name), tasks_of(&s.id, None));
        }
        let service_names: std::collections::HashSet<String> =
            n.services.iter().map(|s| s.name.to_lowercase()).collect();
        for (e, ip) in &running {
            for alias in &e.aliases {
                if service_names.contains(&alias.to_lowercase()) {
                    // A service's own name wins over another's alias.
                    continue;
                }
                let answer = match services.get(e.service_id.as_str()) {
                    Some(s) if !s.dnsrr && !s.vip.is_empty() => ip_of(&s.vip).into_iter().collect(),
                    _ => vec![*ip],
                };
                names.add(alias, answer);
                names.add(&format!("tasks.{alias}"), vec![*ip]);
            }
            names.add(&e.task_name, vec![*ip]);
        }
        names
    }

    fn add(&mut self, name: &str, ips: Vec<IpAddr>) {
        if name.is_empty() {
            return;
        }
        let list = self.records.entry(name.to_lowercase()).or_default();
        for ip in ips {
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }

    /// The addresses of `name` (any case, with or without the final dot); `None` when the
    /// network does not know the name.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.strip_suffix('.').unwrap_or(name).to_lowercase();
        self.records.get(&name).map(Vec::as_slice)
    }
}

/// The node's own resolvers: the `nameserver` lines of a resolv.conf, at `port`, leaving out the
/// addresses in `own` (the gateways this resolver serves, which would loop).
fn upstreams(text: &str, own: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) is left out: no scope to give here.
            words.next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !own.contains(ip))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Answers the queries arriving on one network's gateway.
struct Handler {
    names: Arc<RwLock<Names>>,
    upstreams: Arc<RwLock<Vec<SocketAddr>>>,
}

impl Handler {
    /// The answer of the node's resolvers to the raw query `raw`, over UDP or TCP as `protocol`.
    async fn forward(&self, raw: &[u8], protocol: Protocol) -> Option<Message> {
        let servers = self
            .upstreams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for server in servers {
            let answer = match protocol {
                Protocol::Tcp => {
                    tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(server, raw)).await
                }
                _ => tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(server, raw)).await,
            };
            match answer {
                Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                    Ok(m) => return Some(m),
                    Err(e) => debug!(%server, "unreadable answer from the node's resolver: {e}"),
                },
                Ok(Err(e)) => debug!(%server, "the node's resolver failed: {e}"),
                Err(_) => debug!(%server, "the node's resolver did not answer in time"),
            }
        }
        None
    }
}

/// Sends `raw` to `server` over UDP and returns its answer (of the same ID).
async fn forward_udp(server: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(raw).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Only the answer to this query (same ID); anything else is dropped.
        if n >= 2 && raw.len() >= 2 && buf[..2] == raw[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Sends `raw` to `server` over TCP (length-prefixed) and returns its answer.
async fn forward_tcp(server: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(raw.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(raw);
    stream.write_all(&out).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Records of `ips` for `name`, those of the family `qtype` asks for.
fn records(name: &Name, qtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| {
            let rdata = match (qtype, ip) {
                (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => return None,
            };
            Some(Record::from_rdata(name.clone(), TTL, rdata))
        })
        .collect()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m
        };
        let sent = if request.metadata.op_code != OpCode::Query {
            response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::NotImp))
                .await
        } else if let Ok(info) = request.request_info() {
            let name = info.query.name().to_string();
            let qtype = info.query.query_type();
            let known = self
                .names
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .lookup(&name)
                .map(<[IpAddr]>::to_vec);
            match known {
                Some(ips) => {
                    let mut ips = ips;
                    rand::seq::SliceRandom::shuffle(ips.as_mut_slice(), &mut rand::rng());
                    let owner = Name::from(info.query.name().clone());
                    let answers = records(&owner, qtype, &ips);
                    let mut m = Metadata::response_from_request(&request.metadata);
                    m.authoritative = true;
                    m.recursion_available = true;
                    response
                        .send_response(builder.build(m, &answers, [], [], []))
                        .await
                }
                None => match self.forward(request.as_slice(), request.protocol()).await {
                    Some(answer) => {
                        let mut m = answer.metadata;
                        m.id = request.metadata.id;
                        response
                            .send_response(builder.build(
                                m,
                                &answer.answers,
                                &answer.authorities,
                                [],
                                &answer.additionals,
                            ))
                            .await
                    }
                    None => {
                        response
                            .send_response(builder.build_no_records(fail(ResponseCode::ServFail)))
                            .await
                    }
                },
            }
        } else {
            response
                .send_response(builder.error_msg(&request.metadata, ResponseCode::FormErr))
                .await
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                debug!("sending a DNS answer failed: {e}");
                fail(ResponseCode::ServFail).into_header_info()
            }
        }
    }
}

/// A header-only [`ResponseInfo`] of a metadata.
trait IntoInfo {
    fn into_header_info(self) -> ResponseInfo;
}

impl IntoInfo for Metadata {
    fn into_header_info(self) -> ResponseInfo {
        ResponseInfo::from(hickory_server::proto::op::Header {
            metadata: self,
            counts: Default::default(),
        })
    }
}

/// One network's server.
struct Served {
    network: String,
    names: Arc<RwLock<Names>>,
    server: Server<Handler>,
}

/// Answers tasks' DNS queries on each network's gateway address (port 53, UDP and TCP).
pub struct Resolver {
    config: ResolverConfig,
    upstreams: Arc<RwLock<Vec<SocketAddr>>>,
    /// By gateway address.
    served: Mutex<HashMap<IpAddr, Served>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with_config(ResolverConfig::default())
    }
}

impl Resolver {
    /// A resolver that serves nothing until its first [`Resolver::update`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver listening on `config.port` and forwarding to the resolvers of
    /// `config.resolv_conf`.
    pub fn with_config(config: ResolverConfig) -> Self {
        Resolver {
            config,
            upstreams: Arc::default(),
            served: Mutex::default(),
        }
    }

    /// Serves the names of `view` from now on, listening on the gateway of each of its networks
    /// (which the overlay has put on the network's bridge before this is called). A network that
    /// left the view stops being served; a gateway that cannot be bound is an error (the other
    /// networks are served all the same).
    pub async fn update(&self, view: &NodeView) -> Result<(), Error> {
        let mut wanted: HashMap<IpAddr, &str> = HashMap::new();
        for n in &view.networks {
            for s in &n.subnets {
                if let Ok(gw) = s.gateway.parse::<IpAddr>() {
                    wanted.insert(gw, &n.id);
                }
            }
        }
        let own: Vec<IpAddr> = wanted.keys().copied().collect();
        let text = std::fs::read_to_string(&self.config.resolv_conf).unwrap_or_else(|e| {
            warn!(path = %self.config.resolv_conf.display(), "cannot read the node's resolvers: {e}");
            String::new()
        });
        *self
            .upstreams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            upstreams(&text, &own, self.config.upstream_port);

        let mut served = self.served.lock().await;
        let gone: Vec<IpAddr> = served
            .iter()
            .filter(|(gw, s)| wanted.get(gw) != Some(&s.network.as_str()))
            .map(|(gw, _)| *gw)
            .collect();
        for gw in gone {
            if let Some(mut s) = served.remove(&gw) {
                let _ = s.server.shutdown_gracefully().await;
                debug!(gateway = %gw, network = %s.network, "resolver stopped serving");
            }
        }
        let mut first_error = None;
        for (gw, net) in wanted {
            let names = Names::of(view, net);
            if let Some(s) = served.get(&gw) {
                *s.names
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
                continue;
            }
            match self.serve(gw, net, names).await {
                Ok(s) => {
                    debug!(gateway = %gw, network = %net, "resolver serving");
                    served.insert(gw, s);
                }
                Err(e) => {
                    warn!(gateway = %gw, network = %net, "resolver cannot listen: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn serve(&self, gw: IpAddr, net: &str, names: Names) -> Result<Served, Error> {
        let addr = SocketAddr::new(gw, self.config.port);
        let kernel = |what: &str| {
            let what = format!("{what} {addr}");
            move |source| Error::Kernel { what, source }
        };
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(kernel("binding the resolver's UDP socket on"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(kernel("binding the resolver's TCP socket on"))?;
        let names = Arc::new(RwLock::new(names));
        let mut server = Server::new(Handler {
            names: names.clone(),
            upstreams: self.upstreams.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64);
        Ok(Served {
            network: net.to_string(),
            names,
            server,
        })
    }

    /// Stops serving and closes every socket.
    pub async fn stop(&self) {
        let mut served = self.served.lock().await;
        for (_, mut s) in served.drain() {
            let _ = s.server.shutdown_gracefully().await;
        }
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
