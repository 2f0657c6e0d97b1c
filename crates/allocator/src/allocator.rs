//! The [`Allocator`] loop (SwarmKit's `manager/allocator/allocator.go` and `network.go`, the network,
//! IPAM and ports parts): on start it rebuilds the subnets, gateways, VXLAN IDs and ports in use
//! from the store, then gives networks their IPAM state and driver state as they are created, in
//! one write (freeing their subnets and VXLAN IDs when they go), allocates services' endpoints as
//! they are created and updated (ports and virtual IPs), frees them when they go, and at each store
//! commit moves the NEW tasks seen since then to PENDING in batches with their network attachments,
//! then brings the attachments of the nodes whose needs changed in line. What cannot be allocated
//! waits and is retried when something is freed or every [`RETRY_INTERVAL`]. The bookkeeping itself
//! lives in `networks.rs`, `ipam.rs`, `ports.rs`, `endpoints.rs` and `attachments.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::attachments::{
    AddressSpace, AttachError, Held, HeldAddresses, NodeAttachments, held_addresses,
    is_ingress_network, release_all, restore_addresses, task_attachments,
};
use crate::endpoints::{ServiceVips, VipAllocation};
use crate::error::Error;
use crate::ipam::{Ipam, IpamError, PoolConfig};
use crate::networks::NetworkDrivers;
use crate::ports::{ServicePorts, is_service_allocated};

/// How often unallocated services and tasks are retried when nothing was freed in between
/// (SwarmKit's `retryInterval`).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Status message of a task the allocator moved to PENDING.
const ALLOCATED_STATUS_MESSAGE: &str = "pending task scheduling";

/// Most objects written in one store transaction (SwarmKit's store batches 200 changes).
const MAX_BATCH: usize = 200;

/// Task ID -> service ID (empty for a task without service).
type TaskSet = BTreeMap<String, String>;

/// A network's allocation waiting to be stored: its ID, IPAM state and driver state.
type NetworkAllocation = (String, api::IpamOptions, api::Driver);

/// Leader-only subsystem that allocates networks' driver state and services' published ports, and
/// moves NEW tasks to PENDING.
#[derive(Debug)]
pub struct Allocator {
    store: MemoryStore,
    networks: NetworkDrivers,
    /// Subnets and addresses of the networks allocated so far.
    ipam: Ipam,
    /// Networks whose driver state could not be allocated, retried with the services.
    unallocated_networks: BTreeSet<String>,
    ports: ServicePorts,
    /// Services whose ports could not be allocated; their tasks stay NEW until they are.
    unallocated_services: BTreeSet<String>,
    /// NEW tasks seen since the last commit, processed together when it arrives.
    pending_tasks: TaskSet,
    /// NEW tasks that could not move on yet, retried with the services.
    unallocated_tasks: TaskSet,
    /// When unallocated objects were last retried.
    last_retry: Instant,
    /// Something was freed since the last retry, so waiting objects may fit now.
    something_was_deallocated: bool,
    /// The ingress network's ID, while there is one.
    ingress: Option<String>,
    /// The VIP addresses services hold.
    vips: ServiceVips,
    /// The addresses tasks at or below RUNNING hold.
    task_addresses: HeldAddresses,
    /// The attachments nodes hold and the networks they need.
    nodes: NodeAttachments,
    /// Nodes an attachment could not be allocated for, retried with the services.
    unallocated_nodes: BTreeSet<String>,
    /// Stored networks whose allocation could not be restored: when one is allocated again (from
    /// its stored IPAM state), the addresses stored objects hold on it are reserved first.
    unrestored: BTreeSet<String>,
    /// Networks whose lack of free addresses was logged already: once per network, not per task.
    exhausted: BTreeSet<String>,
}

impl AddressSpace for Ipam {
    fn allocate(&mut self, network_id: &str, requested: Option<&str>) -> Result<String, Error> {
        Ok(self.allocate_address(network_id, requested)?)
    }

    fn reserve(&mut self, network_id: &str, address: &str) -> Result<(), Error> {
        Ok(self.reserve_address(network_id, address)?)
    }

    fn release(&mut self, network_id: &str, address: &str) {
        self.release_address(network_id, address);
    }
}

/// Whether `error` says a network has no free address left.
fn is_exhausted(error: &Error) -> bool {
    matches!(error, Error::Ipam(IpamError::NoAvailableAddress { .. }))
}

/// A task ready to move to PENDING: its attachments with their addresses and its service's
/// endpoint.
struct ReadyTask {
    task_id: String,
    endpoint: Option<api::Endpoint>,
    attachments: Option<Vec<api::NetworkAttachment>>,
    taken: Vec<Held>,
}

/// What the allocator writes into a NEW task.
enum TaskWrite {
    /// Attachments, endpoint and PENDING.
    Allocated(ReadyTask),
    /// It stays NEW: why.
    Waits { task_id: String, err: String },
}

impl Allocator {
    /// An allocator over `store`; nothing happens until [`Allocator::run`].
    pub fn new(store: MemoryStore) -> Self {
        Allocator {
            store,
            networks: NetworkDrivers::default(),
            ipam: Ipam::default(),
            unallocated_networks: BTreeSet::new(),
            ports: ServicePorts::default(),
            unallocated_services: BTreeSet::new(),
            pending_tasks: TaskSet::new(),
            unallocated_tasks: TaskSet::new(),
            last_retry: Instant::now(),
            something_was_deallocated: false,
            ingress: None,
            vips: ServiceVips::default(),
            task_addresses: HeldAddresses::default(),
            nodes: NodeAttachments::default(),
            unallocated_nodes: BTreeSet::new(),
            unrestored: BTreeSet::new(),
            exhausted: BTreeSet::new(),
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the allocator cannot go on (its watch ended).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let ((cluster, networks, services, tasks, nodes), mut watcher) = self.store.view_and_watch(
            WatchFilter::none().networks().services().tasks().nodes(),
            |tx| {
                (
                    tx.find_clusters(By::All).into_iter().next(),
                    tx.find_networks(By::All),
                    tx.find_services(By::All),
                    tx.find_tasks(By::All),
                    tx.find_nodes(By::All),
                )
            },
        );
        self.ipam = Ipam::new(address_pool(cluster.as_ref()));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = self.init(networks, services, tasks, nodes) => {}
        }
        loop {
            let retry_at = self.last_retry + RETRY_INTERVAL;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                event = watcher.recv() => {
                    let Some(event) = event else {
                        return Err(Error::WatchClosed);
                    };
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        () = self.handle(event) => {}
                    }
                }
                () = tokio::time::sleep_until(retry_at) => {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        () = self.retry() => {}
                    }
                }
            }
        }
    }

    /// Rebuilds the subnets, gateways, VXLAN IDs and the port map from the IPAM states, driver
    /// states and endpoints already stored (so a new leader never hands out one twice), then
    /// allocates what is not allocated yet (ingress first, as SwarmKit does, so that it gets the
    /// first free subnet) and moves the waiting NEW tasks on.
    async fn init(
        &mut self,
        networks: Vec<api::Network>,
        services: Vec<api::Service>,
        tasks: Vec<api::Task>,
        nodes: Vec<api::Node>,
    ) {
        let mut networks_to_allocate = Vec::new();
        for network in &networks {
            if !is_network_allocated(network) {
                networks_to_allocate.push(network.id.clone());
            } else if let Err(e) = self.restore_network(network) {
                error!(network.id = %network.id, error = %e, "failed restoring the allocation of a network");
                self.unallocated_networks.insert(network.id.clone());
                self.unrestored.insert(network.id.clone());
            }
        }
        networks_to_allocate.sort_by_key(|id| {
            !networks
                .iter()
                .any(|n| &n.id == id && n.spec.as_ref().is_some_and(|s| s.ingress))
        });
        info!(
            networks = networks.len(),
            to_allocate = networks_to_allocate.len(),
            "allocator restored networks"
        );
        self.ingress = networks
            .iter()
            .find(|n| is_ingress_network(n))
            .map(|n| n.id.clone());
        self.restore_addresses(&services, &tasks, &nodes);
        self.allocate_networks(networks_to_allocate).await;
        for service in &services {
            if !self.ports.restore(service) {
                self.unallocated_services.insert(service.id.clone());
            }
        }
        let to_allocate: Vec<String> = services
            .iter()
            .filter(|s| self.needs_allocation(s))
            .map(|s| s.id.clone())
            .collect();
        info!(
            services = services.len(),
            to_allocate = to_allocate.len(),
            "allocator started"
        );
        self.allocate_services(to_allocate).await;
        for task in tasks.iter().filter(|t| is_new(t)) {
            self.pending_tasks
                .insert(task.id.clone(), task.service_id.clone());
        }
        self.process_pending_tasks().await;
        for node in &nodes {
            self.nodes.mark_dirty(&node.id);
        }
        self.process_nodes().await;
        self.last_retry = Instant::now();
    }

    /// Takes every address stored objects hold (node attachments, service VIPs, the attachments
    /// of tasks at or below RUNNING) before anything new is handed out, so a new leader never
    /// gives one twice, and learns which networks each node's tasks use.
    fn restore_addresses(
        &mut self,
        services: &[api::Service],
        tasks: &[api::Task],
        nodes: &[api::Node],
    ) {
        for task in tasks {
            self.nodes.track_task(task);
        }
        let restored = self.reserve_stored_addresses(services, tasks, nodes, None);
        info!(tasks = restored, "allocator restored network addresses");
    }

    /// Reserves the addresses stored node attachments, service VIPs and the attachments of tasks at
    /// or below RUNNING hold (only those on `only` if given), as theirs. Returns how many addresses
    /// tasks got.
    fn reserve_stored_addresses(
        &mut self,
        services: &[api::Service],
        tasks: &[api::Task],
        nodes: &[api::Node],
        only: Option<&str>,
    ) -> usize {
        for node in nodes {
            self.nodes.restore(&mut self.ipam, node, only);
        }
        for service in services {
            self.vips.restore(&mut self.ipam, service, only);
        }
        let mut restored = 0;
        for task in tasks.iter().filter(|t| !is_past_running(t)) {
            let stored = held_addresses(&task.networks)
                .into_iter()
                .filter(|(n, _)| only.is_none_or(|o| o == n))
                .collect();
            let held = restore_addresses(&mut self.ipam, &task.id, stored);
            restored += held.len();
            self.task_addresses.add(&task.id, held);
        }
        restored
    }

    /// A network whose stored allocation could not be restored at start-up was just allocated
    /// again from that state: the addresses the store says are held on it are taken back before
    /// anything new is handed out there, so none is handed out twice.
    fn reserve_addresses_on(&mut self, network_id: &str) {
        if !self.unrestored.remove(network_id) {
            return;
        }
        let (services, tasks, nodes) = self.store.view(|tx| {
            (
                tx.find_services(By::All),
                tx.find_tasks(By::All),
                tx.find_nodes(By::All),
            )
        });
        let restored = self.reserve_stored_addresses(&services, &tasks, &nodes, Some(network_id));
        info!(network.id = %network_id, tasks = restored, "allocator restored the addresses of a network allocated late");
    }

    fn needs_allocation(&self, service: &api::Service) -> bool {
        if self.unallocated_services.contains(&service.id) || !is_service_allocated(service) {
            return true;
        }
        let ingress = self.ingress.as_deref();
        !self.store.view(|tx| {
            self.vips
                .is_allocated(service, ingress, |id| tx.get_network(id))
        })
    }

    async fn handle(&mut self, event: Event) {
        match &event {
            Event::Commit { .. } => self.on_commit().await,
            Event::Object { kind, .. } => {
                if let Some(network) = event.object_as::<api::Network>() {
                    self.on_network(*kind, network).await;
                } else if let Some(service) = event.object_as::<api::Service>() {
                    self.on_service(*kind, service).await;
                } else if let Some(task) = event.object_as::<api::Task>() {
                    self.on_task(*kind, task);
                } else if let Some(node) = event.object_as::<api::Node>() {
                    self.on_node(*kind, node);
                }
            }
        }
    }

    /// A created network gets its IPAM and driver state; a removed one frees them. Updates change
    /// nothing (the control API cannot update a network; the allocator's own writes are updates).
    async fn on_network(&mut self, kind: EventKind, network: &api::Network) {
        match kind {
            EventKind::Create => {
                if is_ingress_network(network) && self.ingress.is_none() {
                    self.ingress = Some(network.id.clone());
                    // Every node needs an attachment on it.
                    let nodes = self.store.view(|tx| tx.find_shared::<api::Node>(By::All));
                    for node in nodes {
                        self.nodes.mark_dirty(&node.id);
                    }
                }
                self.allocate_networks(vec![network.id.clone()]).await;
                // What waited for this network may go on now.
                self.something_was_deallocated = true;
            }
            EventKind::Remove => {
                let had_subnets = self.ipam.release_network(&network.id);
                if self.networks.deallocate(&network.id) || had_subnets {
                    debug!(network.id = %network.id, "freed the subnets and driver state of a removed network");
                    self.something_was_deallocated = true;
                }
                self.unallocated_networks.remove(&network.id);
                if self.ingress.as_deref() == Some(network.id.as_str()) {
                    self.ingress = None;
                }
                // Its address space went with it: forget who held addresses there.
                self.vips.forget_network(&network.id);
                self.task_addresses.forget_network(&network.id);
                self.nodes.forget_network(&network.id);
                self.exhausted.remove(&network.id);
                self.unrestored.remove(&network.id);
            }
            EventKind::Update => {}
        }
    }

    /// Allocates the IPAM and driver state of the networks `ids` (latest stored versions) that have
    /// none yet and stores them, one transaction per batch; a failure is remembered for a retry.
    async fn allocate_networks(&mut self, ids: Vec<String>) {
        let networks: Vec<api::Network> = self
            .store
            .view(|tx| ids.iter().filter_map(|id| tx.get_network(id)).collect());
        let mut allocated = Vec::new();
        for network in networks {
            if self.networks.is_allocated(&network.id) {
                continue;
            }
            match self.allocate_network(&network) {
                Ok((ipam, driver)) => {
                    let size = prost::Message::encoded_len(&network)
                        + prost::Message::encoded_len(&ipam)
                        + prost::Message::encoded_len(&driver);
                    allocated.push(((network.id, ipam, driver), size));
                }
                Err(e) => {
                    if self.unallocated_networks.insert(network.id.clone()) {
                        error!(network.id = %network.id, error = %e, "failed allocation for network");
                    } else {
                        debug!(network.id = %network.id, error = %e, "network still cannot be allocated");
                    }
                }
            }
        }
        for batch in into_batches(allocated) {
            self.commit_networks(batch).await;
        }
    }

    /// The IPAM state (subnets first: the VXLAN IDs count its IPv4 subnets) and driver state of a
    /// network; on error it holds nothing.
    fn allocate_network(
        &mut self,
        network: &api::Network,
    ) -> Result<(api::IpamOptions, api::Driver), Error> {
        let ipam = self.ipam.allocate_network(network)?;
        let with_ipam = api::Network {
            ipam: Some(ipam.clone()),
            ..network.clone()
        };
        match self.networks.allocate(&with_ipam) {
            Ok(driver) => Ok((ipam, driver)),
            Err(e) => {
                self.ipam.release_network(&network.id);
                Err(e)
            }
        }
    }

    /// Takes back what a stored, allocated network holds; on error it holds nothing.
    fn restore_network(&mut self, network: &api::Network) -> Result<(), Error> {
        self.ipam.restore_network(network)?;
        if let Err(e) = self.networks.allocate(network) {
            self.ipam.release_network(&network.id);
            return Err(e);
        }
        Ok(())
    }

    async fn commit_networks(&mut self, batch: Vec<NetworkAllocation>) {
        let ids: Vec<String> = batch.iter().map(|(id, ..)| id.clone()).collect();
        let result = self
            .store
            .update(move |tx| {
                let (mut removed, mut failed) = (BTreeSet::new(), BTreeSet::new());
                for (id, ipam, driver) in batch {
                    let Some(mut network) = tx.get_network(&id) else {
                        removed.insert(id);
                        continue;
                    };
                    network.ipam = Some(ipam);
                    network.driver_state = Some(driver);
                    if let Err(e) = tx.update_network(network) {
                        error!(network.id = %id, error = %e, "failed to store the allocation of a network");
                        failed.insert(id);
                    }
                }
                Ok((removed, failed))
            })
            .await;
        let (removed, failed) = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                error!(error = %e, "failed to store network allocations");
                self.store.view(|tx| {
                    ids.iter()
                        .cloned()
                        .partition(|id| tx.get_network(id).is_none())
                })
            }
        };
        for id in ids {
            if removed.contains(&id) || failed.contains(&id) {
                // A network removed meanwhile is forgotten; any other failure is retried.
                self.networks.deallocate(&id);
                self.ipam.release_network(&id);
                if failed.contains(&id) {
                    self.unallocated_networks.insert(id);
                } else {
                    self.unallocated_networks.remove(&id);
                }
                continue;
            }
            debug!(network.id = %id, "allocated network subnets and driver state");
            self.reserve_addresses_on(&id);
            self.unallocated_networks.remove(&id);
        }
    }

    async fn on_service(&mut self, kind: EventKind, service: &api::Service) {
        if kind == EventKind::Remove {
            if self.ports.release(&service.id) {
                debug!(service.id = %service.id, "freed the ports of a removed service");
            }
            if self.vips.release(&mut self.ipam, &service.id) {
                debug!(service.id = %service.id, "freed the virtual IPs of a removed service");
            }
            self.unallocated_services.remove(&service.id);
            self.something_was_deallocated = true;
            return;
        }
        // Work on the latest version: an older event must not allocate a spec already replaced.
        let Some(current) = self.store.view(|tx| tx.get_service(&service.id)) else {
            return;
        };
        if self.needs_allocation(&current) {
            self.allocate_services(vec![current.id]).await;
        }
    }

    fn on_task(&mut self, kind: EventKind, task: &api::Task) {
        if kind == EventKind::Remove {
            self.nodes.forget_task(&task.id);
        } else {
            self.nodes.track_task(task);
        }
        if (kind == EventKind::Remove || is_past_running(task))
            && self.task_addresses.release(&mut self.ipam, &task.id)
        {
            debug!(task.id = %task.id, "freed the network addresses of a task");
            self.something_was_deallocated = true;
        }
        if kind == EventKind::Remove || !is_new(task) {
            self.pending_tasks.remove(&task.id);
            self.unallocated_tasks.remove(&task.id);
            return;
        }
        self.unallocated_tasks.remove(&task.id);
        self.pending_tasks
            .insert(task.id.clone(), task.service_id.clone());
    }

    /// A created node needs its ingress attachment, an updated one whose stored attachments are
    /// not what it holds is put right, a removed one gives its addresses back.
    fn on_node(&mut self, kind: EventKind, node: &api::Node) {
        match kind {
            EventKind::Remove => {
                if self.nodes.release_node(&mut self.ipam, &node.id) {
                    debug!(node.id = %node.id, "freed the network attachments of a removed node");
                    self.something_was_deallocated = true;
                }
                self.unallocated_nodes.remove(&node.id);
            }
            EventKind::Create => self.nodes.mark_dirty(&node.id),
            EventKind::Update => {
                if !self.nodes.matches_stored(node) {
                    self.nodes.mark_dirty(&node.id);
                }
            }
        }
    }

    async fn on_commit(&mut self) {
        self.process_pending_tasks().await;
        self.process_nodes().await;
        if self.something_was_deallocated || Instant::now() >= self.last_retry + RETRY_INTERVAL {
            self.retry().await;
        }
    }

    /// Tries again what could not be allocated: networks, services, then the tasks waiting on them.
    async fn retry(&mut self) {
        self.last_retry = Instant::now();
        self.something_was_deallocated = false;
        if !self.unallocated_networks.is_empty() {
            let ids: Vec<String> = self.unallocated_networks.iter().cloned().collect();
            self.allocate_networks(ids).await;
        }
        // Every waiting task is queued again, before the services: so a service that becomes
        // allocated here finds none of its tasks left to re-queue.
        let waiting = std::mem::take(&mut self.unallocated_tasks);
        self.pending_tasks.extend(waiting);
        if !self.unallocated_services.is_empty() {
            let ids: Vec<String> = self.unallocated_services.iter().cloned().collect();
            self.allocate_services(ids).await;
        }
        self.process_pending_tasks().await;
        for node in std::mem::take(&mut self.unallocated_nodes) {
            self.nodes.mark_dirty(&node);
        }
        self.process_nodes().await;
    }

    /// Allocates the endpoints of the services `ids` (latest stored versions) and stores them, one
    /// transaction per batch. A service that cannot be allocated is remembered for a retry; one that
    /// becomes allocated has its waiting tasks queued again.
    async fn allocate_services(&mut self, ids: Vec<String>) {
        let services: Vec<api::Service> = self
            .store
            .view(|tx| ids.iter().filter_map(|id| tx.get_service(id)).collect());
        let mut allocated = Vec::new();
        for service in services {
            if !self.needs_allocation(&service) {
                continue;
            }
            match self.allocate_service(&service) {
                Ok((mut allocation, vips)) => {
                    if !vips.vips.is_empty() || allocation.endpoint.is_some() {
                        allocation
                            .endpoint
                            .get_or_insert_with(Default::default)
                            .virtual_ips = vips.vips.clone();
                    }
                    let size = prost::Message::encoded_len(&service)
                        + allocation
                            .endpoint
                            .as_ref()
                            .map_or(0, prost::Message::encoded_len);
                    allocated.push(((service.id, allocation, vips), size));
                }
                Err(e) => {
                    if let Error::Ipam(IpamError::NoAvailableAddress { network_id }) = &e {
                        self.warn_exhausted(network_id, &e);
                    }
                    if self.unallocated_services.insert(service.id.clone()) {
                        warn!(service.id = %service.id, error = %e, "failed allocation for service");
                    } else {
                        debug!(service.id = %service.id, error = %e, "service still cannot be allocated");
                    }
                }
            }
        }
        for batch in into_batches(allocated) {
            self.commit_services(batch).await;
        }
    }

    /// The ports and the virtual IPs of `service`'s endpoint; on failure nothing stays taken.
    fn allocate_service(
        &mut self,
        service: &api::Service,
    ) -> Result<(crate::ports::Allocation, VipAllocation), Error> {
        let allocation = self.ports.allocate(service)?;
        let ingress = self.ingress.as_deref();
        let (store, ipam, vips) = (&self.store, &mut self.ipam, &self.vips);
        let networks = network_copies(
            store,
            crate::attachments::service_networks(service)
                .iter()
                .map(|c| c.target.as_str())
                .chain(ingress),
        );
        match vips.allocate(ipam, service, ingress, |id| networks.get(id).cloned()) {
            Ok(vips) => Ok((allocation, vips)),
            Err(e) => {
                self.ports.undo(&service.id, allocation.previous);
                Err(e)
            }
        }
    }

    async fn commit_services(
        &mut self,
        batch: Vec<(String, crate::ports::Allocation, VipAllocation)>,
    ) {
        let endpoints: Vec<(String, Option<api::Endpoint>)> = batch
            .iter()
            .map(|(id, a, _)| (id.clone(), a.endpoint.clone()))
            .collect();
        let result = self
            .store
            .update(move |tx| {
                let mut gone = Vec::new();
                let mut failed = Vec::new();
                for (id, endpoint) in endpoints {
                    // Writing on top of the latest version: the spec may have changed since the
                    // allocation, in which case its update event allocates again.
                    let Some(mut service) = tx.get_service(&id) else {
                        gone.push(id);
                        continue;
                    };
                    if service.endpoint == endpoint {
                        continue;
                    }
                    service.endpoint = endpoint;
                    if let Err(e) = tx.update_service(service) {
                        error!(service.id = %id, error = %e, "failed to store the allocation of a service");
                        failed.push(id);
                    }
                }
                Ok((gone, failed))
            })
            .await;
        match result {
            Ok((gone, failed)) => {
                for (id, allocation, vips) in batch {
                    let removed = gone.contains(&id);
                    if removed || failed.contains(&id) {
                        self.ports.undo(&id, allocation.previous);
                        self.vips.abort(&mut self.ipam, &vips);
                        // A removed service is done with; one whose write failed is tried again.
                        if removed {
                            self.unallocated_services.remove(&id);
                        } else {
                            self.unallocated_services.insert(id);
                        }
                        continue;
                    }
                    debug!(service.id = %id, "allocated service endpoint");
                    if self.ports.freed_any(&id, &allocation.previous)
                        | self.vips.commit(&mut self.ipam, &id, &vips)
                    {
                        // Ports or addresses given up by a spec change may be what another
                        // service waits for.
                        self.something_was_deallocated = true;
                    }
                    self.unallocated_services.remove(&id);
                    self.requeue_tasks_of(&id);
                }
            }
            Err(e) => {
                error!(error = %e, "failed to store service allocations");
                for (id, allocation, vips) in batch {
                    self.ports.undo(&id, allocation.previous);
                    self.vips.abort(&mut self.ipam, &vips);
                    self.unallocated_services.insert(id);
                }
            }
        }
    }

    /// Queues the waiting tasks of a service that just became allocated.
    fn requeue_tasks_of(&mut self, service_id: &str) {
        if self.unallocated_tasks.is_empty() {
            return;
        }
        let ready: Vec<String> = self
            .unallocated_tasks
            .iter()
            .filter(|(_, s)| s.as_str() == service_id)
            .map(|(t, _)| t.clone())
            .collect();
        for task_id in ready {
            self.unallocated_tasks.remove(&task_id);
            self.pending_tasks.insert(task_id, service_id.to_string());
        }
    }

    /// Moves the pending NEW tasks whose service is allocated to PENDING, with their network
    /// attachments (an address on each overlay network) and a copy of the service endpoint, in
    /// batches; the others wait in `unallocated_tasks`, a task whose attachments cannot be
    /// allocated with the reason in its status error.
    async fn process_pending_tasks(&mut self) {
        if self.pending_tasks.is_empty() {
            return;
        }
        let pending: Vec<(String, String)> = std::mem::take(&mut self.pending_tasks)
            .into_iter()
            .collect();
        let mut writes = Vec::new();
        let mut waiting = Vec::new();
        for chunk in pending.chunks(MAX_BATCH) {
            self.prepare_tasks(chunk, &mut writes, &mut waiting);
        }
        let errors = self
            .store
            .batch(&writes, |tx, write| {
                let task_id = match write {
                    TaskWrite::Allocated(t) => &t.task_id,
                    TaskWrite::Waits { task_id, .. } => task_id,
                };
                let Some(mut task) = tx.get_task(task_id) else {
                    return Ok(());
                };
                if !is_new(&task) {
                    return Ok(());
                }
                match write {
                    TaskWrite::Allocated(ready) => {
                        if let Some(attachments) = &ready.attachments {
                            task.networks.clone_from(attachments);
                        }
                        if let Some(endpoint) = &ready.endpoint {
                            task.endpoint = Some(Box::new(endpoint.clone()));
                        }
                        task.status = Some(api::TaskStatus {
                            state: api::TaskState::Pending as i32,
                            message: ALLOCATED_STATUS_MESSAGE.to_string(),
                            timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
                            ..Default::default()
                        });
                    }
                    TaskWrite::Waits { err, .. } => {
                        let status = task.status.get_or_insert_with(Default::default);
                        if status.err == *err {
                            return Ok(());
                        }
                        status.err.clone_from(err);
                    }
                }
                tx.update_task(task)
            })
            .await;
        for e in errors {
            error!(error = %e, "failed to move task to pending");
        }
        // A task stored with its attachments holds their addresses; one that was not (removed,
        // moved on meanwhile, or its write failed) gives them back, and waits if still NEW.
        let stored: Vec<Option<(bool, Vec<Held>)>> = self.store.view(|tx| {
            writes
                .iter()
                .map(|w| {
                    let id = match w {
                        TaskWrite::Allocated(t) => &t.task_id,
                        TaskWrite::Waits { task_id, .. } => task_id,
                    };
                    tx.get_shared::<api::Task>(id)
                        .map(|t| (is_new(&t), held_addresses(&t.networks)))
                })
                .collect()
        });
        for (write, stored) in writes.into_iter().zip(stored) {
            match write {
                TaskWrite::Allocated(ready) => match stored {
                    Some((false, held)) if same_addresses(&held, &ready.taken) => {
                        self.task_addresses.hold(&ready.task_id, ready.taken);
                    }
                    other => {
                        release_all(&mut self.ipam, &ready.taken);
                        if other.is_some_and(|(new, _)| new) {
                            waiting.push(ready.task_id);
                        }
                    }
                },
                TaskWrite::Waits { task_id, .. } => {
                    if stored.is_some_and(|(new, _)| new) {
                        waiting.push(task_id);
                    }
                }
            }
        }
        let mut services: HashMap<String, String> = pending.into_iter().collect();
        for task_id in waiting {
            let service_id = services.remove(&task_id).unwrap_or_default();
            self.unallocated_tasks.insert(task_id, service_id);
        }
    }

    /// Works out what to write into each of the pending tasks `chunk`: attachments and addresses
    /// for the tasks whose service is allocated, the reason for those whose addresses cannot be
    /// had; the tasks whose service is not allocated yet go to `waiting`.
    fn prepare_tasks(
        &mut self,
        chunk: &[(String, String)],
        writes: &mut Vec<TaskWrite>,
        waiting: &mut Vec<String>,
    ) {
        let ingress_id = self.ingress.clone();
        let unallocated = &self.unallocated_services;
        let vips = &self.vips;
        let held = &self.task_addresses;
        // Read under the store's lock, allocate after it.
        let (tasks, networks) = self.store.view(|tx| {
            let mut networks: HashMap<String, api::Network> = HashMap::new();
            let fetch = |id: &str, networks: &mut HashMap<String, api::Network>| {
                if !networks.contains_key(id)
                    && let Some(n) = tx.get_network(id)
                {
                    networks.insert(id.to_string(), n);
                }
                networks.get(id).cloned()
            };
            let ingress = ingress_id.as_deref().and_then(|id| fetch(id, &mut networks));
            let mut tasks = Vec::with_capacity(chunk.len());
            for (task_id, _) in chunk {
                let Some(task) = tx.get_shared::<api::Task>(task_id) else {
                    continue;
                };
                if !is_new(&task) {
                    continue;
                }
                let mut service = None;
                if !task.service_id.is_empty() {
                    let ready = tx.get_shared::<api::Service>(&task.service_id).filter(|s| {
                        !unallocated.contains(&s.id)
                            && is_service_allocated(s)
                            && vips.is_allocated(s, ingress_id.as_deref(), |id| {
                                fetch(id, &mut networks)
                            })
                    });
                    let Some(s) = ready else {
                        debug!(task.id = %task.id, service.id = %task.service_id, "task waits for its service to be allocated");
                        waiting.push(task.id.clone());
                        continue;
                    };
                    service = Some(s);
                }
                let attachments = if held.holds(&task.id) {
                    // Restored with its addresses: nothing to allocate.
                    None
                } else if !task.networks.is_empty() {
                    Some(task.networks.clone())
                } else {
                    let s = service.as_deref();
                    Some(task_attachments(&task, s, ingress.as_ref(), |id| {
                        fetch(id, &mut networks)
                    }))
                };
                if let Some(attachments) = &attachments {
                    for a in attachments.iter().filter_map(|a| a.network.as_ref()) {
                        fetch(&a.id, &mut networks);
                    }
                }
                let endpoint = service.and_then(|s| s.endpoint.clone());
                tasks.push((task.id.clone(), endpoint, attachments));
            }
            (tasks, networks)
        });
        for (task_id, endpoint, attachments) in tasks {
            let mut ready = ReadyTask {
                task_id,
                endpoint,
                attachments,
                taken: Vec::new(),
            };
            let Some(attachments) = ready.attachments.as_mut().filter(|a| !a.is_empty()) else {
                writes.push(TaskWrite::Allocated(ready));
                continue;
            };
            let current = |id: &str| networks.get(id).cloned();
            match crate::attachments::allocate_attachments(&mut self.ipam, attachments, current) {
                Ok(taken) => {
                    ready.taken = taken;
                    writes.push(TaskWrite::Allocated(ready));
                }
                Err(AttachError { network_id, error }) => {
                    if is_exhausted(&error) {
                        self.warn_exhausted(&network_id, &error);
                    } else {
                        debug!(task.id = %ready.task_id, network.id = %network_id, error = %error, "task allocation failure");
                    }
                    // SwarmKit's words (it logs them; the task keeps them here).
                    let err = format!(
                        "failed to allocate network IP for task {} network {network_id}: {error}",
                        ready.task_id
                    );
                    writes.push(TaskWrite::Waits {
                        task_id: ready.task_id,
                        err,
                    });
                }
            }
        }
    }

    /// Logs, once per network, that `network_id` has no free address left.
    fn warn_exhausted(&mut self, network_id: &str, error: &Error) {
        // A network that had an address freed since its last warning is warned about again.
        for freed in self.ipam.take_freed() {
            self.exhausted.remove(&freed);
        }
        if self.exhausted.insert(network_id.to_string()) {
            warn!(
                network.id = %network_id,
                error = %error,
                "could not find an available IP: tasks, services and nodes needing an address on this network wait until one is freed; give the network a larger subnet (this is logged once per network)"
            );
        } else {
            debug!(network.id = %network_id, error = %error, "network still has no free address");
        }
    }

    /// Brings the attachments of the nodes marked dirty in line with the networks they need,
    /// in batches; a node whose attachment could not be allocated is retried.
    async fn process_nodes(&mut self) {
        let dirty = self.nodes.take_dirty();
        if dirty.is_empty() {
            return;
        }
        let ingress = self.ingress.clone();
        let mut plans = Vec::new();
        for chunk in dirty.chunks(MAX_BATCH) {
            let (nodes, networks) = self.store.view(|tx| {
                let nodes: Vec<_> = chunk
                    .iter()
                    .filter_map(|id| tx.get_shared::<api::Node>(id))
                    .collect();
                let mut ids: BTreeSet<String> = ingress.iter().cloned().collect();
                for node in &nodes {
                    ids.extend(self.nodes.wanted(&node.id, None));
                }
                let networks: HashMap<String, api::Network> = ids
                    .into_iter()
                    .filter_map(|id| tx.get_network(&id).map(|n| (id, n)))
                    .collect();
                (nodes, networks)
            });
            for node in nodes {
                let current = |id: &str| networks.get(id).cloned();
                let Some(plan) =
                    self.nodes
                        .plan(&mut self.ipam, &node, ingress.as_deref(), current)
                else {
                    continue;
                };
                for AttachError { network_id, error } in &plan.failed {
                    if is_exhausted(error) {
                        self.warn_exhausted(network_id, error);
                    } else {
                        debug!(node.id = %node.id, network.id = %network_id, error = %error, "node attachment cannot be allocated");
                    }
                    self.unallocated_nodes.insert(node.id.clone());
                }
                plans.push(plan);
            }
        }
        let errors = self
            .store
            .batch(&plans, |tx, plan| {
                let Some(mut node) = tx.get_node(&plan.node_id) else {
                    return Ok(());
                };
                if node.attachments == plan.attachments {
                    return Ok(());
                }
                node.attachments.clone_from(&plan.attachments);
                tx.update_node(node)
            })
            .await;
        for e in errors {
            error!(error = %e, "failed to store node network attachments");
        }
        let stored: Vec<Option<bool>> = self.store.view(|tx| {
            plans
                .iter()
                .map(|p| {
                    tx.get_shared::<api::Node>(&p.node_id)
                        .map(|n| n.attachments == p.attachments)
                })
                .collect()
        });
        for (plan, stored) in plans.into_iter().zip(stored) {
            match stored {
                Some(true) => {
                    if self.nodes.commit(&mut self.ipam, &plan) {
                        self.something_was_deallocated = true;
                    }
                }
                Some(false) => {
                    release_all(&mut self.ipam, &plan.taken);
                    self.unallocated_nodes.insert(plan.node_id);
                }
                None => release_all(&mut self.ipam, &plan.taken),
            }
        }
    }
}

/// Copies of the stored networks `ids` (those that exist).
fn network_copies<'a>(
    store: &MemoryStore,
    ids: impl Iterator<Item = &'a str>,
) -> HashMap<String, api::Network> {
    store.view(|tx| {
        ids.filter_map(|id| tx.get_network(id).map(|n| (id.to_string(), n)))
            .collect()
    })
}

/// Whether two lists of held addresses hold the same ones.
fn same_addresses(a: &[Held], b: &[Held]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// `items`, each with the encoded size of the object its write rewrites, in store transactions
/// of at most [`MAX_BATCH`] writes and [`store::BATCH_BYTES`] (an item larger alone goes alone), in
/// order: a batch over the raft entry limit would be refused whole, and again at every retry.
fn into_batches<T>(items: Vec<(T, usize)>) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (item, size) in items {
        if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + size > store::BATCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(item);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Whether a stored network holds its allocation: driver state and IPAM state (an empty one for a
/// node-local network), written together.
fn is_network_allocated(network: &api::Network) -> bool {
    network.driver_state.is_some() && network.ipam.is_some()
}

/// The cluster's default address pool; the built-in one when there is no cluster object yet or
/// its pool is not valid (swarmd checks the pool before it creates the cluster, so only a damaged
/// store has one).
fn address_pool(cluster: Option<&api::Cluster>) -> PoolConfig {
    let Some(cluster) = cluster else {
        return PoolConfig::default();
    };
    PoolConfig::from_cluster(cluster).unwrap_or_else(|e| {
        error!(error = %e, "the cluster's default address pool is not valid, using {}", crate::ipam::DEFAULT_ADDRESS_POOL);
        PoolConfig::default()
    })
}

/// A task the allocator still has to move on.
fn is_new(task: &api::Task) -> bool {
    task.status.as_ref().map_or(0, |s| s.state) < api::TaskState::Pending as i32
}

/// A task that stopped running (or never will): it holds no address any more.
fn is_past_running(task: &api::Task) -> bool {
    task.status.as_ref().map_or(0, |s| s.state) > api::TaskState::Running as i32
}
