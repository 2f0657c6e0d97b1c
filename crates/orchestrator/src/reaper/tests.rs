//! Tests of the task reaper: tasks written by hand into a raft-less store, paused time.

use std::time::Duration;

use api::restart_policy::RestartCondition;
use store::{By, MemoryStore};

use super::{BATCHING_INTERVAL, MAX_DIRTY};
use crate::replicated::tests::{
    REMOVE, WAIT, create_service, service, set_state, start_reaper, wait_for, with_restart,
};
use crate::task::new_task;

/// A task of `service` in `slot` on `node_id` with the given states and a status timestamp of
/// `age` seconds (older tasks have smaller values).
fn task(
    service: &api::Service,
    slot: u64,
    node_id: &str,
    desired: api::TaskState,
    observed: api::TaskState,
    age: i64,
) -> api::Task {
    let mut t = new_task(None, service, slot, node_id);
    t.desired_state = desired as i32;
    let status = t.status.as_mut().expect("status");
    status.state = observed as i32;
    status.timestamp = Some(prost_types::Timestamp {
        seconds: 1_000 + age,
        nanos: 0,
    });
    t
}

async fn create_tasks(store: &MemoryStore, tasks: Vec<api::Task>) {
    store
        .update(move |tx| {
            for t in tasks {
                tx.create_task(t)?;
            }
            Ok(())
        })
        .await
        .expect("create tasks");
}

async fn set_history_limit(store: &MemoryStore, limit: i64) {
    store
        .update(move |tx| {
            let cluster = api::Cluster {
                id: "cluster".into(),
                spec: Some(api::ClusterSpec {
                    annotations: Some(api::Annotations {
                        name: "default".into(),
                        ..Default::default()
                    }),
                    orchestration: Some(api::OrchestrationConfig {
                        task_history_retention_limit: limit,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match tx.get_cluster("cluster") {
                Some(mut c) => {
                    c.spec = cluster.spec;
                    tx.update_cluster(c)
                }
                None => tx.create_cluster(cluster),
            }
        })
        .await
        .expect("cluster");
}

/// `stopped` stopped tasks (oldest first) and one running task in slot 1 of `s`.
fn slot_history(s: &api::Service, stopped: i64) -> Vec<api::Task> {
    let mut tasks: Vec<api::Task> = (0..stopped)
        .map(|age| {
            task(
                s,
                1,
                "n1",
                api::TaskState::Shutdown,
                api::TaskState::Failed,
                age,
            )
        })
        .collect();
    tasks.push(task(
        s,
        1,
        "n1",
        api::TaskState::Running,
        api::TaskState::Running,
        stopped,
    ));
    tasks
}

fn ids(store: &MemoryStore, service_id: &str) -> Vec<String> {
    let mut tasks = store.view(|tx| tx.find_tasks(By::ServiceId(service_id)));
    tasks.sort_by(crate::task::cmp_by_timestamp);
    tasks.into_iter().map(|t| t.id).collect()
}

async fn wait_for_count(store: &MemoryStore, service_id: &str, n: usize) {
    let id = service_id.to_string();
    wait_for(WAIT, store, &format!("{n} tasks of {id}"), move |tx| {
        (tx.find_tasks(By::ServiceId(&id)).len() == n).then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_at_five_per_slot_oldest_first() {
    let store = MemoryStore::new(None);
    let s = service("web", 2, "nginx");
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    let history = slot_history(&s, 7);
    let expected: Vec<String> = history[3..].iter().map(|t| t.id.clone()).collect();
    create_tasks(&store, history).await;
    // Slot 2 is within the limit.
    let slot2 = slot_history(&s, 2)
        .into_iter()
        .map(|mut t| {
            t.slot = 2;
            t
        })
        .collect();
    create_tasks(&store, slot2).await;

    // Slot 1 keeps its five newest tasks, slot 2 all three.
    wait_for_count(&store, "web", 8).await;
    let slot = |n: u64| -> Vec<String> {
        let mut tasks = store.view(|tx| {
            tx.find_tasks(By::Slot {
                service_id: "web",
                slot: n,
            })
        });
        tasks.sort_by(crate::task::cmp_by_timestamp);
        tasks.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(slot(1), expected);
    assert_eq!(slot(2).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_raises_the_limit_to_attempts_plus_one() {
    let store = MemoryStore::new(None);
    let s = with_restart(
        service("web", 1, "nginx"),
        RestartCondition::Any,
        Duration::ZERO,
        7,
        Duration::ZERO,
    );
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    create_tasks(&store, slot_history(&s, 10)).await;
    wait_for_count(&store, "web", 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids(&store, "web").len(), 8);
}

#[tokio::test(start_paused = true)]
async fn cluster_limit_applies_and_negative_keeps_everything() {
    let store = MemoryStore::new(None);
    set_history_limit(&store, -1).await;
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    create_tasks(&store, slot_history(&s, 9)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids(&store, "web").len(), 10, "negative limit keeps all");

    set_history_limit(&store, 2).await;
    // The next task created in the slot triggers the cleanup with the new limit.
    create_tasks(
        &store,
        vec![task(
            &s,
            1,
            "n1",
            api::TaskState::Shutdown,
            api::TaskState::Complete,
            20,
        )],
    )
    .await;
    wait_for_count(&store, "web", 2).await;
}

#[tokio::test(start_paused = true)]
async fn live_tasks_are_never_trimmed() {
    let store = MemoryStore::new(None);
    set_history_limit(&store, 1).await;
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    let running = task(
        &s,
        1,
        "n1",
        api::TaskState::Shutdown,
        api::TaskState::Running,
        1,
    );
    let starting = task(
        &s,
        1,
        "n1",
        api::TaskState::Running,
        api::TaskState::Assigned,
        2,
    );
    // Never started and never will: may go.
    let never = task(
        &s,
        1,
        "",
        api::TaskState::Shutdown,
        api::TaskState::Pending,
        0,
    );
    let (running_id, starting_id) = (running.id.clone(), starting.id.clone());
    create_tasks(&store, vec![running, starting, never]).await;
    wait_for_count(&store, "web", 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids(&store, "web"), vec![running_id.clone(), starting_id]);

    // The slot stayed dirty (two live tasks): once one stops it is trimmed without a new event
    // in the slot.
    set_state(&store, &running_id, api::TaskState::Shutdown).await;
    // Its stop alone wakes the reaper (SwarmKit's reaper wakes on every task event; ours is
    // handed the updates that take a task past RUNNING).
    wait_for(WAIT, &store, "the stopped task trimmed", |tx| {
        tx.get_task(&running_id).is_none().then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn global_history_is_per_node() {
    let store = MemoryStore::new(None);
    set_history_limit(&store, 2).await;
    let mut s = service("agent", 1, "nginx");
    s.spec.as_mut().expect("spec").mode = Some(api::service_spec::Mode::Global(Default::default()));
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    let mut tasks = Vec::new();
    for (node, n) in [("n1", 4), ("n2", 2)] {
        for age in 0..n {
            tasks.push(task(
                &s,
                0,
                node,
                api::TaskState::Shutdown,
                api::TaskState::Failed,
                age,
            ));
        }
    }
    create_tasks(&store, tasks).await;
    wait_for_count(&store, "agent", 4).await;
    let per_node = |node: &str| store.view(|tx| tx.find_tasks(By::NodeId(node))).len();
    assert_eq!((per_node("n1"), per_node("n2")), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn job_tasks_have_no_history_limit() {
    let store = MemoryStore::new(None);
    let mut s = service("job", 1, "busybox");
    s.spec.as_mut().expect("spec").mode =
        Some(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }));
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    create_tasks(&store, slot_history(&s, 8)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids(&store, "job").len(), 9);
}

#[tokio::test(start_paused = true)]
async fn removed_tasks_are_deleted_once_not_running() {
    let store = MemoryStore::new(None);
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    let unassigned = task(
        &s,
        1,
        "",
        api::TaskState::Running,
        api::TaskState::Pending,
        0,
    );
    let running = task(
        &s,
        2,
        "n1",
        api::TaskState::Running,
        api::TaskState::Running,
        0,
    );
    let (unassigned_id, running_id) = (unassigned.id.clone(), running.id.clone());
    create_tasks(&store, vec![unassigned, running]).await;
    let targets = vec![unassigned_id.clone(), running_id.clone()];
    store
        .update(move |tx| {
            for id in &targets {
                crate::task::set_desired(tx, id, api::TaskState::Remove)?;
            }
            Ok(())
        })
        .await
        .expect("remove");
    wait_for(WAIT, &store, "the unassigned task deleted", |tx| {
        tx.get_task(&unassigned_id).is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = store
        .view(|tx| tx.get_task(&running_id))
        .expect("running task kept until stopped");
    assert_eq!(t.desired_state, REMOVE);
    set_state(&store, &running_id, api::TaskState::Shutdown).await;
    wait_for(WAIT, &store, "the stopped task deleted", |tx| {
        tx.get_task(&running_id).is_none().then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cleanup_is_batched_every_250_ms() {
    let store = MemoryStore::new(None);
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let _reaper = start_reaper(&store).await;
    let t = task(&s, 1, "", api::TaskState::Remove, api::TaskState::New, 0);
    let id = t.id.clone();
    create_tasks(&store, vec![t]).await;
    // Only an update marks a REMOVE-d task for deletion.
    set_state(&store, &id, api::TaskState::Pending).await;
    tokio::time::sleep(BATCHING_INTERVAL - Duration::from_millis(10)).await;
    assert!(
        store.view(|tx| tx.get_task(&id)).is_some(),
        "not before the tick"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.view(|tx| tx.get_task(&id)).is_none());
}

#[tokio::test(start_paused = true)]
async fn many_waiting_entries_trigger_a_cleanup_at_once() {
    let store = MemoryStore::new(None);
    let _reaper = start_reaper(&store).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let orphans: Vec<api::Task> = (0..MAX_DIRTY)
        .map(|i| api::Task {
            id: format!("orphan{i}"),
            ..Default::default()
        })
        .collect();
    create_tasks(&store, orphans).await;
    // The creates (all serviceless: one dirty entry) start the timer; orphaning them makes that
    // entry plus 1000 to delete, one more than a batch, before it fires.
    store
        .update(|tx| {
            for mut t in tx.find_tasks(By::All) {
                t.status.get_or_insert_with(Default::default).state =
                    api::TaskState::Orphaned as i32;
                tx.update_task(t)?;
            }
            Ok(())
        })
        .await
        .expect("orphan");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let left = store.view(|tx| tx.find_tasks(By::All)).len();
    assert_eq!(left, 0);
}

#[tokio::test(start_paused = true)]
async fn start_up_deletes_serviceless_orphans_and_stopped_removed_tasks() {
    let store = MemoryStore::new(None);
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let orphan = api::Task {
        id: "orphan".into(),
        status: Some(api::TaskStatus {
            state: api::TaskState::Orphaned as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    // An orphaned task of a service waits for the history limit instead.
    let service_orphan = task(
        &s,
        1,
        "n1",
        api::TaskState::Running,
        api::TaskState::Orphaned,
        0,
    );
    let removed = task(
        &s,
        2,
        "n1",
        api::TaskState::Remove,
        api::TaskState::Shutdown,
        0,
    );
    let removing = task(
        &s,
        3,
        "n1",
        api::TaskState::Remove,
        api::TaskState::Running,
        0,
    );
    let (keep1, keep2) = (service_orphan.id.clone(), removing.id.clone());
    create_tasks(&store, vec![orphan, service_orphan, removed, removing]).await;

    let _reaper = start_reaper(&store).await;
    wait_for(WAIT, &store, "two tasks left", |tx| {
        (tx.find_tasks(By::All).len() == 2).then_some(())
    })
    .await;
    let mut left: Vec<String> = store
        .view(|tx| tx.find_tasks(By::All))
        .into_iter()
        .map(|t| t.id)
        .collect();
    left.sort();
    let mut want = vec![keep1, keep2];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        store
            .view(|tx| tx.find_tasks(By::DesiredState(api::TaskState::Remove)))
            .len(),
        1
    );
}
