//! Interop with SwarmKit's own build: `SWARMKIT_REF_BIN` names a folder holding its `swarmd` and
//! `swarmctl` (BUILDING.md says how to build them); without it every test here prints
//! `skipped: SWARMKIT_REF_BIN not set` and passes, as on CI, which has no Go.
//!
//! - One scripted sequence of swarmctl commands (`SCRIPT`: every command of the tree) runs with a
//!   given swarmctl against a fresh swarmd; two such transcripts, masked where they legitimately
//!   differ (`mask`), must be equal. SwarmKit's swarmctl against our swarmd must print what it
//!   prints against its own; our swarmctl must print what SwarmKit's prints against SwarmKit's
//!   swarmd, and the same against ours. The managers are drained first so that no task needs an
//!   image and every transcript is deterministic.
//! - A SwarmKit worker joins our manager and goes READY; our worker joins SwarmKit's manager and
//!   runs its tasks, as processes and, where a Docker engine answers, as containers (SwarmKit's
//!   own agent cannot use an engine older than API 1.44; ours negotiates).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::harness::{Ctl, SWARMCTL, Swarmd, ctl_with, free_port, mask_ids, wait_for};

const WAIT: Duration = Duration::from_secs(60);
/// How long a step of the script retries until its condition holds.
const STEP_WAIT: Duration = Duration::from_secs(20);

/// SwarmKit's build folder, or None after printing why the test is skipped.
pub(crate) fn swarmkit_bin() -> Option<PathBuf> {
    match std::env::var_os("SWARMKIT_REF_BIN") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            for bin in ["swarmd", "swarmctl"] {
                assert!(
                    dir.join(bin).is_file(),
                    "SWARMKIT_REF_BIN={} holds no {bin}",
                    dir.display()
                );
            }
            Some(dir)
        }
        _ => {
            println!("skipped: SWARMKIT_REF_BIN not set");
            None
        }
    }
}

/// One command of the script: swarmctl arguments, where `{node}` stands for the manager's node ID
/// and `{task:web.1}` for the ID of the task of slot 1 of service `web` desired RUNNING.
struct Step {
    args: &'static str,
    /// Written to swarmctl's standard input (secret and config contents).
    input: Option<&'static str>,
    /// Run again (bounded by `STEP_WAIT`) until this holds of the output; the last run is what
    /// the transcript records, so a condition never met shows up as a difference.
    until: Option<fn(&Ctl) -> bool>,
}

const fn run(args: &'static str) -> Step {
    Step {
        args,
        input: None,
        until: None,
    }
}

const fn with_input(args: &'static str, input: &'static str) -> Step {
    Step {
        args,
        input: Some(input),
        until: None,
    }
}

const fn until(args: &'static str, until: fn(&Ctl) -> bool) -> Step {
    Step {
        args,
        input: None,
        until: Some(until),
    }
}

/// The rows under a table's `--` header line.
fn rows(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| !l.starts_with("--"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// `task ls` lists `n` tasks, all PENDING (the node is drained: nothing can be scheduled).
fn pending(out: &Ctl, n: usize) -> bool {
    let rows = rows(&out.stdout);
    rows.len() == n && rows.iter().all(|r| r.contains(" PENDING "))
}

/// `service inspect` lists one task, desired RUNNING (an update first creates the new task
/// desired READY).
fn one_task_desired_running(out: &str) -> bool {
    let rows = rows(out);
    rows.len() == 1 && rows[0].split_whitespace().nth(4) == Some("RUNNING")
}

/// Arguments split at blanks; a `'...'` group is one argument.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for ch in args.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(ch),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Every command of swarmctl's tree, with a range of flags and error cases.
const SCRIPT: &[Step] = &[
    // Nodes; the manager ends drained, so that tasks stay PENDING on both sides.
    run("node ls"),
    run("node inspect {node}"),
    run("node update {node} --label zone=a --label rack=1"),
    run("node inspect {node}"),
    run("node pause {node}"),
    run("node ls"),
    run("node activate {node}"),
    run("node drain {node}"),
    run("node ls"),
    run("node promote {node}"),
    run("node demote {node}"),
    run("node remove {node}"),
    run("node update {node} --label novalue"),
    run("node inspect nosuchnode"),
    run("node ls -q"),
    // Services and tasks.
    run(
        "service create --name web --image busybox:latest --replicas 2 --env A=1 --env B=two \
         --label tier=front --constraint node.role==manager --restart-condition failure \
         --restart-delay 3s --restart-max-attempts 4 --restart-window 10s \
         --update-parallelism 0 --update-delay 0s --update-on-failure continue \
         --update-order start-first --rollback-parallelism 1 --rollback-delay 2s \
         --rollback-on-failure continue --rollback-order start-first --cpu-limit 0.5 \
         --cpu-reservation 0.25 --memory-limit 128m --memory-reservation 64m --command sleep \
         --args 1000 --hostname webhost --tty --open-stdin --init",
    ),
    until("task ls", |o| pending(o, 2)),
    run("service ls"),
    run("service inspect web"),
    // Once the scheduler has explained why it places nothing (both schedulers write it, each at
    // its own pace).
    until("task inspect {task:web.1}", |o| {
        o.stdout.contains("no suitable node")
    }),
    run("service create --name web --image busybox:latest"),
    run("service create --name glob --mode global --image busybox:latest"),
    // Not `--mode bogus`: SwarmKit's swarmctl creates a replicated service for an unknown mode,
    // ours refuses it.
    run("service create --name lim --image busybox:latest --cpu-limit abc"),
    run("service create --name mem --image busybox:latest --memory-limit lots"),
    run("service create --name cond --image busybox:latest --restart-condition sometimes"),
    run("service create --image busybox:latest"),
    run("service create --name badc --image busybox:latest --constraint node.role --replicas 0"),
    run(
        "service create --name badc --image busybox:latest --constraint node.bogus==x --replicas 0",
    ),
    run("service create --name badenv --image busybox:latest --replicas 0 --env =x"),
    run("service create --name badport --image busybox:latest --ports 80:bogus --replicas 0"),
    run("service create --name badsecret --image busybox:latest --secret nosuch --replicas 0"),
    run("service create --name gres --image busybox:latest --replicas 0 --generic-resources gpu=2"),
    run("service inspect gres"),
    run("service rm gres"),
    run("service create --name noimage"),
    run(
        "service create --name mounts --image busybox:latest --replicas 0 --bind /tmp:/data \
         --tmpfs /scratch --ulimit nofile=1024:2048 --replicas-max-per-node 2",
    ),
    run("service inspect mounts"),
    // The log driver goes on a service never updated: SwarmKit's swarmctl drops it on any
    // `service update` without `--log-driver` (ours keeps it).
    run(
        "service create --name ports --image busybox:latest --replicas 0 --ports web:8080:80/tcp \
         --log-driver json-file --log-opt max-size=1m",
    ),
    run("service inspect ports"),
    run("service ls"),
    run("service update web --replicas 3"),
    until("task ls", |o| pending(o, 3)),
    run("service update web --image busybox:1.36 --env C=3 --label tier=back"),
    // Start-first, all at once: each slot gets its new task at once, and the old ones stay until
    // the new ones run, which they cannot: 3 old and 3 new, all PENDING, on either side. (With
    // stop-first, SwarmKit's updater can keep a new task desired READY for up to a minute, its
    // restart supervisor's timeout for an old task that never ran and never stops; ours starts
    // it at once.)
    until("service inspect web", |o| {
        let rows = rows(&o.stdout);
        rows.len() == 6
            && rows.iter().filter(|r| r.contains("busybox:1.36")).count() == 3
            && rows.iter().all(|r| r.contains(" PENDING "))
    }),
    until("task ls -a", |o| pending(o, 6)),
    run("service update web --update-order sideways"),
    run("service update nosuch --replicas 1"),
    run("service rm web"),
    until("task ls -a", |o| rows(&o.stdout).is_empty()),
    run("service create --name web --image busybox:latest --replicas 2"),
    until("task ls", |o| pending(o, 2)),
    run("task remove {task:web.1}"),
    until("task ls", |o| pending(o, 2)),
    // Logs of tasks that never ran: none, and the stream ends.
    run("service logs web"),
    // Updates of a service without tasks, whose outcome cannot depend on timing.
    run("service update mounts --force"),
    run("service update mounts --replicas-max-per-node 1 --constraint node.role==worker"),
    run("service update mounts --restart-condition none --update-order start-first --tty"),
    run("service inspect mounts"),
    run("task inspect nosuchtask"),
    run("task remove nosuchtask"),
    run("service rm glob"),
    run("service remove mounts"),
    run("service rm ports"),
    run("service rm nosuch"),
    // Not `service logs` with bad input: its usage block lists our --tail and --since.
    run("service ls"),
    run("service ls -q"),
    // Networks.
    run("network ls"),
    run(
        "network create --name net1 --driver overlay --subnet 10.20.0.0/24 \
         --gateway 10.20.0.1 --ip-range 10.20.0.0/25 --opts com.docker.network.driver.mtu=1400",
    ),
    run("network create --name net2"),
    run("network create --name net1"),
    run(
        "network create --name net3 --subnet 10.30.0.0/24 --subnet 10.31.0.0/24 --gateway 10.30.0.1",
    ),
    run("network create --driver overlay"),
    run("network ls"),
    run("network inspect net1"),
    run("network inspect net2"),
    run("service create --name netsvc --image busybox:latest --network net1"),
    until("service inspect netsvc", |o| o.stdout.contains(" PENDING ")),
    run("network rm net1"),
    run("service rm netsvc"),
    until("network rm net1", |o| o.code == 0),
    run("network rm net2"),
    run("network remove net3"),
    run("network inspect nosuch"),
    run("network rm nosuch"),
    run("network ls"),
    // Secrets.
    with_input("secret create sec1", "s3cret"),
    with_input("secret create sec1", "again"),
    with_input("secret create 'bad name'", "x"),
    run("secret create"),
    run("secret create empty -f /dev/null"),
    run("secret create missing -f /nonexistent/file"),
    run("secret create drv -d vault"),
    run("secret inspect drv"),
    run("secret rm drv"),
    run("secret ls"),
    run("secret ls -q"),
    run("secret inspect sec1"),
    run("service create --name secsvc --image busybox:latest --secret sec1"),
    run("service inspect secsvc"),
    run("secret rm sec1"),
    run("service update secsvc --rm-secret sec1"),
    until("service inspect secsvc", |o| {
        one_task_desired_running(&o.stdout)
    }),
    run("secret rm sec1"),
    run("secret inspect nosuch"),
    run("secret rm nosuch"),
    run("secret ls"),
    // Configs.
    with_input("config create cfg1", "key=value\n"),
    with_input("config create cfg1", "again"),
    run("config create cfgfile -f /dev/null"),
    run("config ls"),
    run("config rm cfgfile"),
    run("config inspect cfg1"),
    run("service update secsvc --add-config cfg1"),
    until("service inspect secsvc", |o| {
        one_task_desired_running(&o.stdout)
    }),
    run("config rm cfg1"),
    run("service update secsvc --rm-config cfg1"),
    run("config rm cfg1"),
    run("config inspect cfg1"),
    run("config rm nosuch"),
    run("service rm secsvc"),
    run("config ls"),
    // Cluster.
    run("cluster ls"),
    run("cluster ls -q"),
    run("cluster inspect default"),
    run("cluster update default --taskhistory 3 --heartbeatperiod 10s --certexpiry 1000h"),
    run("cluster inspect default"),
    run("cluster update default --certexpiry 1m"),
    // Not `--taskhistory -2`: SwarmKit's swarmctl stores a negative task history, ours refuses it
    // (issue 13); both take `-1h`-style values as values, checked below.
    run("cluster update default --heartbeatperiod -1s"),
    run("cluster update default --certexpiry -1h"),
    run("cluster update default --rotate-join-token worker"),
    run("cluster update default --rotate-join-token manager"),
    run("cluster update default --rotate-join-token bogus"),
    run("cluster inspect default"),
    run("cluster unlock-key default"),
    run("cluster update default --log-driver json-file --log-opt max-size=1m"),
    run("cluster inspect default"),
    run("cluster update default --autolock"),
    run("cluster unlock-key default"),
    run("cluster update default --rotate-unlock-key"),
    run("cluster update default --autolock=false"),
    run("cluster unlock-key default"),
    run("cluster inspect nosuch"),
    run("cluster update default --external-ca protocol=cfssl,url=https://ca.example.com"),
    run("cluster inspect default"),
    run("cluster update default --external-ca url=https://ca.example.com"),
    run("cluster update nosuch --taskhistory 1"),
    run("cluster update default --heartbeatperiod bogus"),
    // The end: nothing left.
    run("service rm web"),
    until("task ls -a", |o| rows(&o.stdout).is_empty()),
    run("service ls"),
];

/// The script run with `swarmctl` against `d`: per step, the command and what it printed
/// (exit code, stdout, stderr), masked.
fn transcript(swarmctl: &Path, d: &Swarmd) -> Vec<(String, String)> {
    let ctl = |args: &[String], input: Option<&str>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl_with(swarmctl, &d.socket(), &args, input.map(str::as_bytes))
    };
    let mut out = Vec::new();
    for step in SCRIPT {
        let args: Vec<String> = split_args(step.args)
            .into_iter()
            .map(|a| resolve(&a, &ctl))
            .collect();
        let start = Instant::now();
        let mut res = ctl(&args, step.input);
        while let Some(cond) = step.until {
            if cond(&res) {
                break;
            }
            if start.elapsed() > STEP_WAIT {
                println!("{}: condition not met after {STEP_WAIT:?}", step.args);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            res = ctl(&args, step.input);
        }
        let text = format!("exit {}\n{}{}", res.code, res.stdout, res.stderr);
        out.push((step.args.to_string(), mask(swarmctl, &text)));
    }
    out
}

/// `{node}` and `{task:<service>.<slot>}` replaced by the IDs they stand for.
fn resolve(arg: &str, ctl: &impl Fn(&[String], Option<&str>) -> Ctl) -> String {
    // An ID that cannot be had stays a placeholder: the transcript then shows why.
    if arg == "{node}" {
        let ls = ctl(&["node".into(), "ls".into(), "-q".into()], None);
        return match ls.code {
            0 => ls.stdout.trim().to_string(),
            _ => arg.to_string(),
        };
    }
    if let Some(slot) = arg.strip_prefix("{task:").and_then(|s| s.strip_suffix('}')) {
        let ls = ctl(&["task".into(), "ls".into()], None);
        return rows(&ls.stdout)
            .iter()
            .map(|r| r.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.get(1) == Some(&slot) && cols.get(2) == Some(&"RUNNING"))
            .map_or_else(|| arg.to_string(), |cols| cols[0].to_string());
    }
    arg.to_string()
}

/// What legitimately differs between two runs of the script, replaced by placeholders.
fn mask(swarmctl: &Path, text: &str) -> String {
    static MASKS: LazyLock<Vec<(Regex, &str)>> = LazyLock::new(|| {
        [
            // Join tokens and unlock keys: fresh per cluster.
            (r"SWMTKN-1-[0-9a-z]+-[0-9a-z]+", "SWMTKN-1-<token>"),
            (r"SWMKEY-1-[A-Za-z0-9+/=]+", "SWMKEY-1-<key>"),
            // Absolute and relative times.
            (
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                "<time>",
            ),
            (
                r"\b(now|\d+ (second|minute|hour|day|week|month|year)s? ago)\b",
                "<ago>",
            ),
            // Node addresses (the same loopback but another port).
            (r"(?m)^(\s*Address\s*:\s*)\S+", "${1}<addr>"),
            // Our swarmctl's job modes, which SwarmKit's (at the commit tested) has not.
            (
                "one of replicated, global, replicated-job, global-job",
                "one of replicated, global",
            ),
            // Flags of our swarmctl that SwarmKit's has not (jobs, rollback, OOM score, CA
            // rotation, configs at create, detach, publish mode), in the usage text printed
            // with an error.
            (
                r"(?m)^ +--(rollback|total-completions|max-concurrent|oom-score-adj|rotate-ca|config|detach|publish-mode) .*\n",
                "",
            ),
            // Our swarmd says a secret driver is not supported, with SwarmKit's words in it.
            (
                r"code = Unimplemented desc = secret drivers are not supported yet \(plugin getter is nil\)",
                "code = Unknown desc = plugin getter is nil",
            ),
            (
                r"secret drivers are not supported yet \(plugin getter is nil\)",
                "plugin getter is nil",
            ),
        ]
        .into_iter()
        .map(|(re, with)| (Regex::new(re).expect("mask regex"), with))
        .collect()
    });
    let mut text = text.replace(&swarmctl.display().to_string(), "swarmctl");
    text = without_our_addresses(&text);
    for (re, with) in MASKS.iter() {
        text = re.replace_all(&text, *with).into_owned();
    }
    let text = without_config_payload(&without_node_description(&mask_ids(&text)));
    sort_map_lines(&sort_table_rows(&collapse_blanks(&text)))
}

/// Our swarmctl's inspect outputs end their summaries with the addresses SwarmKit's does not
/// print: `service inspect`'s VIPs (a block that opens with a newline, so that removing it
/// restores an open `Networks:` line), the network attachments of `task inspect` and
/// `node inspect`. All three are dropped.
fn without_our_addresses(text: &str) -> String {
    static BLOCKS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\nVirtual IPs:\n(  .*\n)+|(?m)^(Networks|Network attachments):\n(  .*\n)+")
            .expect("regex")
    });
    BLOCKS.replace_all(text, "").into_owned()
}

/// SwarmKit's `config inspect` prints its tab writer's internals (`&{0x...}`) where the payload
/// should be, before the ID (it passes the writer itself to `Fprintf`); ours prints the payload
/// after `Payload:`. Both are dropped.
fn without_config_payload(text: &str) -> String {
    let mut out = Vec::new();
    let mut after_garbage = false;
    for line in text.lines() {
        if line == "Payload:" {
            break;
        }
        let garbage = line.starts_with("&{0x");
        if !(garbage || after_garbage && line.is_empty()) {
            out.push(line);
        }
        after_garbage = garbage;
    }
    out.join("\n") + "\n"
}

/// Runs of `key = value` lines (network driver options, labels) sorted: Go prints a map in a
/// random order.
fn sort_map_lines(text: &str) -> String {
    static ENTRY: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^ +\S+ = ").expect("regex"));
    let mut out: Vec<&str> = Vec::new();
    let mut run = Vec::new();
    for line in text.lines() {
        if ENTRY.is_match(line) {
            run.push(line);
            continue;
        }
        run.sort();
        out.append(&mut run);
        out.push(line);
    }
    run.sort();
    out.append(&mut run);
    out.join("\n") + "\n"
}

/// SwarmKit's agent cannot describe its node on an engine older than API 1.44 (its client pins
/// that version), so SwarmKit's node has no hostname, platform, resources nor engine; ours has
/// them. The node description's sections and our hostname (`node-1`, the harness's) are dropped.
fn without_node_description(text: &str) -> String {
    const SECTIONS: [&str; 5] = ["Hostname", "Platform:", "Resources:", "Plugins:", "Engine "];
    let mut out = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        if SECTIONS.iter().any(|s| line.starts_with(s)) {
            in_section = true;
            continue;
        }
        if in_section && line.starts_with(' ') {
            continue;
        }
        in_section = false;
        out.push(line.replace(" node-1 ", "  "));
    }
    out.join("\n") + "\n"
}

/// Runs of blanks shortened to two and trailing blanks dropped: masking changes the width of a
/// table's cells, and so the padding of its columns.
fn collapse_blanks(text: &str) -> String {
    static BLANKS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r" {2,}").expect("regex"));
    text.lines()
        .map(|l| BLANKS.replace_all(l.trim_end(), "  ").into_owned())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Table rows sorted: both swarmctls print rows in the order the server lists them, which
/// follows the random IDs.
fn sort_table_rows(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        out.push(lines[i].to_string());
        let underline =
            lines[i].starts_with("--") && lines[i].chars().all(|c| c == '-' || c == ' ');
        i += 1;
        if underline {
            let start = i;
            while i < lines.len() && !lines[i].is_empty() {
                i += 1;
            }
            let mut rows: Vec<&str> = lines[start..i].to_vec();
            rows.sort();
            out.extend(rows.into_iter().map(str::to_string));
        }
    }
    out.join("\n") + "\n"
}

/// Panics with a readable diff of every step whose output differs.
#[track_caller]
fn assert_same(what: &str, expected: &[(String, String)], actual: &[(String, String)]) {
    let mut report = String::new();
    let mut differing = 0;
    for ((cmd, want), (_, got)) in expected.iter().zip(actual) {
        if want != got {
            differing += 1;
            report.push_str(&format!("\n$ swarmctl {cmd}\n{}", line_diff(want, got)));
        }
    }
    println!(
        "{what}: {} of {} steps print the same",
        expected.len() - differing,
        expected.len()
    );
    assert!(
        differing == 0,
        "{what}: {differing} steps differ (- expected, + actual):{report}"
    );
}

/// A line diff (longest common subsequence): `-` lines only in `a`, `+` only in `b`.
fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[test]
fn swarmkit_swarmctl_prints_the_same_against_our_swarmd() {
    let Some(bin) = swarmkit_bin() else { return };
    let swarmctl = bin.join("swarmctl");
    let ours = Swarmd::start_with(&["--executor", "process"]);
    // First the plainest call, so that a transport failure reads as one line.
    let ls = ctl_with(&swarmctl, &ours.socket(), &["cluster", "ls"], None);
    assert_eq!(
        ls.code, 0,
        "SwarmKit's swarmctl cannot call our swarmd: {}",
        ls.stderr
    );
    let expected = transcript(&swarmctl, &Swarmd::start_swarmkit(&bin, &[]));
    let actual = transcript(&swarmctl, &ours);
    assert_same("SwarmKit's swarmctl, our swarmd", &expected, &actual);
}

/// SwarmKit's `network ls` prints each network's driver from its driver state, which the
/// allocator sets, and crashes on a network without one.
#[test]
fn swarmkit_swarmctl_lists_our_user_networks() {
    let Some(bin) = swarmkit_bin() else { return };
    let swarmctl = bin.join("swarmctl");
    let ours = Swarmd::start_with(&["--executor", "process"]);
    let ctl = |args: &[&str]| ctl_with(&swarmctl, &ours.socket(), args, None);
    ctl(&["network", "create", "--name", "net1", "--driver", "overlay"]).ok();
    let ls = ctl(&["network", "ls"]);
    assert_eq!(ls.code, 0, "SwarmKit's network ls failed: {ls:?}");
    let row = rows(&ls.stdout)
        .into_iter()
        .find(|r| r.split_whitespace().nth(1) == Some("net1"))
        .unwrap_or_else(|| panic!("no net1 in {ls:?}"));
    assert_eq!(row.split_whitespace().nth(2), Some("overlay"), "{ls:?}");
}

#[test]
fn our_swarmctl_prints_what_swarmkits_prints_against_either_swarmd() {
    let Some(bin) = swarmkit_bin() else { return };
    let theirs = transcript(&bin.join("swarmctl"), &Swarmd::start_swarmkit(&bin, &[]));
    let ours = Path::new(SWARMCTL);
    let on_theirs = transcript(ours, &Swarmd::start_swarmkit(&bin, &[]));
    let on_ours = transcript(ours, &Swarmd::start_with(&["--executor", "process"]));
    assert_same("our swarmctl, SwarmKit's swarmd", &theirs, &on_theirs);
    assert_same("our swarmctl, our swarmd", &on_theirs, &on_ours);
}

/// `node ls` through `swarmctl` lists `n` nodes, all READY and ACCEPTED.
fn wait_nodes_ready(swarmctl: &Path, manager: &Swarmd, n: usize) -> String {
    wait_for(&format!("{n} nodes READY"), WAIT, || {
        let ls = ctl_with(swarmctl, &manager.socket(), &["node", "ls"], None);
        let rows = rows(&ls.stdout);
        (rows.len() == n
            && rows
                .iter()
                .all(|r| r.contains(" READY ") && r.contains(" ACCEPTED ")))
        .then(|| ls.stdout.clone())
    })
}

#[test]
fn a_swarmkit_worker_joins_our_manager_and_is_ready() {
    let Some(bin) = swarmkit_bin() else { return };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let manager = Swarmd::start_with(&["--executor", "process", "--listen-remote-api", &listen]);
    let token = manager.join_tokens().0;
    let worker_listen = format!("127.0.0.1:{}", free_port());
    let (worker, code) = Swarmd::start_swarmkit_node(
        &bin,
        &[
            "--join-addr",
            &listen,
            "--join-token",
            &token,
            "--hostname",
            "swarmkit-worker",
            "--listen-remote-api",
            &worker_listen,
        ],
        "node is ready",
        WAIT,
    );
    assert_eq!(
        code,
        None,
        "SwarmKit's worker exited; log:\n{}",
        worker.log()
    );
    let ls = wait_nodes_ready(Path::new(SWARMCTL), &manager, 2);
    println!("{ls}");
    // The worker is no manager: one row has an empty manager status.
    assert_eq!(
        rows(&ls)
            .iter()
            .filter(|r| r.trim_end().ends_with("ACTIVE"))
            .count(),
        1,
        "{ls}"
    );
}

/// SwarmKit's manager (drained, so its tasks go to our worker) and our worker joined to it with
/// `executor`; returns both once the two nodes are READY.
fn our_worker_on_swarmkit_manager(bin: &Path, executor: &str) -> (Swarmd, Swarmd) {
    let listen = format!("127.0.0.1:{}", free_port());
    let manager = Swarmd::start_swarmkit(bin, &["--listen-remote-api", &listen]);
    let swarmctl = bin.join("swarmctl");
    let ctl = |args: &[&str]| ctl_with(&swarmctl, &manager.socket(), args, None);
    let id = ctl(&["node", "ls", "-q"]).ok().trim().to_string();
    ctl(&["node", "drain", &id]).ok();
    let token = manager.join_tokens().0;
    let worker_listen = format!("127.0.0.1:{}", free_port());
    let (worker, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &listen,
            "--join-token",
            &token,
            "--executor",
            executor,
            "--hostname",
            "our-worker",
            "--listen-remote-api",
            &worker_listen,
        ],
        "worker node is ready",
        WAIT,
    );
    assert_eq!(code, None, "our worker exited; log:\n{}", worker.log());
    wait_nodes_ready(&swarmctl, &manager, 2);
    (manager, worker)
}

/// SwarmKit's `task ls` rows of tasks desired and observed RUNNING on `node`.
fn running_on(swarmctl: &Path, manager: &Swarmd, node: &str) -> usize {
    let ls = ctl_with(swarmctl, &manager.socket(), &["task", "ls"], None);
    rows(&ls.stdout)
        .iter()
        .filter(|r| {
            let cols: Vec<&str> = r.split_whitespace().collect();
            cols.get(2) == Some(&"RUNNING")
                && cols.get(3) == Some(&"RUNNING")
                && cols.last() == Some(&node)
        })
        .count()
}

#[test]
fn our_worker_joins_a_swarmkit_manager_and_runs_its_tasks_as_processes() {
    let Some(bin) = swarmkit_bin() else { return };
    let (manager, worker) = our_worker_on_swarmkit_manager(&bin, "process");
    let swarmctl = bin.join("swarmctl");
    let ctl = |args: &[&str]| ctl_with(&swarmctl, &manager.socket(), args, None);
    let name = format!("interop{}", std::process::id());
    ctl(&[
        "service",
        "create",
        "--name",
        &name,
        "--image",
        "busybox:latest",
        "--replicas",
        "2",
        "--command",
        "sleep",
        "--args",
        "300",
    ])
    .ok();
    wait_for("2 tasks RUNNING on our worker", WAIT, || {
        (running_on(&swarmctl, &manager, "our-worker") == 2).then_some(())
    });
    ctl(&["service", "update", &name, "--replicas", "3"]).ok();
    wait_for("3 tasks RUNNING on our worker", WAIT, || {
        (running_on(&swarmctl, &manager, "our-worker") == 3).then_some(())
    });
    ctl(&["service", "rm", &name]).ok();
    wait_for("the task processes stopped", WAIT, || {
        let ls = ctl(&["task", "ls", "-a"]);
        rows(&ls.stdout).is_empty().then_some(())
    });
    drop(worker);
}

/// The engine's API version, or None after printing why the test is skipped.
fn engine_api_version() -> Option<String> {
    if !crate::docker::engine_ready() {
        return None;
    }
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .expect("docker version");
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn our_worker_runs_a_swarmkit_managers_tasks_in_docker_where_swarmkits_agent_cannot() {
    let Some(bin) = swarmkit_bin() else { return };
    let Some(api) = engine_api_version() else {
        return;
    };
    println!("engine API version {api}");
    let (manager, worker) = our_worker_on_swarmkit_manager(&bin, "docker");
    let swarmctl = bin.join("swarmctl");
    let ctl = |args: &[&str]| ctl_with(&swarmctl, &manager.socket(), args, None);
    let name = format!("interopdocker{}", std::process::id());
    ctl(&[
        "service",
        "create",
        "--name",
        &name,
        "--image",
        crate::docker::IMAGE,
        "--replicas",
        "2",
        "--command",
        "/bin/sh",
        "--args",
        "-c,trap 'exit 0' TERM; sleep 300 & wait",
    ])
    .ok();
    wait_for("2 containers RUNNING on our worker", WAIT, || {
        (running_on(&swarmctl, &manager, "our-worker") == 2
            && crate::docker::running_images(&name).len() == 2)
            .then_some(())
    });
    // SwarmKit's own agent, on the manager, asks the engine for API 1.44: an older engine
    // refuses it, so it cannot even describe its node, where ours negotiated and runs the tasks.
    let older = api
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .is_some_and(|v| v < (1, 44));
    if older {
        assert!(
            manager.log().contains("is too new"),
            "SwarmKit's agent did not fail on API {api}; log:\n{}",
            manager.log()
        );
    }
    ctl(&["service", "rm", &name]).ok();
    wait_for("no container of the service left", WAIT, || {
        crate::docker::containers(&name).is_empty().then_some(())
    });
    drop(worker);
}

/// SwarmKit's swarmctl publishes `--ports` in HOST mode, as ours does by default: against our
/// manager, neither service gets a virtual IP on the ingress network. It has no
/// `--publish-mode` (ours), which switches its service to INGRESS mode.
#[test]
fn swarmkit_swarmctl_publishes_in_host_mode_as_ours_does_by_default() {
    let Some(bin) = swarmkit_bin() else { return };
    let theirs = bin.join("swarmctl");
    let d = Swarmd::start();
    let create = |swarmctl: &Path, name: &str, published: &str| {
        let ports = format!("http:80:{published}");
        let args = [
            "service",
            "create",
            "--name",
            name,
            "--image",
            "nginx",
            "--replicas",
            "0",
            "--ports",
            &ports,
        ];
        ctl_with(swarmctl, &d.socket(), &args, None).ok();
    };
    create(&theirs, "theirs", "8080");
    create(Path::new(SWARMCTL), "ours", "8081");
    for name in ["theirs", "ours"] {
        wait_for(&format!("{name}'s ports allocated"), WAIT, || {
            let out = d.ctl(&["service", "inspect", name]).ok().to_string();
            out.contains("SwarmPort        = 808").then_some(())
        });
        assert_eq!(crate::cli::ingress_vip(&d, name), None, "{name}: HOST mode");
    }
    let update = ["service", "update", "theirs", "--publish-mode", "ingress"];
    let refused = ctl_with(&theirs, &d.socket(), &update, None);
    assert!(
        refused.err().contains("unknown flag: --publish-mode"),
        "{refused:?}"
    );
    d.ctl_update(&update).ok();
    wait_for("theirs on the ingress network", WAIT, || {
        crate::cli::ingress_vip(&d, "theirs")
    });
}

/// The last `Error: ...` line `d` logged after byte `skip` (swarmd's message on a failed start).
fn error_line(d: &Swarmd, skip: usize) -> String {
    d.log()[skip..]
        .lines()
        .rev()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_default()
        .to_string()
}

/// A start of `d` with `args` on its state dir: the exit code (None: it started, and was
/// stopped) and its `Error:` line; its state dir must be unchanged either way.
fn start_outcome(d: &mut Swarmd, args: &[&str]) -> (Option<i32>, String) {
    let before = crate::atrest::tree(&d.state_dir());
    d.set_extra_args(args);
    let skip = d.log().len();
    let code = d.spawn_until("node is ready", WAIT);
    if code.is_none() {
        d.stop();
    }
    assert!(
        crate::atrest::tree(&d.state_dir()) == before,
        "{args:?} changed the state dir; log:\n{}",
        d.log()
    );
    (code, error_line(d, skip))
}

#[test]
fn bad_unlock_keys_fail_as_on_swarmkits_swarmd() {
    let Some(bin) = swarmkit_bin() else { return };
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    let cases: [&[&str]; 9] = [
        &[],
        &["--autolock"],
        &["--unlock-key", &wrong],
        // Another length: a wrong key, not a malformed one.
        &["--unlock-key", "SWMKEY-1-AAAA"],
        // Go's base64 ignores the last character's unused bits: a wrong key too.
        &["--unlock-key", "SWMKEY-1-AB"],
        &["--unlock-key", "SWMKEY-1-AAAA="],
        &["--unlock-key", "SWMKEY-1-not base64!"],
        &["--unlock-key", "not-a-key"],
        &["--unlock-key", ""],
    ];
    // A malformed key is refused before anything is written, on a new state dir too.
    for args in &cases[5..] {
        let (theirs, their_code) = Swarmd::start_swarmkit_node(&bin, args, "node is ready", WAIT);
        let (ours, our_code) = Swarmd::start_node(args, "node is ready", WAIT);
        let their_error = error_line(&theirs, 0);
        assert_eq!(
            (their_code, their_error.as_str()),
            (Some(1), "Error: invalid key string"),
            "{args:?}"
        );
        assert_eq!((our_code, error_line(&ours, 0)), (their_code, their_error));
        assert!(!ours.state_dir().exists(), "{args:?} created a state dir");
    }
    // On a stopped locked manager: the same code and message, nothing changed on disk.
    let mut theirs = Swarmd::start_swarmkit(&bin, &["--autolock"]);
    let mut ours = Swarmd::start_with(&["--autolock"]);
    assert_eq!(theirs.stop(), Some(0));
    assert_eq!(ours.stop(), Some(0));
    for args in cases {
        let expected = start_outcome(&mut theirs, args);
        assert_eq!(expected.0, Some(1), "SwarmKit started with {args:?}");
        assert_eq!(start_outcome(&mut ours, args), expected, "{args:?}");
    }
    // On a stopped manager that is not locked, a key is refused as a wrong one.
    let mut theirs = Swarmd::start_swarmkit(&bin, &[]);
    let mut ours = Swarmd::start();
    assert_eq!(theirs.stop(), Some(0));
    assert_eq!(ours.stop(), Some(0));
    let args = ["--unlock-key", &wrong];
    let expected = start_outcome(&mut theirs, &args);
    assert_eq!(
        expected,
        (Some(1), format!("Error: {}", ca::ERR_LOCKED)),
        "SwarmKit"
    );
    assert_eq!(start_outcome(&mut ours, &args), expected);
}
