//! The node's resolver for tasks on swarm networks.
//!
//! SKELETON (the `plane` helper replaces it): the interface `plane.rs` calls.

use crate::{Error, NodeView};

/// Answers tasks' DNS queries on each network's gateway address (port 53, UDP and TCP).
#[derive(Debug, Default)]
pub struct Resolver {}

impl Resolver {
    /// A resolver that serves nothing until its first [`Resolver::update`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the names of `view` from now on, listening on the gateway of each of its networks
    /// (which the overlay has put on the network's bridge before this is called).
    pub async fn update(&self, _view: &NodeView) -> Result<(), Error> {
        Ok(())
    }

    /// Stops serving and closes every socket.
    pub async fn stop(&self) {}
}
