//! The queue's life: retries, stale and orphaned tasks, debouncing, batching, failure penalty and write conflicts.

use store::{Event, Watcher};

use crate::COMMIT_DEBOUNCE_GAP;

use super::*;

#[tokio::test(start_paused = true)]
async fn unschedulable_task_is_placed_when_a_node_joins() {
    let (store, running) = cluster(vec![]).await;
    put_tasks(&store, vec![task("t", "s")]).await;
    wait_err(&store, "t", "no suitable node").await;
    put_nodes(&store, vec![node("late")]).await;
    assert_eq!(wait_assigned(&store, &["t"]).await["t"], "late");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pending_tasks_present_at_start_are_placed() {
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(&store, vec![node("n1")]).await;
    put_tasks(&store, tasks("t", "s", 3)).await;
    let running = Running::start(&store).await;
    wait_service_assigned(&store, "s").await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stale_pending_task_desired_shutdown_is_shut_down() {
    let (store, running) = cluster(vec![node("n1")]).await;
    let mut t = task("old", "s");
    t.desired_state = api::TaskState::Shutdown as i32;
    let mut removed = task("gone", "s");
    removed.desired_state = api::TaskState::Remove as i32;
    put_tasks(&store, vec![t, removed, task("live", "s")]).await;
    wait_assigned(&store, &["live"]).await;
    wait_for(WAIT, &store, "stale tasks shut down", |tx| {
        let shut = |id: &str| {
            tx.get_task(id).is_some_and(|t| {
                state(&t) == api::TaskState::Shutdown as i32 && t.node_id.is_empty()
            })
        };
        (shut("old") && shut("gone")).then_some(())
    })
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn job_tasks_desired_complete_are_placed() {
    let (store, running) = cluster(vec![node("n1")]).await;
    let mut t = task("job", "s");
    t.desired_state = api::TaskState::Complete as i32;
    put_tasks(&store, vec![t]).await;
    wait_assigned(&store, &["job"]).await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_of_deleted_services_are_not_explained() {
    let (store, running) = cluster(vec![]).await;
    put_tasks(
        &store,
        vec![task("orphan", "nosuchservice"), task("t", "s")],
    )
    .await;
    wait_err(&store, "t", "no suitable node").await;
    assert_eq!(err(&get_task(&store, "orphan")), "");
    running.stop().await;
}

/// A task of an older spec version than its service's (a scale bumps the version without making
/// its tasks dirty, so no updater replaces them) is explained and placed like any other once a
/// node fits. SwarmKit's scheduler drops such tasks: they stayed PENDING for good.
#[tokio::test(start_paused = true)]
async fn unschedulable_tasks_of_an_old_spec_version_are_explained_and_placed_later() {
    use api::node_spec::Availability;
    let (store, running) = cluster(vec![availability(node("n1"), Availability::Drain)]).await;
    edit_service_version(&store, "s", 2).await;
    let mut current = task("current", "s");
    current.spec_version = Some(api::Version { index: 2 });
    put_tasks(&store, vec![task("old", "s"), current]).await;
    let drained = "no suitable node (1 node not available for new tasks)";
    wait_err(&store, "current", drained).await;
    wait_err(&store, "old", drained).await;
    edit_node(&store, "n1", |n| {
        n.spec.as_mut().unwrap().availability = Availability::Active as i32;
    })
    .await;
    let placed = wait_assigned(&store, &["old", "current"]).await;
    assert_eq!(placed["old"], "n1");
    assert_eq!(placed["current"], "n1");
    running.stop().await;
}

// --- batching ------------------------------------------------------------------------------

/// Collects the IDs of tasks that became ASSIGNED, one list per store commit.
async fn assigned_per_commit(watcher: &mut store::Watcher, want: usize) -> Vec<Vec<String>> {
    let mut commits = Vec::new();
    let mut current = Vec::new();
    let mut seen = 0;
    while seen < want {
        let event = tokio::time::timeout(WAIT, watcher.recv())
            .await
            .expect("events keep coming")
            .expect("store open");
        match &event {
            Event::Commit { .. } => {
                if !current.is_empty() {
                    commits.push(std::mem::take(&mut current));
                }
            }
            Event::Object { .. } => {
                if let Some(t) = event.object_as::<api::Task>()
                    && is_assigned(t)
                    && event.old_as::<api::Task>().is_some_and(|o| !is_assigned(o))
                {
                    current.push(t.id.clone());
                    seen += 1;
                }
            }
        }
    }
    if !current.is_empty() {
        commits.push(current);
    }
    commits
}

#[tokio::test(start_paused = true)]
async fn commits_in_a_burst_are_scheduled_in_one_pass() {
    let (store, running) = cluster(vec![node("n1")]).await;
    let mut watcher = store.watch(WatchFilter::none().tasks());
    for t in tasks("t", "s", 5) {
        put_tasks(&store, vec![t]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let commits = assigned_per_commit(&mut watcher, 5).await;
    assert_eq!(commits.len(), 1, "{commits:?}");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_of_commits_waits_at_most_the_max_latency() {
    let (store, running) = cluster(vec![node("n1")]).await;
    put_tasks(&store, vec![task("first", "s")]).await;
    let start = tokio::time::Instant::now();
    // Commits every 40 ms for 3 s: the quiet gap never comes.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..75 {
                put_services(&store, vec![service(&format!("filler{i}"))]).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    wait_assigned(&store, &["first"]).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1200),
        "assigned after {waited:?}"
    );
    writer.await.unwrap();
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn large_groups_are_written_in_batches_of_200() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    let mut watcher = store.watch(WatchFilter::none().tasks());
    put_tasks(&store, tasks("t", "s", 450)).await;
    let commits = assigned_per_commit(&mut watcher, 450).await;
    let sizes: Vec<usize> = commits.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![200, 200, 50]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn large_tasks_are_written_in_transactions_under_the_size_limit() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    let mut watcher = store.watch(WatchFilter::none().tasks());
    // 0.9 MB each: two in one transaction would pass SwarmKit's 1.5 MiB and be refused.
    for i in 0..3 {
        let mut t = task(&format!("big{i}"), "s");
        let container = api::ContainerSpec {
            image: "busybox".into(),
            env: vec![format!("E={}", "x".repeat(900_000))],
            ..Default::default()
        };
        spec_mut(&mut t).runtime = Some(api::task_spec::Runtime::Container(Box::new(container)));
        put_tasks(&store, vec![t]).await;
    }
    let commits = assigned_per_commit(&mut watcher, 3).await;
    let sizes: Vec<usize> = commits.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![1, 1, 1]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_commit_completing_a_full_batch_is_scheduled_without_the_debounce() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    let start = tokio::time::Instant::now();
    put_tasks(&store, tasks("t", "s", crate::pass::MAX_BATCH)).await;
    wait_service_assigned(&store, "s").await;
    // The paused clock only moves while everything waits on a timer: the pass did not wait.
    assert!(
        start.elapsed() < COMMIT_DEBOUNCE_GAP,
        "waited {:?}",
        start.elapsed()
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn fewer_new_tasks_than_a_batch_wait_for_the_debounce() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    let start = tokio::time::Instant::now();
    put_tasks(&store, tasks("t", "s", crate::pass::MAX_BATCH - 1)).await;
    wait_service_assigned(&store, "s").await;
    assert!(
        start.elapsed() >= COMMIT_DEBOUNCE_GAP,
        "waited {:?}",
        start.elapsed()
    );
    running.stop().await;
}

// --- failures ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_node_failing_a_service_repeatedly_goes_last() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    // Two healthy tasks on n2.
    put_tasks(
        &store,
        vec![
            on_node(task("ok1", "s"), "n2", api::TaskState::Running),
            on_node(task("ok2", "s"), "n2", api::TaskState::Running),
        ],
    )
    .await;
    // Four failures on n1 do not count yet: n1 (no task) is still preferred.
    for i in 0..4 {
        let id = format!("bad{i}");
        put_tasks(
            &store,
            vec![on_node(task(&id, "s"), "n1", api::TaskState::Running)],
        )
        .await;
        set_task_state(&store, &id, api::TaskState::Failed).await;
    }
    put_tasks(&store, vec![task("probe1", "s")]).await;
    assert_eq!(wait_assigned(&store, &["probe1"]).await["probe1"], "n1");
    set_task_state(&store, "probe1", api::TaskState::Rejected).await;

    // That was the fifth failure within 5 minutes: n2 now wins despite holding more tasks.
    put_tasks(&store, vec![task("probe2", "s")]).await;
    assert_eq!(wait_assigned(&store, &["probe2"]).await["probe2"], "n2");

    // Another spec version of the service is not penalised.
    let mut v2 = task("v2", "s");
    v2.spec_version = Some(api::Version { index: 2 });
    edit_service_version(&store, "s", 2).await;
    put_tasks(&store, vec![v2]).await;
    assert_eq!(wait_assigned(&store, &["v2"]).await["v2"], "n1");

    // The penalty expires after 5 minutes.
    tokio::time::sleep(Duration::from_secs(301)).await;
    put_tasks(&store, vec![task("probe3", "s")]).await;
    // probe3 has the old spec version (1): n1 has 1 active task of s (v2), n2 three.
    assert_eq!(wait_assigned(&store, &["probe3"]).await["probe3"], "n1");
    running.stop().await;
}

async fn edit_service_version(store: &MemoryStore, id: &str, index: u64) {
    store
        .update(|tx| {
            let mut s = tx.get_service(id).expect("service exists");
            s.spec_version = Some(api::Version { index });
            tx.update_service(s)
        })
        .await
        .expect("update service");
}

/// A scheduler loaded from `store` but not running, and a watcher that starts at its snapshot.
fn loaded(store: &MemoryStore) -> (Scheduler, Watcher) {
    let mut scheduler = Scheduler::new(store.clone());
    let (snapshot, watcher) = store.view_and_watch(WatchFilter::all(), |tx| {
        (
            tx.find_shared(By::All),
            tx.find_shared(By::All),
            tx.find_shared(By::All),
        )
    });
    scheduler.load(snapshot);
    (scheduler, watcher)
}

/// Hands `scheduler` the events `watcher` holds, then runs a pass; how many tasks it examined.
async fn pass(scheduler: &mut Scheduler, watcher: &mut Watcher) -> usize {
    while let Some(event) = watcher.try_recv() {
        scheduler.handle(event);
    }
    scheduler.schedule(Some(watcher)).await
}

// --- writes --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_conflicting_write_skips_only_that_task() {
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(&store, vec![node("n1")]).await;
    put_tasks(&store, tasks("t", "s", 3)).await;

    let (mut scheduler, _watcher) = loaded(&store);
    // Someone changes t001 after the scheduler read it.
    edit_task(&store, "t001", |t| {
        t.annotations = Some(api::Annotations::default())
    })
    .await;
    scheduler.schedule(None).await;

    assert!(is_assigned(&get_task(&store, "t000")));
    assert!(is_assigned(&get_task(&store, "t002")));
    let skipped = get_task(&store, "t001");
    assert_eq!(state(&skipped), api::TaskState::Pending as i32);
    assert_eq!(skipped.node_id, "");
    // Nothing is held on the node for it, and it waits for its next turn.
    assert!(!scheduler.nodes.has_task("n1", "t001"));
    assert_eq!(
        scheduler.unassigned.get("t001").map(|t| t.version),
        Some(
            skipped
                .meta
                .as_ref()
                .unwrap()
                .version
                .as_ref()
                .unwrap()
                .index
        ),
        "queued again as the store now has it"
    );
    assert!(scheduler.tick_required);
}

/// Tasks that fit no node are not examined again at every pass: a new task makes a pass examine
/// only itself (it gets the same explanation), until the nodes change.
#[tokio::test(start_paused = true)]
async fn unschedulable_tasks_are_left_aside_until_the_nodes_change() {
    use api::node_spec::Availability;
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(&store, vec![availability(node("n1"), Availability::Drain)]).await;
    put_tasks(&store, tasks("t", "s", 3)).await;
    let (mut scheduler, mut watcher) = loaded(&store);
    let drained = "no suitable node (1 node not available for new tasks)";

    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        3,
        "the first pass examines all"
    );
    for t in tasks("t", "s", 3) {
        assert_eq!(err(&get_task(&store, &t.id)), drained);
    }
    put_tasks(&store, vec![task("t003", "s")]).await;
    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        1,
        "only the new task is examined"
    );
    assert_eq!(err(&get_task(&store, "t003")), drained, "same explanation");
    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        0,
        "nothing new, nothing examined"
    );
    assert_eq!(scheduler.unassigned.len(), 4, "all four stay queued");

    edit_node(&store, "n1", |n| {
        n.spec.as_mut().unwrap().availability = Availability::Active as i32;
    })
    .await;
    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        4,
        "a node change examines all"
    );
    for t in tasks("t", "s", 4) {
        assert!(is_assigned(&get_task(&store, &t.id)), "{} placed", t.id);
    }
}

/// A pass that placed tasks may have changed why the others fit nowhere: the next pass examines
/// every queued task again and rewrites explanations that changed.
#[tokio::test(start_paused = true)]
async fn a_pass_that_placed_tasks_makes_the_next_examine_all() {
    let store = new_store();
    put_services(&store, vec![service("s"), service("big")]).await;
    put_nodes(&store, vec![resources(node("n1"), 2 * CPU, GIB)]).await;
    // Fits nowhere for its constraint, then also for its reservation once n1 is full.
    let stuck = constraint(
        reserve(task("stuck", "big"), 2 * CPU, 0),
        "node.labels.x==y",
    );
    put_tasks(&store, vec![stuck]).await;
    let (mut scheduler, mut watcher) = loaded(&store);
    assert_eq!(pass(&mut scheduler, &mut watcher).await, 1);
    assert_eq!(
        err(&get_task(&store, "stuck")),
        "no suitable node (scheduling constraints not satisfied on 1 node)"
    );
    put_tasks(&store, vec![reserve(task("a", "s"), CPU, 0)]).await;
    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        1,
        "only the new task"
    );
    assert!(is_assigned(&get_task(&store, "a")));
    // n1 has 1 CPU left now: "stuck" fails on resources first, which the next pass says.
    let stuck_too = |id| constraint(reserve(task(id, "big"), 2 * CPU, 0), "node.labels.x==y");
    put_tasks(&store, vec![stuck_too("b")]).await;
    assert_eq!(
        pass(&mut scheduler, &mut watcher).await,
        2,
        "the placement makes it examine all"
    );
    let resources = "no suitable node (insufficient resources on 1 node)";
    assert_eq!(err(&get_task(&store, "stuck")), resources);
    assert_eq!(err(&get_task(&store, "b")), resources);
    put_tasks(&store, vec![stuck_too("c")]).await;
    assert_eq!(pass(&mut scheduler, &mut watcher).await, 1, "settled again");
    assert_eq!(err(&get_task(&store, "c")), resources);
}
