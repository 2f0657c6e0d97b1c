//! Tests of the rolling updater: a raft-less store, paused time, and the agent simulated by writing
//! task states into the store (by hand or by a small fake agent task).

use std::time::Duration;

use api::update_config::{FailureAction, UpdateOrder};
use api::update_status::UpdateState;
use store::{By, MemoryStore};

use super::{Slot, UpdateSupervisor};
use crate::replicated::tests::{WAIT, image, observed, set_state, wait_for};

const RUNNING: api::TaskState = api::TaskState::Running;

fn spec(image: &str, replicas: u64, update: Option<api::UpdateConfig>) -> api::ServiceSpec {
    api::ServiceSpec {
        update,
        ..testkit::fixtures::service_spec("web", replicas, image)
    }
}

/// A service running `replicas` tasks of image `v1`, then updated to `v2` with `update`.
async fn seed(
    store: &MemoryStore,
    replicas: u64,
    update: Option<api::UpdateConfig>,
) -> api::Service {
    let mut service = api::Service {
        id: "svc".into(),
        spec: Some(spec("v1", replicas, update)),
        spec_version: Some(api::Version { index: 1 }),
        ..Default::default()
    };
    let tasks: Vec<api::Task> = (1..=replicas)
        .map(|slot| {
            let mut t = crate::task::new_task(None, &service, slot, "node1");
            t.status.as_mut().expect("status").state = RUNNING as i32;
            t
        })
        .collect();
    let created = service.clone();
    store
        .update(move |tx| {
            tx.create_node(api::Node {
                id: "node1".into(),
                ..Default::default()
            })?;
            tx.create_service(created)?;
            for t in tasks {
                tx.create_task(t)?;
            }
            Ok(())
        })
        .await
        .expect("seed");
    // The control API's update: previous spec kept, new spec and version.
    service = store.view(|tx| tx.get_service("svc")).expect("service");
    service.previous_spec = service.spec.take();
    service.previous_spec_version = service.spec_version.take();
    service.spec = Some(spec("v2", replicas, update));
    service.spec_version = Some(api::Version { index: 2 });
    let updated = service.clone();
    store
        .update(move |tx| tx.update_service(updated))
        .await
        .expect("update service");
    store.view(|tx| tx.get_service("svc")).expect("service")
}

/// The runnable slots of the service, as an orchestrator hands them to the updater.
fn slots(store: &MemoryStore) -> Vec<Slot> {
    let tasks = store.view(|tx| tx.find_tasks(By::ServiceId("svc")));
    let mut by_slot: std::collections::BTreeMap<u64, Slot> = Default::default();
    for t in tasks {
        if t.desired_state <= RUNNING as i32 {
            by_slot.entry(t.slot).or_default().push(t);
        }
    }
    by_slot.into_values().collect()
}

fn update_status(tx: &store::ReadTx<'_>) -> Option<api::UpdateStatus> {
    tx.get_service("svc").and_then(|s| s.update_status)
}

/// Runs tasks desired RUNNING (failing those of image `bad`) and stops tasks desired stopped;
/// no scheduler runs here, so it plays tasks that no node holds too.
fn fake_agent(store: MemoryStore) -> tokio::task::JoinHandle<()> {
    testkit::FakeAgent::new("bad")
        .without_scheduler()
        .spawn(store, tokio_util::sync::CancellationToken::new())
}

#[tokio::test(start_paused = true)]
async fn parallelism_one_replaces_one_slot_at_a_time_and_completes() {
    let store = MemoryStore::new(None);
    let service = seed(&store, 3, None).await;
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));

    let status = wait_for(WAIT, &store, "update in progress", update_status).await;
    assert_eq!(status.state, UpdateState::Updating as i32);
    assert_eq!(status.message, "update in progress");
    assert!(status.started_at.is_some());

    let mut done_slots = Vec::new();
    for round in 1..=3 {
        // Exactly one new task, desired READY, its slot's old task being shut down.
        let new = wait_for(WAIT, &store, "a new v2 task", |tx| {
            tx.find_tasks(By::ServiceId("svc"))
                .into_iter()
                .find(|t| image(t) == "v2" && observed(t) < RUNNING as i32)
        })
        .await;
        let tasks = store.view(|tx| tx.find_tasks(By::ServiceId("svc")));
        let v2: Vec<_> = tasks.iter().filter(|t| image(t) == "v2").collect();
        assert_eq!(v2.len(), round, "one slot at a time");
        assert_eq!(new.desired_state, api::TaskState::Ready as i32);
        assert!(!done_slots.contains(&new.slot));
        let old = tasks
            .iter()
            .find(|t| t.slot == new.slot && image(t) == "v1")
            .expect("old task of the slot");
        assert_eq!(old.desired_state, api::TaskState::Shutdown as i32);

        // Stop-first: the new task starts once the old one stopped.
        set_state(&store, &old.id, api::TaskState::Shutdown).await;
        let id = new.id.clone();
        wait_for(WAIT, &store, "new task desired RUNNING", |tx| {
            tx.get_task(&id)
                .filter(|t| t.desired_state == RUNNING as i32)
        })
        .await;
        // Nothing else moves until it runs.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let v2 = store.view(|tx| {
            tx.find_tasks(By::ServiceId("svc"))
                .into_iter()
                .filter(|t| image(t) == "v2")
                .count()
        });
        assert_eq!(v2, round, "next slot waits for RUNNING");
        set_state(&store, &new.id, RUNNING).await;
        done_slots.push(new.slot);
    }

    let status = wait_for(WAIT, &store, "update completed", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::Completed as i32)
    })
    .await;
    assert_eq!(status.message, "update completed");
    assert!(status.completed_at.is_some());
    done_slots.sort();
    assert_eq!(done_slots, vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn failure_with_pause_action_pauses_the_update() {
    let store = MemoryStore::new(None);
    let config = api::UpdateConfig {
        parallelism: 1,
        failure_action: FailureAction::Pause as i32,
        ..Default::default()
    };
    let mut service = seed(&store, 3, Some(config)).await;
    // Make the new image fail.
    if let Some(api::task_spec::Runtime::Container(c)) = service
        .spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .and_then(|t| t.runtime.as_mut())
    {
        c.image = "bad".into();
    }
    let stored = service.clone();
    store
        .update(move |tx| tx.update_service(stored))
        .await
        .expect("bad image");
    let service = store.view(|tx| tx.get_service("svc")).expect("service");
    let _agent = fake_agent(store.clone());
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));

    let status = wait_for(WAIT, &store, "update paused", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::Paused as i32)
    })
    .await;
    let failed = store.view(|tx| {
        tx.find_tasks(By::ServiceId("svc"))
            .into_iter()
            .filter(|t| image(t) == "bad")
            .collect::<Vec<_>>()
    });
    assert_eq!(
        failed.len(),
        1,
        "the update stopped after the first failure"
    );
    assert_eq!(
        status.message,
        format!(
            "update paused due to failure or early termination of task {}",
            failed[0].id
        )
    );
    assert!(status.completed_at.is_none());

    // A paused update is not resumed by the same spec.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let service = store.view(|tx| tx.get_service("svc")).expect("service");
    supervisor.update(None, &service, slots(&store));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = store.view(update_status).expect("status");
    assert_eq!(status.state, UpdateState::Paused as i32);
}

#[tokio::test(start_paused = true)]
async fn failure_with_rollback_action_restores_the_previous_spec() {
    let store = MemoryStore::new(None);
    let config = api::UpdateConfig {
        parallelism: 1,
        failure_action: FailureAction::Rollback as i32,
        ..Default::default()
    };
    let mut service = seed(&store, 2, Some(config)).await;
    let previous = service.previous_spec.clone().expect("previous spec");
    if let Some(api::task_spec::Runtime::Container(c)) = service
        .spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .and_then(|t| t.runtime.as_mut())
    {
        c.image = "bad".into();
    }
    let stored = service.clone();
    store
        .update(move |tx| tx.update_service(stored))
        .await
        .expect("bad image");
    let service = store.view(|tx| tx.get_service("svc")).expect("service");
    let _agent = fake_agent(store.clone());
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));

    let rolled = wait_for(WAIT, &store, "rollback started", |tx| {
        tx.get_service("svc").filter(|s| {
            s.update_status
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::RollbackStarted as i32)
        })
    })
    .await;
    let bad = store.view(|tx| {
        tx.find_tasks(By::ServiceId("svc"))
            .into_iter()
            .find(|t| image(t) == "bad")
            .expect("the failed task")
    });
    assert_eq!(
        rolled.update_status.as_ref().expect("status").message,
        format!(
            "update rolled back due to failure or early termination of task {}",
            bad.id
        )
    );
    assert_eq!(rolled.spec.as_ref(), Some(&previous));
    assert_eq!(rolled.spec_version, Some(api::Version { index: 1 }));
    assert!(rolled.previous_spec.is_none());

    // The orchestrator sees the new spec and hands the slots to the updater again.
    supervisor.update(None, &rolled, slots(&store));
    let status = wait_for(WAIT, &store, "rollback completed", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::RollbackCompleted as i32)
    })
    .await;
    assert_eq!(status.message, "rollback completed");
    let runnable = store.view(|tx| {
        tx.find_tasks(By::ServiceId("svc"))
            .into_iter()
            .filter(|t| t.desired_state <= RUNNING as i32)
            .collect::<Vec<_>>()
    });
    assert_eq!(runnable.len(), 2);
    assert!(runnable.iter().all(|t| image(t) == "v1"));
}

#[tokio::test(start_paused = true)]
async fn start_first_starts_the_new_task_before_stopping_the_old_one() {
    let store = MemoryStore::new(None);
    let config = api::UpdateConfig {
        parallelism: 1,
        order: UpdateOrder::StartFirst as i32,
        ..Default::default()
    };
    let service = seed(&store, 1, Some(config)).await;
    let old = store.view(|tx| tx.find_tasks(By::ServiceId("svc")))[0].clone();
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));

    let new = wait_for(WAIT, &store, "new task desired RUNNING", |tx| {
        tx.find_tasks(By::ServiceId("svc"))
            .into_iter()
            .find(|t| image(t) == "v2" && t.desired_state == RUNNING as i32)
    })
    .await;
    let old_now = store.view(|tx| tx.get_task(&old.id)).expect("old task");
    assert_eq!(old_now.desired_state, RUNNING as i32, "old task still runs");

    set_state(&store, &new.id, RUNNING).await;
    let id = old.id.clone();
    wait_for(WAIT, &store, "old task shut down", |tx| {
        tx.get_task(&id)
            .filter(|t| t.desired_state == api::TaskState::Shutdown as i32)
    })
    .await;
    let status = wait_for(WAIT, &store, "update completed", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::Completed as i32)
    })
    .await;
    assert_eq!(status.message, "update completed");
}

#[tokio::test(start_paused = true)]
async fn parallelism_zero_updates_all_slots_at_once() {
    let store = MemoryStore::new(None);
    let config = api::UpdateConfig {
        parallelism: 0,
        ..Default::default()
    };
    let service = seed(&store, 3, Some(config)).await;
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));
    wait_for(WAIT, &store, "three new tasks at once", |tx| {
        (tx.find_tasks(By::ServiceId("svc"))
            .into_iter()
            .filter(|t| image(t) == "v2")
            .count()
            == 3)
            .then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn force_update_makes_every_task_dirty() {
    let store = MemoryStore::new(None);
    let service = seed(&store, 1, None).await;
    let _agent = fake_agent(store.clone());
    let supervisor = UpdateSupervisor::new(store.clone());
    supervisor.update(None, &service, slots(&store));
    wait_for(WAIT, &store, "update completed", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::Completed as i32)
    })
    .await;
    // A force update bumps task.force_update: every task is dirty again.
    let mut service = store.view(|tx| tx.get_service("svc")).expect("service");
    service
        .spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .expect("task spec")
        .force_update += 1;
    service.spec_version = Some(api::Version { index: 3 });
    service.update_status = None;
    let stored = service.clone();
    store
        .update(move |tx| tx.update_service(stored))
        .await
        .expect("force update");
    let service = store.view(|tx| tx.get_service("svc")).expect("service");
    supervisor.update(None, &service, slots(&store));
    wait_for(WAIT, &store, "forced replacement", |tx| {
        tx.find_tasks(By::ServiceId("svc")).into_iter().find(|t| {
            t.spec.as_ref().is_some_and(|s| s.force_update == 1) && observed(t) == RUNNING as i32
        })
    })
    .await;
    wait_for(WAIT, &store, "forced update completed", |tx| {
        update_status(tx).filter(|s| s.state == UpdateState::Completed as i32)
    })
    .await;
}
