use std::time::Duration;

use api::node_spec::Availability;

use super::*;

fn node(zone: &str, memory: i64, availability: Availability) -> api::Node {
    api::Node {
        id: "n1".into(),
        spec: Some(api::NodeSpec {
            annotations: Some(api::Annotations {
                name: "n1".into(),
                labels: [("zone".to_string(), zone.to_string())].into(),
                ..Default::default()
            }),
            availability: availability as i32,
            ..Default::default()
        }),
        description: Some(api::NodeDescription {
            resources: Some(api::Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: memory,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(id: &str, constraints: &[&str]) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(api::ServiceSpec {
            annotations: Some(api::Annotations {
                name: id.into(),
                ..Default::default()
            }),
            task: Some(api::TaskSpec {
                placement: Some(Box::new(api::Placement {
                    constraints: constraints.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, service_id: &str, memory: i64, state: api::TaskState) -> api::Task {
    let mut t = testkit::fixtures::task(id, service_id, state);
    t.node_id = "n1".into();
    t.spec.as_mut().expect("spec").resources = Some(Box::new(api::ResourceRequirements {
        reservations: Some(api::Resources {
            memory_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    }));
    t
}

async fn seeded(
    node: api::Node,
    services: Vec<api::Service>,
    tasks: Vec<api::Task>,
) -> MemoryStore {
    let store = MemoryStore::new(None);
    store
        .update(move |tx| {
            tx.create_node(node)?;
            for s in services {
                tx.create_service(s)?;
            }
            for t in tasks {
                tx.create_task(t)?;
            }
            Ok(())
        })
        .await
        .expect("seed");
    store
}

fn state_of(store: &MemoryStore, id: &str) -> (i32, String, String) {
    let t = store.view(|tx| tx.get_task(id)).expect("task");
    let s = t.status.unwrap_or_default();
    (s.state, s.message, s.err)
}

async fn change_node(store: &MemoryStore, f: impl FnOnce(&mut api::Node) + Send) {
    store
        .update(move |tx| {
            let mut n = tx.get_node("n1").expect("node");
            f(&mut n);
            tx.update_node(n)
        })
        .await
        .expect("update node");
}

/// Lets the enforcer run until it has nothing left to do.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn label_change_rejects_tasks_whose_constraints_fail() {
    let store = seeded(
        node("east", 1 << 30, Availability::Active),
        vec![
            service("s1", &["node.labels.zone==east"]),
            service("s2", &[]),
        ],
        vec![
            task("t1", "s1", 0, api::TaskState::Running),
            task("t2", "s2", 0, api::TaskState::Running),
            task("t3", "s1", 0, api::TaskState::Failed),
        ],
    )
    .await;
    let shutdown = CancellationToken::new();
    tokio::spawn(ConstraintEnforcer::new(store.clone()).run(shutdown.clone()));
    settle().await;
    assert_eq!(state_of(&store, "t1").0, api::TaskState::Running as i32);

    change_node(&store, |n| {
        n.spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .labels = [("zone".to_string(), "west".to_string())].into();
    })
    .await;
    settle().await;
    assert_eq!(
        state_of(&store, "t1"),
        (
            api::TaskState::Rejected as i32,
            REJECTED_MESSAGE.to_string(),
            REJECTED_ERR.to_string()
        )
    );
    // Unconstrained and already finished tasks are left alone.
    assert_eq!(state_of(&store, "t2").0, api::TaskState::Running as i32);
    assert_eq!(state_of(&store, "t3").0, api::TaskState::Failed as i32);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn shrunk_resources_reject_what_no_longer_fits() {
    let store = seeded(
        node("east", 4 << 30, Availability::Active),
        vec![service("s", &[])],
        vec![
            task("a", "s", 1 << 30, api::TaskState::Running),
            task("b", "s", 2 << 30, api::TaskState::Running),
        ],
    )
    .await;
    let shutdown = CancellationToken::new();
    tokio::spawn(ConstraintEnforcer::new(store.clone()).run(shutdown.clone()));
    settle().await;
    change_node(&store, |n| {
        n.description
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .memory_bytes = 2 << 30;
    })
    .await;
    settle().await;
    // Tasks claim in order: `a` (1 GiB) fits, `b` (2 GiB more) does not.
    assert_eq!(state_of(&store, "a").0, api::TaskState::Running as i32);
    assert_eq!(state_of(&store, "b").0, api::TaskState::Rejected as i32);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn paused_node_keeps_its_tasks() {
    let store = seeded(
        node("east", 1 << 30, Availability::Pause),
        vec![service("s1", &["node.labels.zone==west"])],
        vec![task("t1", "s1", 0, api::TaskState::Running)],
    )
    .await;
    let shutdown = CancellationToken::new();
    tokio::spawn(ConstraintEnforcer::new(store.clone()).run(shutdown.clone()));
    settle().await;
    change_node(&store, |n| {
        n.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "renamed".into();
    })
    .await;
    settle().await;
    assert_eq!(state_of(&store, "t1").0, api::TaskState::Running as i32);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn lost_generic_resources_reject_the_tasks_holding_them() {
    let ssd = |value: i64| api::GenericResource {
        resource: Some(api::generic_resource::Resource::DiscreteResourceSpec(
            api::DiscreteGenericResource {
                kind: "ssd".into(),
                value,
            },
        )),
    };
    let mut n = node("east", 4 << 30, Availability::Active);
    n.description
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .generic = vec![ssd(2)];
    let mut a = task("a", "s", 0, api::TaskState::Running);
    a.assigned_generic_resources = vec![ssd(1)];
    let mut b = task("b", "s", 0, api::TaskState::Running);
    b.assigned_generic_resources = vec![ssd(1)];
    let store = seeded(n, vec![service("s", &[])], vec![a, b]).await;
    let shutdown = CancellationToken::new();
    tokio::spawn(ConstraintEnforcer::new(store.clone()).run(shutdown.clone()));
    settle().await;
    assert_eq!(state_of(&store, "b").0, api::TaskState::Running as i32);
    change_node(&store, move |n| {
        n.description
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .generic = vec![ssd(1)];
    })
    .await;
    settle().await;
    // The node has one unit left: `a` keeps it, `b` is rejected.
    assert_eq!(state_of(&store, "a").0, api::TaskState::Running as i32);
    assert_eq!(state_of(&store, "b").0, api::TaskState::Rejected as i32);
    shutdown.cancel();
}
