//! One task as a child process: spawning it in its own process group with its output in a log
//! file, reaping it by polling `waitpid` (so `wait` is cancel-safe and no blocking thread is
//! needed), signalling the group to stop it, and adopting it after a swarmd restart from its
//! checkpoint (PID and start time). Which step runs when is the agent's task runner's business.
//! Dropping a controller leaves its process running (once it ends, it stays a zombie until a
//! controller made from its checkpoint reaps it), so that such a controller can take it over.
//!
//! std's `Command` spawns, not `tokio::process`: tokio's orphan reaper would reap a child whose
//! handle was dropped (as an adopting controller's first incarnation is) and lose its status.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use agent::{
    Controller, ExecutorError, ExitStatus, LogOptions, LogSink, RuntimeState, TaskFileSet,
};
use api::port_config::{Protocol, PublishMode};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::output::Output;
use crate::signal::parse_signal;
use crate::user::{self, User};
use crate::{Error, PORT_ENV_PREFIX, SECRETS_DIR_ENV, TASK_ROOT_ENV, procfs};

/// How often a running process is checked for its end.
const POLL: Duration = Duration::from_millis(50);

/// The environment every task starts from, before the spec's `env` (Docker's default PATH).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The exit code reported for an adopted process that was not our child (it was started by an
/// earlier swarmd), or whose PID is gone or reused: its real status went to whoever reaped it.
/// The task then fails with `task: non-zero exit (-1)`.
pub const UNKNOWN_EXIT_CODE: i32 = -1;

const UNKNOWN_EXIT: ExitStatus = ExitStatus {
    code: UNKNOWN_EXIT_CODE,
    signal: None,
};

/// A started process, as a checkpoint keeps it: the PID and its start time (field 22 of
/// `/proc/<pid>/stat`), which together name one process even after the PID is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// Process ID, which is also its process group ID.
    pub pid: i32,
    /// Clock ticks after boot at which it started.
    pub start_time: u64,
}

impl Launched {
    /// The checkpoint bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("two integers always serialise")
    }

    /// Reads checkpoint bytes written by [`Launched::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Launched, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether it has ended, and how, reaping it if it is our child.
    pub fn probe(&self) -> Result<Probe, Error> {
        let what = || format!("checking process {}", self.pid);
        let stat = procfs::read_stat(self.pid).map_err(Error::io(what()))?;
        let (Some(stat), Some(pid)) = (
            stat.filter(|s| s.start_time == self.start_time),
            Pid::from_raw(self.pid),
        ) else {
            return Ok(Probe::Gone);
        };
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => Ok(
                match exit_status(status.exit_status(), status.terminating_signal()) {
                    Some(status) => Probe::Exited(status),
                    None => Probe::Running,
                },
            ),
            Ok(None) => Ok(Probe::Running),
            // Not our child: an earlier swarmd started it, and its new parent reaps it.
            Err(Errno::CHILD) if stat.is_zombie() => Ok(Probe::Exited(UNKNOWN_EXIT)),
            Err(Errno::CHILD) => Ok(Probe::Running),
            Err(e) => Err(Error::io(what())(e.into())),
        }
    }

    /// Kills what the process left running in its group once it has ended: the task ends with
    /// its leader, as a container ends with its init. Only the group is signalled, never the
    /// PID alone, which may already name another process.
    fn kill_leftovers(&self) {
        if let Some(pid) = Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }

    /// Sends `signal` to its process group (to the process alone if it left its group).
    fn signal(&self, signal: Signal) -> Result<(), Error> {
        let Some(pid) = Pid::from_raw(self.pid) else {
            return Ok(());
        };
        let sent = match rustix::process::kill_process_group(pid, signal) {
            Err(Errno::SRCH) => rustix::process::kill_process(pid, signal),
            other => other,
        };
        match sent {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::io(format!("signalling process group {}", self.pid))(
                e.into(),
            )),
        }
    }
}

/// What [`Launched::probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It still runs.
    Running,
    /// It has just ended: the real status if it was our child, [`UNKNOWN_EXIT_CODE`] if not.
    Exited(ExitStatus),
    /// It was gone already, or its PID names another process now; how it ended is unknown.
    Gone,
}

/// The status `waitpid` gave, as the agent reports it; `None` for a stop or continue.
fn exit_status(code: Option<i32>, signal: Option<i32>) -> Option<ExitStatus> {
    match (code, signal) {
        (Some(code), _) => Some(ExitStatus { code, signal: None }),
        (None, Some(signal)) => Some(ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
        }),
        (None, None) => None,
    }
}

/// `task`'s HOST-mode ports with a published port, from its endpoint (the allocator's copy of
/// the service's ports), with their protocol.
fn published_host_ports(task: &api::Task) -> impl Iterator<Item = (Protocol, &api::PortConfig)> {
    task.endpoint
        .iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.publish_mode == PublishMode::Host as i32 && p.published_port != 0)
        .map(|p| (Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp), p))
}

/// A HOST-mode published port of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostPortMap {
    protocol: Protocol,
    target: u32,
    published: u32,
}

/// `task`'s HOST-mode ports with a published port.
fn host_port_maps(task: &api::Task) -> Vec<HostPortMap> {
    published_host_ports(task)
        .map(|(protocol, p)| HostPortMap {
            protocol,
            target: p.target_port,
            published: p.published_port,
        })
        .collect()
}

/// The variables passing a task its HOST-mode published `ports` (see [`PORT_ENV_PREFIX`]): the
/// port it must listen on, the target port in a sandbox (the node's published port is
/// forwarded to it there), the published port on the host's network.
fn port_env(ports: &[HostPortMap], sandboxed: bool) -> Vec<(String, String)> {
    ports
        .iter()
        .map(|p| {
            (
                format!("{PORT_ENV_PREFIX}{}_{}", p.target, p.protocol.as_str_name()),
                if sandboxed { p.target } else { p.published }.to_string(),
            )
        })
        .collect()
}

/// The forwards the data plane makes for a task in a sandbox: every one of `ports` (a port out
/// of range, refused by the manager, is left out).
fn forwards(ports: &[HostPortMap]) -> Vec<netplane::lb::HostPort> {
    ports
        .iter()
        .filter_map(|p| {
            Some(netplane::lb::HostPort {
                protocol: match p.protocol {
                    Protocol::Udp => netplane::lb::L4::Udp,
                    Protocol::Sctp => netplane::lb::L4::Sctp,
                    _ => netplane::lb::L4::Tcp,
                },
                published: u16::try_from(p.published).ok()?,
                target: u16::try_from(p.target).ok()?,
            })
        })
        .collect()
}

/// The HOST-mode published ports of `task` this node must have free for it: the TCP and UDP
/// ones (SCTP ones cannot be checked from std).
fn host_ports(task: &api::Task) -> Vec<(Protocol, u16)> {
    published_host_ports(task)
        .filter(|(proto, _)| matches!(proto, Protocol::Tcp | Protocol::Udp))
        .filter_map(|(proto, p)| Some((proto, u16::try_from(p.published_port).ok()?)))
        .collect()
}

/// Fails when something on this node already listens on one of `ports`: the task would start
/// and then fail to bind, or worse, another program would answer for it. A port freed between
/// this check and the task's own bind is the task's to take.
fn check_host_ports_free(ports: &[(Protocol, u16)]) -> Result<(), Error> {
    let any = std::net::Ipv4Addr::UNSPECIFIED;
    for &(proto, port) in ports {
        let bound = match proto {
            Protocol::Udp => std::net::UdpSocket::bind((any, port)).map(drop),
            _ => std::net::TcpListener::bind((any, port)).map(drop),
        };
        match bound {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(Error::HostPortInUse {
                    port,
                    protocol: proto.as_str_name().to_ascii_lowercase(),
                });
            }
            // Binding may be refused for other reasons (a privileged port, as non-root) that do
            // not stop the task from binding it.
            _ => {}
        }
    }
    Ok(())
}

/// What to run, from the task's container spec.
#[derive(Debug, Clone)]
struct Launch {
    /// `command[0]`.
    program: String,
    /// The rest of `command`, then `args`.
    args: Vec<String>,
    /// `KEY=value` sets, a bare `KEY` unsets (in order, after PATH).
    env: Vec<String>,
    /// Working directory, when given.
    dir: Option<PathBuf>,
    /// `user` as written, resolved at prepare.
    user: Option<String>,
    /// The HOST-mode published ports, passed in variables (`SWARM_PORT_80_TCP`), forwarded
    /// from the node to a task in a sandbox.
    ports: Vec<HostPortMap>,
    /// The same ports, checked free before the process starts.
    host_ports: Vec<(Protocol, u16)>,
    /// Only logged: nothing is pulled.
    image: String,
}

impl Launch {
    fn from_task(task: &api::Task) -> Result<Launch, Error> {
        let container = match task.spec.as_ref().and_then(|s| s.runtime.as_ref()) {
            Some(api::task_spec::Runtime::Container(c)) => c,
            _ => return Err(Error::NoContainerSpec),
        };
        let (program, rest) = container.command.split_first().ok_or(Error::NoCommand)?;
        Ok(Launch {
            program: program.clone(),
            args: rest.iter().chain(&container.args).cloned().collect(),
            env: container.env.clone(),
            dir: Some(&container.dir)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            user: Some(&container.user).filter(|u| !u.is_empty()).cloned(),
            ports: host_port_maps(task),
            host_ports: host_ports(task),
            image: container.image.clone(),
        })
    }

    /// The command, with `root` as its task root, run in a sandbox or not (`sandboxed`).
    fn command(
        &self,
        user: Option<User>,
        (stdout, stderr): (File, File),
        root: &Path,
        sandboxed: bool,
    ) -> io::Result<Command> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env_clear().env("PATH", DEFAULT_PATH);
        for entry in &self.env {
            match entry.split_once('=') {
                Some((key, value)) => cmd.env(key, value),
                None => cmd.env_remove(entry),
            };
        }
        // After the spec's own: where its files are and which ports it has are not the spec's
        // to say.
        cmd.env(TASK_ROOT_ENV, root)
            .env(SECRETS_DIR_ENV, root.join(agent::taskfiles::SECRETS_DIR))
            .envs(port_env(&self.ports, sandboxed));
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        if let Some(user) = user {
            // As root, std also drops the supplementary groups.
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so that stop signals reach its children too.
            .process_group(0);
        Ok(cmd)
    }
}

/// Where the task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Absent,
    Created,
    Running(Launched),
    Exited(ExitStatus),
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// The process started or adopted, for the checkpoint; kept once it has exited.
    launched: Option<Launched>,
    /// `user` resolved at prepare.
    user: Option<User>,
    /// Its network sandbox, once made.
    net: Option<netplane::TaskNet>,
}

/// Takes one task through its life as a child process (see the module docs).
#[derive(Debug)]
pub struct ProcessController {
    task_id: String,
    launch: Launch,
    stop_signal: Signal,
    grace: Duration,
    log_dir: PathBuf,
    /// Its output: the log and the FIFOs the process writes into.
    output: Output,
    /// Its secret and config files.
    files: TaskFileSet,
    /// The node's data plane (or why it has none), when it has one.
    plane: Option<crate::DataPlane>,
    /// The task as given (for its networks).
    task: api::Task,
    inner: Mutex<Inner>,
}

impl ProcessController {
    /// A controller for `task`, logging to `<log_dir>/<task id>.log`, writing its secret and
    /// config `files` at prepare; with a `checkpoint` it adopts the process the checkpoint
    /// names (Running if it still lives, Exited if it is gone or its PID was reused; it is
    /// never started again).
    pub fn new(
        task: &api::Task,
        log_dir: &Path,
        checkpoint: Option<&[u8]>,
        files: TaskFileSet,
    ) -> Result<ProcessController, Error> {
        let valid_id = !task.id.is_empty()
            && !task.id.starts_with('.')
            && task
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_id {
            return Err(Error::InvalidTaskId(task.id.clone()));
        }
        let launch = Launch::from_task(task)?;
        let (grace, stop_signal) = agent::executor::stop_settings(task);
        let stop_signal = parse_signal(&stop_signal)?;
        let launched = checkpoint
            .map(|bytes| {
                Launched::decode(bytes).map_err(|e| Error::InvalidCheckpoint {
                    task: task.id.clone(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let output = Output::new(log_dir, &task.id);
        if let Some(l) = launched {
            tracing::info!(task.id = %task.id, pid = l.pid, "adopting the task's process");
            // Its output waits in the FIFOs until someone reads them again.
            if tokio::runtime::Handle::try_current().is_ok()
                && let Err(e) = output.resume_copy()
            {
                tracing::warn!(task.id = %task.id, "reading the adopted process's output failed: {e}");
            }
        }
        Ok(ProcessController {
            task_id: task.id.clone(),
            launch,
            stop_signal,
            grace,
            log_dir: log_dir.to_path_buf(),
            output,
            files,
            plane: None,
            task: task.clone(),
            inner: Mutex::new(Inner {
                // `poll` finds out whether an adopted process still runs.
                phase: launched.map_or(Phase::Absent, Phase::Running),
                launched,
                user: None,
                net: None,
            }),
        })
    }

    /// The same controller, running the task in a sandbox of `plane` if it is on networks.
    pub fn with_data_plane(mut self, plane: Option<crate::DataPlane>) -> Self {
        self.plane = plane;
        self
    }

    /// Makes the task's network sandbox (once; nothing for a task without networks or a node
    /// without a data plane, or once it was started).
    async fn ensure_network(&self) -> Result<(), Error> {
        let Some(plane) = &self.plane else {
            return Ok(());
        };
        if self.task.networks.is_empty() {
            return Ok(());
        }
        {
            let inner = self.lock();
            if inner.net.is_some() || !matches!(inner.phase, Phase::Absent | Phase::Created) {
                return Ok(());
            }
        }
        let plane = plane.as_ref().map_err(|why| {
            Error::Network(format!(
                "the node's overlay data plane is unavailable: {why}"
            ))
        })?;
        let net = plane
            .create_sandbox(&self.task)
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        self.lock().net = net;
        Ok(())
    }

    /// Removes the task's network sandbox, if it may have one.
    async fn remove_network(&self) -> Result<(), Error> {
        if let Some(Ok(plane)) = &self.plane
            && !self.task.networks.is_empty()
        {
            self.lock().net = None;
            plane
                .destroy_sandbox(&self.task_id)
                .await
                .map_err(|e| Error::Network(e.to_string()))?;
        }
        Ok(())
    }

    /// Makes the node forward the task's HOST-mode ports to it, when it runs in a sandbox.
    async fn publish_ports(&self) -> Result<(), Error> {
        if let Some(Ok(plane)) = &self.plane
            && self.lock().net.is_some()
        {
            plane
                .publish_host_ports(&self.task_id, forwards(&self.launch.ports))
                .await
                .map_err(|e| Error::Network(e.to_string()))?;
        }
        Ok(())
    }

    /// Stops forwarding the task's HOST-mode ports (its process has ended); a failure is
    /// logged, the sandbox's removal takes them away again.
    async fn unpublish_ports(&self) {
        if let Some(Ok(plane)) = &self.plane
            && !self.task.networks.is_empty()
            && !self.launch.ports.is_empty()
            && let Err(e) = plane.unpublish_host_ports(&self.task_id).await
        {
            tracing::warn!(task.id = %self.task_id, "removing the task's host ports: {e}");
        }
    }

    /// The task's log file (its stdout and stderr lines as records: `output.rs`).
    pub fn log_path(&self) -> &Path {
        self.output.log_path()
    }

    /// The task's root: its secret and config files are laid out under it.
    pub fn task_root(&self) -> &Path {
        self.files.root()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The phase now, noticing an end (and reaping our child) if the process has ended.
    fn poll(&self) -> Result<Phase, Error> {
        let mut inner = self.lock();
        if let Phase::Running(launched) = inner.phase {
            let status = match launched.probe()? {
                Probe::Running => return Ok(inner.phase),
                Probe::Exited(status) => {
                    // Seen ending just now: a PID is not reused while its group has members,
                    // so that group is still the task's.
                    launched.kill_leftovers();
                    status
                }
                Probe::Gone => UNKNOWN_EXIT,
            };
            tracing::info!(task.id = %self.task_id, pid = launched.pid, code = status.code, "task process exited");
            inner.phase = Phase::Exited(status);
        }
        Ok(inner.phase)
    }

    /// Polls until the process has ended.
    async fn wait_exit(&self) -> Result<ExitStatus, Error> {
        loop {
            match self.poll()? {
                Phase::Exited(status) => return Ok(status),
                Phase::Running(_) => tokio::time::sleep(POLL).await,
                Phase::Absent | Phase::Created => {
                    return Err(Error::NotStarted(self.task_id.clone()));
                }
            }
        }
    }

    /// Resolves the user, checks the working directory, creates the log file and writes the
    /// task's files (its directory owned by the task's user).
    fn prepare_locked(&self, inner: &mut Inner) -> Result<(), Error> {
        if inner.phase != Phase::Absent {
            return Ok(());
        }
        inner.user = match &self.launch.user {
            Some(spec) => {
                let passwd = read_or_empty(user::PASSWD)?;
                let group = read_or_empty(user::GROUP)?;
                Some(user::resolve_user(spec, &passwd, &group)?)
            }
            None => None,
        };
        if let Some(dir) = &self.launch.dir
            && !dir.is_dir()
        {
            return Err(Error::InvalidDir(dir.clone()));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.log_dir)
            .map_err(Error::io(format!("creating {}", self.log_dir.display())))?;
        self.open_log()?;
        self.files
            .write(inner.user.map(|u| (u.uid, u.gid)))
            .map_err(Error::TaskFiles)?;
        inner.phase = Phase::Created;
        Ok(())
    }

    fn open_log(&self) -> Result<File, Error> {
        self.output
            .create_log()
            .map_err(Error::io(format!("opening {}", self.log_path().display())))
    }

    fn spawn_locked(&self, inner: &mut Inner) -> Result<(), Error> {
        let spawn_error = |source| Error::Spawn {
            program: self.launch.program.clone(),
            source,
        };
        self.open_log()?;
        let (ends, readers) = self.output.open_pipes().map_err(Error::io(format!(
            "making the output pipes of {}",
            self.task_id
        )))?;
        let net = inner.net.clone();
        let child = self
            .launch
            .command(inner.user, ends, self.files.root(), net.is_some())
            .and_then(|mut cmd| match &net {
                Some(net) => net.spawn(&mut cmd),
                None => cmd.spawn(),
            })
            .map_err(spawn_error)?;
        // The child holds the writing ends now (ours went with the command).
        if let Err(e) = self.output.copy(readers) {
            tracing::warn!(task.id = %self.task_id, "copying the task's output failed: {e}");
        }
        let pid = i32::try_from(child.id()).expect("Linux PIDs fit in an i32");
        // The child is unreaped until we wait for it, so its stat is there even if it has exited.
        let stat = match procfs::read_stat(pid) {
            Ok(Some(stat)) => stat,
            other => {
                let launched = Launched { pid, start_time: 0 };
                let _ = launched.signal(Signal::KILL);
                let _ = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty());
                let source = other
                    .err()
                    .unwrap_or_else(|| io::Error::other("no /proc entry"));
                return Err(Error::io(format!("reading /proc/{pid}/stat"))(source));
            }
        };
        let launched = Launched {
            pid,
            start_time: stat.start_time,
        };
        tracing::info!(task.id = %self.task_id, pid, image = %self.launch.image, "task process started");
        inner.phase = Phase::Running(launched);
        inner.launched = Some(launched);
        Ok(())
    }

    /// Sends the stop signal, then SIGKILL after the grace period if the process still runs.
    async fn shutdown_process(&self) -> Result<(), ExecutorError> {
        if !self.signal_if_running(self.stop_signal)? {
            return Ok(());
        }
        let deadline = Instant::now() + self.grace;
        loop {
            if !matches!(self.poll()?, Phase::Running(_)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
        tracing::info!(task.id = %self.task_id, grace = ?self.grace, "task process outlived its grace period; killing it");
        self.terminate().await
    }

    /// Sends `signal` to the process group if the process still runs; whether it did.
    fn signal_if_running(&self, signal: Signal) -> Result<bool, Error> {
        match self.poll()? {
            Phase::Running(launched) => launched.signal(signal).map(|()| true),
            _ => Ok(false),
        }
    }
}

fn read_or_empty(path: &str) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("reading {path}"))(e)),
    }
}

#[tonic::async_trait]
impl Controller for ProcessController {
    async fn prepare(&self) -> Result<(), ExecutorError> {
        self.ensure_network().await?;
        let mut inner = self.lock();
        Ok(self.prepare_locked(&mut inner)?)
    }

    async fn start(&self) -> Result<(), ExecutorError> {
        self.ensure_network().await?;
        // Already started, or adopted: a task is never run twice.
        if matches!(self.lock().phase, Phase::Running(_) | Phase::Exited(_)) {
            return Ok(());
        }
        check_host_ports_free(&self.launch.host_ports)?;
        self.publish_ports().await?;
        let started = {
            let mut inner = self.lock();
            match inner.phase {
                Phase::Absent => self
                    .prepare_locked(&mut inner)
                    .and_then(|()| self.spawn_locked(&mut inner)),
                Phase::Created => self.spawn_locked(&mut inner),
                Phase::Running(_) | Phase::Exited(_) => Ok(()),
            }
        };
        if started.is_err() {
            self.unpublish_ports().await;
        }
        Ok(started?)
    }

    async fn wait(&self) -> Result<ExitStatus, ExecutorError> {
        let status = self.wait_exit().await?;
        self.unpublish_ports().await;
        Ok(status)
    }

    async fn shutdown(&self) -> Result<(), ExecutorError> {
        let stopped = self.shutdown_process().await;
        if stopped.is_ok() {
            self.unpublish_ports().await;
        }
        stopped
    }

    async fn terminate(&self) -> Result<(), ExecutorError> {
        if self.signal_if_running(Signal::KILL)? {
            self.wait_exit().await?;
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), ExecutorError> {
        // The files go whatever becomes of the process (after its grace period, which it may
        // need them for): a removal that keeps failing must not leave secrets behind.
        let stopped = self.shutdown().await;
        let files = self.files.remove();
        stopped?;
        self.remove_network().await?;
        let mut inner = self.lock();
        self.output
            .remove()
            .map_err(Error::io(format!("removing {}", self.log_path().display())))?;
        files?;
        inner.phase = Phase::Absent;
        inner.launched = None;
        Ok(())
    }

    async fn release(&self) -> Result<(), ExecutorError> {
        let files = self.files.remove();
        self.remove_network().await?;
        files
    }

    async fn inspect(&self) -> Result<RuntimeState, ExecutorError> {
        Ok(match self.poll()? {
            Phase::Absent => RuntimeState::Absent,
            Phase::Created => RuntimeState::Created,
            Phase::Running(_) => RuntimeState::Running,
            Phase::Exited(status) => RuntimeState::Exited(status),
        })
    }

    async fn runtime_status(&self) -> Result<Option<api::ContainerStatus>, ExecutorError> {
        // A process has no container ID; its PID while it runs, its exit code once it ended.
        Ok(match self.poll()? {
            Phase::Absent | Phase::Created => None,
            Phase::Running(launched) => Some(api::ContainerStatus {
                pid: launched.pid,
                ..Default::default()
            }),
            Phase::Exited(status) => Some(api::ContainerStatus {
                exit_code: status.code,
                ..Default::default()
            }),
        })
    }

    async fn logs(&self, options: &LogOptions, sink: &LogSink) -> Result<(), ExecutorError> {
        self.output.read(options, sink).await
    }

    fn checkpoint(&self) -> Option<agent::Checkpoint> {
        self.lock().launched.map(|l| l.encode())
    }
}

#[cfg(test)]
mod tests;
