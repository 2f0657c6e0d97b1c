//! The agent every node runs (spec 6): the [`Executor`] trait that executors implement, the
//! session with a manager's dispatcher ([`run`]), the network bootstrap keys it hands the
//! executor ([`NetworkKeys`]), the worker's task database ([`TaskDb`]) and
//! one runner per task that walks it through its states. The agent never imports the store: it knows the cluster only through the Dispatcher
//! API.

mod agent;
pub mod db;
pub mod dependencies;
pub mod executor;
pub mod logs;
pub mod networkkeys;
pub mod remotes;
mod runner;
pub mod taskfiles;
mod worker;

#[cfg(test)]
mod tests;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use agent::{AgentConfig, AgentError, Connector, LocalManager, SessionObserver, run};
pub use db::{StoredTask, TaskDb};
pub use dependencies::{DependencyError, DependencyGetter, Secret};
pub use executor::{
    Checkpoint, Controller, Executor, ExecutorError, ExitStatus, RuntimeState, Statuses,
};
pub use logs::{LogOptions, LogSink};
pub use networkkeys::{NetworkKey, NetworkKeys};
pub use remotes::Remotes;
pub use taskfiles::{TaskFileSet, TaskFiles};
