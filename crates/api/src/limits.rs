//! Ranges of spec fields that SwarmKit leaves to the engine or the kernel, and where a secret's
//! or config's file target lands in its task (refusing targets the agent cannot place), checked
//! where a spec is made (swarmctl's flags), where it is accepted (the control API) and where it
//! is used (the agent), so that a value that can never run (or must never run) is refused at
//! once instead of failing every task.

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

/// Where a secret with a relative target appears in its task.
pub const SECRETS_DIR: &str = "/run/secrets";

/// What a file target belongs to; the two put relative targets in different directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    /// "secret" or "config", for messages.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

/// The file a secret's or config's target names as the task sees it, normalised (`x`, `./x` and
/// `/run/secrets/x` are one secret file): a relative secret target under [`SECRETS_DIR`], a
/// relative config target under `/`, an absolute one as it is (as in SwarmKit). Refused: a `..`
/// component anywhere (the agent never resolves one, so it could only fail every task) and a
/// target naming no file (`.`, `/`). The control API, swarmctl and the agent all use this, so a
/// target the API accepts is one the agent can place.
pub fn file_target_path(kind: FileKind, target: &str) -> Result<String, String> {
    let mut path = match kind {
        FileKind::Secret if !target.starts_with('/') => SECRETS_DIR.to_string(),
        _ => String::new(),
    };
    let mut names_a_file = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(format!("'{target}' contains a '..' component")),
            name => {
                path.push('/');
                path.push_str(name);
                names_a_file = true;
            }
        }
    }
    if !names_a_file {
        return Err(format!("'{target}' names no file"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_targets_normalise_where_the_task_sees_them() {
        use FileKind::{Config, Secret};
        for (kind, target, path) in [
            (Secret, "x", "/run/secrets/x"),
            (Secret, "./x", "/run/secrets/x"),
            (Secret, "a//b/./c/", "/run/secrets/a/b/c"),
            (Secret, "/run/secrets/x", "/run/secrets/x"),
            (Secret, "/etc/x", "/etc/x"),
            (Secret, "..x", "/run/secrets/..x"),
            (Secret, "a=b", "/run/secrets/a=b"),
            (Config, "x", "/x"),
            (Config, "./etc/x", "/etc/x"),
            (Config, "/etc/x", "/etc/x"),
            (Config, "x..", "/x.."),
        ] {
            assert_eq!(file_target_path(kind, target), Ok(path.into()), "{target}");
        }
        for kind in [Secret, Config] {
            for bad in [
                "..",
                "../x",
                "a/../b",
                "a/../../x",
                "/a/../b",
                "./../x",
                "a/..",
            ] {
                assert_eq!(
                    file_target_path(kind, bad),
                    Err(format!("'{bad}' contains a '..' component"))
                );
            }
            for none in ["", ".", "/", "./", "//", "/./."] {
                assert_eq!(
                    file_target_path(kind, none),
                    Err(format!("'{none}' names no file"))
                );
            }
        }
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
