//! [`DockerController`]: takes one task's container through create, start, wait, stop, kill and
//! remove (SwarmKit's swarmd/dockerexec/controller.go and adapter.go). Every call addresses the
//! container by name and first looks at where it stands, so each step can be repeated and a
//! controller made after a swarmd restart adopts the container that is already there.
//!
//! Unlike SwarmKit, which always pulls to refresh mutable tags and only logs a failed pull,
//! `prepare` pulls only an image the engine lacks and fails when that pull fails.
//!
//! The task's secret and config files are written at `prepare`, before the container that
//! bind-mounts them is created, and removed with the container, or when `prepare` fails. Secrets
//! are written only on a tmpfs: without one the task fails rather than put a secret on disk.
//!
//! A task attached to swarm networks gets its local networks at `prepare` (`network.rs`): the
//! container is created on the first with its allocated address and aliases, and connected to
//! the others before `prepare` ends; `start` makes any of them again that went meanwhile;
//! `remove` takes away each of them that no container uses any more (best effort: the task's
//! removal does not fail for a network left behind). On the node's data plane, `prepare` and
//! `start` first have it keep the networks' bridges, the running container's namespace is
//! handed to it for the task's virtual IPs, and `remove` lets go of the networks last.

use std::sync::Arc;
use std::time::Duration;

use agent::{
    Checkpoint, Controller, ExecutorError, ExitStatus, LogOptions, LogSink, RuntimeState, Statuses,
    TaskFileSet,
};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum, NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use tokio_stream::StreamExt;

use crate::config::{ContainerConfig, whole_seconds};
use crate::engine::{Engine, REQUEST_TIMEOUT};
use crate::error::{classify, is_not_found, status};
use crate::network::LocalNetworks;

/// How often a container that is not running yet (created, or starting its healthcheck) is
/// looked at again; the engine's wait only covers running containers.
const POLL: Duration = Duration::from_millis(200);

/// Controls the container of one task.
pub struct DockerController {
    engine: Engine,
    config: ContainerConfig,
    /// The task's secret and config files.
    files: TaskFileSet,
    /// The node's local networks, shared with the executor's other controllers.
    networks: LocalNetworks,
    /// The node's data plane, when the container's networks are on its bridges.
    plane: Option<Arc<netplane::Dataplane>>,
}

impl DockerController {
    /// A controller for the container `config` describes, on `engine`, with the task's `files`
    /// and the executor's `networks`.
    pub(crate) fn new(
        engine: Engine,
        config: ContainerConfig,
        files: TaskFileSet,
        networks: LocalNetworks,
    ) -> Self {
        Self {
            engine,
            config,
            files,
            networks,
            plane: None,
        }
    }

    /// The same controller with the container's swarm networks on `plane` (if any of them
    /// is: see [`ContainerConfig::on_data_plane`]).
    pub(crate) fn with_data_plane(mut self, plane: Option<Arc<netplane::Dataplane>>) -> Self {
        self.plane = plane.filter(|_| self.config.uses_data_plane());
        self
    }

    /// Has the data plane keep the devices of the task's networks (made if missing) before the
    /// engine puts the container on their bridges; one that cannot fails the task.
    async fn attach_to_plane(&self) -> Result<(), ExecutorError> {
        if let Some(plane) = &self.plane {
            plane
                .attach_container(self.config.task())
                .await
                .map_err(|e| ExecutorError::Fatal(format!("dockerexec: {e}")))?;
        }
        Ok(())
    }

    /// Hands the running container's namespace to the data plane, which balances the task's
    /// virtual IPs there (again at every view). A failure is logged: the container runs, and
    /// the next view tries again.
    async fn plane_running(&self, docker: &Docker) {
        let Some(plane) = &self.plane else { return };
        let pid = match self.inspect_container(docker).await {
            Ok(Some(c)) => c.state.and_then(|s| s.pid).filter(|p| *p > 0),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "inspecting the container for its namespace failed");
                None
            }
        };
        let Some(pid) = pid else { return };
        let netns = netplane::NetnsPath(format!("/proc/{pid}/ns/net").into());
        if let Err(e) = plane.container_running(self.config.task(), netns).await {
            tracing::warn!(task.id = self.config.task_id(), error = %e, "virtual IPs in the container");
        }
    }

    /// Writes the task's files (again: after a restart they may be gone), refusing to put a
    /// secret anywhere but on a tmpfs.
    fn write_files(&self) -> Result<(), ExecutorError> {
        if self.files.is_empty() {
            return Ok(());
        }
        if self.files.has_secrets()
            && let Some(why) = self.files.files().not_tmpfs()
        {
            return Err(ExecutorError::Fatal(format!(
                "dockerexec: secrets need a tmpfs on this node and none is usable ({why}); not writing them to {}",
                self.files.files().base().display()
            )));
        }
        self.files.write(None)
    }

    /// Creates the container (pulling its image first if needed) unless it exists, on the task's
    /// local networks (made if missing), and connects it to those it is not on yet.
    async fn create(&self, docker: &Docker) -> Result<(), ExecutorError> {
        let existing = self.inspect_container(docker).await?;
        if existing.is_none() {
            self.ensure_image(docker).await?;
        }
        if self.config.attachments().is_empty() {
            if existing.is_some() {
                return Ok(());
            }
            return self
                .create_container(docker, None)
                .await
                .map_err(|e| classify("creating container failed", e));
        }
        // Nothing removes a network between its making and the container joining it.
        let _guard = self.networks.lock().await;
        self.attach_to_plane().await?;
        let mut names = self.ensure_networks().await?;
        if existing.is_none() {
            match self
                .create_container(docker, names.first().map(String::as_str))
                .await
            {
                Ok(()) => {}
                // The network went meanwhile (removed by another swarmd on this engine).
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(error = %e, "network gone at container create; making it again");
                    names = self.ensure_networks().await?;
                    self.create_container(docker, names.first().map(String::as_str))
                        .await
                        .map_err(|e| classify("creating container failed", e))?;
                }
                Err(e) => return Err(classify("creating container failed", e)),
            }
        }
        self.connect(docker, &names).await
    }

    /// Sends the create request; a container that exists by now (an earlier, interrupted call)
    /// is success.
    async fn create_container(
        &self,
        docker: &Docker,
        network: Option<&str>,
    ) -> Result<(), EngineError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(self.name())
            .build();
        let body = self.config.create_body(&self.files.mounts(), network);
        match docker.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The local network of each attachment, made if missing; their names in the task's order.
    async fn ensure_networks(&self) -> Result<Vec<String>, ExecutorError> {
        let mut names = Vec::with_capacity(self.config.attachments().len());
        for a in self.config.attachments() {
            names.push(self.networks.ensure(a).await?);
        }
        Ok(names)
    }

    /// Connects the container to each local network in `names` it is not on yet.
    async fn connect(&self, docker: &Docker, names: &[String]) -> Result<(), ExecutorError> {
        let Some(c) = self.inspect_container(docker).await? else {
            return Err(self.no_such_container());
        };
        let joined = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref());
        for (a, name) in self.config.attachments().iter().zip(names) {
            if joined.is_some_and(|j| j.contains_key(name)) {
                continue;
            }
            let request = NetworkConnectRequest {
                container: self.name().to_string(),
                endpoint_config: Some(a.endpoint_settings()),
            };
            match docker.connect_network(name, request).await {
                Ok(()) => {}
                // Joined meanwhile: the engine refuses a second endpoint by one name.
                Err(e) if matches!(status(&e), Some(403 | 409)) => {
                    tracing::debug!(error = %e, network = name, "already connected");
                }
                Err(e) => {
                    return Err(match classify("connecting container failed", e) {
                        ExecutorError::Fatal(m) => ExecutorError::Fatal(format!(
                            "dockerexec: connecting to network {} failed: {m}",
                            a.network_name
                        )),
                        t => t,
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes each of the task's local networks that no container uses any more, as far as it
    /// can: the task's own removal has succeeded by then, so a network that cannot be removed
    /// is logged and left to a later removal or the next sweep.
    async fn remove_unused_networks(&self) {
        if self.config.attachments().is_empty() {
            return;
        }
        let docker = match self.engine.client().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "removing the task's local networks failed");
                return;
            }
        };
        let _guard = self.networks.lock().await;
        for a in self.config.attachments() {
            let removed = match self
                .networks
                .find(&docker, &a.network_id, a.bridge.as_deref())
                .await
            {
                Ok(Some(name)) => self.networks.remove_if_unused(&name).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(
                    network = a.network_name,
                    error = %e,
                    "removing an unused local network failed"
                );
            }
        }
    }

    fn name(&self) -> &str {
        self.config.name()
    }

    /// The container as the engine sees it, or `None` when there is none by our name.
    async fn inspect_container(
        &self,
        docker: &Docker,
    ) -> Result<Option<ContainerInspectResponse>, ExecutorError> {
        match docker.inspect_container(self.name(), None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify("inspecting container failed", e)),
        }
    }

    async fn state(&self, docker: &Docker) -> Result<RuntimeState, ExecutorError> {
        Ok(self
            .inspect_container(docker)
            .await?
            .as_ref()
            .map_or(RuntimeState::Absent, runtime_state))
    }

    fn no_such_container(&self) -> ExecutorError {
        ExecutorError::Fatal(format!("No such container: {}", self.name()))
    }

    /// Pulls the image unless the engine already has it.
    async fn ensure_image(&self, docker: &Docker) -> Result<(), ExecutorError> {
        let image = self.config.image();
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(classify("inspecting image failed", e)),
        }
        tracing::info!(image, task.id = self.config.task_id(), "pulling image");
        let (repo, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(repo);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let puller = self.engine.long_client().await?;
        let mut progress = puller.create_image(Some(options.build()), None, None);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(classify("pulling image failed", e));
            }
        }
        Ok(())
    }

    /// After a start, waits for a healthcheck (the spec's or the image's) to pass, as SwarmKit
    /// does before it reports the task running. An unhealthy container is stopped.
    async fn wait_healthy(&self, docker: &Docker) -> Result<(), ExecutorError> {
        loop {
            let Some(c) = self.inspect_container(docker).await? else {
                return Err(ExecutorError::Fatal(
                    "dockerexec: container destroyed".into(),
                ));
            };
            let test = c
                .config
                .as_ref()
                .and_then(|c| c.healthcheck.as_ref())
                .and_then(|h| h.test.clone())
                .unwrap_or_default();
            if test.is_empty() || test[0] == "NONE" {
                return Ok(());
            }
            if let RuntimeState::Exited(exit) = runtime_state(&c) {
                return match exit.error_message() {
                    Some(msg) => Err(ExecutorError::Fatal(msg)),
                    None => Ok(()),
                };
            }
            let health = c
                .state
                .as_ref()
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.status);
            match health {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    if let Err(e) = self.shutdown().await {
                        return Err(ExecutorError::Fatal(format!(
                            "unhealthy container shutdown failed: {e}"
                        )));
                    }
                    return Err(ExecutorError::Fatal(
                        "dockerexec: unhealthy container".into(),
                    ));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// One frame of the engine's log stream with timestamps: `<RFC 3339 time> <bytes>`, as a
/// line's time, stream and bytes (a TTY's output counts as stdout).
fn log_frame(frame: &LogOutput) -> Option<(std::time::SystemTime, api::LogStream, Vec<u8>)> {
    let (stream, bytes) = match frame {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (api::LogStream::Stdout, message)
        }
        LogOutput::StdErr { message } => (api::LogStream::Stderr, message),
        LogOutput::StdIn { .. } => return None,
    };
    let space = bytes.iter().position(|b| *b == b' ')?;
    let ts = std::str::from_utf8(&bytes[..space]).ok()?;
    let at =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at.into(), stream, bytes[space + 1..].to_vec()))
}

impl DockerController {
    /// The container's log as `options` ask, from the engine (SwarmKit's dockerexec `Logs`):
    /// with timestamps, the streams asked, `since` to the second at the engine and exactly
    /// here, a negative tail as the engine's and a positive one skipped here. Before the
    /// container started there is nothing to send; with follow, its start is waited for.
    async fn container_logs(
        &self,
        options: &LogOptions,
        sink: &LogSink,
    ) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        // The engine follows only a started container's log (SwarmKit waits for it too).
        while matches!(
            self.state(&docker).await?,
            RuntimeState::Absent | RuntimeState::Created
        ) {
            if !options.follow {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        let mut query = LogsOptionsBuilder::new()
            .follow(options.follow)
            .stdout(options.stdout)
            .stderr(options.stderr)
            .timestamps(true);
        if let Some(since) = options.since {
            let secs = since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            query = query.since(i32::try_from(secs).unwrap_or(i32::MAX));
        }
        let mut skip = 0u64;
        match options.tail {
            0 => {}
            n if n < 0 => query = query.tail(&(-(n + 1)).to_string()),
            n => skip = n.unsigned_abs(),
        }
        let reader = self.engine.long_client().await?;
        let mut frames = reader.logs(self.name(), Some(query.build()));
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| classify("reading container logs failed", e))?;
            let Some((at, stream, data)) = log_frame(&frame) else {
                continue;
            };
            if !options.wants(stream, at) {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            sink.send(at, stream, data).await?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Controller for DockerController {
    async fn prepare(&self) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        self.write_files()?;
        let created = self.create(&docker).await;
        if created.is_err() {
            let _ = self.files.remove();
        }
        created
    }

    async fn start(&self) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        match self.state(&docker).await? {
            RuntimeState::Absent => return Err(self.no_such_container()),
            // Started before (by us or by an earlier swarmd): never start it twice.
            RuntimeState::Running | RuntimeState::Exited(_) => return Ok(()),
            // Its files may be gone with the tmpfs they were on (a reboot since prepare).
            RuntimeState::Created => self.write_files()?,
        }
        tracing::debug!(
            task.id = self.config.task_id(),
            container = self.name(),
            "starting container"
        );
        // A network the container was created on may have gone since prepare (a sweep or a
        // removal by another swarmd on this engine): made again, it serves, since a container
        // that never ran joins its networks by name. The lock keeps this executor's removals
        // off them until the container runs on them.
        let guard = if self.config.attachments().is_empty() {
            None
        } else {
            let guard = self.networks.lock().await;
            self.attach_to_plane().await?;
            self.ensure_networks().await?;
            Some(guard)
        };
        let started = docker.start_container(self.name(), None).await;
        drop(guard);
        started.map_err(|e| {
            let network_gone = is_not_found(&e);
            match classify("starting container failed", e) {
                // Gone again after it was ensured: the task fails and is replaced.
                ExecutorError::Fatal(m) if network_gone => ExecutorError::Fatal(format!(
                    "starting container failed: a network of the container is gone: {m}"
                )),
                ExecutorError::Fatal(m) => {
                    ExecutorError::Fatal(format!("starting container failed: {m}"))
                }
                t => t,
            }
        })?;
        self.plane_running(&docker).await;
        self.wait_healthy(&docker).await
    }

    async fn wait(&self) -> Result<ExitStatus, ExecutorError> {
        let docker = self.engine.client().await?;
        let waiter = self.engine.long_client().await?;
        let mut seen = false;
        let mut balanced = false;
        loop {
            match self.state(&docker).await? {
                RuntimeState::Absent if seen => {
                    return Err(ExecutorError::Fatal(
                        "dockerexec: container destroyed".into(),
                    ));
                }
                RuntimeState::Absent => return Err(self.no_such_container()),
                RuntimeState::Exited(exit) => return Ok(exit),
                RuntimeState::Created => tokio::time::sleep(POLL).await,
                RuntimeState::Running => {
                    // A container adopted after a restart, or started elsewhere: its virtual
                    // IPs follow the views from now on.
                    if !balanced {
                        balanced = true;
                        self.plane_running(&docker).await;
                    }
                    let options = WaitContainerOptionsBuilder::new()
                        .condition("not-running")
                        .build();
                    let mut waiting = waiter.wait_container(self.name(), Some(options));
                    match waiting.next().await {
                        // The exit code is read back from inspect, with the rest of the state.
                        None
                        | Some(Ok(_))
                        | Some(Err(EngineError::DockerContainerWaitError { .. }))
                        | Some(Err(EngineError::RequestTimeoutError)) => {}
                        Some(Err(e)) if is_not_found(&e) => {}
                        Some(Err(e)) => return Err(classify("waiting for container failed", e)),
                    }
                }
            }
            seen = true;
        }
    }

    async fn shutdown(&self) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        match self.state(&docker).await? {
            RuntimeState::Absent | RuntimeState::Exited(_) => return Ok(()),
            RuntimeState::Created | RuntimeState::Running => {}
        }
        let grace = whole_seconds(self.config.stop_grace());
        // The stop signal is the container's own (set at create from the spec); the engine
        // sends it, waits out the grace period, kills, and answers once the container ended.
        let options = StopContainerOptionsBuilder::new().t(grace).build();
        let stopper = docker
            .clone()
            .with_timeout(REQUEST_TIMEOUT + Duration::from_secs(u64::from(grace.unsigned_abs())));
        match stopper.stop_container(self.name(), Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify("stopping container failed", e)),
        }
    }

    async fn terminate(&self) -> Result<(), ExecutorError> {
        let docker = self.engine.client().await?;
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match docker.kill_container(self.name(), Some(options)).await {
            Ok(()) => Ok(()),
            // Gone, or not running (409): nothing left to kill.
            Err(e) if is_not_found(&e) || status(&e) == Some(409) => Ok(()),
            Err(e) => Err(classify("killing container failed", e)),
        }
    }

    async fn remove(&self) -> Result<(), ExecutorError> {
        // The files go whatever becomes of the container (a running one keeps the inodes it
        // has mounted): a removal that keeps failing must not leave secrets behind.
        let files = self.files.remove();
        let docker = self.engine.client().await?;
        if let Err(e) = self.shutdown().await {
            // Forced removal below kills it anyway.
            tracing::debug!(error = %e, container = self.name(), "shutdown failed on removal");
        }
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(self.name(), Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            // "removal of container ... is already in progress": done soon, try again.
            Err(e) if status(&e) == Some(409) => {
                return Err(ExecutorError::Temporary(e.to_string()));
            }
            Err(e) => return Err(classify("removing container failed", e)),
        }
        self.remove_unused_networks().await;
        if let Some(plane) = &self.plane
            && let Err(e) = plane.detach_container(self.config.task_id()).await
        {
            tracing::warn!(error = %e, "releasing the task's data plane networks failed");
        }
        files
    }

    async fn release(&self) -> Result<(), ExecutorError> {
        self.files.remove()
    }

    async fn inspect(&self) -> Result<RuntimeState, ExecutorError> {
        let docker = self.engine.client().await?;
        self.state(&docker).await
    }

    async fn runtime_status(&self) -> Result<Option<api::ContainerStatus>, ExecutorError> {
        let docker = self.engine.client().await?;
        Ok(self
            .inspect_container(&docker)
            .await?
            .as_ref()
            .map(container_status))
    }

    async fn port_status(&self) -> Result<Option<api::PortStatus>, ExecutorError> {
        let docker = self.engine.client().await?;
        Ok(self
            .inspect_container(&docker)
            .await?
            .as_ref()
            .map(port_status))
    }

    /// Both from one inspect.
    async fn statuses(&self) -> Statuses {
        let inspected = match self.engine.client().await {
            Ok(docker) => self.inspect_container(&docker).await,
            Err(e) => Err(e),
        };
        match inspected {
            Ok(c) => (
                Ok(c.as_ref().map(container_status)),
                Ok(c.as_ref().map(port_status)),
            ),
            Err(e) => (Err(e.clone()), Err(e)),
        }
    }

    async fn logs(&self, options: &LogOptions, sink: &LogSink) -> Result<(), ExecutorError> {
        self.container_logs(options, sink).await
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        None
    }
}

/// The published ports of an inspected container as SwarmKit reports them: each bound port in
/// HOST mode with the host port the engine bound (one entry per port, though the engine lists a
/// binding per address family), sorted; the name is not known to the engine.
pub(crate) fn port_status(c: &ContainerInspectResponse) -> api::PortStatus {
    use api::port_config::{Protocol, PublishMode};
    let mut ports: Vec<api::PortConfig> = Vec::new();
    let bound = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    for (key, bindings) in bound.into_iter().flatten() {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => continue,
        };
        let Ok(target) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.iter().flatten() {
            let Some(Ok(published)) = b.host_port.as_deref().map(str::parse::<u16>) else {
                continue;
            };
            let p = api::PortConfig {
                name: String::new(),
                protocol: protocol as i32,
                target_port: u32::from(target),
                published_port: u32::from(published),
                publish_mode: PublishMode::Host as i32,
            };
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    ports.sort_by_key(|p| (p.target_port, p.protocol, p.published_port));
    api::PortStatus { ports }
}

/// The ID, PID (0 unless it runs, as the engine reports) and exit code of an inspected container.
pub(crate) fn container_status(c: &ContainerInspectResponse) -> api::ContainerStatus {
    let state = c.state.as_ref();
    let narrow = |v: Option<i64>| v.map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX));
    api::ContainerStatus {
        container_id: c.id.clone().unwrap_or_default(),
        pid: narrow(state.and_then(|s| s.pid)),
        exit_code: narrow(state.and_then(|s| s.exit_code)),
    }
}

/// Where an inspected container stands. The engine reports only an exit code (128 + n for a
/// process ended by signal n, as a shell would), so no signal is inferred from it.
pub(crate) fn runtime_state(c: &ContainerInspectResponse) -> RuntimeState {
    let state = c.state.as_ref();
    let code = state
        .and_then(|s| s.exit_code)
        .map_or(0, |c| i32::try_from(c).unwrap_or(i32::MAX));
    match state.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::CREATED) => RuntimeState::Created,
        Some(
            ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::REMOVING,
        ) => RuntimeState::Exited(ExitStatus { code, signal: None }),
        // running, paused, restarting, stopping.
        _ => RuntimeState::Running,
    }
}

/// Splits an image reference into what the engine's pull takes: the repository and, unless the
/// reference pins a digest, a tag (`latest` when none is given, since a pull without a tag
/// fetches every tag).
pub(crate) fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], Some(&image[last + i + 1..])),
        None => (image, Some("latest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerState;
    use std::collections::HashMap;

    #[test]
    fn log_frames_carry_time_stream_and_bytes() {
        let frame = LogOutput::StdErr {
            message: "2024-01-02T03:04:05.123456789Z oops\n".into(),
        };
        let (at, stream, data) = log_frame(&frame).expect("a line");
        assert_eq!(stream, api::LogStream::Stderr);
        assert_eq!(data, b"oops\n");
        let since = at.duration_since(std::time::UNIX_EPOCH).expect("after");
        assert_eq!(
            (since.as_secs(), since.subsec_nanos()),
            (1_704_164_645, 123_456_789)
        );
        assert!(
            log_frame(&LogOutput::StdOut {
                message: "no-time".into()
            })
            .is_none()
        );
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(
            split_reference("swarmkit-test/busybox:1.36"),
            ("swarmkit-test/busybox", Some("1.36"))
        );
        // A registry port is not a tag.
        assert_eq!(
            split_reference("localhost:5000/app"),
            ("localhost:5000/app", Some("latest"))
        );
        assert_eq!(
            split_reference("localhost:5000/app:v2"),
            ("localhost:5000/app", Some("v2"))
        );
        assert_eq!(
            split_reference("app@sha256:abcd"),
            ("app@sha256:abcd", None)
        );
    }

    fn with(status: ContainerStateStatusEnum, exit_code: i64) -> ContainerInspectResponse {
        ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                exit_code: Some(exit_code),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspected_containers_report_id_pid_and_exit_code() {
        let mut running = with(ContainerStateStatusEnum::RUNNING, 0);
        running.id = Some("c0ffee".into());
        running.state.as_mut().expect("state").pid = Some(4242);
        assert_eq!(
            container_status(&running),
            api::ContainerStatus {
                container_id: "c0ffee".into(),
                pid: 4242,
                exit_code: 0
            }
        );
        let mut exited = with(ContainerStateStatusEnum::EXITED, 3);
        exited.id = Some("c0ffee".into());
        assert_eq!(
            container_status(&exited),
            api::ContainerStatus {
                container_id: "c0ffee".into(),
                pid: 0,
                exit_code: 3
            }
        );
    }

    #[test]
    fn bound_ports_are_reported_once_each_in_host_mode() {
        use bollard::models::{NetworkSettings, PortBinding};
        let binding = |ip: &str, port: &str| PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        };
        let mut c = with(ContainerStateStatusEnum::RUNNING, 0);
        c.network_settings = Some(NetworkSettings {
            ports: Some(HashMap::from([
                (
                    "80/tcp".to_string(),
                    Some(vec![binding("0.0.0.0", "9090"), binding("::", "9090")]),
                ),
                (
                    "53/udp".to_string(),
                    Some(vec![binding("0.0.0.0", "32768")]),
                ),
                // Exposed and not bound.
                ("7/tcp".to_string(), None),
            ])),
            ..Default::default()
        });
        let port =
            |proto: api::port_config::Protocol, target: u32, published: u32| api::PortConfig {
                name: String::new(),
                protocol: proto as i32,
                target_port: target,
                published_port: published,
                publish_mode: api::port_config::PublishMode::Host as i32,
            };
        use api::port_config::Protocol;
        assert_eq!(
            port_status(&c).ports,
            [
                port(Protocol::Udp, 53, 32768),
                port(Protocol::Tcp, 80, 9090)
            ]
        );
        assert!(
            port_status(&with(ContainerStateStatusEnum::CREATED, 0))
                .ports
                .is_empty()
        );
    }

    #[test]
    fn engine_states_map_to_runtime_states() {
        use ContainerStateStatusEnum as S;
        assert_eq!(runtime_state(&with(S::CREATED, 0)), RuntimeState::Created);
        assert_eq!(runtime_state(&with(S::RUNNING, 0)), RuntimeState::Running);
        assert_eq!(runtime_state(&with(S::PAUSED, 0)), RuntimeState::Running);
        assert_eq!(
            runtime_state(&with(S::EXITED, 137)),
            RuntimeState::Exited(ExitStatus {
                code: 137,
                signal: None
            })
        );
        assert_eq!(
            runtime_state(&with(S::DEAD, 1)),
            RuntimeState::Exited(ExitStatus {
                code: 1,
                signal: None
            })
        );
    }
}
