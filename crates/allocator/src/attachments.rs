//! Network attachments of tasks and nodes (SwarmKit's `taskCreateNetworkAttachments`,
//! `AllocateTask`/`DeallocateTask`, `getNodeNetworks` and `allocateNode` of
//! `manager/allocator/network.go` and cnmallocator): which networks a task is attached to (the
//! ingress network when its service publishes INGRESS-mode ports, then its spec's networks, or the
//! service's deprecated ones), an address on each overlay network, which addresses every task and
//! node holds, and which networks each node needs an attachment on: ingress, and the overlay
//! networks its tasks at or below RUNNING use. Nothing in this file touches the store: the loop
//! hands it store objects and writes what it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::error::Error;
use crate::networks::is_node_local;

/// Where addresses come from: the IPAM state of the allocated networks.
pub(crate) trait AddressSpace {
    /// Hands out an address of `network_id` (`requested`, a bare or CIDR address, if given), in
    /// CIDR form (`10.0.0.3/24`).
    fn allocate(&mut self, network_id: &str, requested: Option<&str>) -> Result<String, Error>;
    /// Takes `address` (CIDR form) of `network_id`, stored by an earlier leader.
    fn reserve(&mut self, network_id: &str, address: &str) -> Result<(), Error>;
    /// Gives `address` of `network_id` back; an address or network unknown is ignored.
    fn release(&mut self, network_id: &str, address: &str);
}

/// A network address one object holds: network ID and address (CIDR form).
pub(crate) type Held = (String, String);

/// What an attachment to a network needs, from the stored network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressing {
    /// The network has no driver state or IPAM yet: attachments to it wait.
    NotAllocated,
    /// A node-local driver (bridge, host, ...): the node's engine gives addresses.
    NodeLocal,
    /// A cluster-wide (overlay) network: the allocator gives each attachment an address.
    Cluster,
}

/// How attachments to `network` get their addresses.
pub(crate) fn addressing(network: &api::Network) -> Addressing {
    if network.driver_state.is_none() {
        Addressing::NotAllocated
    } else if is_node_local(network) {
        Addressing::NodeLocal
    } else if network.ipam.is_none() {
        Addressing::NotAllocated
    } else {
        Addressing::Cluster
    }
}

/// Whether `network` is the ingress (routing mesh) network: marked so in its spec, or an older
/// one known by its name and internal label.
pub(crate) fn is_ingress_network(network: &api::Network) -> bool {
    let Some(spec) = &network.spec else {
        return false;
    };
    if spec.ingress {
        return true;
    }
    spec.annotations
        .as_ref()
        .is_some_and(|a| a.name == "ingress" && a.labels.contains_key("com.docker.swarm.internal"))
}

/// Whether `service` publishes a port in INGRESS mode, so its tasks and VIPs join ingress.
pub(crate) fn ingress_needed(service: Option<&api::Service>) -> bool {
    service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.endpoint.as_ref())
        .is_some_and(|e| {
            e.ports
                .iter()
                .any(|p| p.publish_mode == api::port_config::PublishMode::Ingress as i32)
        })
}

/// The networks `service`'s tasks attach to: its task template's, else the deprecated
/// service-level ones.
pub(crate) fn service_networks(service: &api::Service) -> &[api::NetworkAttachmentConfig] {
    let Some(spec) = &service.spec else {
        return &[];
    };
    let task = spec
        .task
        .as_ref()
        .map_or(&[][..], |t| t.networks.as_slice());
    if task.is_empty() && !spec.networks.is_empty() {
        &spec.networks
    } else {
        task
    }
}

/// The attachments a NEW task gets, without addresses yet: ingress first when its service needs
/// it, then its spec's networks (or its service's deprecated ones) with their aliases, requested
/// addresses and driver options. A network missing from the store is left out, as SwarmKit does.
pub(crate) fn task_attachments(
    task: &api::Task,
    service: Option<&api::Service>,
    ingress: Option<&api::Network>,
    mut network: impl FnMut(&str) -> Option<api::Network>,
) -> Vec<api::NetworkAttachment> {
    let mut attachments = Vec::new();
    if let Some(ingress) = ingress.filter(|_| ingress_needed(service)) {
        attachments.push(api::NetworkAttachment {
            network: Some(ingress.clone()),
            ..Default::default()
        });
    }
    let mut configs = task
        .spec
        .as_ref()
        .map_or(&[][..], |s| s.networks.as_slice());
    if configs.is_empty()
        && let Some(spec) = service.and_then(|s| s.spec.as_ref())
    {
        configs = &spec.networks;
    }
    for config in configs {
        let Some(n) = network(&config.target) else {
            continue;
        };
        attachments.push(api::NetworkAttachment {
            network: Some(n),
            addresses: config.addresses.clone(),
            aliases: config.aliases.clone(),
            driver_attachment_opts: config.driver_attachment_opts.clone(),
        });
    }
    attachments
}

fn network_id(attachment: &api::NetworkAttachment) -> &str {
    attachment.network.as_ref().map_or("", |n| n.id.as_str())
}

/// Why an attachment could not get its address.
#[derive(Debug)]
pub(crate) struct AttachError {
    /// The network that refused.
    pub(crate) network_id: String,
    pub(crate) error: Error,
}

/// Gives an address to each attachment in `attachments` to a cluster-wide network (the first of
/// its requested addresses that is free, else any), writing it into the attachment, and returns
/// what was taken. `current` gives the latest stored version of each network: an attachment to a
/// network not allocated yet (or gone) fails. On failure nothing stays taken.
pub(crate) fn allocate_attachments(
    space: &mut dyn AddressSpace,
    attachments: &mut [api::NetworkAttachment],
    current: impl Fn(&str) -> Option<api::Network>,
) -> Result<Vec<Held>, AttachError> {
    let mut taken: Vec<Held> = Vec::new();
    for attachment in attachments.iter_mut() {
        let id = network_id(attachment).to_string();
        let result = match current(&id) {
            None => Err(Error::NetworkNotAllocated { id: id.clone() }),
            Some(n) => match addressing(&n) {
                Addressing::NotAllocated => Err(Error::NetworkNotAllocated { id: id.clone() }),
                Addressing::NodeLocal => {
                    attachment.network = Some(n);
                    continue;
                }
                Addressing::Cluster => {
                    attachment.network = Some(n);
                    allocate_one(space, &id, &attachment.addresses)
                }
            },
        };
        match result {
            Ok(address) => {
                attachment.addresses = vec![address.clone()];
                taken.push((id, address));
            }
            Err(error) => {
                release_all(space, &taken);
                return Err(AttachError {
                    network_id: id,
                    error,
                });
            }
        }
    }
    Ok(taken)
}

/// One address of `network_id`: the first requested one that can be had, else any.
fn allocate_one(
    space: &mut dyn AddressSpace,
    network_id: &str,
    requested: &[String],
) -> Result<String, Error> {
    let mut last = None;
    for wanted in requested.iter().filter(|a| !a.is_empty()) {
        match space.allocate(network_id, Some(wanted)) {
            Ok(address) => return Ok(address),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => space.allocate(network_id, None),
    }
}

/// Releases every address of `held`.
pub(crate) fn release_all(space: &mut dyn AddressSpace, held: &[Held]) {
    for (network, address) in held {
        space.release(network, address);
    }
}

/// The addresses of `attachments` on cluster-wide networks, as held.
pub(crate) fn held_addresses(attachments: &[api::NetworkAttachment]) -> Vec<Held> {
    attachments
        .iter()
        .filter(|a| {
            a.network
                .as_ref()
                .is_some_and(|n| addressing(n) == Addressing::Cluster)
        })
        .flat_map(|a| {
            a.addresses
                .iter()
                .map(|addr| (network_id(a).to_string(), addr.clone()))
        })
        .collect()
}

/// Reserves the addresses a stored object holds (allocator start-up); the ones another object
/// already holds (an inconsistent store) are left out and reported. Returns what it took.
pub(crate) fn restore_addresses(
    space: &mut dyn AddressSpace,
    owner: &str,
    stored: Vec<Held>,
) -> Vec<Held> {
    let mut taken = Vec::with_capacity(stored.len());
    for (network, address) in stored {
        match space.reserve(&network, &address) {
            Ok(()) => taken.push((network, address)),
            Err(e) => tracing::error!(
                owner, network.id = %network, address, error = %e,
                "stored network address cannot be restored"
            ),
        }
    }
    taken
}

/// The addresses each owner holds, by owner ID: the allocator's tasks (those at or below RUNNING:
/// a task past RUNNING, or removed, gives them back) and, inside `ServiceVips`, services' VIPs.
#[derive(Debug, Default)]
pub(crate) struct HeldAddresses {
    held: HashMap<String, Vec<Held>>,
}

impl HeldAddresses {
    /// Records what `task_id` holds from now on.
    pub(crate) fn hold(&mut self, task_id: &str, held: Vec<Held>) {
        if !held.is_empty() {
            self.held.insert(task_id.to_string(), held);
        }
    }

    /// Records that `id` holds exactly `held` from now on (nothing when it is empty).
    pub(crate) fn set(&mut self, id: &str, held: Vec<Held>) {
        if held.is_empty() {
            self.held.remove(id);
        } else {
            self.held.insert(id.to_string(), held);
        }
    }

    /// What `id` holds.
    pub(crate) fn get(&self, id: &str) -> Option<&Vec<Held>> {
        self.held.get(id)
    }

    /// Adds `held` to what `task_id` holds.
    pub(crate) fn add(&mut self, task_id: &str, held: Vec<Held>) {
        if !held.is_empty() {
            self.held
                .entry(task_id.to_string())
                .or_default()
                .extend(held);
        }
    }

    pub(crate) fn holds(&self, task_id: &str) -> bool {
        self.held.contains_key(task_id)
    }

    /// Gives back what `task_id` holds; true if it held anything.
    pub(crate) fn release(&mut self, space: &mut dyn AddressSpace, task_id: &str) -> bool {
        match self.held.remove(task_id) {
            Some(held) => {
                release_all(space, &held);
                true
            }
            None => false,
        }
    }

    /// Forgets the addresses on `network_id`, a network that was removed with its address space.
    pub(crate) fn forget_network(&mut self, network_id: &str) {
        self.held.retain(|_, held| {
            held.retain(|(n, _)| n != network_id);
            !held.is_empty()
        });
    }
}

/// Whether `task` is on a node and may still use its networks there.
fn uses_node(task: &api::Task) -> bool {
    !task.node_id.is_empty()
        && task.status.as_ref().map_or(0, |s| s.state) <= api::TaskState::Running as i32
}

/// A node's attachment plan: the attachments to store, the addresses taken for it, and those it
/// gives up once they are stored.
#[derive(Debug)]
pub(crate) struct NodePlan {
    pub(crate) node_id: String,
    pub(crate) attachments: Vec<api::NetworkAttachment>,
    pub(crate) taken: Vec<Held>,
    pub(crate) freed: Vec<Held>,
    /// Networks it needs an address on that could not give one (retried).
    pub(crate) failed: Vec<AttachError>,
}

/// The networks each node needs an attachment on and the addresses those attachments hold.
#[derive(Debug, Default)]
pub(crate) struct NodeAttachments {
    /// Task -> its node and the cluster-wide networks it uses there, for tasks on a node at or
    /// below RUNNING.
    task_use: HashMap<String, (String, Vec<String>)>,
    /// Node -> network -> how many of its tasks use it.
    refs: HashMap<String, HashMap<String, u32>>,
    /// Node -> network -> the address its attachment holds.
    held: HashMap<String, BTreeMap<String, String>>,
    /// Nodes whose attachments may have to change.
    dirty: BTreeSet<String>,
}

impl NodeAttachments {
    /// Records which networks `task` uses on its node, marking the node dirty when its set of
    /// networks changes. A task past RUNNING, or without node, uses none.
    pub(crate) fn track_task(&mut self, task: &api::Task) {
        let networks: Vec<String> = if uses_node(task) {
            let mut ids: Vec<String> = task
                .networks
                .iter()
                .filter_map(|a| a.network.as_ref())
                .filter(|n| addressing(n) == Addressing::Cluster)
                .map(|n| n.id.clone())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        } else {
            Vec::new()
        };
        if let Some((node, old)) = self.task_use.get(&task.id)
            && *node == task.node_id
            && *old == networks
        {
            return;
        }
        self.forget_task(&task.id);
        if networks.is_empty() {
            return;
        }
        let refs = self.refs.entry(task.node_id.clone()).or_default();
        for n in &networks {
            let count = refs.entry(n.clone()).or_default();
            *count += 1;
            if *count == 1 {
                self.dirty.insert(task.node_id.clone());
            }
        }
        self.task_use
            .insert(task.id.clone(), (task.node_id.clone(), networks));
    }

    /// Drops what a removed task used.
    pub(crate) fn forget_task(&mut self, task_id: &str) {
        let Some((node, networks)) = self.task_use.remove(task_id) else {
            return;
        };
        let Some(refs) = self.refs.get_mut(&node) else {
            return;
        };
        for n in networks {
            if let Some(count) = refs.get_mut(&n) {
                *count -= 1;
                if *count == 0 {
                    refs.remove(&n);
                    self.dirty.insert(node.clone());
                }
            }
        }
        if refs.is_empty() {
            self.refs.remove(&node);
        }
    }

    pub(crate) fn mark_dirty(&mut self, node_id: &str) {
        self.dirty.insert(node_id.to_string());
    }

    pub(crate) fn take_dirty(&mut self) -> Vec<String> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Whether `node`'s stored attachments are the ones this allocator holds for it.
    pub(crate) fn matches_stored(&self, node: &api::Node) -> bool {
        let held = self.held.get(&node.id);
        let stored = held_addresses(&node.attachments);
        let held_len = held.map_or(0, BTreeMap::len);
        stored.len() == held_len
            && stored
                .iter()
                .all(|(n, a)| held.and_then(|h| h.get(n)) == Some(a))
    }

    /// Takes the addresses `node`'s stored attachments hold (allocator start-up).
    pub(crate) fn restore(
        &mut self,
        space: &mut dyn AddressSpace,
        node: &api::Node,
        only: Option<&str>,
    ) {
        let stored = held_addresses(&node.attachments)
            .into_iter()
            .filter(|(n, _)| only.is_none_or(|o| o == n))
            .collect();
        let taken = restore_addresses(space, &node.id, stored);
        if !taken.is_empty() {
            self.held.entry(node.id.clone()).or_default().extend(taken);
        }
    }

    /// The networks `node_id` needs an attachment on: ingress, and those its tasks use.
    pub(crate) fn wanted(&self, node_id: &str, ingress: Option<&str>) -> BTreeSet<String> {
        let mut wanted: BTreeSet<String> = self
            .refs
            .get(node_id)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(ingress) = ingress {
            wanted.insert(ingress.to_string());
        }
        wanted
    }

    /// Works out `node`'s attachments: it keeps those it holds that are still wanted, gets an
    /// address on each wanted network it has none on, and gives up the others. `current` gives the
    /// latest stored version of each network. None when nothing changes.
    pub(crate) fn plan(
        &self,
        space: &mut dyn AddressSpace,
        node: &api::Node,
        ingress: Option<&str>,
        current: impl Fn(&str) -> Option<api::Network>,
    ) -> Option<NodePlan> {
        let wanted = self.wanted(&node.id, ingress);
        let empty = BTreeMap::new();
        let held = self.held.get(&node.id).unwrap_or(&empty);
        let mut attachments = Vec::new();
        let mut kept = HashSet::new();
        // Stored attachments that are held and still wanted stay as they are, in their order.
        for a in &node.attachments {
            let id = network_id(a);
            let holds = a.addresses.len() == 1 && held.get(id) == a.addresses.first();
            if wanted.contains(id) && holds && kept.insert(id.to_string()) {
                attachments.push(a.clone());
            }
        }
        let mut taken = Vec::new();
        let mut failed = Vec::new();
        let missing: Vec<&String> = wanted.iter().filter(|id| !kept.contains(*id)).collect();
        for id in missing {
            let Some(n) = current(id) else {
                continue;
            };
            let mut attachment = [api::NetworkAttachment {
                network: Some(n),
                ..Default::default()
            }];
            match allocate_attachments(space, &mut attachment, &current) {
                Ok(t) => {
                    taken.extend(t);
                    let [a] = attachment;
                    kept.insert(id.clone());
                    attachments.push(a);
                }
                Err(e) => failed.push(e),
            }
        }
        let freed: Vec<Held> = held
            .iter()
            .filter(|(n, _)| !kept.contains(*n))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        let unchanged = taken.is_empty() && freed.is_empty() && attachments == node.attachments;
        if unchanged && failed.is_empty() {
            return None;
        }
        Some(NodePlan {
            node_id: node.id.clone(),
            attachments,
            taken,
            freed,
            failed,
        })
    }

    /// `plan` was stored: its node holds the new addresses and gives up the freed ones. True if
    /// something was freed.
    pub(crate) fn commit(&mut self, space: &mut dyn AddressSpace, plan: &NodePlan) -> bool {
        let held = self.held.entry(plan.node_id.clone()).or_default();
        for (n, a) in &plan.freed {
            if held.get(n) == Some(a) {
                held.remove(n);
            }
        }
        for (n, a) in &plan.taken {
            held.insert(n.clone(), a.clone());
        }
        if held.is_empty() {
            self.held.remove(&plan.node_id);
        }
        release_all(space, &plan.freed);
        !plan.freed.is_empty()
    }

    /// Gives back everything a removed node holds; true if it held anything.
    pub(crate) fn release_node(&mut self, space: &mut dyn AddressSpace, node_id: &str) -> bool {
        self.dirty.remove(node_id);
        match self.held.remove(node_id) {
            Some(held) => {
                let held: Vec<Held> = held.into_iter().collect();
                release_all(space, &held);
                true
            }
            None => false,
        }
    }

    /// Forgets the attachments on `network_id`, a network that was removed with its address
    /// space, marking the nodes that had one dirty (their stored attachments must go).
    pub(crate) fn forget_network(&mut self, network_id: &str) {
        for (node, held) in &mut self.held {
            if held.remove(network_id).is_some() {
                self.dirty.insert(node.clone());
            }
        }
        self.held.retain(|_, h| !h.is_empty());
    }
}
