//! How the dispatcher marks an assignments set it had to split over several
//! `AssignmentsMessage`s, so that no message reaches gRPC's default 4 MiB receive limit.
//!
//! The stream stays a chain: every message's `applies_to` is the `results_in` of the one before,
//! which SwarmKit's agent compares as opaque strings. A batch of INCREMENTAL changes too large for
//! one message goes out as several INCREMENTAL messages, which any agent applies one by one.
//!
//! A COMPLETE set is different: SwarmKit's agent applies every COMPLETE message at once as the
//! whole set, stopping and removing the tasks it leaves out, so a set split over several messages
//! would restart the tasks of its later parts. The set is therefore split only for an agent whose
//! Assignments request carries [`SPLIT_HEADER`] (ours): it goes out as a COMPLETE message followed
//! by INCREMENTAL ones that carry the rest of the set, every part but the last with a `results_in`
//! ending in [`MORE_PARTS`], and the agent removes what the set leaves out only once the last part
//! arrived. Any other agent gets the set in one message, as SwarmKit's dispatcher sends it (its
//! agent accepts messages up to 2 GiB).

/// Request header (value `true`) with which an agent asks for COMPLETE sets split over several
/// messages.
pub const SPLIT_HEADER: &str = "swarmd-split-assignments";

/// Suffix of the `results_in` of a part that more parts of the same set follow.
pub const MORE_PARTS: &str = "+";

/// Bound on the encoded size of one assignments message: a quarter below gRPC's default receive
/// limit (4 MiB), and twice the largest task the raft entry limit lets the store hold.
pub const MAX_MESSAGE_BYTES: usize = 3 << 20;

/// The `results_in` of message number `seq` of a stream; `more` when further parts of the same
/// set follow.
pub fn results_in(seq: u64, more: bool) -> String {
    if more {
        format!("{seq}{MORE_PARTS}")
    } else {
        seq.to_string()
    }
}

/// Whether more parts of the same set follow `results_in`.
pub fn more_parts_follow(results_in: &str) -> bool {
    results_in.ends_with(MORE_PARTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_round_trips() {
        assert_eq!(results_in(7, false), "7");
        assert_eq!(results_in(7, true), "7+");
        assert!(more_parts_follow(&results_in(3, true)));
        assert!(!more_parts_follow(&results_in(3, false)));
        assert!(!more_parts_follow(""));
    }
}
