//! The crate's error type: what stops the scheduler. Failures to place or write single tasks are
//! not errors; they are retried at a later pass.

/// Why the scheduler cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's watch stream ended, so the scheduler would miss changes.
    #[error("store watch closed")]
    WatchClosed,
}
