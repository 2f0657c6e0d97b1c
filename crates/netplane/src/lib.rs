//! A node's data plane for swarm networks (Linux): what SwarmKit leaves to the Docker engine's
//! libnetwork, done by swarmd itself for both executors.
//!
//! The leader sends each node a [`NodeView`] (proto/netplane.proto) of the networks it takes part
//! in; [`Dataplane::apply`] makes the kernel match it:
//! - `overlay`: per network a bridge and a VXLAN device with the network's VNI, static forwarding
//!   and neighbour entries for the other nodes' addresses (no flooding, no learning);
//! - `tunnel`: the userspace WireGuard tunnel encrypted networks' VXLAN packets go through;
//! - `sandbox`: a network namespace per process task on networks, a veth on each bridge;
//! - `dns`: the resolver tasks use as their nameserver (`<service>`, `tasks.<service>`, aliases,
//!   task names; other names forwarded to the node's own resolvers);
//! - `lb`: connections to a virtual IP spread over the service's running tasks, the routing
//!   mesh (INGRESS-mode published ports answering on every node), and the HOST-mode ports of
//!   sandboxed tasks forwarded from their node ([`Dataplane::publish_host_ports`]).
//!
//! Everything it makes in the kernel carries a name or tag of its own, so a start after a crash
//! removes what the last run left, and a clean stop removes all of it.

use std::net::IpAddr;
use std::path::PathBuf;

pub use api::netplane::{NetworkView, NodeView};

/// What the data plane could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel request (netlink, namespace, sysctl) failed.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An encrypted network, on a node whose WireGuard tunnel could not start: its traffic is
    /// never sent in clear instead.
    #[error("network {network} is encrypted and this node cannot encrypt: {why}")]
    CannotEncrypt { network: String, why: String },
    /// Several of the above, from one view's application (each part done that could be).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<Error>),
}

impl Error {
    /// `Ok` for no errors, the error for one, [`Error::Several`] for more.
    pub fn from_all(mut errors: Vec<Error>) -> Result<(), Error> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Several(errors)),
        }
    }
}

/// VXLAN's IANA port, which every node uses.
pub const VXLAN_PORT: u16 = 4789;

/// How the node's data plane is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The IP address VXLAN packets leave from and arrive at; `None`: the address of the route
    /// towards the manager.
    pub data_path_addr: Option<IpAddr>,
    /// The UDP port of VXLAN (4789, the IANA port, unless a test runs several nodes in one
    /// namespace).
    pub vxlan_port: u16,
    /// The node's state directory, for what must survive a restart.
    pub state_dir: PathBuf,
    /// The UDP port WireGuard packets of encrypted networks leave from and arrive at
    /// ([`tunnel::WIREGUARD_PORT`] unless a test runs several nodes in one namespace).
    pub wireguard_port: u16,
    /// The VXLAN port of encrypted networks' devices, routed into the tunnel, never on the wire
    /// ([`tunnel::ENCRYPTED_VXLAN_PORT`] likewise).
    pub encrypted_vxlan_port: u16,
}

pub mod dns;
pub mod lb;
mod netlink;
pub mod overlay;
mod plane;
pub mod sandbox;
pub mod tunnel;

pub use plane::{Dataplane, SandboxError};
pub use sandbox::TaskNet;

/// A network namespace a task runs in, named by a path the kernel resolves (`/run/netns/<name>`
/// for a process task's, `/proc/<pid>/ns/net` for a container's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetnsPath(pub PathBuf);
