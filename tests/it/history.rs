//! A history of client operations against a cluster and the checks the fault tests make on it:
//! every acknowledged create is present everywhere, nothing exists that was not attempted, and
//! the writes and reads of each register (a config's `counter` label) are linearizable
//! (a Wing & Gong / Knossos-style search for a valid order, memoised on the set of ops done and
//! the register's value).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered success: the effect must be durable and visible.
    Ack,
    /// The server refused it definitively (`update out of sequence`): no effect.
    Failed(String),
    /// An error that does not exclude an effect (timeout, transport error, lost leadership):
    /// it may or may not have happened, at any time after its start.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Creation of an object with a unique name (`config:<name>` or `service:<name>`).
    Create(String),
    /// Write of `value` to register `reg`.
    Write { reg: String, value: String },
    /// Read of register `reg`; `value` is what it returned (when acknowledged).
    Read { reg: String, value: String },
}

#[derive(Debug, Clone)]
pub struct Op {
    /// Which client issued it (read through Debug when a check prints ops).
    #[allow(dead_code)] // only Debug reads it, which dead-code analysis ignores
    pub client: usize,
    /// Index of the manager whose socket the client used.
    pub target: usize,
    pub kind: OpKind,
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

/// A register operation for the linearizability check. `end: None` means it never returned
/// (unknown outcome): a write that may have taken effect at any time after `start`, or not.
#[derive(Debug, Clone)]
pub struct RegOp {
    pub start: f64,
    pub end: Option<f64>,
    /// `Some(v)` writes v; `None` reads.
    pub write: Option<String>,
    /// The value a read returned.
    pub read: Option<String>,
}

/// Searches a linearization of `ops` on a register starting at `initial`. Acknowledged ops must
/// all be placed; unknown writes (`end: None`) may be placed or left out. Returns Err with a
/// description when none exists.
pub fn check_register(initial: &str, ops: &[RegOp]) -> Result<(), String> {
    // An unknown write whose value no read returned can be left out of any linearization
    // without changing what a read saw (values are unique), so drop it: keeps the search small.
    let read_values: HashSet<&str> = ops.iter().filter_map(|o| o.read.as_deref()).collect();
    let ops: Vec<RegOp> = ops
        .iter()
        .filter(|o| o.end.is_some() || o.write.as_deref().is_some_and(|w| read_values.contains(w)))
        .cloned()
        .collect();
    let n = ops.len();
    let required: Vec<usize> = (0..n).filter(|&i| ops[i].end.is_some()).collect();
    let mut seen: HashSet<(Vec<u64>, String)> = HashSet::new();
    let done = vec![0u64; n.div_ceil(64).max(1)];
    let is_done = |d: &[u64], i: usize| d[i / 64] >> (i % 64) & 1 == 1;
    // Iterative DFS: (done set, value, deepest progress for the error message).
    let mut stack: Vec<(Vec<u64>, String)> = vec![(done, initial.to_string())];
    let mut best = 0usize;
    while let Some((d, value)) = stack.pop() {
        let placed = required.iter().filter(|&&i| is_done(&d, i)).count();
        best = best.max(placed);
        if placed == required.len() {
            return Ok(());
        }
        if !seen.insert((d.clone(), value.clone())) {
            continue;
        }
        // An op may come next only if it started before every pending acknowledged op ended.
        let horizon = required
            .iter()
            .filter(|&&i| !is_done(&d, i))
            .filter_map(|&i| ops[i].end)
            .fold(f64::INFINITY, f64::min);
        for i in 0..n {
            if is_done(&d, i) || ops[i].start > horizon {
                continue;
            }
            let next_value = match (&ops[i].write, &ops[i].read) {
                (Some(w), _) => w.clone(),
                (None, Some(r)) if *r == value => value.clone(),
                (None, _) => continue,
            };
            let mut nd = d.clone();
            nd[i / 64] |= 1 << (i % 64);
            stack.push((nd, next_value));
        }
    }
    Err(format!(
        "no linearization: at most {best} of {} acknowledged ops can be ordered; ops: {ops:#?}",
        required.len()
    ))
}

/// Register ops of `reg` from a history, times in seconds from `t0`. Unacknowledged reads are
/// left out (they return nothing); failed writes had no effect and are left out too.
pub fn register_ops(history: &[Op], reg: &str, t0: Instant) -> Vec<RegOp> {
    let secs = |t: Instant| t.duration_since(t0).as_secs_f64();
    history
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Write { reg: r, value }, Outcome::Ack) if r == reg => Some(RegOp {
                start: secs(op.start),
                end: Some(secs(op.end)),
                write: Some(value.clone()),
                read: None,
            }),
            (OpKind::Write { reg: r, value }, Outcome::Unknown(_)) if r == reg => Some(RegOp {
                start: secs(op.start),
                end: None,
                write: Some(value.clone()),
                read: None,
            }),
            (OpKind::Read { reg: r, value }, Outcome::Ack) if r == reg => Some(RegOp {
                start: secs(op.start),
                end: Some(secs(op.end)),
                write: None,
                read: Some(value.clone()),
            }),
            _ => None,
        })
        .collect()
}

/// Checks (i) and (ii) for one manager's store: `present` is the set of `kind:name` of objects
/// of the test's kinds it holds. Objects outside `scope` (e.g. created before the history) are
/// ignored by (ii).
pub fn check_creates(
    history: &[Op],
    present: &BTreeSet<String>,
    scope: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut attempted = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for op in history {
        if let OpKind::Create(name) = &op.kind {
            attempted.insert(name.clone());
            if op.outcome == Outcome::Ack {
                acked.insert(name.clone());
            }
        }
    }
    let lost: Vec<&String> = acked.difference(present).collect();
    let invented: Vec<&String> = present
        .iter()
        .filter(|n| scope(n) && !attempted.contains(*n))
        .collect();
    if lost.is_empty() && invented.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "acknowledged but missing: {lost:?}; present but never attempted: {invented:?}"
        ))
    }
}

/// Counts of outcomes per kind of op, for the test's printout.
pub fn summary(history: &[Op]) -> String {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for op in history {
        let kind = match op.kind {
            OpKind::Create(_) => "create",
            OpKind::Write { .. } => "write",
            OpKind::Read { .. } => "read",
        };
        let outcome = match op.outcome {
            Outcome::Ack => "ack",
            Outcome::Failed(_) => "failed",
            Outcome::Unknown(_) => "unknown",
        };
        *counts.entry((kind, outcome)).or_default() += 1;
    }
    counts
        .iter()
        .map(|((k, o), n)| format!("{k}/{o}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: f64, end: Option<f64>, v: &str) -> RegOp {
        RegOp {
            start,
            end,
            write: Some(v.into()),
            read: None,
        }
    }

    fn r(start: f64, end: f64, v: &str) -> RegOp {
        RegOp {
            start,
            end: Some(end),
            write: None,
            read: Some(v.into()),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [
            w(0.0, Some(1.0), "a"),
            r(2.0, 3.0, "a"),
            w(4.0, Some(5.0), "b"),
        ];
        assert!(check_register("0", &ops).is_ok());
        assert!(check_register("0", &[r(0.0, 1.0, "0")]).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        // The write of a finished before the read began, yet the read saw the old value.
        let ops = [w(0.0, Some(1.0), "a"), r(2.0, 3.0, "0")];
        assert!(check_register("0", &ops).is_err());
        // A value nobody wrote.
        assert!(check_register("0", &[r(0.0, 1.0, "x")]).is_err());
    }

    #[test]
    fn overlapping_ops_may_order_either_way() {
        // The read overlaps the write: old or new value are both fine.
        for seen in ["0", "a"] {
            let ops = [w(0.0, Some(3.0), "a"), r(1.0, 2.0, seen)];
            assert!(check_register("0", &ops).is_ok(), "{seen}");
        }
        // Two concurrent writes, then reads that must agree on which came last.
        let ops = [
            w(0.0, Some(2.0), "a"),
            w(0.5, Some(2.5), "b"),
            r(3.0, 4.0, "a"),
            r(5.0, 6.0, "a"),
        ];
        assert!(check_register("0", &ops).is_ok());
        let flip = [
            w(0.0, Some(2.0), "a"),
            w(0.5, Some(2.5), "b"),
            r(3.0, 4.0, "a"),
            r(5.0, 6.0, "b"),
        ];
        assert!(check_register("0", &flip).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_but_only_after_their_start() {
        let seen_it = [w(0.0, None, "a"), r(5.0, 6.0, "a")];
        assert!(check_register("0", &seen_it).is_ok());
        let not_seen = [w(0.0, None, "a"), r(5.0, 6.0, "0")];
        assert!(check_register("0", &not_seen).is_ok());
        // It cannot take effect before it was issued.
        let too_early = [r(0.0, 1.0, "a"), w(2.0, None, "a")];
        assert!(check_register("0", &too_early).is_err());
        // Once seen and overwritten, it cannot come back.
        let resurrected = [
            w(0.0, None, "a"),
            r(1.0, 2.0, "a"),
            w(3.0, Some(4.0), "b"),
            r(5.0, 6.0, "a"),
        ];
        assert!(check_register("0", &resurrected).is_err());
    }

    #[test]
    fn creates_must_be_acknowledged_or_attempted() {
        let t = Instant::now();
        let op = |name: &str, outcome| Op {
            client: 0,
            target: 0,
            kind: OpKind::Create(name.into()),
            start: t,
            end: t,
            outcome,
        };
        let history = [
            op("config:a", Outcome::Ack),
            op("config:b", Outcome::Unknown("timeout".into())),
            op("config:c", Outcome::Failed("no".into())),
        ];
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let scope = |n: &str| n.starts_with("config:");
        assert!(check_creates(&history, &set(&["config:a"]), scope).is_ok());
        assert!(check_creates(&history, &set(&["config:a", "config:b"]), scope).is_ok());
        assert!(check_creates(&history, &set(&["config:b"]), scope).is_err());
        assert!(check_creates(&history, &set(&["config:a", "config:z"]), scope).is_err());
        // Outside the scope: not the history's business.
        assert!(check_creates(&history, &set(&["config:a", "other"]), scope).is_ok());
    }
}
