//! A set of numbers kept as sorted runs, so that the thousands of addresses handed out serially
//! in a large subnet cost one entry while they stay contiguous.

use std::collections::BTreeMap;

/// Numbers in use, as disjoint runs `start -> end` (inclusive) that never touch each other.
#[derive(Clone, Debug, Default)]
pub(crate) struct Intervals {
    runs: BTreeMap<u128, u128>,
}

impl Intervals {
    /// The run holding `x`, if any.
    fn run_of(&self, x: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=x)
            .next_back()
            .filter(|(_, end)| **end >= x)
            .map(|(start, end)| (*start, *end))
    }

    /// Whether `x` is in the set.
    pub(crate) fn contains(&self, x: u128) -> bool {
        self.run_of(x).is_some()
    }

    /// Adds `x`; false if it was there already.
    pub(crate) fn insert(&mut self, x: u128) -> bool {
        if self.contains(x) {
            return false;
        }
        let mut start = x;
        let mut end = x;
        if let Some(before) = x.checked_sub(1)
            && let Some((s, _)) = self.run_of(before)
        {
            self.runs.remove(&s);
            start = s;
        }
        if let Some(after) = x.checked_add(1)
            && let Some(e) = self.runs.remove(&after)
        {
            end = e;
        }
        self.runs.insert(start, end);
        true
    }

    /// Removes `x`; false if it was not there.
    pub(crate) fn remove(&mut self, x: u128) -> bool {
        let Some((start, end)) = self.run_of(x) else {
            return false;
        };
        self.runs.remove(&start);
        if start < x {
            self.runs.insert(start, x - 1);
        }
        if x < end {
            self.runs.insert(x + 1, end);
        }
        true
    }

    /// The lowest number of `from..=to` not in the set.
    pub(crate) fn first_free(&self, from: u128, to: u128) -> Option<u128> {
        let candidate = match self.run_of(from) {
            // Runs never touch, so the number after a run is free.
            Some((_, end)) => end.checked_add(1)?,
            None => from,
        };
        (candidate <= to).then_some(candidate)
    }

    /// How many runs the set holds (its memory cost).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_split() {
        let mut s = Intervals::default();
        for x in [1, 2, 4, 3] {
            assert!(s.insert(x));
        }
        assert!(!s.insert(2));
        assert_eq!(s.runs(), 1);
        assert_eq!(s.first_free(0, 10), Some(0));
        assert_eq!(s.first_free(1, 10), Some(5));
        assert_eq!(s.first_free(1, 4), None);
        assert!(s.remove(3));
        assert!(!s.remove(3));
        assert_eq!(s.runs(), 2);
        assert_eq!(s.first_free(1, 10), Some(3));
        assert!(s.contains(4) && !s.contains(3));
        assert!(s.insert(u128::MAX));
        assert_eq!(s.first_free(u128::MAX, u128::MAX), None);
        assert!(s.insert(0));
        assert_eq!(s.first_free(0, 10), Some(3));
    }
}
