//! `swarmctl cluster`: ls, inspect, update and unlock-key (SwarmKit's
//! `swarmd/cmd/swarmctl/cluster`). Rendering is done by pure functions so tests need no server.

use api::gofmt::format_duration_proto;
use clap::{Args, Subcommand};

use crate::common::{
    CmdResult, Ctx, ListArgs, Positionals, emit, flag_value_error, get_cluster, go_bool,
    go_duration_flag, go_int64, one_arg, print_header, string_slice, usage_err,
};
use crate::tabwriter::TabWriter;

/// Cluster management
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ClusterCommand {
    /// Inspect a cluster
    #[command(override_usage = "inspect <cluster name>")]
    Inspect(Positionals),
    /// List clusters
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Get the unlock key for a cluster
    #[command(name = "unlock-key", override_usage = "unlock-key <cluster name>")]
    UnlockKey(Positionals),
    /// Update a cluster
    #[command(override_usage = "update <cluster name>")]
    Update(UpdateArgs),
}

/// Flags of `cluster update`; values are kept as typed so that only given flags apply.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Enable or disable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    autolock: Option<String>,
    /// Duration node certificates will be valid for (default 2160h0m0s)
    #[arg(long, value_name = "duration", allow_hyphen_values = true)]
    certexpiry: Option<String>,
    /// Specifications of one or more certificate signing endpoints
    #[arg(
        long = "external-ca",
        value_name = "external-ca",
        allow_hyphen_values = true
    )]
    external_ca: Vec<String>,
    /// Period when heartbeat is expected to receive from agent
    #[arg(long, value_name = "duration", allow_hyphen_values = true)]
    heartbeatperiod: Option<String>,
    /// Set default log driver for cluster
    #[arg(long = "log-driver", value_name = "string", allow_hyphen_values = true)]
    log_driver: Option<String>,
    /// Set options for default log driver
    #[arg(long = "log-opt", value_name = "strings", allow_hyphen_values = true)]
    log_opt: Vec<String>,
    /// Rotate the root CA: a new root is generated, every node renews its certificate under it,
    /// then it replaces the old one (not in the reference CLI: it bumps `force_rotate`)
    #[arg(long = "rotate-ca")]
    rotate_ca: bool,
    /// Rotate join token for worker or manager
    #[arg(
        long = "rotate-join-token",
        value_name = "string",
        allow_hyphen_values = true
    )]
    rotate_join_token: Option<String>,
    /// Rotate manager unlock key
    #[arg(
        long = "rotate-unlock-key",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    rotate_unlock_key: Option<String>,
    /// Number of historic task entries to retain per slot or node
    #[arg(long, value_name = "int", allow_hyphen_values = true)]
    taskhistory: Option<String>,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one cluster command.
pub async fn run(cmd: ClusterCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        ClusterCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let clusters = ctx
                .client
                .list_clusters(api::ListClustersRequest::default())
                .await?
                .into_inner()
                .clusters;
            emit(&render_list(&clusters, a.quiet));
            Ok(())
        }
        ClusterCommand::Inspect(a) => {
            let name = one_arg(
                &a.args,
                "cluster name missing",
                "inspect command takes exactly 1 argument",
            )?;
            let cluster = get_cluster(ctx, name).await?;
            emit(&render_summary(&cluster));
            Ok(())
        }
        ClusterCommand::UnlockKey(a) => {
            one_arg(
                &a.args,
                "cluster name missing",
                "unlock-key command takes exactly 1 argument",
            )?;
            display_unlock_key(ctx).await
        }
        ClusterCommand::Update(a) => update(a, ctx).await,
    }
}

/// The `ls` table (or IDs with `-q`).
pub fn render_list(clusters: &[api::Cluster], quiet: bool) -> String {
    if quiet {
        return clusters.iter().map(|c| format!("{}\n", c.id)).collect();
    }
    let mut w = TabWriter::new(0, 4, 2);
    print_header(&mut w, &["ID", "Name"]);
    for c in clusters {
        w.line(format!("{}\t{}", c.id, cluster_name(c)));
    }
    w.render()
}

fn cluster_name(c: &api::Cluster) -> &str {
    crate::common::annotations_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref()))
}

/// The `inspect` summary.
pub fn render_summary(c: &api::Cluster) -> String {
    let spec = c.spec.clone().unwrap_or_default();
    let mut w = TabWriter::new(8, 8, 8);
    if !c.id.is_empty() {
        w.line(format!("ID\t: {}", c.id));
    }
    let name = cluster_name(c);
    if !name.is_empty() {
        w.line(format!("Name\t: {name}"));
    }
    w.line("Orchestration settings:");
    let history = spec
        .orchestration
        .as_ref()
        .map(|o| o.task_history_retention_limit)
        .unwrap_or(0);
    w.line(format!("  Task history entries: {history}"));
    if let Some(hb) = spec
        .dispatcher
        .as_ref()
        .and_then(|d| d.heartbeat_period.as_ref())
    {
        w.line("Dispatcher settings:");
        w.line(format!(
            "  Dispatcher heartbeat period: {}",
            format_duration_proto(hb)
        ));
    }
    w.line("Certificate Authority settings:");
    let ca = spec.ca_config.clone().unwrap_or_default();
    if let Some(exp) = &ca.node_cert_expiry {
        w.line(format!(
            "  Certificate Validity Duration: {}",
            format_duration_proto(exp)
        ));
    }
    if !ca.external_cas.is_empty() {
        w.line("  External CAs:");
        for e in &ca.external_cas {
            w.line(format!(
                "    {}: {}",
                crate::common::enum_name(e.protocol, api::external_ca::CaProtocol::as_str_name),
                e.url
            ));
        }
    }
    let tokens = c
        .root_ca
        .as_ref()
        .and_then(|r| r.join_tokens.clone())
        .unwrap_or_default();
    w.line("  Join Tokens:");
    w.line(format!("    Worker: {}", tokens.worker));
    w.line(format!("    Manager: {}", tokens.manager));
    if let Some(rotation) = c.root_ca.as_ref().and_then(|r| r.root_rotation.as_ref()) {
        w.line("  Root CA rotation: in progress");
        if let Ok(next) = ca::RootCa::from_pem(&rotation.ca_cert, None) {
            w.line(format!("    New root CA: {}", next.cert_hash()));
        }
    }
    if let Some(driver) = spec
        .task_defaults
        .as_ref()
        .and_then(|t| t.log_driver.as_ref())
    {
        w.line(format!("Default Log Driver\t: {}", driver.name));
        for (k, v) in &driver.options {
            if v.is_empty() {
                w.line(format!("  {k}\t"));
            } else {
                w.line(format!("  {k}\t: {v}"));
            }
        }
    }
    w.render()
}

/// `Managers auto-locked.  Unlock key: SWMKEY-1-…`, preceded (without newline, as the
/// reference does) by `Managers not auto-locked` when there is no key.
pub fn render_unlock_key(key: &[u8]) -> String {
    let mut out = String::new();
    if key.is_empty() {
        out.push_str("Managers not auto-locked");
    }
    out.push_str(&format!(
        "Managers auto-locked.  Unlock key: SWMKEY-1-{}\n",
        base64_raw_std(key)
    ));
    out
}

/// Standard base64 without padding (Go's `base64.RawStdEncoding`).
fn base64_raw_std(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(ALPHABET[idx as usize] as char);
        }
    }
    out
}

async fn display_unlock_key(ctx: &mut Ctx) -> CmdResult {
    let mut ca = api::ca_client::CaClient::new(ctx.channel.clone());
    let key = ca
        .get_unlock_key(api::GetUnlockKeyRequest {})
        .await?
        .into_inner()
        .unlock_key;
    emit(&render_unlock_key(&key));
    Ok(())
}

/// Parses one `--external-ca` value (`protocol=cfssl,url=…[,k=v]`).
fn parse_external_ca(value: &str) -> Result<api::ExternalCa, String> {
    let fields = string_slice("external-ca", &[value.to_string()]).map_err(|e| e.to_string())?;
    let mut ca = api::ExternalCa::default();
    let (mut has_protocol, mut has_url) = (false, false);
    for field in fields {
        let Some((key, val)) = field.split_once('=') else {
            return Err(format!("invalid field '{field}' must be a key=value pair"));
        };
        match key.to_lowercase().as_str() {
            "protocol" => {
                has_protocol = true;
                if val.to_lowercase() == "cfssl" {
                    ca.protocol = api::external_ca::CaProtocol::Cfssl as i32;
                } else {
                    return Err(format!("unrecognized external CA protocol {val}"));
                }
            }
            "url" => {
                has_url = true;
                ca.url = val.to_string();
            }
            _ => {
                ca.options.insert(key.to_string(), val.to_string());
            }
        }
    }
    if !has_protocol {
        return Err("the external-ca option needs a protocol= parameter".to_string());
    }
    if !has_url {
        return Err("the external-ca option needs a url= parameter".to_string());
    }
    Ok(ca)
}

/// The log driver of `--log-driver`/`--log-opt` (SwarmKit's `ParseLogDriverFlags`).
pub fn log_driver_flags(
    driver: Option<&str>,
    opts: &[String],
) -> Result<Option<api::Driver>, crate::common::CliError> {
    let Some(name) = driver else {
        return Ok(None);
    };
    let mut d = api::Driver {
        name: name.to_string(),
        ..Default::default()
    };
    for opt in string_slice("log-opt", opts)? {
        match opt.split_once('=') {
            Some((k, v)) => d.options.insert(k.to_string(), v.to_string()),
            None => d.options.insert(opt, String::new()),
        };
    }
    Ok(Some(d))
}

/// The values of `cluster update`'s flags, checked before any RPC as pflag does while parsing.
#[derive(Debug)]
struct CheckedFlags {
    certexpiry: Option<prost_types::Duration>,
    heartbeat: Option<prost_types::Duration>,
    history: Option<i64>,
    autolock: Option<bool>,
    rotate_unlock: bool,
    external_cas: Vec<api::ExternalCa>,
}

/// `parse` applied to a flag's value when the flag was given.
fn given<T>(
    value: &Option<String>,
    parse: impl FnOnce(&str) -> Result<T, crate::common::CliError>,
) -> Result<Option<T>, crate::common::CliError> {
    value.as_deref().map(parse).transpose()
}

/// `--taskhistory`: an int64, and not negative. SwarmKit stores a negative limit, which makes
/// the task reaper keep every task forever; a `-5` typed here is refused instead.
fn task_history(v: &str) -> Result<i64, crate::common::CliError> {
    let n = go_int64("taskhistory", v)?;
    if n < 0 {
        return Err(usage_err(flag_value_error(
            v,
            "--taskhistory",
            "the number of task history entries cannot be negative",
        )));
    }
    Ok(n)
}

fn check_flags(a: &UpdateArgs) -> Result<CheckedFlags, crate::common::CliError> {
    Ok(CheckedFlags {
        certexpiry: given(&a.certexpiry, |v| go_duration_flag("certexpiry", v))?,
        heartbeat: given(&a.heartbeatperiod, |v| {
            go_duration_flag("heartbeatperiod", v)
        })?,
        history: given(&a.taskhistory, task_history)?,
        autolock: given(&a.autolock, |v| go_bool("autolock", v))?,
        rotate_unlock: given(&a.rotate_unlock_key, |v| go_bool("rotate-unlock-key", v))?
            .unwrap_or(false),
        external_cas: a
            .external_ca
            .iter()
            .map(|v| {
                parse_external_ca(v)
                    .map_err(|e| usage_err(flag_value_error(v, "--external-ca", &e)))
            })
            .collect::<Result<Vec<_>, _>>()?,
    })
}

/// The UpdateCluster request for `cluster` as the flags change it.
fn update_request(
    a: &UpdateArgs,
    flags: CheckedFlags,
    cluster: &api::Cluster,
) -> Result<api::UpdateClusterRequest, crate::common::CliError> {
    let mut spec = cluster.spec.clone().unwrap_or_default();
    let mut rotation = api::KeyRotation::default();
    if let Some(d) = flags.certexpiry {
        spec.ca_config
            .get_or_insert_with(Default::default)
            .node_cert_expiry = Some(d);
    }
    if !a.external_ca.is_empty() {
        spec.ca_config
            .get_or_insert_with(Default::default)
            .external_cas = flags.external_cas;
    }
    if a.rotate_ca {
        // A force_rotate other than the last one makes the manager start a rotation to a new root.
        let last = cluster
            .root_ca
            .as_ref()
            .map_or(0, |r| r.last_forced_rotation);
        let ca_config = spec.ca_config.get_or_insert_with(Default::default);
        ca_config.force_rotate = ca_config.force_rotate.max(last) + 1;
    }
    if let Some(h) = flags.history {
        spec.orchestration
            .get_or_insert_with(Default::default)
            .task_history_retention_limit = h;
    }
    if let Some(d) = flags.heartbeat {
        spec.dispatcher
            .get_or_insert_with(Default::default)
            .heartbeat_period = Some(d);
    }
    if let Some(which) = &a.rotate_join_token {
        match which.to_lowercase().as_str() {
            "worker" => rotation.worker_join_token = true,
            "manager" => rotation.manager_join_token = true,
            _ => {
                return Err(usage_err(
                    "--rotate-join-token flag must be followed by 'worker' or 'manager'",
                ));
            }
        }
    }
    if let Some(on) = flags.autolock {
        spec.encryption_config
            .get_or_insert_with(Default::default)
            .auto_lock_managers = on;
    }
    rotation.manager_unlock_key = flags.rotate_unlock;
    // As the reference: the default log driver is replaced by what the flags say, and cleared
    // when `--log-driver` is not given.
    spec.task_defaults
        .get_or_insert_with(Default::default)
        .log_driver = log_driver_flags(a.log_driver.as_deref(), &a.log_opt)?;
    Ok(api::UpdateClusterRequest {
        cluster_id: cluster.id.clone(),
        cluster_version: cluster.meta.as_ref().and_then(|m| m.version),
        spec: Some(spec),
        rotation: Some(rotation),
    })
}

async fn update(a: UpdateArgs, ctx: &mut Ctx) -> CmdResult {
    let name = one_arg(
        &a.pos.args,
        "cluster name missing",
        "update command takes exactly 1 argument",
    )?;
    let flags = check_flags(&a)?;
    let rotate_unlock = flags.rotate_unlock;
    let cluster = get_cluster(ctx, name).await?;
    let req = update_request(&a, flags, &cluster)?;
    let updated = ctx.client.update_cluster(req).await?.into_inner();
    let id = updated.cluster.map(|c| c.id).unwrap_or_default();
    emit(&format!("{id}\n"));
    if rotate_unlock {
        return display_unlock_key(ctx).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> api::Cluster {
        api::Cluster {
            id: "CL-id....................".into(),
            spec: Some(api::ClusterSpec {
                annotations: Some(api::Annotations {
                    name: "default".into(),
                    ..Default::default()
                }),
                orchestration: Some(api::OrchestrationConfig {
                    task_history_retention_limit: 5,
                }),
                dispatcher: Some(api::DispatcherConfig {
                    heartbeat_period: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                }),
                ca_config: Some(api::CaConfig {
                    node_cert_expiry: Some(prost_types::Duration {
                        seconds: 2160 * 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            root_ca: Some(api::RootCa {
                join_tokens: Some(api::JoinTokens {
                    worker: "SWMTKN-1-w".into(),
                    manager: "SWMTKN-1-m".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected, "\ngot:\n{got}\nexpected:\n{expected}");
    }

    #[test]
    fn list_table() {
        check(
            render_list(&[cluster()], false),
            "ID                         Name\n\
             --                         ----\n\
             CL-id....................  default\n",
        );
        check(
            render_list(&[cluster()], true),
            "CL-id....................\n",
        );
    }

    #[test]
    fn inspect_summary() {
        check(
            render_summary(&cluster()),
            "ID          : CL-id....................\n\
             Name        : default\n\
             Orchestration settings:\n  \
               Task history entries: 5\n\
             Dispatcher settings:\n  \
               Dispatcher heartbeat period: 5s\n\
             Certificate Authority settings:\n  \
               Certificate Validity Duration: 2160h0m0s\n  \
               Join Tokens:\n    \
                 Worker: SWMTKN-1-w\n    \
                 Manager: SWMTKN-1-m\n",
        );
    }

    #[test]
    fn inspect_with_log_driver_and_external_ca() {
        let mut c = cluster();
        let spec = c.spec.as_mut().expect("spec");
        spec.dispatcher = None;
        spec.ca_config.as_mut().expect("ca").external_cas = vec![api::ExternalCa {
            url: "https://ca".into(),
            ..Default::default()
        }];
        spec.task_defaults = Some(api::TaskDefaults {
            log_driver: Some(api::Driver {
                name: "json-file".into(),
                options: [("max-size", "1m"), ("compress", "")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
        });
        let out = render_summary(&c);
        assert!(!out.contains("Dispatcher"), "{out}");
        assert!(
            out.contains("  External CAs:\n    CFSSL: https://ca\n"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "Default Log Driver        : json-file\n  \
                 compress                \n  \
                 max-size                : 1m\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn inspect_shows_a_root_rotation_in_progress() {
        let next = ca::RootCa::generate().expect("root");
        let mut c = cluster();
        c.root_ca.as_mut().expect("root ca").root_rotation = Some(api::RootRotation {
            ca_cert: next.cert_pem().to_vec(),
            cross_signed_ca_cert: b"cross".to_vec(),
            ..Default::default()
        });
        let out = render_summary(&c);
        assert!(
            out.ends_with(&format!(
                "  Join Tokens:\n    \
                   Worker: SWMTKN-1-w\n    \
                   Manager: SWMTKN-1-m\n  \
                 Root CA rotation: in progress\n    \
                   New root CA: {}\n",
                next.cert_hash()
            )),
            "{out}"
        );
        assert!(!render_summary(&cluster()).contains("rotation"));
    }

    /// `swarmctl cluster` as main mounts it.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClusterCommand,
    }

    /// The UpdateCluster request `swarmctl cluster update default <args>` sends for `cluster`.
    fn request_for(args: &[&str], cluster: &api::Cluster) -> api::UpdateClusterRequest {
        use clap::Parser;
        let argv = ["cluster", "update", "default"].iter().chain(args);
        let cmd = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let ClusterCommand::Update(a) = cmd.cmd else {
            panic!("not an update");
        };
        let flags = check_flags(&a).expect("flags");
        update_request(&a, flags, cluster).expect("request")
    }

    fn ca_config(req: &api::UpdateClusterRequest) -> api::CaConfig {
        req.spec
            .as_ref()
            .and_then(|s| s.ca_config.clone())
            .expect("ca config")
    }

    #[test]
    fn rotate_ca_bumps_force_rotate() {
        let mut c = cluster();
        c.root_ca.as_mut().expect("root ca").last_forced_rotation = 3;
        c.spec
            .as_mut()
            .and_then(|s| s.ca_config.as_mut())
            .expect("ca config")
            .force_rotate = 3;
        assert_eq!(
            ca_config(&request_for(&["--rotate-ca"], &c)).force_rotate,
            4
        );
        assert_eq!(ca_config(&request_for(&[], &c)).force_rotate, 3);
        // The last rotation counts even when the spec lags behind it.
        c.root_ca.as_mut().expect("root ca").last_forced_rotation = 7;
        assert_eq!(
            ca_config(&request_for(&["--rotate-ca"], &c)).force_rotate,
            8
        );
        let req = request_for(&["--rotate-ca"], &c);
        assert_eq!(
            req.rotation,
            Some(api::KeyRotation::default()),
            "no key rotation"
        );
        assert_eq!(req.cluster_id, c.id);
    }

    #[test]
    fn certexpiry_is_sent_for_the_manager_to_check() {
        // The manager refuses less than an hour with `minimum certificate expiry time is:
        // 1h0m0s` (tests/it/cli.rs); the CLI sends what it was given, as the reference does.
        let req = request_for(&["--certexpiry", "10m"], &cluster());
        assert_eq!(
            ca_config(&req).node_cert_expiry,
            Some(prost_types::Duration {
                seconds: 600,
                nanos: 0
            })
        );
    }

    #[test]
    fn negative_values_are_values() {
        // pflag takes the next argument as the value even when it starts with '-'.
        let req = request_for(
            &["--heartbeatperiod", "-1s", "--certexpiry", "-1h"],
            &cluster(),
        );
        let spec = req.spec.as_ref().expect("spec");
        assert_eq!(
            spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period),
            Some(prost_types::Duration {
                seconds: -1,
                nanos: 0
            })
        );
        assert_eq!(
            ca_config(&req).node_cert_expiry,
            Some(prost_types::Duration {
                seconds: -3600,
                nanos: 0
            })
        );
        let req = request_for(&["--taskhistory", "0"], &cluster());
        let orch = req
            .spec
            .and_then(|s| s.orchestration)
            .expect("orchestration");
        assert_eq!(orch.task_history_retention_limit, 0);
    }

    #[test]
    fn negative_task_history_is_refused() {
        use clap::Parser;
        let argv = ["cluster", "update", "default", "--taskhistory", "-5"];
        let cmd = Cli::try_parse_from(argv).expect("-5 parses as a value");
        let ClusterCommand::Update(a) = cmd.cmd else {
            panic!("not an update");
        };
        assert_eq!(
            check_flags(&a).map(|_| ()).map_err(|e| e.to_string()),
            Err("invalid argument \"-5\" for \"--taskhistory\" flag: the number of task history entries cannot be negative".to_string())
        );
    }

    #[test]
    fn unlock_key_lines() {
        check(
            render_unlock_key(&[]),
            "Managers not auto-lockedManagers auto-locked.  Unlock key: SWMKEY-1-\n",
        );
        check(
            render_unlock_key(b"hello"),
            "Managers auto-locked.  Unlock key: SWMKEY-1-aGVsbG8\n",
        );
        assert_eq!(base64_raw_std(&[0xff; 32]).len(), 43);
    }

    #[test]
    fn external_ca_values() {
        let ca = parse_external_ca("protocol=CFSSL,url=https://x,extra=1").expect("valid");
        assert_eq!(ca.url, "https://x");
        assert_eq!(ca.options.get("extra").map(String::as_str), Some("1"));
        assert_eq!(
            parse_external_ca("protocol=foo,url=x"),
            Err("unrecognized external CA protocol foo".to_string())
        );
        assert_eq!(
            parse_external_ca("url=x"),
            Err("the external-ca option needs a protocol= parameter".to_string())
        );
        assert_eq!(
            parse_external_ca("protocol=cfssl"),
            Err("the external-ca option needs a url= parameter".to_string())
        );
        assert_eq!(
            parse_external_ca("bogus"),
            Err("invalid field 'bogus' must be a key=value pair".to_string())
        );
    }

    #[test]
    fn log_driver_options() {
        let d = log_driver_flags(Some("json-file"), &["max-size=1m,compress".to_string()])
            .expect("valid")
            .expect("driver");
        assert_eq!(d.options.get("max-size").map(String::as_str), Some("1m"));
        assert_eq!(d.options.get("compress").map(String::as_str), Some(""));
        assert!(log_driver_flags(None, &[]).expect("valid").is_none());
    }
}
