//! The connection to one Docker Engine, shared by the executor and its controllers. The API
//! version is negotiated on first use rather than at connect time, so that swarmd can start
//! before the engine answers (SwarmKit's client negotiates lazily too).

use std::sync::Arc;
use std::time::Duration;

use agent::ExecutorError;
use bollard::Docker;
use tokio::sync::OnceCell;

use crate::error::classify;

/// Bound on an ordinary engine request (inspect, create, start, kill, remove).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on one long request: a container wait (re-issued when it runs out) or an image pull.
pub(crate) const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// A handle on the engine; cheap to clone.
#[derive(Clone)]
pub(crate) struct Engine {
    addr: String,
    unnegotiated: Docker,
    negotiated: Arc<OnceCell<Docker>>,
}

impl Engine {
    /// A handle on the engine at `addr` (`unix:///var/run/docker.sock`, `tcp://host:2375`). Only
    /// the address is checked here; nothing is sent to the engine yet.
    pub(crate) fn new(addr: &str) -> Result<Self, ExecutorError> {
        let docker = Docker::connect_with_host(addr)
            .map_err(|e| classify(&format!("docker engine at {addr}"), e))?
            .with_timeout(REQUEST_TIMEOUT);
        Ok(Self {
            addr: addr.to_string(),
            unnegotiated: docker,
            negotiated: Arc::new(OnceCell::new()),
        })
    }

    /// The engine's address as given.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The client, speaking the highest API version both sides know. A failed negotiation is
    /// tried again on the next call.
    pub(crate) async fn client(&self) -> Result<Docker, ExecutorError> {
        self.negotiated
            .get_or_try_init(|| async {
                self.unnegotiated
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| classify(&format!("docker engine at {}", self.addr), e))
            })
            .await
            .cloned()
    }

    /// The client with a longer request bound, for waits and pulls.
    pub(crate) async fn long_client(&self) -> Result<Docker, ExecutorError> {
        Ok(self.client().await?.with_timeout(LONG_REQUEST_TIMEOUT))
    }
}
