//! Serving gRPC: the control socket (TLS with the node certificate over a unix socket, as
//! SwarmKit serves it; no client certificate asked) and the remote TCP port (mutual TLS, every
//! call authorized by [`crate::authz`]). Both count their calls per method for the metrics
//! endpoint (`telemetry::grpc`), in front of everything else.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::ca_server::CaServer as CaServer_;
use api::dispatcher_server::DispatcherServer;
use api::health_server::HealthServer;
use api::node_ca_server::NodeCaServer;
use dispatcher::DispatcherService;
use telemetry::grpc::GrpcMetricsLayer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::authz::{AuthLayer, Authorizer};
use crate::caserver::CaServer;
use crate::controlapi::{ControlApi, ControlService};
use crate::health::HealthService;
use crate::logbroker::LogBrokerService;
use crate::msgsize::{MAX_RECV, MessageSizeLayer};
use crate::netplane::NetworkPlaneService;
use crate::proxy::ProxyLayer;
use crate::watchapi::WatchService;

/// Streams one connection may have open at once on the control socket (this manager's agent and
/// swarmctl: a handful each; calls beyond it wait for a stream to end).
const MAX_STREAMS_LOCAL: u32 = 1024;
/// The same on the remote port, higher: a follower forwards the Session and Assignments streams
/// of every agent connected to it to the leader over one connection (grpc-go has no bound).
const MAX_STREAMS_REMOTE: u32 = 16_384;
/// An HTTP/2 ping to a client after this much silence, the connection closed when it goes
/// unanswered for [`HTTP2_KEEPALIVE_TIMEOUT`]: grpc-go's server defaults, which SwarmKit keeps
/// (TCP keepalive, set by the accept loop, finds a vanished host sooner).
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(2 * 60 * 60);
/// See [`HTTP2_KEEPALIVE`].
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server with the HTTP/2 bounds both listeners share and `max_streams` streams per connection.
/// The accept loops (`ca::serve_unix_tls`, `ca::serve_tcp_tls`) bound the connections: set-up
/// time, connections setting up, connections per client.
fn builder(max_streams: u32) -> Server {
    Server::builder()
        .max_concurrent_streams(max_streams)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// Creates the socket's parent directory (0700) if needed, removes a stale socket and binds with
/// mode 0600.
pub fn bind_control_socket(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The services [`serve_control`] serves, by full name (their methods show in the gRPC metrics
/// before their first call).
const LOCAL_SERVICES: &[&str] = &[
    "docker.swarmkit.v1.Control",
    "docker.swarmkit.v1.CA",
    "docker.swarmkit.v1.NodeCA",
    "docker.swarmkit.v1.Health",
    "docker.swarmkit.v1.Dispatcher",
    "docker.swarmkit.v1.Watch",
    "swarmkit.netplane.v1.NetworkPlane",
    "docker.swarmkit.v1.Logs",
    "docker.swarmkit.v1.LogBroker",
];

/// What the control socket serves, as SwarmKit's local server: Control, CA and NodeCA (so that
/// `swarmctl cluster unlock-key` reads the unlock key here), Health, Watch, Logs (swarmctl), the
/// Dispatcher, the LogBroker and the network plane (those three as this manager's own node, for
/// the agent of a manager).
pub struct LocalServices {
    /// The control API.
    pub control: ControlApi,
    /// CA and NodeCA.
    pub ca: CaServer,
    /// Health (`ControlAPI` on the socket, as SwarmKit).
    pub health: HealthService,
    /// The dispatcher, as this manager's own node.
    pub dispatcher: DispatcherService,
    /// The Watch API.
    pub watch: WatchService,
    /// The network plane (`swarmkit.netplane.v1`), as this manager's own node.
    pub netplane: NetworkPlaneService,
    /// Logs (swarmctl) and LogBroker (this manager's own agent).
    pub logs: LogBrokerService,
    /// Forwarding of calls only the leader serves, from a follower (`None`: every call is
    /// served here).
    pub proxy: Option<ProxyLayer>,
}

/// Serves `services` on the unix socket until `shutdown` fires; with `services.proxy`, calls
/// that only the leader serves are forwarded to it from a follower (as this manager's own
/// node). An error: the server failed.
pub async fn serve_control(
    listener: UnixListener,
    tls: ca::ServerTls,
    services: LocalServices,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let incoming = ca::serve_unix_tls(listener, tls);
    let res = builder(MAX_STREAMS_LOCAL)
        .layer(GrpcMetricsLayer::new(LOCAL_SERVICES))
        .layer(MessageSizeLayer)
        .layer(tower::util::option_layer(services.proxy))
        .add_service(ControlService::new(services.control, MAX_RECV))
        .add_service(CaServer_::new(services.ca.clone()).max_decoding_message_size(MAX_RECV))
        .add_service(NodeCaServer::new(services.ca).max_decoding_message_size(MAX_RECV))
        .add_service(HealthServer::new(services.health).max_decoding_message_size(MAX_RECV))
        .add_service(DispatcherServer::new(services.dispatcher).max_decoding_message_size(MAX_RECV))
        .add_service(
            services
                .watch
                .into_server()
                .max_decoding_message_size(MAX_RECV),
        )
        .add_service(services.netplane.into_server())
        .add_service(services.logs.logs_server())
        .add_service(services.logs.broker_server())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    res.map_err(|e| e.to_string())
}

/// What the remote API serves.
pub struct RemoteServices {
    /// The control API, for manager certificates only.
    pub control: ControlApi,
    /// CA and NodeCA.
    pub ca: CaServer,
    /// Health (`Raft` on the remote port, as SwarmKit).
    pub health: HealthService,
    /// The dispatcher, for worker and manager certificates; it answers only while this manager
    /// leads (its term runs as a leader subsystem).
    pub dispatcher: DispatcherService,
    /// The Watch API, for manager certificates only.
    pub watch: WatchService,
    /// The network plane (`swarmkit.netplane.v1`), for worker and manager certificates; it too
    /// answers only while this manager leads.
    pub netplane: NetworkPlaneService,
    /// Logs (managers) and LogBroker (agents), served by the leader's broker.
    pub logs: LogBrokerService,
    /// The raft transport (`swarmkit.raftrpc.v1.RaftTransport`), for manager certificates only
    /// (`None` serves no transport, for tests without a raft member).
    pub raft: Option<raft::TransportService>,
    /// Raft joins (`swarmkit.raftrpc.v1.RaftJoin`), for manager certificates only.
    pub join: Option<crate::raftjoin::JoinService>,
    /// The authorization every call goes through first.
    pub auth: Arc<Authorizer>,
    /// Forwarding to the leader, behind the authorization (`None`: every call is served here).
    pub proxy: Option<ProxyLayer>,
}

/// Serves the remote API on TCP (mutual TLS; a client without a certificate gets in but only
/// reaches what the authorization table lets anyone call) until `shutdown` fires (an error: the
/// server failed).
pub async fn serve_remote(
    listener: TcpListener,
    tls: ca::ServerTls,
    services: RemoteServices,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let incoming = ca::serve_tcp_tls(listener, tls);
    let res = builder(MAX_STREAMS_REMOTE)
        .layer(GrpcMetricsLayer::new(crate::authz::SERVED_SERVICES))
        .layer(MessageSizeLayer)
        .layer(AuthLayer(services.auth))
        .layer(tower::util::option_layer(services.proxy))
        .add_service(ControlService::new(services.control, MAX_RECV))
        .add_service(CaServer_::new(services.ca.clone()).max_decoding_message_size(MAX_RECV))
        .add_service(NodeCaServer::new(services.ca).max_decoding_message_size(MAX_RECV))
        .add_service(HealthServer::new(services.health).max_decoding_message_size(MAX_RECV))
        .add_service(DispatcherServer::new(services.dispatcher).max_decoding_message_size(MAX_RECV))
        .add_service(
            services
                .watch
                .into_server()
                .max_decoding_message_size(MAX_RECV),
        )
        .add_service(services.netplane.into_server())
        .add_service(services.logs.logs_server())
        .add_service(services.logs.broker_server())
        .add_optional_service(services.raft.map(raft::TransportService::into_server))
        .add_optional_service(services.join.map(crate::raftjoin::JoinService::into_server))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    res.map_err(|e| e.to_string())
}
