//! Tests of the restart supervisor on its own: restarts written in hand-made transactions against a
//! raft-less store with paused time.

use std::time::{Duration, SystemTime};

use api::restart_policy::RestartCondition;
use store::{By, MemoryStore};

use super::{OLD_TASK_TIMEOUT, RestartSupervisor, newest_task};
use crate::replicated::tests::{
    READY, RUNNING, SHUTDOWN, WAIT, create_nodes, create_service, observed, service,
    set_availability, set_node_down, set_state, wait_for, with_restart,
};
use crate::task::{new_task, state};

const COMPLETE: i32 = api::TaskState::Complete as i32;

/// Stores `task` (a copy of one of `service`'s tasks) with the given observed state.
async fn seed_task(
    store: &MemoryStore,
    service: &api::Service,
    slot: u64,
    node_id: &str,
    observed_state: api::TaskState,
) -> api::Task {
    let mut t = new_task(None, service, slot, node_id);
    t.status.as_mut().expect("status").state = observed_state as i32;
    let created = t.clone();
    store
        .update(move |tx| tx.create_task(created))
        .await
        .expect("create task");
    t
}

/// Restarts `task_id` in its own transaction; returns the replacement, if one was created.
async fn restart(
    supervisor: &RestartSupervisor,
    store: &MemoryStore,
    task_id: &str,
) -> Option<api::Task> {
    let before: Vec<String> = store
        .view(|tx| tx.find_tasks(By::All))
        .into_iter()
        .map(|t| t.id)
        .collect();
    let (sup, id) = (supervisor.clone(), task_id.to_string());
    store
        .update(move |tx| {
            let task = tx.get_task(&id).expect("task");
            let service = tx.get_service(&task.service_id).expect("service");
            sup.restart(tx, None, &service, &task)
        })
        .await
        .expect("restart");
    store
        .view(|tx| tx.find_tasks(By::All))
        .into_iter()
        .find(|t| !before.contains(&t.id))
}

fn desired(store: &MemoryStore, id: &str) -> i32 {
    store
        .view(|tx| tx.get_task(id))
        .expect("task exists")
        .desired_state
}

#[tokio::test(start_paused = true)]
async fn replacement_takes_the_slot_and_starts_after_the_delay() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let old = seed_task(&store, &s, 4, "n1", api::TaskState::Failed).await;
    let supervisor = RestartSupervisor::new(store.clone());

    let new = restart(&supervisor, &store, &old.id)
        .await
        .expect("replacement");
    assert_eq!(desired(&store, &old.id), SHUTDOWN);
    assert_eq!(new.slot, 4);
    assert_eq!(
        new.node_id, "",
        "replicated replacements are scheduled afresh"
    );
    assert_eq!(new.desired_state, READY);
    assert!(supervisor.is_delayed(&new.id));

    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert_eq!(desired(&store, &new.id), READY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(desired(&store, &new.id), RUNNING);
    assert!(!supervisor.is_delayed(&new.id));
}

#[tokio::test(start_paused = true)]
async fn global_replacement_stays_on_the_node() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let mut s = service("agent", 1, "nginx");
    s.spec.as_mut().expect("spec").mode = Some(api::service_spec::Mode::Global(Default::default()));
    create_service(&store, s.clone()).await;
    let old = seed_task(&store, &s, 0, "n1", api::TaskState::Rejected).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let new = restart(&supervisor, &store, &old.id)
        .await
        .expect("replacement");
    assert_eq!((new.slot, new.node_id.as_str()), (0, "n1"));
}

#[tokio::test(start_paused = true)]
async fn job_replacement_keeps_the_iteration_and_is_started_to_complete() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let mut s = with_restart(
        service("job", 1, "busybox"),
        RestartCondition::Any,
        Duration::ZERO,
        0,
        Duration::ZERO,
    );
    s.spec.as_mut().expect("spec").mode =
        Some(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }));
    s.job_status = Some(api::JobStatus {
        job_iteration: Some(api::Version { index: 3 }),
        last_execution: None,
    });
    create_service(&store, s.clone()).await;
    let supervisor = RestartSupervisor::new(store.clone());

    let done = seed_task(&store, &s, 0, "n1", api::TaskState::Complete).await;
    assert!(!supervisor.should_restart(&done, &s), "a finished job task");
    let failed = seed_task(&store, &s, 0, "n1", api::TaskState::Failed).await;
    let new = restart(&supervisor, &store, &failed.id)
        .await
        .expect("replacement");
    assert_eq!(new.job_iteration, Some(api::Version { index: 3 }));
    let id = new.id.clone();
    wait_for(WAIT, &store, "job task started", |tx| {
        tx.get_task(&id)
            .filter(|t| t.desired_state == COMPLETE)
            .map(drop)
    })
    .await;
}

#[tokio::test]
async fn restart_conditions() {
    let store = MemoryStore::new(None);
    let supervisor = RestartSupervisor::new(store);
    let check = |condition: Option<RestartCondition>, observed_state: api::TaskState| {
        let mut s = service("web", 1, "nginx");
        if let Some(c) = condition {
            s = with_restart(s, c, Duration::ZERO, 0, Duration::ZERO);
        }
        let mut t = new_task(None, &s, 1, "n1");
        t.status.as_mut().expect("status").state = observed_state as i32;
        supervisor.should_restart(&t, &s)
    };
    use api::TaskState::{Complete, Failed, Rejected, Running};
    assert!(check(None, Complete), "default ANY restarts finished tasks");
    assert!(check(None, Failed));
    assert!(check(Some(RestartCondition::Any), Complete));
    assert!(check(Some(RestartCondition::OnFailure), Failed));
    assert!(check(Some(RestartCondition::OnFailure), Rejected));
    assert!(
        check(Some(RestartCondition::OnFailure), Running),
        "a task displaced from its node"
    );
    assert!(!check(Some(RestartCondition::OnFailure), Complete));
    assert!(!check(Some(RestartCondition::None), Failed));
    assert!(!check(Some(RestartCondition::None), Running));
}

#[tokio::test(start_paused = true)]
async fn max_attempts_count_per_slot_and_reset_with_a_new_spec_version() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 2, "nginx"),
        RestartCondition::Any,
        Duration::ZERO,
        2,
        Duration::ZERO,
    );
    create_service(&store, s.clone()).await;
    let supervisor = RestartSupervisor::new(store.clone());

    let mut current = seed_task(&store, &s, 1, "n1", api::TaskState::Failed).await;
    for _ in 0..2 {
        let new = restart(&supervisor, &store, &current.id)
            .await
            .expect("restart allowed");
        // No delay: started at once, then it fails.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(desired(&store, &new.id), RUNNING);
        set_state(&store, &new.id, api::TaskState::Failed).await;
        current = store.view(|tx| tx.get_task(&new.id)).expect("task");
    }
    assert!(!supervisor.should_restart(&current, &s));
    assert!(
        restart(&supervisor, &store, &current.id).await.is_none(),
        "third restart refused"
    );
    assert_eq!(desired(&store, &current.id), SHUTDOWN, "still shut down");

    // Slot 2 has its own count.
    let other = seed_task(&store, &s, 2, "n1", api::TaskState::Failed).await;
    assert!(supervisor.should_restart(&other, &s));

    // A task of a newer spec version starts afresh.
    let mut newer = current.clone();
    newer.spec_version = Some(api::Version { index: 9 });
    assert!(supervisor.should_restart(&newer, &s));

    // So does a deleted service's slot.
    supervisor.clear_service_history("web");
    assert!(supervisor.should_restart(&current, &s));
}

#[tokio::test(start_paused = true)]
async fn window_only_counts_recent_restarts() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 1, "nginx"),
        RestartCondition::Any,
        Duration::ZERO,
        1,
        Duration::from_secs(60),
    );
    create_service(&store, s.clone()).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let first = seed_task(&store, &s, 1, "n1", api::TaskState::Failed).await;
    let second = restart(&supervisor, &store, &first.id)
        .await
        .expect("first restart");

    let failed_at = |t: &api::Task, at: SystemTime| {
        let mut t = t.clone();
        let status = t.status.as_mut().expect("status");
        status.state = api::TaskState::Failed as i32;
        status.timestamp = Some(at.into());
        t
    };
    let now = SystemTime::now();
    // Failing soon after the restart: the restart is inside the window.
    assert!(!supervisor.should_restart(&failed_at(&second, now + Duration::from_secs(10)), &s));
    // Restarts after the failure being judged do not count against it.
    assert!(supervisor.should_restart(&failed_at(&second, now - Duration::from_secs(1)), &s));
    // Failing long after: the restart fell out of the window.
    assert!(supervisor.should_restart(&failed_at(&second, now + Duration::from_secs(120)), &s));
}

#[tokio::test(start_paused = true)]
async fn replacement_waits_for_the_old_task_to_stop() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = with_restart(
        service("web", 1, "nginx"),
        RestartCondition::Any,
        Duration::from_secs(1),
        0,
        Duration::ZERO,
    );
    create_service(&store, s.clone()).await;
    let old = seed_task(&store, &s, 1, "n1", api::TaskState::Running).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let new = restart(&supervisor, &store, &old.id)
        .await
        .expect("replacement");

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(desired(&store, &new.id), READY, "old task still running");
    set_state(&store, &old.id, api::TaskState::Shutdown).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(desired(&store, &new.id), RUNNING);
}

#[tokio::test(start_paused = true)]
async fn replacement_starts_anyway_after_a_minute() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let old = seed_task(&store, &s, 1, "n1", api::TaskState::Running).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let new = restart(&supervisor, &store, &old.id)
        .await
        .expect("replacement");
    tokio::time::sleep(OLD_TASK_TIMEOUT - Duration::from_millis(100)).await;
    assert_eq!(desired(&store, &new.id), READY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(desired(&store, &new.id), RUNNING);
    assert_eq!(
        observed(&store.view(|tx| tx.get_task(&old.id)).expect("old")),
        RUNNING
    );
}

#[tokio::test(start_paused = true)]
async fn drained_node_skips_the_delay_and_down_node_skips_the_wait() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1", "n2"]).await;
    let s = with_restart(
        service("web", 2, "nginx"),
        RestartCondition::Any,
        Duration::from_secs(30),
        0,
        Duration::ZERO,
    );
    create_service(&store, s.clone()).await;
    let on_drained = seed_task(&store, &s, 1, "n1", api::TaskState::Running).await;
    let on_down = seed_task(&store, &s, 2, "n2", api::TaskState::Running).await;
    set_availability(&store, "n1", api::node_spec::Availability::Drain).await;
    set_node_down(&store, "n2").await;
    let supervisor = RestartSupervisor::new(store.clone());

    let drained_new = restart(&supervisor, &store, &on_drained.id)
        .await
        .expect("replacement");
    let down_new = restart(&supervisor, &store, &on_down.id)
        .await
        .expect("replacement");
    // Drained: no delay, but the old task must stop first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(desired(&store, &drained_new.id), READY);
    set_state(&store, &on_drained.id, api::TaskState::Shutdown).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(desired(&store, &drained_new.id), RUNNING);
    // Down: the delay applies, the old task is not waited for.
    assert_eq!(desired(&store, &down_new.id), READY);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(desired(&store, &down_new.id), RUNNING);
}

#[tokio::test(start_paused = true)]
async fn cancelled_delayed_start_never_starts() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = service("web", 2, "nginx");
    create_service(&store, s.clone()).await;
    let a = seed_task(&store, &s, 1, "n1", api::TaskState::Failed).await;
    let b = seed_task(&store, &s, 2, "n1", api::TaskState::Failed).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let new_a = restart(&supervisor, &store, &a.id).await.expect("a");
    let new_b = restart(&supervisor, &store, &b.id).await.expect("b");
    supervisor.cancel(&new_a.id);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(desired(&store, &new_a.id), READY);
    assert_eq!(desired(&store, &new_b.id), RUNNING);

    let c = seed_task(&store, &s, 3, "n1", api::TaskState::Failed).await;
    let new_c = restart(&supervisor, &store, &c.id).await.expect("c");
    supervisor.cancel_all();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(desired(&store, &new_c.id), READY);
}

#[tokio::test(start_paused = true)]
async fn restarting_a_replacement_in_its_delay_waits_for_the_delay() {
    let store = MemoryStore::new(None);
    create_nodes(&store, &["n1"]).await;
    let s = service("web", 1, "nginx");
    create_service(&store, s.clone()).await;
    let old = seed_task(&store, &s, 1, "n1", api::TaskState::Failed).await;
    let supervisor = RestartSupervisor::new(store.clone());
    let new = restart(&supervisor, &store, &old.id)
        .await
        .expect("replacement");
    // The replacement fails before its delay is over (say its node rejected it).
    set_state(&store, &new.id, api::TaskState::Rejected).await;
    assert!(restart(&supervisor, &store, &new.id).await.is_none());
    assert_eq!(desired(&store, &new.id), READY, "left alone for now");

    let third = wait_for(WAIT, &store, "a second replacement", |tx| {
        tx.find_tasks(By::Slot {
            service_id: "web",
            slot: 1,
        })
        .into_iter()
        .find(|t| t.id != old.id && t.id != new.id)
    })
    .await;
    assert_eq!(desired(&store, &new.id), SHUTDOWN);
    assert_eq!(third.desired_state, READY);
}

#[tokio::test]
async fn updatable_tasks_in_slot() {
    let store = MemoryStore::new(None);
    let supervisor = RestartSupervisor::new(store);
    let s = service("web", 1, "nginx");
    let task = |desired: i32, observed_state: api::TaskState, secs: i64| {
        let mut t = new_task(None, &s, 1, "n1");
        t.desired_state = desired;
        let status = t.status.as_mut().expect("status");
        status.state = observed_state as i32;
        status.timestamp = Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        });
        t
    };
    let old = task(SHUTDOWN, api::TaskState::Failed, 1);
    let live = task(READY, api::TaskState::New, 2);
    let got = supervisor.updatable_tasks_in_slot(&[old.clone(), live.clone()], &s);
    assert_eq!(got, vec![live]);
    // Nothing desired to run and the newest may restart: nothing to update.
    let newest = task(SHUTDOWN, api::TaskState::Complete, 3);
    assert!(
        supervisor
            .updatable_tasks_in_slot(&[old.clone(), newest.clone()], &s)
            .is_empty()
    );
    assert_eq!(
        newest_task(&[old.clone(), newest.clone()]).map(|t| &t.id),
        Some(&newest.id)
    );
    // With restarts off the newest stopped task keeps the slot.
    let none = with_restart(
        s.clone(),
        RestartCondition::None,
        Duration::ZERO,
        0,
        Duration::ZERO,
    );
    let mut stopped = newest.clone();
    stopped.spec = none.spec.as_ref().and_then(|s| s.task.clone());
    let got = supervisor.updatable_tasks_in_slot(&[old.clone(), stopped.clone()], &none);
    assert_eq!(got, vec![stopped.clone()]);
    // ...except during a rollback.
    let mut rolling_back = none.clone();
    rolling_back.update_status = Some(api::UpdateStatus {
        state: api::update_status::UpdateState::RollbackStarted as i32,
        ..Default::default()
    });
    assert!(
        supervisor
            .updatable_tasks_in_slot(&[old, stopped], &rolling_back)
            .is_empty()
    );
}

#[tokio::test]
async fn history_is_rebuilt_from_stored_tasks() {
    let store = MemoryStore::new(None);
    let supervisor = RestartSupervisor::new(store);
    let s = with_restart(
        service("web", 1, "nginx"),
        RestartCondition::Any,
        Duration::ZERO,
        2,
        Duration::ZERO,
    );
    let task = |version: u64, created: i64| {
        let mut t = new_task(None, &s, 1, "");
        t.spec_version = Some(api::Version { index: version });
        t.meta = Some(api::Meta {
            created_at: Some(prost_types::Timestamp {
                seconds: created,
                nanos: 0,
            }),
            ..Default::default()
        });
        t.status.as_mut().expect("status").state = state(api::TaskState::Failed);
        t
    };
    let mut latest = task(0, 4);
    // Two restarts of the current version (three tasks): the limit is reached.
    let tasks = vec![task(0, 1), task(0, 2), latest.clone(), task(1, 3)];
    let mut s0 = s.clone();
    s0.spec_version = Some(api::Version { index: 1 });
    supervisor.rebuild_history(&s0, &tasks);
    latest.spec_version = Some(api::Version { index: 1 });
    // Only the version-1 task is current: no restart recorded for it.
    assert!(supervisor.should_restart(&latest, &s0));

    let supervisor = RestartSupervisor::new(MemoryStore::new(None));
    let current = vec![task(0, 1), task(0, 2), task(0, 3)];
    supervisor.rebuild_history(&s, &current);
    assert!(!supervisor.should_restart(&current[2], &s));
}
