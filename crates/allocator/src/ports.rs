//! Published ports (SwarmKit's `manager/allocator/portallocator.go`): the cluster-wide map of INGRESS
//! ports per protocol, which ports each service holds, the endpoint a service gets for its spec
//! (sticky: a dynamic port stays the same across updates), whether a stored endpoint matches its spec,
//! and the control API's best-effort conflict check. HOST-mode ports are never reserved here: several
//! services may publish the same host port and the scheduler keeps them on different nodes.
//! Nothing in this file touches the store.

use std::collections::{BTreeSet, HashMap, HashSet};

use api::port_config::{Protocol, PublishMode};

use crate::error::Error;

/// First port handed out for a published port of 0.
pub const DYNAMIC_PORT_START: u32 = 30000;
/// Last port handed out for a published port of 0.
pub const DYNAMIC_PORT_END: u32 = 32767;
/// Highest valid port.
const MAX_PORT: u32 = 65535;

/// A reserved port: protocol (as the wire enum value) and published port.
type PortKey = (i32, u32);

fn protocol_name(protocol: i32) -> &'static str {
    match Protocol::try_from(protocol) {
        Ok(Protocol::Udp) => "udp",
        Ok(Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

fn is_ingress(p: &api::PortConfig) -> bool {
    p.publish_mode == PublishMode::Ingress as i32
}

fn is_host(p: &api::PortConfig) -> bool {
    p.publish_mode == PublishMode::Host as i32
}

/// The ports in use, per protocol.
#[derive(Debug, Default)]
struct PortSpace {
    in_use: HashMap<i32, BTreeSet<u32>>,
}

impl PortSpace {
    /// Takes a specific port.
    fn reserve(&mut self, protocol: i32, port: u32) -> Result<(), Error> {
        if port == 0 || port > MAX_PORT {
            return Err(Error::PortOutOfRange { port });
        }
        if !self.in_use.entry(protocol).or_default().insert(port) {
            return Err(Error::PortInUse {
                protocol: protocol_name(protocol),
                port,
            });
        }
        Ok(())
    }

    /// Takes the lowest free port of the dynamic range.
    fn reserve_dynamic(&mut self, protocol: i32) -> Result<u32, Error> {
        let used = self.in_use.entry(protocol).or_default();
        let port = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
            .find(|p| !used.contains(p))
            .ok_or(Error::PortsExhausted {
                protocol: protocol_name(protocol),
            })?;
        used.insert(port);
        Ok(port)
    }

    fn free(&mut self, protocol: i32, port: u32) {
        if let Some(used) = self.in_use.get_mut(&protocol) {
            used.remove(&port);
        }
    }
}

/// The result of allocating a service's ports: the endpoint to store, and the ports the service held
/// before, which [`ServicePorts::undo`] gives back if the endpoint cannot be stored.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) endpoint: Option<api::Endpoint>,
    pub(crate) previous: Vec<PortKey>,
}

/// The INGRESS ports every service holds, and the port space they are taken from.
#[derive(Debug, Default)]
pub(crate) struct ServicePorts {
    space: PortSpace,
    held: HashMap<String, Vec<PortKey>>,
}

impl ServicePorts {
    /// Takes the INGRESS ports `service`'s stored endpoint already holds (allocator start-up), so no
    /// new allocation can hand them out again. Returns false if some of them are held by another
    /// service already (an inconsistent store): the service must then be allocated again.
    pub(crate) fn restore(&mut self, service: &api::Service) -> bool {
        let Some(endpoint) = &service.endpoint else {
            return true;
        };
        let mut complete = true;
        let held = self.held.entry(service.id.clone()).or_default();
        for p in endpoint.ports.iter().filter(|p| is_ingress(p)) {
            match self.space.reserve(p.protocol, p.published_port) {
                Ok(()) => held.push((p.protocol, p.published_port)),
                Err(e) => {
                    tracing::warn!(service.id = %service.id, error = %e, "stored port allocation cannot be restored");
                    complete = false;
                }
            }
        }
        complete
    }

    /// Computes the endpoint of `service` for its current spec and takes its INGRESS ports (freeing
    /// the ones it held that the spec no longer wants). On failure nothing changes.
    pub(crate) fn allocate(&mut self, service: &api::Service) -> Result<Allocation, Error> {
        let previous = self.take_held(&service.id);
        let spec = service.spec.as_ref().and_then(|s| s.endpoint.as_ref());
        let Some(spec) = spec else {
            // No endpoint wanted any more: keep what networks put there, drop the ports.
            let endpoint = service.endpoint.clone().map(|e| api::Endpoint {
                spec: None,
                ports: Vec::new(),
                ..e
            });
            return Ok(Allocation { endpoint, previous });
        };
        let mut ports = reconcile_port_configs(service);
        let mut taken = Vec::new();
        // Named ports first, so a dynamic port never takes one the spec names.
        let mut order: Vec<(bool, usize)> = ports
            .iter()
            .enumerate()
            .filter(|(_, p)| is_ingress(p))
            .map(|(i, p)| (p.published_port == 0, i))
            .collect();
        order.sort_unstable();
        for (dynamic, i) in order {
            let state = &mut ports[i];
            let result = if dynamic {
                self.space.reserve_dynamic(state.protocol)
            } else {
                self.space
                    .reserve(state.protocol, state.published_port)
                    .map(|()| state.published_port)
            };
            match result {
                Ok(port) => {
                    state.published_port = port;
                    taken.push((state.protocol, port));
                }
                Err(e) => {
                    self.held.insert(service.id.clone(), taken);
                    self.undo(&service.id, previous);
                    return Err(e);
                }
            }
        }
        self.held.insert(service.id.clone(), taken);
        let virtual_ips = service
            .endpoint
            .as_ref()
            .map(|e| e.virtual_ips.clone())
            .unwrap_or_default();
        Ok(Allocation {
            endpoint: Some(api::Endpoint {
                spec: Some(spec.clone()),
                ports,
                virtual_ips,
            }),
            previous,
        })
    }

    /// Frees what `service_id` holds now and takes back `previous` (an allocation that could not be
    /// stored).
    pub(crate) fn undo(&mut self, service_id: &str, previous: Vec<PortKey>) {
        self.take_held(service_id);
        let mut restored = Vec::with_capacity(previous.len());
        for (protocol, port) in previous {
            // These were held a moment ago and nothing else allocated since, so they are free.
            if self.space.reserve(protocol, port).is_ok() {
                restored.push((protocol, port));
            }
        }
        if !restored.is_empty() {
            self.held.insert(service_id.to_string(), restored);
        }
    }

    /// Whether `service_id` no longer holds some of `previous`: the allocation freed ports.
    pub(crate) fn freed_any(&self, service_id: &str, previous: &[PortKey]) -> bool {
        let held = self.held.get(service_id).map(Vec::as_slice).unwrap_or(&[]);
        previous.iter().any(|k| !held.contains(k))
    }

    /// Frees every port `service_id` holds; true if it held any.
    pub(crate) fn release(&mut self, service_id: &str) -> bool {
        !self.take_held(service_id).is_empty()
    }

    fn take_held(&mut self, service_id: &str) -> Vec<PortKey> {
        let held = self.held.remove(service_id).unwrap_or_default();
        for &(protocol, port) in &held {
            self.space.free(protocol, port);
        }
        held
    }

    /// The ports `service_id` holds, sorted (tests).
    #[cfg(test)]
    pub(crate) fn held(&self, service_id: &str) -> Vec<PortKey> {
        let mut held = self.held.get(service_id).cloned().unwrap_or_default();
        held.sort_unstable();
        held
    }
}

/// Identity of a port within one endpoint: name, protocol and target port.
type ConfigKey = (String, i32, u32);

fn config_key(p: &api::PortConfig) -> ConfigKey {
    (p.name.clone(), p.protocol, p.target_port)
}

/// The INGRESS port states of an endpoint by identity, to match spec ports against.
#[derive(Default)]
struct PortStates {
    by_key: HashMap<ConfigKey, Vec<api::PortConfig>>,
}

impl PortStates {
    fn ingress_of(endpoint: &api::Endpoint) -> Self {
        let mut states = PortStates::default();
        for p in endpoint.ports.iter().filter(|p| is_ingress(p)) {
            states
                .by_key
                .entry(config_key(p))
                .or_default()
                .push(p.clone());
        }
        states
    }

    /// Removes and returns the state matching `config`: the same published port if it names one,
    /// else any state with a published port (a dynamic port allocated before).
    fn take(&mut self, config: &api::PortConfig) -> Option<api::PortConfig> {
        let states = self.by_key.get_mut(&config_key(config))?;
        let index = if config.published_port != 0 {
            states
                .iter()
                .position(|s| s.published_port == config.published_port)?
        } else {
            states.iter().position(|s| s.published_port != 0)?
        };
        Some(states.swap_remove(index))
    }
}

/// The port configs to allocate for `service`: the spec's, except that an INGRESS port with no
/// published port keeps the port it was given before when its stored state still matches, so dynamic
/// ports stick across updates. When the stored endpoint has as many ports as the spec, the order is
/// SwarmKit's: explicit and HOST ports, then the dynamic ones; otherwise the spec's order.
fn reconcile_port_configs(service: &api::Service) -> Vec<api::PortConfig> {
    let spec_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or(&[]);
    let Some(endpoint) = service
        .endpoint
        .as_ref()
        .filter(|e| e.ports.len() == spec_ports.len())
    else {
        return spec_ports.to_vec();
    };
    let mut states = PortStates::ingress_of(endpoint);
    let mut configs = Vec::with_capacity(spec_ports.len());
    for config in spec_ports {
        if !is_ingress(config) {
            configs.push(config.clone());
        } else if config.published_port != 0 {
            states.take(config);
            configs.push(config.clone());
        }
    }
    for config in spec_ports
        .iter()
        .filter(|c| is_ingress(c) && c.published_port == 0)
    {
        configs.push(states.take(config).unwrap_or_else(|| config.clone()));
    }
    configs
}

/// Whether `service`'s stored endpoint is the allocation of its current spec: same endpoint spec,
/// every INGRESS port with its published port (a dynamic one with any), every HOST port present.
pub(crate) fn is_service_allocated(service: &api::Service) -> bool {
    let spec = service.spec.as_ref().and_then(|s| s.endpoint.as_ref());
    let endpoint = service.endpoint.as_ref();
    match (spec, endpoint) {
        (None, None) => true,
        (None, Some(e)) => e.ports.is_empty() && e.spec.is_none(),
        (Some(_), None) => false,
        (Some(spec), Some(e)) => {
            e.spec.as_ref() == Some(spec) && ports_match(&spec.ports, &e.ports)
        }
    }
}

fn ports_match(spec_ports: &[api::PortConfig], states: &[api::PortConfig]) -> bool {
    if spec_ports.len() != states.len() {
        return false;
    }
    let mut ingress = PortStates::default();
    let mut host_targets = HashSet::new();
    for s in states {
        if is_ingress(s) {
            ingress
                .by_key
                .entry(config_key(s))
                .or_default()
                .push(s.clone());
        } else if is_host(s) {
            host_targets.insert(s.target_port);
        }
    }
    // Explicit ports first, so a dynamic one cannot claim their state.
    let explicit_ok = spec_ports
        .iter()
        .filter(|c| is_ingress(c) && c.published_port != 0)
        .all(|c| ingress.take(c).is_some());
    explicit_ok
        && spec_ports.iter().all(|c| {
            if is_ingress(c) {
                c.published_port != 0 || ingress.take(c).is_some()
            } else {
                !is_host(c) || host_targets.contains(&c.target_port)
            }
        })
}

/// Best-effort check that `candidate`'s published ports are not used by one of `existing` (SwarmKit's
/// control API `checkPortConflicts`): an INGRESS or HOST port of the candidate clashes with an
/// INGRESS port of another service, and an INGRESS port of the candidate clashes with a HOST port of
/// another service; HOST ports may be shared. Both the other services' specs and their allocated
/// endpoints count. A service with the candidate's (non-empty) ID is the candidate's own old version
/// and is skipped. The error is SwarmKit's message, naming the first clashing service in `existing`
/// order.
pub fn check_port_conflicts(
    existing: &[api::Service],
    candidate: &api::Service,
) -> Result<(), String> {
    let Some(endpoint) = candidate.spec.as_ref().and_then(|s| s.endpoint.as_ref()) else {
        return Ok(());
    };
    let mut ingress = HashSet::new();
    let mut host = HashSet::new();
    for p in endpoint.ports.iter().filter(|p| p.published_port != 0) {
        if is_ingress(p) {
            ingress.insert((p.protocol, p.published_port));
        } else if is_host(p) {
            host.insert((p.protocol, p.published_port));
        }
    }
    if ingress.is_empty() && host.is_empty() {
        return Ok(());
    }
    let in_use = |p: &api::PortConfig, other: &api::Service| -> Result<(), String> {
        if p.published_port == 0 {
            return Ok(());
        }
        let key = (p.protocol, p.published_port);
        let name = other
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| a.name.as_str())
            .unwrap_or_default();
        if is_host(p) && ingress.contains(&key) {
            return Err(format!(
                "port '{}' is already in use by service '{name}' ({}) as a host-published port",
                p.published_port, other.id
            ));
        }
        if is_ingress(p) && (ingress.contains(&key) || host.contains(&key)) {
            return Err(format!(
                "port '{}' is already in use by service '{name}' ({}) as an ingress port",
                p.published_port, other.id
            ));
        }
        Ok(())
    };
    for other in existing {
        if !candidate.id.is_empty() && other.id == candidate.id {
            continue;
        }
        let spec_ports = other
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.ports.as_slice())
            .unwrap_or(&[]);
        let allocated = other
            .endpoint
            .as_ref()
            .map(|e| e.ports.as_slice())
            .unwrap_or(&[]);
        for p in spec_ports.iter().chain(allocated) {
            in_use(p, other)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: i32 = Protocol::Tcp as i32;
    const UDP: i32 = Protocol::Udp as i32;

    fn port(mode: PublishMode, protocol: i32, target: u32, published: u32) -> api::PortConfig {
        api::PortConfig {
            name: String::new(),
            protocol,
            target_port: target,
            published_port: published,
            publish_mode: mode as i32,
        }
    }

    fn ingress(target: u32, published: u32) -> api::PortConfig {
        port(PublishMode::Ingress, TCP, target, published)
    }

    fn host(target: u32, published: u32) -> api::PortConfig {
        port(PublishMode::Host, TCP, target, published)
    }

    fn service(id: &str, name: &str, ports: Vec<api::PortConfig>) -> api::Service {
        api::Service {
            id: id.into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                endpoint: Some(api::EndpointSpec { mode: 0, ports }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn allocated(mut s: api::Service, ports: &mut ServicePorts) -> api::Service {
        s.endpoint = ports.allocate(&s).expect("allocation succeeds").endpoint;
        s
    }

    #[test]
    fn dynamic_ports_are_the_lowest_free_per_protocol() {
        let mut space = PortSpace::default();
        assert_eq!(space.reserve_dynamic(TCP).expect("free"), 30000);
        space.reserve(TCP, 30001).expect("free");
        assert_eq!(space.reserve_dynamic(TCP).expect("free"), 30002);
        assert_eq!(space.reserve_dynamic(UDP).expect("free"), 30000);
        space.free(TCP, 30000);
        assert_eq!(space.reserve_dynamic(TCP).expect("free"), 30000);
        assert!(matches!(
            space.reserve(TCP, 30001),
            Err(Error::PortInUse {
                protocol: "tcp",
                port: 30001
            })
        ));
        assert!(matches!(
            space.reserve(TCP, 70000),
            Err(Error::PortOutOfRange { port: 70000 })
        ));
    }

    #[test]
    fn dynamic_range_exhaustion_is_an_error() {
        let mut space = PortSpace::default();
        for _ in DYNAMIC_PORT_START..=DYNAMIC_PORT_END {
            space.reserve_dynamic(TCP).expect("range not exhausted yet");
        }
        assert!(matches!(
            space.reserve_dynamic(TCP),
            Err(Error::PortsExhausted { protocol: "tcp" })
        ));
    }

    #[test]
    fn length_change_allocates_in_spec_order() {
        let mut ports = ServicePorts::default();
        let s = allocated(service("a", "a", vec![ingress(80, 0)]), &mut ports);
        assert_eq!(
            s.endpoint.as_ref().expect("endpoint").ports[0].published_port,
            30000
        );
        assert!(is_service_allocated(&s));

        // Another service takes 30001; after adding a port the dynamic one is again the lowest free,
        // which is the port it had.
        allocated(service("b", "b", vec![ingress(80, 0)]), &mut ports);
        let mut updated = s.clone();
        updated.spec.as_mut().expect("spec").endpoint = Some(api::EndpointSpec {
            mode: 0,
            ports: vec![ingress(80, 0), ingress(443, 8443)],
        });
        assert!(!is_service_allocated(&updated));
        let updated = allocated(updated, &mut ports);
        let published: Vec<u32> = updated
            .endpoint
            .as_ref()
            .expect("endpoint")
            .ports
            .iter()
            .map(|p| p.published_port)
            .collect();
        assert_eq!(published, vec![30000, 8443]);
        assert_eq!(ports.held("a"), vec![(TCP, 8443), (TCP, 30000)]);
        assert_eq!(ports.held("b"), vec![(TCP, 30001)]);
    }

    #[test]
    fn sticky_dynamic_port_survives_a_same_length_update() {
        let mut ports = ServicePorts::default();
        let s = allocated(
            service("a", "a", vec![ingress(80, 0), ingress(443, 0)]),
            &mut ports,
        );
        let mut updated = s.clone();
        updated.spec.as_mut().expect("spec").endpoint = Some(api::EndpointSpec {
            mode: 0,
            ports: vec![ingress(80, 8080), ingress(443, 0)],
        });
        let updated = allocated(updated, &mut ports);
        let published: Vec<(u32, u32)> = updated
            .endpoint
            .as_ref()
            .expect("endpoint")
            .ports
            .iter()
            .map(|p| (p.target_port, p.published_port))
            .collect();
        assert_eq!(published, vec![(80, 8080), (443, 30001)]);
        assert_eq!(ports.held("a"), vec![(TCP, 8080), (TCP, 30001)]);
    }

    #[test]
    fn failed_allocation_changes_nothing() {
        let mut ports = ServicePorts::default();
        allocated(service("a", "a", vec![ingress(80, 8080)]), &mut ports);
        let b = allocated(service("b", "b", vec![ingress(80, 9090)]), &mut ports);
        let mut clash = b.clone();
        clash.spec.as_mut().expect("spec").endpoint = Some(api::EndpointSpec {
            mode: 0,
            ports: vec![ingress(81, 0), ingress(80, 8080)],
        });
        assert!(matches!(
            ports.allocate(&clash),
            Err(Error::PortInUse { port: 8080, .. })
        ));
        assert_eq!(ports.held("b"), vec![(TCP, 9090)]);
        assert_eq!(ports.held("a"), vec![(TCP, 8080)]);
        // The dynamic port taken before the failure was given back.
        assert_eq!(ports.space.reserve_dynamic(TCP).expect("free"), 30000);
    }

    #[test]
    fn host_ports_are_copied_not_reserved() {
        let mut ports = ServicePorts::default();
        let a = allocated(
            service("a", "a", vec![host(80, 8080), host(81, 0)]),
            &mut ports,
        );
        let b = allocated(service("b", "b", vec![host(80, 8080)]), &mut ports);
        assert_eq!(
            a.endpoint.as_ref().expect("endpoint").ports,
            vec![host(80, 8080), host(81, 0)]
        );
        assert_eq!(
            b.endpoint.as_ref().expect("endpoint").ports,
            vec![host(80, 8080)]
        );
        assert!(ports.held("a").is_empty());
        assert!(is_service_allocated(&a));
    }

    #[test]
    fn restore_reports_ports_held_twice() {
        let mut ports = ServicePorts::default();
        let a = allocated(service("a", "a", vec![ingress(80, 0)]), &mut ports);
        let mut restored = ServicePorts::default();
        assert!(restored.restore(&a));
        let mut copy = a.clone();
        copy.id = "b".into();
        assert!(!restored.restore(&copy));
        assert_eq!(restored.held("a"), vec![(TCP, 30000)]);
        assert!(restored.held("b").is_empty());
    }

    #[test]
    fn allocation_state_tracks_the_spec() {
        let mut s = service("a", "a", vec![ingress(80, 8080)]);
        assert!(!is_service_allocated(&s));
        let mut ports = ServicePorts::default();
        s = allocated(s, &mut ports);
        assert!(is_service_allocated(&s));
        // A resolution mode change alone needs a new allocation (the endpoint spec is copied).
        s.spec
            .as_mut()
            .expect("spec")
            .endpoint
            .as_mut()
            .expect("endpoint")
            .mode = 1;
        assert!(!is_service_allocated(&s));
        // No endpoint wanted: the ports go.
        s.spec.as_mut().expect("spec").endpoint = None;
        assert!(!is_service_allocated(&s));
        s = allocated(s, &mut ports);
        assert!(is_service_allocated(&s));
        assert!(ports.held("a").is_empty());
    }

    #[test]
    fn conflicts_use_swarmkit_messages() {
        let mut a = service("ida", "a", vec![ingress(80, 8080)]);
        a.endpoint = Some(api::Endpoint {
            spec: None,
            ports: vec![ingress(80, 8080)],
            virtual_ips: vec![],
        });
        let h = service("idh", "h", vec![host(80, 9090)]);
        let existing = vec![a, h];

        let check = |ports: Vec<api::PortConfig>| {
            check_port_conflicts(&existing, &service("", "new", ports))
        };
        assert_eq!(
            check(vec![ingress(80, 8080)]),
            Err(
                "port '8080' is already in use by service 'a' (ida) as an ingress port".to_string()
            )
        );
        assert_eq!(
            check(vec![host(80, 8080)]),
            Err(
                "port '8080' is already in use by service 'a' (ida) as an ingress port".to_string()
            )
        );
        assert_eq!(
            check(vec![ingress(80, 9090)]),
            Err(
                "port '9090' is already in use by service 'h' (idh) as a host-published port"
                    .to_string()
            )
        );
        // Host ports may be shared; other protocols and dynamic ports never clash.
        assert_eq!(check(vec![host(80, 9090)]), Ok(()));
        assert_eq!(
            check(vec![port(PublishMode::Ingress, UDP, 80, 8080)]),
            Ok(())
        );
        assert_eq!(check(vec![ingress(80, 0)]), Ok(()));
        // An update of the holder itself does not clash with its old version.
        assert_eq!(
            check_port_conflicts(&existing, &service("ida", "a", vec![ingress(80, 8080)])),
            Ok(())
        );
    }
}
