//! Leadership for client requests: where the leader is (for forwarding), linearizable reads,
//! the gate of writes, and the bounds that make a manager without a quorum answer in time
//! instead of hanging. Both bounds stay under twice the election timeout, so a deposed or
//! minority-side leader fails reads and writes with SwarmKit's no-leader message within 2 x
//! election timeout.
//!
//! Reads (read-index): the leader confirms with a quorum that it still leads (openraft's
//! `get_read_log_id`, one heartbeat to every voter), then waits until its store has applied
//! everything committed before the confirmation started. Concurrent reads share one
//! confirmation ([`Confirmations`]): a read that arrives while one is in flight waits for the
//! next, started after it arrived, so each read is still confirmed by a round that began after
//! the read did.
//!
//! Writes need no round of their own: an entry commits only under a leader a quorum follows, so
//! its commit proves the leadership. What a write must not do is run its checks on a store
//! missing entries committed under an earlier leader, so it waits, locally, until this leader
//! has applied an entry of its own term (the blank entry openraft appends at election), which
//! follows every earlier committed entry. It is also gated on a quorum of voters having
//! answered this leader recently (the transport records every answer): a leader that was cut off
//! or paused confirms its leadership first, as a read does, and so refuses a write it cannot
//! commit at once instead of after the proposal's bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use store::ProposeError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::node::RaftNode;
use crate::types::{NodeId, RaftMetrics};

/// What one leadership confirmation found: the log index a read must see applied (none if
/// nothing was ever committed), or why leadership is not confirmed.
pub(crate) type Confirmation = Result<Option<u64>, Unconfirmed>;

/// Why a confirmation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unconfirmed {
    /// Not enough voters answered (asked again until the read's bound).
    NoQuorum(String),
    /// This member does not lead (any more), or raft stopped.
    NotLeader(String),
}

type Round<T> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = T> + Send>> + Send + Sync>;

/// Read-index batching: runs one confirmation round at a time, shared by every caller waiting
/// for it. A caller waits for the first round that starts after it called: the one it starts
/// itself if none is running, else the one started as soon as the running one ends.
pub(crate) struct Confirmations<T> {
    round: Round<T>,
    batch: Mutex<Batch>,
    /// The number and outcome of the last finished round.
    done: watch::Sender<(u64, Option<T>)>,
}

#[derive(Default)]
struct Batch {
    /// Rounds started so far; the running one, if any, is the last.
    started: u64,
    running: bool,
    /// The highest round number a caller waits for.
    wanted: u64,
}

impl<T: Clone + Send + Sync + 'static> Confirmations<T> {
    /// Confirmations made by `round`.
    pub(crate) fn new<F, Fut>(round: F) -> Arc<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        Arc::new(Confirmations {
            round: Box::new(move || Box::pin(round())),
            batch: Mutex::new(Batch::default()),
            done: watch::channel((0, None)).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The outcome of a round started after this call.
    pub(crate) async fn confirm(self: &Arc<Self>) -> T {
        let mut done = self.done.subscribe();
        let want = {
            let mut batch = self.lock();
            let want = batch.started + 1;
            batch.wanted = batch.wanted.max(want);
            if !batch.running {
                batch.running = true;
                batch.started = want;
                // Its own task: callers may give up (their bound) without stopping a round
                // others wait for.
                tokio::spawn(self.clone().drive(want));
            }
            want
        };
        let finished = done
            .wait_for(|(round, _)| *round >= want)
            .await
            .expect("the sender lives as long as `self`");
        finished.1.clone().expect("a finished round has an outcome")
    }

    /// Runs round `round`, and the next ones as long as callers wait for them.
    async fn drive(self: Arc<Self>, mut round: u64) {
        // A round that panics must not leave the batch running forever.
        struct Unwind<'a, T: Clone + Send + Sync + 'static>(&'a Confirmations<T>, bool);
        impl<T: Clone + Send + Sync + 'static> Drop for Unwind<'_, T> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().running = false;
                }
            }
        }
        let mut unwind = Unwind(&self, true);
        loop {
            let outcome = (self.round)().await;
            let mut batch = self.lock();
            self.done.send_replace((round, Some(outcome)));
            if batch.wanted > round {
                round += 1;
                batch.started = round;
            } else {
                batch.running = false;
                unwind.1 = false;
                return;
            }
        }
    }
}

/// One confirmation round on `raft`.
pub(crate) async fn confirm_round(raft: openraft::Raft<crate::types::TypeConfig>) -> Confirmation {
    use openraft::error::{CheckIsLeaderError, RaftError};
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(Unconfirmed::NoQuorum(e.to_string()))
        }
        Err(e) => Err(Unconfirmed::NotLeader(e.to_string())),
    }
}

/// Whether metrics `m` show member `id` leading with an entry of its own term applied: every
/// entry committed before its election is then in its store.
fn leads_with_own_term_applied(m: &RaftMetrics, id: NodeId) -> bool {
    m.state == ServerState::Leader
        && m.current_leader == Some(id)
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term && l.leader_id.node_id == id)
}

/// Whether voters that answered (`heard`: when each last did; `me` always counts) make a
/// majority of every configuration in `configs` (two during a membership change).
fn quorum_heard(
    configs: &[std::collections::BTreeSet<NodeId>],
    me: NodeId,
    heard: impl Fn(NodeId) -> bool,
) -> bool {
    configs.iter().all(|voters| {
        let answered = voters.iter().filter(|&&v| v == me || heard(v)).count();
        answered * 2 > voters.len()
    })
}

impl RaftNode {
    /// The election timeout E (`tick * election_tick`; openraft's own election bounds are
    /// derived from it, see `config.rs`).
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// How long a read waits for leadership to be confirmed: one election timeout (a healthy
    /// leader hears from a quorum within a heartbeat or two).
    pub fn read_bound(&self) -> Duration {
        self.election_timeout()
    }

    /// How long a proposal waits to be committed and applied: one and a half election
    /// timeouts; a leader cut off from its quorum gives up within that.
    pub fn write_bound(&self) -> Duration {
        self.election_timeout() * 3 / 2
    }

    /// How recently a quorum must have answered for a write to skip confirming leadership:
    /// two heartbeats (a healthy leader hears from every follower each heartbeat), at most half
    /// an election timeout.
    fn write_freshness(&self) -> Duration {
        let heartbeat = Duration::from_millis(self.raft().config().heartbeat_interval);
        (heartbeat * 2).min(self.election_timeout() / 2)
    }

    /// The current leader's raft ID and advertised address, if a leader is known and is in the
    /// membership configuration.
    pub fn leader_addr(&self) -> Option<(u64, String)> {
        let leader = self.leader_id()?;
        self.members()
            .into_iter()
            .find(|m| m.raft_id == leader)
            .map(|m| (leader, m.addr))
    }

    /// The leader as [`RaftNode::leader_addr`], waiting up to `bound` for one to be known (a
    /// member that just started, or a new election under way); `None` if none is by then.
    pub async fn wait_leader(&self, bound: Duration) -> Option<(u64, String)> {
        let deadline = Instant::now() + bound;
        let mut metrics = self.metrics();
        loop {
            if let Some(leader) = self.leader_addr() {
                return Some(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.leader_addr(),
            }
        }
    }

    /// Confirms (bounded by [`RaftNode::read_bound`]) that this member still leads and that its
    /// store has applied everything committed before the call: a read served after this is
    /// linearizable. Concurrent calls share confirmation rounds (see the module). A quorum
    /// that does not answer is asked again every heartbeat until the bound (a member that just
    /// came back may take a heartbeat or two); a member that learns it no longer leads fails at
    /// once. Any failure is the no-leader error.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + self.read_bound();
        let retry = Duration::from_millis(self.raft().config().heartbeat_interval);
        loop {
            if !self.is_leader() {
                return Err(ProposeError::NoLeader);
            }
            match tokio::time::timeout_at(deadline, self.reads.confirm()).await {
                Ok(Ok(read_index)) => return self.wait_applied(read_index, deadline).await,
                Ok(Err(Unconfirmed::NoQuorum(e))) => {
                    tracing::debug!(error = %e, "leadership not confirmed yet for a read");
                }
                Ok(Err(Unconfirmed::NotLeader(e))) => {
                    tracing::debug!(error = %e, "leadership not confirmed for a read");
                    return Err(ProposeError::NoLeader);
                }
                Err(_) => break,
            }
            if Instant::now() + retry >= deadline {
                break;
            }
            tokio::time::sleep(retry).await;
        }
        tracing::debug!(bound = ?self.read_bound(), "leadership not confirmed in time for a read");
        Err(ProposeError::NoLeader)
    }

    /// Waits until the store has applied entry `index`, by `deadline`.
    async fn wait_applied(
        &self,
        index: Option<u64>,
        deadline: Instant,
    ) -> Result<(), ProposeError> {
        let mut metrics = self.metrics();
        loop {
            if metrics.borrow_and_update().last_applied.map(|l| l.index) >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(ProposeError::NoLeader),
            }
        }
    }

    /// Lets a write run its checks and propose (see the module): at once on a leader that has
    /// applied an entry of its own term and heard from a quorum within
    /// [`RaftNode::write_freshness`], else after [`RaftNode::ensure_linearizable`] (which also
    /// waits for that entry to be applied). Its commit then proves the leadership.
    pub async fn ensure_writable(&self) -> Result<(), ProposeError> {
        if self.writable_now() {
            return Ok(());
        }
        self.ensure_linearizable().await
    }

    /// The local part of [`RaftNode::ensure_writable`].
    fn writable_now(&self) -> bool {
        let metrics = self.metrics();
        let m = metrics.borrow();
        if !leads_with_own_term_applied(&m, self.raft_id()) {
            return false;
        }
        let fresh = self.write_freshness();
        quorum_heard(
            m.membership_config.membership().get_joint_config(),
            self.raft_id(),
            |peer| {
                self.contacts
                    .last(peer)
                    .is_some_and(|t| t.elapsed() <= fresh)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    use openraft::{CommittedLeaderId, LogId, Vote};
    use tokio::sync::Semaphore;

    use super::*;

    /// Rounds that each wait for a permit of `gate` and answer their own number.
    fn counted_rounds() -> (Arc<Confirmations<u64>>, Arc<Semaphore>, Arc<AtomicU64>) {
        let gate = Arc::new(Semaphore::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let (g, c) = (gate.clone(), count.clone());
        let conf = Confirmations::new(move || {
            let (gate, count) = (g.clone(), c.clone());
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                gate.acquire().await.expect("open").forget();
                n
            }
        });
        (conf, gate, count)
    }

    /// Waits (bounded) until `count` rounds have started.
    async fn rounds_started(count: &AtomicU64, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while count.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("round started in time");
    }

    #[tokio::test]
    async fn concurrent_reads_share_confirmations() {
        let (conf, gate, count) = counted_rounds();
        // Rounds end as soon as they run.
        gate.add_permits(1_000);
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let conf = conf.clone();
                tokio::spawn(async move { conf.confirm().await })
            })
            .collect();
        let mut answers = Vec::new();
        for read in reads {
            answers.push(read.await.expect("read"));
        }
        // The first read's round, and one more for every read that arrived while it ran.
        let rounds = count.load(Ordering::SeqCst);
        assert!(rounds <= 2, "64 reads took {rounds} rounds");
        // (A read may get a later round's answer than the one it waited for: that round also
        // started after the read arrived.)
        assert!(answers.iter().all(|&a| (1..=rounds).contains(&a)));
    }

    #[tokio::test]
    async fn reads_waiting_together_get_one_round_and_a_later_read_a_new_one() {
        let (conf, gate, count) = counted_rounds();
        // Round 1 runs for a first read.
        let first = {
            let conf = conf.clone();
            tokio::spawn(async move { conf.confirm().await })
        };
        rounds_started(&count, 1).await;
        // Five reads arrive while round 1 is in flight: none may use round 1.
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let conf = conf.clone();
                tokio::spawn(async move { conf.confirm().await })
            })
            .collect();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        assert_eq!(first.await.expect("read"), 1);
        // One round (2) starts for all five, after round 1 ended.
        rounds_started(&count, 2).await;
        gate.add_permits(1);
        for read in waiting {
            assert_eq!(read.await.expect("read"), 2);
        }
        assert_eq!(count.load(Ordering::SeqCst), 2, "one round for all five");
        // A read after that starts its own round.
        gate.add_permits(1);
        assert_eq!(conf.confirm().await, 3);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_round_that_panics_does_not_stall_later_reads() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let conf = Confirmations::new(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "injected: the first round panics");
                n
            }
        });
        let stalled = tokio::time::timeout(Duration::from_millis(200), conf.confirm()).await;
        assert!(stalled.is_err(), "the panicked round answers nobody");
        let next = tokio::time::timeout(Duration::from_secs(10), conf.confirm())
            .await
            .expect("a new round runs");
        assert_eq!(next, 1);
    }

    fn leader_metrics(id: NodeId, term: u64, applied: Option<(u64, NodeId)>) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(id);
        m.state = ServerState::Leader;
        m.current_leader = Some(id);
        m.current_term = term;
        m.vote = Vote::new_committed(term, id);
        m.last_applied =
            applied.map(|(t, node)| LogId::new(CommittedLeaderId::new(t, node), 10 + t));
        m
    }

    #[test]
    fn writes_wait_until_the_leader_applied_an_entry_of_its_own_term() {
        // Elected in term 5, its store holds only what term 4 committed: not yet.
        assert!(!leads_with_own_term_applied(
            &leader_metrics(1, 5, Some((4, 2))),
            1
        ));
        assert!(!leads_with_own_term_applied(&leader_metrics(1, 5, None), 1));
        // Its blank entry of term 5 is applied: everything committed before it is too.
        assert!(leads_with_own_term_applied(
            &leader_metrics(1, 5, Some((5, 1))),
            1
        ));
        // A follower never passes, whatever it applied.
        let mut follower = leader_metrics(1, 5, Some((5, 2)));
        follower.state = ServerState::Follower;
        follower.current_leader = Some(2);
        assert!(!leads_with_own_term_applied(&follower, 1));
        // A candidate that still shows its old leadership does not either.
        let mut candidate = leader_metrics(1, 6, Some((5, 1)));
        candidate.state = ServerState::Candidate;
        assert!(!leads_with_own_term_applied(&candidate, 1));
    }

    #[test]
    fn writes_need_a_quorum_heard_recently_in_every_configuration() {
        let three = BTreeSet::from([1, 2, 3]);
        // Alone, or with one of two followers heard: a quorum of three.
        assert!(!quorum_heard(std::slice::from_ref(&three), 1, |_| false));
        assert!(quorum_heard(std::slice::from_ref(&three), 1, |p| p == 3));
        // A lone voter is its own quorum.
        assert!(quorum_heard(&[BTreeSet::from([1])], 1, |_| false));
        // During a change to {1, 4, 5}, the new configuration needs its own majority.
        let joint = [three, BTreeSet::from([1, 4, 5])];
        assert!(!quorum_heard(&joint, 1, |p| p == 2));
        assert!(quorum_heard(&joint, 1, |p| p == 2 || p == 4));
    }
}
