//! Orchestrators (spec 5.3, after SwarmKit's `manager/orchestrator`): leader subsystems that turn
//! services into tasks. `replicated` keeps `replicas` slots per replicated service, `global` one task
//! per eligible node, `jobs` runs replicated and global jobs; they share the task helpers of `task`,
//! the `restart` supervisor (replacements after failures, with delay and attempt limits) and the
//! `update` supervisor (rolling updates). The `reaper` deletes old and removed tasks; the
//! `constraint_enforcer` rejects assigned tasks whose node stopped fitting them. Scheduling,
//! allocation and running tasks are other subsystems' work.

#![forbid(unsafe_code)]

pub mod constraint_enforcer;
mod error;
pub mod global;
pub mod jobs;
pub mod reaper;
mod reconcile;
pub mod replicated;
pub mod restart;
pub mod task;
pub mod update;

pub use error::Error;
