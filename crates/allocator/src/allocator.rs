//! The [`Allocator`] loop (SwarmKit's `manager/allocator/allocator.go` and `network.go`, the network,
//! IPAM and ports parts): on start it rebuilds the subnets, gateways, VXLAN IDs and ports in use
//! from the store, then gives networks their IPAM state and driver state as they are created, in
//! one write (freeing their subnets and VXLAN IDs when they go), allocates services' endpoints as
//! they are created and updated, frees their ports when they go, and at each store commit moves the
//! NEW tasks seen since then to PENDING in batches. What cannot be allocated waits and is retried
//! when something is freed or every [`RETRY_INTERVAL`]. The bookkeeping itself lives in
//! `networks.rs`, `ipam.rs` and `ports.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::Error;
use crate::ipam::{Ipam, PoolConfig};
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
        }
    }

    /// Runs until `shutdown` fires; an `Err` means the allocator cannot go on (its watch ended).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let ((cluster, networks, services, tasks), mut watcher) =
            self.store
                .view_and_watch(WatchFilter::none().networks().services().tasks(), |tx| {
                    (
                        tx.find_clusters(By::All).into_iter().next(),
                        tx.find_networks(By::All),
                        tx.find_services(By::All),
                        tx.find_tasks(By::All),
                    )
                });
        self.ipam = Ipam::new(address_pool(cluster.as_ref()));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = self.init(networks, services, tasks) => {}
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
    ) {
        let mut networks_to_allocate = Vec::new();
        for network in &networks {
            if !is_network_allocated(network) {
                networks_to_allocate.push(network.id.clone());
            } else if let Err(e) = self.restore_network(network) {
                error!(network.id = %network.id, error = %e, "failed restoring the allocation of a network");
                self.unallocated_networks.insert(network.id.clone());
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
        self.last_retry = Instant::now();
    }

    fn needs_allocation(&self, service: &api::Service) -> bool {
        self.unallocated_services.contains(&service.id) || !is_service_allocated(service)
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
                }
            }
        }
    }

    /// A created network gets its IPAM and driver state; a removed one frees them. Updates change
    /// nothing (the control API cannot update a network; the allocator's own writes are updates).
    async fn on_network(&mut self, kind: EventKind, network: &api::Network) {
        match kind {
            EventKind::Create => self.allocate_networks(vec![network.id.clone()]).await,
            EventKind::Remove => {
                let had_subnets = self.ipam.release_network(&network.id);
                if self.networks.deallocate(&network.id) || had_subnets {
                    debug!(network.id = %network.id, "freed the subnets and driver state of a removed network");
                    self.something_was_deallocated = true;
                }
                self.unallocated_networks.remove(&network.id);
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
            self.unallocated_networks.remove(&id);
        }
    }

    async fn on_service(&mut self, kind: EventKind, service: &api::Service) {
        if kind == EventKind::Remove {
            if self.ports.release(&service.id) {
                debug!(service.id = %service.id, "freed the ports of a removed service");
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
        if kind == EventKind::Remove || !is_new(task) {
            self.pending_tasks.remove(&task.id);
            self.unallocated_tasks.remove(&task.id);
            return;
        }
        self.unallocated_tasks.remove(&task.id);
        self.pending_tasks
            .insert(task.id.clone(), task.service_id.clone());
    }

    async fn on_commit(&mut self) {
        self.process_pending_tasks().await;
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
        if !self.unallocated_services.is_empty() {
            let ids: Vec<String> = self.unallocated_services.iter().cloned().collect();
            self.allocate_services(ids).await;
        }
        let waiting = std::mem::take(&mut self.unallocated_tasks);
        self.pending_tasks.extend(waiting);
        self.process_pending_tasks().await;
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
            match self.ports.allocate(&service) {
                Ok(allocation) => {
                    let size = prost::Message::encoded_len(&service);
                    allocated.push(((service.id, allocation), size));
                }
                Err(e) => {
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

    async fn commit_services(&mut self, batch: Vec<(String, crate::ports::Allocation)>) {
        let endpoints: Vec<(String, Option<api::Endpoint>)> = batch
            .iter()
            .map(|(id, a)| (id.clone(), a.endpoint.clone()))
            .collect();
        let result = self
            .store
            .update(move |tx| {
                let mut gone = Vec::new();
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
                        gone.push(id);
                    }
                }
                Ok(gone)
            })
            .await;
        match result {
            Ok(gone) => {
                for (id, allocation) in batch {
                    if gone.contains(&id) {
                        self.ports.undo(&id, allocation.previous);
                        self.unallocated_services.remove(&id);
                        continue;
                    }
                    debug!(service.id = %id, "allocated service endpoint");
                    if self.ports.freed_any(&id, &allocation.previous) {
                        // Ports given up by a spec change may be what another service waits for.
                        self.something_was_deallocated = true;
                    }
                    self.unallocated_services.remove(&id);
                    self.requeue_tasks_of(&id);
                }
            }
            Err(e) => {
                error!(error = %e, "failed to store service allocations");
                for (id, allocation) in batch {
                    self.ports.undo(&id, allocation.previous);
                    self.unallocated_services.insert(id);
                }
            }
        }
    }

    /// Queues the waiting tasks of a service that just became allocated.
    fn requeue_tasks_of(&mut self, service_id: &str) {
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

    /// Moves the pending NEW tasks whose service is allocated to PENDING, copying the service
    /// endpoint into them, one transaction per batch; the others wait in `unallocated_tasks`.
    async fn process_pending_tasks(&mut self) {
        let pending: Vec<(String, String)> = std::mem::take(&mut self.pending_tasks)
            .into_iter()
            .collect();
        let unallocated = &self.unallocated_services;
        let errors = self
            .store
            .batch(&pending, |tx, (task_id, _)| {
                let Some(mut task) = tx.get_task(task_id) else {
                    return Ok(());
                };
                if !is_new(&task) {
                    return Ok(());
                }
                if !task.service_id.is_empty() {
                    let ready = tx
                        .get_service(&task.service_id)
                        .filter(|s| !unallocated.contains(&s.id) && is_service_allocated(s));
                    let Some(service) = ready else {
                        debug!(task.id = %task.id, service.id = %task.service_id, "task waits for its service to be allocated");
                        return Ok(());
                    };
                    if service.endpoint.is_some() {
                        task.endpoint = service.endpoint.map(Box::new);
                    }
                }
                task.status = Some(api::TaskStatus {
                    state: api::TaskState::Pending as i32,
                    message: ALLOCATED_STATUS_MESSAGE.to_string(),
                    timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
                    ..Default::default()
                });
                tx.update_task(task)
            })
            .await;
        for e in errors {
            error!(error = %e, "failed to move task to pending");
        }
        // What is still NEW (its service not allocated yet, or its write failed) waits.
        let waiting: Vec<bool> = self.store.view(|tx| {
            pending
                .iter()
                .map(|(task_id, _)| {
                    tx.get_shared::<api::Task>(task_id)
                        .is_some_and(|t| is_new(&t))
                })
                .collect()
        });
        for ((task_id, service_id), waits) in pending.into_iter().zip(waiting) {
            if waits {
                self.unallocated_tasks.insert(task_id, service_id);
            }
        }
    }
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
