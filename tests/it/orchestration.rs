//! Orchestration through the real binaries on one node whose agent runs tasks as processes:
//! the replicated and global orchestrators create tasks, the allocator and scheduler take them to
//! the node, where its agent runs them; scaling down retires the highest slots, an unplaceable task explains itself
//! and is placed once the node fits, draining shuts tasks down and keeps replacements pending, and
//! the node's `--generic-node-resources` show in `node inspect` and take reservations that fit.

use std::time::Duration;

use crate::harness::{Swarmd, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// `task ls` (or `task ls -a`) rows as (service.slot, desired state, last state word, node).
/// The command of every long-running task here; graceful stops (the harness's drop) end them.
pub const SLEEP: &str = "-c,sleep 120 # swarmkit-it-orchestration";

/// Creates the replicated service `web` of `replicas` long-running sleepers.
fn create_web(d: &Swarmd, replicas: &str) {
    create_sleepers(d, "web", &["--replicas", replicas]);
}

/// Creates service `name` of long-running sleepers, with `extra` flags.
fn create_sleepers(d: &Swarmd, name: &str, extra: &[&str]) {
    d.ctl(&sleepers_args(name, extra)).ok();
}

/// The `service create` arguments of [`create_sleepers`] (tests/it/progress.rs adds its own
/// flags to them).
pub fn sleepers_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        SLEEP,
    ];
    args.extend(extra);
    args
}

/// A manager whose agent runs tasks as processes.
fn start() -> Swarmd {
    Swarmd::start_with(&["--executor", "process"])
}

fn task_rows(d: &Swarmd, all: bool) -> Vec<(String, String, String, String)> {
    let args: &[&str] = if all {
        &["task", "ls", "-a"]
    } else {
        &["task", "ls"]
    };
    let out = d.ctl(args).ok().to_string();
    let mut rows: Vec<_> = out
        .lines()
        .skip(2)
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // ID, service.slot, desired, last state word, relative time words..., node
            let node = if cols.last().is_some_and(|c| *c == "node-1") {
                "node-1"
            } else {
                ""
            };
            (
                cols[1].to_string(),
                cols[2].to_string(),
                cols[3].to_string(),
                node.to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Waits until `task ls` shows exactly `want`.
fn wait_rows(d: &Swarmd, what: &str, want: &[(String, String, String, String)]) {
    wait_for(what, WAIT, || (task_rows(d, false) == want).then_some(()));
}

fn row(
    service_slot: &str,
    desired: &str,
    state: &str,
    node: &str,
) -> (String, String, String, String) {
    (
        service_slot.to_string(),
        desired.to_string(),
        state.to_string(),
        node.to_string(),
    )
}

#[test]
fn replicated_tasks_are_assigned_and_scaled_down_from_the_top() {
    let d = start();
    create_web(&d, "3");
    let want = vec![
        row("web.1", "RUNNING", "RUNNING", "node-1"),
        row("web.2", "RUNNING", "RUNNING", "node-1"),
        row("web.3", "RUNNING", "RUNNING", "node-1"),
    ];
    wait_rows(&d, "three tasks assigned", &want);

    d.ctl(&["service", "update", "web", "--replicas", "1"]).ok();
    wait_rows(
        &d,
        "slots 2 and 3 retired",
        &[row("web.1", "RUNNING", "RUNNING", "node-1")],
    );
    // The retired slots are shut down (and then deleted by the reaper): none runs any more.
    wait_for("retired slots stopped", WAIT, || {
        let all = task_rows(&d, true);
        all.iter()
            .all(|r| r.0 == "web.1" || (r.1 == "REMOVE" && r.2 == "SHUTDOWN"))
            .then_some(())
    });

    // Removing the service takes its tasks with it.
    d.ctl(&["service", "rm", "web"]).ok();
    wait_for("no task desired running", WAIT, || {
        task_rows(&d, false).is_empty().then_some(())
    });
}

#[test]
fn global_service_gets_one_task_on_the_node() {
    let d = start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "glob",
        "--image",
        "busybox",
        "--mode",
        "global",
        "--command",
        "/bin/sh",
        "--args",
        SLEEP,
    ])
    .ok();
    wait_rows(
        &d,
        "global task assigned",
        &[row("glob.0", "RUNNING", "RUNNING", "node-1")],
    );
}

#[test]
fn unplaceable_task_explains_why_and_is_placed_once_the_node_fits() {
    let d = start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "x4",
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        SLEEP,
        "--constraint",
        "node.labels.zone==east",
    ])
    .ok();
    let id = wait_for("task pending with a reason", WAIT, || {
        let out = d.ctl(&["task", "ls", "-q"]).ok().trim().to_string();
        if out.is_empty() {
            return None;
        }
        let inspect = d.ctl(&["task", "inspect", &out]).ok().to_string();
        inspect
            .contains(
                "  Error                : no suitable node (scheduling constraints not satisfied on 1 node)\n",
            )
            .then_some(out)
    });
    let inspect = d.ctl(&["task", "inspect", &id]).ok().to_string();
    assert!(
        inspect.contains("  Last State           : PENDING\n"),
        "{inspect}"
    );
    assert!(
        inspect.contains("  Message              : pending task scheduling\n"),
        "{inspect}"
    );

    d.ctl(&["node", "update", "node-1", "--label", "zone=east"])
        .ok();
    wait_rows(
        &d,
        "task placed after the label",
        &[row("x4.1", "RUNNING", "RUNNING", "node-1")],
    );
}

#[test]
fn drain_shuts_tasks_down_and_activate_places_replacements() {
    let d = start();
    create_web(&d, "2");
    wait_for("two tasks assigned", WAIT, || {
        (task_rows(&d, false).len() == 2 && task_rows(&d, false).iter().all(|r| r.2 == "RUNNING"))
            .then_some(())
    });

    d.ctl(&["node", "drain", "node-1"]).ok();
    // The old tasks are shut down and each slot gets a replacement that cannot be placed.
    wait_for("replacements pending", WAIT, || {
        let all = task_rows(&d, true);
        let shut = all
            .iter()
            .filter(|r| r.1 == "SHUTDOWN" && r.3 == "node-1")
            .count();
        let pending = all
            .iter()
            .filter(|r| (r.1 == "READY" || r.1 == "RUNNING") && r.2 == "PENDING")
            .count();
        (shut == 2 && pending == 2).then_some(())
    });
    // The scheduler explains why after its next pass.
    wait_for("pending replacement explained", WAIT, || {
        let listing = d.ctl(&["task", "ls"]).ok().to_string();
        let pending_id = listing
            .lines()
            .find(|l| l.contains(" PENDING "))
            .and_then(|l| l.split_whitespace().next())?
            .to_string();
        let inspect = d.ctl(&["task", "inspect", &pending_id]).ok().to_string();
        inspect
            .contains(
                "  Error                : no suitable node (1 node not available for new tasks)\n",
            )
            .then_some(())
    });

    d.ctl(&["node", "activate", "node-1"]).ok();
    wait_for("replacements assigned", WAIT, || {
        let all = task_rows(&d, true);
        let assigned = all
            .iter()
            .filter(|r| r.1 != "SHUTDOWN" && r.2 == "RUNNING" && r.3 == "node-1")
            .count();
        (assigned == 2).then_some(())
    });
}

/// The sequence SwarmKit strands tasks with: six replicas, scaled to two and the node drained
/// right after the create (the scale bumps the service's spec version without making its tasks
/// dirty, and the drain's replacements are made of the older version), then activated: both
/// replacements are explained while drained and end RUNNING (SwarmKit's scheduler drops them as
/// "an old revision of their service" and they stay PENDING for good, as ours did).
#[test]
fn scale_drain_activate_leaves_no_task_pending() {
    let d = start();
    create_web(&d, "6");
    d.ctl(&["service", "update", "web", "--replicas", "2"]).ok();
    d.ctl(&["node", "drain", "node-1"]).ok();
    wait_for("two replacements pending and explained", WAIT, || {
        let listing = d.ctl(&["task", "ls"]).ok().to_string();
        let pending: Vec<String> = listing
            .lines()
            .filter(|l| l.contains(" PENDING "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        let explained = pending
            .iter()
            .filter(|id| {
                d.ctl(&["task", "inspect", id])
                    .ok()
                    .contains("no suitable node")
            })
            .count();
        (pending.len() == 2 && explained == 2).then_some(())
    });
    d.ctl(&["node", "activate", "node-1"]).ok();
    wait_for("two tasks running after activate", WAIT, || {
        let rows = task_rows(&d, false);
        (rows.len() == 2 && rows.iter().all(|r| r.2 == "RUNNING" && r.3 == "node-1")).then_some(())
    });
}

/// `service update --image` starts a rolling update that `service inspect` reports; `--rollback`
/// asks for the previous spec (the reference CLI has no such flag) and `--force` redeploys; each
/// update is in progress for at least its 5 s monitor period, which is what inspect shows.
#[test]
fn update_rollback_and_force_show_in_inspect() {
    let d = start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "busybox:1",
        "--command",
        "/bin/sh",
        "--args",
        SLEEP,
    ])
    .ok();
    wait_rows(
        &d,
        "task assigned",
        &[row("web.1", "RUNNING", "RUNNING", "node-1")],
    );

    d.ctl(&["service", "update", "web", "--image", "busybox:2"])
        .ok();
    let inspect = wait_for("update in progress", WAIT, || {
        let out = squash(d.ctl(&["service", "inspect", "web"]).ok());
        out.contains("\n State : UPDATING\n").then_some(out)
    });
    for line in [
        "\nUpdate Status\n",
        "\n Message : update in progress\n",
        "\n Image : busybox:2\n",
    ] {
        assert!(inspect.contains(line), "{line:?} in\n{inspect}");
    }

    d.ctl(&["service", "update", "web", "--rollback"]).ok();
    let inspect = wait_for("rollback started", WAIT, || {
        let out = squash(d.ctl(&["service", "inspect", "web"]).ok());
        out.contains("\n State : ROLLBACK_STARTED\n").then_some(out)
    });
    for line in [
        "\n Message : manually requested rollback\n",
        "\n Image : busybox:1\n",
    ] {
        assert!(inspect.contains(line), "{line:?} in\n{inspect}");
    }

    // --force redeploys: a task of the new spec version appears in slot 1.
    let before = d.ctl(&["task", "ls", "-a", "-q"]).ok().lines().count();
    d.ctl(&["service", "update", "web", "--force"]).ok();
    wait_for("forced redeploy creates a task", WAIT, || {
        (d.ctl(&["task", "ls", "-a", "-q"]).ok().lines().count() > before).then_some(())
    });
}

/// `text` with each line's leading spaces cut to at most one and inner runs of whitespace to one
/// space, so layout checks do not depend on the column width a table happens to get.
fn squash(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(' ') {
            out.push(' ');
        }
        out.push_str(&line.split_whitespace().collect::<Vec<_>>().join(" "));
        out.push('\n');
    }
    out
}

/// Jobs (our `--mode replicated-job|global-job`): at most `--max-concurrent` tasks of a replicated
/// job at once, slots from 0, desired COMPLETE (so only `task ls -a` lists them), run to completion
/// until `--total-completions`; a global job gets one task on the node.
#[test]
fn jobs_run_up_to_max_concurrent_tasks() {
    let d = start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "job",
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        "-c,sleep 1",
        "--mode",
        "replicated-job",
        "--total-completions",
        "3",
        "--max-concurrent",
        "2",
    ])
    .ok();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "gj",
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        "-c,exit 0",
        "--mode",
        "global-job",
    ])
    .ok();
    // Never more than two job tasks at once.
    let running = wait_for("two job tasks running", WAIT, || {
        let rows = task_rows(&d, true);
        let live = rows
            .iter()
            .filter(|r| r.0.starts_with("job.") && r.2 == "RUNNING")
            .count();
        (live > 0).then_some(live)
    });
    assert!(running <= 2, "{running} job tasks running at once");
    wait_for("jobs completed", WAIT, || {
        (task_rows(&d, true)
            == vec![
                row("gj.0", "COMPLETE", "COMPLETE", "node-1"),
                row("job.0", "COMPLETE", "COMPLETE", "node-1"),
                row("job.1", "COMPLETE", "COMPLETE", "node-1"),
                row("job.2", "COMPLETE", "COMPLETE", "node-1"),
            ])
        .then_some(())
    });
    assert!(task_rows(&d, false).is_empty());
    // `service ls` gives the jobs' counts (ListServiceStatuses), not an empty Replicas column.
    let replicas = |name: &str| -> String {
        let out = d.ctl(&["service", "ls"]).ok().to_string();
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .to_string();
        line.split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // A replicated job desires its max-concurrent tasks, as SwarmKit counts it.
    assert_eq!(replicas("job"), "0/2 (3/3 completed)");
    assert_eq!(replicas("gj"), "0/0 (1/1 completed)");
}

/// The value of `task inspect`'s `field` line (`  Pid   : 123`), if it has one.
fn inspect_field(d: &Swarmd, task: &str, field: &str) -> Option<String> {
    let out = d.ctl(&["task", "inspect", task]).ok().to_string();
    out.lines()
        .find(|l| l.trim_start().starts_with(field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[test]
fn task_inspect_shows_the_pid_and_the_exit_code() {
    let d = start();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "ender",
        "--image",
        "busybox",
        "--command",
        "/bin/sh",
        "--args",
        "-c,sleep 2; exit 3",
        "--restart-condition",
        "none",
    ])
    .ok();
    let id = wait_for("the task to run", WAIT, || {
        let id = d.ctl(&["task", "ls", "-q"]).ok().trim().to_string();
        (!id.is_empty()
            && task_rows(&d, false)
                .first()
                .is_some_and(|r| r.2 == "RUNNING"))
        .then_some(id)
    });
    // While it runs: the PID of a live process (the process executor has no container ID).
    let pid: i32 = inspect_field(&d, &id, "Pid")
        .unwrap_or_else(|| panic!("no Pid line for {id}"))
        .parse()
        .expect("a PID");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "PID {pid} is not a live process"
    );
    // Once it failed: its exit code, and no PID any more.
    let code = wait_for("the task to fail", WAIT, || {
        inspect_field(&d, &id, "Last State")
            .filter(|s| s == "FAILED")
            .and_then(|_| inspect_field(&d, &id, "ExitCode"))
    });
    assert_eq!(code, "3");
    assert_eq!(inspect_field(&d, &id, "Pid"), None);
}

/// The lines of `node inspect`'s "Generic Resources" section, whitespace collapsed.
fn generic_lines(d: &Swarmd) -> Vec<String> {
    let out = d.ctl(&["node", "inspect", "node-1"]).ok().to_string();
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with("Generic Resources:"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Creates the sleeper service `name` reserving `gpu=<n>`.
fn create_gpu_service(d: &Swarmd, name: &str, gpus: &str) {
    create_sleepers(d, name, &["--generic-resources", &format!("gpu={gpus}")]);
}

#[test]
fn generic_node_resources_are_advertised_and_scheduled() {
    let d = Swarmd::start_with(&[
        "--executor",
        "process",
        "--generic-node-resources",
        "gpu=UUID1,gpu=UUID2,ssd=1",
    ]);
    let want = ["gpu : UUID1", "gpu : UUID2", "ssd : 1"];
    wait_for("generic resources in node inspect", WAIT, || {
        (generic_lines(&d) == want).then_some(())
    });

    create_gpu_service(&d, "gpu1", "1");
    wait_rows(
        &d,
        "gpu=1 task placed",
        &[row("gpu1.1", "RUNNING", "RUNNING", "node-1")],
    );

    create_gpu_service(&d, "gpu3", "3");
    let id = wait_for(
        "gpu=3 task pending with the scheduler's reason",
        WAIT,
        || {
            let out = d.ctl(&["task", "ls", "-q"]).ok().to_string();
            out.lines().map(str::trim).find_map(|id| {
            let inspect = d.ctl(&["task", "inspect", id]).ok().to_string();
            (inspect.contains("Service                : gpu3\n")
                && inspect.contains(
                    "  Error                : no suitable node (insufficient resources on 1 node)\n",
                ))
            .then(|| id.to_string())
        })
        },
    );
    let inspect = d.ctl(&["task", "inspect", &id]).ok().to_string();
    assert!(
        inspect.contains("  Last State           : PENDING\n"),
        "{inspect}"
    );
}
