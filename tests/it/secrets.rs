//! Issue 16 through the real binaries: secrets and configs reach the tasks that reference them,
//! byte for byte and with their modes, and nowhere else: not another node, not a log, not a
//! worker's state directory. The process executor's contract (`SWARM_TASK_ROOT`,
//! `SWARM_SECRETS_DIR`, files on a tmpfs) and the Docker executor's (`/run/secrets/<target>`,
//! read-only bind mounts) are checked from inside the task; bad references fail in swarmctl with
//! SwarmKit's messages and change nothing; a worker killed and restarted keeps its running task's
//! files and sweeps per-task directories of tasks it no longer has; a drained node keeps no copy
//! once its task stopped. Every test makes its secret around a fresh random token and searches
//! for that token where the secret must not be.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, marker, pids_with, wait_processes};
use crate::docker::{self, IMAGE, docker_bytes, engine_ready};
use crate::harness::{Ctl, Swarmd, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Random hex, distinctive enough that finding it anywhere means the data it is part of is there.
pub(crate) fn token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Data around `token` with a newline, a NUL and bytes that are not UTF-8, so that only a
/// byte-exact delivery passes.
pub(crate) fn payload(token: &str) -> Vec<u8> {
    let mut data = b"-----BEGIN KEY-----\n".to_vec();
    data.extend_from_slice(token.as_bytes());
    data.extend_from_slice(b"\n\xff\xfe\x00\x80 end\n");
    data
}

/// The forms `token` would take wherever something wrote it out: as is, and as the `Debug`
/// rendering of its bytes (`[52, 97, ...]`, how a `Vec<u8>` field prints).
pub(crate) fn leak_forms(token: &str) -> Vec<Vec<u8>> {
    let debug = format!("{:?}", &token.as_bytes()[..12]);
    vec![
        token.as_bytes().to_vec(),
        debug.trim_matches(['[', ']']).as_bytes().to_vec(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Regular files under `root` (symlinks not followed) holding any of `needles`. Files that vanish
/// or cannot be read while walking are skipped: other nodes may be changing their trees.
pub(crate) fn files_containing(root: &Path, needles: &[Vec<u8>]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needles));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|data| needles.iter().any(|n| contains(&data, n)))
        {
            found.push(path);
        }
    }
    found
}

/// The tmpfs bases the agent may keep per-task files under, whichever it chose on this machine.
fn tmpfs_bases() -> Vec<PathBuf> {
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    vec![
        PathBuf::from("/run/swarmd"),
        PathBuf::from(format!("/dev/shm/swarmd-{uid}")),
    ]
}

/// Files on the tmpfs bases holding any of `needles`.
fn tmpfs_files_containing(needles: &[Vec<u8>]) -> Vec<PathBuf> {
    tmpfs_bases()
        .iter()
        .flat_map(|base| files_containing(base, needles))
        .collect()
}

/// Asserts that the files of the tmpfs bases holding `needles` (the data of a `what`) are under
/// task root `root`, and that there is one (the scan does see what the task was given).
#[track_caller]
fn assert_only_under(root: &Path, needles: &[Vec<u8>], what: &str) {
    let (inside, stray): (Vec<PathBuf>, Vec<PathBuf>) = tmpfs_files_containing(needles)
        .into_iter()
        .partition(|p| p.starts_with(root));
    assert!(stray.is_empty(), "{what} bytes outside the task: {stray:?}");
    assert!(
        !inside.is_empty(),
        "the scan found no {what} file in the task"
    );
}

/// Whether the current process runs as root (files are then chowned to a reference's uid/gid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

/// The filesystem type of `path` (`tmpfs`, `ext2/ext3`, ...), from `stat -f`.
fn fs_type(path: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("stat -f");
    assert!(out.status.success(), "stat -f {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Asserts that none of `needles` is in any node's log (all of swarmd's stderr since it started).
#[track_caller]
fn assert_not_logged(nodes: &[&Swarmd], needles: &[Vec<u8>]) {
    for (i, node) in nodes.iter().enumerate() {
        let log = node.log();
        for n in needles {
            assert!(
                !contains(log.as_bytes(), n),
                "node {i}'s log holds secret bytes ({})",
                String::from_utf8_lossy(n)
            );
        }
    }
}

/// Creates secret or config (`kind`) `name` with `data` through `swarmctl <kind> create -f` from a
/// file outside every state directory; returns its ID.
pub(crate) fn create_from_file(m: &Swarmd, kind: &str, name: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, data).expect("write data");
    let path = file.to_str().expect("utf-8 path");
    m.ctl(&[kind, "create", name, "-f", path])
        .ok()
        .trim()
        .to_string()
}

/// One row of `task ls -a`.
#[derive(Debug, Clone, PartialEq)]
struct TaskRow {
    id: String,
    desired: String,
    state: String,
    node: String,
}

/// The tasks of service `service`, any desired state.
fn service_tasks(m: &Swarmd, service: &str) -> Vec<TaskRow> {
    let prefix = format!("{service}.");
    m.ctl(&["task", "ls", "-a"])
        .ok()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[1].starts_with(&prefix)).then(|| TaskRow {
                id: f[0].to_string(),
                desired: f[2].to_string(),
                state: f[3].to_string(),
                node: f.last().expect("node").to_string(),
            })
        })
        .collect()
}

/// Waits for the one task of `service` desired and observed RUNNING whose ID is not in `not`.
fn wait_running_task(m: &Swarmd, service: &str, not: &[&str]) -> TaskRow {
    wait_for(&format!("a RUNNING task of {service}"), WAIT, || {
        let running: Vec<TaskRow> = service_tasks(m, service)
            .into_iter()
            .filter(|t| t.desired == "RUNNING" && t.state == "RUNNING")
            .collect();
        match &running[..] {
            [t] if !not.contains(&t.id.as_str()) => Some(t.clone()),
            _ => None,
        }
    })
}

/// A file a task reads: where (a shell word, may use the task's environment) and under which name
/// the task copies it into its report.
struct Probe {
    path: &'static str,
    name: &'static str,
}

/// The paths the process executor's tests read: the secret under its default target, the same
/// secret under an absolute target with its own owner and mode, the config under a relative target.
const PROCESS_PROBES: [Probe; 3] = [
    Probe {
        path: "$SWARM_SECRETS_DIR/db",
        name: "secret",
    },
    Probe {
        path: "$SWARM_TASK_ROOT/etc/db.key",
        name: "abs",
    },
    Probe {
        path: "$SWARM_TASK_ROOT/etc/app.conf",
        name: "config",
    },
];

/// A task command (`sh -c` script, no commas as swarmctl splits `--args` on them) that copies
/// each probe that exists, with `stat -c '%a %u %g'` of it, and its task root and secrets dir
/// into `<out>/<task id>/` (renamed into place once complete), then sleeps. `marker` goes in the
/// command line, for finding the process.
fn report_script(out: &Path, probes: &[Probe], marker: &str) -> String {
    let mut s = format!(
        "o={}/$(basename $SWARM_TASK_ROOT); mkdir $o.tmp; \
         echo $SWARM_TASK_ROOT > $o.tmp/root; echo $SWARM_SECRETS_DIR > $o.tmp/secrets_dir; ",
        out.display()
    );
    for p in probes {
        s += &format!(
            "if [ -e {path} ]; then cat {path} > $o.tmp/{name}; \
             stat -c '%a %u %g' {path} > $o.tmp/{name}.stat; fi; ",
            path = p.path,
            name = p.name
        );
    }
    s += &format!("mv $o.tmp $o; sleep 1000 # {marker}");
    s
}

/// What one task reported through `report_script`.
struct Report {
    dir: PathBuf,
}

impl Report {
    /// Waits for task `task`'s report in `out`.
    fn wait(out: &Path, task: &str) -> Report {
        let dir = out.join(task);
        wait_for(&format!("task {task}'s report"), WAIT, || {
            dir.is_dir().then_some(())
        });
        Report { dir }
    }

    fn line(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("report {name}: {e}"))
            .trim()
            .to_string()
    }

    /// The task root (`SWARM_TASK_ROOT`) the task saw.
    fn root(&self) -> PathBuf {
        PathBuf::from(self.line("root"))
    }

    /// The bytes the task read from probe `name`, if the file existed.
    fn data(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(name)).ok()
    }

    /// `mode uid gid` of probe `name`.
    fn stat(&self, name: &str) -> String {
        self.line(&format!("{name}.stat"))
    }
}

/// `mode uid gid` expected of a file whose reference asks for `uid`/`gid`: they apply when swarmd
/// runs as root; otherwise the files are the running user's.
fn expected_stat(mode: &str, uid: u32, gid: u32) -> String {
    if is_root() {
        format!("{mode} {uid} {gid}")
    } else {
        let meta = std::fs::metadata("/proc/self").expect("/proc/self");
        format!("{mode} {} {}", meta.uid(), meta.gid())
    }
}

/// Kills, by process group, the task processes carrying marker `.0` that still run when a test
/// ends early (a worker killed with SIGKILL leaves its tasks running).
struct ReapTasks(String);

impl Drop for ReapTasks {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            kill_group(pid);
        }
    }
}

/// SIGKILL to the process group `pid` leads (a task's shell and its `sleep`).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
}

/// What the tests of one secret share: secret `db` around a fresh token, a directory for the
/// tasks' reports, the marker of their processes (killed at the end) and the script reporting
/// the secret.
struct OneSecret {
    token: String,
    secret: Vec<u8>,
    out: tempfile::TempDir,
    mark: String,
    script: String,
    _reap: ReapTasks,
}

impl OneSecret {
    /// Creates secret `db` on manager `m`, for test `test` (the marker's prefix).
    fn create(m: &Swarmd, test: &str) -> OneSecret {
        let token = token();
        let secret = payload(&token);
        create_from_file(m, "secret", "db", &secret);
        let out = tempfile::tempdir().expect("tempdir");
        let mark = marker(test);
        let script = report_script(out.path(), &PROCESS_PROBES[..1], &mark);
        OneSecret {
            token,
            secret,
            out,
            _reap: ReapTasks(mark.clone()),
            mark,
            script,
        }
    }
}

/// Checks a task's report of `PROCESS_PROBES` against the secret and config it references.
#[track_caller]
fn assert_delivered(report: &Report, secret: &[u8], config: &[u8]) {
    let root = report.root();
    assert_eq!(
        report.line("secrets_dir"),
        format!("{}/run/secrets", root.display()),
        "SWARM_SECRETS_DIR"
    );
    assert_eq!(
        report.data("secret").as_deref(),
        Some(secret),
        "secret bytes"
    );
    assert_eq!(
        report.data("abs").as_deref(),
        Some(secret),
        "absolute target"
    );
    assert_eq!(
        report.data("config").as_deref(),
        Some(config),
        "config bytes"
    );
    assert_eq!(report.stat("secret"), expected_stat("444", 0, 0));
    assert_eq!(report.stat("abs"), expected_stat("400", 1000, 1000));
    assert_eq!(report.stat("config"), expected_stat("444", 0, 0));
    assert_eq!(
        fs_type(&root),
        "tmpfs",
        "{} is not on a tmpfs",
        root.display()
    );
    let base_ok = tmpfs_bases().iter().any(|b| root.starts_with(b));
    assert!(base_ok, "task root {} outside the bases", root.display());
    // The files are world-readable (0444) as asked: only the task's directory keeps other users
    // out.
    let mode = std::fs::metadata(&root).expect("task root").mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "task root mode {mode:o}");
}

/// The `--secret`/`--config` flags of the services in these tests: secret `db` at its default
/// target and at `/etc/db.key` (uid/gid 1000, mode 0400), config `appcfg` at `etc/app.conf`.
const REFERENCE_FLAGS: [&str; 6] = [
    "--secret",
    "db",
    "--secret",
    "source=db,target=/etc/db.key,uid=1000,gid=1000,mode=0400",
    "--config",
    "appcfg:etc/app.conf",
];

/// Creates service `name` of one replica placed by `constraint`, running `script`, with `refs`.
fn create_placed(m: &Swarmd, name: &str, constraint: &str, refs: &[&str], script: &str) {
    let mut flags = vec![
        "--image",
        "busybox",
        "--replicas",
        "1",
        "--constraint",
        constraint,
        "--restart-delay",
        "1s",
    ];
    flags.extend_from_slice(refs);
    m.create_shell_service(name, &flags, script);
}

#[test]
fn process_tasks_get_their_secrets_and_configs_and_nothing_leaks() {
    let debug = ["--log-level", "debug"];
    let c = Cluster::start_with(2, &debug, &debug, "5s");
    let (a, b) = (&c.workers[0], &c.workers[1]);
    let m = &c.manager;
    let (secret_token, config_token) = (token(), token());
    let (secret, config) = (payload(&secret_token), payload(&config_token));
    create_from_file(m, "secret", "db", &secret);
    create_from_file(m, "config", "appcfg", &config);

    let out = tempfile::tempdir().expect("tempdir");
    let mark = marker("secrets-process");
    let _reap = ReapTasks(mark.clone());
    let svc = "secsvc";
    let script = report_script(out.path(), &PROCESS_PROBES, &mark);
    create_placed(m, svc, "node.hostname==node-2", &REFERENCE_FLAGS, &script);
    let first = wait_running_task(m, svc, &[]);
    assert_eq!(first.node, "node-2");
    let report = Report::wait(out.path(), &first.id);
    assert_delivered(&report, &secret, &config);
    let root = report.root();
    assert_eq!(
        root.file_name().and_then(|n| n.to_str()),
        Some(first.id.as_str()),
        "per-task dir named by task ID"
    );

    // Nowhere else: on the tmpfs only under A's task root, in no worker's state dir (A's files
    // are on the tmpfs, not there), in no log.
    let needles = leak_forms(&secret_token);
    assert_only_under(&root, &needles, "secret");
    assert_only_under(&root, &leak_forms(&config_token), "config");
    for w in [a, b] {
        let found = files_containing(&w.state_dir(), &needles);
        assert!(found.is_empty(), "secret bytes in a state dir: {found:?}");
    }
    assert_not_logged(&[m, a, b], &needles);

    // In use: neither can be removed, and nothing changes.
    for (kind, name) in [("secret", "db"), ("config", "appcfg")] {
        let in_use = format!("Error: {kind} '{name}' is in use by the following service: {svc}");
        assert_refused(m, &[kind, "rm", name], &in_use, true);
    }

    // Dropping the secret rolls the task: the new one has the config and no secret.
    m.ctl(&["service", "update", svc, "--rm-secret", "db"]).ok();
    let second = wait_running_task(m, svc, &[&first.id]);
    let rolled = Report::wait(out.path(), &second.id);
    assert_ne!(rolled.root(), root);
    assert_eq!(
        rolled.data("secret"),
        None,
        "removed secret still delivered"
    );
    assert_eq!(rolled.data("abs"), None, "removed secret still delivered");
    assert_eq!(rolled.data("config").as_deref(), Some(&config[..]));
    assert!(
        !rolled.root().join("run/secrets/db").exists(),
        "the new task's secret file exists"
    );
    // No task references the secret any more: the stopped task's copy goes too.
    wait_for("no copy of the dropped secret left", WAIT, || {
        tmpfs_files_containing(&needles).is_empty().then_some(())
    });

    // Scaled to 0: the task's files go with it, and so does its process.
    m.ctl(&["service", "update", svc, "--replicas", "0"]).ok();
    let rolled_root = rolled.root();
    wait_for("the task's files removed", WAIT, || {
        (!rolled_root.exists()).then_some(())
    });
    wait_processes(&mark, 0);

    // Removing the service removes the first task's directory (its record stayed as history).
    m.ctl(&["service", "rm", svc]).ok();
    wait_for("the first task's files removed", WAIT, || {
        (!root.exists()).then_some(())
    });
    m.ctl(&["secret", "rm", "db"]).ok();
    assert_not_logged(&[m, a, b], &needles);
    let left = tmpfs_files_containing(&needles);
    assert!(left.is_empty(), "secret bytes left behind: {left:?}");
    c.stop();
}

#[test]
fn a_drained_node_keeps_no_copy_of_the_secret() {
    let c = Cluster::start(2, &[], "5s");
    let m = &c.manager;
    let one = OneSecret::create(m, "secrets-drain");
    let svc = "moved";
    create_placed(
        m,
        svc,
        "node.hostname!=node-1",
        &["--secret", "db"],
        &one.script,
    );
    let first = wait_running_task(m, svc, &[]);
    Report::wait(one.out.path(), &first.id);

    // Drained, the node's task stops and a new one starts on the other worker, with the secret.
    m.ctl(&["node", "drain", &first.node]).ok();
    let moved = wait_running_task(m, svc, &[&first.id]);
    assert_ne!(moved.node, first.node);
    let report = Report::wait(one.out.path(), &moved.id);
    assert_eq!(report.data("secret").as_deref(), Some(&one.secret[..]));

    // The drained node runs nothing that references the secret any more: its copy goes (the
    // stopped task's record stays, as history, but its files have no one to serve).
    let root = report.root();
    let needles = leak_forms(&one.token);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && tmpfs_files_containing(&needles)
            .iter()
            .any(|p| !p.starts_with(&root))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_only_under(&root, &needles, "secret");
    m.ctl(&["service", "rm", svc]).ok();
    wait_processes(&one.mark, 0);
    c.stop();
}

/// Removes the containers of service `name` when dropped, so a failing test leaves none.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        for id in docker::containers(&self.0) {
            let _ = docker::docker(&["rm", "-f", &id]);
        }
    }
}

/// `docker exec <container> <args>`: what it printed, byte for byte, when it succeeded.
fn exec(container: &str, args: &[&str]) -> Option<Vec<u8>> {
    let mut all = vec!["exec", container];
    all.extend_from_slice(args);
    docker_bytes(&all)
}

/// `(destination, source, read-write)` of a container's mounts, from `docker inspect`.
fn mounts(container: &str) -> Vec<(String, String, String)> {
    let format = "{{range .Mounts}}{{.Destination}} {{.Source}} {{.RW}}\n{{end}}";
    docker::docker(&["inspect", "--format", format, container])
        .expect("docker inspect")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

#[test]
fn docker_tasks_read_their_secrets_from_read_only_mounts() {
    if !engine_ready() {
        return;
    }
    let m = Swarmd::start_with(&["--executor", "docker", "--log-level", "debug"]);
    let (secret_token, config_token) = (token(), token());
    let (secret, config) = (payload(&secret_token), payload(&config_token));
    create_from_file(&m, "secret", "db", &secret);
    create_from_file(&m, "config", "appcfg", &config);
    let name = format!("itsecrets{}", std::process::id());
    let _cleanup = RemoveContainers(name.clone());
    let mut cmd = vec![
        "service",
        "create",
        "--name",
        &name,
        "--image",
        IMAGE,
        "--command",
        "/bin/sh",
        "--args",
        "-c,trap 'exit 0' TERM; sleep 300 & wait",
    ];
    cmd.extend_from_slice(&REFERENCE_FLAGS);
    m.ctl(&cmd).ok();
    let task = wait_running_task(&m, &name, &[]);
    let container = wait_for("the task's container", WAIT, || {
        match &docker::containers(&name)[..] {
            [id] => Some(id.clone()),
            _ => None,
        }
    });

    // Inside: the secret under /run/secrets and at its absolute target, the config at /<target>.
    for (path, data) in [
        ("/run/secrets/db", &secret),
        ("/etc/db.key", &secret),
        ("/etc/app.conf", &config),
    ] {
        assert_eq!(
            exec(&container, &["cat", path]).as_deref(),
            Some(&data[..]),
            "{path} in the container"
        );
    }
    let ls = exec(
        &container,
        &[
            "ls",
            "-ln",
            "/run/secrets/db",
            "/etc/db.key",
            "/etc/app.conf",
        ],
    )
    .expect("ls in the container");
    let ls = String::from_utf8_lossy(&ls).into_owned();
    for (path, mode, owner) in [
        ("/run/secrets/db", "-r--r--r--", expected_stat("444", 0, 0)),
        (
            "/etc/db.key",
            "-r--------",
            expected_stat("400", 1000, 1000),
        ),
        ("/etc/app.conf", "-r--r--r--", expected_stat("444", 0, 0)),
    ] {
        let line = ls
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} not listed: {ls}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], mode, "{line}");
        let octal = owner.split(' ').next().expect("mode");
        assert_eq!(format!("{octal} {} {}", f[2], f[3]), owner, "{line}");
    }
    assert!(
        exec(&container, &["sh", "-c", "echo x > /run/secrets/db"]).is_none(),
        "the secret is writable in the container"
    );

    // Outside: read-only bind mounts of files on a tmpfs; no secret in the container's config
    // nor in swarmd's log.
    let mounted = mounts(&container);
    let mut sources = Vec::new();
    for dest in ["/run/secrets/db", "/etc/db.key", "/etc/app.conf"] {
        let (_, source, rw) = mounted
            .iter()
            .find(|(d, _, _)| d == dest)
            .unwrap_or_else(|| panic!("no mount at {dest}: {mounted:?}"));
        assert_eq!(rw, "false", "{dest} mounted read-write");
        assert_eq!(fs_type(Path::new(source)), "tmpfs", "{source}");
        sources.push(PathBuf::from(source));
    }
    let root = sources[0]
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == task.id.as_str()))
        .unwrap_or_else(|| panic!("{sources:?} not in a dir of task {}", task.id))
        .to_path_buf();
    assert!(sources.iter().all(|s| s.starts_with(&root)), "{sources:?}");
    let needles = leak_forms(&secret_token);
    assert_only_under(&root, &needles, "secret");
    let inspect = docker::docker(&["inspect", &container]).expect("docker inspect");
    assert!(
        !inspect.contains(&secret_token),
        "secret in the container's config"
    );
    assert_not_logged(&[&m], &needles);

    // Dropping the secret rolls the task: the stopped container's secret files go at once.
    m.ctl(&["service", "update", &name, "--rm-secret", "db"])
        .ok();
    wait_running_task(&m, &name, &[&task.id]);
    wait_for("the stopped container's secret files removed", WAIT, || {
        (sources[..2].iter().all(|s| !s.exists()) && tmpfs_files_containing(&needles).is_empty())
            .then_some(())
    });
    let rolled = wait_for(
        "the new task's container",
        WAIT,
        || match &docker::containers(&name)[..] {
            [a, b] => Some(if *a == container { b } else { a }.clone()),
            _ => None,
        },
    );
    sources.extend(
        mounts(&rolled)
            .into_iter()
            .map(|(_, s, _)| PathBuf::from(s)),
    );

    // Scaled to 0: the running container and every host file gone (the stopped container stays
    // as its task's history until the service goes).
    m.ctl(&["service", "update", &name, "--replicas", "0"]).ok();
    wait_for("the container and its files removed", WAIT, || {
        (!docker::containers(&name).contains(&rolled) && sources.iter().all(|s| !s.exists()))
            .then_some(())
    });
    m.ctl(&["service", "rm", &name]).ok();
    wait_for("no container of the service left", WAIT, || {
        docker::containers(&name).is_empty().then_some(())
    });
    assert_not_logged(&[&m], &needles);
}

/// The secrets, configs and services, each service as `service inspect` shows it up to its task
/// table (whose relative times change by themselves).
fn state(m: &Swarmd) -> Vec<String> {
    let mut out: Vec<String> = [
        &["secret", "ls", "-q"][..],
        &["config", "ls", "-q"],
        &["service", "ls", "-q"],
    ]
    .iter()
    .map(|cmd| m.ctl(cmd).ok().to_string())
    .collect();
    for id in out[2].clone().lines() {
        let inspect = m.ctl(&["service", "inspect", id]).ok().to_string();
        let spec = inspect.split("\n\n").next().unwrap_or_default();
        out.push(spec.to_string());
    }
    out
}

/// Asserts that swarmctl `args` fails with a first line `expected` (or containing it, when
/// `exact` is false) and that the services, secrets and configs are unchanged.
#[track_caller]
fn assert_refused(m: &Swarmd, args: &[&str], expected: &str, exact: bool) {
    let before = state(m);
    let out: Ctl = m.ctl(args);
    let first = out.err().lines().next().unwrap_or_default().to_string();
    if exact {
        assert_eq!(first, expected, "{args:?}");
    } else {
        assert!(first.contains(expected), "{args:?}: {first}");
    }
    assert_eq!(state(m), before, "{args:?} changed the state");
}

#[test]
fn bad_secret_and_config_references_change_nothing() {
    let m = Swarmd::start_with(&["--executor", "process"]);
    create_from_file(&m, "secret", "db", b"one");
    create_from_file(&m, "secret", "other", b"two");
    create_from_file(&m, "config", "appcfg", b"three");
    create_from_file(&m, "config", "othercfg", b"four");
    let base = [
        "service",
        "create",
        "--name",
        "base",
        "--image",
        "busybox",
        "--replicas",
        "0",
    ];
    m.ctl(&base).ok();
    let create = |refs: &[&'static str]| -> Vec<&'static str> {
        let mut cmd = vec![
            "service",
            "create",
            "--name",
            "bad",
            "--image",
            "busybox",
            "--replicas",
            "0",
        ];
        cmd.extend_from_slice(refs);
        cmd
    };
    let update = |refs: &[&'static str]| -> Vec<&'static str> {
        let mut cmd = vec!["service", "update", "base"];
        cmd.extend_from_slice(refs);
        cmd
    };

    for cmd in [
        create(&["--secret", "missing"]),
        update(&["--add-secret", "missing"]),
    ] {
        assert_refused(&m, &cmd, "Error: secret not found: missing", true);
    }
    for cmd in [
        create(&["--config", "missing"]),
        update(&["--add-config", "missing"]),
    ] {
        assert_refused(&m, &cmd, "Error: config not found: missing", true);
    }
    let twice = "Error: secret references 'db' and 'other' have a conflicting target: 't'";
    assert_refused(
        &m,
        &create(&["--secret", "db:t", "--secret", "other:t"]),
        twice,
        true,
    );
    let twice = "Error: config references 'appcfg' and 'othercfg' have a conflicting target: 't'";
    assert_refused(
        &m,
        &create(&["--config", "appcfg:t", "--config", "othercfg:t"]),
        twice,
        true,
    );
    for target in ["db:../x", "db:a/../../x", "db:a/../b"] {
        let escaping = target.trim_start_matches("db:");
        assert_refused(&m, &create(&["--secret", target]), escaping, false);
        assert_refused(&m, &update(&["--add-secret", target]), escaping, false);
    }
    for target in ["appcfg:../x", "appcfg:a/../../x", "appcfg:a/../b"] {
        let escaping = target.trim_start_matches("appcfg:");
        assert_refused(&m, &create(&["--config", target]), escaping, false);
    }
    for (flag, target) in [("--secret", "db:."), ("--config", "appcfg:/")] {
        let named = target.split_once(':').expect("name:target").1;
        let nothing = format!("'{named}' names no file");
        assert_refused(&m, &create(&[flag, target]), &nothing, false);
    }
    // Two targets naming one file in the task, as the agent sees them: refused by the API.
    for (other, (kind, name, target)) in [
        (
            "other:/run/secrets/x",
            ("secret", "other", "/run/secrets/x"),
        ),
        (
            "appcfg:run/secrets/x",
            ("config", "appcfg", "run/secrets/x"),
        ),
    ] {
        let flag = format!("--{kind}");
        let same_file = format!(
            "Error: secret reference 'db' (target 'x') and {kind} reference '{name}' \
             (target '{target}') name the same file in the task: '/run/secrets/x'"
        );
        let cmd = create(&["--secret", "db:x"]);
        let cmd: Vec<&str> = cmd.into_iter().chain([flag.as_str(), other]).collect();
        assert_refused(&m, &cmd, &same_file, true);
    }
    assert_refused(
        &m,
        &create(&["--secret", ":t"]),
        "Error: invalid secret name provided",
        true,
    );

    // Data sizes: one byte under the limit is taken, the limit itself is not.
    let (big, bigger) = (vec![b'x'; 511_999], vec![b'x'; 512_000]);
    create_from_file(&m, "secret", "big", &big);
    m.ctl(&["secret", "rm", "big"]).ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, &bigger).expect("write data");
    let file = file.to_str().expect("utf-8 path");
    assert_refused(
        &m,
        &["secret", "create", "big", "-f", file],
        "Error: secret data must be larger than 0 and less than 512000 bytes",
        true,
    );
    std::fs::write(file, vec![b'x'; 1_024_000]).expect("write data");
    assert_refused(
        &m,
        &["config", "create", "big", "-f", file],
        "Error: config data must be larger than 0 and less than 1024000 bytes",
        true,
    );
    for kind in ["secret", "config"] {
        assert_refused(
            &m,
            &[kind, "create", "", "-f", file],
            "Error: name must be provided",
            true,
        );
    }
}

#[test]
fn a_restarted_worker_keeps_its_task_files_and_sweeps_the_others() {
    // A long heartbeat: the worker is down for a few seconds and must not be declared down (its
    // tasks would be replaced).
    let mut c = Cluster::start(1, &[], "10s");
    let m = &c.manager;
    let one = OneSecret::create(m, "secrets-restart");
    create_placed(
        m,
        "kept",
        "node.hostname==node-2",
        &["--secret", "db"],
        &one.script,
    );
    create_placed(
        m,
        "dropped",
        "node.hostname==node-2",
        &["--secret", "db"],
        &one.script,
    );
    let kept = wait_running_task(m, "kept", &[]);
    let dropped = wait_running_task(m, "dropped", &[]);
    let (kept_report, dropped_report) = (
        Report::wait(one.out.path(), &kept.id),
        Report::wait(one.out.path(), &dropped.id),
    );
    let (kept_root, dropped_root) = (kept_report.root(), dropped_report.root());
    let pids = wait_processes(&one.mark, 2);

    // Down: one service scaled to 0 meanwhile, and a per-task dir of a task that never existed.
    c.workers[0].kill9();
    let m = &c.manager;
    m.ctl(&["service", "update", "dropped", "--replicas", "0"])
        .ok();
    let base = kept_root.parent().expect("base").to_path_buf();
    let fake = base.join("fakefakefakefakefakefake0");
    std::fs::create_dir_all(fake.join("run/secrets")).expect("fake task dir");
    std::fs::write(fake.join("run/secrets/db"), b"stale").expect("fake secret");

    c.workers[0].spawn_until("agent session registered", WAIT);
    let m = &c.manager;
    wait_for("the unknown task's dir swept", WAIT, || {
        (!fake.exists()).then_some(())
    });
    wait_for("the scaled-down task's dir removed", WAIT, || {
        (!dropped_root.exists()).then_some(())
    });
    // The running task is the same process, same task, and its files are still there.
    let kept_pids: std::collections::BTreeSet<u32> = pids_with(&one.mark);
    assert_eq!(kept_pids.len(), 1, "{kept_pids:?}");
    assert!(kept_pids.is_subset(&pids), "the kept task was restarted");
    assert_eq!(wait_running_task(m, "kept", &[]), kept);
    assert_eq!(
        std::fs::read(kept_root.join("run/secrets/db"))
            .ok()
            .as_deref(),
        Some(&one.secret[..]),
        "the running task's secret after the restart"
    );
    let needles = leak_forms(&one.token);
    let found = files_containing(&c.workers[0].state_dir(), &needles);
    assert!(found.is_empty(), "secret bytes in the state dir: {found:?}");

    // The restarted agent knows the secret again (from its new session): when the kept task's
    // process dies, its replacement gets the same bytes.
    kill_group(*kept_pids.first().expect("pid"));
    let replacement = wait_running_task(m, "kept", &[&kept.id]);
    let again = Report::wait(one.out.path(), &replacement.id);
    assert_eq!(again.data("secret").as_deref(), Some(&one.secret[..]));
    assert_not_logged(&[m, &c.workers[0]], &needles);

    m.ctl(&["service", "rm", "kept"]).ok();
    m.ctl(&["service", "rm", "dropped"]).ok();
    for root in [kept_root, again.root()] {
        wait_for("the kept tasks' dirs removed", WAIT, || {
            (!root.exists()).then_some(())
        });
    }
    wait_processes(&one.mark, 0);
    c.stop();
}
