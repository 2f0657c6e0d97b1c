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
    /// The minimum election timeout (`tick * election_tick`).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.raft().config().election_timeout_min)
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

    /// Confirms (bounded by [`RaftNode::read_bound`]) that this member still leads and that its
    /// store has applied everything committed before the call: a read served after this is
    /// linearizable. Any failure, a timeout included, is the no-leader error.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NoLeader);
        }
        match tokio::time::timeout(self.read_bound(), self.raft().ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "leadership not confirmed for a read");
                Err(ProposeError::NoLeader)
            }
            Err(_) => {
                tracing::debug!(bound = ?self.read_bound(), "leadership not confirmed in time for a read");
                Err(ProposeError::NoLeader)
            }
        }
    }
}
