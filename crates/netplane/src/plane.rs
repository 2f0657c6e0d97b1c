//! [`Dataplane`]: the node's data plane as a whole. It starts by removing what a crashed run left
//! (the sandboxes and networks recorded in its state directory), makes the kernel match each
//! [`NodeView`] it is given (the networks' devices and entries, then the resolver and the
//! balancer), makes and removes process tasks' sandboxes (and forwards their HOST-mode ports from
//! the node), and removes everything on a clean stop.
//!
//! Encrypted networks' VXLAN packets go through the node's WireGuard tunnel ([`Tunnel`]), whose
//! peers are the other nodes of the encrypted networks in the view. Its key pair is made at the
//! start and announced from then on; the tunnel itself (TUN device, socket, rules, guard) opens
//! with the first encrypted network the node gets devices for and closes with the last. A node
//! whose tunnel cannot open refuses encrypted networks ([`Error::CannotEncrypt`]: their tasks
//! are rejected) rather than carry them in clear; after a failed opening it refuses them with that
//! reason for [`TUNNEL_RETRY`] before it tries again (not once per network of every view).
//!
//! A network's devices exist while the view lists it or a local sandbox uses it: a task's
//! sandbox may be made before the first view naming its network arrives (the devices are then
//! made from the network object the task carries), and a stale view must not pull the bridge
//! from under a running task.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtnetlink::Handle;
use tokio::sync::{Mutex, watch};

use crate::netlink::kernel;
use crate::overlay::{Cidr, NetSpec, Overlay};
use crate::sandbox::{Attachment, Sandbox, TaskNet};
use crate::tunnel::{Counters, NodeKey, PeerSpec, Tunnel, TunnelStats};
use crate::{Config, Error, NetnsPath, NodeView, dns, lb};

/// How long after the tunnel failed to open the next try waits.
pub const TUNNEL_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    view: NodeView,
    /// Network ID -> its devices.
    networks: HashMap<String, Overlay>,
    /// Task ID -> its sandbox.
    sandboxes: HashMap<String, Sandbox>,
    /// Task ID -> a container on the networks' bridges (Docker executor).
    containers: HashMap<String, Container>,
    /// The WireGuard tunnel, open while an encrypted network has devices here.
    tunnel: Option<Tunnel>,
    /// Whether this run set the tunnel's guard, which stays until [`Dataplane::stop`].
    guarded: bool,
    /// When the tunnel last failed to open, and why: encrypted networks are refused with that
    /// reason, without another try, for [`TUNNEL_RETRY`].
    tunnel_failed: Option<(std::time::Instant, String)>,
    stopped: bool,
}

/// A task's container that another runtime (the Docker engine) put on the networks' bridges:
/// the networks it keeps, and its namespace once it runs, where its virtual IPs are balanced.
#[derive(Debug, Default)]
struct Container {
    networks: Vec<String>,
    /// The namespace's path (`/proc/<pid>/ns/net`) and inode: a path whose inode is another
    /// (the container ended and its PID was reused) is not the container's any more.
    netns: Option<(NetnsPath, u64)>,
}

/// The inode of the namespace at `path`, if there is one.
fn netns_inode(path: &NetnsPath) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(&path.0).ok().map(|m| m.ino())
}

/// The node's data plane (see the module docs).
#[derive(Debug)]
pub struct Dataplane {
    config: Config,
    nl: Handle,
    /// `<state_dir>/netplane`: records of the sandboxes and networks made.
    records: PathBuf,
    state: Mutex<State>,
    /// The resolver; `None` for a data plane working in another namespace ([`Dataplane::start_in`],
    /// for tests), whose gateways this process's sockets cannot bind.
    resolver: Option<dns::Resolver>,
    balancer: lb::Balancer,
    /// The latest view handed to [`Dataplane::set_view`], applied in order by a task of its own.
    views: watch::Sender<Option<NodeView>>,
    /// The network namespace it works in (`None`: the process's).
    netns: Option<PathBuf>,
    /// The node's WireGuard key pair, or why it could not be made.
    key: Result<NodeKey, String>,
    /// What the tunnel did, over all its openings.
    counters: Arc<Counters>,
}

/// Why a task cannot have its sandbox: the message a REJECTED task reports.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

impl Dataplane {
    /// The data plane of the caller's network namespace, after removing what a crashed run of
    /// this node left in it.
    pub async fn start(config: Config) -> Result<Arc<Dataplane>, Error> {
        Self::start_with(config, None).await
    }

    /// The same, working in the network namespace at `netns` instead (tests run several nodes'
    /// data planes in one process).
    pub async fn start_in(config: Config, netns: &NetnsPath) -> Result<Arc<Dataplane>, Error> {
        Self::start_with(config, Some(netns.0.as_path())).await
    }

    async fn start_with(config: Config, netns: Option<&Path>) -> Result<Arc<Dataplane>, Error> {
        let nl = crate::netlink::connect(netns)?;
        let records = config.state_dir.join("netplane");
        for sub in ["sandboxes", "networks"] {
            let dir = records.join(sub);
            fs::create_dir_all(&dir).map_err(kernel(format!("creating {}", dir.display())))?;
        }
        let (views, rx) = watch::channel(None);
        let key = NodeKey::generate()
            .map_err(|e| e.to_string())
            .inspect_err(|why| {
                tracing::warn!(
                    "no WireGuard key: tasks on encrypted networks will be rejected: {why}"
                );
            });
        let plane = Arc::new(Dataplane {
            config,
            nl,
            records,
            state: Mutex::new(State::default()),
            resolver: netns.is_none().then(dns::Resolver::new),
            balancer: match netns {
                Some(netns) => lb::Balancer::in_netns(NetnsPath(netns.to_path_buf())),
                None => lb::Balancer::new(),
            },
            views,
            netns: netns.map(Path::to_path_buf),
            key,
            counters: Arc::default(),
        });
        // The mesh must not take swarmd's own VXLAN and WireGuard traffic.
        plane.balancer.set_reserved_ports(vec![
            plane.config.vxlan_port,
            plane.config.encrypted_vxlan_port,
            plane.config.wireguard_port,
        ]);
        plane.remove_leftovers().await?;
        tokio::spawn(apply_views(Arc::downgrade(&plane), rx));
        Ok(plane)
    }

    /// What the node announces when it asks for its view.
    pub fn watch_request(&self) -> api::netplane::WatchRequest {
        api::netplane::WatchRequest {
            data_path_addr: self
                .config
                .data_path_addr
                .map(|a| a.to_string())
                .unwrap_or_default(),
            wireguard_public_key: self
                .key
                .as_ref()
                .map(|k| k.public().to_vec())
                .unwrap_or_default(),
            wireguard_port: u32::from(self.config.wireguard_port),
        }
    }

    /// What the WireGuard tunnel did so far, over all the times it was open (`None` on a node
    /// without a key).
    pub fn tunnel_stats(&self) -> Option<TunnelStats> {
        self.key.as_ref().ok().map(|_| self.counters.stats())
    }

    /// Whether the WireGuard tunnel is open (tests).
    pub async fn tunnel_open(&self) -> bool {
        self.state.lock().await.tunnel.is_some()
    }

    /// Hands over a new view, applied in the background (only the latest one counts); failures
    /// are logged and retried with the next view.
    pub fn set_view(&self, view: NodeView) {
        self.views.send_replace(Some(view));
    }

    /// Removes the sandboxes and networks an earlier run of this node recorded, and its rules.
    async fn remove_leftovers(&self) -> Result<(), Error> {
        let sandboxes = self.records.join("sandboxes");
        for entry in read_dir(&sandboxes)? {
            tracing::info!(sandbox = %entry.display(), "removing a sandbox an earlier run left");
            crate::sandbox::remove_recorded(&self.nl, &entry).await?;
        }
        let networks = self.records.join("networks");
        for entry in read_dir(&networks)? {
            let vni = entry.file_name().and_then(|n| n.to_str()?.parse().ok());
            for name in vni.into_iter().flat_map(|v| {
                [
                    crate::overlay::vxlan_name(v),
                    crate::overlay::bridge_name(v),
                ]
            }) {
                if let Some(idx) = crate::netlink::link_index(&self.nl, &name).await? {
                    tracing::info!(link = %name, "removing a device an earlier run left");
                    crate::netlink::del_link(&self.nl, idx, &name).await?;
                }
            }
            let _ = fs::remove_file(&entry);
        }
        // The routing rules and guard of an earlier run's tunnel, now that its encrypted
        // networks' devices are gone; not while a TUN device of the port exists: a live
        // process (another swarmd in the namespace, or this one's) holds it.
        let tun = crate::tunnel::tun_name(self.config.wireguard_port);
        if crate::netlink::link_index(&self.nl, &tun).await?.is_none() {
            crate::tunnel::remove_leftovers(
                &self.nl,
                self.netns.as_deref(),
                self.config.encrypted_vxlan_port,
            )
            .await?;
        }
        self.balancer.remove_leftover_rules().await
    }

    /// Makes the kernel match `view`: devices for every network it lists (and the ones local
    /// sandboxes use), entries for its remote addresses, then the resolver and the balancer.
    /// A failing part does not stop the others: the errors are reported together.
    pub async fn apply(&self, view: NodeView) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.stopped {
            return Ok(());
        }
        state.view = view.clone();
        let mut errors = Vec::new();
        if let Some(tunnel) = &state.tunnel {
            tunnel.set_peers(&peer_specs(&view));
        }
        for n in &view.networks {
            let spec = match NetSpec::from_view(n) {
                Ok(spec) => spec,
                Err(why) => {
                    tracing::warn!(network = %n.name, "{why}");
                    continue;
                }
            };
            let result = async {
                let overlay = self.ensure_network(&mut state, &spec).await?;
                overlay
                    .set_node_addr(&self.nl, n.node_addr.parse::<Cidr>().ok())
                    .await?;
                overlay
                    .sync(&self.nl, &crate::overlay::remote_entries(n))
                    .await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(network = %n.name, "setting up the network: {e}");
                errors.push(e);
            }
        }
        if let Err(e) = self.remove_unused(&mut state).await {
            tracing::warn!("removing unused networks: {e}");
            errors.push(e);
        }
        tracing::info!(
            version = view.version,
            networks = view.networks.len(),
            "network view applied"
        );
        let sandboxes: Vec<(NetnsPath, Vec<String>)> = state
            .sandboxes
            .values()
            .map(|s| (s.netns.clone(), s.networks.clone()))
            .collect();
        let containers: Vec<(String, NetnsPath, u64, Vec<String>)> = state
            .containers
            .iter()
            .filter_map(|(task, c)| {
                let (netns, ino) = c.netns.clone()?;
                Some((task.clone(), netns, ino, c.networks.clone()))
            })
            .collect();
        drop(state);
        if let Some(resolver) = &self.resolver
            && let Err(e) = resolver.update(&view).await
        {
            tracing::warn!("updating the resolver: {e}");
            errors.push(e);
        }
        if let Err(e) = self.balancer.apply_node(&view).await {
            tracing::warn!("the node's virtual IP and routing mesh rules: {e}");
            errors.push(e);
        }
        for (netns, networks) in sandboxes {
            if let Err(e) = self.balancer.apply_sandbox(&netns, &networks, &view).await {
                tracing::warn!(netns = %netns.0.display(), "virtual IPs in the task's namespace: {e}");
                errors.push(e);
            }
        }
        // A container's namespace goes when it ends, before its task is removed: one gone is
        // let go of, one that fails does not keep the others from their views.
        for (task, netns, ino, networks) in containers {
            if netns_inode(&netns) != Some(ino) {
                self.balancer.forget_sandbox(&netns);
                let mut state = self.state.lock().await;
                if let Some(c) = state.containers.get_mut(&task)
                    && c.netns.as_ref().is_some_and(|(_, i)| *i == ino)
                {
                    c.netns = None;
                }
                continue;
            }
            if let Err(e) = self.balancer.apply_sandbox(&netns, &networks, &view).await {
                tracing::warn!(task.id = %task, "virtual IPs in the container's namespace: {e}");
            }
        }
        Error::from_all(errors)
    }

    /// The devices of network `spec`, made if missing.
    async fn ensure_network<'a>(
        &self,
        state: &'a mut State,
        spec: &NetSpec,
    ) -> Result<&'a mut Overlay, Error> {
        let stale = state
            .networks
            .get(&spec.id)
            .is_some_and(|o| o.spec != *spec);
        if stale && let Some(old) = state.networks.remove(&spec.id) {
            old.remove(&self.nl).await?;
        }
        if spec.encrypted && state.tunnel.is_none() {
            let cannot = |why: String| Error::CannotEncrypt {
                network: spec.id.clone(),
                why,
            };
            let key = self.key.as_ref().map_err(|why| cannot(why.clone()))?;
            if let Some((at, why)) = &state.tunnel_failed
                && at.elapsed() < TUNNEL_RETRY
            {
                return Err(cannot(why.clone()));
            }
            let opened = Tunnel::start(
                &self.nl,
                self.netns.as_deref(),
                match self.config.data_path_addr {
                    Some(std::net::IpAddr::V4(a)) => Some(a),
                    _ => None,
                },
                (self.config.wireguard_port, self.config.encrypted_vxlan_port),
                key,
                self.counters.clone(),
            )
            .await;
            let tunnel = match opened {
                Ok(tunnel) => tunnel,
                Err(e) => {
                    self.counters.open_failed();
                    let why = format!(
                        "{e} (tried again once {} s have passed)",
                        TUNNEL_RETRY.as_secs()
                    );
                    tracing::warn!(error = %e, "the WireGuard tunnel cannot open: encrypted networks are refused on this node");
                    state.tunnel_failed = Some((std::time::Instant::now(), why.clone()));
                    return Err(cannot(why));
                }
            };
            state.tunnel_failed = None;
            tunnel.set_peers(&peer_specs(&state.view));
            state.tunnel = Some(tunnel);
            state.guarded = true;
        }
        if !state.networks.contains_key(&spec.id) {
            let record = self.records.join("networks").join(spec.vni.to_string());
            fs::write(&record, &spec.id)
                .map_err(kernel(format!("writing {}", record.display())))?;
            let overlay = Overlay::ensure(
                &self.nl,
                spec,
                self.config.data_path_addr,
                if spec.encrypted {
                    self.config.encrypted_vxlan_port
                } else {
                    self.config.vxlan_port
                },
            )
            .await
            .inspect_err(|_| {
                let _ = fs::remove_file(&record);
            })?;
            state.networks.insert(spec.id.clone(), overlay);
        }
        Ok(state.networks.get_mut(&spec.id).expect("just made"))
    }

    /// Removes the devices of networks neither the view nor a sandbox uses.
    async fn remove_unused(&self, state: &mut State) -> Result<(), Error> {
        let unused: Vec<String> = state
            .networks
            .keys()
            .filter(|id| {
                !state.view.networks.iter().any(|n| &n.id == *id)
                    && !state.sandboxes.values().any(|s| s.networks.contains(id))
                    && !state.containers.values().any(|c| c.networks.contains(id))
            })
            .cloned()
            .collect();
        for id in unused {
            if let Some(overlay) = state.networks.remove(&id) {
                tracing::info!(network.id = %id, vni = overlay.spec.vni, "removing the network's devices: no task uses it");
                let vni = overlay.spec.vni;
                overlay.remove(&self.nl).await?;
                let _ = fs::remove_file(self.records.join("networks").join(vni.to_string()));
            }
        }
        if !state.networks.values().any(|o| o.spec.encrypted)
            && let Some(tunnel) = state.tunnel.take()
        {
            tunnel.close(&self.nl).await?;
        }
        Ok(())
    }

    /// Makes task `task`'s sandbox if it has networks (`None` if it has none: it stays on the
    /// node's network). The error says why the task cannot run here.
    pub async fn create_sandbox(&self, task: &api::Task) -> Result<Option<TaskNet>, SandboxError> {
        if task.networks.is_empty() {
            return Ok(None);
        }
        let mut state = self.state.lock().await;
        if let Some(s) = state.sandboxes.get(&task.id) {
            return Ok(Some(s.task_net()));
        }
        let mut attachments = Vec::new();
        for a in &task.networks {
            let spec = attachment_spec(a)?;
            let addr: Cidr = a
                .addresses
                .iter()
                .find_map(|s| s.parse().ok())
                .ok_or_else(|| {
                    SandboxError(format!("no IPv4 address allocated on network {}", spec.id))
                })?;
            let gateway = spec
                .gateways
                .iter()
                .find(|g| g.prefix == addr.prefix && same_subnet(g, &addr))
                .map(|g| g.addr);
            let overlay = self
                .ensure_network(&mut state, &spec)
                .await
                .map_err(|e| SandboxError(format!("overlay network {}: {e}", spec.id)))?;
            attachments.push(Attachment {
                network_id: spec.id.clone(),
                addr,
                gateway,
                bridge: overlay.bridge,
                mtu: spec.mtu(),
            });
        }
        let made = Sandbox::create(
            &self.nl,
            &self.records.join("sandboxes"),
            &task.id,
            &attachments,
        )
        .await;
        match made {
            Ok(sandbox) => {
                let net = sandbox.task_net();
                let networks = sandbox.networks.clone();
                state.sandboxes.insert(task.id.clone(), sandbox);
                let view = state.view.clone();
                drop(state);
                if let Err(e) = self
                    .balancer
                    .apply_sandbox(&net.netns, &networks, &view)
                    .await
                {
                    tracing::warn!(task.id = %task.id, "balancing in the task's namespace: {e}");
                }
                Ok(Some(net))
            }
            Err(e) => {
                let _ = self.remove_unused(&mut state).await;
                Err(SandboxError(format!("task network namespace: {e}")))
            }
        }
    }

    /// Makes task `task_id`'s HOST-mode `ports` answer on every address of this node, forwarded
    /// to the task in its sandbox (its address on its first network, the target port), until
    /// [`Dataplane::unpublish_host_ports`] or the sandbox goes. The error says why the task
    /// cannot have them.
    pub async fn publish_host_ports(
        &self,
        task_id: &str,
        ports: Vec<lb::HostPort>,
    ) -> Result<(), SandboxError> {
        if ports.is_empty() {
            return Ok(());
        }
        let state = self.state.lock().await;
        if state.stopped {
            return Err(SandboxError("the node's data plane is stopped".into()));
        }
        let primary = state
            .sandboxes
            .get(task_id)
            .and_then(|s| s.primary.clone())
            .ok_or_else(|| {
                SandboxError(format!("task {task_id} has no sandbox to publish ports to"))
            })?;
        let bridge = state
            .networks
            .get(&primary.network_id)
            .map(|o| crate::overlay::bridge_name(o.spec.vni))
            .ok_or_else(|| {
                SandboxError(format!(
                    "network {} has no devices here",
                    primary.network_id
                ))
            })?;
        let forward = lb::HostForward {
            addr: primary.addr.addr,
            prefix: primary.addr.prefix,
            gateway: primary.gateway,
            bridge,
            ports,
        };
        // Held across the apply: a concurrent destroy_sandbox removes the forward after it.
        self.balancer
            .set_host_forward(task_id, Some(forward))
            .await
            .map_err(|e| SandboxError(format!("publishing the task's host ports: {e}")))?;
        drop(state);
        Ok(())
    }

    /// Stops forwarding task `task_id`'s HOST-mode ports (nothing when it has none).
    pub async fn unpublish_host_ports(&self, task_id: &str) -> Result<(), Error> {
        let _state = self.state.lock().await;
        self.balancer.set_host_forward(task_id, None).await
    }

    /// Removes task `task_id`'s sandbox (and its networks' devices if nothing else uses them),
    /// and the forwarding of its HOST-mode ports.
    pub async fn destroy_sandbox(&self, task_id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        // Forgotten even when the apply fails: the next view's apply leaves it out.
        if let Err(e) = self.balancer.set_host_forward(task_id, None).await {
            tracing::warn!(task.id = %task_id, "removing the task's host ports: {e}");
        }
        let dir = self
            .records
            .join("sandboxes")
            .join(crate::sandbox::netns_name(task_id));
        match state.sandboxes.remove(task_id) {
            Some(sandbox) => {
                self.balancer.forget_sandbox(&sandbox.netns);
                sandbox.remove(&self.nl).await?
            }
            None => crate::sandbox::remove_recorded(&self.nl, &dir).await?,
        }
        self.remove_unused(&mut state).await
    }

    /// Makes (or keeps) the devices of task `task`'s networks for a container another runtime
    /// puts on their bridges, and keeps them while the task is attached (until
    /// [`Dataplane::detach_container`]); the bridges' names, in the order of `task.networks`.
    /// The error says why the task cannot run here.
    pub async fn attach_container(&self, task: &api::Task) -> Result<Vec<String>, SandboxError> {
        let mut state = self.state.lock().await;
        if state.stopped {
            return Err(SandboxError("the node's data plane is stopped".into()));
        }
        let mut bridges = Vec::new();
        let mut networks = Vec::new();
        for a in &task.networks {
            let spec = attachment_spec(a)?;
            let overlay = self.ensure_network(&mut state, &spec).await;
            if let Err(e) = overlay {
                let _ = self.remove_unused(&mut state).await;
                return Err(SandboxError(format!("overlay network {}: {e}", spec.id)));
            }
            bridges.push(crate::overlay::bridge_name(spec.vni));
            networks.push(spec.id);
        }
        let entry = state.containers.entry(task.id.clone()).or_default();
        entry.networks = networks;
        Ok(bridges)
    }

    /// Balances task `task`'s virtual IPs in its running container's namespace `netns`
    /// (`/proc/<pid>/ns/net`), now and at every view; attaches the task first if it is not.
    pub async fn container_running(
        &self,
        task: &api::Task,
        netns: NetnsPath,
    ) -> Result<(), SandboxError> {
        self.attach_container(task).await?;
        let ino = netns_inode(&netns)
            .ok_or_else(|| SandboxError(format!("no namespace at {}", netns.0.display())))?;
        if netns_inode(&NetnsPath("/proc/self/ns/net".into())) == Some(ino) {
            return Err(SandboxError(
                "the container shares the node's network namespace".into(),
            ));
        }
        let mut state = self.state.lock().await;
        let Some(c) = state.containers.get_mut(&task.id) else {
            return Ok(());
        };
        if let Some((old, old_ino)) = c.netns.take()
            && (old != netns || old_ino != ino)
        {
            self.balancer.forget_sandbox(&old);
        }
        c.netns = Some((netns.clone(), ino));
        let networks = c.networks.clone();
        let view = state.view.clone();
        let bridges: Vec<(Cidr, u32)> = networks
            .iter()
            .filter_map(|id| state.networks.get(id))
            .flat_map(|o| o.spec.gateways.iter().map(|g| (*g, o.bridge)))
            .collect();
        drop(state);
        if let Err(e) = self.replug(&netns, &bridges).await {
            tracing::warn!(task.id = %task.id, "putting the container's interfaces back on their bridges: {e}");
        }
        self.balancer
            .apply_sandbox(&netns, &networks, &view)
            .await
            .map_err(|e| SandboxError(format!("balancing in the container's namespace: {e}")))
    }

    /// Puts each interface of the namespace `netns` whose peer (a veth's other end, in the
    /// node's namespace) is on no bridge or another one back on the bridge of the network its
    /// address is in (`bridges`: gateway with the subnet's prefix, bridge index). A container
    /// adopted after a restart needs it: the start removed the devices the last run left, and
    /// the bridge made again has none of the veths the engine had put on the old one.
    async fn replug(&self, netns: &NetnsPath, bridges: &[(Cidr, u32)]) -> Result<(), Error> {
        use futures_util::TryStreamExt;
        use rtnetlink::packet_route::address::AddressAttribute;
        use rtnetlink::packet_route::link::LinkAttribute;
        let what = |w: &str| kernel(format!("{w} in {}", netns.0.display()));
        let inner = crate::netlink::connect(Some(&netns.0))?;
        let links: Vec<_> = inner
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| what("listing links")(crate::netlink::to_io(e)))?;
        for link in links {
            let Some(peer) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            }) else {
                continue;
            };
            let addrs: Vec<_> = inner
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute()
                .try_collect()
                .await
                .map_err(|e| what("listing addresses")(crate::netlink::to_io(e)))?;
            let bridge = addrs
                .iter()
                .flat_map(|a| &a.attributes)
                .find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => {
                        bridges.iter().find_map(|(gw, bridge)| {
                            let addr = Cidr {
                                addr: *ip,
                                prefix: gw.prefix,
                            };
                            same_subnet(gw, &addr).then_some(*bridge)
                        })
                    }
                    _ => None,
                });
            let Some(bridge) = bridge else { continue };
            let host_side: Vec<_> = self
                .nl
                .link()
                .get()
                .match_index(peer)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel(format!("looking up link {peer}"))(crate::netlink::to_io(e)))?;
            let on = host_side
                .iter()
                .flat_map(|l| &l.attributes)
                .find_map(|a| match a {
                    LinkAttribute::Controller(i) => Some(*i),
                    _ => None,
                });
            if host_side.is_empty() || on == Some(bridge) {
                continue;
            }
            tracing::info!(
                link = peer,
                bridge,
                "putting a container's interface back on its bridge"
            );
            crate::netlink::set_link(
                &self.nl,
                crate::netlink::change(peer).controller(bridge).build(),
                &format!("putting link {peer} on bridge {bridge}"),
            )
            .await?;
        }
        Ok(())
    }

    /// Lets go of task `task_id`'s container (removed): its networks' devices go when nothing
    /// else uses them.
    pub async fn detach_container(&self, task_id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.containers.remove(task_id)
            && let Some((netns, _)) = &c.netns
        {
            self.balancer.forget_sandbox(netns);
        }
        self.remove_unused(&mut state).await
    }

    /// Removes everything: sandboxes, networks, rules, and stops the resolver. Views handed over
    /// afterwards are ignored. Containers on the bridges lose them.
    pub async fn stop(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        state.stopped = true;
        state.view = NodeView::default();
        for (_, c) in state.containers.drain() {
            if let Some((netns, _)) = &c.netns {
                self.balancer.forget_sandbox(netns);
            }
        }
        for (_, sandbox) in state.sandboxes.drain() {
            self.balancer.forget_sandbox(&sandbox.netns);
            sandbox.remove(&self.nl).await?;
        }
        drop(state);
        if let Some(resolver) = &self.resolver {
            resolver.stop().await;
        }
        let mut state = self.state.lock().await;
        // Every network is unused now: the tunnel closes with the last encrypted one.
        self.remove_unused(&mut state).await?;
        // The guard the closed tunnel left, even while its TUN device lingers (which keeps
        // `remove_leftovers` from it).
        if std::mem::take(&mut state.guarded) {
            crate::tunnel::remove_leftovers(
                &self.nl,
                self.netns.as_deref(),
                self.config.encrypted_vxlan_port,
            )
            .await?;
        }
        drop(state);
        self.remove_leftovers().await?;
        self.balancer.remove_node_rules().await
    }

    /// The IDs of the networks whose devices exist now (tests).
    pub async fn networks(&self) -> BTreeMap<String, u32> {
        let state = self.state.lock().await;
        state
            .networks
            .iter()
            .map(|(id, o)| (id.clone(), o.spec.vni))
            .collect()
    }
}

/// The tunnel's peers in `view`: the other nodes of its encrypted networks (by data path
/// address) with their keys and the networks shared with each.
fn peer_specs(view: &NodeView) -> HashMap<std::net::Ipv4Addr, PeerSpec> {
    let mut peers: HashMap<std::net::Ipv4Addr, PeerSpec> = HashMap::new();
    for n in view.networks.iter().filter(|n| n.encrypted) {
        for p in &n.peers {
            let Ok(addr) = p.data_path_addr.parse() else {
                continue;
            };
            match <[u8; 32]>::try_from(p.wireguard_public_key.as_slice()) {
                Ok(key) => {
                    let port = u16::try_from(p.wireguard_port).ok().filter(|p| *p != 0);
                    let spec = peers.entry(addr).or_insert_with(|| PeerSpec {
                        key,
                        port,
                        vnis: Default::default(),
                    });
                    spec.key = key;
                    spec.port = port;
                    spec.vnis.insert(n.vni);
                }
                Err(_) => tracing::warn!(
                    network = %n.name,
                    node.id = %p.node_id,
                    "the node has announced no WireGuard key: the network's packets to it are dropped"
                ),
            }
        }
    }
    peers
}

/// The network of a task's attachment `a`, as its devices are made.
fn attachment_spec(a: &api::NetworkAttachment) -> Result<NetSpec, SandboxError> {
    let network = a
        .network
        .as_ref()
        .ok_or_else(|| SandboxError("a network attachment has no network".into()))?;
    NetSpec::from_network(network).map_err(SandboxError)
}

fn same_subnet(a: &Cidr, b: &Cidr) -> bool {
    let b_in_a = Cidr {
        addr: b.addr,
        prefix: a.prefix,
    };
    a.network() == b_in_a.network()
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()).map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(kernel(format!("reading {}", dir.display()))(e)),
    }
}

/// Applies each view handed over, in order, until the data plane is dropped.
async fn apply_views(plane: std::sync::Weak<Dataplane>, mut rx: watch::Receiver<Option<NodeView>>) {
    while rx.changed().await.is_ok() {
        let Some(view) = rx.borrow_and_update().clone() else {
            continue;
        };
        let Some(plane) = plane.upgrade() else {
            return;
        };
        if let Err(e) = plane.apply(view).await {
            tracing::warn!("applying the network view: {e}");
        }
    }
}
