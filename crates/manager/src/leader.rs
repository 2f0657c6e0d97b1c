//! The leader lifecycle: leader-only subsystems (allocator, orchestrators, scheduler, task
//! reaper, ...) start when this manager becomes raft leader and stop when it loses leadership
//! or shuts down (SwarmKit manager.go becomeLeader / becomeFollower). Each runs as one task with
//! its own span under a child cancellation token. One that stops while we are still leader,
//! whether it returns, fails or panics, is logged as an error with its name and restarted after
//! a pause: 100 ms, doubled after each stop up to 10 s, and back to 100 ms once a run lasted 30 s.
//! Raft's metrics closing (its core stopped) ends the lifecycle with an error, which the manager
//! treats as fatal.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use raft::RaftNode;
use store::MemoryStore;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// How long a stopping subsystem gets before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// First pause before restarting a subsystem that stopped, so a crash loop cannot spin.
const RESTART_MIN: Duration = Duration::from_millis(100);
/// Longest pause before a restart: the pause doubles after each stop up to this.
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A run at least this long counts as healthy: the next restart pauses `RESTART_MIN` again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

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

/// Runs the subsystems whenever this manager is leader, until `shutdown` fires. An error means
/// raft's metrics closed while the manager runs: its raft core stopped.
pub async fn run(
    raft: Arc<RaftNode>,
    store: MemoryStore,
    subsystems: Arc<Vec<Subsystem>>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    const METRICS_CLOSED: &str = "raft's metrics closed: the raft member stopped";
    // Leadership only: `is_leader` reads these same metrics, published before it is woken.
    let mut metrics = raft.server_metrics();
    loop {
        // Two role changes can reach this task as one wake (a step-down, then leadership of a
        // later term): the subsystems of one term never serve another, so a new term restarts
        // them. Read (and marked seen) before `is_leader`, so a change after it wakes the loop.
        let led_term = metrics.borrow_and_update().vote.leader_id().term;
        if raft.is_leader() {
            info!("becoming leader: starting leader subsystems");
            telemetry::swarm::MANAGER_LEADER.set(1);
            let term = shutdown.child_token();
            let supervised = supervise(&store, &subsystems, &term);
            tokio::pin!(supervised);
            let closed = loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break false,
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            break true;
                        }
                        let now = metrics.borrow_and_update().vote.leader_id().term;
                        if !raft.is_leader() || now != led_term {
                            break false;
                        }
                    }
                    () = &mut supervised => unreachable!("supervise runs until its term is cancelled"),
                }
            };
            term.cancel();
            telemetry::swarm::MANAGER_LEADER.set(0);
            supervised.await;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if closed {
                return Err(METRICS_CLOSED.into());
            }
            info!("leadership of this term ended: leader subsystems stopped");
            continue;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            changed = metrics.changed() => if changed.is_err() {
                return Err(METRICS_CLOSED.into());
            },
        }
    }
}

/// When each running subsystem started, and the pause before its next restart.
struct Restarts {
    running: HashMap<Id, (usize, Instant)>,
    pauses: Vec<Duration>,
}

impl Restarts {
    /// Starts subsystem `idx` after `delay` (none at first) in its span under `term`.
    fn spawn(
        &mut self,
        set: &mut JoinSet<Result<(), String>>,
        idx: usize,
        sub: &Subsystem,
        store: &MemoryStore,
        term: &CancellationToken,
        delay: Duration,
    ) {
        let fut = (sub.start)(store.clone(), term.clone());
        let term = term.clone();
        let run = async move {
            if !delay.is_zero() {
                tokio::select! {
                    () = term.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            fut.await
        };
        let handle = set.spawn(run.instrument(info_span!("subsystem", name = sub.name)));
        self.running
            .insert(handle.id(), (idx, Instant::now() + delay));
    }

    /// The pause before restarting subsystem `idx`, which ran since `started`; doubles the next.
    fn pause(&mut self, idx: usize, started: Instant) -> Duration {
        if started.elapsed() >= HEALTHY_RUN {
            self.pauses[idx] = RESTART_MIN;
        }
        let pause = self.pauses[idx];
        self.pauses[idx] = (pause * 2).min(RESTART_MAX);
        pause
    }
}

/// One leadership term: runs every subsystem, restarting any that stops (see the module
/// comment), until `term` is cancelled; then stops them within the grace period.
async fn supervise(store: &MemoryStore, subsystems: &[Subsystem], term: &CancellationToken) {
    let mut set = JoinSet::new();
    let mut restarts = Restarts {
        running: HashMap::new(),
        pauses: vec![RESTART_MIN; subsystems.len()],
    };
    for (idx, sub) in subsystems.iter().enumerate() {
        restarts.spawn(&mut set, idx, sub, store, term, Duration::ZERO);
    }
    loop {
        let joined = tokio::select! {
            biased;
            () = term.cancelled() => break,
            Some(joined) = set.join_next_with_id() => joined,
        };
        let (id, outcome) = match joined {
            Ok((id, Ok(()))) => (id, "exited unexpectedly".to_string()),
            Ok((id, Err(e))) => (id, format!("failed: {e}")),
            Err(e) => (e.id(), format!("panicked: {e}")),
        };
        let Some((idx, started)) = restarts.running.remove(&id) else {
            continue;
        };
        if term.is_cancelled() {
            break;
        }
        let name = subsystems[idx].name;
        let pause = restarts.pause(idx, started);
        error!(
            subsystem = name,
            "leader subsystem {outcome}; restarting in {pause:?}"
        );
        restarts.spawn(&mut set, idx, &subsystems[idx], store, term, pause);
    }
    let drain = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
        warn!("leader subsystems did not stop within {STOP_GRACE:?}; aborting them");
        set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Starts = Arc<Mutex<Vec<Instant>>>;

    /// A subsystem that records the (virtual) time each run starts; run `n` (from 0) lasts
    /// `runs[n]` and then injects `fault`, and the runs after those last until cancelled.
    fn faulty(
        name: &'static str,
        runs: Vec<Duration>,
        fault: fn() -> Result<(), String>,
    ) -> (Subsystem, Starts) {
        let starts = Starts::default();
        let seen = starts.clone();
        let runs = Arc::new(runs);
        let sub = Subsystem::new(name, move |_store, token: CancellationToken| {
            let (seen, runs) = (seen.clone(), runs.clone());
            async move {
                let run = {
                    let mut starts = seen.lock().expect("starts");
                    starts.push(Instant::now());
                    starts.len() - 1
                };
                match runs.get(run) {
                    Some(ran) => {
                        tokio::time::sleep(*ran).await;
                        fault()
                    }
                    None => {
                        token.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        (sub, starts)
    }

    /// The pauses between the runs of `starts`, given how long each faulty run lasted, are
    /// `expected` (to the timer's millisecond).
    #[track_caller]
    fn assert_pauses(starts: &Starts, runs: &[Duration], expected: &[Duration]) {
        let starts = starts.lock().expect("starts");
        let pauses: Vec<Duration> = starts
            .windows(2)
            .zip(runs)
            .map(|(w, ran)| w[1] - w[0] - *ran)
            .collect();
        let close = pauses.len() == expected.len()
            && pauses
                .iter()
                .zip(expected)
                .all(|(p, e)| *p >= *e && *p <= *e + Duration::from_millis(2));
        assert!(close, "pauses {pauses:?}, expected {expected:?}");
    }

    async fn wait_starts(starts: &Starts, n: usize) {
        tokio::time::timeout(Duration::from_secs(300), async {
            while starts.lock().expect("starts").len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} starts in 300 s of virtual time"));
    }

    /// Runs `subsystems` for one term until `check` is done, then ends the term.
    async fn with_term(subsystems: Vec<Subsystem>, check: impl Future<Output = ()>) {
        let term = CancellationToken::new();
        let store = MemoryStore::new(None);
        let task = tokio::spawn({
            let term = term.clone();
            async move { supervise(&store, &subsystems, &term).await }
        });
        check.await;
        term.cancel();
        tokio::time::timeout(STOP_GRACE * 2, task)
            .await
            .expect("the term stops within its grace")
            .expect("supervise does not panic");
    }

    /// A subsystem that panics, one that fails and one that returns are each restarted with
    /// the same backoff (100 ms, doubling), while a healthy one is left alone.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_failing_or_exiting_subsystem_is_restarted_with_backoff() {
        let runs = vec![Duration::ZERO; 3];
        let (panics, panic_starts) = faulty("injected panic", runs.clone(), || panic!("injected"));
        let (fails, fail_starts) =
            faulty("injected error", runs.clone(), || Err("injected".into()));
        let (exits, exit_starts) = faulty("injected exit", runs.clone(), || Ok(()));
        let (healthy, healthy_starts) = faulty("healthy", vec![], || Ok(()));
        let subsystems = vec![panics, fails, exits, healthy];
        let ms = Duration::from_millis;
        with_term(subsystems, async {
            for starts in [&panic_starts, &fail_starts, &exit_starts] {
                wait_starts(starts, 4).await;
                assert_pauses(starts, &runs, &[ms(100), ms(200), ms(400)]);
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            for starts in [&panic_starts, &fail_starts, &exit_starts] {
                assert_eq!(
                    starts.lock().expect("starts").len(),
                    4,
                    "no restart once healthy"
                );
            }
            assert_eq!(healthy_starts.lock().expect("starts").len(), 1);
        })
        .await;
    }

    /// The pause doubles up to its cap, and a run that lasted a while resets it.
    #[tokio::test(start_paused = true)]
    async fn the_restart_pause_is_capped_and_reset_after_a_long_run() {
        let quick = Duration::from_millis(1);
        let quick_runs = vec![quick; 9];
        let (crashes, quick_starts) = faulty("injected quick failure", quick_runs.clone(), || {
            Err("injected".into())
        });
        let late_runs = vec![quick, quick, quick, HEALTHY_RUN, quick];
        let (late, late_starts) = faulty("injected late panic", late_runs.clone(), || {
            panic!("injected")
        });
        let ms = Duration::from_millis;
        with_term(vec![crashes, late], async {
            wait_starts(&quick_starts, 10).await;
            let doubling = [100, 200, 400, 800, 1600, 3200, 6400].map(ms);
            let mut expected = doubling.to_vec();
            expected.extend([RESTART_MAX, RESTART_MAX]);
            assert_pauses(&quick_starts, &quick_runs, &expected);
            wait_starts(&late_starts, 6).await;
            assert_pauses(
                &late_starts,
                &late_runs,
                &[ms(100), ms(200), ms(400), ms(100), ms(200)],
            );
        })
        .await;
    }
}
