//! Bounded waits with a reason: [`wait_for`] re-checks a condition on the store after every commit,
//! [`poll_until`] polls any condition. Both fail with what they waited for and the last state seen,
//! and both run on tokio's clock, so a test on a paused clock waits in virtual time.

use std::fmt::Write as _;
use std::time::Duration;

use store::{By, MemoryStore, ReadTx, WatchFilter};

/// What a condition of [`wait_for`] returns: `Option<T>` (`None`: not yet), or `Result<T, String>`
/// whose error says why not yet, which a timed-out wait prints.
pub trait Outcome<T> {
    /// The found value, or why there is none yet.
    fn into_result(self) -> Result<T, String>;
}

impl<T> Outcome<T> for Option<T> {
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T> Outcome<T> for Result<T, String> {
    fn into_result(self) -> Result<T, String> {
        self
    }
}

/// Waits until `check` returns a value on a view of `store`, re-checking after every store
/// commit; panics after `limit`, naming `what`, the last reason `check` gave and the store's nodes,
/// services and tasks.
pub async fn wait_for<T, O: Outcome<T>>(
    limit: Duration,
    store: &MemoryStore,
    what: &str,
    mut check: impl FnMut(&ReadTx<'_>) -> O,
) -> T {
    let mut watcher = store.watch(WatchFilter::all());
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let reason = match store.view(|tx| check(tx).into_result()) {
            Ok(found) => return found,
            Err(reason) => reason,
        };
        match tokio::time::timeout_at(deadline, watcher.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("store closed while waiting for {what}"),
            Err(_) => panic!(
                "timed out after {limit:?} waiting for {what}: {reason}\n{}",
                store.view(describe)
            ),
        }
    }
}

/// Polls `cond` every `every` until it holds; panics after `limit`, naming `what`.
pub async fn poll_until(
    limit: Duration,
    every: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The nodes (state), services (spec version, update state, published ports) and tasks (service,
/// slot, node, desired and observed state, error, spec version) of a store view, one per line: what a timed-out wait prints.
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
        let _ = write!(
            out,
            "\n  {} spec_version={:?} update={:?} published={published:?}",
            s.id,
            s.spec_version.as_ref().map(|v| v.index),
            s.update_status.as_ref().map(|u| u.state)
        );
    }
    out.push_str("\ntasks:");
    for t in tx.find_tasks(By::All) {
        let (state, err) = t
            .status
            .as_ref()
            .map_or((0, ""), |s| (s.state, s.err.as_str()));
        let _ = write!(
            out,
            "\n  {} service={} slot={} node={:?} desired={} observed={state} err={err:?} spec_version={:?}",
            t.id,
            t.service_id,
            t.slot,
            t.node_id,
            t.desired_state,
            t.spec_version.as_ref().map(|v| v.index)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_for_sees_a_later_commit() {
        let store = MemoryStore::new(None);
        let writer = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer
                .update(|tx| tx.create_node(crate::fixtures::node("n1")))
                .await
                .expect("write");
        });
        let node = wait_for(Duration::from_secs(5), &store, "n1", |tx| tx.get_node("n1")).await;
        assert_eq!(node.id, "n1");
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 5s waiting for n1: not there")]
    async fn wait_for_fails_with_the_last_reason() {
        let store = MemoryStore::new(None);
        wait_for(Duration::from_secs(5), &store, "n1", |tx| {
            tx.get_node("n1").ok_or_else(|| "not there".to_string())
        })
        .await;
    }
}
