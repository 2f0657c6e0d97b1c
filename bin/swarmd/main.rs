//! `swarmd`: the node daemon. Parses flags (spec 2.1), sets up logging, starts the node,
//! handles signals (spec 2.5) and exits 1 with one fatal line when the node fails (its raft,
//! servers or agent died). Everything else lives in the `node` crate and below.

mod logfmt;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::parser::ValueSource;
use tracing::{error, info};

/// mimalloc rather than glibc malloc (BUILDING.md, "Allocator"); the `system-alloc` feature
/// keeps glibc's, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a swarm control process
#[derive(Parser, Debug)]
#[command(name = "swarmd", disable_version_flag = true)]
struct Flags {
    /// Display the version and exit
    #[arg(short = 'v', long = "version")]
    version: bool,
    /// Log level (options "debug", "info", "warn", "error", "fatal", "panic")
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// State directory
    #[arg(short = 'd', long = "state-dir", default_value = "/var/lib/swarmd")]
    state_dir: PathBuf,
    /// Specifies the secret token required to join the cluster
    #[arg(long = "join-token", default_value = "")]
    join_token: String,
    /// Address of engine instance of agent.
    #[arg(long = "engine-addr", default_value = "unix:///var/run/docker.sock")]
    engine_addr: String,
    /// Override reported agent hostname
    #[arg(long = "hostname", default_value = "")]
    hostname: String,
    /// Advertise address for remote API
    #[arg(long = "advertise-remote-api", default_value = "")]
    advertise_remote_api: String,
    /// IP address VXLAN traffic of swarm networks leaves from and arrives at (ours, Docker's
    /// swarm init flag; default: the IP of --advertise-remote-api, else the address the managers
    /// see this node at)
    #[arg(long = "data-path-addr")]
    data_path_addr: Option<std::net::IpAddr>,
    /// UDP port of the WireGuard tunnel encrypted networks' traffic crosses between nodes (ours;
    /// announced to the other nodes through the leader)
    #[arg(long = "wireguard-port", default_value_t = node::NodeConfig::default().wireguard_port)]
    wireguard_port: u16,
    /// Node-local UDP port of encrypted networks' VXLAN devices, routed into the WireGuard
    /// tunnel, never on the wire (ours; 1024-32767, not 4789)
    #[arg(long = "encrypted-vxlan-port", default_value_t = node::NodeConfig::default().encrypted_vxlan_port)]
    encrypted_vxlan_port: u16,
    /// Listen address for remote API
    #[arg(long = "listen-remote-api", default_value = "0.0.0.0:4242")]
    listen_remote_api: String,
    /// Listen socket for control API
    #[arg(long = "listen-control-api", default_value = "/var/run/swarmd.sock")]
    listen_control_api: PathBuf,
    /// Bind the debug server on the provided address (ours: GET /debug/state answers the
    /// node's state as JSON)
    #[arg(long = "listen-debug", default_value = "")]
    listen_debug: String,
    /// Listen address for metrics
    #[arg(long = "listen-metrics", default_value = "")]
    listen_metrics: String,
    /// Join cluster with a node at this address
    #[arg(long = "join-addr", default_value = "")]
    join_addr: String,
    /// user defined resources (e.g. fpga=2,gpu=UUID1,gpu=UUID2,gpu=UUID3)
    #[arg(long = "generic-node-resources")]
    generic_node_resources: Option<String>,
    /// Force the creation of a new cluster from data directory
    #[arg(long = "force-new-cluster")]
    force_new_cluster: bool,
    /// Defines the heartbeat interval (in seconds) for raft member health-check
    #[arg(long = "heartbeat-tick", default_value_t = 1)]
    heartbeat_tick: u32,
    /// Defines the amount of ticks (in seconds) needed without a Leader to trigger a new election
    #[arg(long = "election-tick", default_value_t = 10)]
    election_tick: u32,
    /// Specifications of one or more certificate signing endpoints
    #[arg(long = "external-ca")]
    external_ca: Vec<String>,
    /// Require an unlock key in order to start a manager once it's been stopped
    #[arg(long = "autolock")]
    autolock: bool,
    /// Unlock this manager using this key
    // Given empty, it is SwarmKit's `invalid key string`, as any other malformed key.
    #[arg(long = "unlock-key")]
    unlock_key: Option<String>,
    /// Default address pool in CIDR format of a new cluster, the subnets of overlay networks are
    /// cut from (ours, Docker's swarm init flag; repeatable or comma-separated; default 10.0.0.0/8)
    #[arg(long = "default-addr-pool", value_delimiter = ',')]
    default_addr_pool: Vec<String>,
    /// Subnet mask length of the subnets cut from the default address pool (ours, Docker's swarm
    /// init flag; default 24)
    #[arg(long = "default-addr-pool-mask-length", value_parser = clap::value_parser!(u32).range(1..=32))]
    default_addr_pool_mask_length: Option<u32>,
    /// Test and benchmark option (ours, not SwarmKit's): length of one raft tick in
    /// milliseconds instead of 1000, so elections happen in fractions of a second.
    #[arg(long = "raft-tick-ms", default_value_t = 1000, hide = true)]
    raft_tick_ms: u64,
    /// Test option (ours): raft entries between snapshots, instead of the cluster default 10000.
    #[arg(long = "snapshot-interval", default_value_t = 10_000, hide = true)]
    snapshot_interval: u64,
    /// Test option (ours): raft entries already in a snapshot kept for slow followers, instead
    /// of the cluster default 500, so a follower can fall behind the compacted log quickly.
    #[arg(
        long = "log-entries-for-slow-followers",
        default_value_t = 500,
        hide = true
    )]
    log_entries_for_slow_followers: u64,
    /// Executor that runs tasks (ours): "docker" (the engine at --engine-addr) or "process"
    /// (child processes); by default Docker when its engine answers, processes otherwise
    #[arg(long = "executor", value_parser = clap::value_parser!(node::ExecutorKind))]
    executor: Option<node::ExecutorKind>,
    /// Test option (ours): validity of the node certificates this manager's CA issues (e.g.
    /// `30s`), instead of the cluster's NodeCertExpiry and below its 1h minimum, so that renewal
    /// can be watched in seconds. Never for production.
    #[arg(long = "test-cert-expiry", hide = true, value_parser = go_duration)]
    test_cert_expiry: Option<Duration>,
}

/// A non-negative duration in Go's syntax (`time.ParseDuration`).
fn go_duration(s: &str) -> Result<Duration, String> {
    let nanos = api::gofmt::parse_duration(s)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("{s} is a negative duration"))
}

/// Flags that parse but whose feature comes with a later issue: naming one is an error rather
/// than being ignored.
const NOT_SUPPORTED_YET: &[&str] = &["external-ca"];

fn explicitly_given(matches: &clap::ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does at start (and so
/// SwarmKit's swarmd): every connection is a descriptor, and the accept loops' bounds assume
/// more than the usual soft 1024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!("could not raise the open file limit: {e}");
    }
}

fn main() -> ExitCode {
    let matches = <Flags as clap::CommandFactory>::command().get_matches();
    let flags =
        <Flags as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if flags.version {
        println!(
            "swarmd github.com/moby/swarmkit/v2 {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if let Err(msg) = logfmt::init(&flags.log_level) {
        eprintln!("Error: {msg}");
        return ExitCode::from(1);
    }
    raise_open_file_limit();
    let ids: Vec<String> = NOT_SUPPORTED_YET
        .iter()
        .map(|f| f.replace('-', "_"))
        .collect();
    for (flag, id) in NOT_SUPPORTED_YET.iter().zip(&ids) {
        if explicitly_given(&matches, id) {
            return fatal(&format!("not supported yet: --{flag}"));
        }
    }
    // SwarmKit parses the flag only when it is given, so an explicit empty value is an error.
    let generic_resources = match flags.generic_node_resources.as_deref() {
        None => Vec::new(),
        Some(cmd) => match api::genericresource::parse_cmd(cmd) {
            Ok(r) => r,
            Err(e) => return fatal(&e),
        },
    };
    if flags.raft_tick_ms == 0 {
        return fatal("--raft-tick-ms must be positive");
    }

    if let Some((host, _)) = flags.listen_remote_api.rsplit_once(':') {
        let host = host.trim_matches(|c| c == '[' || c == ']');
        if host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified() || ip.is_loopback())
        {
            println!(
                "Warning: Specifying a valid address with --listen-remote-api may be necessary for other managers to reach this one."
            );
        }
    }

    // SwarmKit's swarmd parses the key before anything else, with the same message.
    // Given at all (even empty), it must parse.
    let unlock_key = match flags.unlock_key.as_deref().map(ca::parse_unlock_key) {
        None => None,
        Some(Ok(k)) => Some(node::UnlockKey(k)),
        Some(Err(e)) => return fatal(&e.to_string()),
    };
    let config = node::NodeConfig {
        autolock: flags.autolock,
        unlock_key,
        state_dir: flags.state_dir,
        listen_control_api: flags.listen_control_api,
        listen_remote_api: flags.listen_remote_api,
        advertise_remote_api: flags.advertise_remote_api,
        data_path_addr: flags.data_path_addr,
        wireguard_port: flags.wireguard_port,
        encrypted_vxlan_port: flags.encrypted_vxlan_port,
        hostname: flags.hostname,
        election_tick: flags.election_tick,
        heartbeat_tick: flags.heartbeat_tick,
        tick: Duration::from_millis(flags.raft_tick_ms),
        snapshot_interval: flags.snapshot_interval,
        log_entries_for_slow_followers: flags.log_entries_for_slow_followers,
        join_addr: flags.join_addr,
        join_token: flags.join_token,
        availability: api::node_spec::Availability::Active,
        cert_expiry_override: flags.test_cert_expiry,
        executor: flags.executor.unwrap_or_default(),
        engine_addr: flags.engine_addr,
        force_new_cluster: flags.force_new_cluster,
        default_addr_pool: flags.default_addr_pool,
        default_addr_pool_mask_length: flags.default_addr_pool_mask_length.unwrap_or(0),
        generic_resources,
    };
    if let Err(e) = config.validate() {
        return fatal(&e.to_string());
    }

    let mut endpoints = Vec::new();
    for (flag, addr, endpoint) in [
        (
            "listen-metrics",
            &flags.listen_metrics,
            telemetry::http::Endpoint::Metrics,
        ),
        (
            "listen-debug",
            &flags.listen_debug,
            telemetry::http::Endpoint::Debug,
        ),
    ] {
        if addr.is_empty() {
            continue;
        }
        match bind_endpoint(addr) {
            Ok(listener) => endpoints.push((listener, endpoint)),
            Err(e) => return fatal(&format!("failed to listen on {addr} (--{flag}): {e}")),
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fatal(&format!("starting the runtime: {e}")),
    };
    runtime.block_on(run(config, endpoints))
}

/// Binds the listener of `--listen-metrics` or `--listen-debug` before anything starts, so an
/// address in use stops swarmd at once. Go's `:port` (every address) is accepted.
fn bind_endpoint(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let addr = match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    };
    let listener = std::net::TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn fatal(msg: &str) -> ExitCode {
    eprintln!("Error: {msg}");
    error!(level = "fatal", "{msg}");
    ExitCode::from(1)
}

async fn run(
    config: node::NodeConfig,
    endpoints: Vec<(std::net::TcpListener, telemetry::http::Endpoint)>,
) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let _ = rustls::crypto::ring::default_provider().install_default();
    for (listener, endpoint) in endpoints {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return fatal(&format!("serving {endpoint:?}: {e}")),
        };
        if let Ok(addr) = listener.local_addr() {
            info!(addr = %addr, ?endpoint, "Listening for HTTP connections");
        }
        tokio::spawn(telemetry::http::serve(listener, endpoint));
    }
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return fatal("cannot install signal handlers"),
    };
    let mut node = tokio::select! {
        res = node::Node::start(config) => match res {
            Ok(node) => node,
            Err(e) => return fatal(&e.to_string()),
        },
        _ = sigint.recv() => return ExitCode::from(130),
        _ = sigterm.recv() => std::process::exit(143),
    };
    tokio::select! {
        _ = sigint.recv() => {
            info!("received interrupt, stopping");
            node.stop().await;
            ExitCode::SUCCESS
        }
        _ = sigterm.recv() => {
            // SwarmKit exits at once on SIGTERM: tasks keep running and the socket stays.
            // Acknowledged writes are already durable, so nothing is lost.
            std::process::exit(143)
        }
        e = node.failed() => {
            // A node whose raft, servers or agent died must not run on half-dead: exit at once
            // (as on SIGTERM, tasks keep running for the next start to adopt) so that a
            // supervisor restarts it. No graceful stop: it could hang on what failed.
            fatal(&e.to_string());
            std::process::exit(1)
        }
    }
}
