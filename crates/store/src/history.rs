//! The recent commits a watch can resume from ([`crate::MemoryStore::watch_from`], the Watch
//! API's `resume_from`). SwarmKit reads them back from raft's in-memory log, which keeps the
//! entries since the last snapshot; ours keeps the events of the last commits as they were
//! published, bounded by [`HISTORY_EVENTS`] object events (the newest commit is always kept
//! whole), so a resume works as long as the client is at most that many changes behind.
//! The events share their objects with the tables and the watchers (`Arc`), so the cost is the
//! versions the tables no longer hold: at most two per kept event (new and old).
//! A snapshot restore starts the history afresh at its index: what changed before it is not
//! known entry by entry.

use std::collections::VecDeque;

use crate::error::StoreError;
use crate::watch::Event;

/// How many object events the history keeps (a commit is dropped whole, oldest first, once the
/// total passes this; the newest one stays whatever its size).
pub const HISTORY_EVENTS: usize = 2048;

/// Published commits, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Each commit's events, the closing `Event::Commit` included, with its index.
    commits: VecDeque<(u64, Vec<Event>)>,
    /// Object events in `commits`.
    events: usize,
    /// Every commit after this index is in `commits`.
    floor: u64,
}

impl History {
    /// Records the events of the commit at `index` (which ends with its `Event::Commit`).
    pub(crate) fn record(&mut self, index: u64, events: Vec<Event>) {
        self.events += events.len().saturating_sub(1);
        self.commits.push_back((index, events));
        while self.events > HISTORY_EVENTS && self.commits.len() > 1 {
            let (dropped, events) = self.commits.pop_front().expect("more than one commit");
            self.events -= events.len().saturating_sub(1);
            self.floor = dropped;
        }
    }

    /// Forgets everything: the store now holds a snapshot taken at `index`.
    pub(crate) fn reset(&mut self, index: u64) {
        self.commits.clear();
        self.events = 0;
        self.floor = index;
    }

    /// The events of every commit after `from`, in order, with `last` the store's last applied
    /// index. Errors are SwarmKit's: a version older than the history (its raft log's
    /// compaction error) or newer than the store (`ChangesBetween`'s).
    pub(crate) fn since(
        &self,
        from: u64,
        last: u64,
    ) -> Result<impl Iterator<Item = &Event>, StoreError> {
        if from > last {
            return Err(StoreError::VersionsOutOfOrder);
        }
        if from < self.floor {
            return Err(StoreError::Compacted {
                version: from,
                oldest: self.floor,
            });
        }
        let start = self.commits.partition_point(|(index, _)| *index <= from);
        Ok(self.commits.range(start..).flat_map(|(_, events)| events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(index: u64, objects: usize) -> Vec<Event> {
        let mut events: Vec<Event> = (0..objects)
            .map(|i| {
                Event::object(
                    crate::EventKind::Create,
                    api::Task {
                        id: format!("t{index}-{i}"),
                        ..Default::default()
                    },
                    None,
                )
            })
            .collect();
        events.push(Event::Commit { version: index });
        events
    }

    fn versions<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<u64> {
        events
            .filter_map(|e| match e {
                Event::Commit { version } => Some(*version),
                Event::Object { .. } => None,
            })
            .collect()
    }

    #[test]
    fn replays_the_commits_after_a_version() {
        let mut h = History::default();
        for index in [3, 5, 9] {
            h.record(index, commit(index, 2));
        }
        assert_eq!(versions(h.since(0, 9).unwrap()), [3, 5, 9]);
        assert_eq!(versions(h.since(3, 9).unwrap()), [5, 9]);
        assert_eq!(versions(h.since(4, 9).unwrap()), [5, 9]);
        assert_eq!(versions(h.since(9, 9).unwrap()), Vec::<u64>::new());
        assert_eq!(
            h.since(5, 9).unwrap().count(),
            3,
            "two objects and the commit"
        );
        let err = h.since(10, 9).err().expect("newer than the store");
        assert_eq!(err.to_string(), "versions are out of order");
    }

    #[test]
    fn drops_the_oldest_commits_past_the_bound_and_refuses_what_they_held() {
        let mut h = History::default();
        let per = HISTORY_EVENTS / 4;
        for index in 1..=6 {
            h.record(index, commit(index, per));
        }
        // Four commits fit: 1 and 2 went.
        assert_eq!(versions(h.since(2, 6).unwrap()), [3, 4, 5, 6]);
        let err = h.since(1, 6).err().expect("compacted");
        assert_eq!(
            err.to_string(),
            "requested index is unavailable due to compaction"
        );
        // The newest commit stays whole, even larger than the bound.
        h.record(7, commit(7, HISTORY_EVENTS + 1));
        assert_eq!(versions(h.since(6, 7).unwrap()), [7]);
        assert!(h.since(5, 7).is_err());
    }

    #[test]
    fn a_restore_starts_afresh_at_its_index() {
        let mut h = History::default();
        h.record(4, commit(4, 1));
        h.reset(10);
        assert!(h.since(4, 10).is_err());
        assert_eq!(h.since(10, 10).unwrap().count(), 0);
        h.record(11, commit(11, 1));
        assert_eq!(versions(h.since(10, 11).unwrap()), [11]);
    }
}
