//! The filter pipeline (SwarmKit's `manager/scheduler/filter.go` and `pipeline.go`): what a task
//! asks of a node ([`Requirements`], derived once per task from its spec), the checks in SwarmKit's
//! order, and the `no suitable node (...)` explanation built from per-filter failure counts.
//!
//! The filters fall in two families. Static ones (Ready, Plugins, Constraints, Platform) depend only
//! on the node object, so their verdicts are cached per [`StaticKey`] by the node set. Dynamic ones
//! (Resources, Host ports, Max replicas) depend on what runs on the node and are checked when a node
//! is picked. Which node state they read lives in `nodeinfo.rs`.

use std::sync::Arc;

use api::constraint::{self, Constraint};

use crate::nodeinfo::NodeInfo;

/// One filter of the pipeline, in SwarmKit's order (which is also the tie order of explanations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Node status READY and availability ACTIVE.
    Ready,
    /// CPU, memory and generic resource reservations fit what the node has left.
    Resources,
    /// Volume, network and log plugins the task needs are installed.
    Plugins,
    /// Placement constraints hold.
    Constraints,
    /// One of the requested platforms is the node's.
    Platform,
    /// No HOST-mode published port of the task is in use on the node.
    HostPorts,
    /// Fewer tasks of the service than `max_replicas` on the node.
    MaxReplicas,
}

impl Filter {
    /// Every filter, in pipeline order.
    pub(crate) const ALL: [Filter; 7] = [
        Filter::Ready,
        Filter::Resources,
        Filter::Plugins,
        Filter::Constraints,
        Filter::Platform,
        Filter::HostPorts,
        Filter::MaxReplicas,
    ];

    /// Position in [`Filter::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// SwarmKit's explanation for `nodes` nodes failing this filter.
    fn explain(self, nodes: usize) -> String {
        let on = if nodes == 1 {
            "1 node".to_string()
        } else {
            format!("{nodes} nodes")
        };
        match self {
            Filter::Ready if nodes == 1 => "1 node not available for new tasks".to_string(),
            Filter::Ready => format!("{nodes} nodes not available for new tasks"),
            Filter::Resources => format!("insufficient resources on {on}"),
            Filter::Plugins => format!("missing plugin on {on}"),
            Filter::Constraints => format!("scheduling constraints not satisfied on {on}"),
            Filter::Platform => format!("unsupported platform on {on}"),
            Filter::HostPorts => format!("host-mode port already in use on {on}"),
            Filter::MaxReplicas => "max replicas per node limit exceed".to_string(),
        }
    }
}

/// Number of nodes each filter rejected (a node counts for the first filter it fails).
pub(crate) type FailureCounts = [usize; Filter::ALL.len()];

/// `status.err` of a task no node can take: `no suitable node (a; b)`, most frequent failure first,
/// ties in pipeline order (SwarmKit sorts the few entries with a stable insertion sort).
pub(crate) fn no_suitable_node(counts: &FailureCounts) -> String {
    let mut failed: Vec<Filter> = Filter::ALL
        .into_iter()
        .filter(|f| counts[f.index()] > 0)
        .collect();
    if failed.is_empty() {
        return "no suitable node".to_string();
    }
    failed.sort_by_key(|f| std::cmp::Reverse(counts[f.index()]));
    let parts: Vec<String> = failed
        .into_iter()
        .map(|f| f.explain(counts[f.index()]))
        .collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// The node-object-only part of what a task needs; tasks with equal keys pass the static filters on
/// exactly the same nodes, whatever their service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct StaticKey {
    /// Volume drivers of the task's volume mounts (not `local`).
    volume_plugins: Vec<String>,
    /// Drivers of the networks the task is attached to, where the attachment names one.
    network_plugins: Vec<String>,
    /// The task's log driver, unless empty or `none`.
    log_driver: Option<String>,
    /// Placement constraint expressions; empty when there are none or they do not parse (the
    /// control API validated them, so SwarmKit then runs without the filter).
    constraints: Vec<String>,
    /// Requested platforms as (architecture, os), architecture normalised.
    platforms: Vec<(String, String)>,
}

/// A [`StaticKey`] with its constraints parsed, ready to check nodes.
#[derive(Debug)]
pub(crate) struct StaticFilter {
    key: StaticKey,
    constraints: Vec<Constraint>,
}

impl StaticFilter {
    pub(crate) fn new(key: StaticKey) -> Self {
        let constraints = constraint::parse(&key.constraints).unwrap_or_default();
        StaticFilter { key, constraints }
    }

    pub(crate) fn key(&self) -> &StaticKey {
        &self.key
    }

    /// The first static filter `node` fails, in pipeline order.
    pub(crate) fn check(&self, node: &NodeInfo) -> Result<(), Filter> {
        let Some(object) = node.node() else {
            return Err(Filter::Ready);
        };
        if !node.is_ready() {
            return Err(Filter::Ready);
        }
        if !self.plugins_ok(object) {
            return Err(Filter::Plugins);
        }
        if !self.constraints.is_empty() && !constraint::node_matches(&self.constraints, object) {
            return Err(Filter::Constraints);
        }
        if !self.key.platforms.is_empty() && !self.platform_ok(object) {
            return Err(Filter::Platform);
        }
        Ok(())
    }

    fn plugins_ok(&self, node: &api::Node) -> bool {
        let key = &self.key;
        if key.volume_plugins.is_empty()
            && key.network_plugins.is_empty()
            && key.log_driver.is_none()
        {
            return true;
        }
        // A node that runs no engine reports no plugins, and SwarmKit lets it pass.
        let Some(engine) = node.description.as_ref().and_then(|d| d.engine.as_ref()) else {
            return true;
        };
        let plugins = &engine.plugins;
        if !key
            .volume_plugins
            .iter()
            .all(|name| plugin_on_node("Volume", name, plugins).1)
        {
            return false;
        }
        if !key
            .network_plugins
            .iter()
            .all(|name| plugin_on_node("Network", name, plugins).1)
        {
            return false;
        }
        if let Some(name) = &key.log_driver {
            // An engine that reports no log plugin at all predates the field: do not filter.
            let (type_found, exists) = plugin_on_node("Log", name, plugins);
            if type_found && !exists {
                return false;
            }
        }
        true
    }

    fn platform_ok(&self, node: &api::Node) -> bool {
        let Some(platform) = node.description.as_ref().and_then(|d| d.platform.as_ref()) else {
            return false;
        };
        let arch = normalize_arch(&platform.architecture);
        self.key
            .platforms
            .iter()
            .any(|(a, os)| (a.is_empty() || a == arch) && (os.is_empty() || *os == platform.os))
    }
}

/// (a plugin of that type is reported, the plugin `name` or `name:latest` is installed).
fn plugin_on_node(kind: &str, name: &str, plugins: &[api::PluginDescription]) -> (bool, bool) {
    let mut type_found = false;
    for plugin in plugins.iter().filter(|p| p.r#type == kind) {
        type_found = true;
        if plugin.name == name
            || plugin
                .name
                .strip_prefix(name)
                .is_some_and(|rest| rest == ":latest")
        {
            return (true, true);
        }
    }
    (type_found, false)
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What to spread a service's tasks over (a placement preference).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Spread {
    /// `node.labels.<label>`
    NodeLabel(String),
    /// `engine.labels.<label>`
    EngineLabel(String),
}

impl Spread {
    fn parse(descriptor: &str) -> Option<Spread> {
        let strip = |prefix: &str| {
            (descriptor.len() > prefix.len()
                && descriptor.is_char_boundary(prefix.len())
                && descriptor[..prefix.len()].eq_ignore_ascii_case(prefix))
            .then(|| descriptor[prefix.len()..].to_string())
        };
        if let Some(label) = strip(constraint::NODE_LABEL_PREFIX) {
            Some(Spread::NodeLabel(label))
        } else {
            strip(constraint::ENGINE_LABEL_PREFIX).map(Spread::EngineLabel)
        }
    }

    /// The node's value for this preference; a missing label is `""`, a branch of its own.
    pub(crate) fn value<'a>(&self, node: &'a api::Node) -> &'a str {
        let labels = match self {
            Spread::NodeLabel(_) => node
                .spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map(|a| &a.labels),
            Spread::EngineLabel(_) => node
                .description
                .as_ref()
                .and_then(|d| d.engine.as_ref())
                .map(|e| &e.labels),
        };
        let (Spread::NodeLabel(label) | Spread::EngineLabel(label)) = self;
        labels.and_then(|l| l.get(label)).map_or("", String::as_str)
    }
}

/// A generic resource reservation; only discrete ones can be reserved (`None` never fits).
pub(crate) type GenericRequest = (String, Option<i64>);

/// Everything the scheduler needs from a task's spec, computed once. Tasks of one service and spec
/// version share one (`Arc`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Requirements {
    /// The static filters' input.
    pub(crate) statics: StaticKey,
    /// Reserved nano CPUs.
    pub(crate) nano_cpus: i64,
    /// Reserved memory bytes.
    pub(crate) memory_bytes: i64,
    /// Reserved generic resources.
    pub(crate) generic: Vec<GenericRequest>,
    /// HOST-mode published ports as (protocol, port).
    pub(crate) host_ports: Vec<(i32, u32)>,
    /// `placement.max_replicas`, 0 = no limit.
    pub(crate) max_replicas: u64,
    /// Spread preferences, outermost first.
    pub(crate) spreads: Vec<Spread>,
}

impl Requirements {
    /// Derives the requirements of `task`.
    pub(crate) fn of(task: &api::Task) -> Arc<Requirements> {
        let spec = task.spec.as_ref();
        let mut req = Requirements::default();

        if let Some(r) = spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.reservations.as_ref())
        {
            req.nano_cpus = r.nano_cpus;
            req.memory_bytes = r.memory_bytes;
            req.generic = r
                .generic
                .iter()
                .map(|g| match &g.resource {
                    Some(api::generic_resource::Resource::DiscreteResourceSpec(d)) => {
                        (d.kind.clone(), Some(d.value))
                    }
                    Some(api::generic_resource::Resource::NamedResourceSpec(n)) => {
                        (n.kind.clone(), None)
                    }
                    None => (String::new(), None),
                })
                .collect();
        }

        if let Some(api::task_spec::Runtime::Container(c)) = spec.and_then(|s| s.runtime.as_ref()) {
            for mount in &c.mounts {
                if mount.r#type != api::mount::Type::Volume as i32 {
                    continue;
                }
                let driver = mount
                    .volume_options
                    .as_ref()
                    .and_then(|o| o.driver_config.as_ref())
                    .map_or("", |d| d.name.as_str());
                if !driver.is_empty() && driver != "local" {
                    req.statics.volume_plugins.push(driver.to_string());
                }
            }
        }
        for attachment in &task.networks {
            let driver = attachment
                .network
                .as_ref()
                .and_then(|n| n.driver_state.as_ref())
                .map_or("", |d| d.name.as_str());
            if !driver.is_empty() {
                req.statics.network_plugins.push(driver.to_string());
            }
        }
        if let Some(driver) = spec.and_then(|s| s.log_driver.as_ref())
            && !driver.name.is_empty()
            && driver.name != "none"
        {
            req.statics.log_driver = Some(driver.name.clone());
        }

        if let Some(placement) = spec.and_then(|s| s.placement.as_ref()) {
            if constraint::parse(&placement.constraints).is_ok() {
                req.statics.constraints = placement.constraints.clone();
            }
            req.statics.platforms = placement
                .platforms
                .iter()
                .map(|p| (normalize_arch(&p.architecture).to_string(), p.os.clone()))
                .collect();
            req.max_replicas = placement.max_replicas;
            req.spreads = placement
                .preferences
                .iter()
                .filter_map(|p| match &p.preference {
                    Some(api::placement_preference::Preference::Spread(s)) => {
                        Spread::parse(&s.spread_descriptor)
                    }
                    None => None,
                })
                .collect();
        }

        if let Some(endpoint) = &task.endpoint {
            req.host_ports = endpoint
                .ports
                .iter()
                .filter(|p| {
                    p.publish_mode == api::port_config::PublishMode::Host as i32
                        && p.published_port != 0
                })
                .map(|p| (p.protocol, p.published_port))
                .collect();
        }
        Arc::new(req)
    }

    /// Whether the Resources filter applies.
    pub(crate) fn reserves_resources(&self) -> bool {
        self.nano_cpus != 0 || self.memory_bytes != 0 || !self.generic.is_empty()
    }

    /// The first dynamic filter `node` fails (Resources, Host ports, Max replicas, in that order);
    /// `service_tasks` is the number of active tasks of the task's service on the node.
    pub(crate) fn check_dynamic(&self, node: &NodeInfo, service_tasks: u32) -> Result<(), Filter> {
        if self.reserves_resources() && !node.has_resources(self) {
            return Err(Filter::Resources);
        }
        if !self.host_ports.is_empty() && self.host_ports.iter().any(|p| node.port_in_use(*p)) {
            return Err(Filter::HostPorts);
        }
        if self.max_replicas > 0 && u64::from(service_tasks) >= self.max_replicas {
            return Err(Filter::MaxReplicas);
        }
        Ok(())
    }

    /// The first filter of the whole pipeline `node` fails, in SwarmKit's order.
    pub(crate) fn check(
        &self,
        statics: &StaticFilter,
        node: &NodeInfo,
        service_tasks: u32,
    ) -> Result<(), Filter> {
        let static_result = statics.check(node);
        if static_result == Err(Filter::Ready) {
            return static_result;
        }
        if self.reserves_resources() && !node.has_resources(self) {
            return Err(Filter::Resources);
        }
        static_result?;
        self.check_dynamic(node, service_tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_sort_by_count_then_pipeline_order() {
        let mut counts = FailureCounts::default();
        assert_eq!(no_suitable_node(&counts), "no suitable node");
        counts[Filter::Constraints.index()] = 1;
        assert_eq!(
            no_suitable_node(&counts),
            "no suitable node (scheduling constraints not satisfied on 1 node)"
        );
        counts[Filter::Ready.index()] = 2;
        counts[Filter::Resources.index()] = 2;
        counts[Filter::MaxReplicas.index()] = 3;
        assert_eq!(
            no_suitable_node(&counts),
            "no suitable node (max replicas per node limit exceed; 2 nodes not available for new \
             tasks; insufficient resources on 2 nodes; scheduling constraints not satisfied on 1 node)"
        );
    }

    #[test]
    fn every_filter_has_swarmkits_wording() {
        let texts: Vec<String> = Filter::ALL.iter().map(|f| f.explain(1)).collect();
        assert_eq!(
            texts,
            [
                "1 node not available for new tasks",
                "insufficient resources on 1 node",
                "missing plugin on 1 node",
                "scheduling constraints not satisfied on 1 node",
                "unsupported platform on 1 node",
                "host-mode port already in use on 1 node",
                "max replicas per node limit exceed",
            ]
        );
        assert_eq!(
            Filter::Platform.explain(4),
            "unsupported platform on 4 nodes"
        );
        assert_eq!(
            Filter::Ready.explain(0),
            "0 nodes not available for new tasks"
        );
    }

    #[test]
    fn plugin_names_match_exactly_or_with_latest_tag() {
        let plugins = vec![
            api::PluginDescription {
                r#type: "Volume".into(),
                name: "flocker:latest".into(),
            },
            api::PluginDescription {
                r#type: "Network".into(),
                name: "weave".into(),
            },
        ];
        assert_eq!(plugin_on_node("Volume", "flocker", &plugins), (true, true));
        assert_eq!(
            plugin_on_node("Volume", "flocker:latest", &plugins),
            (true, true)
        );
        assert_eq!(plugin_on_node("Volume", "flock", &plugins), (true, false));
        assert_eq!(plugin_on_node("Network", "weave", &plugins), (true, true));
        assert_eq!(plugin_on_node("Log", "syslog", &plugins), (false, false));
    }

    #[test]
    fn spread_descriptors_need_a_label_prefix() {
        assert_eq!(
            Spread::parse("node.labels.zone"),
            Some(Spread::NodeLabel("zone".into()))
        );
        assert_eq!(
            Spread::parse("Engine.Labels.rack"),
            Some(Spread::EngineLabel("rack".into()))
        );
        assert_eq!(Spread::parse("node.labels."), None);
        assert_eq!(Spread::parse("node.hostname"), None);
    }
}
