//! Bounded waits with a reason: [`wait_for`] re-checks a condition on the store after every commit,
//! [`poll_until`] polls any condition. Both fail with what they waited for and the last state seen,
//! and both run on tokio's clock, so a test on a paused clock waits in virtual time.

use std::fmt::Write as _;
use std::time::Duration;

use store::{By, MemoryStore, ReadTx, WatchFilter};

/// Waits until `check` returns `Some` on a view of `store`, re-checking after every store commit;
/// panics after `limit`, naming `what` and listing the store's nodes, services and tasks.
pub async fn wait_for<T>(
    limit: Duration,
    store: &MemoryStore,
    what: &str,
    mut check: impl FnMut(&ReadTx<'_>) -> Option<T>,
) -> T {
    let mut watcher = store.watch(WatchFilter::all());
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = store.view(&mut check) {
            return found;
        }
        match tokio::time::timeout_at(deadline, watcher.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("store closed while waiting for {what}"),
            Err(_) => panic!(
                "timed out after {limit:?} waiting for {what}; {}",
                store.view(describe)
            ),
        }
    }
}

/// Polls `cond` every `every` until it holds; panics after `limit`, naming `what`.
pub async fn poll_until(limit: Duration, every: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The nodes (state), services (published ports) and tasks (slot, node, desired and observed
/// state, error) of a store view, one per line: what a timed-out wait prints.
pub fn describe(tx: &ReadTx<'_>) -> String {
    let mut out = String::from("nodes:");
    for n in tx.find_nodes(By::All) {
        let state = n.status.as_ref().map_or(0, |s| s.state);
        let _ = write!(out, "\n  {} state={state}", n.id);
    }
    out.push_str("\nservices:");
    for s in tx.find_services(By::All) {
        let published: Option<Vec<u32>> = s
            .endpoint
            .as_ref()
            .map(|e| e.ports.iter().map(|p| p.published_port).collect());
        let _ = write!(out, "\n  {} published={published:?}", s.id);
    }
    out.push_str("\ntasks:");
    for t in tx.find_tasks(By::All) {
        let (state, err) = t
            .status
            .as_ref()
            .map_or((0, ""), |s| (s.state, s.err.as_str()));
        let _ = write!(
            out,
            "\n  {} slot={} node={:?} desired={} observed={state} err={err:?}",
            t.id, t.slot, t.node_id, t.desired_state
        );
    }
    out
}
