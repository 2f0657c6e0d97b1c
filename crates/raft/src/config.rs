//! `RaftConfig`: where the raft database lives and the timing and compaction knobs, named after
//! SwarmKit's raft options (`TickInterval`, `ElectionTick`, `HeartbeatTick`, `SnapshotInterval`,
//! `LogEntriesForSlowFollowers`), and their translation to `openraft::Config`.

use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use crate::RaftError;

/// Raft settings of one manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// Directory holding `raft.redb`; created with mode 0700.
    pub dir: PathBuf,
    /// Entries applied since the last snapshot that trigger a new one (SwarmKit default 10000),
    /// until the cluster object's `Spec.Raft` says otherwise.
    pub snapshot_interval: u64,
    /// Entries already in a snapshot kept in the log for slow followers (SwarmKit default 500),
    /// until the cluster object's `Spec.Raft` says otherwise.
    pub log_entries_for_slow_followers: u64,
    /// Raft tick (SwarmKit default 1s).
    pub tick: Duration,
    /// Ticks without a leader before a member starts an election (SwarmKit default 10).
    pub election_tick: u32,
    /// Ticks between leader heartbeats (SwarmKit default 1).
    pub heartbeat_tick: u32,
    /// Before starting, rewrite the stored membership to this member alone, keeping the whole
    /// log (`swarmd --force-new-cluster`); see `force`.
    pub force_new_cluster: bool,
    /// Where the data encryption keys of the raft database live (the node key's headers); none
    /// leaves the database plain (tests and tools; a manager always gives one).
    pub keys: crate::encryption::KeySource,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            dir: PathBuf::new(),
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            tick: Duration::from_secs(1),
            election_tick: 10,
            heartbeat_tick: 1,
            force_new_cluster: false,
            keys: crate::encryption::KeySource::default(),
        }
    }
}

impl RaftConfig {
    /// Checks the settings; the message names the offending field.
    pub fn validate(&self) -> Result<(), RaftError> {
        let invalid = |m: &str| Err(RaftError::InvalidConfig(m.to_string()));
        if self.dir.as_os_str().is_empty() {
            return invalid("raft directory must be set");
        }
        if self.snapshot_interval == 0 {
            return invalid("snapshot interval must be positive");
        }
        if self.tick < Duration::from_millis(1) {
            return invalid("raft tick must be at least 1ms");
        }
        if self.heartbeat_tick == 0 {
            return invalid("heartbeat tick must be positive");
        }
        if self.election_tick <= self.heartbeat_tick {
            return invalid("election tick must be greater than heartbeat tick");
        }
        Ok(())
    }

    /// Heartbeat interval: `tick * heartbeat_tick`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.tick * self.heartbeat_tick
    }

    /// Election timeout: `tick * election_tick`. A follower that stops hearing its leader
    /// campaigns between one and 1.5 election timeouts later, drawn afresh each time (see
    /// `election`).
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_tick
    }

    /// openraft's `(election_timeout_min, election_timeout_max)` in ms for the election timeout
    /// E. openraft's own election timer is off (`election` decides when to campaign), so these
    /// set only its leader lease (max: a member that heard a leader this recently refuses
    /// votes, 0.6 E, below the earliest campaign at E) and its vote RPC timeout (min, 0.4 E,
    /// so a vote request to a dead or blackholed peer ends well before the next campaign). The
    /// minimum stays above the heartbeat interval, as openraft requires.
    fn openraft_election_bounds(&self) -> (u64, u64) {
        let e = millis(self.election_timeout());
        let hb = millis(self.heartbeat_interval());
        let min = (e / 5 * 2).max(hb.saturating_add(hb / 2).max(hb + 1));
        let max = (e / 5 * 3).max(min + 1);
        (min, max)
    }

    /// The openraft configuration for these settings.
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, RaftError> {
        let (lease_min, lease_max) = self.openraft_election_bounds();
        let cfg = openraft::Config {
            cluster_name: "swarmkit".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval()),
            election_timeout_min: lease_min,
            election_timeout_max: lease_max,
            // `election` campaigns instead (openraft's timer stalls failovers: see there).
            enable_elect: false,
            install_snapshot_timeout: millis(self.election_timeout()),
            // A chunk well under the transport's message limit, sent within the timeout above.
            snapshot_max_chunk_size: 1 << 20,
            // `compaction` triggers snapshots and purges the log from the cluster's settings.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            // A follower further behind than what the log still holds needs the snapshot.
            replication_lag_threshold: self
                .snapshot_interval
                .saturating_add(self.log_entries_for_slow_followers),
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| RaftError::InvalidConfig(e.to_string()))
    }
}

/// `d` in whole milliseconds, as openraft's settings take them.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RaftConfig {
        RaftConfig {
            dir: PathBuf::from("/tmp/raft"),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_swarmkit() {
        let c = RaftConfig::default();
        assert_eq!(c.snapshot_interval, 10_000);
        assert_eq!(c.log_entries_for_slow_followers, 500);
        assert_eq!(c.tick, Duration::from_secs(1));
        assert_eq!((c.election_tick, c.heartbeat_tick), (10, 1));
    }

    #[test]
    fn timings_map_to_openraft() {
        let o = cfg().to_openraft().expect("valid");
        assert_eq!(o.heartbeat_interval, 1_000);
        // Vote RPC timeout (min) and leader lease (max), both under the election timeout;
        // `election` campaigns, never openraft's own timer.
        assert_eq!(o.election_timeout_min, 4_000);
        assert_eq!(o.election_timeout_max, 6_000);
        assert!(!o.enable_elect);
        let short = RaftConfig {
            election_tick: 2,
            ..cfg()
        }
        .to_openraft()
        .expect("valid");
        assert!(short.election_timeout_min > short.heartbeat_interval);
        assert!(short.election_timeout_max > short.election_timeout_min);
        // Snapshots and purges are `compaction`'s, never openraft's own.
        assert_eq!(o.snapshot_policy, SnapshotPolicy::Never);
        assert_eq!(o.max_in_snapshot_log_to_keep, u64::MAX);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let check = |c: RaftConfig, want: &str| {
            let err = c.validate().expect_err("invalid").to_string();
            assert!(err.contains(want), "{err}");
        };
        check(RaftConfig::default(), "raft directory must be set");
        check(
            RaftConfig {
                snapshot_interval: 0,
                ..cfg()
            },
            "snapshot interval",
        );
        check(
            RaftConfig {
                election_tick: 1,
                ..cfg()
            },
            "election tick",
        );
        check(
            RaftConfig {
                heartbeat_tick: 0,
                ..cfg()
            },
            "heartbeat tick",
        );
        check(
            RaftConfig {
                tick: Duration::ZERO,
                ..cfg()
            },
            "raft tick",
        );
        assert!(cfg().validate().is_ok());
    }
}
