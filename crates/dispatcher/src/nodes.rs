//! The nodes with a session on this dispatcher (SwarmKit's manager/dispatcher/nodes.go): their
//! session IDs, heartbeat deadlines and registration rate limit. Expiry itself (the node going
//! DOWN) is the dispatcher's: this table only says which registration a deadline belongs to.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::DispatcherError;

/// More registrations than this within the rate limit period are refused.
const RATE_LIMIT_COUNT: u32 = 3;

/// One registration of a node.
#[derive(Debug)]
pub(crate) struct Registered {
    /// Empty for a node carried over from the previous leader (state UNKNOWN): no session of
    /// this dispatcher matches it until the node registers.
    pub session_id: String,
    /// Tells a registration apart from a later one of the same node.
    pub generation: u64,
    /// When the node goes DOWN unless it beats before.
    pub deadline: watch::Sender<Instant>,
    /// Fires when this registration ends (replaced, expired, dispatcher stopped), which ends
    /// the streams of its session.
    pub ended: CancellationToken,
    registered: Option<Instant>,
    attempts: u32,
}

impl Registered {
    /// The parts of this registration a stream keeps.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            generation: self.generation,
            ended: self.ended.clone(),
        }
    }
}

/// What a caller needs of a registration without holding the table's lock.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub generation: u64,
    pub ended: CancellationToken,
}

/// The registrations, by node ID.
#[derive(Debug, Default)]
pub(crate) struct NodeTable {
    nodes: HashMap<String, Registered>,
    next_generation: u64,
}

impl NodeTable {
    /// The registration of `node_id` if `session_id` is its session.
    pub fn with_session(
        &self,
        node_id: &str,
        session_id: &str,
    ) -> Result<&Registered, DispatcherError> {
        let rn = self
            .nodes
            .get(node_id)
            .ok_or(DispatcherError::NotRegistered)?;
        if session_id.is_empty() || rn.session_id != session_id {
            return Err(DispatcherError::SessionInvalid);
        }
        Ok(rn)
    }

    /// Counts a registration attempt of a known node; more than three within `period` of each
    /// other are refused (nodes.go CheckRateLimit).
    pub fn check_rate_limit(
        &mut self,
        node_id: &str,
        period: Duration,
        now: Instant,
    ) -> Result<(), DispatcherError> {
        let Some(rn) = self.nodes.get_mut(node_id) else {
            return Ok(());
        };
        if rn
            .registered
            .is_none_or(|at| now.duration_since(at) > period)
        {
            rn.attempts = 0;
        }
        rn.attempts += 1;
        if rn.attempts > RATE_LIMIT_COUNT {
            return Err(DispatcherError::RateLimited(node_id.to_string()));
        }
        rn.registered = Some(now);
        Ok(())
    }

    /// Adds a registration with `session_id` (empty for a carried-over node), replacing and
    /// ending any earlier one of the node; its deadline is `now + grace`.
    pub fn add(
        &mut self,
        node_id: &str,
        session_id: String,
        grace: Duration,
        now: Instant,
    ) -> (SessionHandle, watch::Receiver<Instant>) {
        let (attempts, registered) = match self.nodes.remove(node_id) {
            Some(old) => {
                old.ended.cancel();
                (old.attempts, old.registered)
            }
            None => (0, None),
        };
        self.next_generation += 1;
        let (deadline, deadline_rx) = watch::channel(now + grace);
        // A carried-over node has not registered; a new one counts from now.
        let registered = if session_id.is_empty() {
            None
        } else {
            registered.or(Some(now))
        };
        let rn = Registered {
            session_id,
            generation: self.next_generation,
            deadline,
            ended: CancellationToken::new(),
            registered,
            attempts,
        };
        let handle = SessionHandle {
            generation: rn.generation,
            ended: rn.ended.clone(),
        };
        self.nodes.insert(node_id.to_string(), rn);
        (handle, deadline_rx)
    }

    /// Removes the registration of `node_id` if it is still `generation`; true if it was.
    pub fn remove_if(&mut self, node_id: &str, generation: u64) -> bool {
        if self
            .nodes
            .get(node_id)
            .is_some_and(|rn| rn.generation == generation)
        {
            if let Some(rn) = self.nodes.remove(node_id) {
                rn.ended.cancel();
            }
            return true;
        }
        false
    }

    /// Ends every registration (the dispatcher stops).
    pub fn clear(&mut self) {
        for (_, rn) in self.nodes.drain() {
            rn.ended.cancel();
        }
    }

    /// Number of registrations.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fourth_registration_within_the_period_is_refused() {
        let mut t = NodeTable::default();
        let now = Instant::now();
        let period = Duration::from_secs(8);
        t.check_rate_limit("n", period, now).expect("unknown node");
        t.add("n", "s1".into(), Duration::from_secs(15), now);
        for i in 1..=3 {
            let at = now + Duration::from_secs(i);
            t.check_rate_limit("n", period, at)
                .expect("within the limit");
            t.add("n", format!("s{i}"), Duration::from_secs(15), at);
        }
        let err = t
            .check_rate_limit("n", period, now + Duration::from_secs(4))
            .expect_err("limit");
        assert_eq!(
            err.to_string(),
            "node n exceeded rate limit count of registrations"
        );
        // A pause longer than the period resets the count.
        t.check_rate_limit("n", period, now + Duration::from_secs(13))
            .expect("after a pause");
    }

    #[test]
    fn a_new_registration_ends_the_old_one() {
        let mut t = NodeTable::default();
        let now = Instant::now();
        let (old, _) = t.add("n", "s1".into(), Duration::from_secs(15), now);
        let (new, _) = t.add("n", "s2".into(), Duration::from_secs(15), now);
        assert!(old.ended.is_cancelled());
        assert!(!new.ended.is_cancelled());
        assert_eq!(
            t.with_session("n", "s1").expect_err("old").to_string(),
            "session invalid"
        );
        assert!(t.with_session("n", "s2").is_ok());
        assert!(!t.remove_if("n", old.generation));
        assert!(t.remove_if("n", new.generation));
        assert_eq!(
            t.with_session("n", "s2").expect_err("gone"),
            DispatcherError::NotRegistered
        );
    }
}
