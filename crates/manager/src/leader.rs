//! The leader lifecycle: leader-only subsystems (allocator, orchestrators, scheduler, task
//! reaper, ...) start when this manager becomes raft leader and stop when it loses leadership
//! or shuts down (SwarmKit manager.go becomeLeader / becomeFollower). Each runs as one task with
//! its own span under a child cancellation token; one that exits on its own while we are still
//! leader is logged as an error and restarted after a pause, never silently dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use raft::RaftNode;
use store::MemoryStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// How long a stopping subsystem gets before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause before restarting a subsystem that exited on its own, so a crash loop cannot spin.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// What a subsystem's `run` returns, boxed.
pub type SubsystemRun = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A leader-only subsystem: its name (for logs) and how to start one instance.
pub struct Subsystem {
    /// Name used in the span and in logs.
    pub name: &'static str,
    /// Builds and runs one instance until the token is cancelled.
    pub start: Box<dyn Fn(MemoryStore, CancellationToken) -> SubsystemRun + Send + Sync>,
}

impl Subsystem {
    /// A subsystem built by `start`.
    pub fn new<F, Fut, E>(name: &'static str, start: F) -> Subsystem
    where
        F: Fn(MemoryStore, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        Subsystem {
            name,
            start: Box::new(move |store, token| {
                let fut = start(store, token);
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// Runs the subsystems whenever this manager is leader, until `shutdown` fires.
pub async fn run(
    raft: Arc<RaftNode>,
    store: MemoryStore,
    subsystems: Arc<Vec<Subsystem>>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        if raft.is_leader() {
            info!("becoming leader: starting leader subsystems");
            let term = shutdown.child_token();
            lead(&raft, &store, &subsystems, &term, &mut metrics, &shutdown).await;
            term.cancel();
            if shutdown.is_cancelled() {
                return;
            }
            info!("lost leadership: leader subsystems stopped");
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

fn spawn_one(
    set: &mut JoinSet<(usize, Result<(), String>)>,
    idx: usize,
    sub: &Subsystem,
    store: &MemoryStore,
    term: &CancellationToken,
) {
    let fut = (sub.start)(store.clone(), term.clone());
    let span = info_span!("subsystem", name = sub.name);
    set.spawn(async move { (idx, fut.await) }.instrument(span));
}

/// One leadership term: runs every subsystem until leadership is lost or `shutdown` fires,
/// then stops them within the grace period.
async fn lead(
    raft: &RaftNode,
    store: &MemoryStore,
    subsystems: &[Subsystem],
    term: &CancellationToken,
    metrics: &mut tokio::sync::watch::Receiver<raft::RaftMetrics>,
    shutdown: &CancellationToken,
) {
    let mut set = JoinSet::new();
    for (idx, sub) in subsystems.iter().enumerate() {
        spawn_one(&mut set, idx, sub, store, term);
    }
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            changed = metrics.changed() => {
                if changed.is_err() || !raft.is_leader() {
                    break;
                }
            }
            Some(done) = set.join_next() => {
                let (idx, result) = match done {
                    Ok(r) => r,
                    Err(e) => {
                        error!("leader subsystem task failed: {e}");
                        continue;
                    }
                };
                let name = subsystems[idx].name;
                match result {
                    Ok(()) => error!(subsystem = name, "leader subsystem exited unexpectedly; restarting"),
                    Err(e) => error!(subsystem = name, "leader subsystem failed: {e}; restarting"),
                }
                tokio::select! {
                    () = term.cancelled() => break,
                    () = tokio::time::sleep(RESTART_PAUSE) => {}
                }
                spawn_one(&mut set, idx, &subsystems[idx], store, term);
            }
        }
    }
    term.cancel();
    let drain = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
        warn!("leader subsystems did not stop within {STOP_GRACE:?}; aborting them");
        set.abort_all();
    }
}
