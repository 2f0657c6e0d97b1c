//! `swarmctl service create|update --detach=false` (ours): the command returns once the service
//! has converged, printing one line per change on a pipe and redrawing a progress display on a
//! terminal; an update whose new tasks fail ends with the paused update's reason, or the
//! rolled-back update's. A `--detach` value that is no bool is refused.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Ctl, SWARMCTL, Swarmd};
use crate::orchestration::{SLEEP, sleepers_args};

/// A manager whose agent runs tasks as processes.
fn start() -> Swarmd {
    Swarmd::start_with(&["--executor", "process"])
}

/// `service create` arguments of a `replicas`-replica sleeper service `name`, then `extra`.
fn create_args<'a>(name: &'a str, replicas: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = sleepers_args(name, &["--replicas", replicas]);
    args.extend(extra);
    args
}

/// (desired state, current state word) of every task of `task ls`.
fn task_states(d: &Swarmd) -> Vec<(String, String)> {
    d.ctl(&["task", "ls"])
        .ok()
        .lines()
        .skip(2)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[2].to_string(), cols[3].to_string())
        })
        .collect()
}

#[test]
fn create_with_detach_false_waits_until_converged_and_prints_lines_on_a_pipe() {
    let d = start();
    let started = Instant::now();
    let out = d.ctl(&create_args("web", "2", &["--detach=false"]));
    let stdout = out.ok();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].len(), 25, "the service ID first: {stdout}");
    assert!(
        lines.contains(&"overall progress: 0 out of 2 tasks"),
        "{stdout}"
    );
    assert!(lines.contains(&"1/2: running"), "{stdout}");
    assert!(lines.contains(&"2/2: running"), "{stdout}");
    assert!(
        lines.contains(&"overall progress: 2 out of 2 tasks"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"verify: Waiting 5 seconds to verify that tasks are stable..."),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"verify: Service converged"), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "no terminal codes on a pipe: {stdout:?}"
    );
    // It waited for the monitor period after the tasks ran.
    assert!(started.elapsed() >= Duration::from_secs(5));
    // Converged when it returned: nothing to wait for.
    assert_eq!(
        task_states(&d),
        vec![
            ("RUNNING".to_string(), "RUNNING".to_string()),
            ("RUNNING".to_string(), "RUNNING".to_string()),
        ]
    );

    // Detached, the default and `--detach`: the ID alone, at once.
    for flag in [None, Some("--detach"), Some("--detach=true")] {
        let name = format!("quick{}", flag.map_or(0, str::len));
        let mut args = create_args(&name, "1", &[]);
        args.extend(flag);
        let out = d.ctl(&args);
        assert_eq!(out.ok().lines().count(), 1, "{flag:?}: {out:?}");
    }
}

/// `service update web <args> --detach=false`.
fn update_and_wait(d: &Swarmd, args: &[&str]) -> Ctl {
    let mut all = vec!["service", "update", "web"];
    all.extend(args);
    all.push("--detach=false");
    d.ctl(&all)
}

#[test]
fn update_with_detach_false_fails_with_the_reason_of_a_paused_or_rolled_back_update() {
    let d = start();
    d.ctl(&create_args("web", "2", &["--detach=false"])).ok();
    let out = update_and_wait(&d, &["--args", "-c,exit 1", "--update-on-failure", "pause"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .starts_with("Error: service update paused: update paused due to failure or early termination of task "),
        "{out:?}"
    );
    assert!(!out.stderr.contains("Usage:"), "no usage block: {out:?}");
    let inspect = d.ctl(&["service", "inspect", "web"]).ok().to_string();
    assert!(inspect.contains("paused"), "{inspect}");

    // An update back to sleepers converges.
    let out = update_and_wait(&d, &["--args", SLEEP]);
    assert_eq!(
        out.ok().lines().last(),
        Some("verify: Service converged"),
        "{out:?}"
    );

    // Failing again with rollback as the failure action: the manager rolls back, which the
    // command reports as a failure with the reason the rollback started, once the rollback
    // completed (its tasks converge earlier). The reason is in the update status only while
    // the rollback runs (its completion says "rollback completed"), so the rollback must have
    // work to do: of the two new tasks, started together, the first to run fails and the other
    // runs on, until the rollback replaces it and watches its replacement for the monitor period.
    // (Had every new task failed, the failed ones' replacements, made under the rolled-back spec
    // by the restart policy or the scale-up, would leave the rollback nothing to replace: it
    // would complete at once, before any poll saw it start, in SwarmKit too.)
    let fails_once = format!(
        "-c,mkdir {}/failed-once && exit 1; {}",
        d.dir.path().display(),
        SLEEP.trim_start_matches("-c,")
    );
    let out = update_and_wait(
        &d,
        &[
            "--args",
            &fails_once,
            "--update-parallelism",
            "2",
            "--update-on-failure",
            "rollback",
        ],
    );
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "Error: service rolled back: update rolled back due to failure or early termination of task "
        ),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("overall progress: rolling back update: "),
        "{out:?}"
    );
}

#[test]
fn a_detach_value_that_is_no_bool_is_refused() {
    let d = start();
    let out = d.ctl(&create_args("web", "1", &["--detach=maybe"]));
    assert!(
        out.err().starts_with(
            "Error: invalid argument \"maybe\" for \"--detach\" flag: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        ),
        "{out:?}"
    );
    assert_eq!(d.ctl(&["service", "ls", "-q"]).ok(), "", "nothing created");
    d.ctl(&create_args("web", "1", &[])).ok();
    let out = d.ctl(&["service", "update", "web", "--replicas", "2", "--detach=2"]);
    assert!(
        out.err()
            .starts_with("Error: invalid argument \"2\" for \"--detach\" flag"),
        "{out:?}"
    );
}

#[test]
fn on_a_terminal_the_progress_is_redrawn_in_place() {
    let d = start();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = Command::new(SWARMCTL)
        .arg("-s")
        .arg(d.socket())
        .args(create_args("web", "2", &["--detach=false"]))
        .env_remove("SWARM_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarmctl");
    // The slave end given to the child is closed here, so reading the master ends when the
    // child exits (EIO).
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(pty.master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("swarmctl did not finish within 40s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    assert!(status.success(), "{status:?}: {out:?}");
    assert!(
        out.contains("overall progress: 2 out of 2 tasks"),
        "{out:?}"
    );
    assert!(out.contains("1/2: running   ["), "{out:?}");
    // Rows are redrawn: the cursor goes back up over the rows drawn before, each cleared.
    let up = regex::Regex::new(r"\x1b\[[0-9]+A").expect("regex");
    assert!(up.is_match(&out), "cursor-up sequences: {out:?}");
    assert!(out.contains("\x1b[2K"), "{out:?}");
    let last = out.trim_end().rsplit('\n').next().unwrap_or("");
    assert!(
        last.ends_with("verify: Service converged\r")
            || last.ends_with("verify: Service converged"),
        "{out:?}"
    );
}
