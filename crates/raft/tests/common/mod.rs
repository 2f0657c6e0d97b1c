//! What the raft integration tests share: a member's configuration with short ticks, the
//! plaintext transport dialer (the manager serves the transport behind mutual TLS), bounded
//! waits and a store write.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use raft::{Dialer, NetworkFactory, RaftConfig};
use store::MemoryStore;

/// Bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A member over `dir` with 50 ms ticks.
pub fn config(dir: &std::path::Path) -> RaftConfig {
    RaftConfig {
        dir: dir.to_path_buf(),
        tick: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Dials peers over plaintext HTTP/2.
pub fn plain_dialer() -> Dialer {
    Arc::new(|addr: &str| {
        Ok(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy(),
        )
    })
}

/// The transport's client side over [`plain_dialer`].
pub fn network() -> NetworkFactory {
    NetworkFactory::new(plain_dialer())
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`WAIT`].
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    testkit::poll_until(WAIT, Duration::from_millis(20), what, cond).await;
}

/// Creates an empty Node `id` through `store`, within [`WAIT`].
pub async fn create_node(store: &MemoryStore, id: &str) {
    let node = api::Node {
        id: id.to_string(),
        ..Default::default()
    };
    tokio::time::timeout(WAIT, store.update(move |tx| tx.create_node(node)))
        .await
        .expect("write within bound")
        .expect("write succeeds");
}
