//! Help and usage text in the shape SwarmKit's cobra-based client prints them (Usage, Aliases,
//! Available Commands, Flags, Global Flags), rendered from the clap command tree. Also finds
//! which command of the tree an argument list addresses, so errors show that command's usage.
//! Each leaf's cobra `Use` string is its clap `override_usage`.

use clap::{ArgAction, Command};

/// The global flags as pflag lists them (name, line without usage, usage).
fn global_flags(default_socket: &str) -> Vec<(String, String, String)> {
    vec![
        (
            "no-resolve".into(),
            "  -n, --no-resolve".into(),
            "Do not try to map IDs to Names when displaying them".into(),
        ),
        (
            "socket".into(),
            "  -s, --socket string".into(),
            format!("Socket to connect to the Swarm manager (default \"{default_socket}\")"),
        ),
    ]
}

/// pflag's `FlagUsages`: flags sorted by name, usage column aligned three spaces after the
/// longest flag column.
fn flag_usages(mut flags: Vec<(String, String, String)>) -> String {
    flags.sort_by(|a, b| a.0.cmp(&b.0));
    let width = flags.iter().map(|f| f.1.len()).max().unwrap_or(0);
    flags
        .iter()
        .map(|(_, left, usage)| {
            let line = format!("{left:width$}   {usage}");
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// The local flags of `cmd` (its own options plus `-h, --help`).
fn local_flags(cmd: &Command, name: &str) -> Vec<(String, String, String)> {
    let mut flags = vec![(
        "help".to_string(),
        "  -h, --help".to_string(),
        format!("help for {name}"),
    )];
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if arg.is_global_set() || long == "help" || arg.is_hide_set() {
            continue;
        }
        let mut left = match arg.get_short() {
            Some(s) => format!("  -{s}, --{long}"),
            None => format!("      --{long}"),
        };
        // pflag bools (`--flag` or `--flag=value`) are declared with an optional value.
        let optional_value = arg.get_num_args().is_some_and(|r| r.min_values() == 0);
        let takes_value =
            !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::Help) && !optional_value;
        if takes_value && let Some(v) = arg.get_value_names().and_then(|v| v.first()) {
            left.push(' ');
            left.push_str(v);
        }
        let usage = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        flags.push((long.to_string(), left, usage));
    }
    flags
}

/// cobra's `UsageString` for the command at `path` (names from the root, root excluded).
pub fn usage_string(root: &Command, argv0: &str, path: &[String], default_socket: &str) -> String {
    let (cmd, names) = walk(root, path);
    let command_path = std::iter::once(argv0.to_string())
        .chain(names.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let name = names.last().cloned().unwrap_or_else(|| argv0.to_string());
    let subcommands: Vec<&Command> = cmd.get_subcommands().collect();
    let is_root = names.is_empty();
    let mut out = String::from("Usage:");
    if subcommands.is_empty() {
        let parent = command_path
            .rsplit_once(' ')
            .map(|(p, _)| p)
            .unwrap_or(argv0);
        let use_ = use_line(cmd, &names);
        out.push_str(&format!("\n  {parent} {use_} [flags]"));
    } else {
        out.push_str(&format!("\n  {command_path} [command]"));
    }
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    if !aliases.is_empty() {
        out.push_str(&format!("\n\nAliases:\n  {}, {}", name, aliases.join(", ")));
    }
    if !subcommands.is_empty() {
        let mut subs: Vec<(String, String)> = subcommands
            .iter()
            .map(|c| {
                (
                    c.get_name().to_string(),
                    c.get_about().map(|a| a.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        subs.sort();
        let pad = subs.iter().map(|s| s.0.len()).max().unwrap_or(0).max(11);
        out.push_str("\n\nAvailable Commands:");
        for (n, about) in subs {
            out.push_str(&format!("\n  {n:pad$} {about}"));
        }
    }
    let mut local = local_flags(cmd, &name);
    if is_root {
        local.extend(global_flags(default_socket));
    }
    out.push_str("\n\nFlags:\n");
    out.push_str(flag_usages(local).trim_end());
    if !is_root {
        out.push_str("\n\nGlobal Flags:\n");
        out.push_str(flag_usages(global_flags(default_socket)).trim_end());
    }
    if !subcommands.is_empty() {
        out.push_str(&format!(
            "\n\nUse \"{command_path} [command] --help\" for more information about a command."
        ));
    }
    out.push('\n');
    out
}

/// cobra's `Use` of a leaf: its clap `override_usage`, else SwarmKit's for the service
/// commands (whose definitions do not carry one), else its name.
fn use_line(cmd: &Command, names: &[String]) -> String {
    let rendered = cmd.clone().render_usage().to_string();
    let rendered = rendered.trim_start_matches("Usage:").trim();
    let generated = rendered.contains("[OPTIONS]") || rendered.contains("[ARGS]");
    if !rendered.is_empty() && !generated {
        return rendered.to_string();
    }
    let name = names.last().map(String::as_str).unwrap_or("");
    let known = match (names.first().map(String::as_str), name) {
        (Some("service"), "inspect") => "inspect <service ID>",
        (Some("service"), "logs") => "logs <service ID...>",
        (Some("service"), "remove") => "remove <service ID>",
        (Some("service"), "update") => "update <service ID>",
        _ => name,
    };
    known.to_string()
}

/// cobra's help: the short description, a blank line, then the usage.
pub fn help_string(root: &Command, argv0: &str, path: &[String], default_socket: &str) -> String {
    let (cmd, _) = walk(root, path);
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let mut out = String::new();
    if !about.is_empty() {
        out.push_str(about.trim_end());
        out.push_str("\n\n");
    }
    out.push_str(&usage_string(root, argv0, path, default_socket));
    out
}

/// Follows `path` (names or aliases) down the tree; returns the command and canonical names.
fn walk<'a>(root: &'a Command, path: &[String]) -> (&'a Command, Vec<String>) {
    let mut cmd = root;
    let mut names = Vec::new();
    for p in path {
        match cmd.find_subcommand(p) {
            Some(sub) => {
                names.push(sub.get_name().to_string());
                cmd = sub;
            }
            None => break,
        }
    }
    (cmd, names)
}

/// Where an argument list goes: the path of commands it names, and the first word that is not
/// a command when the path stops at a command that has subcommands.
pub struct Target {
    /// Canonical names from the root.
    pub path: Vec<String>,
    /// The unknown word after a group (or after the root), if any.
    pub unknown: Option<String>,
}

/// Scans `args` (without argv0) for command words, skipping the global flags and their values.
pub fn find_target(root: &Command, args: &[String]) -> Target {
    let mut cmd = root;
    let mut path = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        if a == "-s" || a == "--socket" {
            i += 1;
            continue;
        }
        if a.starts_with('-') {
            continue;
        }
        if cmd.get_subcommands().next().is_none() {
            break;
        }
        match cmd.find_subcommand(a) {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                cmd = sub;
            }
            None => {
                return Target {
                    path,
                    unknown: Some(a.clone()),
                };
            }
        }
    }
    Target {
        path,
        unknown: None,
    }
}

/// cobra's suggestions for a mistyped top-level command (Levenshtein distance <= 2, or a
/// prefix), as the tail of the "unknown command" message.
pub fn suggestions(root: &Command, typed: &str) -> String {
    let mut found = Vec::new();
    for c in root.get_subcommands() {
        let name = c.get_name();
        let close = levenshtein(&typed.to_lowercase(), &name.to_lowercase()) <= 2;
        let prefix = name.to_lowercase().starts_with(&typed.to_lowercase());
        if close || prefix {
            found.push(name.to_string());
        }
    }
    if found.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n\nDid you mean this?\n");
    for f in found {
        s.push_str(&format!("\t{f}\n"));
    }
    s
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_usages_align_three_spaces_after_longest() {
        let out = flag_usages(vec![
            ("help".into(), "  -h, --help".into(), "help for x".into()),
            ("all".into(), "  -a, --all".into(), "Show all".into()),
        ]);
        assert_eq!(out, "  -a, --all    Show all\n  -h, --help   help for x\n");
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("servic", "service"), 1);
        assert_eq!(levenshtein("", "ab"), 2);
        assert_eq!(levenshtein("node", "node"), 0);
    }
}
