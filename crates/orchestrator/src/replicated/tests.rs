//! Tests of the replicated orchestrator: a raft-less store, paused time, and the scheduler and agents
//! faked by writing `node_id` and `status.state` into the store (by hand or with [`fake_cluster`]).
//! The helpers are shared with the restart supervisor's and the task reaper's tests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use api::restart_policy::RestartCondition;
use api::update_status::UpdateState;
use store::{By, MemoryStore, WatchFilter};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ReplicatedOrchestrator;
use crate::reaper::TaskReaper;

pub(crate) const RUNNING: i32 = api::TaskState::Running as i32;
pub(crate) const READY: i32 = api::TaskState::Ready as i32;
pub(crate) const SHUTDOWN: i32 = api::TaskState::Shutdown as i32;
pub(crate) const REMOVE: i32 = api::TaskState::Remove as i32;

/// Bound of every wait on the store in the orchestrator's tests (virtual time).
pub(crate) const WAIT: Duration = Duration::from_secs(300);

pub(crate) use testkit::fixtures::node;
pub(crate) use testkit::wait_for;

pub(crate) fn observed(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

pub(crate) fn image(t: &api::Task) -> String {
    match t.spec.as_ref().and_then(|s| s.runtime.as_ref()) {
        Some(api::task_spec::Runtime::Container(c)) => c.image.clone(),
        _ => String::new(),
    }
}

/// A replicated service `id` (also its name) of image `image`.
pub(crate) fn service(id: &str, replicas: u64, image: &str) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(testkit::fixtures::service_spec(id, replicas, image)),
        spec_version: Some(api::Version { index: 0 }),
        ..Default::default()
    }
}

/// `service` with a restart policy.
pub(crate) fn with_restart(
    mut s: api::Service,
    condition: RestartCondition,
    delay: Duration,
    max_attempts: u64,
    window: Duration,
) -> api::Service {
    let task = s
        .spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .expect("task spec");
    task.restart = Some(Box::new(api::RestartPolicy {
        condition: condition as i32,
        delay: Some(proto_duration(delay)),
        max_attempts,
        window: Some(proto_duration(window)),
    }));
    s
}

pub(crate) fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("duration fits")
}

pub(crate) async fn create_service(store: &MemoryStore, s: api::Service) {
    store
        .update(move |tx| tx.create_service(s))
        .await
        .expect("create service");
}

pub(crate) async fn create_nodes(store: &MemoryStore, ids: &[&str]) {
    let nodes: Vec<api::Node> = ids.iter().map(|id| node(id)).collect();
    store
        .update(move |tx| {
            for n in nodes {
                tx.create_node(n)?;
            }
            Ok(())
        })
        .await
        .expect("create nodes");
}

/// Changes the stored service `id` with `f` (as the control API's update would).
pub(crate) async fn update_service(
    store: &MemoryStore,
    id: &str,
    f: impl FnOnce(&mut api::Service) + Send,
) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut s = tx.get_service(&id).expect("service exists");
            f(&mut s);
            tx.update_service(s)
        })
        .await
        .expect("update service");
}

pub(crate) async fn set_replicas(store: &MemoryStore, id: &str, replicas: u64) {
    update_service(store, id, move |s| {
        s.spec.as_mut().expect("spec").mode = Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas },
        ));
    })
    .await;
}

/// Changes the stored node `id` with `f`.
pub(crate) async fn update_node(
    store: &MemoryStore,
    id: &str,
    f: impl FnOnce(&mut api::Node) + Send,
) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut n = tx.get_node(&id).expect("node exists");
            f(&mut n);
            tx.update_node(n)
        })
        .await
        .expect("update node");
}

pub(crate) async fn set_availability(
    store: &MemoryStore,
    id: &str,
    availability: api::node_spec::Availability,
) {
    update_node(store, id, move |n| {
        n.spec.get_or_insert_with(Default::default).availability = availability as i32;
    })
    .await;
}

pub(crate) async fn set_node_down(store: &MemoryStore, id: &str) {
    update_node(store, id, |n| {
        n.status.get_or_insert_with(Default::default).state = api::node_status::State::Down as i32;
    })
    .await;
}

/// Writes a task's observed state (and a fresh status timestamp), as an agent would.
pub(crate) async fn set_state(store: &MemoryStore, id: &str, state: api::TaskState) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut t = tx.get_task(&id).expect("task exists");
            let status = t.status.get_or_insert_with(Default::default);
            status.state = state as i32;
            status.timestamp = Some(SystemTime::now().into());
            tx.update_task(t)
        })
        .await
        .expect("set task state");
}

/// Assigns a task to a node (ASSIGNED), as the scheduler would.
pub(crate) async fn assign(store: &MemoryStore, id: &str, node_id: &str) {
    let (id, node_id) = (id.to_string(), node_id.to_string());
    store
        .update(move |tx| {
            let mut t = tx.get_task(&id).expect("task exists");
            t.node_id = node_id;
            t.status.get_or_insert_with(Default::default).state = api::TaskState::Assigned as i32;
            tx.update_task(t)
        })
        .await
        .expect("assign task");
}

pub(crate) fn tasks_of(store: &MemoryStore, service_id: &str) -> Vec<api::Task> {
    store.view(|tx| tx.find_tasks(By::ServiceId(service_id)))
}

/// Tasks of the service desired to run (READY or RUNNING), by slot.
pub(crate) fn live_by_slot(store: &MemoryStore, service_id: &str) -> BTreeMap<u64, api::Task> {
    tasks_of(store, service_id)
        .into_iter()
        .filter(|t| t.desired_state <= RUNNING)
        .map(|t| (t.slot, t))
        .collect()
}

/// Lets every spawned task run until all wait on timers or events: a short virtual sleep.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Runs the replicated orchestrator; cancel the token to stop it.
pub(crate) fn start_orchestrator(store: &MemoryStore) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(ReplicatedOrchestrator::new(store.clone()).run(shutdown.clone()));
    shutdown
}

/// Runs the task reaper and lets it subscribe to the store (it only sees tasks created after
/// that); cancel the token to stop it.
pub(crate) async fn start_reaper(store: &MemoryStore) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(TaskReaper::new(store.clone()).run(shutdown.clone()));
    settle().await;
    shutdown
}

/// A fake scheduler and agents: unassigned tasks desired to run go to the READY, ACTIVE node with
/// the fewest live tasks (ASSIGNED); tasks desired RUNNING on a node that is not DOWN become RUNNING
/// (FAILED for image `bad`); tasks desired stopped become SHUTDOWN.
pub(crate) fn fake_cluster(store: MemoryStore) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = store.watch(WatchFilter::none().tasks().nodes());
        // The scheduler's part is above: the agent also plays tasks stopped before assignment.
        let agent = testkit::FakeAgent::new("bad").without_scheduler();
        loop {
            let (tasks, nodes) = store.view(|tx| (tx.find_tasks(By::All), tx.find_nodes(By::All)));
            let mut load: BTreeMap<String, usize> = nodes
                .iter()
                .filter(|n| crate::task::node_accepts_tasks(n))
                .map(|n| (n.id.clone(), 0))
                .collect();
            for t in &tasks {
                if let Some(l) = load.get_mut(&t.node_id)
                    && t.desired_state <= RUNNING
                {
                    *l += 1;
                }
            }
            let down = |node_id: &str| {
                nodes.iter().any(|n| {
                    n.id == node_id
                        && n.status.as_ref().map(|s| s.state)
                            == Some(api::node_status::State::Down as i32)
                })
            };
            for t in tasks {
                if t.desired_state <= RUNNING && t.node_id.is_empty() {
                    if let Some((node_id, l)) = load.iter_mut().min_by_key(|(_, l)| **l) {
                        *l += 1;
                        let node_id = node_id.clone();
                        assign(&store, &t.id, &node_id).await;
                    }
                } else if let Some(next) = agent.step(&t, down(&t.node_id)) {
                    set_state(&store, &t.id, next).await;
                }
            }
            if watch.recv().await.is_none() {
                return;
            }
        }
    })
}

async fn running_tasks(store: &MemoryStore, id: &str, n: usize) -> BTreeMap<u64, api::Task> {
    let id = id.to_string();
    wait_for(
        WAIT,
        store,
        &format!("{n} running tasks of {id}"),
        move |tx| {
            let live: BTreeMap<u64, api::Task> = tx
                .find_tasks(By::ServiceId(&id))
                .into_iter()
                .filter(|t| t.desired_state == RUNNING && observed(t) == RUNNING)
                .map(|t| (t.slot, t))
                .collect();
            (live.len() == n).then_some(live)
        },
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn creates_one_task_per_slot_named_after_the_service() {
    let store = MemoryStore::new(None);
    create_service(&store, service("web", 3, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);

    let tasks = wait_for(WAIT, &store, "3 tasks", |tx| {
        let t = tx.find_tasks(By::ServiceId("web"));
        (t.len() == 3).then_some(t)
    })
    .await;
    let mut slots: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3]);
    for t in &tasks {
        assert_eq!(t.desired_state, RUNNING);
        assert_eq!(observed(t), api::TaskState::New as i32);
        assert_eq!(t.node_id, "");
        assert_eq!(image(t), "nginx");
        assert_eq!(
            api::naming::task_name("web", t.slot, &t.node_id, &t.id),
            format!("web.{}.{}", t.slot, t.id)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ignores_global_services_and_jobs() {
    let store = MemoryStore::new(None);
    let mut global = service("global", 1, "nginx");
    global.spec.as_mut().expect("spec").mode =
        Some(api::service_spec::Mode::Global(Default::default()));
    let mut job = service("job", 1, "nginx");
    job.spec.as_mut().expect("spec").mode =
        Some(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }));
    create_service(&store, global).await;
    create_service(&store, job).await;
    create_service(&store, service("web", 1, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    wait_for(WAIT, &store, "a web task", |tx| {
        (!tx.find_tasks(By::ServiceId("web")).is_empty()).then_some(())
    })
    .await;
    settle().await;
    assert!(tasks_of(&store, "global").is_empty());
    assert!(tasks_of(&store, "job").is_empty());
}

#[tokio::test(start_paused = true)]
async fn scale_up_fills_the_lowest_free_slots() {
    let store = MemoryStore::new(None);
    create_service(&store, service("web", 2, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    wait_for(WAIT, &store, "2 tasks", |tx| {
        (tx.find_tasks(By::ServiceId("web")).len() == 2).then_some(())
    })
    .await;
    // Slot 1 disappears (task rm): it is the first one refilled.
    let slot1 = live_by_slot(&store, "web")[&1].id.clone();
    store
        .update(move |tx| tx.delete_task(&slot1))
        .await
        .expect("delete");
    let refilled = wait_for(WAIT, &store, "slot 1 refilled", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: 1,
        })
        .into_iter()
        .next()
    })
    .await;
    assert_eq!(refilled.desired_state, RUNNING);

    set_replicas(&store, "web", 4).await;
    wait_for(WAIT, &store, "4 tasks", |tx| {
        (tx.find_tasks(By::ServiceId("web")).len() == 4).then_some(())
    })
    .await;
    let slots: Vec<u64> = live_by_slot(&store, "web").into_keys().collect();
    assert_eq!(slots, vec![1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn scale_down_keeps_running_low_and_evenly_spread_slots() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, service("web", 6, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let tasks = wait_for(WAIT, &store, "6 tasks", |tx| {
        let t = tx.find_tasks(By::ServiceId("web"));
        (t.len() == 6).then_some(t)
    })
    .await;
    // Slots 1-4 on n1, 5-6 on n2; all running but slot 2.
    for t in &tasks {
        let node = if t.slot <= 4 { "n1" } else { "n2" };
        assign(&store, &t.id, node).await;
        if t.slot != 2 {
            set_state(&store, &t.id, api::TaskState::Running).await;
        }
    }

    set_replicas(&store, "web", 3).await;
    let removed = wait_for(WAIT, &store, "3 tasks desired REMOVE", |tx| {
        let mut r: Vec<u64> = tx
            .find_tasks(By::ServiceId("web"))
            .into_iter()
            .filter(|t| t.desired_state == REMOVE)
            .map(|t| t.slot)
            .collect();
        r.sort();
        (r.len() == 3).then_some(r)
    })
    .await;
    // Kept: the first running task of each node (1 on n1, 5 on n2), then the second running one
    // of a node with the lower slot (3 on n1 ranks with 6 on n2; 3 wins on the slot number).
    // Slot 2 is not running, so it ranks after slot 3 on n1.
    assert_eq!(removed, vec![2, 4, 6]);
    let kept: Vec<u64> = live_by_slot(&store, "web").into_keys().collect();
    assert_eq!(kept, vec![1, 3, 5]);
}

#[tokio::test(start_paused = true)]
async fn failed_task_is_replaced_in_its_slot_after_the_restart_delay() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    create_service(&store, service("web", 2, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 2).await;

    let failed = before[&2].clone();
    set_state(&store, &failed.id, api::TaskState::Failed).await;
    let started = Instant::now();
    let replacement = wait_for(WAIT, &store, "a replacement in slot 2", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: 2,
        })
        .into_iter()
        .find(|t| t.id != failed.id)
    })
    .await;
    // Held back during the delay (task ls shows desired READY), the old one shut down.
    assert_eq!(replacement.desired_state, READY);
    assert_eq!(replacement.slot, 2);
    let old = store
        .view(|tx| tx.get_task(&failed.id))
        .expect("old task kept");
    assert_eq!(old.desired_state, SHUTDOWN);

    let id = replacement.id.clone();
    wait_for(WAIT, &store, "replacement started", |tx| {
        tx.get_task(&id)
            .filter(|t| t.desired_state == RUNNING)
            .map(drop)
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(6));
    let after = running_tasks(&store, "web", 2).await;
    assert_eq!(after[&1].id, before[&1].id, "slot 1 untouched");
    assert_eq!(after[&2].id, replacement.id);
    assert_eq!(tasks_of(&store, "web").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn restart_condition_none_leaves_the_slot_occupied_by_the_stopped_task() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 2, "nginx"),
        RestartCondition::None,
        Duration::ZERO,
        0,
        Duration::ZERO,
    );
    create_service(&store, s).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 2).await;
    set_state(&store, &before[&1].id, api::TaskState::Complete).await;
    wait_for(WAIT, &store, "the completed task shut down", |tx| {
        tx.get_task(&before[&1].id)
            .filter(|t| t.desired_state == SHUTDOWN)
            .map(drop)
    })
    .await;
    // A later reconcile (scale up) must not refill slot 1.
    set_replicas(&store, "web", 3).await;
    wait_for(WAIT, &store, "slot 3", |tx| {
        (tx.find_tasks(By::ServiceId("web")).len() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let tasks = tasks_of(&store, "web");
    assert_eq!(tasks.len(), 3, "no replacement for slot 1: {tasks:#?}");
    assert!(tasks.iter().any(|t| t.slot == 3));
}

#[tokio::test(start_paused = true)]
async fn restart_on_failure_replaces_failed_but_not_completed_tasks() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 2, "nginx"),
        RestartCondition::OnFailure,
        Duration::from_secs(1),
        0,
        Duration::ZERO,
    );
    create_service(&store, s).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 2).await;
    set_state(&store, &before[&1].id, api::TaskState::Complete).await;
    set_state(&store, &before[&2].id, api::TaskState::Failed).await;
    let now = wait_for(WAIT, &store, "slot 2 running again", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: 2,
        })
        .into_iter()
        .find(|t| t.id != before[&2].id && observed(t) == RUNNING)
    })
    .await;
    assert_eq!(now.slot, 2);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let slot1: Vec<api::Task> = tasks_of(&store, "web")
        .into_iter()
        .filter(|t| t.slot == 1)
        .collect();
    assert_eq!(slot1.len(), 1, "completed task not restarted");
    assert_eq!(slot1[0].desired_state, SHUTDOWN);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_stops_restarting_a_slot() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 1, "bad"),
        RestartCondition::Any,
        Duration::from_secs(1),
        2,
        Duration::ZERO,
    );
    create_service(&store, s).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    // The first task and two restarts fail; then the slot stays with its last failed task.
    wait_for(WAIT, &store, "3 failed tasks", |tx| {
        let failed = tx
            .find_tasks(By::ServiceId("web"))
            .into_iter()
            .filter(|t| observed(t) == api::TaskState::Failed as i32)
            .count();
        (failed == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tasks = tasks_of(&store, "web");
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    assert!(
        tasks
            .iter()
            .all(|t| t.slot == 1 && t.desired_state == SHUTDOWN)
    );

    // A new spec version resets the count (the updater replaces the stopped slot).
    update_service(&store, "web", |s| {
        s.spec_version = Some(api::Version { index: 7 });
        if let Some(api::task_spec::Runtime::Container(c)) = s
            .spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .and_then(|t| t.runtime.as_mut())
        {
            c.image = "nginx".into();
        }
    })
    .await;
    let fixed = running_tasks(&store, "web", 1).await;
    assert_eq!(image(&fixed[&1]), "nginx");
}

#[tokio::test(start_paused = true)]
async fn drained_node_tasks_are_replaced_without_delay_once_stopped() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, service("web", 2, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 2).await;
    let on_n1 = before
        .values()
        .find(|t| t.node_id == "n1")
        .expect("a task on n1")
        .clone();

    let started = Instant::now();
    set_availability(&store, "n1", api::node_spec::Availability::Drain).await;
    let after = wait_for(WAIT, &store, "both slots running on n2", |tx| {
        let live: BTreeMap<u64, api::Task> = tx
            .find_tasks(By::ServiceId("web"))
            .into_iter()
            .filter(|t| t.desired_state == RUNNING && observed(t) == RUNNING && t.node_id == "n2")
            .map(|t| (t.slot, t))
            .collect();
        (live.len() == 2).then_some(live)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no restart delay"
    );
    let old = store.view(|tx| tx.get_task(&on_n1.id)).expect("old task");
    assert_eq!(old.desired_state, SHUTDOWN);
    assert_eq!(observed(&old), SHUTDOWN);
    assert_eq!(
        after[&on_n1.slot].slot, on_n1.slot,
        "replacement keeps the slot"
    );
}

#[tokio::test(start_paused = true)]
async fn down_node_tasks_are_replaced_after_the_delay() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, service("web", 2, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 2).await;
    let on_n1 = before
        .values()
        .find(|t| t.node_id == "n1")
        .expect("a task on n1")
        .clone();

    let started = Instant::now();
    set_node_down(&store, "n1").await;
    let after = wait_for(WAIT, &store, "replacement running on n2", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: on_n1.slot,
        })
        .into_iter()
        .find(|t| t.id != on_n1.id && observed(t) == RUNNING)
    })
    .await;
    assert_eq!(after.node_id, "n2");
    assert!(started.elapsed() >= Duration::from_secs(5));
    // The agent of a down node never reports: the old task stays RUNNING but desired SHUTDOWN.
    let old = store.view(|tx| tx.get_task(&on_n1.id)).expect("old task");
    assert_eq!(old.desired_state, SHUTDOWN);
}

#[tokio::test(start_paused = true)]
async fn deleted_node_tasks_are_replaced_but_paused_node_tasks_stay() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2", "n3"]).await;
    create_service(&store, service("web", 3, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 3).await;
    let on = |node: &str| {
        before
            .values()
            .find(|t| t.node_id == node)
            .expect("one task per node")
            .clone()
    };
    let (on_n1, on_n2) = (on("n1"), on("n2"));

    set_availability(&store, "n1", api::node_spec::Availability::Pause).await;
    store
        .update(|tx| tx.delete_node("n2"))
        .await
        .expect("delete node");
    wait_for(WAIT, &store, "replacement of the n2 task running", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: on_n2.slot,
        })
        .into_iter()
        .find(|t| t.id != on_n2.id && observed(t) == RUNNING)
    })
    .await;
    let kept = store.view(|tx| tx.get_task(&on_n1.id)).expect("n1 task");
    assert_eq!(kept.desired_state, RUNNING, "PAUSE keeps tasks");
    assert_eq!(observed(&kept), RUNNING);
}

#[tokio::test(start_paused = true)]
async fn deleted_service_tasks_are_removed_then_reaped() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    create_service(&store, service("web", 3, "nginx")).await;
    let _orchestrator = start_orchestrator(&store);
    let _reaper = start_reaper(&store).await;
    wait_for(WAIT, &store, "3 tasks", |tx| {
        (tx.find_tasks(By::ServiceId("web")).len() == 3).then_some(())
    })
    .await;
    // Slots 1 and 2 run on n1; slot 3 is not scheduled yet.
    let tasks = live_by_slot(&store, "web");
    for slot in [1, 2] {
        assign(&store, &tasks[&slot].id, "n1").await;
        set_state(&store, &tasks[&slot].id, api::TaskState::Running).await;
    }

    store
        .update(|tx| tx.delete_service("web"))
        .await
        .expect("delete service");
    wait_for(WAIT, &store, "running tasks desired REMOVE", |tx| {
        let t = tx.find_tasks(By::ServiceId("web"));
        (t.len() == 2 && t.iter().all(|t| t.desired_state == REMOVE)).then_some(())
    })
    .await;
    // The unscheduled task went at once; the running ones go once the agent stopped them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tasks_of(&store, "web").len(), 2);
    set_state(&store, &tasks[&1].id, api::TaskState::Shutdown).await;
    set_state(&store, &tasks[&2].id, api::TaskState::Complete).await;
    wait_for(WAIT, &store, "all tasks deleted", |tx| {
        tx.find_tasks(By::ServiceId("web")).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn spec_change_rolls_out_new_tasks_through_the_updater() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, service("web", 3, "v1")).await;
    let _orchestrator = start_orchestrator(&store);
    let _cluster = fake_cluster(store.clone());
    let before = running_tasks(&store, "web", 3).await;

    update_service(&store, "web", |s| {
        s.previous_spec = s.spec.clone();
        s.previous_spec_version = s.spec_version;
        s.spec_version = s.meta.as_ref().and_then(|m| m.version);
        if let Some(api::task_spec::Runtime::Container(c)) = s
            .spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .and_then(|t| t.runtime.as_mut())
        {
            c.image = "v2".into();
        }
    })
    .await;
    wait_for(WAIT, &store, "update completed", |tx| {
        tx.get_service("web")
            .and_then(|s| s.update_status)
            .filter(|u| u.state == UpdateState::Completed as i32)
            .map(drop)
    })
    .await;
    let after = running_tasks(&store, "web", 3).await;
    for (slot, t) in &after {
        assert_eq!(image(t), "v2");
        assert_ne!(t.id, before[slot].id);
    }
    let old: Vec<api::Task> = tasks_of(&store, "web")
        .into_iter()
        .filter(|t| image(t) == "v1")
        .collect();
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|t| t.desired_state == SHUTDOWN));
}

#[tokio::test(start_paused = true)]
async fn start_up_restarts_tasks_that_failed_while_no_leader_watched() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = service("web", 2, "nginx");
    let mut failed = crate::task::new_task(None, &s, 1, "n1");
    failed.status.as_mut().expect("status").state = api::TaskState::Failed as i32;
    // A replacement the previous leader created and did not start yet.
    let mut held = crate::task::new_task(None, &s, 2, "");
    held.desired_state = READY;
    let (failed_id, held_id) = (failed.id.clone(), held.id.clone());
    store
        .update(move |tx| {
            tx.create_service(s)?;
            tx.create_task(failed)?;
            tx.create_task(held)?;
            // A task of a service that is gone.
            tx.create_task(api::Task {
                id: "stray".into(),
                service_id: "gone".into(),
                ..Default::default()
            })
        })
        .await
        .expect("seed");

    let _orchestrator = start_orchestrator(&store);
    let replacement = wait_for(WAIT, &store, "slot 1 replaced", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: 1,
        })
        .into_iter()
        .find(|t| t.id != failed_id)
    })
    .await;
    assert_eq!(replacement.desired_state, READY);
    wait_for(WAIT, &store, "held task started", |tx| {
        tx.get_task(&held_id)
            .filter(|t| t.desired_state == RUNNING)
            .map(drop)
    })
    .await;
    assert!(store.view(|tx| tx.get_task("stray")).is_none());
    assert_eq!(tasks_of(&store, "web").len(), 3, "no extra task for slot 2");
}

#[tokio::test(start_paused = true)]
async fn stops_on_shutdown_and_cancels_delayed_starts() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    create_service(&store, service("web", 1, "nginx")).await;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ReplicatedOrchestrator::new(store.clone()).run(shutdown.clone()));
    let task = wait_for(WAIT, &store, "a task", |tx| {
        tx.find_tasks(By::ServiceId("web")).into_iter().next()
    })
    .await;
    assign(&store, &task.id, "n1").await;
    set_state(&store, &task.id, api::TaskState::Failed).await;
    let replacement = wait_for(WAIT, &store, "a replacement", |tx| {
        tx.find_tasks(By::ServiceId("web"))
            .into_iter()
            .find(|t| t.desired_state == READY)
    })
    .await;
    shutdown.cancel();
    handle
        .await
        .expect("joined")
        .expect("clean stop after shutdown");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let t = store
        .view(|tx| tx.get_task(&replacement.id))
        .expect("replacement");
    assert_eq!(
        t.desired_state, READY,
        "delayed start cancelled with the leader"
    );
}

/// The task events the store may drop before the orchestrator reads them: only those `handle`
/// ignores whatever it reads later (tasks not yet on a node, tasks on a node valid when the event
/// was published, tasks no longer wanted), never a removal, a stopped task or a task whose node is
/// invalid.
#[tokio::test]
async fn store_drops_only_task_events_the_orchestrator_ignores() {
    use crate::reconcile::Reconciler;
    use store::{Event, EventKind};

    let store = MemoryStore::new(None);
    create_nodes(&store, &["up", "paused", "down", "drained"]).await;
    set_availability(&store, "paused", api::node_spec::Availability::Pause).await;
    set_node_down(&store, "down").await;
    set_availability(&store, "drained", api::node_spec::Availability::Drain).await;
    let check = |kind: EventKind, state: api::TaskState, node: &str, desired: i32, want: bool| {
        let mut task = testkit::fixtures::task("t", "web", state);
        task.node_id = node.into();
        task.desired_state = desired;
        let event = Event::Object {
            kind,
            object: std::sync::Arc::new(api::Object {
                object: Some(api::object::Object::Task(Box::new(task))),
            }),
            old: None,
        };
        let wanted = store.view(|tx| ReplicatedOrchestrator::wants(&event, tx));
        assert_eq!(
            wanted, want,
            "{kind:?} of a task {state:?} on node {node:?}, desired {desired}"
        );
    };
    use EventKind::{Create, Remove, Update};
    use api::TaskState::{Assigned, Failed, New, Pending, Running as Run, Shutdown};
    check(Create, New, "", RUNNING, false);
    check(Update, Pending, "", RUNNING, false);
    check(Update, Assigned, "up", RUNNING, false);
    check(Update, Run, "up", RUNNING, false);
    check(Update, Run, "paused", RUNNING, false);
    check(Update, Run, "up", SHUTDOWN, false);
    check(Update, Failed, "up", SHUTDOWN, false);
    check(Update, Run, "up", READY, false);

    check(Remove, Run, "up", RUNNING, true);
    check(Remove, Shutdown, "up", SHUTDOWN, true);
    check(Update, Failed, "up", RUNNING, true);
    check(Update, Failed, "", RUNNING, true);
    check(Create, Failed, "", READY, true);
    check(Update, Run, "down", RUNNING, true);
    check(Update, Assigned, "drained", RUNNING, true);
    check(Update, Run, "gone", RUNNING, true);
}
