//! The Dispatcher service on the remote port over real mutual TLS, in process: a joined worker
//! opens a session, beats, receives its assignments and reports task status; callers without a
//! certificate, removed nodes and registration storms are refused (spec 4.2, 5.7).

use std::sync::Arc;
use std::time::Duration;

use api::TaskState;
use api::control_server::Control;
use api::dispatcher_client::DispatcherClient;
use api::node_status::State as NodeState;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::controlapi::ControlApi;
use crate::security_tests::{Cluster, OnlyMe, start};

const WAIT: Duration = Duration::from_secs(10);

struct Worker {
    node_id: String,
    client: DispatcherClient<Channel>,
}

async fn worker(c: &Cluster) -> Worker {
    let issued = c.join(&c.tokens().worker).await.expect("join");
    let key = issued.key.key_pem();
    let channel = c.channel(Some((&issued.cert_pem, key.as_bytes())));
    Worker {
        node_id: issued.node_id,
        client: DispatcherClient::new(channel),
    }
}

fn description() -> api::NodeDescription {
    api::NodeDescription {
        hostname: "worker-1".into(),
        platform: Some(api::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        }),
        resources: Some(api::Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            generic: Vec::new(),
        }),
        engine: Some(api::EngineDescription {
            engine_version: "27.0.0".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn open(
    w: &mut Worker,
) -> Result<(api::SessionMessage, tonic::Streaming<api::SessionMessage>), tonic::Status> {
    let mut stream = w
        .client
        .session(api::SessionRequest {
            description: Some(description()),
            session_id: String::new(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("first message in time")
        .expect("first message")?;
    Ok((first, stream))
}

#[tokio::test]
async fn a_worker_session_over_mutual_tls() {
    let c = start().await;
    let mut w = worker(&c).await;

    let (first, _stream) = open(&mut w).await.expect("session");
    assert!(!first.session_id.is_empty());
    assert_eq!(first.root_ca, c.root.cert_pem());
    assert_eq!(
        first.managers,
        vec![dispatcher::weighted_peer(&c.manager_id, &c.addr)]
    );
    assert_eq!(
        first.node.as_ref().map(|n| n.id.as_str()),
        Some(w.node_id.as_str())
    );

    let node = c.store.view(|tx| tx.get_node(&w.node_id)).expect("node");
    let status = node.status.expect("status");
    assert_eq!(status.state, NodeState::Ready as i32);
    assert_eq!(status.addr, "127.0.0.1");
    assert_eq!(node.description, Some(description()));

    let period = w
        .client
        .heartbeat(api::HeartbeatRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect("heartbeat")
        .into_inner()
        .period
        .expect("period");
    let period = Duration::try_from(period).expect("duration");
    assert!(
        period >= Duration::from_millis(4500) && period < Duration::from_millis(5500),
        "{period:?}"
    );
    let err = w
        .client
        .heartbeat(api::HeartbeatRequest {
            session_id: "stale".into(),
        })
        .await
        .expect_err("stale session");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "session invalid");

    // A task assigned to the worker arrives in the COMPLETE message; its status reports land.
    let (mine, theirs) = (w.node_id.clone(), c.manager_id.clone());
    c.store
        .update(move |tx| {
            for (id, node_id) in [("t-mine", mine), ("t-theirs", theirs)] {
                tx.create_task(api::Task {
                    id: id.into(),
                    node_id,
                    service_id: "svc".into(),
                    desired_state: TaskState::Running as i32,
                    status: Some(api::TaskStatus {
                        state: TaskState::Assigned as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })?;
            }
            Ok(())
        })
        .await
        .expect("tasks");
    let mut assignments = w
        .client
        .assignments(api::AssignmentsRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect("assignments")
        .into_inner();
    let complete = tokio::time::timeout(WAIT, assignments.next())
        .await
        .expect("in time")
        .expect("message")
        .expect("ok");
    assert_eq!(
        complete.r#type,
        api::assignments_message::Type::Complete as i32
    );
    assert_eq!(complete.results_in, "1");
    assert_eq!(complete.changes.len(), 1, "{complete:?}");

    let report = |id: &str| api::UpdateTaskStatusRequest {
        session_id: first.session_id.clone(),
        updates: vec![api::update_task_status_request::TaskStatusUpdate {
            task_id: id.into(),
            status: Some(api::TaskStatus {
                state: TaskState::Running as i32,
                message: "started".into(),
                ..Default::default()
            }),
        }],
    };
    w.client
        .update_task_status(report("t-mine"))
        .await
        .expect("own task");
    let err = w
        .client
        .update_task_status(report("t-theirs"))
        .await
        .expect_err("foreign task");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "cannot update a task not assigned this node");
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let t = c.store.view(|tx| tx.get_task("t-mine")).expect("task");
        let status = t.status.unwrap_or_default();
        if status.state == TaskState::Running as i32 {
            assert_eq!(status.applied_by, c.manager_id);
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "status not written: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let theirs = c.store.view(|tx| tx.get_task("t-theirs")).expect("task");
    assert_eq!(
        theirs.status.map(|s| s.state),
        Some(TaskState::Assigned as i32)
    );

    #[allow(deprecated)]
    let err = w
        .client
        .tasks(api::TasksRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .expect_err("deprecated");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn anonymous_removed_and_storming_nodes_are_refused() {
    let c = start().await;
    let mut anonymous = DispatcherClient::new(c.channel(None));
    let err = anonymous
        .session(api::SessionRequest::default())
        .await
        .expect_err("no certificate");
    assert_eq!(err.code(), Code::PermissionDenied);

    // More than three registrations within 8 s.
    let mut w = worker(&c).await;
    for _ in 0..4 {
        open(&mut w).await.expect("within the limit");
    }
    let err = open(&mut w).await.expect_err("rate limit");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        format!(
            "node {} exceeded rate limit count of registrations",
            w.node_id
        )
    );

    // A removed node's certificate no longer reaches the dispatcher.
    let mut removed = worker(&c).await;
    ControlApi::new(c.store.clone(), Arc::new(OnlyMe(String::new())))
        .remove_node(tonic::Request::new(api::RemoveNodeRequest {
            node_id: removed.node_id.clone(),
            force: true,
        }))
        .await
        .expect("remove");
    let err = open(&mut removed).await.expect_err("removed");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().ends_with(&format!(
            "Permission denied: node {} was removed from swarm",
            removed.node_id
        )),
        "{}",
        err.message()
    );
    assert!(c.dispatcher.is_running());
}

/// An agent of the worker `issued` talking to `c` over mutual TLS with `executor`, its
/// database in `dir`.
fn agent_config(
    c: &Cluster,
    issued: &ca::IssuedCertificate,
    executor: Arc<dyn agent::Executor>,
    dir: &std::path::Path,
) -> agent::AgentConfig {
    let (root, cert) = (c.root.cert_pem().to_vec(), issued.cert_pem.clone());
    let key = issued.key.key_pem().into_bytes();
    agent::AgentConfig {
        managers: vec![c.addr.clone()],
        connect: Arc::new(move |addr: &str| {
            let cfg =
                ca::mtls_client_config(&root, Some((&cert, &key))).map_err(|e| e.to_string())?;
            ca::tls_channel(addr, cfg, "swarm-manager").map_err(|e| e.to_string())
        }),
        local: Arc::new(|| None),
        executor,
        db: agent::TaskDb::open(dir).expect("db"),
        observer: Arc::new(|_: &api::SessionMessage| {}),
    }
}

/// Records the key sets the agent hands over ((subsystem, lamport time, bytes) of each key) and
/// the network views, when it announces a data path address (`plane`).
#[derive(Default)]
struct Recorder {
    sets: std::sync::Mutex<Vec<KeySet>>,
    plane: Option<String>,
    views: std::sync::Mutex<Vec<api::netplane::NodeView>>,
}

impl Recorder {
    fn last(&self) -> Option<KeySet> {
        self.sets.lock().expect("sets").last().cloned()
    }

    fn views(&self) -> Vec<api::netplane::NodeView> {
        self.views.lock().expect("views").clone()
    }
}

#[tonic::async_trait]
impl agent::Executor for Recorder {
    async fn describe(&self) -> Result<api::NodeDescription, agent::ExecutorError> {
        Ok(description())
    }
    fn controller(
        &self,
        _: &api::Task,
        _: Option<agent::Checkpoint>,
        _: agent::DependencyGetter,
    ) -> Result<Box<dyn agent::Controller>, agent::ExecutorError> {
        Err(agent::ExecutorError::Fatal("runs no tasks".into()))
    }
    fn set_network_bootstrap_keys(
        &self,
        keys: agent::NetworkKeys,
    ) -> Result<(), agent::ExecutorError> {
        let set = keys
            .iter()
            .map(|k| {
                (
                    k.subsystem().to_string(),
                    k.lamport_time(),
                    k.key().to_vec(),
                )
            })
            .collect();
        self.sets.lock().expect("sets").push(set);
        Ok(())
    }
    fn network_plane_request(&self) -> Option<api::netplane::WatchRequest> {
        self.plane.as_ref().map(|addr| api::netplane::WatchRequest {
            data_path_addr: addr.clone(),
            wireguard_public_key: Vec::new(),
            wireguard_port: 0,
        })
    }
    fn set_network_view(&self, view: api::netplane::NodeView) {
        self.views.lock().expect("views").push(view);
    }
}

/// The cluster's keys as the recorder shows them.
fn stored_keys(c: &Cluster) -> KeySet {
    c.store
        .view(|tx| tx.find_clusters(store::By::All))
        .pop()
        .expect("cluster")
        .network_bootstrap_keys
        .into_iter()
        .map(|k| (k.subsystem, k.lamport_time, k.key))
        .collect()
}

type KeySet = Vec<(String, u64, Vec<u8>)>;

/// Waits until the executor's last set is the cluster's six keys and satisfies `f`.
async fn wait_for_set(
    c: &Cluster,
    recorder: &Recorder,
    what: &str,
    f: impl Fn(&KeySet) -> bool,
) -> KeySet {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(set) = recorder.last()
            && set.len() == 6
            && set == stored_keys(c)
            && f(&set)
        {
            return set;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: the executor has {:?}",
            recorder
                .last()
                .map(|s| s.iter().map(|k| k.1).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The key manager's keys reach a worker's agent over its session (real mutual TLS, the real
/// dispatcher), and so does each rotation: the executor is handed the cluster's whole set.
#[tokio::test]
async fn a_worker_agent_hands_the_cluster_keys_and_their_rotations_to_its_executor() {
    let c = start().await;
    let interval = Duration::from_secs(2);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        crate::keymanager::KeyManager::with_interval(c.store.clone(), interval)
            .run(shutdown.clone()),
    );
    let issued = c.join(&c.tokens().worker).await.expect("join");
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Arc::new(Recorder::default());
    let config = agent_config(&c, &issued, recorder.clone(), dir.path());
    tokio::spawn(agent::run(config, shutdown.clone(), false));

    let first = wait_for_set(&c, &recorder, "the created keys", |_| true).await;
    let subsystems: Vec<&str> = first.iter().map(|k| k.0.as_str()).collect();
    let grouped: Vec<&str> = crate::keymanager::SUBSYSTEMS
        .iter()
        .flat_map(|s| [*s; crate::keymanager::KEYRING_SIZE])
        .collect();
    assert_eq!(subsystems, grouped);
    assert!(first.iter().all(|k| k.2.len() == 16));
    let newest = first.iter().map(|k| k.1).max().expect("a key");
    let rotated = wait_for_set(&c, &recorder, "a rotation", |set| {
        set.iter().any(|k| k.1 > newest)
    })
    .await;
    // Each rotation replaces one key per subsystem, its oldest. The agent may see two rotations
    // at once when the runtime stalls past the interval, so k rotations are allowed: 2k new keys
    // and the 3-k newest keys of each subsystem's first set kept.
    let lamports = |set: &KeySet| set.iter().map(|k| k.1).collect::<Vec<_>>();
    let fresh = rotated.iter().filter(|k| k.1 > newest).count();
    let rotations = fresh / 2;
    assert!(
        fresh % 2 == 0 && (1..=crate::keymanager::KEYRING_SIZE).contains(&rotations),
        "new keys {:?} after {:?}",
        lamports(&rotated),
        lamports(&first)
    );
    for subsystem in crate::keymanager::SUBSYSTEMS {
        let mut before: Vec<u64> = first
            .iter()
            .filter(|k| k.0 == subsystem)
            .map(|k| k.1)
            .collect();
        before.sort_unstable();
        let kept: Vec<u64> = rotated
            .iter()
            .filter(|k| k.0 == subsystem && first.contains(k))
            .map(|k| k.1)
            .collect();
        let mut kept_sorted = kept.clone();
        kept_sorted.sort_unstable();
        assert_eq!(
            kept_sorted,
            before[rotations..].to_vec(),
            "{subsystem}: kept {kept:?} of {before:?} after {rotations} rotation(s)"
        );
    }
    shutdown.cancel();
}

/// Waits until the recorder's last view satisfies `f`.
async fn wait_for_view(
    recorder: &Recorder,
    what: &str,
    f: impl Fn(&api::netplane::NodeView) -> bool,
) -> api::netplane::NodeView {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(view) = recorder.views().pop()
            && f(&view)
        {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: the executor has {:?}",
            recorder.views()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An overlay network `id` with VXLAN ID `vni`.
fn overlay_network(id: &str, vni: u32) -> api::Network {
    api::Network {
        id: id.into(),
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: [(
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                vni.to_string(),
            )]
            .into(),
        }),
        ..Default::default()
    }
}

/// Gives node `id` an attachment on `net` at `addr` (as the allocator does).
async fn attach(c: &Cluster, id: &str, net: api::Network, addr: &str) {
    let (id, addr) = (id.to_string(), addr.to_string());
    c.store
        .update(move |tx| {
            if tx.get_network(&net.id).is_none() {
                tx.create(net.clone())?;
            }
            let mut node = tx.get_node(&id).expect("node");
            node.attachments.push(api::NetworkAttachment {
                network: Some(net),
                addresses: vec![addr],
                ..Default::default()
            });
            tx.update(node)
        })
        .await
        .expect("attach");
}

/// A worker's agent opens the network plane's Watch next to its session (real mutual TLS, the
/// real service), hands each view to its executor in order, announces its data path address to
/// its peers, and opens the stream again when the plane's term ends and a new one starts.
#[tokio::test]
async fn a_worker_agent_hands_its_network_views_to_its_executor_and_watches_again() {
    let c = start().await;
    let issued = c.join(&c.tokens().worker).await.expect("join");
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Arc::new(Recorder {
        plane: Some("198.51.100.7".into()),
        ..Default::default()
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = agent_config(&c, &issued, recorder.clone(), dir.path());
    tokio::spawn(agent::run(config, shutdown.clone(), false));
    wait_for_view(&recorder, "a first, empty view", |v| v.networks.is_empty()).await;

    let worker = issued.node_id.clone();
    attach(&c, &worker, overlay_network("n1", 4200), "10.0.20.2/24").await;
    // The manager's node on the same network: the worker sees it as a peer at its status
    // address, and the manager's view lists the worker at its announced address.
    attach(
        &c,
        &c.manager_id,
        overlay_network("n1", 4200),
        "10.0.20.3/24",
    )
    .await;
    let c_manager_id = c.manager_id.clone();
    c.store
        .update(move |tx| {
            let mut node = tx.get_node(&c_manager_id).expect("manager node");
            node.status.get_or_insert_with(Default::default).addr = "192.0.2.1".into();
            tx.update(node)
        })
        .await
        .expect("manager address");
    let view = wait_for_view(&recorder, "n1 with the manager as peer", |v| {
        v.networks
            .first()
            .is_some_and(|n| n.peers.iter().any(|p| p.data_path_addr == "192.0.2.1"))
    })
    .await;
    assert_eq!(view.networks[0].node_addr, "10.0.20.2/24");
    let mut managers_view = c.netplane.watch(&c.manager_id, None).expect("watch");
    let mv = tokio::time::timeout(WAIT, managers_view.next())
        .await
        .expect("in time")
        .expect("a view")
        .expect("ok");
    assert_eq!(mv.networks[0].peers[0].node_id, worker);
    assert_eq!(mv.networks[0].peers[0].data_path_addr, "198.51.100.7");
    let versions: Vec<u64> = recorder.views().iter().map(|v| v.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "in order: {versions:?}"
    );

    // A new term: the stream ends, the agent opens it again and gets the next changes.
    c.netplane_term.cancel();
    tokio::spawn(c.netplane.clone().run(c.shutdown.child_token()));
    attach(&c, &worker, overlay_network("n2", 4201), "10.0.21.2/24").await;
    wait_for_view(&recorder, "n2 after the new term", |v| {
        v.networks.len() == 2
    })
    .await;
    shutdown.cancel();
}
