//! Tasks whose node the orchestrator chose (global services).

use super::*;
use crate::CONFIRMED_MESSAGE;

#[tokio::test(start_paused = true)]
async fn preassigned_tasks_are_only_checked_against_their_node() {
    let (store, running) = cluster(vec![node("n1"), down(node("n2")), node("n3")]).await;
    let mut tasks = vec![
        on_node(task("g1", "s"), "n1", api::TaskState::Pending),
        on_node(task("g2", "s"), "n2", api::TaskState::Pending),
    ];
    for t in &mut tasks {
        t.slot = 0;
    }
    put_tasks(&store, tasks).await;
    let placed = wait_assigned(&store, &["g1"]).await;
    assert_eq!(placed["g1"], "n1");
    let g1 = get_task(&store, "g1");
    assert_eq!(g1.status.as_ref().unwrap().message, CONFIRMED_MESSAGE);
    wait_for(WAIT, &store, "g2 explained", |tx| {
        let t = tx.get_task("g2")?;
        (err(&t) == "no suitable node (1 node not available for new tasks)").then_some(())
    })
    .await;
    let g2 = get_task(&store, "g2");
    assert_eq!(g2.node_id, "n2", "never moved to another node");
    assert_eq!(state(&g2), api::TaskState::Pending as i32);

    edit_node(&store, "n2", |n| {
        n.status.as_mut().unwrap().state = api::node_status::State::Ready as i32;
    })
    .await;
    assert_eq!(wait_assigned(&store, &["g2"]).await["g2"], "n2");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn preassigned_tasks_need_resources_too() {
    let (store, running) = cluster(vec![resources(node("n1"), CPU, GIB)]).await;
    put_tasks(
        &store,
        vec![on_node(
            reserve(task("g", "s"), 2 * CPU, 0),
            "n1",
            api::TaskState::Pending,
        )],
    )
    .await;
    wait_for(WAIT, &store, "g explained", |tx| {
        let t = tx.get_task("g")?;
        (err(&t) == "no suitable node (insufficient resources on 1 node)").then_some(())
    })
    .await;
    edit_node(&store, "n1", |n| {
        n.description
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .nano_cpus = 2 * CPU;
    })
    .await;
    wait_assigned(&store, &["g"]).await;
    running.stop().await;
}
