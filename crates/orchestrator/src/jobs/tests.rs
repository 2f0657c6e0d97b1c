//! Tests of the jobs orchestrator against a raft-less store with paused time; task progress is
//! simulated by writing task states into the store.

use std::time::Duration;

use store::{By, MemoryStore};
use tokio_util::sync::CancellationToken;

use testkit::fixtures::node_in_state as node;

use super::JobsOrchestrator;
use crate::replicated::tests::{WAIT, observed, set_state, wait_for};

const COMPLETE: i32 = api::TaskState::Complete as i32;

fn job(mode: api::service_spec::Mode) -> api::Service {
    api::Service {
        id: "job".into(),
        spec: Some(api::ServiceSpec {
            annotations: Some(api::Annotations {
                name: "job".into(),
                ..Default::default()
            }),
            task: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(
                    api::ContainerSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            }),
            mode: Some(mode),
            ..Default::default()
        }),
        spec_version: Some(api::Version { index: 1 }),
        job_status: Some(api::JobStatus {
            job_iteration: Some(api::Version::default()),
            last_execution: None,
        }),
        ..Default::default()
    }
}

async fn start(store: &MemoryStore) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let orchestrator = JobsOrchestrator::new(store.clone());
    tokio::spawn(orchestrator.run(shutdown.clone()));
    shutdown
}

fn tasks(store: &MemoryStore) -> Vec<api::Task> {
    store.view(|tx| tx.find_tasks(By::ServiceId("job")))
}

#[tokio::test(start_paused = true)]
async fn replicated_job_runs_total_completions_at_most_max_concurrent_at_once() {
    let store = MemoryStore::new(None);
    let service = job(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
        max_concurrent: 2,
        total_completions: 5,
    }));
    store
        .update(move |tx| tx.create_service(service))
        .await
        .expect("seed");
    let shutdown = start(&store).await;

    for done in 0..5 {
        wait_for(WAIT, &store, "a job task in progress", |tx| {
            let active: Vec<_> = tx
                .find_tasks(By::ServiceId("job"))
                .into_iter()
                .filter(|t| observed(t) != COMPLETE)
                .collect();
            (!active.is_empty()).then_some(active)
        })
        .await;
        // Let the orchestrator settle, then check concurrency.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let active: Vec<_> = tasks(&store)
            .into_iter()
            .filter(|t| observed(t) != COMPLETE)
            .collect();
        assert_eq!(active.len(), 2.min(5 - done), "max_concurrent respected");
        assert!(active.iter().all(|t| t.desired_state == COMPLETE));
        assert!(
            active
                .iter()
                .all(|t| t.job_iteration == Some(api::Version { index: 0 }))
        );
        set_state(&store, &active[0].id, api::TaskState::Complete).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = tasks(&store);
    assert_eq!(all.len(), 5, "no task beyond total_completions");
    let mut slots: Vec<u64> = all.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![0, 1, 2, 3, 4]);
    assert!(all.iter().all(|t| observed(t) == COMPLETE));
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn failed_job_task_is_restarted_after_the_delay() {
    let store = MemoryStore::new(None);
    let service = job(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
        max_concurrent: 1,
        total_completions: 1,
    }));
    store
        .update(move |tx| tx.create_service(service))
        .await
        .expect("seed");
    let shutdown = start(&store).await;
    let first = wait_for(WAIT, &store, "first task", |tx| {
        tx.find_tasks(By::ServiceId("job")).into_iter().next()
    })
    .await;
    set_state(&store, &first.id, api::TaskState::Failed).await;
    let replacement = wait_for(WAIT, &store, "replacement desired READY", |tx| {
        tx.find_tasks(By::ServiceId("job"))
            .into_iter()
            .find(|t| t.id != first.id)
    })
    .await;
    assert_eq!(replacement.slot, first.slot);
    assert_eq!(replacement.desired_state, api::TaskState::Ready as i32);
    let old = store.view(|tx| tx.get_task(&first.id)).expect("old task");
    assert_eq!(old.desired_state, api::TaskState::Shutdown as i32);
    let started = tokio::time::Instant::now();
    let id = replacement.id.clone();
    wait_for(WAIT, &store, "replacement desired COMPLETE", |tx| {
        tx.get_task(&id).filter(|t| t.desired_state == COMPLETE)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "restart delay honoured"
    );
    set_state(&store, &replacement.id, api::TaskState::Complete).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(tasks(&store).len(), 2);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn global_job_runs_one_task_per_eligible_node() {
    let store = MemoryStore::new(None);
    let service = job(api::service_spec::Mode::GlobalJob(api::GlobalJob {}));
    store
        .update(move |tx| {
            tx.create_node(node("n1", api::node_status::State::Ready))?;
            tx.create_node(node("n2", api::node_status::State::Ready))?;
            tx.create_node(node("n3", api::node_status::State::Down))?;
            tx.create_service(service)
        })
        .await
        .expect("seed");
    let shutdown = start(&store).await;
    let on = wait_for(WAIT, &store, "tasks on both ready nodes", |tx| {
        let mut nodes: Vec<String> = tx
            .find_tasks(By::ServiceId("job"))
            .into_iter()
            .map(|t| t.node_id)
            .collect();
        nodes.sort();
        (nodes.len() >= 2).then_some(nodes)
    })
    .await;
    assert_eq!(on, vec!["n1".to_string(), "n2".to_string()]);
    assert!(
        tasks(&store)
            .iter()
            .all(|t| t.desired_state == COMPLETE && t.slot == 0)
    );

    // A node joining later gets its task too; completing tasks creates no more.
    for t in tasks(&store) {
        set_state(&store, &t.id, api::TaskState::Complete).await;
    }
    store
        .update(|tx| tx.create_node(node("n4", api::node_status::State::Ready)))
        .await
        .expect("new node");
    wait_for(WAIT, &store, "task on n4", |tx| {
        tx.find_tasks(By::NodeId("n4")).into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tasks(&store).len(), 3);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn job_iteration_bump_restarts_the_job_and_removes_old_tasks() {
    let store = MemoryStore::new(None);
    let service = job(api::service_spec::Mode::ReplicatedJob(api::ReplicatedJob {
        max_concurrent: 2,
        total_completions: 2,
    }));
    store
        .update(move |tx| tx.create_service(service))
        .await
        .expect("seed");
    let shutdown = start(&store).await;
    let old = wait_for(WAIT, &store, "two tasks of iteration 0", |tx| {
        let t = tx.find_tasks(By::ServiceId("job"));
        (t.len() == 2).then_some(t)
    })
    .await;
    for t in &old {
        set_state(&store, &t.id, api::TaskState::Running).await;
    }

    // The control API's service update bumps the iteration.
    let mut service = store.view(|tx| tx.get_service("job")).expect("service");
    service
        .job_status
        .as_mut()
        .expect("job status")
        .job_iteration = Some(api::Version { index: 1 });
    store
        .update(move |tx| tx.update_service(service))
        .await
        .expect("bump");

    let new = wait_for(WAIT, &store, "two tasks of iteration 1", |tx| {
        let t: Vec<_> = tx
            .find_tasks(By::ServiceId("job"))
            .into_iter()
            .filter(|t| t.job_iteration == Some(api::Version { index: 1 }))
            .collect();
        (t.len() == 2).then_some(t)
    })
    .await;
    assert!(new.iter().all(|t| t.desired_state == COMPLETE));
    for t in &old {
        let t = store.view(|tx| tx.get_task(&t.id)).expect("old task");
        assert_eq!(t.desired_state, api::TaskState::Remove as i32);
    }
    shutdown.cancel();
}
