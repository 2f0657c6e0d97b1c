//! The agent's session with a manager (spec 6, SwarmKit agent/agent.go and session.go): register
//! with the Session stream, heartbeat at the period the dispatcher gives, follow the Assignments
//! stream into the [`Worker`], and report task status changes in batches. When anything fails
//! the agent registers again with a manager picked by weight from the ones it has not tried since
//! its last pause, and once it has tried them all it backs off (100 ms, then 100 ms + 2 × the
//! previous pause, at most 8 s, with a random part) before the next round
//! ([`Remotes`]): the failed one loses weight, so the next pick is very likely another manager,
//! and each session message replaces the set with the managers the dispatcher lists. Its tasks
//! keep running meanwhile. On a node that runs a manager the agent talks to that manager only,
//! over a local connection ([`LocalManager`]; SwarmKit's connection broker), whatever address
//! its remote API listens on: that manager forwards to the leader, and a failed session is
//! retried with it after a pause.
//!
//! When the executor has a data plane ([`Executor::network_plane_request`]), each session also
//! keeps a `swarmkit.netplane.v1.NetworkPlane/Watch` stream open to the same manager
//! ([`PlaneWatch`]) and hands every view it brings, in order, to
//! [`Executor::set_network_view`]; a stream that fails is opened again after the session's
//! backoff, without ending the session.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::dispatcher_client::DispatcherClient;
use api::netplane::network_plane_client::NetworkPlaneClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::db::{DbError, TaskDb};
use crate::executor::Executor;
use crate::networkkeys::HeldKeys;
use crate::remotes::{DEFAULT_WEIGHT, Remotes};
use crate::runner::StatusReport;
use crate::worker::Worker;

/// First pause after a failed session.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between sessions.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Deadline of each unary call to the dispatcher.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most status updates in one UpdateTaskStatus call.
const STATUS_BATCH: usize = 1024;
/// How often the node is described again; a changed description re-registers the session.
const DESCRIBE_INTERVAL: Duration = Duration::from_secs(20);

/// Opens a (lazy) channel to a manager's remote API with this node's credentials.
pub type Connector = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// This node's own manager while the node runs one: a (lazy) channel to it over a local
/// connection, or `None` (a worker, or a manager that stopped).
pub type LocalManager = Arc<dyn Fn() -> Option<Channel> + Send + Sync>;

/// What the logs call a session with [`LocalManager`].
const LOCAL: &str = "local";

/// Told about every SessionMessage (node object, managers, root CA; the network bootstrap keys
/// are the executor's, [`Executor::set_network_bootstrap_keys`]).
pub type SessionObserver = Arc<dyn Fn(&api::SessionMessage) + Send + Sync>;

/// What an agent needs.
pub struct AgentConfig {
    /// Manager addresses to start from, each at the default weight (a session message replaces
    /// them).
    pub managers: Vec<String>,
    /// How to reach a manager.
    pub connect: Connector,
    /// This node's own manager, preferred to every other while it exists.
    pub local: LocalManager,
    /// Runs the tasks.
    pub executor: Arc<dyn Executor>,
    /// The worker's task database.
    pub db: TaskDb,
    /// Hears every session message.
    pub observer: SessionObserver,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The task database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// There is no manager to talk to.
    #[error("the agent knows no manager")]
    NoManager,
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Failed(String),
}

fn status_text(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// Runs the agent until `shutdown` fires. With `leave`, the tasks are shut down and removed on
/// the way out (a graceful stop, spec 2.5); otherwise they are left running.
pub async fn run(
    config: AgentConfig,
    shutdown: CancellationToken,
    leave: bool,
) -> Result<(), AgentError> {
    if config.managers.is_empty() {
        return Err(AgentError::NoManager);
    }
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<StatusReport>();
    let mut worker = Worker::new(config.executor.clone(), config.db.clone(), reports_tx);
    worker.resume();
    let mut pending: BTreeMap<String, api::TaskStatus> = BTreeMap::new();
    let mut managers = Remotes::new(config.managers.iter().cloned());
    // The latest network bootstrap keys, kept across sessions as SwarmKit's agent keeps them.
    let mut keys = HeldKeys::default();
    // Managers whose session failed since the last pause: each round tries every known manager
    // once (by weight) before pausing, so a live manager is found without waiting out a pause
    // per manager that refuses (a follower's dispatcher, a manager that is gone).
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut backoff = BACKOFF_MIN;
    // Whether the last session was with the local manager and failed: the next one with it
    // waits a pause first, as there is no other manager to try meanwhile.
    let mut local_failed = false;
    // The set is never empty: it starts from a non-empty list, and a session's list replaces it
    // only when that list is not empty.
    loop {
        let mut local_channel = (config.local)();
        if local_failed && local_channel.is_some() {
            if !pause(backoff, &shutdown).await {
                break;
            }
            backoff = next_backoff(backoff);
            // The node may have stopped its manager meanwhile (a demotion).
            local_channel = (config.local)();
        }
        let (addr, local, channel) = match local_channel {
            Some(channel) => (LOCAL.to_string(), true, Ok(channel)),
            None => {
                let mut pick = managers.select_excluding(&tried);
                if pick.is_none() {
                    tried.clear();
                    if !pause(backoff, &shutdown).await {
                        break;
                    }
                    backoff = next_backoff(backoff);
                    pick = managers.select_excluding(&tried);
                }
                let Some(addr) = pick else {
                    return Err(AgentError::NoManager);
                };
                let channel = (config.connect)(&addr);
                (addr, false, channel)
            }
        };
        let mut session = Session {
            config: &config,
            worker: &mut worker,
            reports: &mut reports_rx,
            pending: &mut pending,
            managers: &mut managers,
            keys: &mut keys,
            registered: false,
        };
        let end = match channel {
            Ok(channel) => session.run(&addr, channel, &shutdown).await,
            Err(e) => SessionEnd::Failed(e),
        };
        let registered = session.registered;
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Failed(why) => {
                warn!(manager = %addr, "agent session failed: {why}");
                if registered {
                    // A session that worked ended: a new round, from the shortest pause.
                    tried.clear();
                    backoff = BACKOFF_MIN;
                }
                local_failed = local;
                if !local {
                    managers.observe_if_exists(&addr, -DEFAULT_WEIGHT);
                    tried.insert(addr);
                }
            }
        }
    }
    if leave {
        info!("agent leaving: shutting down and removing its tasks");
        worker.leave().await;
    }
    Ok(())
}

/// Aborts a task when dropped (the session's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the Assignments stream of a session.
async fn open_assignments(
    client: &mut DispatcherClient<Channel>,
    session_id: &str,
) -> Result<tonic::Streaming<api::AssignmentsMessage>, String> {
    let mut req = tonic::Request::new(api::AssignmentsRequest {
        session_id: session_id.to_string(),
    });
    // The worker applies a COMPLETE set split over several messages.
    req.metadata_mut().insert(
        api::assignment_parts::SPLIT_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    client
        .assignments(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| status_text(&s))
}

/// Waits a random part of `backoff`; false when `shutdown` fired meanwhile.
async fn pause(backoff: Duration, shutdown: &CancellationToken) -> bool {
    let pause = backoff.mul_f64(rand::random::<f64>());
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(pause) => true,
    }
}

/// The pause after `backoff`: 100 ms + twice it, at most [`BACKOFF_MAX`].
fn next_backoff(backoff: Duration) -> Duration {
    (BACKOFF_MIN + backoff * 2).min(BACKOFF_MAX)
}

/// A session's Watch stream of its node's network views (`swarmkit.netplane.v1`), to the
/// session's manager: opened with the session, opened again after a failure once a pause of the
/// session's backoff has passed.
struct PlaneWatch {
    client: NetworkPlaneClient<Channel>,
    request: api::netplane::WatchRequest,
    stream: Option<tonic::Streaming<api::netplane::NodeView>>,
    /// The next pause after a failure.
    backoff: Duration,
    /// Whether the last attempt failed (the next one waits first).
    failed: bool,
}

impl PlaneWatch {
    fn new(channel: Channel, request: api::netplane::WatchRequest) -> PlaneWatch {
        PlaneWatch {
            client: NetworkPlaneClient::new(channel)
                .max_decoding_message_size(api::CLIENT_MAX_RECV),
            request,
            stream: None,
            backoff: BACKOFF_MIN,
            failed: false,
        }
    }

    /// The next view, opening the stream (again) as needed. Cancel-safe: a call dropped while
    /// opening opens again on the next.
    async fn next(&mut self) -> api::netplane::NodeView {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if self.failed {
                    let mut pause = self.backoff.mul_f64(rand::random::<f64>());
                    pause = pause.max(Duration::from_millis(10));
                    tokio::time::sleep(pause).await;
                    self.backoff = next_backoff(self.backoff);
                }
                match self.client.watch(self.request.clone()).await {
                    Ok(resp) => self.stream = Some(resp.into_inner()),
                    Err(s) => {
                        debug!("network plane watch refused: {}", status_text(&s));
                        self.failed = true;
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(view)) => {
                    self.failed = false;
                    self.backoff = BACKOFF_MIN;
                    return view;
                }
                Ok(None) => debug!("network plane watch ended: opening it again"),
                Err(s) => debug!("network plane watch failed: {}", status_text(&s)),
            }
            self.stream = None;
            self.failed = true;
        }
    }
}

struct Session<'a> {
    config: &'a AgentConfig,
    worker: &'a mut Worker,
    reports: &'a mut mpsc::UnboundedReceiver<StatusReport>,
    pending: &'a mut BTreeMap<String, api::TaskStatus>,
    managers: &'a mut Remotes,
    keys: &'a mut HeldKeys,
    registered: bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        addr: &str,
        channel: Channel,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => SessionEnd::Shutdown,
            end = self.serve(addr, channel) => end,
        }
    }

    async fn serve(&mut self, addr: &str, channel: Channel) -> SessionEnd {
        let fail = SessionEnd::Failed;
        let logs_channel = channel.clone();
        let mut client =
            DispatcherClient::new(channel.clone()).max_decoding_message_size(api::CLIENT_MAX_RECV);
        // A set cut short with the last session is not completed by this one.
        self.worker.abandon_partial();
        let description = match self.config.executor.describe().await {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("agent: node description unavailable: {e}");
                None
            }
        };
        let mut stream = match client
            .session(api::SessionRequest {
                description: description.clone(),
                session_id: String::new(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return fail(status_text(&s)),
        };
        let first = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return fail("the session stream ended at once".into()),
            Err(s) => return fail(status_text(&s)),
        };
        let session_id = first.session_id.clone();
        self.registered = true;
        self.observe(first);
        info!(manager = %addr, session.id = %session_id, "agent session registered");

        let mut assignments = match open_assignments(&mut client, &session_id).await {
            Ok(stream) => stream,
            Err(e) => return fail(e),
        };
        let mut plane = self
            .config
            .executor
            .network_plane_request()
            .map(|request| PlaneWatch::new(channel.clone(), request));
        // Log subscriptions live as long as the session (SwarmKit's session.logSubscriptions).
        let logs = tokio::spawn(crate::logs::listen(logs_channel, self.worker.log_sources()));
        let _logs = AbortOnDrop(logs);
        // The `results_in` of the last assignments message: the next one applies to it.
        let mut last_result = String::new();
        let mut heartbeat = tokio::time::Instant::now();
        let mut describe = tokio::time::interval_at(
            tokio::time::Instant::now() + DESCRIBE_INTERVAL,
            DESCRIBE_INTERVAL,
        );
        loop {
            if !self.pending.is_empty()
                && let Err(e) = self.flush(&mut client, &session_id).await
            {
                return fail(e);
            }
            tokio::select! {
                () = tokio::time::sleep_until(heartbeat) => {
                    let beat = client.heartbeat(api::HeartbeatRequest { session_id: session_id.clone() });
                    match tokio::time::timeout(CALL_TIMEOUT, beat).await {
                        Ok(Ok(resp)) => {
                            let period = resp
                                .into_inner()
                                .period
                                .and_then(|p| Duration::try_from(p).ok())
                                .unwrap_or(Duration::from_secs(5));
                            heartbeat = tokio::time::Instant::now() + period;
                        }
                        Ok(Err(s)) => return fail(format!("heartbeat: {}", status_text(&s))),
                        Err(_) => return fail("heartbeat timed out".into()),
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(m)) => self.observe(m),
                    Ok(None) => return fail("the manager ended the session".into()),
                    Err(s) => return fail(status_text(&s)),
                },
                msg = assignments.message() => match msg {
                    Ok(Some(m)) => {
                        debug!(changes = m.changes.len(), r#type = m.r#type, "assignments");
                        if !last_result.is_empty() && m.applies_to != last_result {
                            // A gap in the chain: start over from a COMPLETE set, as SwarmKit's agent.
                            warn!(applies_to = %m.applies_to, expected = %last_result, "assignments out of sequence: resynchronising");
                            self.worker.abandon_partial();
                            last_result.clear();
                            assignments = match open_assignments(&mut client, &session_id).await {
                                Ok(stream) => stream,
                                Err(e) => return fail(e),
                            };
                            continue;
                        }
                        last_result.clone_from(&m.results_in);
                        self.worker.apply(m);
                    }
                    Ok(None) => return fail("the assignments stream ended".into()),
                    Err(s) => return fail(status_text(&s)),
                },
                view = async {
                    match plane.as_mut() {
                        Some(p) => p.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    debug!(version = view.version, networks = view.networks.len(), "network view received");
                    self.config.executor.set_network_view(view);
                }
                _ = describe.tick() => {
                    if let Ok(now) = self.config.executor.describe().await
                        && Some(&now) != description.as_ref()
                    {
                        return fail("the node description changed: registering again".into());
                    }
                }
                report = self.reports.recv() => {
                    if let Some((id, status)) = report {
                        self.pending.insert(id, status);
                        // Take whatever else is queued, so one call carries the burst.
                        while let Ok((id, status)) = self.reports.try_recv() {
                            self.pending.insert(id, status);
                        }
                    }
                }
            }
        }
    }

    fn observe(&mut self, mut msg: api::SessionMessage) {
        let listed: Vec<(&str, i32)> = msg
            .managers
            .iter()
            .filter_map(|w| {
                // Within ±256 after the clamp, so the cast is exact.
                let weight = w.weight.clamp(-256, 256) as i32;
                w.peer.as_ref().map(|p| (p.addr.as_str(), weight))
            })
            .filter(|(a, _)| !a.is_empty())
            .collect();
        // An empty list leaves the set alone: the agent must always have a manager to try.
        if !listed.is_empty() {
            for (addr, weight) in &listed {
                self.managers.observe(addr, *weight);
            }
            self.managers
                .retain(|a| listed.iter().any(|(listed, _)| *listed == a));
        }
        (self.config.observer)(&msg);
        if let Some(keys) = self
            .keys
            .take(std::mem::take(&mut msg.network_bootstrap_keys))
        {
            let count = keys.len();
            match self.config.executor.set_network_bootstrap_keys(keys) {
                Ok(()) => debug!(
                    keys = count,
                    "network bootstrap keys handed to the executor"
                ),
                Err(e) => warn!("configuring network key failed: {e}"),
            }
        }
    }

    /// Sends the pending status updates; what was sent is no longer pending.
    async fn flush(
        &mut self,
        client: &mut DispatcherClient<Channel>,
        session_id: &str,
    ) -> Result<(), String> {
        while !self.pending.is_empty() {
            let batch: Vec<(String, api::TaskStatus)> = self
                .pending
                .iter()
                .take(STATUS_BATCH)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let updates = batch
                .iter()
                .map(
                    |(id, status)| api::update_task_status_request::TaskStatusUpdate {
                        task_id: id.clone(),
                        status: Some(status.clone()),
                    },
                )
                .collect();
            let call = client.update_task_status(api::UpdateTaskStatusRequest {
                session_id: session_id.to_string(),
                updates,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                    ) =>
                {
                    // Retrying cannot help: drop these updates rather than the session.
                    warn!(
                        "the manager refused task status updates: {}",
                        status_text(&s)
                    );
                }
                Ok(Err(s)) => return Err(format!("reporting task status: {}", status_text(&s))),
                Err(_) => return Err("reporting task status timed out".into()),
            }
            for (id, status) in batch {
                // A newer status that arrived meanwhile stays pending.
                if self.pending.get(&id) == Some(&status) {
                    self.pending.remove(&id);
                }
            }
        }
        Ok(())
    }
}
