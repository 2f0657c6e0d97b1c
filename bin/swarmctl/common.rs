//! What every swarmctl command shares: the per-invocation context (`Ctx`: control client,
//! `-n` flag, name caches), the command error type and the lookups of objects by a user's
//! argument (spec 1.1 "Object lookup by argument"). ID to name resolution lives in
//! `resolve.rs`, printing helpers in `tabwriter.rs`, `humanize.rs` and `tasks.rs`.

use std::collections::HashMap;

use api::control_client::ControlClient;
use api::gofmt::{duration_proto, parse_duration, quote};
use tonic::transport::Channel;

use crate::goparse::{parse_bool, parse_int};
use api::gofmt::read_csv_record;

/// One invocation's connection and caches.
pub struct Ctx {
    /// Control API client over the (lazy) TLS channel on the manager's unix socket.
    pub client: ControlClient<Channel>,
    /// The channel itself, for the other services on the socket (CA: `cluster unlock-key`).
    pub channel: Channel,
    /// `-n, --no-resolve`: print IDs instead of names.
    pub no_resolve: bool,
    /// Node ID -> display name, so a table resolves each node once.
    pub(crate) node_names: HashMap<String, String>,
    /// Service ID -> service name, same reason.
    pub(crate) service_names: HashMap<String, String>,
    /// Network ID -> network name, same reason.
    pub(crate) network_names: HashMap<String, String>,
}

impl Ctx {
    /// A context over `channel`.
    pub fn new(channel: Channel, no_resolve: bool) -> Self {
        Ctx {
            client: ControlClient::new(channel.clone())
                .max_decoding_message_size(api::CLIENT_MAX_RECV),
            channel,
            no_resolve,
            node_names: HashMap::new(),
            service_names: HashMap::new(),
            network_names: HashMap::new(),
        }
    }
}

/// Errors of a command; main prints them as `Error: <msg>` on stderr and exits 255.
#[derive(Debug)]
pub enum CliError {
    /// A gRPC status: only its description is printed.
    Grpc(tonic::Status),
    /// A client-side error: the message is followed by the usage block of the command.
    Usage(String),
    /// A command that ran and failed (a service update that paused): the message alone.
    Failed(String),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Grpc(s)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Grpc(s) => f.write_str(s.message()),
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// What a command returns.
pub type CmdResult = Result<(), CliError>;

/// The positional arguments of a command; their count is checked by the command itself so
/// that the messages are SwarmKit's.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Positionals {
    /// Arguments as typed.
    #[arg(value_name = "ARGS", num_args = 0.., allow_hyphen_values = false)]
    pub args: Vec<String>,
}

/// `-q, --quiet` plus positionals, shared by the `ls` commands.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// Only display IDs
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    #[command(flatten)]
    pub pos: Positionals,
}

/// A client-side error (usage printed).
pub fn usage_err(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Checks the number of positional arguments: `missing` when there is none, `too_many` when
/// there is more than one; returns the single argument.
pub fn one_arg<'a>(args: &'a [String], missing: &str, too_many: &str) -> Result<&'a str, CliError> {
    match args {
        [] => Err(usage_err(missing)),
        [one] => Ok(one),
        _ => Err(usage_err(too_many)),
    }
}

/// Writes command output to stdout; a closed stdout is not worth an error of its own.
pub fn emit(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// The name in an object's annotations, or "" when absent.
pub fn annotations_name(a: Option<&api::Annotations>) -> &str {
    a.map(|a| a.name.as_str()).unwrap_or("")
}

/// The proto name of an enum value as Go's `String()` prints it (the number when unknown):
/// `enum_name(t.desired_state, api::TaskState::as_str_name)`.
pub fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> String {
    match E::try_from(v) {
        Ok(e) => name(&e).to_string(),
        Err(_) => v.to_string(),
    }
}

/// pflag's `StringSlice`: every occurrence is one CSV record; the fields of all occurrences
/// are concatenated. An empty occurrence adds nothing.
pub fn string_slice(flag: &str, values: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for v in values {
        if v.is_empty() {
            continue;
        }
        out.extend(
            read_csv_record(v)
                .map_err(|e| usage_err(flag_value_error(v, &format!("--{flag}"), &e)))?,
        );
    }
    Ok(out)
}

/// pflag's words for a flag value its type rejects; `flag` includes the dashes.
pub fn flag_value_error(value: &str, flag: &str, err: &str) -> String {
    format!(
        "invalid argument {} for {} flag: {err}",
        quote(value),
        quote(flag)
    )
}

/// A pflag bool flag given as `--flag` or `--flag=value` (Go's `strconv.ParseBool`).
pub fn go_bool(flag: &str, v: &str) -> Result<bool, CliError> {
    parse_bool(v).map_err(|e| usage_err(flag_value_error(v, &format!("--{flag}"), &e)))
}

/// A pflag int64 flag (Go's `strconv.ParseInt(v, 0, 64)`).
pub fn go_int64(flag: &str, v: &str) -> Result<i64, CliError> {
    parse_int(v, 0, 64).map_err(|e| usage_err(flag_value_error(v, &format!("--{flag}"), &e)))
}

/// A pflag duration flag (Go's `time.ParseDuration`), as the wire's duration.
pub fn go_duration_flag(flag: &str, v: &str) -> Result<prost_types::Duration, CliError> {
    parse_duration(v)
        .map(duration_proto)
        .map_err(|e| usage_err(flag_value_error(v, &format!("--{flag}"), &e)))
}

/// Go's text for an OS error (`syscall.Errno.Error()`), e.g. "no such file or directory".
pub fn errno_text(e: &std::io::Error) -> String {
    let known = match e.raw_os_error() {
        Some(1) => Some("operation not permitted"),
        Some(2) => Some("no such file or directory"),
        Some(13) => Some("permission denied"),
        Some(20) => Some("not a directory"),
        Some(21) => Some("is a directory"),
        Some(111) => Some("connection refused"),
        Some(104) => Some("connection reset by peer"),
        Some(88) => Some("socket operation on non-socket"),
        _ => None,
    };
    if let Some(text) = known {
        return text.to_string();
    }
    // std's text is "Description (os error N)"; Go's is the lowercase description.
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// Reads a whole file, with Go's `os.ReadFile` error text (`open <path>: <errno>`).
pub fn read_file_go(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("open {path}: {}", errno_text(&e)))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| format!("read {path}: {}", errno_text(&e)))?;
    Ok(data)
}

/// Picks the single hit of a name lookup (`kind arg not found` / `is ambiguous`).
fn single<T>(mut hits: Vec<T>, kind: &str, arg: &str) -> Result<T, CliError> {
    match hits.len() {
        0 => Err(usage_err(format!("{kind} {arg} not found"))),
        1 => Ok(hits.remove(0)),
        n => Err(usage_err(format!(
            "{kind} {arg} is ambiguous ({n} matches found)"
        ))),
    }
}

/// Picks the hit of a name-or-ID-prefix lookup: a single hit, else the exact ID, else the
/// exact name (secrets and configs).
fn best_match<T>(
    hits: Vec<T>,
    kind: &str,
    arg: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Result<T, CliError> {
    if hits.len() <= 1 {
        return single(hits, kind, arg);
    }
    let n = hits.len();
    if let Some(i) = hits.iter().position(|h| id(h) == arg) {
        return Ok(hits.into_iter().nth(i).expect("index found above"));
    }
    if let Some(i) = hits.iter().position(|h| name(h) == arg) {
        return Ok(hits.into_iter().nth(i).expect("index found above"));
    }
    Err(usage_err(format!(
        "{kind} {arg} is ambiguous ({n} matches found)"
    )))
}

/// A service by full ID, else by exact name.
pub async fn get_service(ctx: &mut Ctx, arg: &str) -> Result<api::Service, CliError> {
    let req = api::GetServiceRequest {
        service_id: arg.to_string(),
        ..Default::default()
    };
    if let Ok(r) = ctx.client.get_service(req).await
        && let Some(s) = r.into_inner().service
    {
        return Ok(s);
    }
    let req = api::ListServicesRequest {
        filters: Some(api::list_services_request::Filters {
            names: vec![arg.to_string()],
            ..Default::default()
        }),
    };
    let hits = ctx.client.list_services(req).await?.into_inner().services;
    single(hits, "service", arg)
}

/// Every node of the cluster.
pub async fn all_nodes(ctx: &mut Ctx) -> Result<Vec<api::Node>, CliError> {
    let req = api::ListNodesRequest::default();
    Ok(ctx.client.list_nodes(req).await?.into_inner().nodes)
}

/// A node by full ID, else by hostname.
pub async fn get_node(ctx: &mut Ctx, arg: &str) -> Result<api::Node, CliError> {
    let req = api::GetNodeRequest {
        node_id: arg.to_string(),
    };
    if let Ok(r) = ctx.client.get_node(req).await
        && let Some(n) = r.into_inner().node
    {
        return Ok(n);
    }
    let req = api::ListNodesRequest {
        filters: Some(api::list_nodes_request::Filters {
            names: vec![arg.to_string()],
            ..Default::default()
        }),
    };
    let hits = ctx.client.list_nodes(req).await?.into_inner().nodes;
    single(hits, "node", arg)
}

/// A network by full ID, else by exact name.
pub async fn get_network(ctx: &mut Ctx, arg: &str) -> Result<api::Network, CliError> {
    let req = api::GetNetworkRequest {
        network_id: arg.to_string(),
        ..Default::default()
    };
    if let Ok(r) = ctx.client.get_network(req).await
        && let Some(n) = r.into_inner().network
    {
        return Ok(n);
    }
    let req = api::ListNetworksRequest {
        filters: Some(api::list_networks_request::Filters {
            names: vec![arg.to_string()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let hits = ctx.client.list_networks(req).await?.into_inner().networks;
    single(hits, "network", arg)
}

/// A cluster by full ID, else by exact name.
pub async fn get_cluster(ctx: &mut Ctx, arg: &str) -> Result<api::Cluster, CliError> {
    let req = api::GetClusterRequest {
        cluster_id: arg.to_string(),
    };
    if let Ok(r) = ctx.client.get_cluster(req).await
        && let Some(c) = r.into_inner().cluster
    {
        return Ok(c);
    }
    let req = api::ListClustersRequest {
        filters: Some(api::list_clusters_request::Filters {
            names: vec![arg.to_string()],
            ..Default::default()
        }),
    };
    let hits = ctx.client.list_clusters(req).await?.into_inner().clusters;
    single(hits, "cluster", arg)
}

/// A secret by name or ID prefix (exact ID wins, then exact name).
pub async fn get_secret(ctx: &mut Ctx, arg: &str) -> Result<api::Secret, CliError> {
    let req = api::ListSecretsRequest {
        filters: Some(api::list_secrets_request::Filters {
            names: vec![arg.to_string()],
            id_prefixes: vec![arg.to_string()],
            ..Default::default()
        }),
    };
    let hits = ctx.client.list_secrets(req).await?.into_inner().secrets;
    best_match(
        hits,
        "secret",
        arg,
        |s| s.id.as_str(),
        |s| annotations_name(s.spec.as_ref().and_then(|sp| sp.annotations.as_ref())),
    )
}

/// A config by name or ID prefix (exact ID wins, then exact name).
pub async fn get_config(ctx: &mut Ctx, arg: &str) -> Result<api::Config, CliError> {
    let req = api::ListConfigsRequest {
        filters: Some(api::list_configs_request::Filters {
            names: vec![arg.to_string()],
            id_prefixes: vec![arg.to_string()],
            ..Default::default()
        }),
    };
    let hits = ctx.client.list_configs(req).await?.into_inner().configs;
    best_match(
        hits,
        "config",
        arg,
        |c| c.id.as_str(),
        |c| annotations_name(c.spec.as_ref().and_then(|sp| sp.annotations.as_ref())),
    )
}

/// Header row plus a row of dashes as long as each header (SwarmKit's `PrintHeader`).
pub fn print_header(w: &mut crate::tabwriter::TabWriter, columns: &[&str]) {
    w.line(columns.join("\t"));
    let dashes: Vec<String> = columns.iter().map(|c| "-".repeat(c.len())).collect();
    w.line(dashes.join("\t"));
}

/// Ours, not SwarmKit's: network attachments (a task's or a node's) under the tab-less `header`,
/// one `  <network name>\t: <addresses>` line each (the name from the attachment's copy of the
/// network) and its aliases below it, if any. Nothing without attachments. The tab-less header
/// ends the column block above it, so the lines before keep their alignment.
pub fn attachment_lines(
    w: &mut crate::tabwriter::TabWriter,
    header: &str,
    attachments: &[api::NetworkAttachment],
) {
    if attachments.is_empty() {
        return;
    }
    w.line(header);
    for a in attachments {
        let name = a.network.as_ref().map_or("", crate::resolve::network_name);
        w.line(format!("  {name}\t: {}", a.addresses.join(", ")));
        if !a.aliases.is_empty() {
            w.line(format!("    Aliases\t: {}", a.aliases.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<&str, CliError>) -> String {
        match r {
            Ok(v) => format!("ok {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn single_and_best_match_messages() {
        assert_eq!(
            msg(single(Vec::<&str>::new(), "node", "x")),
            "node x not found"
        );
        assert_eq!(msg(single(vec!["a"], "node", "x")), "ok a");
        assert_eq!(
            msg(single(vec!["a", "b"], "service", "web")),
            "service web is ambiguous (2 matches found)"
        );
        let hits = || vec![("abc1", "abc"), ("abc", "zz"), ("q", "abc")];
        let pick = |arg: &str, hits: Vec<(&'static str, &'static str)>| {
            best_match(hits, "secret", arg, |h| h.0, |h| h.1)
                .map(|h| h.0)
                .map_err(|e| e.to_string())
        };
        assert_eq!(pick("abc", hits()), Ok("abc"));
        assert_eq!(pick("q", vec![("q1", "x"), ("q2", "q")]), Ok("q2"));
        assert_eq!(
            pick("q", vec![("q1", "x"), ("q2", "y")]),
            Err("secret q is ambiguous (2 matches found)".to_string())
        );
    }

    #[test]
    fn string_slice_reads_csv_records() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            string_slice("l", &v(&["a=1,b=2", "", "c"])).expect("valid"),
            v(&["a=1", "b=2", "c"])
        );
        assert_eq!(
            string_slice("l", &v(&["\"x,y\",z"])).expect("valid"),
            v(&["x,y", "z"])
        );
        assert!(string_slice("l", &v(&["a\"b"])).is_err());
    }

    #[test]
    fn go_flag_values() {
        assert!(go_bool("autolock", "true").expect("bool"));
        assert!(!go_bool("autolock", "F").expect("bool"));
        assert_eq!(
            go_bool("autolock", "yes").map_err(|e| e.to_string()),
            Err("invalid argument \"yes\" for \"--autolock\" flag: strconv.ParseBool: parsing \"yes\": invalid syntax".to_string())
        );
        assert_eq!(
            go_duration_flag("certexpiry", "2160h0m0s").expect("duration"),
            prost_types::Duration {
                seconds: 2160 * 3600,
                nanos: 0
            }
        );
        // Go's syntax has no spaces; negative durations are values for the manager to judge.
        assert_eq!(
            go_duration_flag("certexpiry", "1h 30m").map_err(|e| e.to_string()),
            Err("invalid argument \"1h 30m\" for \"--certexpiry\" flag: time: unknown unit \"h \" in duration \"1h 30m\"".to_string())
        );
        assert_eq!(
            go_duration_flag("heartbeatperiod", "-1s").expect("duration"),
            prost_types::Duration {
                seconds: -1,
                nanos: 0
            }
        );
        assert_eq!(go_int64("taskhistory", "-5").expect("int"), -5);
        assert_eq!(go_int64("taskhistory", "0x10").expect("int"), 16);
        assert_eq!(
            go_int64("taskhistory", "9223372036854775808").map_err(|e| e.to_string()),
            Err("invalid argument \"9223372036854775808\" for \"--taskhistory\" flag: strconv.ParseInt: parsing \"9223372036854775808\": value out of range".to_string())
        );
        assert_eq!(
            go_duration_flag("certexpiry", "5").map_err(|e| e.to_string()),
            Err("invalid argument \"5\" for \"--certexpiry\" flag: time: missing unit in duration \"5\"".to_string())
        );
    }

    #[test]
    fn one_arg_messages() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(msg(one_arg(&v(&[]), "missing", "many")), "missing");
        assert_eq!(msg(one_arg(&v(&["a", "b"]), "missing", "many")), "many");
        assert_eq!(msg(one_arg(&v(&["a"]), "missing", "many")), "ok a");
    }
}
