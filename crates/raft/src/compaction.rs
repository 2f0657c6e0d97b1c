//! When to snapshot and how much log to keep, as SwarmKit decides it: from the cluster object's
//! `Spec.Raft` (`SnapshotInterval`, `LogEntriesForSlowFollowers`), read from the store each time
//! the applied index moves, so a cluster update takes effect on every manager without a restart.
//! Before the cluster object exists (and in tests without one), `RaftConfig`'s values apply.
//!
//! openraft's own snapshot policy and log purging are turned off (see `RaftConfig::to_openraft`);
//! this task triggers both through `Raft::trigger`.

use openraft::Raft;
use store::MemoryStore;

use crate::RaftConfig;
use crate::types::TypeConfig;

/// The cluster object whose `Spec.Raft` holds the settings (SwarmKit's `store.DefaultClusterName`).
pub(crate) const DEFAULT_CLUSTER_NAME: &str = "default";

/// The snapshot settings in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Applied entries since the last snapshot that trigger a new one.
    pub snapshot_interval: u64,
    /// Entries already in a snapshot kept in the log for slow followers.
    pub log_entries_for_slow_followers: u64,
}

/// The settings of the cluster object in `store`, or `fallback`'s. A zero interval in the
/// cluster spec (never valid there) keeps the fallback's interval.
pub(crate) fn settings(store: &MemoryStore, fallback: &RaftConfig) -> Settings {
    // Borrowed, not copied: this runs on every applied entry, and the cluster object carries
    // the CA's certificates and join tokens.
    let spec = store.view(|tx| {
        tx.find_shared::<api::Cluster>(store::By::Name(DEFAULT_CLUSTER_NAME))
            .first()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.raft)
    });
    match spec {
        Some(r) => Settings {
            snapshot_interval: if r.snapshot_interval == 0 {
                fallback.snapshot_interval
            } else {
                r.snapshot_interval
            },
            log_entries_for_slow_followers: r.log_entries_for_slow_followers,
        },
        None => Settings {
            snapshot_interval: fallback.snapshot_interval,
            log_entries_for_slow_followers: fallback.log_entries_for_slow_followers,
        },
    }
}

/// Follows the raft metrics until raft stops: triggers a snapshot once `snapshot_interval`
/// entries were applied after the last one, and after each new snapshot purges the log up to
/// `log_entries_for_slow_followers` entries behind it.
pub(crate) async fn run(raft: Raft<TypeConfig>, store: MemoryStore, fallback: RaftConfig) {
    // The log's metrics: published only when they change, not on every pass of the core.
    let mut metrics = raft.data_metrics();
    // The applied index at the last trigger: no new trigger until a snapshot covers it.
    let mut requested: Option<u64> = None;
    let mut purged_for: Option<u64> = None;
    // Those metrics still change with replication and quorum acknowledgements; the decisions
    // below depend on the applied and snapshot indexes only (a change of the cluster's
    // `Spec.Raft` is itself an applied entry), so the store is read when one of them moved.
    let mut seen = None;
    loop {
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if seen != Some((applied, snapshot)) {
            seen = Some((applied, snapshot));
            let s = settings(&store, &fallback);
            if let Some(applied) = applied {
                let since = applied.saturating_sub(snapshot.unwrap_or(0));
                let pending = requested.is_some_and(|r| snapshot.is_none_or(|s| s < r));
                if since >= s.snapshot_interval && !pending {
                    requested = Some(applied);
                    if raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                }
            }
            if let Some(snap) = snapshot
                && purged_for != Some(snap)
            {
                purged_for = Some(snap);
                if let Some(upto) = snap.checked_sub(s.log_entries_for_slow_followers)
                    && upto > 0
                    && raft.trigger().purge_log(upto).await.is_err()
                {
                    return;
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
