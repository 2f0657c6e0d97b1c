//! Spec validation shared by the control API handlers, with SwarmKit's exact messages and codes
//! (manager/controlapi/common.go and service.go, manager/constraint/constraint.go, and the docker
//! reference grammar of github.com/distribution/reference). Pure functions over specs: checks that
//! need the store (port conflicts, referenced secrets, ingress presence) live in the per-kind files.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use api::gofmt::{format_g, quote};
use api::limits::FileKind;
use regex::Regex;
use tonic::Status;

/// DNS label rule for service and network names (common.go `isValidDNSName`).
static DNS_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$").expect("static regex"));

/// Secret and config names (common.go `isValidConfigOrSecretName`).
static CONFIG_OR_SECRET_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$").expect("static regex")
});

/// The `status.Error(codes.InvalidArgument, errInvalidArgument.Error())` of SwarmKit, returned
/// for missing IDs, versions and specs.
pub fn invalid_argument() -> Status {
    Status::invalid_argument("invalid argument")
}

/// Validates the name of a service or network.
pub fn validate_annotations(a: Option<&api::Annotations>) -> Result<(), Status> {
    let name = a.map(|a| a.name.as_str()).unwrap_or("");
    if name.is_empty() {
        return Err(Status::invalid_argument("meta: name must be provided"));
    }
    if !DNS_NAME.is_match(name) {
        return Err(Status::invalid_argument(
            "name must be valid as a DNS name component",
        ));
    }
    if name.len() > 63 {
        return Err(Status::invalid_argument(
            "name must be 63 characters or fewer",
        ));
    }
    Ok(())
}

/// Validates the name of a secret or config.
pub fn validate_config_or_secret_annotations(a: Option<&api::Annotations>) -> Result<(), Status> {
    let name = a.map(|a| a.name.as_str()).unwrap_or("");
    if name.is_empty() {
        return Err(Status::invalid_argument("name must be provided"));
    }
    if name.len() > 64 || !CONFIG_OR_SECRET_NAME.is_match(name) {
        return Err(Status::invalid_argument(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
        ));
    }
    Ok(())
}

/// A protobuf duration as signed nanoseconds (wide enough for every valid value).
pub fn duration_nanos(d: &prost_types::Duration) -> i128 {
    i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos)
}

/// Why `d` is no duration SwarmKit accepts, if it is not (gogo's `DurationFromProto`: nanos
/// within a second and of the seconds' sign, the whole an int64 of nanoseconds).
pub fn duration_error(d: &prost_types::Duration) -> Option<&'static str> {
    if d.nanos.unsigned_abs() >= 1_000_000_000 {
        return Some("nanos out of range");
    }
    if (d.seconds < 0 && d.nanos > 0) || (d.seconds > 0 && d.nanos < 0) {
        return Some("seconds and nanos have different signs");
    }
    if i64::try_from(duration_nanos(d)).is_err() {
        return Some("out of range for time.Duration");
    }
    None
}

/// Refuses an invalid duration `field` (SwarmKit fails to convert it and refuses the spec).
fn check_duration(field: &str, d: Option<&prost_types::Duration>) -> Result<(), Status> {
    match d.and_then(|d| duration_error(d).map(|reason| (d, reason))) {
        Some((d, reason)) => Err(Status::invalid_argument(format!(
            "{field}: duration seconds:{} nanos:{}: {reason}",
            d.seconds, d.nanos
        ))),
        None => Ok(()),
    }
}

fn validate_resources(r: Option<&api::Resources>) -> Result<(), Status> {
    let Some(r) = r else { return Ok(()) };
    if r.nano_cpus != 0 && r.nano_cpus < 1_000_000 {
        return Err(Status::invalid_argument(format!(
            "invalid cpu value {}: Must be at least {}",
            format_g(r.nano_cpus as f64 / 1e9),
            format_g(1e6 / 1e9)
        )));
    }
    if r.memory_bytes != 0 && r.memory_bytes < 4 * 1024 * 1024 {
        return Err(Status::invalid_argument(format!(
            "invalid memory value {}: Must be at least 4MiB",
            r.memory_bytes
        )));
    }
    Ok(())
}

fn validate_resource_requirements(r: Option<&api::ResourceRequirements>) -> Result<(), Status> {
    let Some(r) = r else { return Ok(()) };
    validate_resources(r.limits.as_ref())?;
    validate_resources(r.reservations.as_ref())
}

fn validate_restart_policy(rp: Option<&api::RestartPolicy>) -> Result<(), Status> {
    let Some(rp) = rp else { return Ok(()) };
    check_duration("TaskSpec: restart-delay", rp.delay.as_ref())?;
    check_duration("TaskSpec: restart-window", rp.window.as_ref())?;
    if rp.delay.as_ref().is_some_and(|d| duration_nanos(d) < 0) {
        return Err(Status::invalid_argument(
            "TaskSpec: restart-delay cannot be negative",
        ));
    }
    if rp.window.as_ref().is_some_and(|d| duration_nanos(d) < 0) {
        return Err(Status::invalid_argument(
            "TaskSpec: restart-window cannot be negative",
        ));
    }
    Ok(())
}

/// Validates an update (or rollback) config of a non-job service.
fn validate_update(uc: Option<&api::UpdateConfig>) -> Result<(), Status> {
    let Some(uc) = uc else { return Ok(()) };
    check_duration("TaskSpec: update-delay", uc.delay.as_ref())?;
    check_duration("TaskSpec: update-monitor", uc.monitor.as_ref())?;
    if uc.delay.as_ref().is_some_and(|d| duration_nanos(d) < 0) {
        return Err(Status::invalid_argument(
            "TaskSpec: update-delay cannot be negative",
        ));
    }
    if uc.monitor.as_ref().is_some_and(|d| duration_nanos(d) < 0) {
        return Err(Status::invalid_argument(
            "TaskSpec: update-monitor cannot be negative",
        ));
    }
    if uc.max_failure_ratio < 0.0 || uc.max_failure_ratio > 1.0 {
        return Err(Status::invalid_argument(
            "TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1",
        ));
    }
    Ok(())
}

fn validate_placement(p: Option<&api::Placement>) -> Result<(), Status> {
    let Some(p) = p else { return Ok(()) };
    // SwarmKit returns the parse error unwrapped, which gRPC reports as Unknown.
    api::constraint::parse(&p.constraints).map_err(Status::unknown)?;
    Ok(())
}

/// Why an image reference does not parse (distribution/reference errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty string.
    #[error("repository name must have at least one component")]
    NameEmpty,
    /// Anything the grammar rejects.
    #[error("invalid reference format")]
    InvalidFormat,
    /// Upper case in the repository part.
    #[error("invalid reference format: repository name must be lowercase")]
    NameContainsUppercase,
    /// More than 255 characters of name.
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    /// A bare 64-hex-digit identifier.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    /// A digest with an unknown algorithm or a wrong length.
    #[error("invalid digest")]
    InvalidDigest,
}

static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let alnum = "[a-z0-9]+";
    let sep = "(?:[._]|__|[-]+)";
    let path_component = format!("{alnum}(?:{sep}{alnum})*");
    let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain_name = format!("{domain_component}(?:\\.{domain_component})*");
    let host = format!("(?:{domain_name}|\\[(?:[a-fA-F0-9:]+)\\])");
    let domain_and_port = format!("{host}(?::[0-9]+)?");
    let name = format!("(?:{domain_and_port}/)?{path_component}(?:/{path_component})*");
    let tag = "[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$")).expect("static regex")
});
static HEX_IDENTIFIER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-f0-9]{64}$").expect("static regex"));

/// Parses `s` as reference.ParseNormalizedNamed does: a bare hex ID is refused, the docker.io
/// domain and `library/` are implied, and the result must match the reference grammar.
pub fn parse_normalized_named(s: &str) -> Result<(), ReferenceError> {
    if HEX_IDENTIFIER.is_match(s) {
        return Err(ReferenceError::HexIdentifier(s.to_string()));
    }
    let (domain, remainder) = split_docker_domain(s);
    if remainder.to_lowercase() != remainder {
        return Err(ReferenceError::NameContainsUppercase);
    }
    parse_reference(&format!("{domain}/{remainder}"))
}

fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i)
            if name[..i].contains(['.', ':'])
                || &name[..i] == "localhost"
                || name[..i].to_lowercase() != name[..i] =>
        {
            (name[..i].to_string(), name[i + 1..].to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

fn parse_reference(s: &str) -> Result<(), ReferenceError> {
    let Some(caps) = REFERENCE.captures(s) else {
        if s.is_empty() {
            return Err(ReferenceError::NameEmpty);
        }
        if REFERENCE.is_match(&s.to_lowercase()) {
            return Err(ReferenceError::NameContainsUppercase);
        }
        return Err(ReferenceError::InvalidFormat);
    };
    if caps.get(1).map_or(0, |m| m.len()) > 255 {
        return Err(ReferenceError::NameTooLong);
    }
    if let Some(d) = caps.get(3) {
        let (alg, hex) = d.as_str().split_once(':').expect("grammar has a colon");
        let len = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(ReferenceError::InvalidDigest),
        };
        if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::InvalidDigest);
        }
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), Status> {
    if image.is_empty() {
        return Err(Status::invalid_argument(
            "ContainerSpec: image reference must be provided",
        ));
    }
    if parse_normalized_named(image).is_err() {
        return Err(Status::invalid_argument(format!(
            "ContainerSpec: {} is not a valid repository/tag",
            quote(image)
        )));
    }
    Ok(())
}

fn validate_mounts(mounts: &[api::Mount]) -> Result<(), Status> {
    let mut seen = HashSet::new();
    for m in mounts {
        if !seen.insert(m.target.as_str()) {
            return Err(Status::invalid_argument(format!(
                "ContainerSpec: duplicate mount point: {}",
                m.target
            )));
        }
    }
    Ok(())
}

fn validate_health_check(hc: Option<&api::HealthConfig>) -> Result<(), Status> {
    let Some(hc) = hc else { return Ok(()) };
    let too_short = |d: &Option<prost_types::Duration>| {
        d.as_ref().is_some_and(|d| {
            let n = duration_nanos(d);
            n != 0 && n < 1_000_000
        })
    };
    for (field, d) in [
        ("Interval", &hc.interval),
        ("Timeout", &hc.timeout),
        ("StartPeriod", &hc.start_period),
        ("StartInterval", &hc.start_interval),
    ] {
        check_duration(
            &format!("ContainerSpec: {field} in HealthConfig"),
            d.as_ref(),
        )?;
        if too_short(d) {
            return Err(Status::invalid_argument(format!(
                "ContainerSpec: {field} in HealthConfig cannot be less than 1ms"
            )));
        }
    }
    if hc.retries < 0 {
        return Err(Status::invalid_argument(
            "ContainerSpec: Retries in HealthConfig cannot be negative",
        ));
    }
    Ok(())
}

// Template expansion (SwarmKit expands the container spec against a dummy task first) is not
// done: images, mounts and healthchecks are checked as written.
fn validate_container_spec(c: &api::ContainerSpec) -> Result<(), Status> {
    validate_image(&c.image)?;
    validate_mounts(&c.mounts)?;
    api::limits::check_oom_score_adj(c.oom_score_adj)
        .map_err(|e| Status::invalid_argument(format!("ContainerSpec: {e}")))?;
    validate_health_check(c.healthcheck.as_ref())
}

fn validate_generic_runtime_spec(g: &api::GenericRuntimeSpec) -> Result<(), Status> {
    if g.kind.len() < 3 {
        return Err(Status::invalid_argument(format!(
            "Generic runtime: Invalid name {}",
            quote(&g.kind)
        )));
    }
    if ["container", "attachment"].contains(&g.kind.to_lowercase().as_str()) {
        return Err(Status::invalid_argument(format!(
            "Generic runtime: {} is a reserved name",
            quote(&g.kind)
        )));
    }
    let Some(payload) = &g.payload else {
        return Err(Status::invalid_argument(
            "Generic runtime is missing payload",
        ));
    };
    if payload.type_url.is_empty() {
        return Err(Status::invalid_argument(
            "Generic runtime is missing payload type",
        ));
    }
    if payload.value.is_empty() {
        return Err(Status::invalid_argument(
            "Generic runtime has an empty payload",
        ));
    }
    Ok(())
}

/// The files a container spec's secret and config file targets name, by where the task sees
/// them ([`api::limits::file_target_path`]). Beyond SwarmKit's check of the same target string
/// twice in one kind: two targets naming one file (`x` and `./x`, or a secret and a config)
/// would make the agent reject every task.
#[derive(Default)]
struct TaskFiles<'a>(HashMap<String, (&'static str, &'a str, &'a str)>);

impl<'a> TaskFiles<'a> {
    /// Adds the `kind` reference to `name` at `target`: a target the agent cannot place, or a
    /// file another reference already names, is an invalid argument.
    fn add(&mut self, kind: FileKind, name: &'a str, target: &'a str) -> Result<(), Status> {
        let what = kind.name();
        let path = api::limits::file_target_path(kind, target).map_err(|why| {
            Status::invalid_argument(format!(
                "malformed file {what} reference, invalid target file name provided: {why}"
            ))
        })?;
        if let Some((prev_what, prev_name, prev_target)) =
            self.0.insert(path.clone(), (what, name, target))
        {
            return Err(Status::invalid_argument(format!(
                "{prev_what} reference '{prev_name}' (target '{prev_target}') and {what} reference '{name}' (target '{target}') name the same file in the task: '{path}'"
            )));
        }
        Ok(())
    }
}

fn validate_secret_refs<'a>(
    c: &'a api::ContainerSpec,
    files: &mut TaskFiles<'a>,
) -> Result<(), Status> {
    let mut targets: HashMap<&str, &str> = HashMap::new();
    for r in &c.secrets {
        if r.secret_id.is_empty() || r.secret_name.is_empty() {
            return Err(Status::invalid_argument("malformed secret reference"));
        }
        let Some(api::secret_reference::Target::File(file)) = &r.target else {
            return Err(Status::invalid_argument(
                "malformed secret reference, no target provided",
            ));
        };
        if file.name.is_empty() {
            return Err(Status::invalid_argument(
                "malformed file secret reference, invalid target file name provided",
            ));
        }
        if let Some(prev) = targets.insert(&file.name, &r.secret_name) {
            return Err(Status::invalid_argument(format!(
                "secret references '{prev}' and '{}' have a conflicting target: '{}'",
                r.secret_name, file.name
            )));
        }
        files.add(FileKind::Secret, &r.secret_name, &file.name)?;
    }
    Ok(())
}

fn validate_config_refs<'a>(
    c: &'a api::ContainerSpec,
    files: &mut TaskFiles<'a>,
) -> Result<(), Status> {
    let cred_spec_config = c
        .privileges
        .as_ref()
        .and_then(|p| p.credential_spec.as_ref())
        .and_then(|cs| match &cs.source {
            Some(api::privileges::credential_spec::Source::Config(id)) => Some(id.as_str()),
            _ => None,
        })
        .unwrap_or("");
    let mut cred_spec_found = false;
    let mut targets: HashMap<&str, &str> = HashMap::new();
    for r in &c.configs {
        if r.config_id.is_empty() || r.config_name.is_empty() {
            return Err(Status::invalid_argument("malformed config reference"));
        }
        match &r.target {
            None => {
                return Err(Status::invalid_argument(
                    "malformed config reference, no target provided",
                ));
            }
            Some(api::config_reference::Target::File(file)) => {
                if file.name.is_empty() {
                    return Err(Status::invalid_argument(
                        "malformed file config reference, invalid target file name provided",
                    ));
                }
                if let Some(prev) = targets.insert(&file.name, &r.config_name) {
                    return Err(Status::invalid_argument(format!(
                        "config references '{prev}' and '{}' have a conflicting target: '{}'",
                        r.config_name, file.name
                    )));
                }
                files.add(FileKind::Config, &r.config_name, &file.name)?;
            }
            Some(api::config_reference::Target::Runtime(_)) => {
                if r.config_id == cred_spec_config {
                    cred_spec_found = true;
                }
            }
        }
    }
    if !cred_spec_config.is_empty() && !cred_spec_found {
        return Err(Status::invalid_argument(format!(
            "CredentialSpec references config '{cred_spec_config}', but that config isn't in config references with RuntimeTarget"
        )));
    }
    Ok(())
}

/// Validates a task spec (service.go `validateTaskSpec`).
pub fn validate_task_spec(t: &api::TaskSpec) -> Result<(), Status> {
    validate_resource_requirements(t.resources.as_deref())?;
    validate_restart_policy(t.restart.as_deref())?;
    validate_placement(t.placement.as_deref())?;
    if let Some(api::task_spec::Runtime::Container(c)) = &t.runtime {
        let mut files = TaskFiles::default();
        validate_secret_refs(c, &mut files)?;
        validate_config_refs(c, &mut files)?;
    }
    match &t.runtime {
        None => Err(Status::invalid_argument("TaskSpec: missing runtime")),
        Some(api::task_spec::Runtime::Container(c)) => validate_container_spec(c),
        Some(api::task_spec::Runtime::Generic(g)) => validate_generic_runtime_spec(g),
        Some(api::task_spec::Runtime::Attachment(_)) => Err(Status::unimplemented(
            "RuntimeSpec: unimplemented runtime in service spec",
        )),
    }
}

/// Validates the endpoint spec: ports within 0-65535 (SwarmKit accepts any 32-bit number and
/// leaves the node to fail), no ingress ports with DNSRR, no duplicate published ports.
pub fn validate_endpoint_spec(ep: Option<&api::EndpointSpec>) -> Result<(), Status> {
    let Some(ep) = ep else { return Ok(()) };
    let mut seen = HashSet::new();
    for p in &ep.ports {
        for (what, port) in [("target", p.target_port), ("published", p.published_port)] {
            if port > u32::from(u16::MAX) {
                return Err(Status::invalid_argument(format!(
                    "EndpointSpec: {what} port {port} is out of range (0-65535)"
                )));
            }
        }
        if ep.mode == api::endpoint_spec::ResolutionMode::Dnsrr as i32
            && p.publish_mode == api::port_config::PublishMode::Ingress as i32
        {
            return Err(Status::invalid_argument(
                "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
            ));
        }
        if p.published_port == 0 {
            continue;
        }
        if !seen.insert((p.published_port, p.protocol)) {
            return Err(Status::invalid_argument(
                "EndpointSpec: duplicate published ports provided",
            ));
        }
    }
    Ok(())
}

fn validate_mode(spec: &api::ServiceSpec) -> Result<(), Status> {
    use api::service_spec::Mode;
    match &spec.mode {
        Some(Mode::Replicated(r)) => {
            if (r.replicas as i64) < 0 {
                return Err(Status::invalid_argument(
                    "Number of replicas must be non-negative",
                ));
            }
        }
        Some(Mode::ReplicatedJob(j)) => {
            if (j.max_concurrent as i64) < 0 {
                return Err(Status::invalid_argument(
                    "Maximum concurrent jobs must not be negative",
                ));
            }
            if (j.total_completions as i64) < 0 {
                return Err(Status::invalid_argument(
                    "Total completed jobs must not be negative",
                ));
            }
        }
        Some(Mode::Global(_)) | Some(Mode::GlobalJob(_)) => {}
        None => return Err(Status::invalid_argument("Unrecognized service mode")),
    }
    Ok(())
}

/// Whether the service runs jobs (replicated or global job mode).
pub fn is_job_spec(spec: &api::ServiceSpec) -> bool {
    matches!(
        spec.mode,
        Some(api::service_spec::Mode::ReplicatedJob(_))
            | Some(api::service_spec::Mode::GlobalJob(_))
    )
}

/// Validates a whole service spec (service.go `validateServiceSpec`) and returns it.
pub fn validate_service_spec(spec: Option<&api::ServiceSpec>) -> Result<&api::ServiceSpec, Status> {
    let Some(spec) = spec else {
        return Err(invalid_argument());
    };
    validate_annotations(spec.annotations.as_ref())?;
    match &spec.task {
        Some(task) => validate_task_spec(task)?,
        None => return Err(Status::invalid_argument("TaskSpec: missing runtime")),
    }
    validate_mode(spec)?;
    if is_job_spec(spec) {
        if spec.update.is_some() {
            return Err(Status::invalid_argument(
                "Jobs may not have an update config",
            ));
        }
    } else {
        validate_update(spec.update.as_ref())?;
    }
    validate_endpoint_spec(spec.endpoint.as_ref())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_reference(s: &str, ok: bool) {
        assert_eq!(parse_normalized_named(s).is_ok(), ok, "{s}");
    }

    #[test]
    fn image_references() {
        for good in [
            "nginx",
            "nginx:latest",
            "library/nginx",
            "docker.io/library/nginx:1.2",
            "localhost:5000/foo/bar",
            "quay.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "x",
            "a_b.c-d",
        ] {
            check_reference(good, true);
        }
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "-x",
            "x!",
            "a//b",
            "nginx@sha256:abc",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "foo:bar:baz",
        ] {
            check_reference(bad, false);
        }
    }

    /// A container spec referencing secrets and configs at these file targets.
    fn spec_with_targets(secrets: &[&str], configs: &[&str]) -> api::TaskSpec {
        let file = |name: &str| api::FileTarget {
            name: name.into(),
            mode: 0o444,
            ..Default::default()
        };
        let container = api::ContainerSpec {
            image: "nginx".into(),
            secrets: (secrets.iter().enumerate())
                .map(|(i, t)| api::SecretReference {
                    secret_id: format!("s{i}"),
                    secret_name: format!("secret{i}"),
                    target: Some(api::secret_reference::Target::File(file(t))),
                })
                .collect(),
            configs: (configs.iter().enumerate())
                .map(|(i, t)| api::ConfigReference {
                    config_id: format!("c{i}"),
                    config_name: format!("config{i}"),
                    target: Some(api::config_reference::Target::File(file(t))),
                })
                .collect(),
            ..Default::default()
        };
        api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container))),
            ..Default::default()
        }
    }

    /// The control API accepts exactly the secret and config targets the agent can place, so no
    /// accepted service has every task rejected.
    #[test]
    fn file_targets_agree_with_the_agent() {
        let state = tempfile::tempdir().expect("tempdir");
        let files = std::sync::Arc::new(
            agent::taskfiles::TaskFiles::open_with(
                state.path(),
                std::path::Path::new("/nonexistent/run"),
                std::path::Path::new("/proc"),
            )
            .expect("open"),
        );
        let fine = ["x", "./x", "a/b", "a//b/", "/etc/x", "a=b", "..x", "x.."];
        let refused = [
            "",
            ".",
            "./",
            "/",
            "//",
            "..",
            "../x",
            "a/..",
            "a/../b",
            "/a/../b",
            "/a/../../x",
        ];
        let mut table: Vec<(Vec<&str>, Vec<&str>, bool)> = Vec::new();
        for (targets, ok) in [(&fine[..], true), (&refused[..], false)] {
            for &t in targets {
                table.push((vec![t], vec![], ok));
                table.push((vec![], vec![t], ok));
            }
        }
        table.extend([
            (vec!["x", "x"], vec![], false),
            (vec!["x", "./x"], vec![], false),
            (vec!["x", "/run/secrets/x"], vec![], false),
            (vec![], vec!["/a", "a"], false),
            (vec![], vec!["a", "./a/"], false),
            (vec!["x"], vec!["run/secrets/x"], false),
            (vec!["/etc/x"], vec!["etc/x"], false),
            (vec!["x"], vec!["x"], true),
            (vec!["x", "y"], vec!["x", "run/secrets/y/z"], true),
        ]);
        for (secrets, configs, ok) in table {
            let spec = spec_with_targets(&secrets, &configs);
            let task = api::Task {
                id: "t1".into(),
                spec: Some(spec.clone()),
                ..Default::default()
            };
            let api_says = validate_task_spec(&spec).map_err(|s| s.message().to_string());
            let agent_says = files
                .for_task(&task, agent::dependencies::DependencyGetter::none())
                .map(drop)
                .map_err(|e| e.to_string());
            assert_eq!(
                api_says.is_ok(),
                ok,
                "{secrets:?} {configs:?}: API {api_says:?}"
            );
            assert_eq!(
                agent_says.is_ok(),
                ok,
                "{secrets:?} {configs:?}: agent {agent_says:?}"
            );
        }
    }

    /// Found by tests/control_fuzz.rs: durations SwarmKit cannot convert (so refuses) were
    /// stored (i64::MAX seconds of restart delay: billions of years for the orchestrator).
    #[test]
    fn invalid_durations_are_refused() {
        let spec = |f: fn(&mut api::ServiceSpec, Option<prost_types::Duration>)| {
            move |seconds, nanos| {
                let mut s = api::ServiceSpec {
                    annotations: Some(api::Annotations {
                        name: "web".into(),
                        ..Default::default()
                    }),
                    task: Some(api::TaskSpec {
                        runtime: Some(api::task_spec::Runtime::Container(Box::new(
                            api::ContainerSpec {
                                image: "nginx".into(),
                                ..Default::default()
                            },
                        ))),
                        ..Default::default()
                    }),
                    mode: Some(api::service_spec::Mode::Replicated(
                        api::ReplicatedService { replicas: 1 },
                    )),
                    ..Default::default()
                };
                f(&mut s, Some(prost_types::Duration { seconds, nanos }));
                validate_service_spec(Some(&s)).map(|_| ())
            }
        };
        let restart_delay = spec(|s, d| {
            s.task.as_mut().expect("task").restart = Some(Box::new(api::RestartPolicy {
                delay: d,
                ..Default::default()
            }))
        });
        let update_monitor = spec(|s, d| {
            s.update = Some(api::UpdateConfig {
                monitor: d,
                ..Default::default()
            })
        });
        let health_timeout = spec(|s, d| {
            if let Some(api::task_spec::Runtime::Container(c)) =
                s.task.as_mut().and_then(|t| t.runtime.as_mut())
            {
                c.healthcheck = Some(api::HealthConfig {
                    timeout: d,
                    ..Default::default()
                });
            }
        });
        let refused = |r: Result<(), Status>, message: &str| {
            let e = r.expect_err(message);
            assert_eq!(
                (e.code(), e.message()),
                (tonic::Code::InvalidArgument, message)
            );
        };
        refused(
            restart_delay(1, -5),
            "TaskSpec: restart-delay: duration seconds:1 nanos:-5: seconds and nanos have different signs",
        );
        refused(
            update_monitor(0, 1_000_000_000),
            "TaskSpec: update-monitor: duration seconds:0 nanos:1000000000: nanos out of range",
        );
        refused(
            health_timeout(i64::MAX, 0),
            "ContainerSpec: Timeout in HealthConfig: duration seconds:9223372036854775807 nanos:0: out of range for time.Duration",
        );
        assert!(restart_delay(9_223_372_036, 854_775_807).is_ok());
        assert!(restart_delay(-1, -5).is_err(), "negative, still refused");
    }

    fn check_constraint(expr: &str, expected: Result<(), &str>) {
        let got = api::constraint::parse(&[expr.to_string()]).map(|_| ());
        assert_eq!(got, expected.map_err(str::to_string), "{expr}");
    }

    #[test]
    fn constraints() {
        check_constraint("node.hostname==n1", Ok(()));
        check_constraint("node.labels.zone != east ", Ok(()));
        check_constraint(
            "garbage",
            Err("constraint expected one operator from ==, !="),
        );
        check_constraint(
            "node.id>=x",
            Err("constraint expected one operator from ==, !="),
        );
        check_constraint("==abc", Err("key '' is invalid"));
        check_constraint("node.id==x<", Err("value 'x<' is invalid"));
    }
}
