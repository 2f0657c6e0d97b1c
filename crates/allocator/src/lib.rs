//! The allocator, after SwarmKit's `manager/allocator`: a leader-only subsystem that gives networks
//! their driver state (the driver's name and, for overlay networks, VXLAN IDs from 4096 up),
//! reserves the cluster-wide published ports of services (INGRESS mode; HOST-mode ports are only
//! recorded), gives services their virtual IPs, tasks and nodes their network attachments with an
//! address on each overlay network, and then moves NEW tasks of allocated services to PENDING for
//! the scheduler.
//!
//! `networks` holds the pure driver state and VXLAN ID bookkeeping, `ipam` the pure subnet and
//! address bookkeeping (and the control API's network check), `ports` the port bookkeeping and the
//! control API's conflict check, `endpoints` the services' VIPs, `attachments` those of tasks and
//! nodes; `allocator` holds the store-watching loop.

#![forbid(unsafe_code)]

mod allocator;
mod attachments;
mod endpoints;
mod error;
pub mod ipam;
mod networks;
mod ports;

pub use allocator::{Allocator, RETRY_INTERVAL};
pub use error::Error;
pub use networks::{DEFAULT_DRIVER, VXLAN_ID_LIST_OPTION, VXLAN_ID_START};
pub use ports::{DYNAMIC_PORT_END, DYNAMIC_PORT_START, check_port_conflicts};

#[cfg(test)]
mod attachment_tests;
#[cfg(test)]
mod tests;
