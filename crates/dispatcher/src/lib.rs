//! The dispatcher (spec 5.7, after SwarmKit's `manager/dispatcher`): the leader's end of the agent
//! protocol. Nodes open a session (registration, READY with their description), beat to stay
//! READY (else DOWN `heartbeat failure`), receive their task assignments as a COMPLETE set then
//! INCREMENTAL changes (with the secrets and configs those tasks reference, and no others), and
//! report task status, which is written in batches. It talks to the rest of the manager only
//! through the store; deciding what runs where is the orchestrators' and the scheduler's, running
//! it the agent's. Volumes are not dispatched yet.

#![forbid(unsafe_code)]

mod assignments;
mod dispatcher;
mod error;
mod nodes;
mod service;
mod session;
mod term;

pub use dispatcher::{
    Config, DEFAULT_MANAGER_WEIGHT, Dispatcher, DispatcherStream, RunError, weighted_peer,
};
pub use error::DispatcherError;
pub use service::DispatcherService;

#[cfg(test)]
mod tests;
