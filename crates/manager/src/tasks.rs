//! Named long-running tasks that must not end while their owner runs: a manager's servers,
//! leader lifecycle and manager list, a node's agent, renewal and role supervision. One that ends
//! before its owner is stopped (it returns, fails or panics) is a [`TaskEnded`], which the owner
//! treats as fatal: the process exits non-zero with one line naming the task and the cause, and a
//! supervisor restarts it clean, rather than running on half-dead. Leader subsystems are not such
//! tasks: `leader.rs` restarts those.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tracing::warn;

/// A task of a [`TaskSet`] ended while its owner was running.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{task} stopped unexpectedly: {why}")]
pub struct TaskEnded {
    /// The task's name.
    pub task: &'static str,
    /// What it returned, or its panic.
    pub why: String,
}

/// Tasks that run as long as their owner, each under a name.
#[derive(Default)]
pub struct TaskSet {
    set: JoinSet<Result<(), String>>,
    names: HashMap<Id, &'static str>,
}

impl TaskSet {
    /// An empty set.
    pub fn new() -> TaskSet {
        TaskSet::default()
    }

    /// Runs `fut` as the task `name`; it should end only when its owner's shutdown token fires.
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let handle = self.set.spawn(fut);
        self.names.insert(handle.id(), name);
    }

    /// Like [`TaskSet::spawn`] for a task that returns nothing.
    pub fn spawn_unit<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            fut.await;
            Ok(())
        });
    }

    /// Waits for the next task to end and says which and why; never returns while every task
    /// runs (nor when there is none). Cancel-safe.
    pub async fn next_ended(&mut self) -> TaskEnded {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, why) = match joined {
            Ok((id, Ok(()))) => (id, "it returned".to_string()),
            Ok((id, Err(e))) => (id, e),
            Err(e) => (e.id(), e.to_string()),
        };
        TaskEnded {
            task: self.names.remove(&id).unwrap_or("a task"),
            why,
        }
    }

    /// Waits up to `grace` for every task to end (their owner has fired their shutdown token),
    /// then aborts the rest. A task that failed on its way out is logged.
    pub async fn drain(&mut self, grace: Duration) {
        let drain = async {
            while let Some(joined) = self.set.join_next_with_id().await {
                let (id, outcome) = match joined {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (e.id(), Err(e.to_string())),
                };
                let name = self.names.remove(&id).unwrap_or("a task");
                if let Err(e) = outcome {
                    warn!(task = name, "task failed while stopping: {e}");
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!("tasks did not stop within {grace:?}; aborting them");
            self.set.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_fails_or_returns_is_named_with_its_cause() {
        let mut tasks = TaskSet::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
        tasks.spawn("injected failure", async move {
            let what = rx.await.map_err(|e| e.to_string())?;
            match what {
                "panic" => panic!("injected panic"),
                "fail" => Err("injected error".to_string()),
                _ => Ok(()),
            }
        });
        tasks.spawn_unit("long runner", std::future::pending());
        tx.send("panic").expect("send");
        let ended = tasks.next_ended().await;
        assert_eq!(ended.task, "injected failure");
        assert!(ended.why.contains("injected panic"), "{ended}");

        for (what, expected) in [("fail", "injected error"), ("return", "it returned")] {
            let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
            tasks.spawn("injected failure", async move {
                match rx.await.map_err(|e| e.to_string())? {
                    "fail" => Err("injected error".to_string()),
                    _ => Ok(()),
                }
            });
            tx.send(what).expect("send");
            let ended = tasks.next_ended().await;
            assert_eq!(
                ended.to_string(),
                format!("injected failure stopped unexpectedly: {expected}")
            );
        }
        // The long runner never ends on its own.
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.next_ended()).await;
        assert!(waited.is_err(), "{waited:?}");
        tasks.drain(Duration::from_millis(50)).await;
    }
}
