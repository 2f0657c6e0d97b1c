//! Properties of the leader subsystems working together (allocator, orchestrators, scheduler,
//! reaper, constraint enforcer) over a raft-less store, driven through the control API, with a
//! fake agent that runs whatever is assigned and a paused clock. Random sequences of scale,
//! update, drain, pause and activate are checked at every point where the cluster has settled:
//! N unique non-zero slots, one desired-RUNNING task per slot, drained nodes hold
//! none, spread within ceil(N / nodes) when every node is alike, task history bounded, and failing
//! updates pause or roll back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use api::control_server::Control;
use api::node_spec::Availability;
use api::update_config::{FailureAction, UpdateOrder};
use api::update_status::UpdateState;
use manager::controlapi::{ControlApi, RaftMembers};
use store::{By, MemoryStore};
use testkit::fixtures::{AssignmentItem, assignment_items};
use tokio_util::sync::CancellationToken;
use tonic::Request;

const RUNNING: i32 = api::TaskState::Running as i32;

/// Images whose tasks fail as soon as they start.
const FAILING_IMAGE_PREFIX: &str = "fail";

/// How long (virtual time) the cluster gets to settle after each step.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// No manager is a raft member here; node ls details do not matter.
struct NoMembers;

impl RaftMembers for NoMembers {
    fn manager_status(&self, _node_id: &str) -> Option<api::ManagerStatus> {
        None
    }
    fn is_member(&self, _node_id: &str) -> bool {
        false
    }
}

/// A small deterministic generator (xorshift64*) so a failing sequence can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct TestCluster {
    store: MemoryStore,
    ctl: ControlApi,
    nodes: Vec<String>,
    shutdown: CancellationToken,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn node(id: &str) -> api::Node {
    api::Node {
        id: id.to_string(),
        role: api::NodeRole::Worker as i32,
        spec: Some(api::NodeSpec {
            annotations: Some(api::Annotations {
                name: id.to_string(),
                ..Default::default()
            }),
            membership: api::node_spec::Membership::Accepted as i32,
            availability: Availability::Active as i32,
            ..Default::default()
        }),
        description: Some(api::NodeDescription {
            hostname: id.to_string(),
            platform: Some(api::Platform {
                os: "linux".into(),
                architecture: "x86_64".into(),
            }),
            resources: Some(api::Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(api::NodeStatus {
            state: api::node_status::State::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl TestCluster {
    /// A cluster object, `nodes` identical ready workers, every leader subsystem and the fake agent.
    async fn start(nodes: usize) -> TestCluster {
        let store = MemoryStore::new(None);
        let names: Vec<String> = (0..nodes).map(|i| format!("node{i}")).collect();
        let cluster = api::Cluster {
            id: "cluster0".into(),
            spec: Some(api::ClusterSpec {
                annotations: Some(api::Annotations {
                    name: "default".into(),
                    ..Default::default()
                }),
                orchestration: Some(api::OrchestrationConfig {
                    task_history_retention_limit: 5,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let for_tx = names.clone();
        store
            .update(move |tx| {
                tx.create_cluster(cluster)?;
                for n in &for_tx {
                    tx.create_node(node(n))?;
                }
                Ok(())
            })
            .await
            .expect("seed store");
        let shutdown = CancellationToken::new();
        for sub in manager::leader_subsystems() {
            tokio::spawn((sub.start)(store.clone(), shutdown.child_token()));
        }
        testkit::FakeAgent::new(FAILING_IMAGE_PREFIX).spawn(store.clone(), shutdown.child_token());
        TestCluster {
            ctl: ControlApi::new(store.clone(), Arc::new(NoMembers)),
            store,
            nodes: names,
            shutdown,
        }
    }

    async fn create_service(&self, name: &str, image: &str, replicas: u64) -> String {
        let spec = testkit::fixtures::service_spec(name, replicas, image);
        let resp = self
            .ctl
            .create_service(Request::new(api::CreateServiceRequest { spec: Some(spec) }))
            .await
            .expect("create service")
            .into_inner();
        resp.service.expect("service").id
    }

    fn service(&self, id: &str) -> api::Service {
        self.store
            .view(|tx| tx.get_service(id))
            .expect("service exists")
    }

    /// Applies `change` to the service's spec through UpdateService.
    async fn update_service(&self, id: &str, change: impl FnOnce(&mut api::ServiceSpec)) {
        let service = self.service(id);
        let mut spec = service.spec.clone().expect("spec");
        change(&mut spec);
        self.ctl
            .update_service(Request::new(api::UpdateServiceRequest {
                service_id: id.into(),
                service_version: service.meta.and_then(|m| m.version),
                spec: Some(spec),
                rollback: 0,
            }))
            .await
            .expect("update service");
    }

    async fn set_availability(&self, node_id: &str, availability: Availability) {
        let node = self
            .store
            .view(|tx| tx.get_node(node_id))
            .expect("node exists");
        let mut spec = node.spec.clone().expect("spec");
        spec.availability = availability as i32;
        self.ctl
            .update_node(Request::new(api::UpdateNodeRequest {
                node_id: node_id.into(),
                node_version: node.meta.and_then(|m| m.version),
                spec: Some(spec),
            }))
            .await
            .expect("update node");
    }

    /// Waits (virtual time, re-checking after every store commit) until `settled` holds for the
    /// store's contents, or panics with `what` and the last reason it gave.
    async fn wait_until(
        &self,
        what: &str,
        mut settled: impl FnMut(&Snapshot) -> Result<(), String>,
    ) {
        testkit::wait_for(SETTLE_LIMIT, &self.store, what, |tx| {
            settled(&Snapshot::of(tx))
        })
        .await;
    }
}

/// The container image of a task spec ("" without a container).
fn image_of(spec: Option<&api::TaskSpec>) -> &str {
    match spec.and_then(|s| s.runtime.as_ref()) {
        Some(api::task_spec::Runtime::Container(c)) => c.image.as_str(),
        _ => "",
    }
}

/// Sets the container image of a service spec.
fn set_image(spec: &mut api::ServiceSpec, image: String) {
    if let Some(api::task_spec::Runtime::Container(c)) =
        spec.task.as_mut().and_then(|t| t.runtime.as_mut())
    {
        c.image = image;
    }
}

/// A consistent copy of what the properties look at.
struct Snapshot {
    services: Vec<api::Service>,
    tasks: Vec<api::Task>,
    nodes: Vec<api::Node>,
}

impl Snapshot {
    fn take(store: &MemoryStore) -> Snapshot {
        store.view(Snapshot::of)
    }

    fn of(tx: &store::ReadTx<'_>) -> Snapshot {
        Snapshot {
            services: tx.find_services(By::All),
            tasks: tx.find_tasks(By::All),
            nodes: tx.find_nodes(By::All),
        }
    }

    fn availability(&self, node_id: &str) -> Option<Availability> {
        self.nodes
            .iter()
            .find(|n| n.id == node_id)
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| Availability::try_from(s.availability).ok())
    }

    fn desired_running<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a api::Task> {
        self.tasks
            .iter()
            .filter(move |t| t.service_id == service_id && t.desired_state == RUNNING)
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for t in &self.tasks {
            out.push_str(&format!(
                "  task {} service {} slot {} node {} desired {} state {} err {:?} spec_version {:?}\n",
                &t.id[..6.min(t.id.len())],
                t.service_id,
                t.slot,
                t.node_id,
                t.desired_state,
                t.status.as_ref().map_or(0, |s| s.state),
                t.status.as_ref().map(|s| s.err.as_str()),
                t.spec_version.as_ref().map(|v| v.index),
            ));
        }
        for s in &self.services {
            out.push_str(&format!(
                "  service {} spec_version {:?} update {:?}\n",
                s.id,
                s.spec_version.as_ref().map(|v| v.index),
                s.update_status
            ));
        }
        out
    }

    /// The settled state of one replicated service with `replicas` replicas and every update done:
    /// slots 1..=replicas each with exactly one desired-RUNNING task, RUNNING, not dirty against the
    /// current spec, on a node that is not drained.
    fn service_settled(&self, service_id: &str, replicas: u64) -> Result<(), String> {
        let service = self
            .services
            .iter()
            .find(|s| s.id == service_id)
            .ok_or("service gone")?;
        if let Some(us) = &service.update_status
            && us.state != UpdateState::Completed as i32
            && us.state != UpdateState::RollbackCompleted as i32
        {
            return Err(format!("update state {}", us.state));
        }
        let mut slots = BTreeMap::new();
        for t in self.desired_running(service_id) {
            let state = t.status.as_ref().map_or(0, |s| s.state);
            if state != RUNNING {
                return Err(format!(
                    "task {} in slot {} is in state {state}",
                    t.id, t.slot
                ));
            }
            let node = self.nodes.iter().find(|n| n.id == t.node_id);
            if orchestrator::task::is_task_dirty(service, t, node) {
                return Err(format!("task {} is not of the current spec", t.id));
            }
            if self.availability(&t.node_id) == Some(Availability::Drain) {
                return Err(format!("task {} runs on drained node {}", t.id, t.node_id));
            }
            *slots.entry(t.slot).or_insert(0) += 1;
        }
        // N distinct slots, one desired-RUNNING task each. After a scale-down the survivors are
        // chosen for spread over nodes first (as SwarmKit), so they need not be exactly 1..=N.
        if slots.len() as u64 != replicas || slots.values().any(|n| *n != 1) {
            return Err(format!("slots {slots:?}, want {replicas} slots once each"));
        }
        if slots.keys().any(|s| *s == 0) {
            return Err(format!("slot 0 in a replicated service: {slots:?}"));
        }
        Ok(())
    }

    /// Tasks of `service_id` per node, counting desired-RUNNING ones.
    fn per_node(&self, service_id: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for t in self.desired_running(service_id) {
            *counts.entry(t.node_id.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn history_per_slot(&self, service_id: &str) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for t in self.tasks.iter().filter(|t| t.service_id == service_id) {
            *counts.entry(t.slot).or_insert(0) += 1;
        }
        counts
    }
}

/// Scaling only, on identical nodes: the spread keeps every node within ceil(N / nodes).
#[tokio::test(start_paused = true)]
async fn scaling_keeps_slots_unique_and_spread_even() {
    for seed in 1..=8u64 {
        let mut rng = Rng::new(seed);
        let c = TestCluster::start(3 + rng.below(3) as usize).await;
        let id = c.create_service("web", "busybox:1", 1).await;
        let mut replicas = 1;
        for step in 0..8 {
            replicas = rng.below(13);
            c.update_service(&id, |spec| {
                spec.mode = Some(api::service_spec::Mode::Replicated(
                    api::ReplicatedService { replicas },
                ));
            })
            .await;
            let nodes = c.nodes.len() as u64;
            let what = format!("seed {seed} step {step}: scale to {replicas} on {nodes} nodes");
            c.wait_until(&what, |snap| {
                snap.service_settled(&id, replicas)?;
                let ceil = replicas.div_ceil(nodes) as usize;
                let per_node = snap.per_node(&id);
                if let Some((node, n)) = per_node.iter().find(|(_, n)| **n > ceil) {
                    return Err(format!("{node} holds {n} > ceil {ceil}: {per_node:?}"));
                }
                Ok(())
            })
            .await;
        }
        let _ = replicas;
    }
}

/// Applies one random operation (scale, update, drain, activate or pause) of step `step` to one of
/// `services` (ID, replicas), recording it in `log`. Drain and pause keep one node taking tasks,
/// so every service can settle.
async fn random_op(
    c: &TestCluster,
    rng: &mut Rng,
    services: &mut [(String, u64)],
    step: u64,
    log: &mut Vec<String>,
) {
    let pick = rng.below(services.len() as u64) as usize;
    let (id, replicas) = services[pick].clone();
    let active = || {
        let snap = Snapshot::take(&c.store);
        c.nodes
            .iter()
            .filter(|n| snap.availability(n) == Some(Availability::Active))
            .count()
    };
    match rng.below(5) {
        0 => {
            let n = rng.below(9);
            services[pick].1 = n;
            log.push(format!("scale {pick} to {n}"));
            c.update_service(&id, |spec| {
                spec.mode = Some(api::service_spec::Mode::Replicated(
                    api::ReplicatedService { replicas: n },
                ));
            })
            .await;
        }
        1 => {
            let parallelism = rng.below(3);
            let order = if rng.below(2) == 0 {
                UpdateOrder::StopFirst
            } else {
                UpdateOrder::StartFirst
            };
            let image = format!("busybox:{}", 2 + step);
            log.push(format!(
                "update {pick} ({replicas} replicas) to {image}, parallelism {parallelism}, {order:?}"
            ));
            c.update_service(&id, |spec| {
                set_image(spec, image);
                spec.update = Some(api::UpdateConfig {
                    parallelism,
                    order: order as i32,
                    monitor: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                });
            })
            .await;
        }
        2 => {
            if active() > 1 {
                let n = &c.nodes[rng.below(c.nodes.len() as u64) as usize];
                log.push(format!("drain {n}"));
                c.set_availability(n, Availability::Drain).await;
            }
        }
        3 => {
            let n = &c.nodes[rng.below(c.nodes.len() as u64) as usize];
            log.push(format!("activate {n}"));
            c.set_availability(n, Availability::Active).await;
        }
        _ => {
            if active() > 1 {
                let n = &c.nodes[rng.below(c.nodes.len() as u64) as usize];
                log.push(format!("pause {n}"));
                c.set_availability(n, Availability::Pause).await;
            }
        }
    }
}

/// The settled cluster after random operations: every service settled at its replicas, no
/// desired-RUNNING task on a drained node, each slot's history within the retention limit.
fn all_settled(snap: &Snapshot, services: &[(String, u64)]) -> Result<(), String> {
    for (id, replicas) in services {
        snap.service_settled(id, *replicas)?;
    }
    for t in snap.tasks.iter().filter(|t| t.desired_state == RUNNING) {
        if snap.availability(&t.node_id) == Some(Availability::Drain) {
            return Err(format!("task {} on drained node {}", t.id, t.node_id));
        }
    }
    for (id, _) in services {
        if let Some((slot, n)) = snap.history_per_slot(id).into_iter().find(|(_, n)| *n > 5) {
            return Err(format!("slot {slot} of {id} keeps {n} tasks"));
        }
    }
    Ok(())
}

/// Random scale / update / drain / pause / activate sequences over three services, settling
/// after each operation.
#[tokio::test(start_paused = true)]
async fn random_sequences_keep_the_invariants() {
    for seed in 1..=8u64 {
        let mut rng = Rng::new(seed * 7919);
        let c = TestCluster::start(4).await;
        let mut services: Vec<(String, u64)> = Vec::new();
        for name in ["a", "b", "c"] {
            let replicas = 1 + rng.below(4);
            services.push((
                c.create_service(name, "busybox:1", replicas).await,
                replicas,
            ));
        }
        let mut log = Vec::new();
        for step in 0..20 {
            random_op(&c, &mut rng, &mut services, step, &mut log).await;
            let what = format!("seed {seed} after {log:?}");
            c.wait_until(&what, |snap| all_settled(snap, &services))
                .await;
        }
    }
}

/// The same operations in bursts of one to four with no pause in between, so each lands while
/// the orchestrators and the scheduler are still acting on the previous ones (tasks of an older
/// spec version still PENDING, say): every desired-RUNNING task still ends RUNNING.
#[tokio::test(start_paused = true)]
async fn random_bursts_never_strand_a_task() {
    for seed in 1..=8u64 {
        let mut rng = Rng::new(seed * 104_729);
        let c = TestCluster::start(3).await;
        let mut services: Vec<(String, u64)> = Vec::new();
        for name in ["a", "b"] {
            let replicas = 1 + rng.below(6);
            services.push((
                c.create_service(name, "busybox:1", replicas).await,
                replicas,
            ));
        }
        let mut log = Vec::new();
        for burst in 0..10 {
            for i in 0..1 + rng.below(4) {
                random_op(&c, &mut rng, &mut services, burst * 4 + i, &mut log).await;
            }
            log.push("--".to_string());
            let what = format!("seed {seed} after {log:?}");
            c.wait_until(&what, |snap| all_settled(snap, &services))
                .await;
        }
    }
}

/// Waits until the service's update status is `state`, returning its message.
async fn wait_update_state(c: &TestCluster, id: &str, state: UpdateState) -> String {
    let mut message = String::new();
    c.wait_until(&format!("update state {state:?}"), |snap| {
        let s = snap
            .services
            .iter()
            .find(|s| s.id == id)
            .ok_or("service gone")?;
        match &s.update_status {
            Some(us) if us.state == state as i32 => {
                message = us.message.clone();
                Ok(())
            }
            other => Err(format!("update status {other:?}")),
        }
    })
    .await;
    message
}

async fn start_failing_update(c: &TestCluster, id: &str, action: FailureAction) {
    c.update_service(id, |spec| {
        set_image(spec, format!("{FAILING_IMAGE_PREFIX}:2"));
        spec.update = Some(api::UpdateConfig {
            parallelism: 1,
            failure_action: action as i32,
            monitor: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        });
    })
    .await;
}

/// With failure action PAUSE and ratio 0, the first failed task pauses the update: the other
/// slots keep running the old spec.
#[tokio::test(start_paused = true)]
async fn failing_update_pauses() {
    let c = TestCluster::start(3).await;
    let id = c.create_service("web", "busybox:1", 4).await;
    c.wait_until("created", |s| s.service_settled(&id, 4)).await;
    let old_version = c.service(&id).spec_version;
    start_failing_update(&c, &id, FailureAction::Pause).await;
    let message = wait_update_state(&c, &id, UpdateState::Paused).await;
    assert!(
        message.starts_with("update paused due to failure or early termination of task "),
        "{message}"
    );
    let snap = Snapshot::take(&c.store);
    let old_running: HashSet<u64> = snap
        .desired_running(&id)
        .filter(|t| t.spec_version == old_version)
        .filter(|t| t.status.as_ref().map(|s| s.state) == Some(RUNNING))
        .map(|t| t.slot)
        .collect();
    assert!(
        old_running.len() >= 3,
        "slots still on the old spec: {old_running:?}\n{}",
        snap.dump()
    );
}

/// With failure action ROLLBACK the service goes back to its previous spec and every slot runs it.
#[tokio::test(start_paused = true)]
async fn failing_update_rolls_back() {
    let c = TestCluster::start(3).await;
    let id = c.create_service("web", "busybox:1", 4).await;
    c.wait_until("created", |s| s.service_settled(&id, 4)).await;
    start_failing_update(&c, &id, FailureAction::Rollback).await;
    let message = wait_update_state(&c, &id, UpdateState::RollbackCompleted).await;
    assert_eq!(message, "rollback completed");
    let service = c.service(&id);
    let image = image_of(service.spec.as_ref().and_then(|s| s.task.as_ref()));
    assert_eq!(image, "busybox:1", "spec rolled back to the previous one");
    c.wait_until("rolled back tasks running", |s| s.service_settled(&id, 4))
        .await;
}

/// Draining a node moves its tasks elsewhere; activating it again does not move them back, and
/// a node that is paused keeps its tasks but gets no new ones.
#[tokio::test(start_paused = true)]
async fn drain_and_pause() {
    let c = TestCluster::start(3).await;
    let id = c.create_service("web", "busybox:1", 6).await;
    c.wait_until("created", |s| s.service_settled(&id, 6)).await;
    c.set_availability("node0", Availability::Drain).await;
    c.wait_until("drained", |s| {
        s.service_settled(&id, 6)?;
        match s.per_node(&id).get("node0") {
            None => Ok(()),
            Some(n) => Err(format!("{n} tasks left on node0")),
        }
    })
    .await;
    c.set_availability("node0", Availability::Active).await;
    c.set_availability("node1", Availability::Pause).await;
    let before = Snapshot::take(&c.store).per_node(&id);
    c.update_service(&id, |spec| {
        spec.mode = Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas: 9 },
        ));
    })
    .await;
    c.wait_until("scaled with a paused node", |s| {
        s.service_settled(&id, 9)?;
        let now = s.per_node(&id);
        if now.get("node1") != before.get("node1") {
            return Err(format!("paused node1 changed: {before:?} -> {now:?}"));
        }
        Ok(())
    })
    .await;
}

/// A rollback asked for through UpdateService (rollback = PREVIOUS) brings back the previous spec
/// and every slot runs it again.
#[tokio::test(start_paused = true)]
async fn manual_rollback_restores_the_previous_spec() {
    let c = TestCluster::start(2).await;
    let id = c.create_service("web", "busybox:1", 3).await;
    c.wait_until("created", |s| s.service_settled(&id, 3)).await;
    c.update_service(&id, |spec| {
        set_image(spec, "busybox:2".into());
    })
    .await;
    wait_update_state(&c, &id, UpdateState::Completed).await;
    c.wait_until("updated", |s| s.service_settled(&id, 3)).await;

    let service = c.service(&id);
    c.ctl
        .update_service(Request::new(api::UpdateServiceRequest {
            service_id: id.clone(),
            service_version: service.meta.and_then(|m| m.version),
            spec: service.spec.clone(),
            rollback: api::update_service_request::Rollback::Previous as i32,
        }))
        .await
        .expect("rollback");
    let message = wait_update_state(&c, &id, UpdateState::RollbackCompleted).await;
    assert_eq!(message, "rollback completed");
    c.wait_until("rolled back", |s| {
        s.service_settled(&id, 3)?;
        let images: BTreeSet<String> = s
            .desired_running(&id)
            .map(|t| image_of(t.spec.as_ref()).to_string())
            .collect();
        if images.len() == 1 && images.contains("busybox:1") {
            Ok(())
        } else {
            Err(format!("images {images:?}"))
        }
    })
    .await;
}

/// One node's assignments stream and every change it delivered so far.
struct Assigned {
    stream: dispatcher::DispatcherStream<api::AssignmentsMessage>,
    seen: Vec<AssignmentItem>,
}

impl Assigned {
    async fn open(d: &dispatcher::Dispatcher, node: &api::Node) -> Assigned {
        use tokio_stream::StreamExt;
        let mut session = d
            .session(
                &node.id,
                "10.0.0.9",
                api::SessionRequest {
                    description: node.description.clone(),
                    session_id: String::new(),
                },
            )
            .await
            .expect("session");
        let first = session.next().await.expect("a message").expect("session");
        // The session stream stays open in the background.
        tokio::spawn(async move { while session.next().await.is_some() {} });
        let stream = d
            .assignments(&node.id, &first.session_id)
            .expect("assignments");
        Assigned {
            stream,
            seen: Vec::new(),
        }
    }

    /// Reads messages until `done` holds for everything delivered (bounded in virtual time).
    async fn until(&mut self, what: &str, done: impl Fn(&[AssignmentItem]) -> bool) {
        use tokio_stream::StreamExt;
        while !done(&self.seen) {
            let msg = tokio::time::timeout(SETTLE_LIMIT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: not delivered; saw {:?}", self.seen))
                .expect("stream open")
                .expect("message");
            self.seen.extend(assignment_items(&msg.changes));
        }
    }

    /// Position of the first change of `kind` `id` with `action`.
    fn position(&self, kind: &str, id: &str, action: i32) -> Option<usize> {
        self.seen
            .iter()
            .position(|(k, i, a, _)| *k == kind && i == id && *a == action)
    }
}

/// Issue 16 through the leader subsystems: a service referencing a secret and a config runs on
/// node0 only; node0's assignments carry both with their data, node1's never carry either. An
/// update changing the secret reference replaces the task with one referencing the new secret
/// (sent before it; the old one removed once its task ended); scaling to 0 removes both.
#[tokio::test(start_paused = true)]
async fn secrets_and_configs_follow_the_tasks_that_use_them() {
    const UPDATE: i32 = api::assignment_change::AssignmentAction::Update as i32;
    const REMOVE: i32 = api::assignment_change::AssignmentAction::Remove as i32;
    let c = TestCluster::start(2).await;
    let d = dispatcher::Dispatcher::new(
        c.store.clone(),
        "mgr".into(),
        dispatcher::Config {
            // No heartbeat deadline passes while the cluster settles in virtual time.
            default_heartbeat_period: Duration::from_secs(24 * 3600),
            ..dispatcher::Config::default()
        },
    );
    d.set_managers(vec![dispatcher::weighted_peer("mgr", "10.0.0.1:4242")]);
    tokio::spawn(d.clone().run(c.shutdown.child_token()));
    testkit::poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        "dispatcher running",
        || d.is_running(),
    )
    .await;
    // The new term marks the nodes UNKNOWN: they take tasks again once registered.
    let nodes = Snapshot::take(&c.store).nodes;
    let mut a = Assigned::open(&d, &nodes[0]).await;
    let mut b = Assigned::open(&d, &nodes[1]).await;

    let secret = |name: &str, data: &[u8]| {
        c.ctl.create_secret(Request::new(api::CreateSecretRequest {
            spec: Some(api::SecretSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                data: data.to_vec(),
                ..Default::default()
            }),
        }))
    };
    let pw = secret("pw", b"hunter2")
        .await
        .expect("pw")
        .into_inner()
        .secret
        .expect("pw");
    let pw2 = secret("pw2", b"correct horse")
        .await
        .expect("pw2")
        .into_inner()
        .secret
        .expect("pw2");
    let conf = c
        .ctl
        .create_config(Request::new(api::CreateConfigRequest {
            spec: Some(api::ConfigSpec {
                annotations: Some(api::Annotations {
                    name: "conf".into(),
                    ..Default::default()
                }),
                data: b"a=1".to_vec(),
                ..Default::default()
            }),
        }))
        .await
        .expect("conf")
        .into_inner()
        .config
        .expect("conf");
    let file = |name: &str| api::FileTarget {
        name: name.into(),
        mode: 0o444,
        ..Default::default()
    };
    let secret_ref = |s: &api::Secret| api::SecretReference {
        secret_id: s.id.clone(),
        secret_name: s
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| a.name.clone())
            .unwrap_or_default(),
        target: Some(api::secret_reference::Target::File(file("pw"))),
    };
    let mut spec = testkit::fixtures::service_spec("web", 1, "busybox:1");
    let task_spec = spec.task.as_mut().expect("task");
    task_spec.placement = Some(Box::new(api::Placement {
        constraints: vec!["node.hostname == node0".into()],
        ..Default::default()
    }));
    if let Some(api::task_spec::Runtime::Container(ct)) = task_spec.runtime.as_mut() {
        ct.secrets = vec![secret_ref(&pw)];
        ct.configs = vec![api::ConfigReference {
            config_id: conf.id.clone(),
            config_name: "conf".into(),
            target: Some(api::config_reference::Target::File(file("conf"))),
        }];
    }
    let id = c
        .ctl
        .create_service(Request::new(api::CreateServiceRequest { spec: Some(spec) }))
        .await
        .expect("create")
        .into_inner()
        .service
        .expect("service")
        .id;
    c.wait_until("created", |s| s.service_settled(&id, 1)).await;
    let first_task = Snapshot::take(&c.store)
        .desired_running(&id)
        .next()
        .expect("task")
        .id
        .clone();

    a.until("the first set", |seen| {
        seen.iter().any(|(k, ..)| *k == "task")
    })
    .await;
    assert!(
        a.seen
            .contains(&("secret", pw.id.clone(), UPDATE, b"hunter2".to_vec())),
        "{:?}",
        a.seen
    );
    assert!(
        a.seen
            .contains(&("config", conf.id.clone(), UPDATE, b"a=1".to_vec())),
        "{:?}",
        a.seen
    );
    assert!(a.position("secret", &pw.id, UPDATE) < a.position("task", &first_task, UPDATE));

    // The update references pw2 instead: a new task, pw2 before it, pw removed after the old
    // task ended.
    c.update_service(&id, |spec| {
        if let Some(api::task_spec::Runtime::Container(ct)) =
            spec.task.as_mut().and_then(|t| t.runtime.as_mut())
        {
            ct.secrets = vec![secret_ref(&pw2)];
        }
    })
    .await;
    c.wait_until("updated", |s| {
        s.service_settled(&id, 1)?;
        let t = s.desired_running(&id).next().ok_or("no task")?;
        let Some(api::task_spec::Runtime::Container(ct)) =
            t.spec.as_ref().and_then(|s| s.runtime.as_ref())
        else {
            return Err("no container".into());
        };
        if t.id == first_task || ct.secrets.iter().map(|r| &r.secret_id).ne([&pw2.id]) {
            return Err(format!("task {} references {:?}", t.id, ct.secrets));
        }
        Ok(())
    })
    .await;
    let second_task = Snapshot::take(&c.store)
        .desired_running(&id)
        .next()
        .expect("task")
        .id
        .clone();
    a.until("pw2 given, pw taken back", |seen| {
        seen.iter()
            .any(|(k, i, a, _)| *k == "secret" && *i == pw.id && *a == REMOVE)
            && seen
                .iter()
                .any(|(k, i, ..)| *k == "task" && *i == second_task)
    })
    .await;
    assert!(
        a.seen
            .contains(&("secret", pw2.id.clone(), UPDATE, b"correct horse".to_vec()))
    );
    assert!(a.position("secret", &pw2.id, UPDATE) < a.position("task", &second_task, UPDATE));
    assert!(
        a.position("config", &conf.id, REMOVE).is_none(),
        "the config is still used"
    );

    // Scaled to 0: both go.
    c.update_service(&id, |spec| {
        spec.mode = Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas: 0 },
        ));
    })
    .await;
    a.until("everything taken back", |seen| {
        seen.iter()
            .any(|(k, i, a, _)| *k == "secret" && *i == pw2.id && *a == REMOVE)
            && seen
                .iter()
                .any(|(k, i, a, _)| *k == "config" && *i == conf.id && *a == REMOVE)
    })
    .await;

    // node1 ran nothing of it: its stream holds its (empty) set and never a dependency.
    let mut messages = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_stream::StreamExt::next(&mut b.stream),
    )
    .await
    {
        b.seen
            .extend(assignment_items(&msg.expect("message").changes));
        messages += 1;
    }
    assert!(messages >= 1, "node1's set");
    assert!(
        b.seen.iter().all(|(k, ..)| *k == "task"),
        "node1 got {:?}",
        b.seen
    );
}
