//! The service flags of `swarmctl service create|update` and their effect on an
//! `api::ServiceSpec`, as pure functions: the flags keep what the user typed (`None` = not given,
//! so an update touches only what was asked for), `check_syntax` reproduces pflag's value errors,
//! and the `apply_*`/`merge_*` functions change a spec in SwarmKit's order
//! (swarmd/cmd/swarmctl/service/flagparser). Lookups that need the manager (networks, secrets,
//! configs) are done by the commands, which hand the results to the pure helpers here.

use std::collections::BTreeMap;
use std::fmt;

use api::gofmt::{duration_proto, parse_duration, quote};
use api::service_spec::Mode;
use clap::Args;

use crate::common::flag_value_error;

use crate::goparse::{
    parse_bool, parse_cpu, parse_generic_resources, parse_int, parse_uint, parse_ulimit,
    ram_in_bytes,
};
use api::gofmt::read_csv_record;

/// A client-side error of a service command: printed as `Error: <msg>` followed by the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError(pub String);

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for FlagError {
    fn from(s: String) -> Self {
        FlagError(s)
    }
}

impl From<&str> for FlagError {
    fn from(s: &str) -> Self {
        FlagError(s.to_string())
    }
}

type Result<T> = std::result::Result<T, FlagError>;

/// Flags shared by `service create` and `service update`, as typed (pflag's types are noted in
/// the value names; defaults are only documented, a flag that was not given is `None`).
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct ServiceFlags {
    /// service name
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub name: Option<String>,
    /// service label (key=value)
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub label: Option<Vec<String>>,
    /// number of replicas for the service (only works in replicated service mode) (default 1)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// maximum number of replicas for per node (only works in replicated service mode) (default 0 = unlimited)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub replicas_max_per_node: Option<String>,
    /// maximum number of job tasks running at once (only works in replicated-job mode) (default: total completions)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub max_concurrent: Option<String>,
    /// number of job tasks to complete (only works in replicated-job mode) (default 1)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub total_completions: Option<String>,
    /// container image
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub image: Option<String>,
    /// container hostname
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub hostname: Option<String>,
    /// override entrypoint
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub command: Option<Vec<String>>,
    /// container args
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
    /// container env
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub env: Option<Vec<String>>,
    /// open a tty on standard streams
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    pub tty: Option<String>,
    /// open standard input
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    pub open_stdin: Option<String>,
    /// ports
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub ports: Option<Vec<String>>,
    /// how --ports are published: "host" (only on nodes running a task) or "ingress" (on every node, through the routing mesh) (ours)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub publish_mode: Option<String>,
    /// network name
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub network: Option<String>,
    /// amount of reserved memory (e.g. 512m)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// memory limit (e.g. 512m)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub memory_limit: Option<String>,
    /// number of CPU cores reserved (e.g. 0.5)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub cpu_reservation: Option<String>,
    /// CPU cores limit (e.g. 0.5)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub cpu_limit: Option<String>,
    /// user defined resources request (e.g. gpu=3,fpga=1)
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub generic_resources: Option<String>,
    /// ulimit options
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub ulimit: Option<Vec<String>>,
    /// task update parallelism (0 = all at once)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub update_parallelism: Option<String>,
    /// delay between task updates (0s = none) (default "0s")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub update_delay: Option<String>,
    /// action on failure during update (pause|continue|rollback) (default "pause")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub update_on_failure: Option<String>,
    /// order of shutting down old task and starting updated task (stop-first|start-first) (default "stop-first")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub update_order: Option<String>,
    /// task update parallelism during rollback (0 = all at once)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub rollback_parallelism: Option<String>,
    /// delay between task updates during rollback (0s = none) (default "0s")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub rollback_delay: Option<String>,
    /// action on failure during rollback (pause|continue) (default "pause")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub rollback_on_failure: Option<String>,
    /// order of shutting down old task and starting rolled-back task (stop-first|start-first) (default "stop-first")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub rollback_order: Option<String>,
    /// condition to restart the task (any, failure, none) (default "any")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub restart_condition: Option<String>,
    /// delay between task restarts (default "5s")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub restart_delay: Option<String>,
    /// maximum number of restart attempts (0 = unlimited)
    #[arg(long, value_name = "uint", allow_hyphen_values = true)]
    pub restart_max_attempts: Option<String>,
    /// time window to evaluate restart attempts (0 = unbound) (default "0s")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub restart_window: Option<String>,
    /// oom score adjustment (-1000 to 1000)
    #[arg(long, value_name = "int", allow_hyphen_values = true)]
    pub oom_score_adj: Option<String>,
    /// Placement constraint (e.g. node.labels.key==value)
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub constraint: Option<Vec<String>>,
    /// define a bind mount
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub bind: Option<Vec<String>>,
    /// define a volume mount
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub volume: Option<Vec<String>>,
    /// define a tmpfs mount
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub tmpfs: Option<Vec<String>>,
    /// define a npipe mount
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub npipe: Option<Vec<String>>,
    /// specify a log driver
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    pub log_driver: Option<String>,
    /// log driver options, as key value pairs
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    pub log_opt: Option<Vec<String>>,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    pub init: Option<String>,
}

/// pflag's wrapper around a value that its type rejects.
fn invalid_arg(value: &str, flag: &str, err: String) -> FlagError {
    FlagError(flag_value_error(value, flag, &err))
}

/// A `uint` (uint64) flag: Go's `strconv.ParseUint(s, 0, 64)`.
pub fn uint_flag(v: &Option<String>, flag: &str) -> Result<Option<u64>> {
    v.as_deref()
        .map(|s| parse_uint(s, 0, 64).map_err(|e| invalid_arg(s, flag, e)))
        .transpose()
}

/// An `int` (int64) flag: Go's `strconv.ParseInt(s, 0, 64)`.
pub fn int_flag(v: &Option<String>, flag: &str) -> Result<Option<i64>> {
    v.as_deref()
        .map(|s| parse_int(s, 0, 64).map_err(|e| invalid_arg(s, flag, e)))
        .transpose()
}

/// A `bool` flag (`--x` or `--x=false`).
pub fn bool_flag(v: &Option<String>, flag: &str) -> Result<Option<bool>> {
    v.as_deref()
        .map(|s| parse_bool(s).map_err(|e| invalid_arg(s, flag, e)))
        .transpose()
}

/// A `strings` flag: every occurrence is a CSV record, occurrences are concatenated.
pub fn list_flag(v: &Option<Vec<String>>, flag: &str) -> Result<Option<Vec<String>>> {
    Ok(record_flag(v, flag)?.map(|records| records.into_iter().flatten().collect()))
}

/// A `strings` flag whose occurrences stay apart: the CSV fields of each.
pub fn record_flag(v: &Option<Vec<String>>, flag: &str) -> Result<Option<Vec<Vec<String>>>> {
    let Some(occurrences) = v else {
        return Ok(None);
    };
    occurrences
        .iter()
        .map(|occ| read_csv_record(occ).map_err(|e| invalid_arg(occ, flag, e)))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl ServiceFlags {
    /// The errors pflag reports while reading the command line, before the command runs.
    pub fn check_syntax(&self) -> Result<()> {
        for (v, flag) in [
            (&self.replicas, "--replicas"),
            (&self.replicas_max_per_node, "--replicas-max-per-node"),
            (&self.max_concurrent, "--max-concurrent"),
            (&self.total_completions, "--total-completions"),
            (&self.update_parallelism, "--update-parallelism"),
            (&self.rollback_parallelism, "--rollback-parallelism"),
            (&self.restart_max_attempts, "--restart-max-attempts"),
        ] {
            uint_flag(v, flag)?;
        }
        int_flag(&self.oom_score_adj, "--oom-score-adj")?;
        for (v, flag) in [
            (&self.tty, "--tty"),
            (&self.open_stdin, "--open-stdin"),
            (&self.init, "--init"),
        ] {
            bool_flag(v, flag)?;
        }
        for (v, flag) in [
            (&self.label, "--label"),
            (&self.command, "--command"),
            (&self.args, "--args"),
            (&self.env, "--env"),
            (&self.ports, "--ports"),
            (&self.ulimit, "--ulimit"),
            (&self.constraint, "--constraint"),
            (&self.bind, "--bind"),
            (&self.volume, "--volume"),
            (&self.tmpfs, "--tmpfs"),
            (&self.npipe, "--npipe"),
            (&self.log_opt, "--log-opt"),
        ] {
            list_flag(v, flag)?;
        }
        Ok(())
    }
}

/// The spec `service create` starts from: one replica of an empty container.
pub fn new_create_spec() -> api::ServiceSpec {
    api::ServiceSpec {
        annotations: Some(api::Annotations::default()),
        task: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::default())),
            ..Default::default()
        }),
        mode: Some(Mode::Replicated(api::ReplicatedService { replicas: 1 })),
        ..Default::default()
    }
}

fn task(spec: &mut api::ServiceSpec) -> &mut api::TaskSpec {
    spec.task.get_or_insert_with(Default::default)
}

/// The container of the task template, created if the runtime is not a container.
pub fn container(spec: &mut api::ServiceSpec) -> &mut api::ContainerSpec {
    let task = task(spec);
    if !matches!(task.runtime, Some(api::task_spec::Runtime::Container(_))) {
        task.runtime = Some(api::task_spec::Runtime::Container(Box::default()));
    }
    match &mut task.runtime {
        Some(api::task_spec::Runtime::Container(c)) => c,
        _ => unreachable!("runtime was just set to a container"),
    }
}

/// The flags SwarmKit applies before the network lookup: force, name, labels, mode, container,
/// resources and ports. `mode` is create's `--mode`, `force` update's `--force`.
pub fn merge_head(
    f: &ServiceFlags,
    mode: Option<&str>,
    force: bool,
    spec: &mut api::ServiceSpec,
) -> Result<()> {
    if force {
        task(spec).force_update += 1;
    }
    if let Some(name) = &f.name {
        spec.annotations.get_or_insert_with(Default::default).name = name.clone();
    }
    if let Some(labels) = list_flag(&f.label, "--label")? {
        spec.annotations.get_or_insert_with(Default::default).labels = parse_labels(&labels)?;
    }
    apply_mode(f, mode, spec)?;
    apply_container(f, spec)?;
    apply_resources(f, spec)?;
    apply_ports(f, spec)?;
    Ok(())
}

/// The flags SwarmKit applies after the network lookup: restart, update/rollback, placement,
/// mounts and the log driver.
pub fn merge_tail(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    apply_restart(f, spec)?;
    apply_update(f, spec)?;
    apply_placement(f, spec)?;
    apply_mounts(f, spec)?;
    if let Some(name) = &f.log_driver {
        let mut options = BTreeMap::new();
        for opt in list_flag(&f.log_opt, "--log-opt")?.unwrap_or_default() {
            match opt.split_once('=') {
                Some((k, v)) => options.insert(k.to_string(), v.to_string()),
                None => options.insert(opt, String::new()),
            };
        }
        task(spec).log_driver = Some(Box::new(api::Driver {
            name: name.clone(),
            options,
        }));
    }
    Ok(())
}

/// Attaches the task to exactly the network with this ID (`--network`).
pub fn apply_network(spec: &mut api::ServiceSpec, network_id: &str) {
    task(spec).networks = vec![api::NetworkAttachmentConfig {
        target: network_id.to_string(),
        ..Default::default()
    }];
}

/// `k=v` labels, trimmed; they replace all labels.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            return Err(format!("malformed label: {l}").into());
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn apply_mode(f: &ServiceFlags, mode: Option<&str>, spec: &mut api::ServiceSpec) -> Result<()> {
    let mut became_job = false;
    if let Some(mode) = mode {
        match mode {
            "replicated" => {
                if !matches!(spec.mode, Some(Mode::Replicated(_))) {
                    spec.mode = Some(Mode::Replicated(api::ReplicatedService::default()));
                }
            }
            "global" => {
                if !matches!(spec.mode, Some(Mode::Global(_))) {
                    spec.mode = Some(Mode::Global(api::GlobalService {}));
                }
            }
            "replicated-job" => {
                if !matches!(spec.mode, Some(Mode::ReplicatedJob(_))) {
                    spec.mode = Some(Mode::ReplicatedJob(api::ReplicatedJob {
                        max_concurrent: 1,
                        total_completions: 1,
                    }));
                    became_job = true;
                }
            }
            "global-job" => {
                if !matches!(spec.mode, Some(Mode::GlobalJob(_))) {
                    spec.mode = Some(Mode::GlobalJob(api::GlobalJob {}));
                }
            }
            other => return Err(format!("invalid mode: {other}").into()),
        }
    }
    if let Some(replicas) = uint_flag(&f.replicas, "--replicas")? {
        let Some(Mode::Replicated(r)) = &mut spec.mode else {
            return Err("--replicas can only be specified in --mode replicated".into());
        };
        r.replicas = replicas;
    }
    let total = uint_flag(&f.total_completions, "--total-completions")?;
    let max = uint_flag(&f.max_concurrent, "--max-concurrent")?;
    for (value, flag) in [(total, "--total-completions"), (max, "--max-concurrent")] {
        if value.is_some() && !matches!(spec.mode, Some(Mode::ReplicatedJob(_))) {
            return Err(format!("{flag} can only be specified in --mode replicated-job").into());
        }
    }
    if let Some(Mode::ReplicatedJob(job)) = &mut spec.mode {
        if let Some(total) = total {
            job.total_completions = total;
            // A new job runs all its completions at once unless told otherwise.
            if became_job && max.is_none() {
                job.max_concurrent = total;
            }
        }
        if let Some(max) = max {
            job.max_concurrent = max;
        }
    }
    Ok(())
}

fn apply_container(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    let command = list_flag(&f.command, "--command")?;
    let args = list_flag(&f.args, "--args")?;
    let env = list_flag(&f.env, "--env")?;
    let tty = bool_flag(&f.tty, "--tty")?;
    let open_stdin = bool_flag(&f.open_stdin, "--open-stdin")?;
    let init = bool_flag(&f.init, "--init")?;
    let oom = int_flag(&f.oom_score_adj, "--oom-score-adj")?;
    let c = container(spec);
    if let Some(image) = &f.image {
        c.image = image.clone();
    }
    if let Some(hostname) = &f.hostname {
        c.hostname = hostname.clone();
    }
    if let Some(command) = command {
        c.command = command;
    }
    if let Some(args) = args {
        c.args = args;
    }
    if let Some(env) = env {
        c.env = env;
    }
    if let Some(tty) = tty {
        c.tty = tty;
    }
    if let Some(open_stdin) = open_stdin {
        c.open_stdin = open_stdin;
    }
    if let Some(init) = init {
        c.init = Some(init);
    }
    if let Some(oom) = oom {
        api::limits::check_oom_score_adj(oom)?;
        c.oom_score_adj = oom;
    }
    Ok(())
}

fn reservations(spec: &mut api::ServiceSpec) -> &mut api::Resources {
    let res = task(spec).resources.get_or_insert_with(Default::default);
    res.reservations.get_or_insert_with(Default::default)
}

fn limits(spec: &mut api::ServiceSpec) -> &mut api::Resources {
    let res = task(spec).resources.get_or_insert_with(Default::default);
    res.limits.get_or_insert_with(Default::default)
}

fn apply_resources(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    if let Some(m) = &f.memory_reservation {
        let r = reservations(spec);
        r.memory_bytes = ram_in_bytes(m)?;
    }
    if let Some(m) = &f.memory_limit {
        let l = limits(spec);
        l.memory_bytes = ram_in_bytes(m)?;
    }
    if let Some(c) = &f.cpu_reservation {
        let r = reservations(spec);
        r.nano_cpus = parse_cpu(c)?;
    }
    if let Some(c) = &f.cpu_limit {
        let l = limits(spec);
        l.nano_cpus = parse_cpu(c)?;
    }
    if let Some(g) = &f.generic_resources {
        let r = reservations(spec);
        r.generic = parse_generic_resources(g)?;
    }
    if let Some(ulimits) = list_flag(&f.ulimit, "--ulimit")? {
        let mut out = Vec::with_capacity(ulimits.len());
        for u in &ulimits {
            let (name, soft, hard) = parse_ulimit(u)?;
            out.push(api::container_spec::Ulimit { name, soft, hard });
        }
        container(spec).ulimits = out;
    }
    Ok(())
}

/// `--ports` replaces the published ports; `--publish-mode` (ours) sets the mode of every port
/// the spec then has, so that an update with the mode alone switches the existing ones. Without
/// `--publish-mode`, new ports keep the mode the spec's ports shared (an update of an INGRESS
/// service's ports stays INGRESS), else HOST. `--publish-mode` with no port to apply to is
/// refused rather than ignored.
fn apply_ports(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    let mode = f
        .publish_mode
        .as_deref()
        .map(parse_publish_mode)
        .transpose()?;
    let previous = spec.endpoint.as_ref().and_then(|e| {
        let first = e.ports.first()?.publish_mode;
        e.ports
            .iter()
            .all(|p| p.publish_mode == first)
            .then_some(first)
    });
    if let Some(configs) = list_flag(&f.ports, "--ports")? {
        let mut ports = Vec::with_capacity(configs.len());
        for c in &configs {
            let mut port = parse_port_config(c)?;
            if let Some(previous) = previous {
                port.publish_mode = previous;
            }
            ports.push(port);
        }
        spec.endpoint = Some(api::EndpointSpec {
            ports,
            ..Default::default()
        });
    }
    if let Some(mode) = mode {
        let ports = spec
            .endpoint
            .as_mut()
            .map(|e| &mut e.ports)
            .filter(|p| !p.is_empty())
            .ok_or("--publish-mode needs published ports (--ports)")?;
        for port in ports {
            port.publish_mode = mode as i32;
        }
    }
    Ok(())
}

/// `--publish-mode`'s value: `host` (SwarmKit swarmctl's only mode, our default) or `ingress`.
fn parse_publish_mode(mode: &str) -> Result<api::port_config::PublishMode> {
    use api::port_config::PublishMode;
    match mode.to_ascii_lowercase().as_str() {
        "host" => Ok(PublishMode::Host),
        "ingress" => Ok(PublishMode::Ingress),
        _ => Err(format!("invalid publish mode {mode:?}: want \"host\" or \"ingress\"").into()),
    }
}

/// `name:port[/proto][:published[/proto]]`, published in host mode (`--publish-mode` may change
/// it).
pub fn parse_port_config(config: &str) -> Result<api::PortConfig> {
    let parts: Vec<&str> = config.split(':').collect();
    if parts.len() < 2 {
        return Err("insufficient parameters in port configuration".into());
    }
    let (protocol, port) =
        parse_port_spec(parts[1]).map_err(|e| format!("failed to parse port: {e}"))?;
    let mut published = 0;
    if parts.len() > 2 {
        let (node_protocol, p) =
            parse_port_spec(parts[2]).map_err(|e| format!("failed to parse node port: {e}"))?;
        if node_protocol != protocol {
            return Err("protocol mismatch".into());
        }
        published = p;
    }
    Ok(api::PortConfig {
        name: parts[0].to_string(),
        protocol: protocol as i32,
        target_port: port,
        published_port: published,
        publish_mode: api::port_config::PublishMode::Host as i32,
    })
}

fn parse_port_spec(spec: &str) -> std::result::Result<(api::port_config::Protocol, u32), String> {
    use api::port_config::Protocol;
    let parts: Vec<&str> = spec.split('/').collect();
    // A port is 16 bits: SwarmKit's swarmctl parses 32 and lets the node fail later.
    let port = parse_uint(parts[0], 10, 16)? as u32;
    let Some(proto) = parts.get(1) else {
        return Ok((Protocol::Tcp, port));
    };
    let protocol = Protocol::from_str_name(&proto.to_uppercase())
        .ok_or_else(|| format!("invalid protocol string: {proto}"))?;
    Ok((protocol, port))
}

fn apply_restart(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    use api::restart_policy::RestartCondition;
    let max_attempts = uint_flag(&f.restart_max_attempts, "--restart-max-attempts")?;
    let restart = task(spec).restart.get_or_insert_with(|| {
        Box::new(api::RestartPolicy {
            condition: RestartCondition::Any as i32,
            ..Default::default()
        })
    });
    if let Some(cond) = &f.restart_condition {
        restart.condition = match cond.as_str() {
            "none" => RestartCondition::None,
            "failure" => RestartCondition::OnFailure,
            "any" => RestartCondition::Any,
            other => return Err(format!("invalid restart condition: {other}").into()),
        } as i32;
    }
    if let Some(delay) = &f.restart_delay {
        restart.delay = Some(duration_proto(parse_duration(delay)?));
    }
    if let Some(n) = max_attempts {
        restart.max_attempts = n;
    }
    if let Some(window) = &f.restart_window {
        restart.window = Some(duration_proto(parse_duration(window)?));
    }
    Ok(())
}

/// The four knobs of one update config (`--update-*` or `--rollback-*`).
struct UpdateKnobs<'a> {
    prefix: &'a str,
    parallelism: &'a Option<String>,
    delay: &'a Option<String>,
    on_failure: &'a Option<String>,
    order: &'a Option<String>,
    /// Rollback configs cannot roll back on failure.
    allow_rollback: bool,
}

fn apply_update_config(k: UpdateKnobs<'_>, cfg: &mut Option<api::UpdateConfig>) -> Result<()> {
    use api::update_config::{FailureAction, UpdateOrder};
    if let Some(p) = uint_flag(k.parallelism, &format!("--{}-parallelism", k.prefix))? {
        cfg.get_or_insert_with(Default::default).parallelism = p;
    }
    if let Some(d) = k.delay {
        let d = parse_duration(d)?;
        cfg.get_or_insert_with(Default::default).delay = Some(duration_proto(d));
    }
    if let Some(a) = k.on_failure {
        let c = cfg.get_or_insert_with(Default::default);
        c.failure_action = match a.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if k.allow_rollback => FailureAction::Rollback,
            _ => {
                return Err(
                    format!("--{}-on-failure value must be pause or continue", k.prefix).into(),
                );
            }
        } as i32;
    }
    if let Some(o) = k.order {
        let c = cfg.get_or_insert_with(Default::default);
        c.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            _ => {
                return Err(format!(
                    "--{}-order value must be stop-first or start-first",
                    k.prefix
                )
                .into());
            }
        } as i32;
    }
    Ok(())
}

fn apply_update(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    apply_update_config(
        UpdateKnobs {
            prefix: "update",
            parallelism: &f.update_parallelism,
            delay: &f.update_delay,
            on_failure: &f.update_on_failure,
            order: &f.update_order,
            allow_rollback: true,
        },
        &mut spec.update,
    )?;
    apply_update_config(
        UpdateKnobs {
            prefix: "rollback",
            parallelism: &f.rollback_parallelism,
            delay: &f.rollback_delay,
            on_failure: &f.rollback_on_failure,
            order: &f.rollback_order,
            allow_rollback: false,
        },
        &mut spec.rollback,
    )
}

fn apply_placement(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    if let Some(constraints) = list_flag(&f.constraint, "--constraint")? {
        task(spec)
            .placement
            .get_or_insert_with(Default::default)
            .constraints = constraints;
    }
    if let Some(max) = uint_flag(&f.replicas_max_per_node, "--replicas-max-per-node")? {
        if !matches!(spec.mode, Some(Mode::Replicated(_))) {
            return Err(
                "--replicas-max-per-node can only be specified in --mode replicated".into(),
            );
        }
        task(spec)
            .placement
            .get_or_insert_with(Default::default)
            .max_replicas = max;
    }
    Ok(())
}

fn mount(kind: api::mount::Type, source: &str, target: &str) -> api::Mount {
    api::Mount {
        r#type: kind as i32,
        source: source.to_string(),
        target: target.to_string(),
        ..Default::default()
    }
}

/// `--bind`, `--volume`, `--tmpfs` and `--npipe` add mounts to the ones the spec has.
fn apply_mounts(f: &ServiceFlags, spec: &mut api::ServiceSpec) -> Result<()> {
    use api::mount::Type;
    let mut mounts = Vec::new();
    for b in list_flag(&f.bind, "--bind")?.unwrap_or_default() {
        let Some((src, dst)) = b.split_once(':') else {
            return Err(format!("bind format {} not supported", quote(&b)).into());
        };
        mounts.push(mount(Type::Bind, src, dst));
    }
    for v in list_flag(&f.volume, "--volume")?.unwrap_or_default() {
        if v.contains(':') {
            return Err(format!("volume format {} not supported", quote(&v)).into());
        }
        mounts.push(mount(Type::Volume, "", &v));
    }
    for t in list_flag(&f.tmpfs, "--tmpfs")?.unwrap_or_default() {
        mounts.push(parse_tmpfs(&t)?);
    }
    for n in list_flag(&f.npipe, "--npipe")?.unwrap_or_default() {
        let Some((src, dst)) = n.split_once(':') else {
            return Err(format!("npipe format {} not supported", quote(&n)).into());
        };
        mounts.push(mount(Type::Npipe, src, dst));
    }
    if !mounts.is_empty() {
        container(spec).mounts.extend(mounts);
    }
    Ok(())
}

/// `/abs/path[:opt,...]` with options `size=N[kmg]`, `mode=octal`, `ro`, `rw`, `exec`, `noexec`.
pub fn parse_tmpfs(decl: &str) -> Result<api::Mount> {
    let invalid = || FlagError(format!("invalid mount spec: {decl}"));
    let (target, opts) = match decl.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (decl, None),
    };
    if !target.starts_with('/') {
        return Err(invalid());
    }
    let mut m = mount(api::mount::Type::Tmpfs, "", target);
    let Some(opts) = opts else { return Ok(m) };
    if opts.contains(':') {
        return Err(invalid());
    }
    let mut t = api::mount::TmpfsOptions::default();
    for flag in opts.split(',') {
        if let Some(meat) = flag.strip_prefix("size=") {
            t.size_bytes = match parse_int(meat, 10, 64) {
                Ok(n) => n,
                Err(_) => {
                    let mul: i64 = match meat.as_bytes().last() {
                        Some(b'g') => 1 << 30,
                        Some(b'm') => 1 << 20,
                        Some(b'k') => 1 << 10,
                        _ => return Err(format!("invalid size format: {flag}").into()),
                    };
                    parse_int(&meat[..meat.len() - 1], 10, 64)?.wrapping_mul(mul)
                }
            };
        } else if let Some(meat) = flag.strip_prefix("mode=") {
            t.mode = parse_int(meat, 8, 32)? as u32;
        } else {
            match flag {
                "ro" => m.readonly = true,
                "rw" => m.readonly = false,
                "exec" | "noexec" => t.options = flag.to_string(),
                _ => return Err("unsupported flag".into()),
            }
        }
    }
    m.tmpfs_options = Some(t);
    Ok(m)
}

/// `name[:target]` of `--secret`/`--add-secret`/`--rm-secret` (`kind` = "secret") and the config
/// flags (`kind` = "config"); the target defaults to the name.
pub fn parse_reference(s: &str, kind: &str) -> Result<(String, String)> {
    let mut tokens = s.split(':');
    let name = tokens.next().unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(format!("invalid {kind} name provided").into());
    }
    let target = match tokens.next() {
        Some(t) => {
            let t = t.trim();
            if t.is_empty() {
                return Err("invalid presentation name provided".into());
            }
            t.to_string()
        }
        None => name.clone(),
    };
    Ok((name, target))
}

/// A file target as SwarmKit's swarmctl makes it: mode 0444, uid and gid left to the executor.
fn file_target(name: String) -> api::FileTarget {
    api::FileTarget {
        name,
        uid: String::new(),
        gid: String::new(),
        mode: 0o444,
    }
}

/// One item of `--secret`/`--config`/`--add-secret`/`--add-config`: the secret or config to look
/// up by name, and the file the task sees it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub file: api::FileTarget,
}

/// The keys of the long form of a reference.
const LONG_REFERENCE_KEYS: [&str; 6] = ["source", "src", "target", "uid", "gid", "mode"];

/// The references of a secret or config flag's occurrences (`kind` = "secret" or "config").
/// An occurrence with a field `<key>=` of [`LONG_REFERENCE_KEYS`] is one reference in
/// the long form `source=<name>,target=<t>,uid=<n>,gid=<n>,mode=<octal>` (ours; names cannot
/// contain `=`, so this is unambiguous), any other is a list of SwarmKit's `name[:target]`,
/// whose target may hold a `=` (`s:a=b`). Targets the agent could not place are refused here,
/// with the control API's words ([`api::limits::file_target_path`]).
pub fn parse_references(records: &[Vec<String>], kind: &str) -> Result<Vec<Reference>> {
    let mut refs = Vec::new();
    for fields in records {
        let long = |f: &String| {
            f.split_once('=')
                .is_some_and(|(key, _)| LONG_REFERENCE_KEYS.contains(&key.trim()))
        };
        if fields.iter().any(long) {
            refs.push(parse_long_reference(fields, kind)?);
            continue;
        }
        for field in fields {
            let (name, target) = parse_reference(field, kind)?;
            refs.push(Reference {
                name,
                file: file_target(target),
            });
        }
    }
    for r in &refs {
        let file_kind = match kind {
            "secret" => api::limits::FileKind::Secret,
            _ => api::limits::FileKind::Config,
        };
        api::limits::file_target_path(file_kind, &r.file.name).map_err(|why| {
            format!("malformed file {kind} reference, invalid target file name provided: {why}")
        })?;
    }
    Ok(refs)
}

/// `source=<name>[,target=<t>][,uid=<n>][,gid=<n>][,mode=<octal>]`; the defaults are the short
/// form's (target = name, mode 0444).
fn parse_long_reference(fields: &[String], kind: &str) -> Result<Reference> {
    let mut name = String::new();
    let mut file = file_target(String::new());
    let mut target = None;
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "invalid field '{field}' in a {kind} reference: expected key=value"
            )
            .into());
        };
        let value = value.trim();
        match key.trim() {
            "source" | "src" => name = value.to_string(),
            "target" => target = Some(value.to_string()),
            "uid" => file.uid = id_value(value, "uid", kind)?,
            "gid" => file.gid = id_value(value, "gid", kind)?,
            "mode" => {
                file.mode = u32::from_str_radix(value.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        format!("invalid mode '{value}' in a {kind} reference: expected octal permissions up to 0777")
                    })?;
            }
            other => {
                return Err(format!(
                    "invalid field '{other}' in a {kind} reference: expected source, target, uid, gid or mode"
                )
                .into());
            }
        }
    }
    if name.is_empty() {
        return Err(format!("invalid {kind} name provided").into());
    }
    file.name = match target {
        Some(t) if t.is_empty() => return Err("invalid presentation name provided".into()),
        Some(t) => t,
        None => name.clone(),
    };
    Ok(Reference { name, file })
}

/// A uid or gid of a reference: a number, kept as the string the API carries.
fn id_value(value: &str, key: &str, kind: &str) -> Result<String> {
    value.parse::<u32>().map(|n| n.to_string()).map_err(|_| {
        format!("invalid {key} '{value}' in a {kind} reference: expected a number").into()
    })
}

/// Appends secret references; `found` maps secret names (as listed by `ListSecrets` with those
/// names) to IDs.
pub fn add_secrets(
    spec: &mut api::ServiceSpec,
    items: &[Reference],
    found: &BTreeMap<String, String>,
) -> Result<()> {
    let mut refs = Vec::with_capacity(items.len());
    for r in items {
        let Some(id) = found.get(&r.name) else {
            return Err(format!("secret not found: {}", r.name).into());
        };
        refs.push(api::SecretReference {
            secret_id: id.clone(),
            secret_name: r.name.clone(),
            target: Some(api::secret_reference::Target::File(r.file.clone())),
        });
    }
    container(spec).secrets.extend(refs);
    Ok(())
}

/// Drops the secret references whose secret name is one of `names`.
pub fn remove_secrets(spec: &mut api::ServiceSpec, names: &[String]) {
    container(spec)
        .secrets
        .retain(|r| !names.contains(&r.secret_name));
}

/// Appends config references; `found` maps config names to IDs.
pub fn add_configs(
    spec: &mut api::ServiceSpec,
    items: &[Reference],
    found: &BTreeMap<String, String>,
) -> Result<()> {
    let mut refs = Vec::with_capacity(items.len());
    for r in items {
        let Some(id) = found.get(&r.name) else {
            return Err(format!("config not found: {}", r.name).into());
        };
        refs.push(api::ConfigReference {
            config_id: id.clone(),
            config_name: r.name.clone(),
            target: Some(api::config_reference::Target::File(r.file.clone())),
        });
    }
    container(spec).configs.extend(refs);
    Ok(())
}

/// Drops the config references whose config name is one of `names`.
pub fn remove_configs(spec: &mut api::ServiceSpec, names: &[String]) {
    container(spec)
        .configs
        .retain(|r| !names.contains(&r.config_name));
}

/// `--add-capability`: takes the names out of the drop list and adds the missing ones.
pub fn add_capabilities(spec: &mut api::ServiceSpec, add: &[String]) {
    let c = container(spec);
    c.capability_drop.retain(|cap| !add.contains(cap));
    for cap in add {
        if !c.capability_add.contains(cap) {
            c.capability_add.push(cap.clone());
        }
    }
}

/// `--rm-capability`: takes the names out of the add list and adds the missing ones to drop.
pub fn drop_capabilities(spec: &mut api::ServiceSpec, drop: &[String]) {
    let c = container(spec);
    c.capability_add.retain(|cap| !drop.contains(cap));
    for cap in drop {
        if !c.capability_drop.contains(cap) {
            c.capability_drop.push(cap.clone());
        }
    }
}

/// Whether an update would change nothing. Update configs' delay and monitor are plain values in
/// SwarmKit (unset == 0s), so they are compared that way.
pub fn same_spec(a: &api::ServiceSpec, b: &api::ServiceSpec) -> bool {
    fn norm(s: &api::ServiceSpec) -> api::ServiceSpec {
        let mut s = s.clone();
        for cfg in [&mut s.update, &mut s.rollback].into_iter().flatten() {
            cfg.delay.get_or_insert_with(Default::default);
            cfg.monitor.get_or_insert_with(Default::default);
        }
        s
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests;
