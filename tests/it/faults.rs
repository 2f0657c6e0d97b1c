//! Injected storage faults under a real swarmd: its state directory fills up (a small tmpfs),
//! turns read-only while it runs (an ext4 loop mount with `errors=remount-ro`, made to fail
//! through ext4's `trigger_fs_error` test hook), or holds a corrupt raft database at start. Each
//! time swarmd must exit non-zero with one `level=fatal` line naming the cause and the raft
//! database, instead of serving on with a dead raft. A worker whose state directory turns
//! read-only exits the same way, naming its task database, when it must store a task. Mounting needs root (CAP_SYS_ADMIN) and,
//! for ext4, a loop device: without them a test prints `skipped: <reason>` and returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Swarmd, wait_for};

/// A filesystem mounted for one test, lazily unmounted when dropped (a loop device goes with
/// its mount).
struct Mount {
    path: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    /// A tmpfs of `size` (`8m`) at `path`, mode 0700 as swarmd wants its state directory.
    fn tmpfs(path: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let opts = format!("size={size},mode=0700");
        let p = path.to_str().expect("utf-8 path");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", p])?;
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }

    /// A fresh ext4 filesystem in `image` (64 MiB) loop-mounted at `path`; an error makes it
    /// read-only (`errors=remount-ro`).
    fn ext4(image: &Path, path: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(image).map_err(|e| e.to_string())?;
        file.set_len(64 << 20).map_err(|e| e.to_string())?;
        let img = image.to_str().expect("utf-8 path");
        run("mkfs.ext4", &["-q", "-F", img])?;
        let p = path.to_str().expect("utf-8 path");
        run("mount", &["-o", "loop,errors=remount-ro", img, p])?;
        let m = Mount {
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// Makes the ext4 filesystem report an error, which `errors=remount-ro` turns into a
    /// read-only filesystem under the files swarmd holds open.
    fn fail_ext4_read_only(&self) -> Result<(), String> {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.path)
            .output()
            .map_err(|e| format!("findmnt: {e}"))?;
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dev = Path::new(&source)
            .file_name()
            .ok_or_else(|| format!("no device for {}", self.path.display()))?;
        let hook = Path::new("/sys/fs/ext4").join(dev).join("trigger_fs_error");
        std::fs::write(&hook, "1").map_err(|e| format!("{}: {e}", hook.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A test that cannot inject its fault on this machine says why and passes.
fn skipped(why: String) {
    println!("skipped: {why}");
}

/// The exit code of `d` once it has exited (it then counts as stopped), `None` while it runs.
fn exit_code(d: &mut Swarmd) -> Option<i32> {
    let status = d.child.as_mut()?.try_wait().expect("wait")?;
    d.child = None;
    Some(status.code().unwrap_or(-1))
}

/// Creates 100 KB secrets, one after the other, until swarmd exits; returns its exit code and
/// how many creates succeeded. Panics if it still runs after `limit`.
fn create_secrets_until_exit(d: &mut Swarmd, limit: Duration) -> (i32, usize) {
    let data = d.dir.path().join("secret");
    let bytes: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&data, bytes).expect("secret data");
    let data = data.to_str().expect("utf-8 path").to_string();
    let start = Instant::now();
    let mut created = 0;
    for i in 0.. {
        if let Some(code) = exit_code(d) {
            return (code, created);
        }
        assert!(
            start.elapsed() < limit,
            "swarmd still runs after {limit:?} and {created} secrets; log:\n{}",
            d.log()
        );
        if d.ctl(&["secret", "create", &format!("s{i}"), "-f", &data])
            .code
            == 0
        {
            created += 1;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    unreachable!("the loop returns or panics")
}

/// The run's log holds exactly one `level=fatal` line, and it names each of `what`.
#[track_caller]
fn assert_one_fatal_line(log: &str, what: &[&str]) {
    let fatal: Vec<&str> = log.lines().filter(|l| l.contains("level=fatal")).collect();
    assert_eq!(fatal.len(), 1, "one level=fatal line expected; log:\n{log}");
    for w in what {
        assert!(
            fatal[0].contains(w),
            "the fatal line does not name {w:?}: {}",
            fatal[0]
        );
    }
}

/// The state directory is a tmpfs of 8 MiB: the raft log fills it while secrets are created,
/// redb's commit fails with ENOSPC, and swarmd exits 1 with one fatal line naming the error and
/// the raft database, instead of running on with raft stopped.
#[test]
fn a_full_tmpfs_state_dir_makes_swarmd_exit_nonzero_with_one_fatal_line() {
    let mut d = Swarmd::unstarted(&["--executor", "process"]);
    let state = d.state_dir();
    let mount = match Mount::tmpfs(&state, "8m") {
        Ok(m) => m,
        Err(e) => return skipped(format!("cannot mount a tmpfs: {e}")),
    };
    d.spawn();
    let (code, created) = create_secrets_until_exit(&mut d, Duration::from_secs(180));
    let log = d.log();
    assert_eq!(code, 1, "exit code; log:\n{log}");
    assert!(
        created > 0,
        "the first write already failed: the fault came too early"
    );
    let db = state.join("raft/raft.redb");
    assert_one_fatal_line(
        &log,
        &["No space left on device", db.to_str().expect("utf-8")],
    );
    assert!(!d.socket().exists() || d.ctl(&["cluster", "ls", "-q"]).code != 0);
    drop(mount);
}

/// The state directory is an ext4 filesystem that turns read-only under the running swarmd (as
/// a disk failing does with `errors=remount-ro`): the next raft write fails with EROFS and
/// swarmd exits 1 with one fatal line naming the error and the raft database.
#[test]
fn a_state_dir_turned_read_only_makes_swarmd_exit_nonzero_with_one_fatal_line() {
    let mut d = Swarmd::unstarted(&["--executor", "process"]);
    let state = d.state_dir();
    let image = d.dir.path().join("state.ext4");
    let mount = match Mount::ext4(&image, &state) {
        Ok(m) => m,
        Err(e) => return skipped(format!("cannot loop-mount ext4: {e}")),
    };
    d.spawn();
    let small = d.dir.path().join("small");
    std::fs::write(&small, "x").expect("secret data");
    let ctl = d.ctl(&[
        "secret",
        "create",
        "before",
        "-f",
        small.to_str().expect("utf-8"),
    ]);
    assert_eq!(ctl.code, 0, "a write before the fault: {ctl:?}");
    if let Err(e) = mount.fail_ext4_read_only() {
        return skipped(format!("cannot make ext4 fail: {e}"));
    }
    let (code, _) = create_secrets_until_exit(&mut d, Duration::from_secs(60));
    let log = d.log();
    assert_eq!(code, 1, "exit code; log:\n{log}");
    let db = state.join("raft/raft.redb");
    assert_one_fatal_line(
        &log,
        &["Read-only file system", db.to_str().expect("utf-8")],
    );
    drop(mount);
}

/// A raft database whose header was overwritten: the restart exits 1 with one fatal line naming
/// the database, without serving.
#[test]
fn a_corrupt_raft_database_makes_swarmd_exit_nonzero_at_start() {
    let mut d = Swarmd::start_with(&["--executor", "process"]);
    assert_eq!(d.stop(), Some(0), "graceful stop; log:\n{}", d.log());
    let db = d.state_dir().join("raft/raft.redb");
    let mut bytes = std::fs::read(&db).expect("raft database");
    let header = bytes.len().min(4096);
    bytes[..header].fill(0xa5);
    std::fs::write(&db, bytes).expect("corrupt the raft database");
    let skip = d.log().len();
    let code = d.spawn_until("node is ready", Duration::from_secs(30));
    let log = d.log()[skip..].to_string();
    assert_eq!(code, Some(1), "exit code; log:\n{log}");
    assert_one_fatal_line(&log, &[db.to_str().expect("utf-8")]);
    assert!(!log.contains("Listening for local connections"), "{log}");
}

/// A worker's state directory turns read-only while it runs: the agent cannot store the task it
/// is assigned (it stores every task and status before reporting it), so the worker exits 1 with
/// one fatal line naming its task database, instead of running on without persisting.
#[test]
fn a_workers_state_dir_turned_read_only_makes_it_exit_nonzero_when_a_task_arrives() {
    let m = Swarmd::start_with(&["--executor", "process"]);
    let token = m.join_tokens().0;
    let addr = m.remote_addr();
    let mut w = Swarmd::unstarted(&[
        "--join-addr",
        &addr,
        "--join-token",
        &token,
        "--executor",
        "process",
        "--hostname",
        "ro-worker",
    ]);
    let state = w.state_dir();
    let image = w.dir.path().join("state.ext4");
    let mount = match Mount::ext4(&image, &state) {
        Ok(m) => m,
        Err(e) => return skipped(format!("cannot loop-mount ext4: {e}")),
    };
    let code = w.spawn_until("worker node is ready", Duration::from_secs(60));
    assert_eq!(code, None, "worker exited; log:\n{}", w.log());
    let ls = wait_for("the worker READY", Duration::from_secs(60), || {
        let ls = m.ctl(&["node", "ls"]);
        let ready = ls.ok().lines().filter(|l| l.contains(" READY ")).count();
        (ready == 2).then_some(ls)
    });
    // Only the worker may take the task: drain the manager's node (the other row of `node ls`).
    let node_id = ls
        .ok()
        .lines()
        .skip(2)
        .find(|l| !l.contains("ro-worker"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the manager's node")
        .to_string();
    assert_eq!(m.ctl(&["node", "drain", &node_id]).code, 0);
    if let Err(e) = mount.fail_ext4_read_only() {
        return skipped(format!("cannot make ext4 fail: {e}"));
    }
    let ctl = m.ctl(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "busybox",
        "--command",
        "sleep",
        "--args",
        "300",
    ]);
    assert_eq!(ctl.code, 0, "{ctl:?}");
    let code = wait_for("the worker to exit", Duration::from_secs(60), || {
        exit_code(&mut w)
    });
    let log = w.log();
    assert_eq!(code, 1, "exit code; log:\n{log}");
    let db = state.join("worker/tasks.db");
    assert_one_fatal_line(
        &log,
        &["Read-only file system", db.to_str().expect("utf-8")],
    );
    drop(mount);
}
