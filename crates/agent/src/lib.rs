//! The agent every node runs (spec 6): the [`Executor`] trait that executors implement, and (as
//! the agent issue goes on) the dispatcher session, the worker's task database and the task
//! runners. The agent never imports the store: it knows the cluster only through the Dispatcher
//! API.

pub mod executor;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use executor::{Checkpoint, Controller, Executor, ExecutorError, ExitStatus, RuntimeState};
