//! The crate's error type: what can make a port or network allocation fail, and what stops the
//! allocator.

use store::StoreError;

use crate::networks::{VXLAN_ID_END, VXLAN_ID_START};
use crate::ports::{DYNAMIC_PORT_END, DYNAMIC_PORT_START};

/// Why an allocation failed, or why the allocator cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's watch stream ended, so the allocator would miss changes.
    #[error("store watch closed")]
    WatchClosed,
    /// A published port another service already holds.
    #[error("port {port}/{protocol} is already in use")]
    PortInUse {
        /// `tcp`, `udp` or `sctp`.
        protocol: &'static str,
        /// The published port.
        port: u32,
    },
    /// Every port of the dynamic range is taken.
    #[error(
        "no free {protocol} port left in the dynamic range {DYNAMIC_PORT_START}-{DYNAMIC_PORT_END}"
    )]
    PortsExhausted {
        /// `tcp`, `udp` or `sctp`.
        protocol: &'static str,
    },
    /// A published port above 65535.
    #[error("published port {port} is out of range")]
    PortOutOfRange {
        /// The published port.
        port: u32,
    },
    /// A network driver that needs a plugin, which swarmd has not.
    #[error("could not resolve network driver {name}")]
    UnknownNetworkDriver {
        /// The driver's name.
        name: String,
    },
    /// A network that already holds its driver state.
    #[error("network {id} already allocated")]
    NetworkAlreadyAllocated {
        /// The network's ID.
        id: String,
    },
    /// A VNI given in the options that another network holds.
    #[error("could not assign vxlan id {vni}: it is already in use")]
    VxlanIdInUse {
        /// The VNI.
        vni: u32,
    },
    /// A VNI in the options that is not a 24-bit number.
    #[error("invalid vxlan id value {value:?} passed")]
    InvalidVxlanId {
        /// The value as written.
        value: String,
    },
    /// Every VNI of the range is taken.
    #[error("no free vxlan id left in {VXLAN_ID_START}-{VXLAN_ID_END}")]
    VxlanIdsExhausted,
    /// An IPAM request failed (subnets, gateways, addresses).
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// An attachment or VIP on a network that is not allocated yet (or is gone).
    #[error("network {id} not allocated yet")]
    NetworkNotAllocated {
        /// The network's ID.
        id: String,
    },
    /// A store write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
