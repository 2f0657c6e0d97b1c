//! Spreading a group over equal and unequal nodes.

use super::*;
use crate::ASSIGNED_MESSAGE;

#[tokio::test(start_paused = true)]
async fn tasks_spread_evenly_over_equal_nodes() {
    let (store, running) = cluster(vec![node("n1"), node("n2"), node("n3")]).await;
    put_tasks(&store, tasks("t", "s", 10)).await;
    let per_node = wait_service_assigned(&store, "s").await;
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![3, 3, 4], "{per_node:?}");

    let t = get_task(&store, "t000");
    let status = t.status.as_ref().unwrap();
    assert_eq!(status.message, ASSIGNED_MESSAGE);
    assert_eq!(status.err, "");
    assert!(status.timestamp.is_some());
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn spread_counts_tasks_already_running_and_then_totals() {
    let store = new_store();
    put_services(&store, vec![service("s"), service("other")]).await;
    put_nodes(&store, vec![node("n1"), node("n2"), node("n3")]).await;
    // n1 already runs two tasks of s; n2 runs three tasks of another service.
    let mut existing = vec![
        on_node(task("old1", "s"), "n1", api::TaskState::Running),
        on_node(task("old2", "s"), "n1", api::TaskState::Running),
    ];
    for i in 0..3 {
        existing.push(on_node(
            task(&format!("x{i}"), "other"),
            "n2",
            api::TaskState::Running,
        ));
    }
    put_tasks(&store, existing).await;
    let running = Running::start(&store).await;

    // Fewest tasks of the service first (n2, n3), total tasks break the tie: n3 first.
    put_tasks(&store, vec![task("a", "s")]).await;
    assert_eq!(wait_assigned(&store, &["a"]).await["a"], "n3");
    put_tasks(&store, tasks("b", "s", 3)).await;
    wait_service_assigned(&store, "s").await;
    let per_node = wait_service_assigned(&store, "s").await;
    // 6 tasks of s over 3 nodes: two each.
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_pass_never_puts_more_than_its_share_on_a_node() {
    let nodes: Vec<api::Node> = (0..7).map(|i| node(&format!("n{i}"))).collect();
    let (store, running) = cluster(nodes).await;
    put_tasks(&store, tasks("t", "s", 100)).await;
    let per_node = wait_service_assigned(&store, "s").await;
    assert_eq!(per_node.len(), 7);
    assert!(
        per_node.values().all(|n| *n == 14 || *n == 15),
        "{per_node:?}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_without_spec_version_are_placed_one_by_one_and_still_spread() {
    let (store, running) = cluster(vec![node("n1"), node("n2"), node("n3")]).await;
    let one_offs: Vec<api::Task> = tasks("t", "s", 6)
        .into_iter()
        .map(|mut t| {
            t.spec_version = None;
            t
        })
        .collect();
    put_tasks(&store, one_offs).await;
    let per_node = wait_service_assigned(&store, "s").await;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_node_takes_no_more_tasks() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    store.update(|tx| tx.delete_node("n1")).await.unwrap();
    put_tasks(&store, tasks("t", "s", 3)).await;
    let per_node = wait_service_assigned(&store, "s").await;
    assert_eq!(per_node, BTreeMap::from([("n2".to_string(), 3)]));
    running.stop().await;
}
