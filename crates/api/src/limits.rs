//! Ranges of spec fields that SwarmKit leaves to the engine or the kernel, checked where a spec is
//! made (swarmctl's flags) and where it is accepted (the control API), so that a value that can
//! never run is refused at once instead of failing every task.

use std::ops::RangeInclusive;

/// The kernel's range for a container's `oom_score_adj`.
pub const OOM_SCORE_ADJ: RangeInclusive<i64> = -1000..=1000;

/// The engine's refusal (in its words) of an `oom_score_adj` outside [`OOM_SCORE_ADJ`].
pub fn check_oom_score_adj(v: i64) -> Result<(), String> {
    if OOM_SCORE_ADJ.contains(&v) {
        return Ok(());
    }
    Err(format!(
        "Invalid value {v}, range for oom score adj is [{}, {}]",
        OOM_SCORE_ADJ.start(),
        OOM_SCORE_ADJ.end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_bounds() {
        for ok in [-1000, 0, 1000] {
            assert_eq!(check_oom_score_adj(ok), Ok(()));
        }
        assert_eq!(
            check_oom_score_adj(5000),
            Err("Invalid value 5000, range for oom score adj is [-1000, 1000]".into())
        );
        assert!(check_oom_score_adj(-1001).is_err());
    }
}
