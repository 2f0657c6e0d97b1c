//! Ranges of spec fields that SwarmKit leaves to the engine or the kernel, and secret and config
//! targets that would leave their directory, checked where a spec is made (swarmctl's flags) and
//! where it is accepted (the control API), so that a value that can never run (or must never run)
//! is refused at once instead of failing every task.

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

/// Why a secret's file target cannot be used: a `..` component, which could reach outside the
/// directory the agent puts secrets in (absolute targets are allowed, as in SwarmKit).
pub fn check_secret_target(target: &str) -> Result<(), String> {
    if target.split('/').any(|c| c == "..") {
        return Err(format!("'{target}' contains a '..' component"));
    }
    Ok(())
}

/// Why a config's file target cannot be used: a relative target that does not name a file below
/// the directory the agent puts configs in (`../x`, `a/../../x`, `a/..`); absolute targets are
/// allowed, as in SwarmKit.
pub fn check_config_target(target: &str) -> Result<(), String> {
    if target.starts_with('/') {
        return Ok(());
    }
    let mut depth = 0usize;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => return Err(format!("'{target}' leaves the configs directory")),
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    if depth == 0 {
        return Err(format!("'{target}' names no file in the configs directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_targets_never_go_up() {
        for ok in ["x", "a/b", "/run/secrets/x", "..x", "a/..b", "x.."] {
            assert_eq!(check_secret_target(ok), Ok(()), "{ok}");
        }
        for bad in ["..", "../x", "a/../../x", "a/../b", "/a/../b"] {
            assert_eq!(
                check_secret_target(bad),
                Err(format!("'{bad}' contains a '..' component"))
            );
        }
    }

    #[test]
    fn relative_config_targets_stay_in_their_directory() {
        for ok in ["x", "a/../b", "./x", "/etc/x", "/a/../../x", "..x"] {
            assert_eq!(check_config_target(ok), Ok(()), "{ok}");
        }
        for bad in ["..", "../x", "a/../../x", "./../x"] {
            assert_eq!(
                check_config_target(bad),
                Err(format!("'{bad}' leaves the configs directory"))
            );
        }
        assert_eq!(
            check_config_target("a/.."),
            Err("'a/..' names no file in the configs directory".into())
        );
    }

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
