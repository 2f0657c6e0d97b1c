//! Placement preferences: nested spread, existing tasks, missing labels, full branches.

use super::*;

#[tokio::test(start_paused = true)]
async fn nested_spread_preferences_split_tasks_evenly() {
    let mut nodes = Vec::new();
    for (id, zone, rack) in [
        ("a1", "a", "1"),
        ("a2", "a", "1"),
        ("a3", "a", "2"),
        ("b1", "b", "1"),
        ("b2", "b", "2"),
        ("b3", "b", "3"),
    ] {
        nodes.push(engine_label(label(node(id), "zone", zone), "rack", rack));
    }
    let (store, running) = cluster(nodes).await;
    let group: Vec<api::Task> = tasks("t", "s", 12)
        .into_iter()
        .map(|t| spread(t, &["node.labels.zone", "engine.labels.rack"]))
        .collect();
    put_tasks(&store, group).await;
    let per_node = wait_service_assigned(&store, "s").await;
    let count = |ids: &[&str]| {
        ids.iter()
            .map(|id| per_node.get(*id).copied().unwrap_or(0))
            .sum::<usize>()
    };
    assert_eq!(count(&["a1", "a2", "a3"]), 6, "{per_node:?}");
    assert_eq!(count(&["b1", "b2", "b3"]), 6, "{per_node:?}");
    // Zone a: racks 1 and 2 get 3 each, so a3 alone holds rack 2's three.
    assert_eq!(count(&["a1", "a2"]), 3, "{per_node:?}");
    assert_eq!(count(&["a3"]), 3, "{per_node:?}");
    // Zone b: three racks, one node each.
    assert_eq!((count(&["b1"]), count(&["b2"]), count(&["b3"])), (2, 2, 2));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn spread_counts_existing_tasks_and_missing_labels_form_a_branch() {
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(
        &store,
        vec![
            label(node("east1"), "zone", "east"),
            label(node("east2"), "zone", "east"),
            label(node("west"), "zone", "west"),
            node("nolabel"),
        ],
    )
    .await;
    // East already runs 3 tasks of the service.
    let existing: Vec<api::Task> = (0..3)
        .map(|i| {
            on_node(
                task(&format!("old{i}"), "s"),
                "east1",
                api::TaskState::Running,
            )
        })
        .collect();
    put_tasks(&store, existing).await;
    let running = Running::start(&store).await;
    let group: Vec<api::Task> = tasks("t", "s", 6)
        .into_iter()
        .map(|t| spread(t, &["node.labels.zone"]))
        .collect();
    put_tasks(&store, group).await;
    let per_node = wait_service_assigned(&store, "s").await;
    // 9 tasks over 3 branches (east, west, no label): 3 each, so all 6 new ones go elsewhere.
    assert_eq!(per_node.get("east1"), Some(&3), "{per_node:?}");
    assert_eq!(per_node.get("east2"), None, "{per_node:?}");
    assert_eq!(per_node.get("west"), Some(&3), "{per_node:?}");
    assert_eq!(per_node.get("nolabel"), Some(&3), "{per_node:?}");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_branch_leaves_its_share_to_the_others() {
    let (store, running) = cluster(vec![
        resources(label(node("small"), "zone", "a"), CPU, GIB),
        resources(label(node("big"), "zone", "b"), 10 * CPU, GIB),
    ])
    .await;
    let group: Vec<api::Task> = tasks("t", "s", 6)
        .into_iter()
        .map(|t| spread(reserve(t, CPU, 0), &["node.labels.zone"]))
        .collect();
    put_tasks(&store, group).await;
    let per_node = wait_service_assigned(&store, "s").await;
    assert_eq!(per_node.get("small"), Some(&1), "{per_node:?}");
    assert_eq!(per_node.get("big"), Some(&5), "{per_node:?}");
    running.stop().await;
}
