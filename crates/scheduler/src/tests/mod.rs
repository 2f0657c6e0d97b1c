//! Tests of the scheduler loop over a raft-less store with tokio's paused clock, one file per
//! topic; this file holds the object builders and store helpers they share. Pure parts (filters,
//! explanations, node bookkeeping) are tested next to their code.

mod filters;
mod lifecycle;
mod preassigned;
mod preferences;
mod spread;

use std::collections::BTreeMap;
use std::time::Duration;

use store::{By, MemoryStore, WatchFilter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Scheduler};

pub(super) use testkit::fixtures::node;
pub(super) use testkit::wait_for;

pub(super) const WAIT: Duration = Duration::from_secs(10);
pub(super) const GIB: i64 = 1 << 30;
pub(super) const CPU: i64 = 1_000_000_000;

// --- objects -------------------------------------------------------------------------------

pub(super) fn down(mut n: api::Node) -> api::Node {
    n.status.as_mut().unwrap().state = api::node_status::State::Down as i32;
    n
}

pub(super) fn availability(mut n: api::Node, a: api::node_spec::Availability) -> api::Node {
    n.spec.as_mut().unwrap().availability = a as i32;
    n
}

pub(super) fn resources(mut n: api::Node, nano_cpus: i64, memory_bytes: i64) -> api::Node {
    let d = n.description.as_mut().unwrap();
    d.resources.get_or_insert_with(Default::default).nano_cpus = nano_cpus;
    d.resources.as_mut().unwrap().memory_bytes = memory_bytes;
    n
}

pub(super) fn label(mut n: api::Node, key: &str, value: &str) -> api::Node {
    let a = n.spec.as_mut().unwrap().annotations.as_mut().unwrap();
    a.labels.insert(key.into(), value.into());
    n
}

pub(super) fn engine_label(mut n: api::Node, key: &str, value: &str) -> api::Node {
    let d = n.description.as_mut().unwrap();
    let e = d.engine.get_or_insert_with(Default::default);
    e.labels.insert(key.into(), value.into());
    n
}

pub(super) fn plugins(mut n: api::Node, list: &[(&str, &str)]) -> api::Node {
    let d = n.description.as_mut().unwrap();
    let e = d.engine.get_or_insert_with(Default::default);
    e.plugins = list
        .iter()
        .map(|(t, name)| api::PluginDescription {
            r#type: (*t).into(),
            name: (*name).into(),
        })
        .collect();
    n
}

pub(super) fn platform(mut n: api::Node, arch: &str, os: &str) -> api::Node {
    n.description.as_mut().unwrap().platform = Some(api::Platform {
        architecture: arch.into(),
        os: os.into(),
    });
    n
}

pub(super) fn service(id: &str) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(api::ServiceSpec {
            annotations: Some(api::Annotations {
                name: format!("svc-{id}"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        spec_version: Some(api::Version { index: 1 }),
        ..Default::default()
    }
}

pub(super) fn task(id: &str, service_id: &str) -> api::Task {
    let mut t = testkit::fixtures::task(id, service_id, api::TaskState::Pending);
    t.spec_version = Some(api::Version { index: 1 });
    t.status.as_mut().expect("status").message = "pending task scheduling".into();
    t
}

pub(super) fn tasks(prefix: &str, service_id: &str, n: usize) -> Vec<api::Task> {
    (0..n)
        .map(|i| task(&format!("{prefix}{i:03}"), service_id))
        .collect()
}

pub(super) fn spec_mut(t: &mut api::Task) -> &mut api::TaskSpec {
    t.spec.as_mut().unwrap()
}

pub(super) fn placement_mut(t: &mut api::Task) -> &mut api::Placement {
    spec_mut(t).placement.get_or_insert_with(Default::default)
}

pub(super) fn reserve(mut t: api::Task, nano_cpus: i64, memory_bytes: i64) -> api::Task {
    spec_mut(&mut t).resources = Some(Box::new(api::ResourceRequirements {
        reservations: Some(api::Resources {
            nano_cpus,
            memory_bytes,
            generic: Vec::new(),
        }),
        ..Default::default()
    }));
    t
}

pub(super) fn constraint(mut t: api::Task, expr: &str) -> api::Task {
    placement_mut(&mut t).constraints.push(expr.into());
    t
}

pub(super) fn host_port(mut t: api::Task, published: u32) -> api::Task {
    t.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![api::PortConfig {
            protocol: api::port_config::Protocol::Tcp as i32,
            target_port: 80,
            published_port: published,
            publish_mode: api::port_config::PublishMode::Host as i32,
            ..Default::default()
        }],
        ..Default::default()
    }));
    t
}

pub(super) fn spread(mut t: api::Task, descriptors: &[&str]) -> api::Task {
    placement_mut(&mut t).preferences = descriptors
        .iter()
        .map(|d| api::PlacementPreference {
            preference: Some(api::placement_preference::Preference::Spread(
                api::SpreadOver {
                    spread_descriptor: (*d).into(),
                },
            )),
        })
        .collect();
    t
}

pub(super) fn on_node(mut t: api::Task, node_id: &str, state: api::TaskState) -> api::Task {
    t.node_id = node_id.into();
    t.status.as_mut().unwrap().state = state as i32;
    t
}

// --- store helpers -------------------------------------------------------------------------

pub(super) fn new_store() -> MemoryStore {
    MemoryStore::new(None)
}

pub(super) async fn put_nodes(store: &MemoryStore, nodes: Vec<api::Node>) {
    store
        .update(|tx| nodes.into_iter().try_for_each(|n| tx.create_node(n)))
        .await
        .expect("create nodes");
}

pub(super) async fn put_services(store: &MemoryStore, services: Vec<api::Service>) {
    store
        .update(|tx| services.into_iter().try_for_each(|s| tx.create_service(s)))
        .await
        .expect("create services");
}

pub(super) async fn put_tasks(store: &MemoryStore, tasks: Vec<api::Task>) {
    store
        .update(|tx| tasks.into_iter().try_for_each(|t| tx.create_task(t)))
        .await
        .expect("create tasks");
}

pub(super) async fn edit_task(
    store: &MemoryStore,
    id: &str,
    f: impl FnOnce(&mut api::Task) + Send,
) {
    store
        .update(|tx| {
            let mut t = tx.get_task(id).expect("task exists");
            f(&mut t);
            tx.update_task(t)
        })
        .await
        .expect("update task");
}

pub(super) async fn set_task_state(store: &MemoryStore, id: &str, state: api::TaskState) {
    edit_task(store, id, |t| {
        t.status.as_mut().unwrap().state = state as i32
    })
    .await;
}

pub(super) async fn edit_node(
    store: &MemoryStore,
    id: &str,
    f: impl FnOnce(&mut api::Node) + Send,
) {
    store
        .update(|tx| {
            let mut n = tx.get_node(id).expect("node exists");
            f(&mut n);
            tx.update_node(n)
        })
        .await
        .expect("update node");
}

pub(super) fn get_task(store: &MemoryStore, id: &str) -> api::Task {
    store.view(|tx| tx.get_task(id)).expect("task exists")
}

pub(super) fn state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

pub(super) fn err(t: &api::Task) -> &str {
    t.status.as_ref().map_or("", |s| s.err.as_str())
}

pub(super) fn is_assigned(t: &api::Task) -> bool {
    state(t) == api::TaskState::Assigned as i32
}

/// Waits until every task in `ids` is ASSIGNED; returns task ID -> node ID.
pub(super) async fn wait_assigned(store: &MemoryStore, ids: &[&str]) -> BTreeMap<String, String> {
    wait_for(WAIT, store, &format!("{ids:?} assigned"), |tx| {
        let mut out = BTreeMap::new();
        for id in ids {
            let t = tx.get_task(id)?;
            if !is_assigned(&t) {
                return None;
            }
            out.insert(t.id.clone(), t.node_id.clone());
        }
        Some(out)
    })
    .await
}

/// Waits until all tasks of `service` are on nodes (ASSIGNED..RUNNING); returns node ID -> number
/// of its tasks.
pub(super) async fn wait_service_assigned(
    store: &MemoryStore,
    service: &str,
) -> BTreeMap<String, usize> {
    wait_for(WAIT, store, &format!("tasks of {service} assigned"), |tx| {
        let mut per_node = BTreeMap::new();
        for t in tx.find_tasks(By::ServiceId(service)) {
            let on_node = (api::TaskState::Assigned as i32..=api::TaskState::Running as i32)
                .contains(&state(&t));
            if !on_node {
                return None;
            }
            *per_node.entry(t.node_id.clone()).or_insert(0) += 1;
        }
        Some(per_node)
    })
    .await
}

/// Waits until task `id` carries this `status.err`, still PENDING and without a node.
pub(super) async fn wait_err(store: &MemoryStore, id: &str, expected: &str) {
    wait_for(WAIT, store, &format!("{id} err {expected:?}"), |tx| {
        let t = tx.get_task(id)?;
        (err(&t) == expected).then_some(())
    })
    .await;
    let t = get_task(store, id);
    assert_eq!(
        state(&t),
        api::TaskState::Pending as i32,
        "{id} stays pending"
    );
    assert_eq!(t.node_id, "", "{id} has no node");
    assert_eq!(
        t.status.as_ref().unwrap().message,
        "pending task scheduling",
        "{id} keeps its message"
    );
}

pub(super) struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Spawns a scheduler and lets it take its snapshot before the test goes on.
    pub(super) async fn start(store: &MemoryStore) -> Running {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(Scheduler::new(store.clone()).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        Running { shutdown, handle }
    }

    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        let result = self.handle.await.expect("scheduler task panicked");
        assert!(result.is_ok(), "scheduler stopped with {result:?}");
    }
}

/// A store with one service `s` and these nodes, and a running scheduler.
pub(super) async fn cluster(nodes: Vec<api::Node>) -> (MemoryStore, Running) {
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(&store, nodes).await;
    let running = Running::start(&store).await;
    (store, running)
}
