//! What the raft integration tests share: a member's configuration with short ticks, the
//! plaintext transport dialer (the manager serves the transport behind mutual TLS), bounded
//! waits and a store write.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use raft::{Dialer, NetworkFactory, RaftConfig, RaftNode};
use store::MemoryStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A member over `dir` with 100 ms ticks (election timeout 1 s), its raft database encrypted
/// (see [`keys`]). With 50 ms ticks a member being added to a cluster on a loaded CI machine
/// (two such tests at once, each with three members) sometimes heard no heartbeat for 500 ms,
/// campaigned in the middle of the next member's addition and made it fail.
pub fn config(dir: &std::path::Path) -> RaftConfig {
    RaftConfig {
        dir: dir.to_path_buf(),
        tick: Duration::from_millis(100),
        keys: keys(dir),
        ..Default::default()
    }
}

/// Data keys kept in a file next to the database (the node keeps them in its key file's
/// headers): `current` and `pending` as 32 bytes each, then a byte for `needs_rotation`.
struct FileKeys(std::path::PathBuf);

impl raft::DekStore for FileKeys {
    fn load(&self) -> Result<Option<raft::DataKeys>, String> {
        let bytes = match std::fs::read(&self.0) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let key = |b: &[u8]| raft::DataKey::from_bytes(b).ok_or("bad key file");
        Ok(Some(raft::DataKeys {
            current: key(&bytes[..32])?,
            pending: (bytes.len() > 33)
                .then(|| key(&bytes[32..64]))
                .transpose()?,
            needs_rotation: bytes.last() == Some(&1),
        }))
    }

    fn save(&self, keys: &raft::DataKeys) -> Result<(), String> {
        let mut out = keys.current.as_bytes().to_vec();
        if let Some(p) = &keys.pending {
            out.extend_from_slice(p.as_bytes());
        }
        out.push(u8::from(keys.needs_rotation));
        if let Some(parent) = self.0.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&self.0, out).map_err(|e| e.to_string())
    }
}

/// The data keys of the member over `dir`.
pub fn keys(dir: &std::path::Path) -> raft::KeySource {
    raft::KeySource(Some(Arc::new(FileKeys(dir.join("test-data-keys")))))
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

/// One member with its store and the server of its transport.
pub struct Member {
    pub node: Arc<RaftNode>,
    pub store: MemoryStore,
    pub addr: String,
    pub stop_server: Option<oneshot::Sender<()>>,
    pub dir: tempfile::TempDir,
}

impl Member {
    /// Stops serving and shuts raft down (a member that went away).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        self.node.shutdown().await;
    }
}

pub fn serve(node: &RaftNode, listener: TcpListener) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    let svc = node.transport().into_server();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    tx
}

/// A leader and two members added through it, all voters, with 100 ms ticks.
pub async fn cluster() -> Vec<Member> {
    cluster_with(config).await
}

/// [`cluster`] with each member's configuration from `config`.
pub async fn cluster_with(config: fn(&std::path::Path) -> RaftConfig) -> Vec<Member> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MemoryStore::new(None);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let node = tokio::time::timeout(
        WAIT,
        RaftNode::start(config(dir.path()), store.clone(), addr.clone(), network()),
    )
    .await
    .expect("bounded")
    .expect("start");
    let stop_server = Some(serve(&node, listener));
    let mut members = vec![Member {
        node,
        store,
        addr,
        stop_server,
        dir,
    }];
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MemoryStore::new(None);
        let node = RaftNode::start_joining(config(dir.path()), store.clone(), network())
            .await
            .expect("start joining");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop_server = Some(serve(&node, listener));
        members[0]
            .node
            .add_member(node.raft_id(), addr.clone(), WAIT)
            .await
            .expect("add member");
        node.wait_joined(WAIT).await.expect("joined");
        members.push(Member {
            node,
            store,
            addr,
            stop_server,
            dir,
        });
    }
    assert_eq!(members[0].node.members().len(), 3);
    members
}
