//! Starting and stopping real swarmd processes and running swarmctl against them. Every wait is
//! bounded; processes are killed by PID when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SWARMD: &str = env!("CARGO_BIN_EXE_swarmd");
pub const SWARMCTL: &str = env!("CARGO_BIN_EXE_swarmctl");

/// A swarmd process on a temp state dir, with its control socket in the same temp dir.
pub struct Swarmd {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    extra_args: Vec<String>,
    /// Network namespace swarmd runs in (`ip netns exec`), if any.
    netns: Option<String>,
    /// SwarmKit's own build folder (holding its `swarmd` and `swarmctl`) when this is SwarmKit's
    /// swarmd rather than ours (the interop tests).
    swarmkit: Option<PathBuf>,
}

/// What a swarmctl run printed.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    fn from(out: Output) -> Ctl {
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "swarmctl failed: {self:?}");
        &self.stdout
    }

    /// Asserts exit 255 and returns stderr.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert_eq!(
            self.code, 255,
            "swarmctl should have failed with 255: {self:?}"
        );
        &self.stderr
    }
}

impl Swarmd {
    /// Starts a new single-node cluster and waits until its control API answers.
    pub fn start() -> Swarmd {
        Self::start_with(&[])
    }

    /// Like `start` with extra swarmd flags.
    pub fn start_with(extra: &[&str]) -> Swarmd {
        let mut s = Self::unstarted(extra);
        s.spawn();
        s
    }

    /// A handle on a new temp dir with extra swarmd flags, not started yet (`spawn` starts it),
    /// so a test can prepare the state directory first (mount a filesystem there, say).
    pub fn unstarted(extra: &[&str]) -> Swarmd {
        Self::unstarted_in(extra, None, None)
    }

    /// Starts SwarmKit's own swarmd, from folder `bin`, with `extra` flags, and waits until its
    /// control API answers and its agent is registered.
    pub fn start_swarmkit(bin: &Path, extra: &[&str]) -> Swarmd {
        let mut s = Self::unstarted_in(extra, None, Some(bin));
        s.spawn();
        s
    }

    /// Like `start_node` for SwarmKit's own swarmd, from folder `bin`.
    pub fn start_swarmkit_node(
        bin: &Path,
        args: &[&str],
        ready: &str,
        limit: Duration,
    ) -> (Swarmd, Option<i32>) {
        let mut s = Self::unstarted_in(args, None, Some(bin));
        let code = s.spawn_until(ready, limit);
        (s, code)
    }

    /// A handle on a new temp dir, nothing started yet.
    fn unstarted_in(args: &[&str], netns: Option<&str>, swarmkit: Option<&Path>) -> Swarmd {
        Swarmd {
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            netns: netns.map(str::to_string),
            swarmkit: swarmkit.map(Path::to_path_buf),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("swarmd.sock")
    }

    /// The manager's remote API address, from its `Listening for connections` log line.
    pub fn remote_addr(&self) -> String {
        let log = self.log();
        log.lines()
            .rev()
            .filter(|l| l.contains("Listening for connections"))
            .filter_map(|l| l.split("addr=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .next()
            .unwrap_or_else(|| panic!("no remote address in the log:\n{log}"))
            .to_string()
    }

    /// Starts swarmd with `args` on a new state dir and waits until it exits or `ready` appears
    /// in its log. Returns the handle and, if it exited, its exit code.
    pub fn start_node(args: &[&str], ready: &str, limit: Duration) -> (Swarmd, Option<i32>) {
        Self::start_node_in(None, args, ready, limit)
    }

    /// Like `start_node`, inside network namespace `netns` (`ip netns exec`, which execs swarmd
    /// so the child PID is swarmd's) when given.
    pub fn start_node_in(
        netns: Option<&str>,
        args: &[&str],
        ready: &str,
        limit: Duration,
    ) -> (Swarmd, Option<i32>) {
        let mut s = Self::unstarted_in(args, netns, None);
        let code = s.spawn_until(ready, limit);
        (s, code)
    }

    /// Replaces the extra flags later starts use (e.g. a restart without `--join-addr`).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts swarmd (again) on the same state dir and waits for `ready` in its log or its exit.
    pub fn spawn_until(&mut self, ready: &str, limit: Duration) -> Option<i32> {
        assert!(self.child.is_none(), "swarmd already running");
        let skip = self.log().len();
        self.child = Some(self.command().spawn().expect("spawn swarmd"));
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if self.log().get(skip..).is_some_and(|l| l.contains(ready)) {
                return None;
            }
            if start.elapsed() > limit {
                panic!(
                    "swarmd neither ready nor exited after {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("swarmd.log"))
            .expect("log file");
        let program = match &self.swarmkit {
            Some(bin) => bin.join("swarmd"),
            None => PathBuf::from(SWARMD),
        };
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("-d")
            .arg(self.state_dir())
            .arg("--listen-control-api")
            .arg(self.socket());
        // Defaults unless the caller gave its own.
        let has = |flag: &str| self.extra_args.iter().any(|a| a == flag);
        if !has("--listen-remote-api") {
            cmd.args(["--listen-remote-api", "127.0.0.1:0"]);
        }
        // SwarmKit's swarmd has no such flag (its tick is one second).
        if !has("--raft-tick-ms") && self.swarmkit.is_none() {
            cmd.args(["--raft-tick-ms", "100"]);
        }
        if !has("--hostname") {
            cmd.args(["--hostname", "node-1"]);
        }
        cmd.args(&self.extra_args).stdout(Stdio::null()).stderr(log);
        cmd
    }

    /// Starts swarmd (again) on the same state dir without waiting for anything; returns the
    /// log length before the start, for reading only what this run logs.
    pub fn spawn_detached(&mut self) -> usize {
        assert!(self.child.is_none(), "swarmd already running");
        let skip = self.log().len();
        self.child = Some(self.command().spawn().expect("spawn swarmd"));
        skip
    }

    /// Starts swarmd (again) on the same state dir and waits for the control API.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "swarmd already running");
        let skip = self.log().len();
        self.child = Some(self.command().spawn().expect("spawn swarmd"));
        self.wait_ready(Duration::from_secs(30));
        // Its own agent registers right after: until then the dispatcher may still write the
        // node (status, description), which a test's versioned node update would race with.
        // SwarmKit's dispatcher logs `worker <id> was successfully registered` instead.
        let registered = match self.swarmkit {
            Some(_) => "was successfully registered",
            None => "agent session registered",
        };
        wait_for(
            "the manager's agent session",
            Duration::from_secs(30),
            || {
                self.log()
                    .get(skip..)
                    .is_some_and(|l| l.contains(registered))
                    .then_some(())
            },
        );
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("swarmd exited early with {status}; log:\n{}", self.log());
            }
            if self.socket().exists() && self.ctl(&["cluster", "ls", "-q"]).code == 0 {
                return;
            }
            if start.elapsed() > limit {
                panic!("swarmd not ready after {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("swarmd.log")).unwrap_or_default()
    }

    /// The (worker, manager) join tokens, from `cluster inspect default`.
    pub fn join_tokens(&self) -> (String, String) {
        let out = self.ctl(&["cluster", "inspect", "default"]);
        let text = out.ok();
        let token = |role: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(role))
                .map(|t| t.trim().to_string())
                .unwrap_or_else(|| panic!("no {role} token in {text}"))
        };
        (token("Worker:"), token("Manager:"))
    }

    /// Runs a swarmctl read-modify-write command (`node promote`, `node demote`, ...) and runs
    /// it again, a few times, when a concurrent change of the object (a node's own status
    /// report, say) made it fail with `update out of sequence`, as an admin would.
    pub fn ctl_update(&self, args: &[&str]) -> Ctl {
        let mut out = self.ctl(args);
        for _ in 0..10 {
            if !out.stderr.contains("update out of sequence") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = self.ctl(args);
        }
        out
    }

    /// Runs swarmctl against this manager.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        ctl_at(&self.socket(), args, None)
    }

    /// Creates service `name` with `flags` (its image among them) whose tasks run `/bin/sh -c
    /// <script>`; swarmctl must succeed.
    pub fn create_shell_service(&self, name: &str, flags: &[&str], script: &str) {
        let script = format!("-c,{script}");
        let mut args = vec!["service", "create", "--name", name];
        args.extend_from_slice(flags);
        args.extend(["--command", "/bin/sh", "--args", &script]);
        self.ctl(&args).ok();
    }

    /// Runs swarmctl with `input` on stdin.
    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Ctl {
        ctl_at(&self.socket(), args, Some(input))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Whether the process is still alive (a stopped one counts as running).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGSTOP: the process freezes (sockets stay open, nothing answers).
    pub fn pause(&self) {
        assert_eq!(kill(self.pid(), "STOP"), 0, "SIGSTOP failed");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        assert_eq!(kill(self.pid(), "CONT"), 0, "SIGCONT failed");
    }

    /// Sends `signal` and waits (bounded) for the exit status code.
    pub fn signal_and_wait(&mut self, signal: i32) -> Option<i32> {
        let pid = self.pid();
        let rc = kill(pid, signal);
        assert_eq!(rc, 0, "kill {pid} failed");
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                use std::os::unix::process::ExitStatusExt;
                return status.code().or(status.signal().map(|s| 128 + s));
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("swarmd did not exit within 20s after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop (SIGINT), bounded; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal_and_wait(2)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
}

/// Sends a signal, by number or by name (`STOP`, `CONT`), with `kill(1)`, keeping this crate free
/// of unsafe code.
fn kill(pid: i32, signal: impl std::fmt::Display) -> i32 {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    status.code().unwrap_or(-1)
}

impl Drop for Swarmd {
    /// A graceful stop first, so the node's agent shuts its tasks down, then SIGKILL if it hangs.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused (SIGSTOP) process would not see the SIGINT.
            let _ = kill(child.id() as i32, "CONT");
            let _ = kill(child.id() as i32, 2);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs swarmctl against `socket` with a bounded run time.
pub fn ctl_at(socket: &Path, args: &[&str], input: Option<&[u8]>) -> Ctl {
    ctl_with(Path::new(SWARMCTL), socket, args, input)
}

/// Runs the swarmctl binary `swarmctl` (ours or SwarmKit's) against `socket` with a bounded run
/// time.
pub fn ctl_with(swarmctl: &Path, socket: &Path, args: &[&str], input: Option<&[u8]>) -> Ctl {
    use std::io::Write;
    let mut child = Command::new(swarmctl)
        .arg("-s")
        .arg(socket)
        .args(args)
        .env_remove("SWARM_SOCKET")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swarmctl");
    if let Some(data) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write stdin");
    }
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Ctl::from(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("swarmctl {args:?} did not finish within 30s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The certificates, key and roots in a node's state directory.
/// `msg` asking for a read of the called manager's own store (`swarmd-local-read`, ours): a
/// plain read on any manager's socket is answered by the leader.
pub fn local_read<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("swarmd-local-read", "true".parse().expect("value"));
    req
}

/// A port free on 127.0.0.1 just now, for a node that must come back at the same address when
/// restarted (raft does not re-address a member yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn tls_material(state_dir: &Path) -> ca::NodeTlsMaterial {
    ca::KeyStore::new(state_dir)
        .load()
        .expect("load certificates")
        .expect("certificates present")
}

/// Control.ListNodes on the channel `channel` makes (inside the runtime, as a lazy channel needs),
/// bounded: the number of nodes.
#[allow(dead_code)]
pub fn list_nodes_on(
    rt: &tokio::runtime::Runtime,
    channel: impl FnOnce() -> tonic::transport::Channel,
) -> Result<usize, tonic::Status> {
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            api::control_client::ControlClient::new(channel())
                .list_nodes(api::ListNodesRequest::default()),
        )
        .await
        .expect("no hang")
        .map(|r| r.into_inner().nodes.len())
    })
}

/// A root CA no cluster trusts and a manager certificate it issued for node `impostor` of
/// cluster `impostor`: (root, certificate PEM, key).
#[allow(dead_code)]
pub fn impostor_cert() -> (ca::RootCa, Vec<u8>, ca::NodeKey) {
    let root = ca::RootCa::generate().expect("impostor root");
    let key = ca::NodeKey::generate().expect("key");
    let cert = root
        .issue(
            key.csr_pem().expect("csr").as_bytes(),
            "impostor",
            api::NodeRole::Manager,
            "impostor",
            ca::MIN_NODE_CERT_EXPIRY,
        )
        .expect("cert");
    (root, cert, key)
}

/// The certificate in a node's state directory, read (its key file, locked by autolock or not,
/// is left alone).
pub fn node_cert(state_dir: &Path) -> ca::CertInfo {
    let pem =
        std::fs::read(state_dir.join("certificates/swarm-node.crt")).expect("node certificate");
    ca::CertInfo::parse(&pem).expect("node certificate")
}

/// Waits until `f` returns Some, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces 25-char lowercase base36 words (object IDs) in `text` with a placeholder of the same
/// width, so that outputs can be compared with column alignment intact.
pub fn mask_ids(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    for ch in text.chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            word.push(ch);
        } else {
            flush_word(&mut out, &mut word);
            out.push(ch);
        }
    }
    flush_word(&mut out, &mut word);
    out
}

fn flush_word(out: &mut String, word: &mut String) {
    if word.len() == 25 {
        out.push_str(&format!("<id{}>", ".".repeat(21)));
    } else {
        out.push_str(word);
    }
    word.clear();
}
