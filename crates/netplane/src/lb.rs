//! Virtual IP load balancing and the routing mesh, as nftables NAT rules applied by `nft`
//! from JSON batches (`lb/nft.rs`, through the `nftables` crate).
//!
//! - In each task's namespace (process tasks' `swt-*`, containers'), table `swarmd` (inet)
//!   sends a new connection to a service's virtual IP to one of the service's running tasks on
//!   that network: an `output` NAT rule per VIP, `dnat to numgen random mod n map { i : backend }`
//!   (a backend at random for each new connection). Conntrack keeps every packet of a connection, TCP or
//!   UDP, on the backend its first packet got. A VIP with no running task refuses connections
//!   (ICMP port unreachable) instead of leaving them unanswered.
//! - In the node's own namespace, table `swarmd` makes every INGRESS-mode published port answer
//!   on every local address: `prerouting` (connections from outside) and `output` (connections
//!   from the node itself) translate it to a running task's ingress address and target port, on
//!   any node, and `postrouting` translates the source of those connections to this node's own
//!   ingress address (`node_addr`), so that replies come back through this node.
//! - In the same table, a HOST-mode published port of a task running in a sandbox on this node
//!   ([`Balancer::set_host_forward`]) answers on every local address as well, translated to the
//!   task's address on its first network and the target port (as Docker maps a container's
//!   port): the same `prerouting` and `output` chains, the client's source kept, but for a
//!   connection from the node's loopback or from the task's own network, whose source becomes
//!   the network's gateway (the node's address on that bridge) so that the task's reply comes
//!   back through the node.
//!
//! Each apply rebuilds the whole table from the view in one nf_tables transaction (one `nft -f`
//! of a JSON batch, run from a thread inside the namespace): a backend the view no longer marks
//! running is gone from the next connection on, and no packet sees a half-made table.
//! Connections already translated to it are forgotten too (their conntrack entries, found by
//! the mark the rule gave them; `lb/conntrack.rs`), so a UDP flow moves at once. A table equal
//! to the one last made there, still carrying the token written into it, is not sent again.
//! The sandbox's namespace, its devices and the view's plumbing are other files' business
//! (`plane.rs`, `sandbox.rs`, `overlay.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use api::netplane::NetworkView;
use tracing::{debug, warn};

use crate::{Error, NetnsPath, NodeView};

mod conntrack;
pub(crate) mod nft;

pub use nft::L4;
use nft::{Chain, Expr, Hook, Table};

/// The nftables table (family inet) swarmd owns, in task namespaces and the node's.
pub const TABLE: &str = "swarmd";

/// Programs the kernel's packet filter: in each task's namespace, connections to a service's
/// virtual IP go to one of its running tasks; in the node's own namespace, INGRESS-mode
/// published ports go to a running task of their service on any node.
#[derive(Debug, Default)]
pub struct Balancer {
    /// The node's namespace when it is not this process's own (tests run several nodes in
    /// one process).
    node_netns: Option<NetnsPath>,
    /// What each namespace's table was last made from (`None`: the node's): an unchanged table
    /// is not sent again (a view changes for every task on any network, most task namespaces'
    /// tables do not), and the connections to a backend left out are forgotten.
    applied: Mutex<HashMap<Option<PathBuf>, Applied>>,
    /// One lock per namespace, held from reading what was applied there to storing what is
    /// now: two applies for one namespace never interleave.
    locks: Mutex<HashMap<Option<PathBuf>, Arc<tokio::sync::Mutex<()>>>>,
    /// The sysctls the mesh changed in the node's namespace, with their values before.
    saved_sysctls: Arc<Mutex<Vec<(PathBuf, String)>>>,
    /// Set by `remove_node_rules`: later `apply_node` calls do nothing.
    stopped: AtomicBool,
    /// Ports swarmd itself uses on the node's addresses (the VXLAN port): never published.
    reserved_ports: Mutex<Vec<u16>>,
    /// The latest view given to `apply_node`: the node's table is made again from it when a
    /// host forward comes or goes.
    node_view: Mutex<NodeView>,
    /// Task ID -> the HOST-mode ports of that task, running in a sandbox on this node.
    host_forwards: Mutex<BTreeMap<String, HostForward>>,
}

/// A HOST-mode published port of a task in a sandbox: node port -> task port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: L4,
    /// The port on every address of the node.
    pub published: u16,
    /// The port the task listens on, at its address.
    pub target: u16,
}

/// Where a sandboxed task's HOST-mode published ports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostForward {
    /// The task's address on its first network (the one its default route goes through, so
    /// that its replies come back through the node).
    pub addr: Ipv4Addr,
    /// The prefix length of that network's subnet (the task's neighbours on its bridge).
    pub prefix: u8,
    /// That network's gateway, the node's address on its bridge: the source of connections
    /// made from the node's loopback, or from the task's own network (which the task would
    /// answer directly, not through the node). `None`: those are not forwarded.
    pub gateway: Option<Ipv4Addr>,
    /// That network's bridge (`swbr-<vni>`), where loopback-sourced packets leave.
    pub bridge: String,
    pub ports: Vec<HostPort>,
}

/// A table as last programmed in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    /// The token the table carries (`None`: no table): a table with another one, or none, is
    /// not the one programmed (removed since, or a new namespace at the same path, as a
    /// container's `/proc/<pid>/ns/net` after its PID is reused).
    token: Option<Vec<u8>>,
    table: Option<Table>,
    /// The version of the view it was made from (an older view is ignored).
    version: u64,
}

impl Applied {
    fn backends(&self) -> BTreeSet<Ipv4Addr> {
        self.table.as_ref().map(Table::backends).unwrap_or_default()
    }
}

/// A token no other table of any namespace carries: this process, the time, a counter.
fn new_token() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id()).into_bytes()
}

impl Balancer {
    /// A balancer that has programmed nothing yet, for the namespace this process runs in.
    pub fn new() -> Self {
        Self::default()
    }

    /// A balancer whose node rules go to the namespace `netns` instead of this process's.
    pub fn in_netns(netns: NetnsPath) -> Self {
        Balancer {
            node_netns: Some(netns),
            ..Self::default()
        }
    }

    /// Ports the routing mesh must leave alone (swarmd's own: the VXLAN port); a published port
    /// among them is skipped with a warning.
    pub fn set_reserved_ports(&self, ports: Vec<u16>) {
        *self
            .reserved_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ports;
    }

    fn lock_reserved(&self) -> Vec<u16> {
        self.reserved_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn node_netns(&self) -> Option<PathBuf> {
        self.node_netns.as_ref().map(|n| n.0.clone())
    }

    /// The routing mesh in the node's own namespace, for the INGRESS ports of `view`, and the
    /// host forwards ([`Balancer::set_host_forward`]); turns IPv4 forwarding on while there is
    /// any (and puts the sysctls back as they were when there is none). With neither, the
    /// table is removed. A view older than the last one is ignored. Does nothing after
    /// `remove_node_rules`.
    pub async fn apply_node(&self, view: &NodeView) -> Result<(), Error> {
        {
            let mut last = self
                .node_view
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.version > view.version {
                debug!(
                    version = view.version,
                    "a view older than the one applied: ignored"
                );
                return Ok(());
            }
            *last = view.clone();
        }
        self.apply_node_now().await
    }

    /// Makes task `task_id`'s HOST-mode ports go to `forward` on this node, or (`None`) no
    /// more; the node's table is made again at once from the latest view.
    pub async fn set_host_forward(
        &self,
        task_id: &str,
        forward: Option<HostForward>,
    ) -> Result<(), Error> {
        {
            let mut forwards = self
                .host_forwards
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = match &forward {
                Some(f) => forwards.insert(task_id.to_owned(), f.clone()).as_ref() != Some(f),
                None => forwards.remove(task_id).is_some(),
            };
            if !changed {
                return Ok(());
            }
        }
        let applied = self.apply_node_now().await;
        if applied.is_err() && forward.is_some() {
            // The task does not start: a later view must not program its forward after all.
            self.host_forwards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(task_id);
        }
        applied
    }

    /// Makes the node's table from the latest view and host forwards, read under the
    /// namespace's lock (so that the last apply has the last of both).
    async fn apply_node_now(&self) -> Result<(), Error> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let lock = self.lock_of(&None);
        let _held = lock.lock().await;
        let view = self
            .node_view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let forwards = self
            .host_forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let table = node_table(&view, &forwards, &self.lock_reserved());
        // Where a connection from the node's loopback may leave: the ingress bridge and the
        // host forwards' bridges.
        let bridges: Vec<String> = view
            .networks
            .iter()
            .filter(|n| n.ingress)
            .map(|n| format!("swbr-{}", n.vni))
            .chain(forwards.values().map(|f| f.bridge.clone()))
            .collect();
        debug!(rules = ?table, "routing mesh and host ports");
        let forwarding = table.as_ref().is_some_and(|t| !t.maps.is_empty());
        let netns = self.node_netns();
        let saved = Arc::clone(&self.saved_sysctls);
        self.apply_locked(
            None,
            netns,
            table,
            view.version,
            "programming the routing mesh",
            move || {
                // On every apply, not only when the table changes (a bridge made since needs
                // its own); a failure leaves the mesh without forwarding, not without rules.
                let done = if forwarding {
                    enable_forwarding(&bridges, &saved)
                } else {
                    restore_sysctls(&saved)
                };
                if let Err(e) = done {
                    warn!(error = %e, "setting the forwarding sysctls for the routing mesh");
                }
                Ok(())
            },
        )
        .await
    }

    /// Virtual IP balancing inside one task's namespace, for the networks in `networks` (IDs).
    pub async fn apply_sandbox(
        &self,
        netns: &NetnsPath,
        networks: &[String],
        view: &NodeView,
    ) -> Result<(), Error> {
        let table = sandbox_table(networks, view);
        let path = netns.0.clone();
        debug!(netns = %path.display(), rules = ?table, "virtual IPs");
        let what = format!("programming virtual IPs in {}", path.display());
        let key = Some(path.clone());
        let lock = self.lock_of(&key);
        let _held = lock.lock().await;
        self.apply_locked(key, Some(path), table, view.version, &what, || Ok(()))
            .await
    }

    /// Makes table `swarmd` of the namespace at `path` (`None`: this process's) hold `table`,
    /// after `prepare` ran there (always), unless it already does; then forgets the connections
    /// to the backends it no longer has. `key` names the namespace in `applied`, whose lock
    /// ([`Balancer::lock_of`]) the caller holds; a `version` older than the one last applied
    /// there is ignored.
    async fn apply_locked(
        &self,
        key: Option<PathBuf>,
        path: Option<PathBuf>,
        table: Option<Table>,
        version: u64,
        what: &str,
        prepare: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> Result<(), Error> {
        let before = self.lock_applied().get(&key).cloned();
        if before.as_ref().is_some_and(|b| b.version > version) {
            debug!(version, "a view older than the one applied: ignored");
            return Ok(());
        }
        let wanted = table;
        let netns = path.clone();
        let now = blocking(what, move || {
            nft::in_netns(netns.as_deref(), move || {
                prepare()?;
                // Asking nft for the token costs a process: only when it could spare one.
                if let Some(b) = before.as_ref().filter(|b| b.table == wanted)
                    && nft::table_token(TABLE)? == b.token
                {
                    return Ok(Applied {
                        version,
                        ..b.clone()
                    });
                }
                let token = new_token();
                nft::replace_table(TABLE, wanted.as_ref(), &token)?;
                let token = wanted.is_some().then_some(token);
                Ok(Applied {
                    token,
                    table: wanted,
                    version,
                })
            })
        })
        .await?;
        let before = self.lock_applied().insert(key, now.clone());
        let removed: Vec<Ipv4Addr> = before
            .map(|b| b.backends())
            .unwrap_or_default()
            .difference(&now.backends())
            .copied()
            .collect();
        if removed.is_empty() {
            return Ok(());
        }
        debug!(?removed, "forgetting connections to backends that are gone");
        blocking("forgetting connections to removed backends", move || {
            nft::in_netns(path.as_deref(), move || {
                removed
                    .iter()
                    .try_for_each(|b| conntrack::forget_backend(*b))
            })
        })
        .await
    }

    /// The lock of the namespace `key` names.
    fn lock_of(&self, key: &Option<PathBuf>) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(key.clone()).or_default())
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, HashMap<Option<PathBuf>, Applied>> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets what it knew of a task namespace that is gone (call when the sandbox is
    /// destroyed; its rules went with the namespace).
    pub fn forget_sandbox(&self, netns: &NetnsPath) {
        let key = Some(netns.0.clone());
        self.lock_applied().remove(&key);
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    /// Removes every rule this balancer (or an earlier process's, after a crash) made in the
    /// node's own namespace, and puts back the sysctls it changed; later `apply_node` calls
    /// do nothing.
    pub async fn remove_node_rules(&self) -> Result<(), Error> {
        self.stopped.store(true, Ordering::SeqCst);
        self.remove_table().await
    }

    /// Removes table `swarmd` an earlier process left in the node's namespace (a start after a
    /// crash); unlike [`Balancer::remove_node_rules`], later views are still applied.
    pub async fn remove_leftover_rules(&self) -> Result<(), Error> {
        self.remove_table().await
    }

    async fn remove_table(&self) -> Result<(), Error> {
        let lock = self.lock_of(&None);
        let _held = lock.lock().await;
        let netns = self.node_netns();
        self.lock_applied().remove(&None);
        let saved = Arc::clone(&self.saved_sysctls);
        blocking("removing the routing mesh", move || {
            nft::in_netns(netns.as_deref(), move || {
                nft::replace_table(TABLE, None, &[])?;
                restore_sysctls(&saved)
            })
        })
        .await
    }

    /// Whether the node's namespace has swarmd's table (for tests and diagnostics).
    pub async fn node_rules_present(&self) -> Result<bool, Error> {
        let netns = self.node_netns();
        blocking("looking up the routing mesh", move || {
            nft::in_netns(netns.as_deref(), || nft::table_exists(TABLE))
        })
        .await
    }
}

/// Runs nft, netlink and namespace work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    let kernel = |source| Error::Kernel {
        what: what.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| kernel(io::Error::other(e)))?
        .map_err(kernel)
}

/// The routing mesh forwards between the node's addresses and the ingress network, a host
/// forward between them and a task's network. A connection to a published port on 127.0.0.1
/// leaves through the ingress bridge or the task's network's bridge (`bridges`, those this
/// node has) with a loopback source until its source is translated, and its
/// replies come back to one: the kernel drops both unless the bridge allows it.
/// The values they had before are kept in `saved` (the first change of each only).
fn enable_forwarding(bridges: &[String], saved: &Mutex<Vec<(PathBuf, String)>>) -> io::Result<()> {
    set_sysctl(Path::new("/proc/sys/net/ipv4/ip_forward"), saved)?;
    for bridge in bridges {
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
        if path.exists() {
            set_sysctl(&path, saved)?;
        }
    }
    Ok(())
}

/// Sets a boolean sysctl (of the calling thread's network namespace) to 1, noting in `saved`
/// what it was when this is its first change.
fn set_sysctl(path: &Path, saved: &Mutex<Vec<(PathBuf, String)>>) -> io::Result<()> {
    let was = std::fs::read_to_string(path)?.trim().to_owned();
    if was != "1" {
        std::fs::write(path, "1")?;
        let mut saved = saved.lock().unwrap_or_else(PoisonError::into_inner);
        if !saved.iter().any(|(p, _)| p == path) {
            saved.push((path.to_owned(), was));
        }
    }
    Ok(())
}

/// Puts the sysctls `saved` lists back to their values (a bridge gone since has none to put
/// back); forgets them.
fn restore_sysctls(saved: &Mutex<Vec<(PathBuf, String)>>) -> io::Result<()> {
    let saved = std::mem::take(&mut *saved.lock().unwrap_or_else(PoisonError::into_inner));
    for (path, was) in saved {
        if path.exists() {
            std::fs::write(&path, was)?;
        }
    }
    Ok(())
}

/// An address of the view ("10.0.0.5/24", or plain), when it is IPv4.
fn ipv4(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
    Some((
        addr.parse().ok()?,
        prefix.parse().ok().filter(|p| *p <= 32)?,
    ))
}

/// The running tasks' addresses of each service on `net`, sorted (so that equal views make
/// equal tables).
fn backends(net: &NetworkView) -> BTreeMap<&str, Vec<Ipv4Addr>> {
    let mut by_service: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for e in net.endpoints.iter().filter(|e| e.running) {
        if let Some((addr, _)) = ipv4(&e.addr) {
            by_service.entry(&e.service_id).or_default().push(addr);
        }
    }
    for addrs in by_service.values_mut() {
        addrs.sort();
        addrs.dedup();
    }
    by_service
}

/// Adds a map of `addrs` to `table` and returns the rule action spreading over it.
fn spread(table: &mut Table, addrs: Vec<Ipv4Addr>, port: Option<u16>) -> Expr {
    let set = format!("backends{}", table.maps.len());
    let size = u32::try_from(addrs.len()).expect("fewer than 2^32 backends");
    table.maps.push((set.clone(), addrs));
    Expr::DnatSpread { set, size, port }
}

/// Table `swarmd` of a task's namespace: one rule per virtual IP of the networks it is on
/// (IDs in `networks`), balancing over the service's running tasks or refusing connections
/// when it has none; `None` when there is no virtual IP.
fn sandbox_table(networks: &[String], view: &NodeView) -> Option<Table> {
    let mut table = Table::default();
    let mut rules = Vec::new();
    let mut closed = Vec::new();
    for net in view.networks.iter().filter(|n| networks.contains(&n.id)) {
        let mut backends = backends(net);
        for svc in net.services.iter().filter(|s| !s.dnsrr) {
            let Some((vip, _)) = ipv4(&svc.vip) else {
                continue;
            };
            // No running task: refused at once, rather than left to time out unanswered.
            let Some(addrs) = backends.remove(svc.id.as_str()) else {
                closed.push(vec![Expr::Ipv4, Expr::Daddr(vip), Expr::Reject]);
                continue;
            };
            let action = spread(&mut table, addrs, None);
            rules.push(vec![Expr::Ipv4, Expr::Daddr(vip), action]);
        }
    }
    if rules.is_empty() && closed.is_empty() {
        return None;
    }
    if !closed.is_empty() {
        table.chains.push(Chain {
            name: "vip-closed".into(),
            nat: false,
            hook: Hook::Output,
            priority: nft::PRIORITY_FILTER,
            rules: closed,
        });
    }
    if !rules.is_empty() {
        table.chains.push(Chain {
            name: "vip".into(),
            nat: true,
            hook: Hook::Output,
            priority: nft::PRIORITY_DSTNAT,
            rules,
        });
    }
    Some(table)
}

/// The rules of the node's table, by chain, before they are put together.
#[derive(Debug, Default)]
struct NodeRules {
    /// Destination NAT (`prerouting` and `output`).
    dnat: Vec<Vec<Expr>>,
    /// Source NAT (`postrouting`).
    snat: Vec<Vec<Expr>>,
    /// Refused published ports (`input` and `output` filters).
    closed: Vec<Vec<Expr>>,
}

/// The transport protocol of a view's published port (`""`: TCP), `None` when unknown.
fn l4_of(protocol: &str) -> Option<L4> {
    match protocol {
        "tcp" | "" => Some(L4::Tcp),
        "udp" => Some(L4::Udp),
        "sctp" => Some(L4::Sctp),
        _ => None,
    }
}

/// Table `swarmd` of the node's namespace: the routing mesh for the INGRESS ports of the
/// ingress network, and the HOST-mode ports of tasks in sandboxes here (`forwards`); `None`
/// when there is nothing to publish. Published ports in `reserved` (swarmd's own) are left
/// out; the networks' gateways are not part of the mesh; a published INGRESS port whose
/// service has no running task is refused.
fn node_table(
    view: &NodeView,
    forwards: &BTreeMap<String, HostForward>,
    reserved: &[u16],
) -> Option<Table> {
    let mut table = Table::default();
    let mut rules = mesh_rules(view, reserved, &mut table);
    host_rules(forwards, reserved, &mut table, &mut rules);
    let closed_chains = |gateways: &[Vec<Expr>], closed: &[Vec<Expr>]| {
        [Hook::Input, Hook::Output].map(|hook| Chain {
            name: format!(
                "mesh-closed-{}",
                if hook == Hook::Input { "in" } else { "local" }
            ),
            nat: false,
            hook,
            priority: nft::PRIORITY_FILTER,
            rules: gateways.iter().chain(closed).cloned().collect(),
        })
    };
    // The gateways of the node's networks (where its resolver listens) are not the mesh's.
    let gateways: Vec<Vec<Expr>> = view
        .networks
        .iter()
        .flat_map(|n| &n.subnets)
        .filter_map(|s| ipv4(&s.gateway))
        .map(|(gw, _)| vec![Expr::Ipv4, Expr::Daddr(gw), Expr::Return])
        .collect();
    let NodeRules { dnat, snat, closed } = rules;
    if dnat.is_empty() {
        if closed.is_empty() {
            return None;
        }
        table.chains = closed_chains(&gateways, &closed).into();
        return Some(table);
    }
    let dnat: Vec<_> = gateways.iter().cloned().chain(dnat).collect();
    let bridges: BTreeSet<String> = forwards.values().map(|f| f.bridge.clone()).collect();
    table.chains = vec![
        Chain {
            name: "mesh-in".into(),
            nat: true,
            hook: Hook::Prerouting,
            priority: nft::PRIORITY_DSTNAT,
            rules: dnat.clone(),
        },
        Chain {
            name: "mesh-local".into(),
            nat: true,
            hook: Hook::Output,
            priority: nft::PRIORITY_DSTNAT,
            rules: dnat,
        },
        Chain {
            name: "mesh-source".into(),
            nat: true,
            hook: Hook::Postrouting,
            priority: nft::PRIORITY_SRCNAT,
            rules: snat,
        },
        isolation(view, &bridges),
        loopback_guard(),
    ];
    if !closed.is_empty() {
        table.chains.extend(closed_chains(&gateways, &closed));
    }
    Some(table)
}

/// The routing mesh's rules for the INGRESS ports of the ingress network (none without one, or
/// without an ingress address on this node yet); their backend lists go into `table`.
fn mesh_rules(view: &NodeView, reserved: &[u16], table: &mut Table) -> NodeRules {
    let mut rules = NodeRules::default();
    let Some(net) = view.networks.iter().find(|n| n.ingress) else {
        return rules;
    };
    let Some((node_addr, _)) = ipv4(&net.node_addr) else {
        debug!(network.id = %net.id, "no ingress address on this node yet: no routing mesh");
        return rules;
    };
    // Only the mesh's own connections: translated, first sent to a published port, now to the
    // ingress network (HOST-mode translations keep their source).
    let subnets: Vec<_> = net.subnets.iter().filter_map(|s| ipv4(&s.cidr)).collect();
    let mut backends = backends(net);
    for svc in &net.services {
        let addrs = backends.remove(svc.id.as_str());
        for port in &svc.ingress_ports {
            let Some(l4) = l4_of(&port.protocol) else {
                debug!(service.id = %svc.id, protocol = %port.protocol, "unknown protocol: not published");
                continue;
            };
            let (Ok(published), Ok(target)) = (
                u16::try_from(port.published_port),
                u16::try_from(port.target_port),
            ) else {
                continue;
            };
            if published == 0 {
                continue;
            }
            if reserved.contains(&published) {
                warn!(service.id = %svc.id, port = published, "a published port swarmd itself uses: not published");
                continue;
            }
            let Some(addrs) = &addrs else {
                // No running task: refused, rather than reaching what the host has there.
                rules.closed.push(vec![
                    Expr::Ipv4,
                    Expr::DaddrLocal,
                    Expr::Dport(l4, published),
                    Expr::Reject,
                ]);
                continue;
            };
            if subnets.is_empty() {
                // Without its source translated, a reply from a task on another node would
                // take that node's own way back: not published rather than a port whose
                // connections hang.
                debug!(network.id = %net.id, "ingress network without an IPv4 subnet: no routing mesh");
                continue;
            }
            let action = spread(table, addrs.clone(), Some(target));
            rules.dnat.push(vec![
                Expr::Ipv4,
                Expr::DaddrLocal,
                Expr::Dport(l4, published),
                action,
            ]);
            rules.snat.extend(subnets.iter().map(|&(subnet, prefix)| {
                vec![
                    Expr::Ipv4,
                    Expr::CtDnat,
                    Expr::CtOriginalDport(l4, published),
                    Expr::DaddrIn(subnet, prefix),
                    Expr::Snat(node_addr),
                ]
            }));
        }
    }
    rules
}

/// Adds to `rules` the HOST-mode ports of the tasks in sandboxes here: each published port,
/// on every local address, to the task's address and target port; a connection from the
/// node's loopback, or from the task's own network (a neighbour reaching the task's port
/// through the node), also gets the network's gateway as its source: the task could not answer
/// 127.0.0.1, and would answer a neighbour directly, from an address that neighbour never
/// called. (The task reaching its own port that way needs hairpin mode on its bridge port,
/// which is not set: ARCHITECTURE.md.) Their backend lists go into `table`.
fn host_rules(
    forwards: &BTreeMap<String, HostForward>,
    reserved: &[u16],
    table: &mut Table,
    rules: &mut NodeRules,
) {
    for (task, f) in forwards {
        for port in &f.ports {
            if port.published == 0 || reserved.contains(&port.published) {
                warn!(task.id = %task, port = port.published, "a published port swarmd itself uses: not published");
                continue;
            }
            let action = spread(table, vec![f.addr], Some(port.target));
            rules.dnat.push(vec![
                Expr::Ipv4,
                Expr::DaddrLocal,
                Expr::Dport(port.protocol, port.published),
                action,
            ]);
            let Some(gateway) = f.gateway else { continue };
            let subnet = crate::overlay::Cidr {
                addr: f.addr,
                prefix: f.prefix,
            }
            .network();
            for (from, prefix) in [(Ipv4Addr::new(127, 0, 0, 0), 8), (subnet, f.prefix)] {
                rules.snat.push(vec![
                    Expr::Ipv4,
                    Expr::CtDnat,
                    Expr::CtOriginalDport(port.protocol, port.published),
                    Expr::Daddr(f.addr),
                    Expr::SaddrIn(from, prefix),
                    Expr::Snat(gateway),
                ]);
            }
        }
    }
}

/// The `forward` filter chain of the node's table: the mesh (or a host forward) turns IPv4 forwarding on for the
/// whole namespace, which must not let a task reach another network, or the outside, through
/// the node. A connection the mesh translated, and the packets of an accepted one, pass;
/// otherwise nothing is routed from a network's bridge to another interface, nor to a bridge
/// from another interface. Traffic between tasks of one network (VXLAN included) is bridged,
/// not routed, and is not seen here (with `br_netfilter`, it is seen from the bridge to itself).
/// `bridges`: the host forwards' bridges, which the view may not list yet. A host forward's
/// connections are translated ones, so they pass.
fn isolation(view: &NodeView, bridges: &BTreeSet<String>) -> Chain {
    let mut rules = vec![
        vec![Expr::CtDnat, Expr::Accept],
        vec![Expr::CtEstablished, Expr::Accept],
    ];
    let mut all: Vec<String> = view
        .networks
        .iter()
        .map(|n| format!("swbr-{}", n.vni))
        .collect();
    all.extend(
        bridges
            .iter()
            .filter(|b| !all.contains(b))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for bridge in all {
        rules.push(vec![
            Expr::Iifname(bridge.clone(), true),
            Expr::Oifname(bridge.clone(), false),
            Expr::Drop,
        ]);
        rules.push(vec![
            Expr::Oifname(bridge.clone(), true),
            Expr::Iifname(bridge, false),
            Expr::Drop,
        ]);
    }
    Chain {
        name: "isolation".into(),
        nat: false,
        hook: Hook::Forward,
        priority: nft::PRIORITY_FILTER,
        rules,
    }
}

/// Drops packets to 127.0.0.0/8 that come in on any interface but `lo`, before any translation.
/// The bridges the mesh and host forwards translate loopback connections onto have
/// `route_localnet` on (`enable_forwarding`), which would otherwise let a task on such a network
/// reach the node's services bound to 127.0.0.1 by sending there with the gateway's MAC. Replies
/// to translated loopback connections arrive addressed to the gateway (their source was
/// rewritten to it) and are restored to 127.0.0.1 only after this chain.
fn loopback_guard() -> Chain {
    Chain {
        name: "loopback-guard".into(),
        nat: false,
        hook: Hook::Prerouting,
        priority: nft::PRIORITY_MANGLE,
        rules: vec![vec![
            Expr::Ipv4,
            Expr::Iifname("lo".into(), false),
            Expr::DaddrIn(Ipv4Addr::new(127, 0, 0, 0), 8),
            Expr::Drop,
        ]],
    }
}

#[cfg(test)]
mod tests;
