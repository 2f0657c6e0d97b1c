//! The node's plain configuration, built by `bin/swarmd` from its flags.

use std::path::PathBuf;
use std::time::Duration;

use crate::NodeError;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// State directory (`-d`).
    pub state_dir: PathBuf,
    /// Control API socket path.
    pub listen_control_api: PathBuf,
    /// Remote API listen address, `host:port` (port 0 picks one).
    pub listen_remote_api: String,
    /// Address advertised to other nodes; empty means the listen address, or `0.0.0.0:<port>`
    /// for a wildcard one, which the raft leader replaces with the address it sees a joining
    /// manager at (as SwarmKit does).
    pub advertise_remote_api: String,
    /// The IP address this node's VXLAN traffic leaves from and arrives at
    /// (`--data-path-addr`); `None`: the IP of `advertise_remote_api` if it has one, else the
    /// address the managers see the node at.
    pub data_path_addr: Option<std::net::IpAddr>,
    /// The UDP port of the WireGuard tunnel encrypted networks' traffic crosses between nodes
    /// (`--wireguard-port`, 51820).
    pub wireguard_port: u16,
    /// The node-local UDP port encrypted networks' VXLAN devices use, routed into the tunnel and
    /// never on the wire (`--encrypted-vxlan-port`, 4788).
    pub encrypted_vxlan_port: u16,
    /// Hostname to report; empty means the OS hostname.
    pub hostname: String,
    /// Raft ticks without a leader before an election.
    pub election_tick: u32,
    /// Raft heartbeat interval in ticks.
    pub heartbeat_tick: u32,
    /// Length of one raft tick (1 s in SwarmKit; tests may shorten it).
    pub tick: Duration,
    /// Raft entries between snapshots.
    pub snapshot_interval: u64,
    /// Raft entries already in a snapshot kept in the log for slow followers.
    pub log_entries_for_slow_followers: u64,
    /// Manager to join on a first start (`--join-addr`); empty creates a new cluster.
    pub join_addr: String,
    /// Join token (`--join-token`); its role decides the node's.
    pub join_token: String,
    /// Availability this node asks for when it joins.
    pub availability: api::node_spec::Availability,
    /// Validity of the node certificates this manager's CA issues, instead of the cluster's
    /// NodeCertExpiry: swarmd's test option, so renewal can be watched in seconds.
    pub cert_expiry_override: Option<Duration>,
    /// Which executor runs tasks (`--executor`).
    pub executor: crate::ExecutorKind,
    /// Docker Engine API endpoint (`--engine-addr`).
    pub engine_addr: String,
    /// Restart this manager as the only member of a new raft cluster, keeping its state
    /// (`--force-new-cluster`).
    pub force_new_cluster: bool,
    /// Default address pool of a new cluster (`--default-addr-pool`, Docker's `swarm init`
    /// flag): the subnets overlay networks without one of their own are cut from; empty means
    /// 10.0.0.0/8. Recorded in the cluster object when this node creates the cluster.
    pub default_addr_pool: Vec<String>,
    /// Length of the subnets cut from it (`--default-addr-pool-mask-length`); 0 means 24.
    pub default_addr_pool_mask_length: u32,
    /// Create the cluster with autolock on (`--autolock`; ignored once the cluster exists).
    pub autolock: bool,
    /// The key this manager's key file is locked with (`--unlock-key`, parsed).
    pub unlock_key: Option<UnlockKey>,
    /// Generic resources this node advertises to the scheduler (`--generic-node-resources`,
    /// parsed by `api::genericresource::parse_cmd`).
    pub generic_resources: Vec<api::GenericResource>,
}

/// An unlock key's bytes; `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey(pub Vec<u8>);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

impl NodeConfig {
    /// The data path address to announce: `--data-path-addr`, else the IP of
    /// `--advertise-remote-api` when it names a specific one.
    pub fn data_path_ip(&self) -> Option<std::net::IpAddr> {
        self.data_path_addr.or_else(|| {
            let (host, _) = self.advertise_remote_api.rsplit_once(':')?;
            host.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .ok()
                .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        })
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            state_dir: PathBuf::from("/var/lib/swarmd"),
            listen_control_api: PathBuf::from("/var/run/swarmd.sock"),
            listen_remote_api: "0.0.0.0:4242".into(),
            advertise_remote_api: String::new(),
            data_path_addr: None,
            wireguard_port: netplane::tunnel::WIREGUARD_PORT,
            encrypted_vxlan_port: netplane::tunnel::ENCRYPTED_VXLAN_PORT,
            hostname: String::new(),
            election_tick: 10,
            heartbeat_tick: 1,
            tick: Duration::from_secs(1),
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            join_addr: String::new(),
            join_token: String::new(),
            availability: api::node_spec::Availability::Active,
            cert_expiry_override: None,
            executor: crate::ExecutorKind::Auto,
            engine_addr: "unix:///var/run/docker.sock".into(),
            force_new_cluster: false,
            default_addr_pool: Vec::new(),
            default_addr_pool_mask_length: 0,
            autolock: false,
            unlock_key: None,
            generic_resources: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// Checks the values that can be checked before touching anything.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.heartbeat_tick == 0 {
            return Err(NodeError::Config(
                "--heartbeat-tick must be at least 1".into(),
            ));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(NodeError::Config(
                "--election-tick must be greater than --heartbeat-tick".into(),
            ));
        }
        if self.tick.is_zero() {
            return Err(NodeError::Config("raft tick must be positive".into()));
        }
        if self.snapshot_interval == 0 {
            return Err(NodeError::Config(
                "snapshot interval must be positive".into(),
            ));
        }
        let pool_given =
            !self.default_addr_pool.is_empty() || self.default_addr_pool_mask_length != 0;
        if pool_given && !self.join_addr.is_empty() {
            return Err(NodeError::Config(
                "--default-addr-pool and --default-addr-pool-mask-length apply only to a new cluster, not with --join-addr".into(),
            ));
        }
        if let Err(e) = manager::bootstrap::address_pool(
            &self.default_addr_pool,
            self.default_addr_pool_mask_length,
        ) {
            return Err(NodeError::Config(format!("--default-addr-pool: {e}")));
        }
        check_tunnel_ports(self.wireguard_port, self.encrypted_vxlan_port)?;
        if self.cert_expiry_override.is_some_and(|d| d.is_zero()) {
            return Err(NodeError::Config(
                "certificate expiry must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The tunnel's ports: neither 0, nor VXLAN's port (4789, the plain networks'), nor each other;
/// the encrypted VXLAN one from 1024 to 32767.
fn check_tunnel_ports(wireguard: u16, encrypted_vxlan: u16) -> Result<(), NodeError> {
    let vxlan = netplane::VXLAN_PORT;
    for (flag, port) in [
        ("--wireguard-port", wireguard),
        ("--encrypted-vxlan-port", encrypted_vxlan),
    ] {
        if port == 0 {
            return Err(NodeError::Config(format!(
                "{flag} must be a UDP port from 1 to 65535"
            )));
        }
        if port == vxlan {
            return Err(NodeError::Config(format!(
                "{flag} {port} is the VXLAN port of plain networks"
            )));
        }
    }
    // Every UDP packet to or from it is routed into the tunnel and guarded: a well-known port
    // (DNS) or one of the kernel's default ephemeral ports would take other traffic with it.
    if !(1024..32768).contains(&encrypted_vxlan) {
        return Err(NodeError::Config(format!(
            "--encrypted-vxlan-port {encrypted_vxlan}: every UDP packet to or from it is routed \
             into the tunnel, so it must be one nothing else uses, from 1024 to 32767"
        )));
    }
    if wireguard == encrypted_vxlan {
        return Err(NodeError::Config(format!(
            "--wireguard-port and --encrypted-vxlan-port must differ (both {wireguard})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_error(pools: &[&str], mask: u32, join: &str) -> Option<String> {
        let config = NodeConfig {
            default_addr_pool: pools.iter().map(|p| p.to_string()).collect(),
            default_addr_pool_mask_length: mask,
            join_addr: join.into(),
            ..NodeConfig::default()
        };
        config.validate().err().map(|e| e.to_string())
    }

    #[test]
    fn default_address_pool_flags_are_checked_before_start() {
        assert_eq!(pool_error(&[], 0, ""), None);
        assert_eq!(pool_error(&["10.20.0.0/16"], 20, ""), None);
        assert_eq!(pool_error(&[], 16, ""), None, "the built-in pool in /16s");
        let bad = pool_error(&["bogus"], 0, "").expect("bad pool");
        assert!(
            bad.contains("--default-addr-pool: invalid base pool \"bogus\""),
            "{bad}"
        );
        let small = pool_error(&["10.20.0.0/16"], 8, "").expect("mask shorter than the pool");
        assert!(small.contains("cannot be cut into /8 subnets"), "{small}");
        let join = pool_error(&["10.20.0.0/16"], 0, "127.0.0.1:4242").expect("join");
        assert!(join.contains("apply only to a new cluster"), "{join}");
    }

    #[test]
    fn tunnel_ports_must_be_set_and_apart_from_vxlan_and_each_other() {
        let ok = NodeConfig {
            wireguard_port: 51900,
            encrypted_vxlan_port: 4800,
            ..NodeConfig::default()
        };
        ok.validate().expect("other ports are fine");
        NodeConfig::default().validate().expect("the defaults");
        for (wg, vx, says) in [
            (0, 4788, "--wireguard-port must be a UDP port"),
            (51820, 0, "--encrypted-vxlan-port must be a UDP port"),
            (4789, 4788, "--wireguard-port 4789 is the VXLAN port"),
            (51820, 4789, "--encrypted-vxlan-port 4789 is the VXLAN port"),
            (5000, 5000, "must differ (both 5000)"),
            (51820, 53, "--encrypted-vxlan-port 53: every UDP packet"),
            (51820, 40000, "from 1024 to 32767"),
        ] {
            let c = NodeConfig {
                wireguard_port: wg,
                encrypted_vxlan_port: vx,
                ..NodeConfig::default()
            };
            let err = c.validate().expect_err("refused").to_string();
            assert!(err.contains(says), "{wg} {vx}: {err}");
        }
    }
}
