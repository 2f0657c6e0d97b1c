//! Tests of the global orchestrator: a raft-less store, paused time, agents faked by writing task
//! states (helpers shared with the replicated orchestrator's tests).

use std::time::Duration;

use api::node_spec::Availability;
use api::restart_policy::RestartCondition;
use store::MemoryStore;
use tokio_util::sync::CancellationToken;

use super::GlobalOrchestrator;
use crate::replicated::tests::{
    REMOVE, RUNNING, SHUTDOWN, WAIT, create_nodes, create_service, image, set_availability,
    set_node_down, set_state, settle, tasks_of, update_node, update_service, wait_for,
    with_restart,
};

/// A global service `id` of image `image` with these placement constraints.
fn global(id: &str, image: &str, constraints: &[&str]) -> api::Service {
    let mut s = crate::replicated::tests::service(id, 0, image);
    let spec = s.spec.as_mut().expect("spec");
    spec.mode = Some(api::service_spec::Mode::Global(api::GlobalService {}));
    spec.task.as_mut().expect("task").placement = Some(Box::new(api::Placement {
        constraints: constraints.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }));
    s
}

fn start(store: &MemoryStore) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(GlobalOrchestrator::new(store.clone()).run(shutdown.clone()));
    shutdown
}

/// Nodes holding a task of the service desired to run, sorted.
fn live_nodes(store: &MemoryStore, service_id: &str) -> Vec<String> {
    let mut nodes: Vec<String> = tasks_of(store, service_id)
        .into_iter()
        .filter(|t| t.desired_state <= RUNNING)
        .map(|t| t.node_id)
        .collect();
    nodes.sort();
    nodes
}

async fn wait_live_nodes(store: &MemoryStore, service_id: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("live tasks on {want:?}");
    wait_for(WAIT, store, &what, |_| {
        (live_nodes(store, service_id) == want).then_some(())
    })
    .await;
}

async fn set_label(store: &MemoryStore, node: &str, key: &str, value: &str) {
    let (key, value) = (key.to_string(), value.to_string());
    update_node(store, node, move |n| {
        n.spec
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .labels
            .insert(key, value);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn one_task_per_eligible_node_with_the_node_preset() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2", "n3", "n4"]).await;
    set_availability(&store, "n3", Availability::Drain).await;
    set_node_down(&store, "n4").await;
    // A replicated service is not ours.
    create_service(&store, crate::replicated::tests::service("r", 2, "busybox")).await;
    create_service(&store, global("g", "busybox", &[])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1", "n2"]).await;
    for t in tasks_of(&store, "g") {
        assert_eq!(t.slot, 0);
        assert_eq!(t.desired_state, RUNNING);
        assert_eq!(
            api::naming::task_name("g", t.slot, &t.node_id, &t.id),
            format!("g.{}.{}", t.node_id, t.id)
        );
    }
    settle().await;
    assert!(tasks_of(&store, "r").is_empty());
}

#[tokio::test(start_paused = true)]
async fn nodes_joining_draining_and_leaving() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    create_service(&store, global("g", "busybox", &[])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1"]).await;

    create_nodes(&store, &["n2", "n3"]).await;
    wait_live_nodes(&store, "g", &["n1", "n2", "n3"]).await;

    set_availability(&store, "n2", Availability::Drain).await;
    wait_live_nodes(&store, "g", &["n1", "n3"]).await;
    assert!(
        tasks_of(&store, "g")
            .iter()
            .any(|t| t.node_id == "n2" && t.desired_state == SHUTDOWN)
    );

    // Activated again: a new task.
    set_availability(&store, "n2", Availability::Active).await;
    wait_live_nodes(&store, "g", &["n1", "n2", "n3"]).await;

    // A deleted node's tasks are deleted.
    store
        .update(|tx| tx.delete_node("n3"))
        .await
        .expect("delete node");
    wait_for(WAIT, &store, "tasks of n3 deleted", |_| {
        (!tasks_of(&store, "g").iter().any(|t| t.node_id == "n3")).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn paused_nodes_keep_their_task_but_get_no_new_one() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    set_availability(&store, "n2", Availability::Pause).await;
    create_service(&store, global("g", "busybox", &[])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1"]).await;
    set_availability(&store, "n1", Availability::Pause).await;
    settle().await;
    assert_eq!(live_nodes(&store, "g"), vec!["n1".to_string()]);
    settle().await;
    assert_eq!(live_nodes(&store, "g"), vec!["n1".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn constraints_choose_the_nodes_and_follow_label_changes() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    set_label(&store, "n1", "zone", "east").await;
    create_service(&store, global("g", "busybox", &["node.labels.zone==east"])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1"]).await;

    set_label(&store, "n2", "zone", "east").await;
    wait_live_nodes(&store, "g", &["n1", "n2"]).await;

    set_label(&store, "n1", "zone", "west").await;
    wait_live_nodes(&store, "g", &["n2"]).await;
}

#[tokio::test(start_paused = true)]
async fn stopped_task_is_restarted_on_its_node() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let service = with_restart(
        global("g", "busybox", &[]),
        RestartCondition::Any,
        Duration::from_secs(3),
        0,
        Duration::ZERO,
    );
    create_service(&store, service).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1"]).await;
    let first = tasks_of(&store, "g").remove(0);
    set_state(&store, &first.id, api::TaskState::Running).await;
    set_state(&store, &first.id, api::TaskState::Failed).await;
    let replacement = wait_for(WAIT, &store, "replacement started", |tx| {
        tx.find_tasks(store::By::ServiceId("g"))
            .into_iter()
            .find(|t| t.id != first.id && t.desired_state == RUNNING)
    })
    .await;
    assert_eq!(replacement.node_id, "n1");
    let old = store
        .view(|tx| tx.get_task(&first.id))
        .expect("old task kept");
    assert_eq!(old.desired_state, SHUTDOWN);
}

#[tokio::test(start_paused = true)]
async fn removed_service_tasks_get_desired_remove() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, global("g", "busybox", &[])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1", "n2"]).await;
    store
        .update(|tx| tx.delete_service("g"))
        .await
        .expect("delete service");
    wait_for(WAIT, &store, "tasks desired REMOVE", |_| {
        tasks_of(&store, "g")
            .iter()
            .all(|t| t.desired_state == REMOVE)
            .then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn spec_change_replaces_every_nodes_task() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    create_service(&store, global("g", "busybox:1", &[])).await;
    let _stop = start(&store);
    wait_live_nodes(&store, "g", &["n1", "n2"]).await;
    for t in tasks_of(&store, "g") {
        set_state(&store, &t.id, api::TaskState::Running).await;
    }
    update_service(&store, "g", |s| {
        let spec = s.spec.as_mut().expect("spec");
        if let Some(api::task_spec::Runtime::Container(c)) =
            spec.task.as_mut().and_then(|t| t.runtime.as_mut())
        {
            c.image = "busybox:2".into();
        }
        spec.update = Some(api::UpdateConfig {
            parallelism: 0,
            ..Default::default()
        });
        s.spec_version = Some(api::Version { index: 1 });
    })
    .await;
    // The updater creates a task of the new spec on each node; the fake agent stops the old ones.
    let mut seen = Vec::new();
    for _ in 0..50 {
        for t in tasks_of(&store, "g") {
            if t.desired_state > RUNNING && t.status.as_ref().map_or(0, |s| s.state) <= RUNNING {
                set_state(&store, &t.id, api::TaskState::Shutdown).await;
            } else if t.desired_state == RUNNING
                && t.status.as_ref().map_or(0, |s| s.state) < RUNNING
            {
                set_state(&store, &t.id, api::TaskState::Running).await;
            }
        }
        seen = tasks_of(&store, "g")
            .into_iter()
            .filter(|t| t.desired_state == RUNNING && image(t) == "busybox:2")
            .map(|t| t.node_id)
            .collect();
        seen.sort();
        if seen == ["n1", "n2"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, ["n1", "n2"]);
}
