//! The crate's error type: why an orchestrator loop (replicated, global, jobs, task reaper) stopped.
//! Failures of single writes inside a loop are logged and skipped, not returned.

/// Why an orchestrator loop cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's watch stream ended, so the loop would miss changes.
    #[error("store watch closed")]
    WatchClosed,
}
