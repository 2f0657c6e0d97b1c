//! Serving gRPC: the control socket (TLS with the node certificate over a unix socket, as
//! SwarmKit serves it; no client certificate asked) and the remote TCP port.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use api::control_server::ControlServer;
use api::health_server::HealthServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::error;

use crate::controlapi::ControlApi;
use crate::health::HealthService;

/// Largest message a client may send, as SwarmKit's 4 MiB gRPC default.
const MAX_RECV: usize = 4 << 20;

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

/// Serves Control and Health on the unix socket until `shutdown` fires.
pub async fn serve_control(
    listener: UnixListener,
    tls: Arc<rustls::ServerConfig>,
    control: ControlApi,
    health: HealthService,
    shutdown: CancellationToken,
) {
    let incoming = ca::serve_unix_tls(listener, tls);
    let res = Server::builder()
        .add_service(ControlServer::new(control).max_decoding_message_size(MAX_RECV))
        .add_service(HealthServer::new(health))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = res {
        error!("control API server failed: {e}");
    }
}

/// Serves the remote API on TCP until `shutdown` fires. For now that is Health only; the CA,
/// dispatcher and raft services join with the security, agent and HA issues.
pub async fn serve_remote(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    health: HealthService,
    shutdown: CancellationToken,
) {
    let incoming = ca::serve_tcp_tls(listener, tls);
    let res = Server::builder()
        .add_service(HealthServer::new(health))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = res {
        error!("remote API server failed: {e}");
    }
}
