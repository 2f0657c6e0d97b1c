//! The allocator, after SwarmKit's `manager/allocator`: a leader-only subsystem that reserves the
//! cluster-wide published ports of services (INGRESS mode; HOST-mode ports are only recorded) and then
//! moves NEW tasks of allocated services to PENDING for the scheduler. Networks, IPAM, virtual IPs and
//! node attachments are not allocated here yet: tasks that reference networks move on regardless.
//!
//! `ports` holds the pure port bookkeeping and the control API's conflict check; `allocator` holds the
//! store-watching loop.

#![forbid(unsafe_code)]

mod allocator;
mod error;
mod networks;
mod ports;

pub use allocator::{Allocator, RETRY_INTERVAL};
pub use error::Error;
pub use networks::{DEFAULT_DRIVER, VXLAN_ID_LIST_OPTION, VXLAN_ID_START};
pub use ports::{DYNAMIC_PORT_END, DYNAMIC_PORT_START, check_port_conflicts};

#[cfg(test)]
mod tests;
