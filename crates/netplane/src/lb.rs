//! Virtual IP load balancing and the routing mesh.
//!
//! SKELETON (the `lb` helper replaces it): the interface `plane.rs` calls.

use crate::{Error, NetnsPath, NodeView};

/// Programs the kernel's packet filter: in each task's namespace, connections to a service's
/// virtual IP go to one of its running tasks; in the node's own namespace, INGRESS-mode
/// published ports go to a running task of their service on any node.
#[derive(Debug, Default)]
pub struct Balancer {}

impl Balancer {
    /// A balancer that has programmed nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The routing mesh in the node's own namespace, for the INGRESS ports of `view`.
    pub async fn apply_node(&self, _view: &NodeView) -> Result<(), Error> {
        Ok(())
    }

    /// Virtual IP balancing inside one task's namespace, for the networks in `networks` (IDs).
    pub async fn apply_sandbox(
        &self,
        _netns: &NetnsPath,
        _networks: &[String],
        _view: &NodeView,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Removes every rule this balancer (or an earlier process's, after a crash) made in the
    /// node's own namespace.
    pub async fn remove_node_rules(&self) -> Result<(), Error> {
        Ok(())
    }
}
