//! Leader forwarding (SwarmKit's raft proxy, `protobuf/plugin/raftproxy`) as one tower layer in
//! front of the gRPC routes of both listeners. On a manager that is not the raft leader, a call of
//! Control, Dispatcher, NodeCA, CA.GetUnlockKey or RaftJoin is forwarded as raw gRPC over HTTP/2
//! (unary and streaming alike) to the leader's remote address from the raft membership, over
//! mutual TLS with this manager's own certificate, on one channel cached per leader address; so is
//! our own `swarmkit.netplane.v1.NetworkPlane/Watch` stream. The
//! original caller travels in the forwarding headers of [`ca::set_forwarded`], which the leader's
//! authorization layer believes only from a manager of its cluster; a control socket call, whose
//! caller is this manager's own node, goes without them as this manager's own call (SwarmKit's
//! forwardAsOwnRequest), so the leader sees it at the address this manager connects from. A call that already carries a `redirect` header is not
//! forwarded again, so requests cannot loop between managers.
//!
//! A Control read on the control socket carrying [`LOCAL_READ_KEY`] is answered from this
//! manager's own store instead (ours, for tests and debugging).
//!
//! On the leader, a Control read is served only after raft confirms the leadership with a
//! quorum ([`raft::RaftNode::ensure_linearizable`], one round shared by concurrent reads), so
//! reads are linearizable; a write needs no such round, since its commit proves the leadership,
//! and waits only for what this leader knows locally ([`raft::RaftNode::ensure_writable`]: its
//! store holds every entry of earlier terms, and a quorum answered it recently, else it confirms
//! as a read does). A deposed or minority-side leader answers no read and no write.
//!
//! A Control call rides through an election (SwarmKit's raft proxy and `LeaderConn`): while this
//! manager knows no leader, or the leader it knows cannot be reached, the call waits for the
//! next leader and then is served here or forwarded there. The wait is bounded by the client's
//! `grpc-timeout` if it sent one, else by [`Forwarder::call_bound`]; as in SwarmKit, a manager
//! that has had no leader for longer than its lost-quorum timeout (10 ticks, one election
//! timeout) answers SwarmKit's no-leader message (gRPC code Unknown, as SwarmKit's) at once,
//! and a call without a deadline gives up then too. A forwarded call is sent again to the next
//! leader only when it cannot have been run: its connection was never made, or the manager it
//! reached answered with [`NOT_APPLIED_KEY`] (it refused the call before running it); a write
//! that may have reached a leader that then died is answered with the no-leader error, never
//! sent twice. A read is sent again after any failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};

use raft::RaftNode;
use store::ProposeError;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, StdError, http};
use tonic::transport::Channel;
use tower::ServiceExt;

use crate::msgsize::{MAX_RECV, too_large};

/// Whether calls of `path` go to the leader (every method SwarmKit registers through a raft
/// proxy). CA.GetRootCACertificate and Health are answered by any manager; the raft transport
/// talks to its addressee.
pub fn forwarded(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        CONTROL,
        "/docker.swarmkit.v1.Dispatcher/",
        "/docker.swarmkit.v1.NodeCA/",
        "/docker.swarmkit.v1.LogBroker/",
        "/docker.swarmkit.v1.Logs/",
        // Served by every manager in SwarmKit, each from its own store; ours from the leader's,
        // after a read index, so a watch misses nothing committed before it was asked for.
        "/docker.swarmkit.v1.Watch/",
        // Ours: the data plane's views come from the leader's store, as the dispatcher's streams.
        "/swarmkit.netplane.v1.NetworkPlane/",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p))
        || path == "/docker.swarmkit.v1.CA/GetUnlockKey"
        || path == "/swarmkit.raftrpc.v1.RaftJoin/Join"
}

const CONTROL: &str = "/docker.swarmkit.v1.Control/";

/// Header (ours, not SwarmKit's) asking the control socket to answer a Control read from this
/// manager's own store, neither forwarded nor confirmed by the leader: possibly stale, but it
/// shows what this manager holds (tests comparing managers' stores, debugging a manager that has
/// lost its quorum). Honoured on the control socket only.
pub const LOCAL_READ_KEY: &str = "swarmd-local-read";

/// Whether a Control call asks for (and may have) a local read: `Get*`/`List*` with
/// [`LOCAL_READ_KEY`] = `true`.
fn local_read(path: &str, headers: &http::HeaderMap) -> bool {
    let read = path
        .strip_prefix(CONTROL)
        .is_some_and(|m| m.starts_with("Get") || m.starts_with("List"));
    read && headers.get(LOCAL_READ_KEY).is_some_and(|v| v == "true")
}

/// Response header (ours, not SwarmKit's) on a Control answer that a manager gave without
/// running the method (no leader, leadership not confirmed, a second hop refused): a follower
/// that forwarded the call may send it to the next leader.
pub const NOT_APPLIED_KEY: &str = "swarmd-not-applied";

/// How often a follower tries a leader it knows but cannot reach (SwarmKit's raft proxy polls
/// every 500 ms for a new leader connection).
const RETRY: Duration = Duration::from_millis(500);

/// SwarmKit's answer when no leader can serve a call. Its code is Unknown, as SwarmKit's (a plain
/// error from its raft proxy; spec 8) and as a write that fails in the store for the same reason.
pub fn no_leader() -> Status {
    Status::unknown(ProposeError::NoLeader.to_string())
}

/// The no-leader answer of a call that was not run (see [`NOT_APPLIED_KEY`]).
fn not_applied(status: Status) -> http::Response<Body> {
    let mut resp = status.into_http();
    resp.headers_mut()
        .insert(NOT_APPLIED_KEY, http::HeaderValue::from_static("true"));
    resp
}

/// SwarmKit's refusal of a call a manager already forwarded once (`from` its `redirect` header).
fn second_redirect(from: &http::HeaderValue) -> Status {
    Status::resource_exhausted(format!(
        "more than one redirect to leader from: [{}]",
        from.to_str().unwrap_or("?")
    ))
}

/// Whether a Control method only reads (sending it twice changes nothing).
fn is_read(path: &str) -> bool {
    path.strip_prefix(CONTROL)
        .is_some_and(|m| m.starts_with("Get") || m.starts_with("List"))
}

/// The client's deadline from its `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits
/// and a unit), if it sent a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value (milliseconds, or seconds when that needs more than 8
/// digits).
fn grpc_timeout_value(left: Duration) -> http::HeaderValue {
    let ms = left.as_millis().max(1);
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    http::HeaderValue::from_str(&text).expect("digits and a unit are a valid header value")
}

/// Whether a failed forwarding never sent the request: the connection to the leader could not
/// be made (refused, unreachable, TLS handshake failed).
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Why a forwarding gave no answer.
struct Failure {
    status: Status,
    /// The leader may have run the call (sent, then no answer).
    maybe_run: bool,
}

/// Watches raft for the time this member has had no leader (SwarmKit's ticks with no leader).
fn track_leaderless(raft: &RaftNode) -> Arc<Mutex<Option<Instant>>> {
    let since = Arc::new(Mutex::new(None));
    let mut metrics = raft.server_metrics();
    let tracked = since.clone();
    tokio::spawn(async move {
        loop {
            let leaderless = metrics.borrow_and_update().current_leader.is_none();
            {
                let mut slot = tracked.lock().expect("leaderless mutex is never poisoned");
                match (leaderless, slot.is_some()) {
                    (true, false) => *slot = Some(Instant::now()),
                    (false, true) => *slot = None,
                    _ => {}
                }
            }
            // Closed when raft stops.
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    since
}

/// What both listeners' layers share: the raft member, this manager's TLS identity and the
/// cached channel to the current leader.
pub struct Forwarder {
    raft: Arc<RaftNode>,
    security: Arc<ca::SecurityConfig>,
    channel: Mutex<Option<(String, Channel)>>,
    /// Since when this member has known no leader (`None`: it knows one).
    leaderless_since: Arc<Mutex<Option<Instant>>>,
}

impl Forwarder {
    /// Forwards to `raft`'s leader with `security`'s certificate (within a tokio runtime: it
    /// follows raft's leadership in a task of its own).
    pub fn new(raft: Arc<RaftNode>, security: Arc<ca::SecurityConfig>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            leaderless_since: track_leaderless(&raft),
            raft,
            security,
            channel: Mutex::new(None),
        })
    }

    /// The layer for the remote port (callers identified by their certificates, as the
    /// authorization layer in front resolved them).
    pub fn remote_layer(self: &Arc<Self>) -> ProxyLayer {
        ProxyLayer {
            fwd: self.clone(),
            local: false,
        }
    }

    /// The layer for the control socket (every caller is this manager's own node).
    pub fn local_layer(self: &Arc<Self>) -> ProxyLayer {
        ProxyLayer {
            fwd: self.clone(),
            local: true,
        }
    }

    /// The channel to the leader at `addr`: the cached one while the leader's address is the
    /// same, a new (lazy) one after a change.
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut slot = self
            .channel
            .lock()
            .expect("proxy channel mutex is never poisoned");
        if let Some((cached, channel)) = slot.as_ref()
            && cached == addr
        {
            return Ok(channel.clone());
        }
        let cfg = self
            .security
            .client_config()
            .map_err(|e| Status::internal(e.to_string()))?;
        let channel = ca::tls_channel(addr, cfg, ca::MANAGER_ROLE)
            .map_err(|e| Status::internal(e.to_string()))?;
        *slot = Some((addr.to_string(), channel.clone()));
        Ok(channel)
    }

    fn forget(&self, addr: &str) {
        let mut slot = self
            .channel
            .lock()
            .expect("proxy channel mutex is never poisoned");
        if slot.as_ref().is_some_and(|(cached, _)| cached == addr) {
            *slot = None;
        }
    }

    /// Sends `req` to the `leader` at `addr` and returns its answer, or the status saying why
    /// not.
    async fn forward<B>(
        &self,
        req: http::Request<B>,
        local: bool,
        leader: u64,
        addr: String,
    ) -> http::Response<Body>
    where
        B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        match self.try_forward(req, local, leader, &addr, None).await {
            Ok(resp) => resp,
            Err(f) => f.status.into_http(),
        }
    }

    /// Sends `req` to the `leader` at `addr` and returns its answer (by `deadline` if given), or
    /// why not and whether the leader may have run it.
    async fn try_forward<B>(
        &self,
        req: http::Request<B>,
        local: bool,
        leader: u64,
        addr: &str,
        deadline: Option<Instant>,
    ) -> Result<http::Response<Body>, Failure>
    where
        B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        let not_sent = |status| Failure {
            status,
            maybe_run: false,
        };
        if let Some(from) = req.headers().get(ca::REDIRECT_KEY) {
            return Err(not_sent(second_redirect(from)));
        }
        let path = req.uri().path().to_string();
        // A control socket call is this manager's own: it goes on as a call of this manager
        // (SwarmKit's forwardAsOwnRequest), whom the leader identifies by its certificate and
        // sees at the address it connects from, which a session of this node's agent records.
        let (caller, from) = if local {
            (None, None)
        } else {
            let from = ca::peer_addr_http(req.extensions()).map(|a| a.to_string());
            (ca::peer_cert_info_http(req.extensions()), from)
        };
        let (mut parts, body) = req.into_parts();
        for hop in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "host",
        ] {
            parts.headers.remove(hop);
        }
        if local {
            ca::strip_forwarded(&mut parts.headers);
        } else {
            ca::set_forwarded(&mut parts.headers, caller.as_ref(), from.as_deref());
        }
        let redirect = from.as_deref().unwrap_or("local");
        parts.headers.insert(
            ca::REDIRECT_KEY,
            http::HeaderValue::from_str(redirect)
                .unwrap_or_else(|_| http::HeaderValue::from_static("?")),
        );
        // Nothing of this connection (TLS info, peer address) travels on.
        parts.extensions = http::Extensions::new();
        let req = http::Request::from_parts(parts, Body::new(body));
        let channel = self.channel(addr).map_err(not_sent)?;
        tracing::debug!(method = %path, leader = %format!("{leader:x}"), %addr, "forwarding to the leader");
        let call = channel.oneshot(req);
        let res = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::debug!(method = %path, %addr, "the leader did not answer in time");
                    return Err(Failure {
                        status: no_leader(),
                        maybe_run: true,
                    });
                }
            },
            None => call.await,
        };
        res.map_err(|e| {
            let sent = !never_sent(&e);
            tracing::debug!(method = %path, %addr, sent, "cannot reach the leader: {e}");
            self.forget(addr);
            Failure {
                status: no_leader(),
                maybe_run: sent,
            }
        })
    }

    /// How long a Control call may take to answer once served by the leader (here or through a
    /// follower): under twice the election timeout.
    pub fn control_bound(&self) -> Duration {
        self.raft.election_timeout() * 7 / 4
    }

    /// How long a Control call whose client set no deadline may wait for a leader and its
    /// answer, in all: three election timeouts (a failover takes 1-1.5; SwarmKit sets none, so
    /// it waits as long as its lost-quorum rule lets it).
    pub fn call_bound(&self) -> Duration {
        self.raft.election_timeout() * 3
    }

    /// SwarmKit's lost-quorum timeout: a member with no leader for longer answers at once.
    fn lost_quorum_bound(&self) -> Duration {
        self.raft.election_timeout()
    }

    /// How long this member has had no leader (zero while it knows one).
    fn leaderless_for(&self) -> Duration {
        self.leaderless_since
            .lock()
            .expect("leaderless mutex is never poisoned")
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Waits until the leader this member knows is no longer `from`, or `until`.
    async fn wait_leader_change(&self, from: Option<u64>, until: Instant) {
        let mut metrics = self.raft.metrics();
        while self.raft.leader_id() == from {
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Serves a Control call: on the leader once it may (a read once leadership is confirmed, a
    /// write once this leader's store is current), else forwarded to the leader, waiting for one (bounded) while there is none or the known one fails.
    async fn control<S, B>(
        self: Arc<Self>,
        mut inner: S,
        req: http::Request<B>,
        local: bool,
    ) -> Result<http::Response<Body>, S::Error>
    where
        S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
        B: tonic::codegen::Body<Data = Bytes> + From<Body> + Send + 'static,
        B::Error: Into<StdError>,
    {
        let raft = self.raft.clone();
        let read = is_read(req.uri().path());
        let client_deadline = grpc_timeout(req.headers()).map(|t| Instant::now() + t);
        let deadline = client_deadline.unwrap_or_else(|| Instant::now() + self.call_bound());
        // A call a follower forwarded is served here or refused as not run; never forwarded
        // again (that follower looks for the next leader itself).
        let hop = req.headers().get(ca::REDIRECT_KEY).cloned();
        if !raft.is_leader() && self.leaderless_for() > self.lost_quorum_bound() {
            return Ok(not_applied(no_leader()));
        }
        let mut unread = Some(req);
        let mut held: Option<(http::request::Parts, Bytes)> = None;
        loop {
            if Instant::now() >= deadline {
                return Ok(not_applied(no_leader()));
            }
            if raft.is_leader() {
                // A call a follower forwarded is refused soon when leadership is not confirmed
                // (an old leader that was paused hears of its successor only after a while):
                // the follower sends it again to the leader it knows.
                let confirm_by = if hop.is_some() {
                    deadline.min(Instant::now() + raft.election_timeout() / 4)
                } else {
                    deadline
                };
                let ready = async {
                    if read {
                        raft.ensure_linearizable().await
                    } else {
                        raft.ensure_writable().await
                    }
                };
                match tokio::time::timeout_at(confirm_by, ready).await {
                    Ok(Ok(())) => {
                        let req = match (unread.take(), &held) {
                            (Some(req), _) => req,
                            (None, Some((parts, body))) => {
                                rebuild(parts, body.clone()).map(B::from)
                            }
                            (None, None) => unreachable!("a call's request is unread or held"),
                        };
                        // Bounded as a forwarded answer is; past it the write may still commit.
                        let bound = deadline.min(Instant::now() + self.control_bound());
                        return match tokio::time::timeout_at(bound, inner.call(req)).await {
                            Ok(res) => res,
                            Err(_) => Ok(no_leader().into_http()),
                        };
                    }
                    // Still leading but without a quorum (a minority leader), or not confirmed
                    // in time.
                    Ok(Err(_)) if raft.is_leader() || hop.is_some() => {
                        return Ok(not_applied(no_leader()));
                    }
                    Err(_) => return Ok(not_applied(no_leader())),
                    // Leadership lost before the call ran: find the next leader.
                    Ok(Err(_)) => continue,
                }
            }
            if let Some(from) = &hop {
                // Another manager leads: SwarmKit refuses the second hop; none does: no leader.
                let other = raft.leader_id().is_some_and(|id| id != raft.raft_id());
                let status = if other {
                    second_redirect(from)
                } else {
                    no_leader()
                };
                return Ok(not_applied(status));
            }
            let Some((id, addr)) = raft.leader_addr().filter(|(id, _)| *id != raft.raft_id())
            else {
                // No leader (an election under way): wait for one, without a deadline of the
                // client's no longer than SwarmKit's lost-quorum rule allows.
                let mut until = deadline;
                if client_deadline.is_none() {
                    let left = self
                        .lost_quorum_bound()
                        .saturating_sub(self.leaderless_for());
                    if raft.leader_id().is_none() && left.is_zero() {
                        return Ok(not_applied(no_leader()));
                    }
                    until = until.min(Instant::now() + left.max(Duration::from_millis(10)));
                }
                // A leader known but not in the membership yet, or this member taking over:
                // look again shortly.
                let known = raft.leader_id();
                if known.is_some() {
                    until = until.min(Instant::now() + RETRY);
                }
                self.wait_leader_change(known, until).await;
                continue;
            };
            if held.is_none() {
                let req = unread.take().expect("a call's request is unread or held");
                match hold(req).await {
                    Ok(parts_body) => held = Some(parts_body),
                    Err(status) => return Ok(status.into_http()),
                }
            }
            let (parts, body) = held.as_ref().expect("held above");
            let mut attempt = rebuild(parts, body.clone());
            if client_deadline.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                attempt
                    .headers_mut()
                    .insert("grpc-timeout", grpc_timeout_value(left));
            }
            let last = match self
                .try_forward(attempt, local, id, &addr, Some(deadline))
                .await
            {
                Ok(resp) if !resp.headers().contains_key(NOT_APPLIED_KEY) => return Ok(resp),
                Ok(resp) => resp,
                Err(f) if f.maybe_run && !read => return Ok(f.status.into_http()),
                Err(f) => f.status.into_http(),
            };
            // The call did not run: try again once the leader changed, or in a while.
            let until = deadline.min(Instant::now() + RETRY);
            self.wait_leader_change(Some(id), until).await;
            if Instant::now() >= deadline {
                return Ok(last);
            }
        }
    }
}

/// Reads a Control request's body (bounded) so that it can be sent more than once; a body
/// over the message limit is refused as gRPC servers refuse it.
async fn hold<B>(req: http::Request<B>) -> Result<(http::request::Parts, Bytes), Status>
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    let (parts, body) = req.into_parts();
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            // A follower holds at most what the leader would read (`msgsize::MAX_RECV`).
            if buf.len() > MAX_RECV + 5 {
                // The gRPC frame header: a compression flag, then the message length.
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                return Err(too_large(len as usize, MAX_RECV));
            }
        }
    }
    Ok((parts, Bytes::from(buf)))
}

/// A request with `parts`' method, URI, version and headers and `body`.
fn rebuild(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(Full::new(body)));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

/// Tower layer putting [`ProxyService`] in front of the gRPC routes.
#[derive(Clone)]
pub struct ProxyLayer {
    fwd: Arc<Forwarder>,
    local: bool,
}

impl<S> tower::Layer<S> for ProxyLayer {
    type Service = ProxyService<S>;
    fn layer(&self, inner: S) -> ProxyService<S> {
        ProxyService {
            inner,
            fwd: self.fwd.clone(),
            local: self.local,
        }
    }
}

/// Serves a call here (leader, or a method any manager answers) or forwards it to the leader.
#[derive(Clone)]
pub struct ProxyService<S> {
    inner: S,
    fwd: Arc<Forwarder>,
    local: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for ProxyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: tonic::codegen::Body<Data = Bytes> + From<Body> + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !forwarded(path) {
            return Box::pin(self.inner.call(req));
        }
        let control = path.starts_with(CONTROL);
        if self.local && control && local_read(path, req.headers()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready service serves the call if this manager leads; a clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (fwd, local) = (self.fwd.clone(), self.local);
        if control {
            return Box::pin(fwd.control(inner, req, local));
        }
        let mut inner = inner;
        Box::pin(async move {
            let raft = &fwd.raft;
            if !raft.is_leader() {
                // A member that just started may not know the leader yet: wait a little.
                match raft.wait_leader(raft.election_timeout()).await {
                    None => return Ok(no_leader().into_http()),
                    Some((id, _)) if id == raft.raft_id() => {}
                    Some((id, addr)) => return Ok(fwd.forward(req, local, id, addr).await),
                }
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_methods_are_swarmkits_proxied_ones() {
        for path in [
            "/docker.swarmkit.v1.Control/ListServices",
            "/docker.swarmkit.v1.Control/CreateService",
            "/docker.swarmkit.v1.Dispatcher/Session",
            "/docker.swarmkit.v1.NodeCA/IssueNodeCertificate",
            "/docker.swarmkit.v1.CA/GetUnlockKey",
            "/swarmkit.raftrpc.v1.RaftJoin/Join",
            "/docker.swarmkit.v1.Watch/Watch",
            "/swarmkit.netplane.v1.NetworkPlane/Watch",
        ] {
            assert!(forwarded(path), "{path}");
        }
        for path in [
            "/docker.swarmkit.v1.CA/GetRootCACertificate",
            "/docker.swarmkit.v1.Health/Check",
            "/swarmkit.raftrpc.v1.RaftTransport/AppendEntries",
            "/swarmkit.raftrpc.v1.RaftTransport/Vote",
        ] {
            assert!(!forwarded(path), "{path}");
        }
        assert_eq!(no_leader().code(), tonic::Code::Unknown);
        let mut h = http::HeaderMap::new();
        assert!(!local_read("/docker.swarmkit.v1.Control/ListServices", &h));
        h.insert(LOCAL_READ_KEY, http::HeaderValue::from_static("true"));
        assert!(local_read("/docker.swarmkit.v1.Control/ListServices", &h));
        assert!(local_read("/docker.swarmkit.v1.Control/GetConfig", &h));
        assert!(!local_read("/docker.swarmkit.v1.Control/CreateService", &h));
        assert!(!local_read("/docker.swarmkit.v1.Dispatcher/Session", &h));
        assert!(
            no_leader()
                .message()
                .starts_with("The swarm does not have a leader.")
        );
    }

    #[test]
    fn a_clients_deadline_is_read_and_passed_on_in_grpc_timeout_units() {
        let deadline = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(deadline("30S"), Some(Duration::from_secs(30)));
        assert_eq!(deadline("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("2M"), Some(Duration::from_secs(120)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline("7u"), Some(Duration::from_micros(7)));
        assert_eq!(deadline("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(deadline(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
        assert_eq!(grpc_timeout_value(Duration::from_millis(2500)), "2500m");
        assert_eq!(grpc_timeout_value(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
        assert!(is_read("/docker.swarmkit.v1.Control/GetConfig"));
        assert!(is_read("/docker.swarmkit.v1.Control/ListServices"));
        assert!(!is_read("/docker.swarmkit.v1.Control/UpdateConfig"));
        assert!(!is_read("/docker.swarmkit.v1.Dispatcher/GetThing"));
    }

    #[tokio::test]
    async fn only_a_connection_never_made_counts_as_never_sent() {
        // Nothing listens on a port just freed: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let req = http::Request::builder()
            .uri(format!("http://127.0.0.1:{port}{CONTROL}ListNodes"))
            .body(Body::empty())
            .unwrap();
        let err = channel.oneshot(req).await.expect_err("refused");
        assert!(never_sent(&err), "{err:?}");
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!never_sent(&other));
    }

    #[tokio::test]
    async fn a_forwarded_body_is_held_whole_and_an_oversized_one_refused() {
        let small = http::Request::new(Body::new(Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))));
        let (_, body) = hold(small).await.expect("held");
        assert_eq!(&body[..], b"\0\0\0\0\x01x");
        let mut big = vec![0u8; MAX_RECV + 6];
        big[1..5].copy_from_slice(&((MAX_RECV + 1) as u32).to_be_bytes());
        let big = http::Request::new(Body::new(Full::new(Bytes::from(big))));
        let status = hold(big).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            format!(
                "grpc: received message larger than max ({} vs. {MAX_RECV})",
                MAX_RECV + 1
            )
        );
    }
}
