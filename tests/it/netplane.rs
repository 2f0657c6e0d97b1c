//! The data plane's control channel end to end, without the kernel side: three real managers
//! and a worker's agent, run in this process over the worker's real certificate (the worker
//! joined, then stopped, so its own agent does not compete) with the process executor and an
//! executor hook that asks for the network plane and records the views. The agent talks to a
//! follower, which forwards its Watch stream to the leader: the worker receives the view of the
//! overlay network its task is on (its task as the endpoint, the service's VIP; no peer, since
//! no manager runs a task there) and of the ingress network every node is on (the managers as
//! peers at their data path addresses), and a view without the network once the service is gone.
//! The service runs on the worker only: the managers' executor is whatever swarmd finds (Docker
//! where an engine answers), and this test is not about running their tasks.

use std::sync::{Arc, Mutex};

use api::netplane::{NetworkView, NodeView, WatchRequest};

use crate::ha_cluster::{Cluster, JOIN_LIMIT};
use crate::harness::{Swarmd, tls_material, wait_for};

/// The process executor, plus the network plane hooks of a node with a data plane.
struct Recording {
    inner: executor_process::ProcessExecutor,
    views: Mutex<Vec<NodeView>>,
}

#[tonic::async_trait]
impl agent::Executor for Recording {
    async fn describe(&self) -> Result<api::NodeDescription, agent::ExecutorError> {
        let mut d = self.inner.describe().await?;
        d.hostname = "plane-w1".into();
        Ok(d)
    }
    fn controller(
        &self,
        task: &api::Task,
        checkpoint: Option<agent::Checkpoint>,
        deps: agent::DependencyGetter,
    ) -> Result<Box<dyn agent::Controller>, agent::ExecutorError> {
        self.inner.controller(task, checkpoint, deps)
    }
    fn remove_orphans(&self, known: &std::collections::HashSet<String>) {
        self.inner.remove_orphans(known);
    }
    fn network_plane_request(&self) -> Option<WatchRequest> {
        Some(WatchRequest::default())
    }
    fn set_network_view(&self, view: NodeView) {
        self.views.lock().expect("views").push(view);
    }
}

impl Recording {
    fn last(&self) -> Option<NodeView> {
        self.views.lock().expect("views").last().cloned()
    }
}

fn network<'a>(v: &'a NodeView, name: &str) -> Option<&'a NetworkView> {
    v.networks.iter().find(|n| n.name == name)
}

#[test]
fn a_workers_agent_receives_its_network_view_through_a_follower() {
    let mut c = Cluster::start(3, 100);
    let leader = c.leader(JOIN_LIMIT);
    let follower = (leader + 1) % 3;
    let (worker_token, _) = c.managers[leader].join_tokens();
    let (mut w, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &c.addrs[follower],
            "--join-token",
            &worker_token,
            "--hostname",
            "plane-w1",
        ],
        "worker node is ready",
        JOIN_LIMIT,
    );
    assert_eq!(code, None, "worker exited; log:\n{}", w.log());
    assert_eq!(w.stop(), Some(0), "worker stops; log:\n{}", w.log());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let material = tls_material(&w.state_dir());
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Arc::new(agent::TaskFiles::open(dir.path()).expect("task files"));
    let recorder = Arc::new(Recording {
        inner: executor_process::ProcessExecutor::new(dir.path().join("worker"), files, None),
        views: Mutex::new(Vec::new()),
    });
    let (root, cert, key) = (material.root_pem, material.cert_pem, material.key_pem);
    let config = agent::AgentConfig {
        managers: vec![c.addrs[follower].clone()],
        connect: Arc::new(move |addr: &str| {
            let cfg =
                ca::mtls_client_config(&root, Some((&cert, &key))).map_err(|e| e.to_string())?;
            ca::tls_channel(addr, cfg, "swarm-manager").map_err(|e| e.to_string())
        }),
        local: Arc::new(|| None),
        executor: recorder.clone(),
        db: agent::TaskDb::open(&dir.path().join("db")).expect("db"),
        observer: Arc::new(|_: &api::SessionMessage| {}),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = rt.spawn(agent::run(config, shutdown.clone(), true));

    let m = &c.managers[leader];
    m.ctl(&["network", "create", "--name", "plane-front"]).ok();
    m.ctl(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "busybox",
        "--mode",
        "global",
        "--constraint",
        "node.role==worker",
        "--network",
        "plane-front",
        "--command",
        "/bin/sh",
        "--args",
        "-c,sleep 300 # plane-netplane-it",
    ])
    .ok();

    // The worker runs web's task: its view has it as plane-front's endpoint, with web's VIP, and
    // the three managers as ingress peers (at the address they reach the leader from).
    let worker = crate::harness::node_cert(&w.state_dir()).node_id;
    let view = wait_for("the worker's view of plane-front", JOIN_LIMIT, || {
        let v = recorder.last()?;
        let n = network(&v, "plane-front")?;
        let ingress = network(&v, "ingress")?;
        (ingress.peers.len() == 3 && n.endpoints.iter().any(|e| e.running)).then_some(v)
    });
    let front = network(&view, "plane-front").expect("front");
    assert!(front.vni >= 4096, "{front:?}");
    assert!(!front.node_addr.is_empty(), "{front:?}");
    assert!(
        front.peers.is_empty(),
        "no manager is on it: {:?}",
        front.peers
    );
    let ingress = network(&view, "ingress").expect("ingress");
    assert!(ingress.ingress, "{ingress:?}");
    assert!(
        ingress
            .peers
            .iter()
            .all(|p| p.data_path_addr == "127.0.0.1" && p.node_id != worker),
        "{:?}",
        ingress.peers
    );
    assert_eq!(front.services.len(), 1, "{:?}", front.services);
    assert_eq!(front.services[0].name, "web");
    assert!(!front.services[0].vip.is_empty());
    assert_eq!(front.endpoints.len(), 1, "{:?}", front.endpoints);
    let task = &front.endpoints[0];
    assert!(
        task.task_name.starts_with("web.") && task.node_id == worker && !task.addr.is_empty(),
        "{task:?}"
    );
    let versions: Vec<u64> = recorder
        .views
        .lock()
        .expect("views")
        .iter()
        .map(|v| v.version)
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "views in order: {versions:?}"
    );

    // The service goes: the worker's view no longer has the network.
    m.ctl(&["service", "rm", "web"]).ok();
    wait_for("a view without plane-front", JOIN_LIMIT, || {
        let v = recorder.last()?;
        network(&v, "plane-front").is_none().then_some(())
    });
    shutdown.cancel();
    rt.block_on(agent)
        .expect("agent task")
        .expect("the agent stops");
    drop(c);
}
