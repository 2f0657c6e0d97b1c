//! Virtual IPs of services (SwarmKit's cnmallocator `AllocateService`/`DeallocateService`, their
//! VIP part, and `allocateService` of `manager/allocator/network.go`): a service in VIP mode (the
//! default) gets one virtual IP on each network its tasks attach to, and one on ingress while it
//! publishes INGRESS-mode ports; a DNSRR service gets none. A VIP on a node-local network has no
//! address, as in SwarmKit. Nothing in this file touches the store.

use api::endpoint::VirtualIp;

use crate::attachments::{
    AddressSpace, Addressing, Held, HeldAddresses, addressing, ingress_needed, release_all,
    restore_addresses, service_networks,
};
use crate::error::Error;

/// Whether `service` resolves through virtual IPs (VIP mode, the default) rather than DNSRR.
fn wants_vips(service: &api::Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .is_none_or(|e| e.mode != api::endpoint_spec::ResolutionMode::Dnsrr as i32)
}

/// The networks `service` should have a VIP on, in order: ingress when it needs it, then its
/// tasks' networks.
fn vip_networks(service: &api::Service, ingress: Option<&str>) -> Vec<String> {
    if !wants_vips(service) {
        return Vec::new();
    }
    let mut ids: Vec<String> = Vec::new();
    if let Some(ingress) = ingress.filter(|_| ingress_needed(Some(service))) {
        ids.push(ingress.to_string());
    }
    for config in service_networks(service) {
        if !ids.contains(&config.target) {
            ids.push(config.target.clone());
        }
    }
    ids
}

/// The stored VIPs of `service`.
fn stored_vips(service: &api::Service) -> &[VirtualIp] {
    service
        .endpoint
        .as_ref()
        .map_or(&[][..], |e| e.virtual_ips.as_slice())
}

/// The VIPs a service gets for its current spec, what was taken for them, and the VIPs it gives
/// up once they are stored.
#[derive(Debug)]
pub(crate) struct VipAllocation {
    pub(crate) vips: Vec<VirtualIp>,
    pub(crate) taken: Vec<Held>,
    pub(crate) freed: Vec<Held>,
}

/// The VIP addresses every service holds.
#[derive(Debug, Default)]
pub(crate) struct ServiceVips {
    held: HeldAddresses,
}

impl ServiceVips {
    /// Takes the VIP addresses `service` stores (allocator start-up).
    pub(crate) fn restore(
        &mut self,
        space: &mut dyn AddressSpace,
        service: &api::Service,
        only: Option<&str>,
    ) {
        let stored: Vec<Held> = stored_vips(service)
            .iter()
            .filter(|v| !v.addr.is_empty() && only.is_none_or(|n| n == v.network_id))
            .map(|v| (v.network_id.clone(), v.addr.clone()))
            .collect();
        let taken = restore_addresses(space, &service.id, stored);
        self.held.add(&service.id, taken);
    }

    /// Whether `service`'s stored VIPs are those its spec asks for and hold addresses this
    /// allocator holds for it. `current` gives the stored networks.
    pub(crate) fn is_allocated(
        &self,
        service: &api::Service,
        ingress: Option<&str>,
        mut current: impl FnMut(&str) -> Option<api::Network>,
    ) -> bool {
        let wanted = vip_networks(service, ingress);
        let stored = stored_vips(service);
        if stored.len() != wanted.len() {
            return false;
        }
        let held = self.held.get(&service.id);
        wanted.iter().all(|id| {
            let Some(vip) = stored.iter().find(|v| &v.network_id == id) else {
                return false;
            };
            match current(id).map(|n| addressing(&n)) {
                Some(Addressing::NodeLocal) => true,
                Some(Addressing::Cluster) => {
                    !vip.addr.is_empty()
                        && held.is_some_and(|h| h.iter().any(|(n, a)| n == id && *a == vip.addr))
                }
                _ => false,
            }
        })
    }

    /// Works out `service`'s VIPs for its spec: those it holds that are still wanted stay, each
    /// wanted network without one gets one, the others are given up once stored. On failure
    /// nothing stays taken.
    pub(crate) fn allocate(
        &self,
        space: &mut dyn AddressSpace,
        service: &api::Service,
        ingress: Option<&str>,
        current: impl Fn(&str) -> Option<api::Network>,
    ) -> Result<VipAllocation, Error> {
        let wanted = vip_networks(service, ingress);
        let empty = Vec::new();
        let held = self.held.get(&service.id).unwrap_or(&empty);
        let mut vips = Vec::with_capacity(wanted.len());
        let mut taken: Vec<Held> = Vec::new();
        // Kept VIPs first, in their stored order, then the new ones in the spec's order.
        for vip in stored_vips(service) {
            let holds = held
                .iter()
                .any(|(n, a)| *n == vip.network_id && *a == vip.addr);
            let local = vip.addr.is_empty()
                && current(&vip.network_id)
                    .is_some_and(|n| addressing(&n) == Addressing::NodeLocal);
            let first = !vips
                .iter()
                .any(|v: &VirtualIp| v.network_id == vip.network_id);
            if wanted.contains(&vip.network_id) && (holds || local) && first {
                vips.push(vip.clone());
            }
        }
        for id in &wanted {
            if vips.iter().any(|v| &v.network_id == id) {
                continue;
            }
            let result = match current(id).map(|n| addressing(&n)) {
                Some(Addressing::NodeLocal) => Ok(String::new()),
                Some(Addressing::Cluster) => space.allocate(id, None),
                _ => Err(Error::NetworkNotAllocated { id: id.clone() }),
            };
            match result {
                Ok(addr) => {
                    if !addr.is_empty() {
                        taken.push((id.clone(), addr.clone()));
                    }
                    vips.push(VirtualIp {
                        network_id: id.clone(),
                        addr,
                    });
                }
                Err(e) => {
                    release_all(space, &taken);
                    return Err(e);
                }
            }
        }
        let freed = held
            .iter()
            .filter(|(n, a)| !vips.iter().any(|v| v.network_id == *n && v.addr == *a))
            .cloned()
            .collect();
        Ok(VipAllocation { vips, taken, freed })
    }

    /// `allocation` was stored: the service holds its VIPs and gives the freed ones back. True
    /// if something was freed.
    pub(crate) fn commit(
        &mut self,
        space: &mut dyn AddressSpace,
        service_id: &str,
        allocation: &VipAllocation,
    ) -> bool {
        release_all(space, &allocation.freed);
        let held: Vec<Held> = allocation
            .vips
            .iter()
            .filter(|v| !v.addr.is_empty())
            .map(|v| (v.network_id.clone(), v.addr.clone()))
            .collect();
        self.held.set(service_id, held);
        !allocation.freed.is_empty()
    }

    /// `allocation` could not be stored: what it took goes back.
    pub(crate) fn abort(&self, space: &mut dyn AddressSpace, allocation: &VipAllocation) {
        release_all(space, &allocation.taken);
    }

    /// Gives back the VIPs of a removed service; true if it held any.
    pub(crate) fn release(&mut self, space: &mut dyn AddressSpace, service_id: &str) -> bool {
        self.held.release(space, service_id)
    }

    /// Forgets the VIPs on `network_id`, a network removed with its address space.
    pub(crate) fn forget_network(&mut self, network_id: &str) {
        self.held.forget_network(network_id);
    }
}
