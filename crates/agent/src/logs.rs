//! Task logs for the managers' log broker (spec 5.12; SwarmKit's agent `Subscribe` and
//! `Publisher`): while a session lasts, the agent listens on `LogBroker.ListenSubscriptions`; for
//! each subscription it opens one `LogBroker.PublishLogs` stream and has the controller of every
//! task of this node that the selector matches ([`Controller::logs`]) send its output there.
//! Without `follow` the stream is closed once every matched task has sent what it has; with it,
//! tasks that start later (a restarted task is a new task) are added, until the broker closes the
//! subscription or the session ends.
//!
//! [`Controller::logs`]: crate::executor::Controller::logs

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use api::log_broker_client::LogBrokerClient;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::executor::{Controller, ExecutorError};

/// Messages a subscription's publisher may hold before readers wait.
const SINK_CAPACITY: usize = 256;
/// Most log messages in one `PublishLogsMessage`.
const PUBLISH_BATCH: usize = 64;
/// First pause before listening again after the broker refused or the stream broke.
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest such pause.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What a subscription asks of a task's log, read once from `api::LogSubscriptionOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Go on sending what the task writes until it ends.
    pub follow: bool,
    /// SwarmKit's tail: 0 all, `-n-1` the last `n` lines, `n > 0` all but the first `n`.
    pub tail: i64,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Send stdout lines.
    pub stdout: bool,
    /// Send stderr lines.
    pub stderr: bool,
}

impl LogOptions {
    /// The options of a subscription (no streams named: both).
    pub fn from_api(options: Option<&api::LogSubscriptionOptions>) -> LogOptions {
        let Some(o) = options else {
            return LogOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            };
        };
        let named = |s: api::LogStream| o.streams.contains(&(s as i32));
        let all = o.streams.is_empty();
        LogOptions {
            follow: o.follow,
            tail: o.tail,
            since: o.since.and_then(|t| SystemTime::try_from(t).ok()),
            stdout: all || named(api::LogStream::Stdout),
            stderr: all || named(api::LogStream::Stderr),
        }
    }

    /// Whether a line of `stream` written at `at` is wanted (before the tail is applied).
    pub fn wants(&self, stream: api::LogStream, at: SystemTime) -> bool {
        let stream_ok = match stream {
            api::LogStream::Stdout => self.stdout,
            api::LogStream::Stderr => self.stderr,
            api::LogStream::Unknown => self.stdout && self.stderr,
        };
        stream_ok && self.since.is_none_or(|since| at >= since)
    }

    /// The lines the tail keeps of `lines` (those already written when the subscription came).
    pub fn apply_tail<T>(&self, mut lines: Vec<T>) -> Vec<T> {
        match self.tail {
            0 => lines,
            n if n > 0 => {
                let skip = usize::try_from(n).unwrap_or(usize::MAX).min(lines.len());
                lines.drain(..skip);
                lines
            }
            n => {
                let keep = usize::try_from(-(n + 1)).unwrap_or(usize::MAX);
                let skip = lines.len().saturating_sub(keep);
                lines.drain(..skip);
                lines
            }
        }
    }
}

/// Where a controller sends a task's log lines: they go out with the task's context (service,
/// node, task) on the subscription's `PublishLogs` stream.
pub struct LogSink {
    context: api::LogContext,
    tx: mpsc::Sender<api::LogMessage>,
}

impl LogSink {
    /// A sink for `task`'s lines into `tx`.
    pub fn new(task: &api::Task, tx: mpsc::Sender<api::LogMessage>) -> LogSink {
        LogSink {
            context: api::LogContext {
                service_id: task.service_id.clone(),
                node_id: task.node_id.clone(),
                task_id: task.id.clone(),
            },
            tx,
        }
    }

    /// Sends one line (or piece of output) written to `stream` at `timestamp`; an error once the
    /// subscription has ended, which ends the reading.
    pub async fn send(
        &self,
        timestamp: SystemTime,
        stream: api::LogStream,
        data: Vec<u8>,
    ) -> Result<(), ExecutorError> {
        let msg = api::LogMessage {
            context: Some(self.context.clone()),
            timestamp: Some(timestamp.into()),
            stream: stream as i32,
            data,
            attrs: Vec::new(),
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| ExecutorError::Temporary("the log subscription ended".into()))
    }
}

/// A task of this node and its controller, for log readers.
#[derive(Clone)]
pub(crate) struct Source {
    task: api::Task,
    controller: Arc<dyn Controller>,
}

/// The worker's tasks as log sources: those it runs now, and those it starts from now on.
#[derive(Clone)]
pub(crate) struct LogSources {
    current: Arc<Mutex<HashMap<String, Source>>>,
    started: broadcast::Sender<Source>,
}

impl LogSources {
    pub(crate) fn new() -> LogSources {
        LogSources {
            current: Arc::default(),
            started: broadcast::channel(64).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Source>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker started a runner for `task`.
    pub(crate) fn add(&self, task: api::Task, controller: Arc<dyn Controller>) {
        let source = Source { task, controller };
        let mut current = self.lock();
        current.insert(source.task.id.clone(), source.clone());
        let _ = self.started.send(source);
    }

    /// The worker removes `task_id`.
    pub(crate) fn remove(&self, task_id: &str) {
        self.lock().remove(task_id);
    }

    /// The sources now and a receiver of those started afterwards, with nothing between.
    fn snapshot(&self) -> (Vec<Source>, broadcast::Receiver<Source>) {
        let current = self.lock();
        let rx = self.started.subscribe();
        (current.values().cloned().collect(), rx)
    }
}

/// Whether `selector` names `task` (by ID, service or node).
fn matches(selector: &api::LogSelector, task: &api::Task) -> bool {
    selector.task_ids.contains(&task.id)
        || selector.service_ids.contains(&task.service_id)
        || selector.node_ids.contains(&task.node_id)
}

/// Listens for log subscriptions on `channel` and serves them from `sources` until dropped (the
/// session's end); every subscription it serves ends with it.
pub(crate) async fn listen(channel: Channel, sources: LogSources) {
    let all = CancellationToken::new();
    let _end_all = all.clone().drop_guard();
    let mut client = LogBrokerClient::new(channel.clone());
    let mut backoff = LISTEN_BACKOFF_MIN;
    loop {
        let round = all.child_token();
        let _end_round = round.clone().drop_guard();
        match client
            .listen_subscriptions(api::ListenSubscriptionsRequest {})
            .await
        {
            Ok(resp) => {
                backoff = LISTEN_BACKOFF_MIN;
                let mut stream = resp.into_inner();
                let mut active: HashMap<String, CancellationToken> = HashMap::new();
                loop {
                    match stream.message().await {
                        Ok(Some(sub)) if sub.close => {
                            if let Some(token) = active.remove(&sub.id) {
                                token.cancel();
                            }
                        }
                        Ok(Some(sub)) => {
                            active.retain(|_, t| !t.is_cancelled());
                            if active.contains_key(&sub.id) {
                                continue;
                            }
                            let token = round.child_token();
                            active.insert(sub.id.clone(), token.clone());
                            tokio::spawn(publish(channel.clone(), sources.clone(), sub, token));
                        }
                        Ok(None) => {
                            debug!("the log broker ended the subscription stream");
                            break;
                        }
                        Err(s) => {
                            debug!("log subscriptions: {}", s.message());
                            break;
                        }
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                warn!("manager does not support log subscriptions");
                std::future::pending::<()>().await;
            }
            Err(s) => debug!("listening for log subscriptions: {}", s.message()),
        }
        drop(_end_round);
        tokio::time::sleep(backoff.mul_f64(rand::random::<f64>())).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// Serves one subscription: publishes the logs of the matching tasks, then closes it.
async fn publish(
    channel: Channel,
    sources: LogSources,
    sub: api::SubscriptionMessage,
    token: CancellationToken,
) {
    let selector = sub.selector.clone().unwrap_or_default();
    let options = Arc::new(LogOptions::from_api(sub.options.as_ref()));
    debug!(subscription.id = %sub.id, follow = options.follow, "log subscription");
    let (out_tx, out_rx) = mpsc::channel::<api::PublishLogsMessage>(4);
    let mut client = LogBrokerClient::new(channel);
    let call = tokio::spawn(async move {
        client
            .publish_logs(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
    });
    let (tx, mut rx) = mpsc::channel::<api::LogMessage>(SINK_CAPACITY);
    let mut readers = JoinSet::new();
    let (current, mut started) = sources.snapshot();
    for source in current.into_iter().filter(|s| matches(&selector, &s.task)) {
        spawn_reader(&mut readers, source, &tx, &options);
    }
    // Without follow only the readers hold senders: the channel ends when they are all done.
    let tx = options.follow.then_some(tx);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                let mut messages = vec![first];
                while messages.len() < PUBLISH_BATCH && let Ok(m) = rx.try_recv() {
                    messages.push(m);
                }
                let out = api::PublishLogsMessage {
                    subscription_id: sub.id.clone(),
                    messages,
                    close: false,
                };
                if out_tx.send(out).await.is_err() {
                    break;
                }
            }
            new = started.recv(), if tx.is_some() => match (new, &tx) {
                (Ok(source), Some(tx)) if matches(&selector, &source.task) => {
                    spawn_reader(&mut readers, source, tx, &options);
                }
                _ => {}
            },
            Some(_) = readers.join_next(), if tx.is_some() => {}
        }
    }
    readers.abort_all();
    let _ = out_tx
        .send(api::PublishLogsMessage {
            subscription_id: sub.id.clone(),
            messages: Vec::new(),
            close: true,
        })
        .await;
    drop(out_tx);
    match call.await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => warn!(subscription.id = %sub.id, "publishing logs: {}", s.message()),
        Err(e) => warn!(subscription.id = %sub.id, "publishing logs: {e}"),
    }
    // Done: the listener forgets it.
    token.cancel();
}

/// Has `source`'s controller send its task's log into `tx`.
fn spawn_reader(
    readers: &mut JoinSet<()>,
    source: Source,
    tx: &mpsc::Sender<api::LogMessage>,
    options: &Arc<LogOptions>,
) {
    let sink = LogSink::new(&source.task, tx.clone());
    let options = options.clone();
    readers.spawn(async move {
        if let Err(e) = source.controller.logs(&options, &sink).await {
            debug!(task.id = %source.task.id, "reading the task's log: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_follows_swarmkit() {
        let lines = vec![1, 2, 3, 4];
        let with = |tail| {
            LogOptions {
                tail,
                ..Default::default()
            }
            .apply_tail(lines.clone())
        };
        assert_eq!(with(0), lines);
        assert_eq!(with(-1), Vec::<i32>::new());
        assert_eq!(with(-2), vec![4]);
        assert_eq!(with(-3), vec![3, 4]);
        assert_eq!(with(-100), lines);
        assert_eq!(with(1), vec![2, 3, 4]);
        assert_eq!(with(10), Vec::<i32>::new());
    }

    #[test]
    fn streams_and_since_select_lines() {
        let all = LogOptions::from_api(None);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert!(all.wants(api::LogStream::Stdout, t) && all.wants(api::LogStream::Stderr, t));
        let only_err = LogOptions::from_api(Some(&api::LogSubscriptionOptions {
            streams: vec![api::LogStream::Stderr as i32],
            since: Some((t + Duration::from_secs(1)).into()),
            ..Default::default()
        }));
        assert!(!only_err.wants(api::LogStream::Stdout, t + Duration::from_secs(5)));
        assert!(!only_err.wants(api::LogStream::Stderr, t));
        assert!(only_err.wants(api::LogStream::Stderr, t + Duration::from_secs(1)));
    }

    #[test]
    fn selectors_match_by_task_service_or_node() {
        let task = api::Task {
            id: "t".into(),
            service_id: "s".into(),
            node_id: "n".into(),
            ..Default::default()
        };
        let sel = |t: &[&str], s: &[&str], n: &[&str]| api::LogSelector {
            task_ids: t.iter().map(|x| x.to_string()).collect(),
            service_ids: s.iter().map(|x| x.to_string()).collect(),
            node_ids: n.iter().map(|x| x.to_string()).collect(),
        };
        assert!(matches(&sel(&["t"], &[], &[]), &task));
        assert!(matches(&sel(&[], &["s"], &[]), &task));
        assert!(matches(&sel(&[], &[], &["n"]), &task));
        assert!(!matches(&sel(&["x"], &["y"], &["z"]), &task));
    }
}
