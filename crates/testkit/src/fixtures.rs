//! Object fixtures: the smallest node, service spec and task that the leader subsystems accept,
//! which a test then changes where it cares.

/// A READY, ACTIVE node `id`, named `id`, with hostname `id`.
pub fn node(id: &str) -> api::Node {
    api::Node {
        id: id.into(),
        spec: Some(api::NodeSpec {
            annotations: Some(api::Annotations {
                name: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        description: Some(api::NodeDescription {
            hostname: id.into(),
            ..Default::default()
        }),
        status: Some(api::NodeStatus {
            state: api::node_status::State::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node `id` with only a status: `state`.
pub fn node_in_state(id: &str, state: api::node_status::State) -> api::Node {
    api::Node {
        id: id.into(),
        status: Some(api::NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The spec of a replicated service `name` of `replicas` tasks running container `image`.
pub fn service_spec(name: &str, replicas: u64, image: &str) -> api::ServiceSpec {
    api::ServiceSpec {
        annotations: Some(api::Annotations {
            name: name.into(),
            ..Default::default()
        }),
        task: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }),
        mode: Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas },
        )),
        ..Default::default()
    }
}

/// Task `id` of service `service_id` in slot 1, desired RUNNING, observed `state`, of container
/// image `busybox`, on no node.
pub fn task(id: &str, service_id: &str, state: api::TaskState) -> api::Task {
    api::Task {
        id: id.into(),
        service_id: service_id.into(),
        slot: 1,
        desired_state: api::TaskState::Running as i32,
        status: Some(api::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One change of an assignments message as tests compare it: kind (`task`, `secret`, `config`,
/// `volume`), object ID, action, and the data of a secret or config (empty otherwise).
pub type AssignmentItem = (&'static str, String, i32, Vec<u8>);

/// The changes of an assignments message as [`AssignmentItem`]s.
pub fn assignment_items(changes: &[api::AssignmentChange]) -> Vec<AssignmentItem> {
    use api::assignment::Item;
    changes
        .iter()
        .map(|c| {
            let (kind, id, data) = match c.assignment.as_ref().and_then(|a| a.item.as_ref()) {
                Some(Item::Task(t)) => ("task", t.id.clone(), Vec::new()),
                Some(Item::Secret(s)) => (
                    "secret",
                    s.id.clone(),
                    s.spec.as_ref().map(|s| s.data.clone()).unwrap_or_default(),
                ),
                Some(Item::Config(x)) => (
                    "config",
                    x.id.clone(),
                    x.spec.as_ref().map(|s| s.data.clone()).unwrap_or_default(),
                ),
                Some(Item::Volume(v)) => ("volume", v.id.clone(), Vec::new()),
                None => ("none", String::new(), Vec::new()),
            };
            (kind, id, c.action, data)
        })
        .collect()
}
