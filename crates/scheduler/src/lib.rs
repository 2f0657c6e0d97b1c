//! The scheduler, after SwarmKit's `manager/scheduler`: a leader-only subsystem that places PENDING
//! tasks on nodes. It keeps a view of every node (resources left, tasks, HOST-mode ports, recent
//! failures) built from the store and kept current from its events; after each burst of commits it
//! runs the filter pipeline (Ready, Resources, Plugins, Constraints, Platform, Host ports, Max
//! replicas), spreads each group of identical tasks over the nodes that pass, honouring placement
//! preferences, and writes ASSIGNED tasks (or the reason none fits) back in batches.
//!
//! `filter` holds the pipeline and explanations, `nodeinfo` and `nodeset` the node bookkeeping,
//! `placement` the choice of nodes, `pass` one scheduling pass, `scheduler` the store-watching
//! loop. Cluster volumes (CSI) are not scheduled yet.
//!
//! **Invariant:** the scheduler talks to nothing but the store, and only ever writes tasks that are
//! PENDING (to ASSIGNED, to SHUTDOWN, or their `status.err`).

#![forbid(unsafe_code)]

mod error;
mod filter;
mod nodeinfo;
mod nodeset;
mod pass;
mod placement;
mod scheduler;

pub use error::Error;

/// The scheduler's maps by ID (and by node index): the store's fast hasher instead of SipHash.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, store::IdHash>;
/// A set of the same kind.
pub(crate) type IdSet<K> = std::collections::HashSet<K, store::IdHash>;
pub use scheduler::{
    ASSIGNED_MESSAGE, COMMIT_DEBOUNCE_GAP, CONFIRMED_MESSAGE, MAX_LATENCY, Scheduler,
};

#[cfg(test)]
mod tests;
