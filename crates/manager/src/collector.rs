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

fn task_state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

fn node_state(n: &api::Node) -> i32 {
    n.status.as_ref().map_or(0, |s| s.state)
}

/// Moves the gauge of task state `state`, found by its name among SwarmKit's labels
/// ([`telemetry::swarm::TASK_STATES`]: the proto's names in lower case).
fn add_task(state: i32, d: i64) {
    let Ok(state) = api::TaskState::try_from(state) else {
        return;
    };
    let name = state.as_str_name();
    if let Some(i) = telemetry::swarm::TASK_STATES
        .iter()
        .position(|label| label.eq_ignore_ascii_case(name))
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
    let old = old.as_ref().and_then(|o| o.object.as_ref());
    match object.object.as_ref() {
        Some(O::Task(t)) => {
            let before = match old {
                Some(O::Task(before)) => Some(task_state(before)),
                _ => None,
            };
            moved(before, task_state(t), d, add_task);
        }
        Some(O::Node(n)) => {
            let before = match old {
                Some(O::Node(before)) => Some(node_state(before)),
                _ => None,
            };
            moved(before, node_state(n), d, add_node);
        }
        Some(O::Service(_)) => MANAGER_SERVICES.add(d),
        Some(O::Network(_)) => MANAGER_NETWORKS.add(d),
        Some(O::Secret(_)) => MANAGER_SECRETS.add(d),
        Some(O::Config(_)) => MANAGER_CONFIGS.add(d),
        _ => {}
    }
}

/// Moves a state gauge for an object now in `state`: from `before` on an update, else by `d`.
fn moved(before: Option<i32>, state: i32, d: i64, add: fn(i32, i64)) {
    match before {
        Some(before) => {
            add(before, -1);
            add(state, 1);
        }
        None => add(state, d),
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
    use std::time::Duration;

    use testkit::fixtures;

    use super::*;

    fn service(id: &str) -> api::Service {
        api::Service {
            id: id.into(),
            spec: Some(fixtures::service_spec(id, 1, "busybox")),
            ..Default::default()
        }
    }

    fn tasks(state: &str) -> i64 {
        MANAGER_TASKS.get(state).expect("a task state").get()
    }

    async fn until(what: &str, cond: impl FnMut() -> bool) {
        testkit::poll_until(
            Duration::from_secs(10),
            Duration::from_millis(5),
            what,
            cond,
        )
        .await;
    }

    /// nextest runs each test in its own process, so the process-wide gauges are this test's.
    #[tokio::test]
    async fn counts_start_from_the_store_and_follow_its_events_and_reset_on_stop() {
        let store = MemoryStore::new(None);
        store
            .update(|tx| {
                tx.create(fixtures::node_in_state(
                    "n1",
                    api::node_status::State::Ready,
                ))?;
                tx.create(service("s1"))?;
                tx.create(fixtures::task("t1", "s1", api::TaskState::Running))
            })
            .await
            .expect("seed");
        let shutdown = CancellationToken::new();
        let collector = tokio::spawn(run(store.clone(), shutdown.clone()));
        until("the store's counts", || {
            MANAGER_SERVICES.get() == 1
                && tasks("running") == 1
                && MANAGER_NODES.get("ready").expect("ready").get() == 1
        })
        .await;

        store
            .update(|tx| {
                tx.create(service("s2"))?;
                tx.create(fixtures::task("t2", "s2", api::TaskState::New))?;
                tx.create(fixtures::node_in_state("n2", api::node_status::State::Down))
            })
            .await
            .expect("creates");
        until("two services, a new task, a down node", || {
            MANAGER_SERVICES.get() == 2
                && tasks("new") == 1
                && MANAGER_NODES.get("down").expect("down").get() == 1
        })
        .await;

        store
            .update(|tx| {
                let mut t = tx.get_task("t2").expect("t2");
                t.status.get_or_insert_default().state = api::TaskState::Running as i32;
                tx.update(t)?;
                let mut t = tx.get_task("t1").expect("t1");
                t.desired_state = api::TaskState::Shutdown as i32;
                tx.update(t)?;
                tx.delete::<api::Service>("s1")
            })
            .await
            .expect("updates");
        until("a task moved to running, a service removed", || {
            MANAGER_SERVICES.get() == 1 && tasks("new") == 0 && tasks("running") == 2
        })
        .await;

        shutdown.cancel();
        collector.await.expect("no panic").expect("a clean stop");
        assert_eq!(MANAGER_SERVICES.get(), 0);
        assert_eq!(tasks("running"), 0);
    }

    #[test]
    fn task_and_node_labels_are_swarmkit_state_names() {
        for label in telemetry::swarm::TASK_STATES {
            let state = api::TaskState::from_str_name(&label.to_uppercase());
            assert!(state.is_some(), "{label} is no task state");
        }
        for (i, label) in telemetry::swarm::NODE_STATES.iter().enumerate() {
            let state = api::node_status::State::try_from(i as i32).expect("a node state");
            assert_eq!(state.as_str_name().to_lowercase(), *label);
        }
    }
}
