//! What the crates' tests share, so that each helper is written once: bounded waits on a
//! raft-less store ([`wait`]), a fake agent that plays every node's task runners by writing task
//! states into the store ([`agent`]), and object fixtures ([`fixtures`]).
//!
//! A dev-dependency only: no library or binary depends on it. It sits on `api` and `store`, so
//! the crates above the store (allocator, orchestrator, scheduler, dispatcher, manager, raft)
//! may use it; `api` and `store` cannot (their tests would see a second copy of their own types).

#![forbid(unsafe_code)]

pub mod agent;
pub mod fixtures;
pub mod wait;

pub use agent::FakeAgent;
pub use wait::{Outcome, poll_until, wait_for};
