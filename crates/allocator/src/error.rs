//! The crate's error type: what can make a port allocation fail, and what stops the allocator.

use store::StoreError;

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
    /// A store write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
