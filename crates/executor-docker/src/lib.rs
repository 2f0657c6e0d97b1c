//! The Docker executor (spec 6): runs each task as a container of a Docker Engine, reached with
//! bollard. [`DockerExecutor`] describes the node from the engine; its [`DockerController`]s take
//! one task's container through the agent's [`agent::Controller`] steps. The container's name is
//! the task's name, which is all a controller needs to find it again after a swarmd restart.
//!
//! The task runner, the states it reports and the retries belong to the agent; this crate only
//! talks to the engine, and writes the task's secret and config files (`agent::taskfiles`) that its
//! container bind-mounts, and keeps the node's local networks (`network.rs`): one bridge network
//! per swarm network its tasks use, with the swarm network's subnet. Logs are not handled yet.

#![forbid(unsafe_code)]

mod config;
mod controller;
mod engine;
mod error;
mod executor;
mod network;

pub use config::{
    ContainerConfig, SERVICE_NAME_LABEL, SYSTEM_LABEL_PREFIX, TASK_ID_LABEL, container_name,
};
pub use controller::DockerController;
pub use executor::DockerExecutor;
pub use network::{
    Attachment, LOCAL_NETWORK_LABEL, NETWORK_ID_LABEL, NETWORK_NAME_LABEL, SWEEP_MIN_AGE,
    local_network_name,
};
