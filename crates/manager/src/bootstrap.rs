//! The objects a fresh cluster starts with: the `default` Cluster (with the root CA key, both
//! join tokens and the default address pool when swarmd was given one), this manager's Node, the
//! `ingress` network and the predefined `bridge` and `host` networks (SwarmKit's manager.go
//! becomeLeader). Run on every leadership gain; objects that already exist are left alone, so a
//! restart changes nothing. Unlike SwarmKit, the networks are written allocated, as the allocator
//! would allocate them first: ingress with the first subnet of the cluster's default pool and VNI
//! 4096, bridge and host with their driver's name and an empty IPAM state.

use std::time::Duration;

use allocator::ipam::{Ipam, IpamError, PoolConfig};
use store::{By, MemoryStore, StoreError};
use tracing::{info, warn};

/// Label that marks the networks every node has locally (SwarmKit's networkallocator.PredefinedLabel).
pub const PREDEFINED_LABEL: &str = "com.docker.swarm.predefined";
/// Name of the one cluster object.
pub const DEFAULT_CLUSTER_NAME: &str = "default";
/// Default number of tasks kept per slot (`TaskHistoryRetentionLimit`).
pub const DEFAULT_TASK_HISTORY: i64 = 5;
/// Default dispatcher heartbeat period.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// Default node certificate validity (90 days).
pub const DEFAULT_NODE_CERT_EXPIRY: Duration = Duration::from_secs(2160 * 3600);

/// What the bootstrap needs to know about this manager and its cluster.
#[derive(Clone)]
pub struct BootstrapInfo {
    /// This node's ID (its certificate CN).
    pub node_id: String,
    /// The cluster ID (its certificate O).
    pub cluster_id: String,
    /// Root CA certificate PEM.
    pub root_ca_cert: Vec<u8>,
    /// Root CA key PEM; only known on the very first start, after which it lives in the Cluster object.
    pub root_ca_key: Option<Vec<u8>>,
    /// Join tokens for a new cluster: (worker, manager).
    pub join_tokens: (String, String),
    /// `sha256:<hex>` of the root CA certificate.
    pub ca_cert_hash: String,
    /// Raft settings to record in the cluster spec.
    pub raft: api::RaftConfig,
    /// Hostname reported for this node.
    pub hostname: String,
    /// Address recorded in the node status (the agent's address).
    pub status_addr: String,
    /// This manager's certificate chain PEM, recorded in its Node object as the CA signer records
    /// every certificate it issues (a root rotation tells from it which root issued it).
    pub node_cert: Vec<u8>,
    /// The default address pool of a new cluster (`--default-addr-pool`, checked with
    /// [`address_pool`]); empty: the built-in 10.0.0.0/8.
    pub default_address_pool: Vec<String>,
    /// The length of the subnets cut from it (`--default-addr-pool-mask-length`); 0: 24.
    pub subnet_size: u32,
    /// The managers' unlock key of a cluster created autolocked (`swarmd --autolock`): recorded
    /// with autolock on, as the key this manager's key file is already locked with.
    pub unlock_key: Option<Vec<u8>>,
}

/// The default address pool a new cluster records: `pools` (the built-in one when empty) cut
/// into `/mask_length` subnets (24 when 0); `None` when neither is set, as the cluster then
/// records none (SwarmKit's control API shows the built-in values).
pub fn address_pool(pools: &[String], mask_length: u32) -> Result<Option<PoolConfig>, IpamError> {
    if pools.is_empty() && mask_length == 0 {
        return Ok(None);
    }
    let pools = if pools.is_empty() {
        vec![allocator::ipam::DEFAULT_ADDRESS_POOL.to_string()]
    } else {
        pools.to_vec()
    };
    PoolConfig::new(&pools, mask_length).map(Some)
}

impl std::fmt::Debug for BootstrapInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapInfo")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field(
                "root_ca_key",
                &self.root_ca_key.as_ref().map(|_| "<redacted>"),
            )
            .field("join_tokens", &"<redacted>")
            .field("autolock", &self.unlock_key.is_some())
            .finish_non_exhaustive()
    }
}

/// The raft settings SwarmKit records in a new cluster's spec.
pub fn default_raft_config(election_tick: u32, heartbeat_tick: u32) -> api::RaftConfig {
    api::RaftConfig {
        snapshot_interval: 10_000,
        keep_old_snapshots: 0,
        log_entries_for_slow_followers: 500,
        heartbeat_tick,
        election_tick,
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("constant durations fit a protobuf Duration")
}

fn default_cluster(info: &BootstrapInfo, ca_key: Vec<u8>) -> api::Cluster {
    let (default_address_pool, subnet_size) =
        match address_pool(&info.default_address_pool, info.subnet_size) {
            Ok(Some(pool)) => (pool.pools(), pool.subnet_size()),
            Ok(None) => (Vec::new(), 0),
            // swarmd checks the flags before it starts; a bad pool cannot reach here.
            Err(e) => {
                warn!(error = %e, "not recording the default address pool");
                (Vec::new(), 0)
            }
        };
    api::Cluster {
        default_address_pool,
        subnet_size,
        id: info.cluster_id.clone(),
        spec: Some(api::ClusterSpec {
            annotations: Some(api::Annotations {
                name: DEFAULT_CLUSTER_NAME.into(),
                ..Default::default()
            }),
            orchestration: Some(api::OrchestrationConfig {
                task_history_retention_limit: DEFAULT_TASK_HISTORY,
            }),
            dispatcher: Some(api::DispatcherConfig {
                heartbeat_period: Some(duration(DEFAULT_HEARTBEAT_PERIOD)),
            }),
            raft: Some(info.raft),
            ca_config: Some(api::CaConfig {
                node_cert_expiry: Some(duration(DEFAULT_NODE_CERT_EXPIRY)),
                ..Default::default()
            }),
            encryption_config: Some(api::EncryptionConfig {
                auto_lock_managers: info.unlock_key.is_some(),
            }),
            ..Default::default()
        }),
        unlock_keys: info
            .unlock_key
            .iter()
            .map(|key| api::EncryptionKey {
                subsystem: ca::MANAGER_ROLE.to_string(),
                key: key.clone(),
                ..Default::default()
            })
            .collect(),
        root_ca: Some(api::RootCa {
            ca_key,
            ca_cert: info.root_ca_cert.clone(),
            ca_cert_hash: info.ca_cert_hash.clone(),
            join_tokens: Some(api::JoinTokens {
                worker: info.join_tokens.0.clone(),
                manager: info.join_tokens.1.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn manager_node(info: &BootstrapInfo) -> api::Node {
    let manager = api::NodeRole::Manager as i32;
    api::Node {
        id: info.node_id.clone(),
        spec: Some(api::NodeSpec {
            desired_role: manager,
            membership: api::node_spec::Membership::Accepted as i32,
            availability: api::node_spec::Availability::Active as i32,
            ..Default::default()
        }),
        description: Some(local_description(&info.hostname)),
        status: Some(api::NodeStatus {
            state: api::node_status::State::Ready as i32,
            message: String::new(),
            addr: info.status_addr.clone(),
        }),
        certificate: Some(api::Certificate {
            role: manager,
            status: Some(api::IssuanceStatus {
                state: api::issuance_status::State::Issued as i32,
                err: String::new(),
            }),
            cn: info.node_id.clone(),
            certificate: info.node_cert.clone(),
            ..Default::default()
        }),
        role: manager,
        ..Default::default()
    }
}

/// What this machine can report about itself without an executor: hostname, platform and
/// resources. (The agent issue replaces this with the executor's description.)
pub fn local_description(hostname: &str) -> api::NodeDescription {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    api::NodeDescription {
        hostname: hostname.to_string(),
        platform: Some(api::Platform {
            architecture: std::env::consts::ARCH.to_string(),
            os: std::env::consts::OS.to_string(),
        }),
        resources: Some(api::Resources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: total_memory_bytes().unwrap_or(0),
            generic: Vec::new(),
        }),
        ..Default::default()
    }
}

fn total_memory_bytes() -> Option<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A default address pool asked for on a manager whose cluster exists already is not applied:
/// the cluster keeps the pool it was created with.
fn warn_if_pool_differs(cluster: &api::Cluster, info: &BootstrapInfo) {
    let Ok(Some(asked)) = address_pool(&info.default_address_pool, info.subnet_size) else {
        return;
    };
    if PoolConfig::from_cluster(cluster).ok().as_ref() != Some(&asked) {
        warn!(
            pool = ?cluster.default_address_pool,
            subnet_size = cluster.subnet_size,
            "the cluster keeps its default address pool: --default-addr-pool applies only when a cluster is created"
        );
    }
}

/// The ingress network, allocated: the first free subnet of the cluster's default pool next to
/// the networks already stored (none on a fresh cluster) and VNI 4096.
fn ingress_network(cluster: Option<&api::Cluster>, existing: &[api::Network]) -> api::Network {
    let mut network = api::Network {
        id: api::naming::new_id(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: "ingress".into(),
                ..Default::default()
            }),
            driver_config: Some(api::Driver::default()),
            ipam: Some(api::IpamOptions {
                driver: Some(api::Driver::default()),
                configs: Vec::new(),
            }),
            ingress: true,
            ..Default::default()
        }),
        // What SwarmKit's allocator gives the first overlay network, VNI 4096, set here so that the
        // network is complete from the first read; the allocator rebuilds its VXLAN IDs in use
        // from it.
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: [(
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                "4096".to_string(),
            )]
            .into(),
        }),
        ..Default::default()
    };
    let pool = cluster
        .map(PoolConfig::from_cluster)
        .transpose()
        .unwrap_or_else(|e| {
            warn!(error = %e, "the cluster's default address pool is not valid");
            None
        })
        .unwrap_or_default();
    let mut ipam = Ipam::new(pool);
    for n in existing {
        // What cannot be restored holds nothing for the allocator either.
        let _ = ipam.restore_network(n);
    }
    match ipam.allocate_network(&network) {
        Ok(state) => network.ipam = Some(state),
        // Left to the allocator, which logs and retries.
        Err(e) => warn!(error = %e, "could not allocate the ingress network's subnet"),
    }
    network
}

fn predefined_network(name: &str, driver: &str) -> api::Network {
    api::Network {
        id: api::naming::new_id(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: name.into(),
                labels: [(PREDEFINED_LABEL.to_string(), "true".to_string())].into(),
                ..Default::default()
            }),
            driver_config: Some(api::Driver {
                name: driver.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        driver_state: Some(api::Driver {
            name: driver.into(),
            ..Default::default()
        }),
        // What SwarmKit's allocator gives node-local networks.
        ipam: Some(api::IpamOptions {
            driver: Some(api::Driver::default()),
            configs: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Creates whatever of the initial objects is missing, in one transaction.
pub async fn bootstrap(store: &MemoryStore, info: &BootstrapInfo) -> Result<(), StoreError> {
    let info = info.clone();
    store
        .update(move |tx| {
            if let Some(cluster) = tx.get_cluster(&info.cluster_id) {
                warn_if_pool_differs(&cluster, &info);
            } else {
                let Some(key) = info.root_ca_key.clone() else {
                    return Err(StoreError::Invalid(format!(
                        "cluster {} has no cluster object and the root CA key is unknown",
                        info.cluster_id
                    )));
                };
                tx.create_cluster(default_cluster(&info, key))?;
            }
            if tx.get_node(&info.node_id).is_none() {
                tx.create_node(manager_node(&info))?;
                info!("Creating default ingress network");
                let cluster = tx.get_cluster(&info.cluster_id);
                let existing = tx.find_networks(By::All);
                tx.create_network(ingress_network(cluster.as_ref(), &existing))?;
            }
            for (name, driver) in [("bridge", "bridge"), ("host", "host")] {
                if tx.find_networks(By::Name(name)).is_empty() {
                    tx.create_network(predefined_network(name, driver))?;
                }
            }
            Ok(())
        })
        .await
}
