//! Leader forwarding (SwarmKit's raft proxy, `protobuf/plugin/raftproxy`) as one tower layer in
//! front of the gRPC routes of both listeners. On a manager that is not the raft leader, a call of
//! Control, Dispatcher, NodeCA, CA.GetUnlockKey or RaftJoin is forwarded as raw gRPC over HTTP/2
//! (unary and streaming alike) to the leader's remote address from the raft membership, over
//! mutual TLS with this manager's own certificate, on one channel cached per leader address. The
//! original caller travels in the forwarding headers of [`ca::set_forwarded`], which the leader's
//! authorization layer believes only from a manager of its cluster; a control socket call, whose
//! caller is this manager's own node, goes without them as this manager's own call (SwarmKit's
//! forwardAsOwnRequest), so the leader sees it at the address this manager connects from. A call that already carries a `redirect` header is not
//! forwarded again, so requests cannot loop between managers.
//!
//! A Control read on the control socket carrying [`LOCAL_READ_KEY`] is answered from this
//! manager's own store instead (ours, for tests and debugging).
//!
//! On the leader, every Control call is served only after raft confirms the leadership with a
//! quorum ([`raft::RaftNode::ensure_linearizable`]): reads are linearizable, and a deposed or
//! minority-side leader answers no read and no write; the answer is bounded by
//! [`Forwarder::control_bound`] (under 2 x election timeout). Without a leader (none known within an
//! election timeout, the known one unreachable, or no answer within the bound) the answer is
//! SwarmKit's no-leader message (gRPC code Unknown, as SwarmKit's).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raft::RaftNode;
use store::ProposeError;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, StdError, http};
use tonic::transport::Channel;
use tower::ServiceExt;

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

/// SwarmKit's answer when no leader can serve a call. Its code is Unknown, as SwarmKit's (a plain
/// error from its raft proxy; spec 8) and as a write that fails in the store for the same reason.
pub fn no_leader() -> Status {
    Status::unknown(ProposeError::NoLeader.to_string())
}

/// What both listeners' layers share: the raft member, this manager's TLS identity and the
/// cached channel to the current leader.
pub struct Forwarder {
    raft: Arc<RaftNode>,
    security: Arc<ca::SecurityConfig>,
    channel: Mutex<Option<(String, Channel)>>,
}

impl Forwarder {
    /// Forwards to `raft`'s leader with `security`'s certificate.
    pub fn new(raft: Arc<RaftNode>, security: Arc<ca::SecurityConfig>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
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

    /// How long a Control call may take to answer, on the leader and through a follower:
    /// under twice the election timeout.
    pub fn control_bound(&self) -> Duration {
        self.raft.election_timeout() * 7 / 4
    }

    /// Sends `req` to the `leader` at `addr` and returns its answer (a Control call's by
    /// `deadline`), or the status saying why not.
    async fn forward<B>(
        &self,
        req: http::Request<B>,
        local: bool,
        leader: u64,
        addr: String,
        deadline: tokio::time::Instant,
    ) -> http::Response<Body>
    where
        B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        match self.try_forward(req, local, leader, &addr, deadline).await {
            Ok(resp) => resp,
            Err(status) => status.into_http(),
        }
    }

    async fn try_forward<B>(
        &self,
        req: http::Request<B>,
        local: bool,
        leader: u64,
        addr: &str,
        deadline: tokio::time::Instant,
    ) -> Result<http::Response<Body>, Status>
    where
        B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        if let Some(from) = req.headers().get(ca::REDIRECT_KEY) {
            return Err(Status::resource_exhausted(format!(
                "more than one redirect to leader from: [{}]",
                from.to_str().unwrap_or("?")
            )));
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
        let channel = self.channel(addr)?;
        tracing::debug!(method = %path, leader = %format!("{leader:x}"), %addr, "forwarding to the leader");
        let call = channel.oneshot(req);
        let res = if path.starts_with(CONTROL) {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::debug!(method = %path, %addr, "the leader did not answer in time");
                    return Err(no_leader());
                }
            }
        } else {
            call.await
        };
        res.map_err(|e| {
            tracing::debug!(method = %path, %addr, "cannot reach the leader: {e}");
            self.forget(addr);
            no_leader()
        })
    }
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
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
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
        let deadline = tokio::time::Instant::now() + self.fwd.control_bound();
        // The ready service serves the call if this manager leads; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (fwd, local) = (self.fwd.clone(), self.local);
        Box::pin(async move {
            let raft = &fwd.raft;
            if !raft.is_leader() {
                // A member that just started may not know the leader yet: wait a little.
                match raft.wait_leader(raft.election_timeout()).await {
                    None => return Ok(no_leader().into_http()),
                    Some((id, _)) if id == raft.raft_id() => {}
                    Some((id, addr)) => {
                        return Ok(fwd.forward(req, local, id, addr, deadline).await);
                    }
                }
            }
            if !control {
                return inner.call(req).await;
            }
            // A Control call on the leader: leadership is confirmed first (what makes a read
            // linearizable, and a write on a leader cut off from its quorum fail fast instead of
            // queueing behind other writes that cannot commit either), and the answer is
            // bounded as a forwarded one is.
            if raft.ensure_linearizable().await.is_err() {
                return Ok(no_leader().into_http());
            }
            match tokio::time::timeout_at(deadline, inner.call(req)).await {
                Ok(res) => res,
                Err(_) => Ok(no_leader().into_http()),
            }
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
}
