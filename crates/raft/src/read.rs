//! Leadership for client requests: where the leader is (for forwarding), linearizable reads
//! (openraft's `ensure_linearizable`: the leader confirms with a quorum that it still leads and
//! waits until its store has applied everything committed before answering) and the bounds that
//! make a manager without a quorum answer in time instead of hanging. Both bounds stay under
//! twice the election timeout, so a deposed or minority-side leader fails reads and writes with
//! SwarmKit's no-leader message within 2 x election timeout.

use std::time::Duration;

use store::ProposeError;

use crate::node::RaftNode;

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
        let deadline = tokio::time::Instant::now() + bound;
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
    /// linearizable. A quorum that does not answer is asked again every heartbeat until the
    /// bound (a member that just came back may take a heartbeat or two); a member that learns
    /// it no longer leads fails at once. Any failure is the no-leader error.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        use openraft::error::{CheckIsLeaderError, RaftError};
        let deadline = tokio::time::Instant::now() + self.read_bound();
        let retry = Duration::from_millis(self.raft().config().heartbeat_interval);
        loop {
            if !self.is_leader() {
                return Err(ProposeError::NoLeader);
            }
            match tokio::time::timeout_at(deadline, self.raft().ensure_linearizable()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    tracing::debug!(error = %e, "leadership not confirmed yet for a read");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "leadership not confirmed for a read");
                    return Err(ProposeError::NoLeader);
                }
                Err(_) => break,
            }
            if tokio::time::Instant::now() + retry >= deadline {
                break;
            }
            tokio::time::sleep(retry).await;
        }
        tracing::debug!(bound = ?self.read_bound(), "leadership not confirmed in time for a read");
        Err(ProposeError::NoLeader)
    }
}
