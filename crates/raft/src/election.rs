//! When a member campaigns. openraft 0.9's own election timer is turned off (`enable_elect`,
//! see `RaftConfig::to_openraft`) because it stalls failovers:
//! - its random timeout is drawn once per process, not per election, and is checked on ticks of
//!   1.5 heartbeat intervals;
//! - a member that once saw a longer log in a refused vote answer keeps a flag until its next
//!   campaign, which adds 2 x `election_timeout_max` to every later wait: with SwarmKit's default
//!   ticks a follower then waits 22-24 s after its leader died (the 24 s stall of issue 14);
//! - a voter that refuses a candidate for its shorter log keeps its old term, so its own campaign
//!   later asks for the very term the refused candidate holds, and loses (a split at one term).
//!
//! openraft 0.9 has no pre-vote; its leader lease plays that part: a member that heard a leader
//! less than `election_timeout_max` ago refuses votes.
//!
//! Here a member campaigns (through `Raft::trigger().elect()`) once it has not heard a leader
//! for a timeout drawn afresh, uniformly in `[E, 1.5 E)`, each time the timer restarts: when this
//! member's transport accepts the leader's AppendEntries or InstallSnapshot, when it grants a
//! vote, and when it campaigns (so a split vote is retried after a new draw). A voter that refused
//! a candidate of a higher term for its shorter log, with no leader heard for a lease, campaigns
//! soon (within half a heartbeat), at a term above the refused one. A lone voter that does not
//! lead campaigns at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};

use crate::types::TypeConfig;

/// The timings of [`run`], from the raft settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// E: no campaign before this long without a leader.
    pub election: Duration,
    /// Width of the random part: the timeout is in `[election, election + spread)`.
    pub spread: Duration,
    /// A member that heard a leader more recently refuses votes (openraft's lease).
    pub lease: Duration,
    /// The quick campaign after a refusal waits up to this long (random).
    pub refusal_jitter: Duration,
    /// How often the timer is checked.
    pub poll: Duration,
}

impl Timing {
    /// For election timeout `election` and heartbeat interval `heartbeat`, with openraft's
    /// leader lease `lease`.
    pub(crate) fn new(election: Duration, heartbeat: Duration, lease: Duration) -> Timing {
        Timing {
            election,
            spread: election / 2,
            lease,
            refusal_jitter: (heartbeat / 2).max(Duration::from_millis(1)),
            poll: (election / 100).clamp(Duration::from_millis(5), Duration::from_millis(100)),
        }
    }

    /// A fresh election timeout in `[election, election + spread)`.
    pub(crate) fn draw(&self) -> Duration {
        self.election + random_below(self.spread)
    }
}

/// A random duration in `[0, d)` (zero for zero).
fn random_below(d: Duration) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random::<u64>() % nanos)
}

#[derive(Debug)]
struct State {
    timing: Timing,
    /// Last time the timer restarted: a leader heard, a vote granted or a campaign started.
    heard: Instant,
    /// Last time a leader was heard (this member's own leadership included).
    leader_heard: Instant,
    /// Campaign once this passes without hearing a leader.
    deadline: Instant,
    /// Highest term of a candidate this member refused for its shorter log.
    refused_term: Option<u64>,
}

/// The election timer of one member, restarted by its transport and told of refusals by its
/// network (shared by clones).
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    state: Arc<Mutex<State>>,
}

impl Default for Clock {
    /// SwarmKit's default timings until [`Clock::configure`].
    fn default() -> Self {
        Clock::new(Timing::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(6),
        ))
    }
}

impl Clock {
    pub(crate) fn new(timing: Timing) -> Clock {
        let now = Instant::now();
        Clock {
            state: Arc::new(Mutex::new(State {
                timing,
                heard: now,
                leader_heard: now,
                deadline: now + timing.draw(),
                refused_term: None,
            })),
        }
    }

    /// Sets the timings (a member's, once its settings are known) and restarts.
    pub(crate) fn configure(&self, timing: Timing) {
        self.lock().timing = timing;
        self.restart();
    }

    fn timing(&self) -> Timing {
        self.lock().timing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("election clock mutex is never poisoned")
    }

    /// A leader was heard (this member's own leadership too): restart with a new draw.
    pub(crate) fn leader_heard(&self) {
        self.lock().leader_heard = Instant::now();
        self.restart();
    }

    /// A vote was granted or a campaign started: restart with a new draw.
    pub(crate) fn restart(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.heard = now;
        s.deadline = now + s.timing.draw();
        s.refused_term = None;
    }

    /// This member refused a candidate of `term` (above its own) for its shorter log, or a
    /// member with a shorter log refused this one's campaign holding a vote of `term` (a split at
    /// one term). Without a leader heard for a lease, it campaigns soon, above `term`; while a
    /// leader was heard it leaves things alone (the lease refused the candidate too).
    pub(crate) fn refused(&self, term: u64) {
        let now = Instant::now();
        let mut s = self.lock();
        if now.duration_since(s.leader_heard) < s.timing.lease {
            return;
        }
        s.refused_term = Some(s.refused_term.map_or(term, |t| t.max(term)));
        let soon = now + random_below(s.timing.refusal_jitter);
        if soon < s.deadline {
            s.deadline = soon;
        }
    }

    /// When the timer fires, and the term a campaign must exceed.
    fn due(&self) -> (Instant, Option<u64>) {
        let s = self.lock();
        (s.deadline, s.refused_term)
    }
}

/// Runs member `id`'s election timer until raft stops.
pub(crate) async fn run(raft: Raft<TypeConfig>, id: u64, clock: Clock) {
    let metrics = raft.metrics();
    loop {
        tokio::time::sleep(clock.timing().poll).await;
        if metrics.has_changed().is_err() {
            return;
        }
        let (state, term, voters) = {
            let m = metrics.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.state, m.current_term, voters)
        };
        if !voters.contains(&id) || state == ServerState::Leader || state == ServerState::Shutdown {
            clock.restart();
            continue;
        }
        if voters.len() == 1 {
            // A lone voter waits for no one; a campaign in progress wins by itself.
            if state != ServerState::Candidate {
                tracing::info!(raft.id = %format!("{id:x}"), term, "lone raft voter campaigns");
                clock.restart();
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
            continue;
        }
        let (deadline, refused) = clock.due();
        if Instant::now() < deadline {
            continue;
        }
        // Each trigger moves to the next term: go above a refused candidate's.
        let campaigns = refused.map_or(1, |r| r.saturating_add(1).saturating_sub(term).max(1));
        tracing::info!(raft.id = %format!("{id:x}"), term, refused_term = ?refused,
            "no raft leader heard within the election timeout: campaigning");
        clock.restart();
        for _ in 0..campaigns.min(8) {
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(6),
        )
    }

    #[test]
    fn timeouts_are_drawn_over_half_an_election_timeout() {
        let t = timing();
        let draws: Vec<Duration> = (0..2000).map(|_| t.draw()).collect();
        let (lo, hi) = (Duration::from_secs(10), Duration::from_secs(15));
        assert!(draws.iter().all(|d| *d >= lo && *d < hi), "{draws:?}");
        // Spread over the whole range: some in each second of it.
        for s in 10..15 {
            assert!(
                draws.iter().any(|d| d.as_secs() == s),
                "no draw in [{s}, {}) s",
                s + 1
            );
        }
        // Two members' draws rarely land within 10 ms of each other (a simultaneous campaign).
        let close = draws
            .chunks(2)
            .filter(|p| p[0].abs_diff(p[1]) < Duration::from_millis(10))
            .count();
        assert!(close < 20, "{close} of 1000 pairs within 10 ms");
    }

    #[test]
    fn each_restart_draws_again() {
        let c = Clock::new(timing());
        let mut deadlines = std::collections::BTreeSet::new();
        for _ in 0..20 {
            c.restart();
            let (d, refused) = c.due();
            assert_eq!(refused, None);
            deadlines.insert(d.duration_since(c.lock().heard));
        }
        assert!(deadlines.len() > 15, "{deadlines:?}");
    }

    #[test]
    fn a_refusal_brings_the_campaign_forward_only_once_the_lease_passed() {
        let t = Timing {
            lease: Duration::from_millis(30),
            ..timing()
        };
        let c = Clock::new(t);
        // A leader was just heard: the refusal changes nothing.
        c.refused(7);
        std::thread::sleep(Duration::from_millis(40));
        c.leader_heard();
        c.refused(7);
        let (d, refused) = c.due();
        assert_eq!(refused, None);
        assert!(d >= Instant::now() + Duration::from_secs(9));
        // A campaign of its own since is no leader heard: once the lease passed, it counts.
        std::thread::sleep(Duration::from_millis(40));
        c.restart();
        c.refused(7);
        c.refused(5);
        let (d, refused) = c.due();
        assert_eq!(refused, Some(7));
        assert!(d <= Instant::now() + t.refusal_jitter, "{d:?}");
        c.restart();
        assert_eq!(c.due().1, None);
    }
}
