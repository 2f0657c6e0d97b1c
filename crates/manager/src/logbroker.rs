//! The log broker (spec 5.12; SwarmKit's `manager/logbroker`): `Logs.SubscribeLogs` for clients,
//! `LogBroker.ListenSubscriptions` and `LogBroker.PublishLogs` for agents, all on the leader
//! (followers forward them, `proxy.rs`). A subscription names services, tasks or nodes; the broker
//! finds the nodes of the matching tasks (without `follow`, only tasks that reached RUNNING) and
//! sends the subscription to those nodes' agents, which publish their tasks' lines on one
//! `PublishLogs` stream each and close it when done. Without `follow` the client's stream ends
//! once every expected node closed or went away (with SwarmKit's "incomplete log stream"
//! error naming what is missing); with it, tasks placed later on other nodes bring those nodes
//! in, and the stream lasts until the client leaves. A node that goes away while followed ends
//! its part with one line on stderr saying so (ours: SwarmKit's follow stream says nothing).
//! A publisher may only send lines of its own node (SwarmKit's check) and of tasks the store
//! places on that node (ours).
//!
//! The broker runs for a leadership term ([`LogBroker::run`], a leader subsystem); outside one
//! every call fails with SwarmKit's `broker is not running`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use store::{By, Event, MemoryStore, WatchFilter, Watcher};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// Answers a client may have queued before the broker waits for it to read.
const CLIENT_QUEUE: usize = 64;

/// What happens to a subscription, in the order it happened.
enum SubEvent {
    /// Lines a node published.
    Logs(Vec<api::LogMessage>),
    /// A node is done: it closed its stream (no error) or went away (why).
    Done { node: String, err: Option<String> },
}

struct SubEntry {
    /// The message agents get (`close` set once it ends).
    message: api::SubscriptionMessage,
    /// The nodes it was sent to and that are not done (with follow: every node it was sent to).
    nodes: BTreeSet<String>,
    follow: bool,
    events: mpsc::UnboundedSender<SubEvent>,
}

#[derive(Default)]
struct State {
    /// The current leadership term, while there is one.
    term: Option<CancellationToken>,
    subscriptions: HashMap<String, SubEntry>,
    /// The agents listening, by node, each by listener number.
    listeners: HashMap<String, HashMap<u64, mpsc::UnboundedSender<api::SubscriptionMessage>>>,
    next_listener: u64,
}

impl State {
    fn send_to_node(&self, node: &str, message: &api::SubscriptionMessage) {
        for tx in self
            .listeners
            .get(node)
            .into_iter()
            .flat_map(|l| l.values())
        {
            let _ = tx.send(message.clone());
        }
    }
}

struct Inner {
    store: MemoryStore,
    state: Mutex<State>,
}

/// The leader's log broker; clones share it.
#[derive(Clone)]
pub struct LogBroker {
    inner: Arc<Inner>,
}

fn not_running() -> Status {
    Status::unknown("broker is not running")
}

fn not_available(node: &str) -> String {
    format!("node {node} is not available")
}

fn disconnected(node: &str) -> String {
    format!("node {node} disconnected unexpectedly")
}

/// SwarmKit's checks of a selector.
fn validate_selector(selector: Option<&api::LogSelector>) -> Result<&api::LogSelector, Status> {
    let selector =
        selector.ok_or_else(|| Status::invalid_argument("log selector must be provided"))?;
    if selector.service_ids.is_empty()
        && selector.task_ids.is_empty()
        && selector.node_ids.is_empty()
    {
        return Err(Status::invalid_argument("log selector must not be empty"));
    }
    Ok(selector)
}

/// Whether `selector` names `task` by ID or service (node selectors name nodes, not tasks).
fn names_task(selector: &api::LogSelector, task: &api::Task) -> bool {
    selector.task_ids.contains(&task.id) || selector.service_ids.contains(&task.service_id)
}

impl LogBroker {
    /// A broker over `store`, not running until [`LogBroker::run`].
    pub fn new(store: MemoryStore) -> LogBroker {
        LogBroker {
            inner: Arc::new(Inner {
                store,
                state: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves for one leadership term, until `shutdown`: then every stream ends.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), std::convert::Infallible> {
        let term = shutdown.child_token();
        self.lock().term = Some(term.clone());
        shutdown.cancelled().await;
        term.cancel();
        let mut state = self.lock();
        state.term = None;
        state.subscriptions.clear();
        state.listeners.clear();
        Ok(())
    }

    fn term(&self) -> Result<CancellationToken, Status> {
        self.lock().term.clone().ok_or_else(not_running)
    }

    /// `Logs.SubscribeLogs`: the stream of lines the selector matches.
    pub fn subscribe(&self, req: api::SubscribeLogsRequest) -> Result<LogStream, Status> {
        let selector = validate_selector(req.selector.as_ref())?.clone();
        let term = self.term()?;
        let follow = req.options.as_ref().is_some_and(|o| o.follow);
        let id = api::naming::new_id();
        // Which nodes run matching tasks, and (with follow) the task changes from then on.
        let filter = if follow {
            WatchFilter::none().tasks()
        } else {
            WatchFilter::none()
        };
        let ((nodes, pending), watcher) = self.inner.store.view_and_watch(filter, |tx| {
            let mut nodes: BTreeSet<String> = selector.node_ids.iter().cloned().collect();
            let mut pending = BTreeSet::new();
            let mut add = |t: &api::Task| {
                if t.node_id.is_empty() {
                    pending.insert(t.id.clone());
                } else {
                    nodes.insert(t.node_id.clone());
                }
            };
            for id in &selector.task_ids {
                if let Some(t) = tx.get::<api::Task>(id) {
                    add(&t);
                }
            }
            for sid in &selector.service_ids {
                for t in tx.find::<api::Task>(By::ServiceId(sid)) {
                    // Without follow, tasks that never ran have nothing to show.
                    if !follow
                        && t.status.as_ref().map_or(0, |s| s.state) < api::TaskState::Running as i32
                    {
                        continue;
                    }
                    add(&t);
                }
            }
            (nodes, pending)
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        let message = api::SubscriptionMessage {
            id: id.clone(),
            selector: Some(selector.clone()),
            options: req.options.clone(),
            close: false,
        };
        let mut errors = Vec::new();
        let mut expected = nodes.clone();
        {
            let mut state = self.lock();
            for node in &nodes {
                if state.listeners.contains_key(node) {
                    state.send_to_node(node, &message);
                } else {
                    errors.push(not_available(node));
                    if !follow {
                        expected.remove(node);
                    }
                }
            }
            state.subscriptions.insert(
                id.clone(),
                SubEntry {
                    message,
                    nodes: expected.clone(),
                    follow,
                    events,
                },
            );
        }
        debug!(subscription.id = %id, nodes = expected.len(), follow, "log subscription");
        let (out, rx) = mpsc::channel(CLIENT_QUEUE);
        let driver = Driver {
            broker: self.clone(),
            id,
            selector,
            follow,
            expected,
            errors,
            pending,
            out,
        };
        tokio::spawn(driver.run(events_rx, follow.then_some(watcher), term));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Adds `node` to a followed subscription and sends it there.
    fn add_node(&self, id: &str, node: &str) {
        let mut state = self.lock();
        let Some(entry) = state.subscriptions.get_mut(id) else {
            return;
        };
        if !entry.nodes.insert(node.to_string()) {
            return;
        }
        let message = entry.message.clone();
        if state.listeners.contains_key(node) {
            state.send_to_node(node, &message);
        } else if let Some(entry) = state.subscriptions.get(id) {
            let _ = entry.events.send(SubEvent::Done {
                node: node.to_string(),
                err: Some(not_available(node)),
            });
        }
    }

    /// The subscription ended: agents are told to stop.
    fn unregister(&self, id: &str) {
        let mut state = self.lock();
        if let Some(mut entry) = state.subscriptions.remove(id) {
            entry.message.close = true;
            for node in &entry.nodes {
                state.send_to_node(node, &entry.message);
            }
        }
    }

    /// `node` is done with subscription `id` (`err`: why it stopped early).
    fn mark_done(&self, id: &str, node: &str, err: Option<String>) {
        let mut state = self.lock();
        if let Some(entry) = state.subscriptions.get_mut(id) {
            if !entry.follow {
                entry.nodes.remove(node);
            }
            let _ = entry.events.send(SubEvent::Done {
                node: node.to_string(),
                err,
            });
        }
    }

    /// `LogBroker.ListenSubscriptions` for `node`: the subscriptions that concern it, now and
    /// as they come (and their close), until it goes away.
    pub fn listen(&self, node: String) -> Result<SubscriptionStream, Status> {
        let term = self.term()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let number = {
            let mut state = self.lock();
            let number = state.next_listener;
            state.next_listener += 1;
            for entry in state.subscriptions.values() {
                if entry.nodes.contains(&node) {
                    let _ = tx.send(entry.message.clone());
                }
            }
            state
                .listeners
                .entry(node.clone())
                .or_default()
                .insert(number, tx);
            number
        };
        debug!(node.id = %node, "log subscriptions listener");
        Ok(SubscriptionStream {
            rx,
            term: Box::pin(term.cancelled_owned()),
            _guard: ListenerGuard {
                broker: self.clone(),
                node,
                number,
            },
        })
    }

    /// A listener of `node` went away; when it was its last, every subscription it had is done
    /// for it, with an error.
    fn disconnect(&self, node: &str, number: u64) {
        let mut state = self.lock();
        let Some(listeners) = state.listeners.get_mut(node) else {
            return;
        };
        listeners.remove(&number);
        if !listeners.is_empty() {
            return;
        }
        state.listeners.remove(node);
        for entry in state.subscriptions.values_mut() {
            if !entry.nodes.contains(node) {
                continue;
            }
            if !entry.follow {
                entry.nodes.remove(node);
            }
            let _ = entry.events.send(SubEvent::Done {
                node: node.to_string(),
                err: Some(disconnected(node)),
            });
        }
    }

    /// `LogBroker.PublishLogs` from `node`: one subscription per stream, lines of its own
    /// node's tasks only, until it closes.
    pub async fn publish(
        &self,
        node: &str,
        mut stream: impl PublishSource,
    ) -> Result<api::PublishLogsResponse, Status> {
        let mut current: Option<String> = None;
        let mut checked: HashSet<String> = HashSet::new();
        let result = loop {
            let msg = match stream.next_message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break Ok(()),
                Err(s) => break Err(s),
            };
            if msg.subscription_id.is_empty() {
                break Err(Status::invalid_argument("missing subscription ID"));
            }
            match &current {
                None => {
                    if !self.lock().subscriptions.contains_key(&msg.subscription_id) {
                        break Err(Status::not_found("unknown subscription ID"));
                    }
                    current = Some(msg.subscription_id.clone());
                }
                Some(id) if *id != msg.subscription_id => {
                    break Err(Status::invalid_argument(
                        "different subscription IDs in the same session",
                    ));
                }
                Some(_) => {}
            }
            if msg.close {
                if let Some(id) = current.take() {
                    self.mark_done(&id, node, None);
                }
                return Ok(api::PublishLogsResponse {});
            }
            if let Err(s) = self.check_origin(node, &msg.messages, &mut checked) {
                break Err(s);
            }
            {
                let state = self.lock();
                if let Some(entry) = current.as_ref().and_then(|id| state.subscriptions.get(id)) {
                    let _ = entry.events.send(SubEvent::Logs(msg.messages));
                }
            }
        };
        if let Some(id) = current {
            self.mark_done(
                &id,
                node,
                result.as_ref().err().map(|s| s.message().to_string()),
            );
        }
        result.map(|()| api::PublishLogsResponse {})
    }

    /// Lines must come from `node` (SwarmKit's check) and from tasks the store places there.
    fn check_origin(
        &self,
        node: &str,
        messages: &[api::LogMessage],
        checked: &mut HashSet<String>,
    ) -> Result<(), Status> {
        for m in messages {
            let context = m.context.clone().unwrap_or_default();
            if context.node_id != node {
                return Err(Status::permission_denied(format!(
                    "invalid NodeID: expected={node};received={}",
                    context.node_id
                )));
            }
            if context.task_id.is_empty() || checked.contains(&context.task_id) {
                continue;
            }
            let on_node = self.inner.store.view(|tx| {
                tx.get::<api::Task>(&context.task_id)
                    .is_some_and(|t| t.node_id == node)
            });
            if !on_node {
                return Err(Status::permission_denied(format!(
                    "invalid TaskID: task {} is not assigned to node {node}",
                    context.task_id
                )));
            }
            checked.insert(context.task_id);
        }
        Ok(())
    }
}

/// What [`LogBroker::publish`] reads: a gRPC stream, or a test's messages.
#[tonic::async_trait]
pub trait PublishSource: Send {
    /// The next message; `None` at the end.
    async fn next_message(&mut self) -> Result<Option<api::PublishLogsMessage>, Status>;
}

#[tonic::async_trait]
impl PublishSource for Streaming<api::PublishLogsMessage> {
    async fn next_message(&mut self) -> Result<Option<api::PublishLogsMessage>, Status> {
        self.message().await
    }
}

/// The client's side of a subscription.
pub type LogStream =
    tokio_stream::wrappers::ReceiverStream<Result<api::SubscribeLogsMessage, Status>>;

/// Follows one subscription for its client.
struct Driver {
    broker: LogBroker,
    id: String,
    selector: api::LogSelector,
    follow: bool,
    /// Nodes not done yet (without follow).
    expected: BTreeSet<String>,
    errors: Vec<String>,
    /// Matching tasks not placed on a node yet.
    pending: BTreeSet<String>,
    out: mpsc::Sender<Result<api::SubscribeLogsMessage, Status>>,
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<SubEvent>,
        mut watcher: Option<Watcher>,
        term: CancellationToken,
    ) {
        let mut done = !self.follow && self.expected.is_empty();
        while !done {
            tokio::select! {
                () = self.out.closed() => break,
                () = term.cancelled() => {
                    let _ = self.out.send(Err(not_running())).await;
                    break;
                }
                ev = events.recv() => match ev {
                    Some(SubEvent::Logs(messages)) => {
                        let msg = api::SubscribeLogsMessage { messages };
                        if self.out.send(Ok(msg)).await.is_err() {
                            break;
                        }
                    }
                    Some(SubEvent::Done { node, err }) => done = self.node_done(node, err).await,
                    None => break,
                },
                ev = async { watcher.as_mut()?.recv().await }, if watcher.is_some() => match ev {
                    Some(ev) => self.task_changed(&ev),
                    None => watcher = None,
                },
            }
        }
        if done {
            let end = self.incomplete().map_or(Ok(()), Err);
            if let Err(s) = end {
                let _ = self.out.send(Err(s)).await;
            }
        }
        self.broker.unregister(&self.id);
    }

    /// A node is done; whether the whole subscription is.
    async fn node_done(&mut self, node: String, err: Option<String>) -> bool {
        if let Some(err) = err {
            if self.follow {
                // The client would otherwise wait on that node's tasks with no word.
                let line = api::LogMessage {
                    context: Some(api::LogContext {
                        node_id: node.clone(),
                        ..Default::default()
                    }),
                    timestamp: Some(SystemTime::now().into()),
                    stream: api::LogStream::Stderr as i32,
                    data: format!("{err}: no more logs from its tasks\n").into_bytes(),
                    attrs: Vec::new(),
                };
                let msg = api::SubscribeLogsMessage {
                    messages: vec![line],
                };
                let _ = self.out.send(Ok(msg)).await;
            }
            self.errors.push(err);
        }
        if self.follow {
            return false;
        }
        self.expected.remove(&node);
        self.expected.is_empty()
    }

    /// With follow: a matching task placed on a node not yet asked brings that node in.
    fn task_changed(&mut self, ev: &Event) {
        let Some(task) = ev.object_as::<api::Task>() else {
            return;
        };
        if !matches!(ev, Event::Object { kind, .. } if *kind != store::EventKind::Remove)
            || !names_task(&self.selector, task)
        {
            return;
        }
        if task.node_id.is_empty() {
            self.pending.insert(task.id.clone());
            return;
        }
        self.pending.remove(&task.id);
        self.broker.add_node(&self.id, &task.node_id);
    }

    /// SwarmKit's error for a stream that could not hold everything.
    fn incomplete(&self) -> Option<Status> {
        if self.errors.is_empty() && self.pending.is_empty() {
            return None;
        }
        let mut reasons = self.errors.clone();
        reasons.extend(
            self.pending
                .iter()
                .map(|t| format!("task {t} has not been scheduled")),
        );
        Some(Status::unknown(format!(
            "warning: incomplete log stream. some logs could not be retrieved for the following reasons: {}",
            reasons.join(", ")
        )))
    }
}

/// Removes a listener when its stream is dropped.
struct ListenerGuard {
    broker: LogBroker,
    node: String,
    number: u64,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.broker.disconnect(&self.node, self.number);
    }
}

/// The agent's side of `ListenSubscriptions`: ends with the term.
pub struct SubscriptionStream {
    rx: mpsc::UnboundedReceiver<api::SubscriptionMessage>,
    term: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: ListenerGuard,
}

impl Stream for SubscriptionStream {
    type Item = Result<api::SubscriptionMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.term.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// The gRPC services over a [`LogBroker`], for one listener.
#[derive(Clone)]
pub struct LogBrokerService {
    broker: LogBroker,
    /// Set on the local socket: the node every call comes from.
    local_node: Option<String>,
}

impl LogBrokerService {
    /// For the remote port: callers are identified by their certificates.
    pub fn remote(broker: LogBroker) -> LogBrokerService {
        LogBrokerService {
            broker,
            local_node: None,
        }
    }

    /// For the local control socket: every caller is `node_id` (this manager's node).
    pub fn local(broker: LogBroker, node_id: String) -> LogBrokerService {
        LogBrokerService {
            broker,
            local_node: Some(node_id),
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if let Some(id) = &self.local_node {
            return Ok(id.clone());
        }
        ca::peer_cert_info(req)
            .map(|c| c.node_id)
            .ok_or_else(|| Status::permission_denied("permission denied: unauthenticated"))
    }

    /// The `Logs` server.
    pub fn logs_server(&self) -> api::logs_server::LogsServer<LogBrokerService> {
        api::logs_server::LogsServer::new(self.clone())
            .max_decoding_message_size(crate::msgsize::MAX_RECV)
    }

    /// The `LogBroker` server.
    pub fn broker_server(&self) -> api::log_broker_server::LogBrokerServer<LogBrokerService> {
        api::log_broker_server::LogBrokerServer::new(self.clone())
            .max_decoding_message_size(crate::msgsize::MAX_RECV)
    }
}

#[tonic::async_trait]
impl api::logs_server::Logs for LogBrokerService {
    type SubscribeLogsStream = LogStream;

    async fn subscribe_logs(
        &self,
        req: Request<api::SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        self.broker.subscribe(req.into_inner()).map(Response::new)
    }
}

#[tonic::async_trait]
impl api::log_broker_server::LogBroker for LogBrokerService {
    type ListenSubscriptionsStream = SubscriptionStream;

    async fn listen_subscriptions(
        &self,
        req: Request<api::ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        let node = self.caller(&req)?;
        self.broker.listen(node).map(Response::new)
    }

    async fn publish_logs(
        &self,
        req: Request<Streaming<api::PublishLogsMessage>>,
    ) -> Result<Response<api::PublishLogsResponse>, Status> {
        let node = self.caller(&req)?;
        self.broker
            .publish(&node, req.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests;
