//! SwarmKit's object-count metrics (manager/metrics/collector.go), kept on every manager from its
//! own store: nodes by status, tasks by observed state, and services, networks, secrets and
//! configs. Counted once from a view, then moved by each watch event of that view's watch (an
//! update that leaves a node's or task's state alone is dropped as it is published), so a scrape
//! reads gauges and never walks the store. The gauges go back to 0 when the manager stops.

use store::{By, Event, EventKind, MemoryStore, WatchFilter};
use telemetry::swarm::{
    MANAGER_CONFIGS, MANAGER_NETWORKS, MANAGER_NODES, MANAGER_SECRETS, MANAGER_SERVICES,
    MANAGER_TASKS,
};
use tokio_util::sync::CancellationToken;

/// Task states in the order of [`telemetry::swarm::TASK_STATES`].
const TASK_STATES: [api::TaskState; 14] = [
    api::TaskState::New,
    api::TaskState::Pending,
    api::TaskState::Assigned,
    api::TaskState::Accepted,
    api::TaskState::Preparing,
    api::TaskState::Ready,
    api::TaskState::Starting,
    api::TaskState::Running,
    api::TaskState::Complete,
    api::TaskState::Shutdown,
    api::TaskState::Failed,
    api::TaskState::Rejected,
    api::TaskState::Remove,
    api::TaskState::Orphaned,
];

fn task_state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

fn node_state(n: &api::Node) -> i32 {
    n.status.as_ref().map_or(0, |s| s.state)
}

fn add_task(state: i32, d: i64) {
    if let Some(i) = TASK_STATES.iter().position(|s| *s as i32 == state)
        && let Some(g) = MANAGER_TASKS.at(i)
    {
        g.add(d);
    }
}

fn add_node(state: i32, d: i64) {
    if let Some(g) = usize::try_from(state)
        .ok()
        .and_then(|i| MANAGER_NODES.at(i))
    {
        g.add(d);
    }
}

/// Whether `event` can move a gauge: node and task updates only when their state changed.
fn counts(event: &Event) -> bool {
    let Event::Object {
        kind: EventKind::Update,
        object,
        old,
    } = event
    else {
        return true;
    };
    use api::object::Object as O;
    match (
        object.object.as_ref(),
        old.as_ref().and_then(|o| o.object.as_ref()),
    ) {
        (Some(O::Task(new)), Some(O::Task(old))) => task_state(new) != task_state(old),
        (Some(O::Node(new)), Some(O::Node(old))) => node_state(new) != node_state(old),
        (Some(O::Task(_) | O::Node(_)), _) => true,
        _ => false,
    }
}

/// Moves the gauges by one event.
fn apply(event: &Event) {
    use api::object::Object as O;
    let Event::Object { kind, object, old } = event else {
        return;
    };
    let d = match kind {
        EventKind::Create => 1,
        EventKind::Remove => -1,
        EventKind::Update => 0,
    };
    match object.object.as_ref() {
        Some(O::Task(t)) => {
            if let Some(Some(O::Task(before))) = old.as_ref().map(|o| o.object.as_ref()) {
                add_task(task_state(before), -1);
                add_task(task_state(t), 1);
            } else {
                add_task(task_state(t), d);
            }
        }
        Some(O::Node(n)) => {
            if let Some(Some(O::Node(before))) = old.as_ref().map(|o| o.object.as_ref()) {
                add_node(node_state(before), -1);
                add_node(node_state(n), 1);
            } else {
                add_node(node_state(n), d);
            }
        }
        Some(O::Service(_)) => MANAGER_SERVICES.add(d),
        Some(O::Network(_)) => MANAGER_NETWORKS.add(d),
        Some(O::Secret(_)) => MANAGER_SECRETS.add(d),
        Some(O::Config(_)) => MANAGER_CONFIGS.add(d),
        _ => {}
    }
}

fn reset() {
    MANAGER_NODES.reset();
    MANAGER_TASKS.reset();
    for g in [
        &MANAGER_SERVICES,
        &MANAGER_NETWORKS,
        &MANAGER_SECRETS,
        &MANAGER_CONFIGS,
    ] {
        g.set(0);
    }
}

/// Keeps the gauges until `shutdown` fires (then zeroes them); an error means the store's watch
/// closed.
pub async fn run(store: MemoryStore, shutdown: CancellationToken) -> Result<(), String> {
    let filter = WatchFilter::none()
        .nodes()
        .tasks()
        .services()
        .networks()
        .secrets()
        .configs()
        .select(|event, _| counts(event));
    let ((), mut watcher) = store.view_and_watch(filter, |tx| {
        reset();
        for n in tx.find_shared::<api::Node>(By::All) {
            add_node(node_state(&n), 1);
        }
        for t in tx.find_shared::<api::Task>(By::All) {
            add_task(task_state(&t), 1);
        }
        MANAGER_SERVICES.set(count(tx.count::<api::Service>()));
        MANAGER_NETWORKS.set(count(tx.count::<api::Network>()));
        MANAGER_SECRETS.set(count(tx.count::<api::Secret>()));
        MANAGER_CONFIGS.set(count(tx.count::<api::Config>()));
    });
    let result = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            event = watcher.recv() => match event {
                Some(e) => apply(&e),
                None => break Err("the store's watch closed".to_string()),
            },
        }
    };
    reset();
    result
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_and_node_labels_are_swarmkit_state_names() {
        for (state, label) in TASK_STATES.iter().zip(telemetry::swarm::TASK_STATES) {
            assert_eq!(state.as_str_name().to_lowercase(), label);
        }
        for (i, label) in telemetry::swarm::NODE_STATES.iter().enumerate() {
            let state = api::node_status::State::try_from(i as i32).expect("a node state");
            assert_eq!(state.as_str_name().to_lowercase(), *label);
        }
    }
}
