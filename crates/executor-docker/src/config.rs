//! What a task's container looks like to the engine: its name, its `com.docker.swarm.*` labels and
//! the create request built from the task's container spec, following SwarmKit's
//! swarmd/dockerexec/container.go. Pure: no engine is involved, so all of it is unit-tested.
//! Secret and config files become read-only bind mounts of the host files the controller writes
//! (moby mounts them the same way). The task's network attachments become the container's
//! endpoints on the node's local networks (`network.rs`), and its HOST-mode published ports
//! become port bindings on the node, as SwarmKit's dockerapi executor binds them. Generic-resource
//! environment and spec templates are not mapped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use agent::ExecutorError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, HostConfigLogConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig,
    NetworkingConfig, PortBinding, PortMap, ResourcesUlimits,
};

use crate::network::Attachment;

/// Prefix of the labels SwarmKit puts on every task container; they override the spec's own.
pub const SYSTEM_LABEL_PREFIX: &str = "com.docker.swarm";

/// The label holding the task ID, by which containers of a task can be listed.
pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";

/// The label holding the service name.
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// CFS period used to turn a nano-CPU limit into a quota: the kernel's default of 100 ms, as
/// SwarmKit sets it explicitly.
const CPU_PERIOD_MICROS: i64 = 100_000;

/// The container of one task, derived once from the task when its controller is made.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    task: api::Task,
    name: String,
    /// The swarm networks the container joins, in the task's order.
    attachments: Vec<Attachment>,
}

impl ContainerConfig {
    /// Checks that `task` is something this executor can run (a container runtime with an image)
    /// and names its container.
    pub fn new(task: &api::Task) -> Result<Self, ExecutorError> {
        let Some(spec) = task.container() else {
            return Err(ExecutorError::Fatal("unsupported runtime".into()));
        };
        if spec.image.is_empty() {
            return Err(ExecutorError::Fatal("dockerexec: image required".into()));
        }
        let name = container_name(task);
        let service = task
            .service_annotations
            .as_ref()
            .map(|a| a.name.as_str())
            .unwrap_or_default();
        let attachments = task
            .networks
            .iter()
            .map(|na| Attachment::new(na, service, &name))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            task: task.clone(),
            name,
            attachments,
        })
    }

    /// The same container on the node's data plane: each swarm network with a VXLAN ID gets
    /// its local network on the data plane's bridge for it ([`Attachment::on_bridge`]).
    pub fn on_data_plane(mut self) -> Self {
        let bridges: Vec<Option<(String, u32)>> = self
            .task
            .networks
            .iter()
            .map(|na| {
                let spec = netplane::overlay::NetSpec::from_network(na.network.as_ref()?).ok()?;
                Some((netplane::overlay::bridge_name(spec.vni), spec.mtu()))
            })
            .collect();
        self.attachments = std::mem::take(&mut self.attachments)
            .into_iter()
            .zip(bridges)
            .map(|(a, bridge)| match bridge {
                Some((bridge, mtu)) => a.on_bridge(bridge, mtu),
                None => a,
            })
            .collect();
        self
    }

    /// Whether any of the container's networks is on the node's data plane.
    pub fn uses_data_plane(&self) -> bool {
        self.attachments.iter().any(|a| a.bridge.is_some())
    }

    /// The task the container runs.
    pub fn task(&self) -> &api::Task {
        &self.task
    }

    /// The swarm networks the container joins, in the task's order; the first is the one it is
    /// created on, the others are connected before it starts.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The HOST-mode ports the task publishes on the node, from its endpoint (the allocator's
    /// copy of the service's), as (protocol, target port, published port; 0 lets the engine
    /// pick one).
    pub fn host_ports(&self) -> Vec<(api::port_config::Protocol, u32, u32)> {
        self.task
            .endpoint
            .as_ref()
            .map(|e| {
                e.ports
                    .iter()
                    .filter(|p| p.publish_mode == api::port_config::PublishMode::Host as i32)
                    .map(|p| {
                        let proto = api::port_config::Protocol::try_from(p.protocol)
                            .unwrap_or(api::port_config::Protocol::Tcp);
                        (proto, p.target_port, p.published_port)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The container name, which is also the task name (see [`container_name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task's ID.
    pub fn task_id(&self) -> &str {
        &self.task.id
    }

    /// The image reference as the spec gives it.
    pub fn image(&self) -> &str {
        &self.spec().image
    }

    /// The spec's stop grace period (10 s when it gives none).
    pub fn stop_grace(&self) -> Duration {
        agent::executor::stop_settings(&self.task).0
    }

    fn spec(&self) -> &api::ContainerSpec {
        self.task
            .container()
            .expect("checked in ContainerConfig::new")
    }

    /// The container's labels: the spec's, then the task's annotation labels, then SwarmKit's
    /// system labels, each overriding the ones before.
    pub fn labels(&self) -> HashMap<String, String> {
        let t = &self.task;
        let mut labels: HashMap<String, String> = self.spec().labels.clone().into_iter().collect();
        if let Some(a) = &t.annotations {
            labels.extend(a.labels.clone());
        }
        let service_name = t
            .service_annotations
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default();
        for (key, value) in [
            ("task", String::new()),
            ("task.id", t.id.clone()),
            ("task.name", self.name.clone()),
            ("node.id", t.node_id.clone()),
            ("service.id", t.service_id.clone()),
            ("service.name", service_name),
        ] {
            labels.insert(format!("{SYSTEM_LABEL_PREFIX}.{key}"), value);
        }
        labels
    }

    /// The body of the engine's container create request; `files` are the task's secret and
    /// config files as (host path, path in the container), mounted read-only; `network` is the
    /// name of the local network of the first attachment, which the container is created on.
    pub fn create_body(
        &self,
        files: &[(PathBuf, PathBuf)],
        network: Option<&str>,
    ) -> ContainerCreateBody {
        let spec = self.spec();
        let (entrypoint, cmd) = command_line(spec);
        let mut host_config = self.host_config(files);
        let mut networking_config = None;
        if let (Some(local), Some(first)) = (network, self.attachments.first()) {
            host_config.network_mode = Some(local.to_string());
            networking_config = Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    local.to_string(),
                    first.endpoint_settings(),
                )])),
            });
        }
        let ports = self.host_ports();
        ContainerCreateBody {
            exposed_ports: non_empty(
                ports
                    .iter()
                    .map(|(proto, target, _)| port_key(*proto, *target))
                    .collect(),
            ),
            networking_config,
            image: Some(spec.image.clone()),
            labels: Some(self.labels()),
            entrypoint,
            cmd,
            env: non_empty(spec.env.clone()),
            user: non_empty_str(&spec.user),
            working_dir: non_empty_str(&spec.dir),
            hostname: non_empty_str(&spec.hostname),
            stop_signal: non_empty_str(&spec.stop_signal),
            // The engine's own default grace period for `docker stop` without a timeout.
            stop_timeout: Some(i64::from(whole_seconds(self.stop_grace()))),
            tty: Some(spec.tty),
            open_stdin: Some(spec.open_stdin),
            healthcheck: spec.healthcheck.as_ref().map(healthcheck),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    fn host_config(&self, files: &[(PathBuf, PathBuf)]) -> HostConfig {
        let spec = self.spec();
        let mut hc = HostConfig {
            mounts: non_empty(
                spec.mounts
                    .iter()
                    .filter(|m| m.r#type != api::mount::Type::Tmpfs as i32)
                    .map(mount)
                    .chain(files.iter().map(|(host, target)| file_mount(host, target)))
                    .collect(),
            ),
            tmpfs: non_empty_map(
                spec.mounts
                    .iter()
                    .filter(|m| m.r#type == api::mount::Type::Tmpfs as i32)
                    .map(|m| (m.target.clone(), tmpfs_options(m)))
                    .collect(),
            ),
            group_add: non_empty(spec.groups.clone()),
            cap_add: non_empty(spec.capability_add.clone()),
            cap_drop: non_empty(spec.capability_drop.clone()),
            init: spec.init,
            readonly_rootfs: spec.read_only.then_some(true),
            sysctls: non_empty_map(spec.sysctls.clone().into_iter().collect()),
            oom_score_adj: (spec.oom_score_adj != 0).then_some(spec.oom_score_adj),
            pids_limit: (spec.pids_limit > 0).then_some(spec.pids_limit),
            ulimits: non_empty(
                spec.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits {
                        name: Some(u.name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect(),
            ),
            extra_hosts: non_empty(spec.hosts.iter().filter_map(|h| extra_host(h)).collect()),
            port_bindings: self.port_bindings(),
            ..Default::default()
        };
        if let Some(dns) = &spec.dns_config {
            hc.dns = non_empty(dns.nameservers.clone());
            hc.dns_search = non_empty(dns.search.clone());
            hc.dns_options = non_empty(dns.options.clone());
        }
        if hc.dns.is_none() {
            hc.dns = self.resolver().map(|gw| vec![gw]);
        }
        if let Some(driver) = &self.task.log_driver {
            hc.log_config = Some(HostConfigLogConfig {
                typ: Some(driver.name.clone()),
                config: Some(driver.options.clone().into_iter().collect()),
            });
        }
        if let Some(limits) = self
            .task
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
        {
            if limits.memory_bytes > 0 {
                hc.memory = Some(limits.memory_bytes);
            }
            if limits.nano_cpus > 0 {
                hc.cpu_period = Some(CPU_PERIOD_MICROS);
                hc.cpu_quota = Some(limits.nano_cpus * CPU_PERIOD_MICROS / 1_000_000_000);
            }
        }
        hc
    }
}

impl ContainerConfig {
    /// The node's resolver for swarm services (netplane's `dns`), which listens on the gateway of
    /// each swarm network: the gateway of the task's first overlay network other than ingress
    /// (which has no names to resolve), if it has one. Names of that network are answered there,
    /// the others forwarded to the node's own resolvers, as Docker's embedded server does; a spec
    /// that names its own nameservers keeps them.
    fn resolver(&self) -> Option<String> {
        self.task
            .networks
            .iter()
            .filter_map(|na| na.network.as_ref())
            .filter(|n| !n.spec.as_ref().is_some_and(|s| s.ingress))
            .filter(|n| n.driver_state.as_ref().is_some_and(|d| d.name == "overlay"))
            .flat_map(|n| n.ipam.iter().flat_map(|i| &i.configs))
            .map(|c| c.gateway.clone())
            .find(|gw| !gw.is_empty())
    }

    /// The HOST-mode ports bound on the node: each target port to its published port on every
    /// address of the node (an empty host IP, as SwarmKit leaves it), or to a port the engine
    /// picks when none is published.
    fn port_bindings(&self) -> Option<PortMap> {
        let ports = self.host_ports();
        (!ports.is_empty()).then(|| {
            ports
                .into_iter()
                .map(|(proto, target, published)| {
                    let binding = PortBinding {
                        host_ip: None,
                        host_port: (published != 0).then(|| published.to_string()),
                    };
                    (port_key(proto, target), Some(vec![binding]))
                })
                .collect()
        })
    }
}

/// The engine's name of a container port: `80/tcp`.
fn port_key(proto: api::port_config::Protocol, port: u32) -> String {
    let proto = match proto {
        api::port_config::Protocol::Tcp => "tcp",
        api::port_config::Protocol::Udp => "udp",
        api::port_config::Protocol::Sctp => "sctp",
    };
    format!("{port}/{proto}")
}

/// The name of `task`'s container: the task's annotated name when the orchestrator set one,
/// otherwise `<service>.<slot>.<task id>` (`<service>.<node id>.<task id>` for global tasks).
/// The name is what identifies the task's container across swarmd restarts.
pub fn container_name(task: &api::Task) -> String {
    if let Some(name) = task.annotations.as_ref().map(|a| &a.name)
        && !name.is_empty()
    {
        return name.clone();
    }
    let service = task
        .service_annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or_default();
    api::naming::task_name(service, task.slot, &task.node_id, &task.id)
}

/// Entrypoint and cmd as SwarmKit sets them: a command replaces the image's entrypoint and the
/// args become its cmd; args alone replace the image's cmd and keep its entrypoint.
fn command_line(spec: &api::ContainerSpec) -> (Option<Vec<String>>, Option<Vec<String>>) {
    if !spec.command.is_empty() {
        (Some(spec.command.clone()), Some(spec.args.clone()))
    } else if !spec.args.is_empty() {
        (None, Some(spec.args.clone()))
    } else {
        (None, None)
    }
}

fn mount(m: &api::Mount) -> Mount {
    use api::mount::Type;
    let typ = match Type::try_from(m.r#type) {
        Ok(Type::Bind) => Some(MountType::BIND),
        Ok(Type::Volume) => Some(MountType::VOLUME),
        Ok(Type::Npipe) => Some(MountType::NPIPE),
        Ok(Type::Cluster) => Some(MountType::CLUSTER),
        Ok(Type::Tmpfs) => Some(MountType::TMPFS),
        Err(_) => None,
    };
    Mount {
        typ,
        source: non_empty_str(&m.source),
        target: Some(m.target.clone()),
        read_only: Some(m.readonly),
        bind_options: m.bind_options.as_ref().map(|b| {
            use api::mount::bind_options::Propagation as P;
            MountBindOptions {
                propagation: Some(match P::try_from(b.propagation) {
                    Ok(P::Private) => MountBindOptionsPropagationEnum::PRIVATE,
                    Ok(P::Rshared) => MountBindOptionsPropagationEnum::RSHARED,
                    Ok(P::Shared) => MountBindOptionsPropagationEnum::SHARED,
                    Ok(P::Rslave) => MountBindOptionsPropagationEnum::RSLAVE,
                    Ok(P::Slave) => MountBindOptionsPropagationEnum::SLAVE,
                    Ok(P::Rprivate) | Err(_) => MountBindOptionsPropagationEnum::RPRIVATE,
                }),
                non_recursive: b.nonrecursive.then_some(true),
                create_mountpoint: b.createmountpoint.then_some(true),
                read_only_non_recursive: b.readonlynonrecursive.then_some(true),
                read_only_force_recursive: b.readonlyforcerecursive.then_some(true),
            }
        }),
        volume_options: m.volume_options.as_ref().map(|v| MountVolumeOptions {
            no_copy: Some(v.nocopy),
            labels: non_empty_map(v.labels.clone().into_iter().collect()),
            driver_config: v
                .driver_config
                .as_ref()
                .map(|d| MountVolumeOptionsDriverConfig {
                    name: Some(d.name.clone()),
                    options: non_empty_map(d.options.clone().into_iter().collect()),
                }),
            subpath: non_empty_str(&v.subpath),
        }),
        ..Default::default()
    }
}

/// A secret or config file: the host file, bound read-only at its target.
fn file_mount(host: &std::path::Path, target: &std::path::Path) -> Mount {
    Mount {
        typ: Some(MountType::BIND),
        source: Some(host.display().to_string()),
        target: Some(target.display().to_string()),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The `tmpfs` option string of a tmpfs mount (`ro,mode=1777,size=64m,noexec`), as SwarmKit's
/// getMountMask builds it: sizes take the largest unit that divides them, and only `exec` and
/// `noexec` pass from the free-form options.
fn tmpfs_options(m: &api::Mount) -> String {
    let mut opts = Vec::new();
    if m.readonly {
        opts.push("ro".to_string());
    }
    if let Some(t) = &m.tmpfs_options {
        if t.mode != 0 {
            opts.push(format!("mode={:o}", t.mode));
        }
        if t.size_bytes != 0 {
            let (size, suffix) = [("g", 1i64 << 30), ("m", 1 << 20), ("k", 1 << 10)]
                .into_iter()
                .find(|(_, d)| t.size_bytes % d == 0)
                .map(|(s, d)| (t.size_bytes / d, s))
                .unwrap_or((t.size_bytes, ""));
            opts.push(format!("size={size}{suffix}"));
        }
        for o in t.options.to_lowercase().split(',') {
            if o == "exec" || o == "noexec" {
                opts.push(o.to_string());
            }
        }
    }
    opts.join(",")
}

/// `IP host [aliases]` (hosts(5), SwarmKit's form) as the engine's `host:IP`; aliases are dropped.
fn extra_host(entry: &str) -> Option<String> {
    let mut parts = entry.split_whitespace();
    let ip = parts.next()?;
    let host = parts.next()?;
    Some(format!("{host}:{ip}"))
}

fn healthcheck(h: &api::HealthConfig) -> HealthConfig {
    let nanos = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| d.seconds.saturating_mul(1_000_000_000) + i64::from(d.nanos))
    };
    HealthConfig {
        test: non_empty(h.test.clone()),
        interval: nanos(&h.interval),
        timeout: nanos(&h.timeout),
        retries: Some(i64::from(h.retries)),
        start_period: nanos(&h.start_period),
        start_interval: nanos(&h.start_interval),
    }
}

/// A grace period in the whole seconds the engine takes, rounded up so that a grace below one
/// second still gives the task a chance to stop.
pub(crate) fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map(m: HashMap<String, String>) -> Option<HashMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn non_empty_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests;
