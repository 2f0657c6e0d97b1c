//! The leader's side of the data plane's control channel (`swarmkit.netplane.v1.NetworkPlane`,
//! proto/netplane.proto, ours: SwarmKit's nodes learn their peers by gossip inside the engine).
//! Each node's agent keeps a Watch stream open; the leader answers with the node's
//! [`NodeView`]: every swarm network (overlay driver, ingress included) the node has an
//! attachment on, with the other nodes on it (their data path and attachment addresses), the
//! services with a VIP or a task on it, and every task attachment on it whose task is at or below
//! RUNNING.
//!
//! One [`Model`] per leadership term follows the store (networks, nodes, services, tasks) with
//! indexes by network, so a change costs what it touches: events only mark networks dirty; at most
//! every [`DEBOUNCE`] the dirty networks' shared part is rebuilt from their indexes, and only the
//! nodes on those networks that have a stream get a new view, sent when it differs from the last.
//! Between terms a Watch is refused (Unavailable); a term's end closes its streams, and agents
//! open them again through the manager they talk to, which forwards to the next leader
//! ([`crate::proxy`]).
//!
//! A node's data path address is what its stream announced (`WatchRequest.data_path_addr`), else
//! the source IP the stream came from (the original caller's through a follower), else the
//! node's `status.addr`; a peer is listed only once its address is known. Its WireGuard public key
//! (for encrypted networks) is the one its latest stream announced, if any: streams are
//! authenticated by node certificates, so a peer's listed key is that node's own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use api::netplane::{Endpoint, NetworkView, NodeView, Peer, PublishedPort, ServiceView, Subnet};
use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

/// How long changes gather before the views they touch are computed and sent: a burst of task
/// updates (a service scaled by hundreds) costs one pass, and a task's death reaches the nodes
/// well within a heartbeat.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The driver state name of the networks nodes wire (the allocator's default driver).
const OVERLAY: &str = "overlay";
/// The driver option naming a network's VXLAN IDs, one per IPv4 subnet.
const VXLAN_IDS: &str = "com.docker.network.driver.overlay.vxlanid_list";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a view needs of a network, from its allocated state.
#[derive(Debug, Clone, PartialEq)]
struct NetInfo {
    name: String,
    vni: u32,
    subnets: Vec<Subnet>,
    ingress: bool,
    encrypted: bool,
}

impl NetInfo {
    /// A swarm network's part of a view; `None` for node-local networks and networks not
    /// allocated yet (no VXLAN ID).
    fn of(n: &api::Network) -> Option<NetInfo> {
        let driver = n.driver_state.as_ref()?;
        if driver.name != OVERLAY {
            return None;
        }
        let vni = driver
            .options
            .get(VXLAN_IDS)?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let spec = n.spec.as_ref();
        let subnets = n
            .ipam
            .as_ref()
            .map(|ipam| {
                ipam.configs
                    .iter()
                    .map(|c| Subnet {
                        cidr: c.subnet.clone(),
                        gateway: c.gateway.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let encrypted = n.encrypted();
        Some(NetInfo {
            name: spec
                .and_then(|s| s.annotations.as_ref())
                .map(|a| a.name.clone())
                .unwrap_or_default(),
            vni,
            subnets,
            ingress: spec.is_some_and(|s| s.ingress),
            encrypted,
        })
    }
}

/// A node's attachments (network ID -> its address, CIDR) and the address it reported.
#[derive(Debug, Clone, PartialEq, Default)]
struct NodeInfo {
    attachments: Vec<(String, String)>,
    status_addr: Option<IpAddr>,
}

impl NodeInfo {
    fn of(n: &api::Node) -> NodeInfo {
        let mut attachments: Vec<(String, String)> = n
            .attachments
            .iter()
            .chain(n.attachment.as_ref())
            .filter_map(|a| {
                let id = a.network.as_ref()?.id.clone();
                Some((id, a.addresses.first().cloned().unwrap_or_default()))
            })
            .collect();
        attachments.sort();
        attachments.dedup_by(|a, b| a.0 == b.0);
        let status_addr = n
            .status
            .as_ref()
            .and_then(|s| s.addr.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        NodeInfo {
            attachments,
            status_addr,
        }
    }

    fn networks(&self) -> impl Iterator<Item = &str> {
        self.attachments.iter().map(|(n, _)| n.as_str())
    }
}

/// What a view needs of a service.
#[derive(Debug, Clone, PartialEq, Default)]
struct SvcInfo {
    name: String,
    dnsrr: bool,
    /// (network ID, VIP in CIDR form).
    vips: Vec<(String, String)>,
    ingress_ports: Vec<PublishedPort>,
}

impl SvcInfo {
    fn of(s: &api::Service) -> SvcInfo {
        let spec = s.spec.as_ref();
        let endpoint = s.endpoint.as_ref();
        let mode = endpoint
            .and_then(|e| e.spec.as_ref())
            .or_else(|| spec.and_then(|s| s.endpoint.as_ref()))
            .map_or(0, |e| e.mode);
        let protocol = |p: i32| match api::port_config::Protocol::try_from(p) {
            Ok(api::port_config::Protocol::Udp) => "udp",
            Ok(api::port_config::Protocol::Sctp) => "sctp",
            _ => "tcp",
        };
        SvcInfo {
            name: spec
                .and_then(|s| s.annotations.as_ref())
                .map(|a| a.name.clone())
                .unwrap_or_default(),
            dnsrr: mode == api::endpoint_spec::ResolutionMode::Dnsrr as i32,
            vips: endpoint
                .map(|e| {
                    e.virtual_ips
                        .iter()
                        .filter(|v| !v.addr.is_empty())
                        .map(|v| (v.network_id.clone(), v.addr.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            ingress_ports: endpoint
                .map(|e| {
                    e.ports
                        .iter()
                        .filter(|p| {
                            p.publish_mode == api::port_config::PublishMode::Ingress as i32
                                && p.published_port != 0
                        })
                        .map(|p| PublishedPort {
                            protocol: protocol(p.protocol).into(),
                            target_port: p.target_port,
                            published_port: p.published_port,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What a view needs of a task that is assigned, at or below RUNNING and attached to networks.
#[derive(Debug, Clone, PartialEq)]
struct TaskInfo {
    name: String,
    service_id: String,
    node_id: String,
    running: bool,
    /// (network ID, address in CIDR form, aliases).
    attachments: Vec<(String, String, Vec<String>)>,
}

/// A task's name as `task ls` shows it.
fn task_name(t: &api::Task) -> String {
    if let Some(name) = t
        .annotations
        .as_ref()
        .map(|a| &a.name)
        .filter(|n| !n.is_empty())
    {
        return name.clone();
    }
    let service = t
        .service_annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or_default();
    api::naming::task_name(service, t.slot, &t.node_id, &t.id)
}

impl TaskInfo {
    /// `None` for a task no view lists: not assigned, past RUNNING, or with no address.
    fn of(t: &api::Task) -> Option<TaskInfo> {
        let state = t.status.as_ref().map_or(0, |s| s.state);
        if t.node_id.is_empty() || state > api::TaskState::Running as i32 {
            return None;
        }
        let attachments: Vec<_> = t
            .networks
            .iter()
            .filter_map(|a| {
                let id = a.network.as_ref()?.id.clone();
                let addr = a.addresses.first()?.clone();
                Some((id, addr, a.aliases.clone()))
            })
            .collect();
        if attachments.is_empty() {
            return None;
        }
        Some(TaskInfo {
            name: task_name(t),
            service_id: t.service_id.clone(),
            node_id: t.node_id.clone(),
            // A task on its way out leaves the answers before it stops.
            running: state == api::TaskState::Running as i32
                && t.desired_state <= api::TaskState::Running as i32,
            attachments,
        })
    }
}

/// Adds `item` to the set at `key`.
fn index_add(index: &mut HashMap<String, BTreeSet<String>>, key: &str, item: &str) {
    index
        .entry(key.to_string())
        .or_default()
        .insert(item.to_string());
}

/// Removes `item` from the set at `key`, and the set once empty.
fn index_remove(index: &mut HashMap<String, BTreeSet<String>>, key: &str, item: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// The store as the views need it, with indexes by network, and what changed since the last
/// [`Model::refresh`].
#[derive(Debug, Default)]
pub(crate) struct Model {
    networks: HashMap<String, NetInfo>,
    nodes: HashMap<String, NodeInfo>,
    services: HashMap<String, SvcInfo>,
    tasks: HashMap<String, TaskInfo>,
    /// Network -> nodes with an attachment on it.
    net_nodes: HashMap<String, BTreeSet<String>>,
    /// Network -> tasks with an attachment on it.
    net_tasks: HashMap<String, BTreeSet<String>>,
    /// Network -> services with a VIP on it.
    net_vips: HashMap<String, BTreeSet<String>>,
    /// Service -> its listed tasks.
    svc_tasks: HashMap<String, BTreeSet<String>>,
    /// Data path addresses nodes' streams announced (or came from).
    announced: HashMap<String, IpAddr>,
    /// WireGuard public keys nodes' streams announced, with their tunnels' UDP ports.
    keys: HashMap<String, (Vec<u8>, u32)>,
    /// Networks whose shared view must be computed again.
    dirty_nets: HashSet<String>,
    /// Nodes whose own set of networks or addresses changed.
    dirty_nodes: HashSet<String>,
    /// Each swarm network's view as every node on it shares it (all its nodes as peers, no
    /// `node_addr`).
    shared: HashMap<String, NetworkView>,
}

impl Model {
    /// A model of every network, node, service and task of `tx`.
    pub(crate) fn load(tx: &store::ReadTx<'_>) -> Model {
        let mut m = Model::default();
        for n in tx.find_shared::<api::Network>(By::All) {
            m.set_network(&n);
        }
        for n in tx.find_shared::<api::Node>(By::All) {
            m.set_node(&n);
        }
        for s in tx.find_shared::<api::Service>(By::All) {
            m.set_service(&s);
        }
        for t in tx.find_shared::<api::Task>(By::All) {
            m.set_task(&t);
        }
        m
    }

    /// Follows one store event.
    pub(crate) fn apply(&mut self, event: &Event) {
        let Event::Object { kind, object, .. } = event else {
            return;
        };
        let removed = *kind == EventKind::Remove;
        match object.object.as_ref() {
            Some(api::object::Object::Network(n)) if removed => self.remove_network(&n.id),
            Some(api::object::Object::Network(n)) => self.set_network(n),
            Some(api::object::Object::Node(n)) if removed => self.remove_node(&n.id),
            Some(api::object::Object::Node(n)) => self.set_node(n),
            Some(api::object::Object::Service(s)) if removed => self.remove_service(&s.id),
            Some(api::object::Object::Service(s)) => self.set_service(s),
            Some(api::object::Object::Task(t)) if removed => self.remove_task(&t.id),
            Some(api::object::Object::Task(t)) => self.set_task(t),
            _ => {}
        }
    }

    fn set_network(&mut self, n: &api::Network) {
        match NetInfo::of(n) {
            Some(info) => {
                if self.networks.get(&n.id) != Some(&info) {
                    self.networks.insert(n.id.clone(), info);
                    self.network_changed(&n.id);
                }
            }
            None => self.remove_network(&n.id),
        }
    }

    fn remove_network(&mut self, id: &str) {
        if self.networks.remove(id).is_some() {
            self.network_changed(id);
        }
    }

    /// A network appeared, went or changed: its view, and whether its nodes have it at all.
    fn network_changed(&mut self, id: &str) {
        self.dirty_nets.insert(id.to_string());
        if let Some(nodes) = self.net_nodes.get(id) {
            self.dirty_nodes.extend(nodes.iter().cloned());
        }
    }

    fn set_node(&mut self, n: &api::Node) {
        let info = NodeInfo::of(n);
        let old = self.nodes.get(&n.id);
        if old == Some(&info) {
            return;
        }
        let old = self.nodes.insert(n.id.clone(), info.clone());
        self.node_changed(&n.id, old.as_ref(), Some(&info));
    }

    fn remove_node(&mut self, id: &str) {
        let old = self.nodes.remove(id);
        self.announced.remove(id);
        self.keys.remove(id);
        self.node_changed(id, old.as_ref(), None);
    }

    fn node_changed(&mut self, id: &str, old: Option<&NodeInfo>, new: Option<&NodeInfo>) {
        for net in old.into_iter().flat_map(NodeInfo::networks) {
            index_remove(&mut self.net_nodes, net, id);
            self.dirty_nets.insert(net.to_string());
        }
        for net in new.into_iter().flat_map(NodeInfo::networks) {
            index_add(&mut self.net_nodes, net, id);
            self.dirty_nets.insert(net.to_string());
        }
        self.dirty_nodes.insert(id.to_string());
    }

    fn set_service(&mut self, s: &api::Service) {
        let info = SvcInfo::of(s);
        if self.services.get(&s.id) == Some(&info) {
            return;
        }
        let old = self.services.insert(s.id.clone(), info);
        self.service_changed(&s.id, old);
    }

    fn remove_service(&mut self, id: &str) {
        let old = self.services.remove(id);
        self.service_changed(id, old);
    }

    /// Marks every network the service is on, by its VIPs (old and new) and its tasks.
    fn service_changed(&mut self, id: &str, old: Option<SvcInfo>) {
        for (net, _) in old.iter().flat_map(|o| &o.vips) {
            index_remove(&mut self.net_vips, net, id);
            self.dirty_nets.insert(net.clone());
        }
        if let Some(new) = self.services.get(id) {
            for (net, _) in &new.vips {
                index_add(&mut self.net_vips, net, id);
                self.dirty_nets.insert(net.clone());
            }
        }
        for task in self.svc_tasks.get(id).into_iter().flatten() {
            if let Some(t) = self.tasks.get(task) {
                self.dirty_nets
                    .extend(t.attachments.iter().map(|(n, _, _)| n.clone()));
            }
        }
    }

    fn set_task(&mut self, t: &api::Task) {
        let Some(info) = TaskInfo::of(t) else {
            self.remove_task(&t.id);
            return;
        };
        if self.tasks.get(&t.id) == Some(&info) {
            return;
        }
        self.remove_task(&t.id);
        for (net, _, _) in &info.attachments {
            index_add(&mut self.net_tasks, net, &t.id);
            self.dirty_nets.insert(net.clone());
        }
        index_add(&mut self.svc_tasks, &info.service_id, &t.id);
        self.tasks.insert(t.id.clone(), info);
    }

    fn remove_task(&mut self, id: &str) {
        let Some(old) = self.tasks.remove(id) else {
            return;
        };
        for (net, _, _) in &old.attachments {
            index_remove(&mut self.net_tasks, net, id);
            self.dirty_nets.insert(net.clone());
        }
        index_remove(&mut self.svc_tasks, &old.service_id, id);
    }

    /// Records the data path address a node's stream announced; its peers' views change if it
    /// differs from the one known.
    pub(crate) fn announce(&mut self, node_id: &str, addr: IpAddr) {
        if self.announced.get(node_id) == Some(&addr) {
            return;
        }
        self.announced.insert(node_id.to_string(), addr);
        if let Some(info) = self.nodes.get(node_id) {
            self.dirty_nets.extend(info.networks().map(str::to_string));
        }
    }

    /// Records the WireGuard public key a node's stream announced (empty: none) and its tunnel's
    /// UDP port (0: not announced); its peers' views change if they differ from the ones known.
    pub(crate) fn announce_key(&mut self, node_id: &str, key: Vec<u8>, port: u32) {
        let announced = (!key.is_empty()).then_some((key, port));
        if self.keys.get(node_id) == announced.as_ref() {
            return;
        }
        match announced {
            Some(announced) => self.keys.insert(node_id.to_string(), announced),
            None => self.keys.remove(node_id),
        };
        if let Some(info) = self.nodes.get(node_id) {
            self.dirty_nets.extend(info.networks().map(str::to_string));
        }
    }

    /// The data path address of a node, if known.
    fn data_path_addr(&self, node_id: &str) -> Option<IpAddr> {
        self.announced
            .get(node_id)
            .copied()
            .or_else(|| self.nodes.get(node_id)?.status_addr)
    }

    /// Whether something changed since the last [`Model::refresh`].
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty_nets.is_empty() || !self.dirty_nodes.is_empty()
    }

    /// Computes the shared view of every dirty network again and returns the nodes whose view
    /// may have changed (those on a dirty network and those whose own attachments changed).
    pub(crate) fn refresh(&mut self) -> HashSet<String> {
        let mut affected = std::mem::take(&mut self.dirty_nodes);
        for net in std::mem::take(&mut self.dirty_nets) {
            match self.network_view(&net) {
                Some(view) => {
                    self.shared.insert(net.clone(), view);
                }
                None => {
                    self.shared.remove(&net);
                }
            }
            if let Some(nodes) = self.net_nodes.get(&net) {
                affected.extend(nodes.iter().cloned());
            }
        }
        affected
    }

    /// The view of `net` every node on it shares, from the indexes.
    fn network_view(&self, net: &str) -> Option<NetworkView> {
        let info = self.networks.get(net)?;
        let peers = self
            .net_nodes
            .get(net)
            .into_iter()
            .flatten()
            .filter_map(|node| {
                let addr = self.data_path_addr(node)?;
                let node_addr = self
                    .nodes
                    .get(node)?
                    .attachments
                    .iter()
                    .find(|(n, _)| n == net)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                let (wireguard_public_key, wireguard_port) =
                    self.keys.get(node).cloned().unwrap_or_default();
                Some(Peer {
                    node_id: node.clone(),
                    data_path_addr: addr.to_string(),
                    node_addr,
                    wireguard_public_key,
                    wireguard_port,
                })
            })
            .collect();
        let tasks = self.net_tasks.get(net);
        let endpoints: Vec<Endpoint> = tasks
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let t = self.tasks.get(id)?;
                let (_, addr, aliases) = t.attachments.iter().find(|(n, _, _)| n == net)?;
                Some(Endpoint {
                    task_id: id.clone(),
                    task_name: t.name.clone(),
                    service_id: t.service_id.clone(),
                    node_id: t.node_id.clone(),
                    addr: addr.clone(),
                    aliases: aliases.clone(),
                    running: t.running,
                })
            })
            .collect();
        let service_ids: BTreeSet<&String> = self
            .net_vips
            .get(net)
            .into_iter()
            .flatten()
            .chain(endpoints.iter().map(|e| &e.service_id))
            .collect();
        let services = service_ids
            .into_iter()
            .filter_map(|id| {
                let s = self.services.get(id)?;
                Some(ServiceView {
                    id: id.clone(),
                    name: s.name.clone(),
                    vip: s
                        .vips
                        .iter()
                        .find(|(n, _)| n == net)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default(),
                    dnsrr: s.dnsrr,
                    ingress_ports: if info.ingress {
                        s.ingress_ports.clone()
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect();
        Some(NetworkView {
            id: net.to_string(),
            name: info.name.clone(),
            vni: info.vni,
            subnets: info.subnets.clone(),
            ingress: info.ingress,
            encrypted: info.encrypted,
            node_addr: String::new(),
            peers,
            services,
            endpoints,
        })
    }

    /// The view of `node_id` from the shared views of its networks (call after
    /// [`Model::refresh`]): its swarm networks by ID, itself left out of the peers.
    pub(crate) fn node_view(&self, node_id: &str, version: u64) -> NodeView {
        let networks = self
            .nodes
            .get(node_id)
            .into_iter()
            .flat_map(|n| &n.attachments)
            .filter_map(|(net, addr)| {
                let mut view = self.shared.get(net)?.clone();
                view.node_addr.clone_from(addr);
                view.peers.retain(|p| p.node_id != node_id);
                Some(view)
            })
            .collect();
        NodeView { version, networks }
    }
}

/// Whether a task event can matter to a view: the task has (or had) an attachment.
fn task_event_matters(event: &Event) -> bool {
    let has = |t: Option<&api::Task>| t.is_some_and(|t| !t.networks.is_empty());
    match event.object_as::<api::Task>() {
        Some(t) => has(Some(t)) || has(event.old_as::<api::Task>()),
        None => true,
    }
}

/// A stream's wish to hear a node's views.
struct Register {
    node_id: String,
    addr: Option<IpAddr>,
    key: Vec<u8>,
    port: u32,
    tx: watch::Sender<Option<Arc<NodeView>>>,
}

/// The running term: where Watch calls register.
struct TermHandle {
    requests: mpsc::UnboundedSender<Register>,
    token: CancellationToken,
}

/// The leader's NetworkPlane: serves Watch while a term runs ([`NetworkPlane::run`], a leader
/// subsystem).
#[derive(Clone)]
pub struct NetworkPlane {
    inner: Arc<Inner>,
}

struct Inner {
    store: MemoryStore,
    term: Mutex<Option<TermHandle>>,
    debounce: Duration,
}

/// Why [`NetworkPlane::run`] stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another term is running.
    #[error("the network plane is already running")]
    AlreadyRunning,
    /// The store's watch closed.
    #[error("the store watch closed")]
    WatchClosed,
}

impl NetworkPlane {
    /// A stopped plane over `store`.
    pub fn new(store: MemoryStore) -> NetworkPlane {
        NetworkPlane::with_debounce(store, DEBOUNCE)
    }

    /// A stopped plane that gathers changes for `debounce` before sending views.
    pub fn with_debounce(store: MemoryStore, debounce: Duration) -> NetworkPlane {
        NetworkPlane {
            inner: Arc::new(Inner {
                store,
                term: Mutex::new(None),
                debounce,
            }),
        }
    }

    /// Runs one leadership term until `shutdown`: follows the store and sends each registered
    /// node its views.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let token = shutdown.child_token();
        let filter = WatchFilter::none()
            .networks()
            .nodes()
            .services()
            .tasks()
            .select(|e, _| task_event_matters(e));
        let (mut model, mut watcher) = self.inner.store.view_and_watch(filter, Model::load);
        let mut version = self.inner.store.last_index();
        let (requests, mut incoming) = mpsc::unbounded_channel();
        let mine = requests.clone();
        {
            let mut slot = lock(&self.inner.term);
            if slot.as_ref().is_some_and(|t| !t.token.is_cancelled()) {
                return Err(RunError::AlreadyRunning);
            }
            *slot = Some(TermHandle {
                requests,
                token: token.clone(),
            });
        }
        info!("network plane starting");
        let mut streams: HashMap<String, Vec<watch::Sender<Option<Arc<NodeView>>>>> =
            HashMap::new();
        model.refresh();
        let mut due: Option<Instant> = None;
        let result = loop {
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = token.cancelled() => break Ok(()),
                ev = watcher.recv() => match ev {
                    Some(Event::Commit { version: v }) => {
                        version = v;
                        if model.is_dirty() && due.is_none() {
                            due = Some(Instant::now() + self.inner.debounce);
                        }
                    }
                    Some(ev) => model.apply(&ev),
                    None => break Err(RunError::WatchClosed),
                },
                () = sleep => {
                    due = None;
                    publish(&mut model, &mut streams, version);
                }
                Some(reg) = incoming.recv() => {
                    if let Some(addr) = reg.addr {
                        model.announce(&reg.node_id, addr);
                    }
                    model.announce_key(&reg.node_id, reg.key, reg.port);
                    // Everything pending goes out first, so the new stream starts from the
                    // same state as the node's other streams.
                    publish(&mut model, &mut streams, version);
                    due = None;
                    let view = Arc::new(model.node_view(&reg.node_id, version));
                    debug!(node.id = %reg.node_id, networks = view.networks.len(), "network plane stream opened");
                    let _ = reg.tx.send(Some(view));
                    let list = streams.entry(reg.node_id).or_default();
                    list.retain(|tx| !tx.is_closed());
                    list.push(reg.tx);
                }
            }
        };
        token.cancel();
        {
            // A next term may have started already: leave it.
            let mut slot = lock(&self.inner.term);
            if slot
                .as_ref()
                .is_some_and(|t| t.requests.same_channel(&mine))
            {
                *slot = None;
            }
        }
        info!("network plane stopped");
        result
    }

    /// Opens a stream of `node_id`'s views; `addr` is its data path address if known.
    pub fn watch(&self, node_id: &str, addr: Option<IpAddr>) -> Result<ViewStream, Status> {
        self.watch_with_key(node_id, addr, Vec::new(), 0)
    }

    /// The same, for a node announcing WireGuard public key `key` (empty: none) and its tunnel's
    /// UDP port `port` (0: not announced).
    pub fn watch_with_key(
        &self,
        node_id: &str,
        addr: Option<IpAddr>,
        key: Vec<u8>,
        port: u32,
    ) -> Result<ViewStream, Status> {
        let slot = lock(&self.inner.term);
        let term = slot
            .as_ref()
            .filter(|t| !t.token.is_cancelled())
            .ok_or_else(|| Status::unavailable("the network plane is stopped"))?;
        let (tx, rx) = watch::channel(None);
        term.requests
            .send(Register {
                node_id: node_id.to_string(),
                addr,
                key,
                port,
                tx,
            })
            .map_err(|_| Status::unavailable("the network plane is stopped"))?;
        Ok(ViewStream {
            inner: WatchStream::new(rx),
            last: None,
        })
    }
}

/// Computes what changed and sends each affected node with a stream its new view, when it
/// differs from the one its stream holds.
fn publish(
    model: &mut Model,
    streams: &mut HashMap<String, Vec<watch::Sender<Option<Arc<NodeView>>>>>,
    version: u64,
) {
    if !model.is_dirty() {
        return;
    }
    let affected = model.refresh();
    for node in affected {
        let Some(list) = streams.get_mut(&node) else {
            continue;
        };
        list.retain(|tx| !tx.is_closed());
        if list.is_empty() {
            streams.remove(&node);
            continue;
        }
        let view = Arc::new(model.node_view(&node, version));
        for tx in list {
            tx.send_if_modified(|cur| {
                let changed = cur.as_ref().is_none_or(|c| c.networks != view.networks);
                if changed {
                    *cur = Some(view.clone());
                }
                changed
            });
        }
    }
}

/// The views of one Watch stream: the latest one whenever it changes (a slow reader skips the
/// intermediate ones, never two equal in a row); ends with the term.
pub struct ViewStream {
    inner: WatchStream<Option<Arc<NodeView>>>,
    last: Option<Arc<NodeView>>,
}

impl Stream for ViewStream {
    type Item = Result<NodeView, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(None)) => {}
                Poll::Ready(Some(Some(view))) => {
                    if self
                        .last
                        .as_ref()
                        .is_some_and(|l| l.networks == view.networks)
                    {
                        continue;
                    }
                    self.last = Some(view.clone());
                    return Poll::Ready(Some(Ok((*view).clone())));
                }
            }
        }
    }
}

/// The gRPC face of a [`NetworkPlane`] for one listener.
#[derive(Clone)]
pub struct NetworkPlaneService {
    plane: NetworkPlane,
    /// Set on the local socket: the node every call comes from.
    local_node: Option<String>,
}

impl NetworkPlaneService {
    /// For the remote port: callers are identified by their certificates.
    pub fn remote(plane: NetworkPlane) -> NetworkPlaneService {
        NetworkPlaneService {
            plane,
            local_node: None,
        }
    }

    /// For the control socket: every caller is `node_id` (this manager's node).
    pub fn local(plane: NetworkPlane, node_id: String) -> NetworkPlaneService {
        NetworkPlaneService {
            plane,
            local_node: Some(node_id),
        }
    }

    /// The server to mount.
    pub fn into_server(self) -> api::netplane::network_plane_server::NetworkPlaneServer<Self> {
        api::netplane::network_plane_server::NetworkPlaneServer::new(self)
            .max_decoding_message_size(crate::msgsize::MAX_RECV)
    }
}

/// The data path address a Watch names: the announced one, else where the call came from.
fn requested_addr(announced: &str, source: Option<IpAddr>) -> Result<Option<IpAddr>, Status> {
    if announced.is_empty() {
        return Ok(source);
    }
    announced
        .parse::<IpAddr>()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("invalid data path address {announced:?}")))
}

#[tonic::async_trait]
impl api::netplane::network_plane_server::NetworkPlane for NetworkPlaneService {
    type WatchStream = ViewStream;

    async fn watch(
        &self,
        req: Request<api::netplane::WatchRequest>,
    ) -> Result<Response<ViewStream>, Status> {
        let (node_id, source) = match &self.local_node {
            Some(id) => (id.clone(), None),
            None => {
                let cert = ca::peer_cert_info(&req).ok_or_else(|| {
                    Status::permission_denied("no client certificates in request")
                })?;
                (cert.node_id, ca::peer_ip(&req))
            }
        };
        let addr = requested_addr(&req.get_ref().data_path_addr, source)?;
        let api::netplane::WatchRequest {
            wireguard_public_key: key,
            wireguard_port: port,
            ..
        } = req.into_inner();
        if !key.is_empty() && key.len() != 32 {
            return Err(Status::invalid_argument(format!(
                "a WireGuard public key has 32 bytes, not {}",
                key.len()
            )));
        }
        if port > u32::from(u16::MAX) {
            return Err(Status::invalid_argument(format!(
                "a WireGuard port is at most 65535, not {port}"
            )));
        }
        self.plane
            .watch_with_key(&node_id, addr, key, port)
            .map(Response::new)
    }
}

#[cfg(test)]
#[path = "netplane_tests.rs"]
mod tests;
