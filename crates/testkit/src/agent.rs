//! [`FakeAgent`]: plays every node's agent over a raft-less store by writing the task states a real
//! agent would report (moby/swarmkit:manager/orchestrator/testutils does the same by hand): a task
//! desired RUNNING starts (or fails, for a failing image), a task desired stopped shuts down.

use std::collections::BTreeSet;
use std::time::SystemTime;

use store::{By, Event, MemoryStore, WatchFilter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ASSIGNED: i32 = api::TaskState::Assigned as i32;
const RUNNING: i32 = api::TaskState::Running as i32;

/// Most task writes in one store transaction, as the dispatcher batches status updates.
const BATCH: usize = 200;

/// Which tasks the fake agent plays and which of them fail; see [`FakeAgent::step`].
#[derive(Debug, Clone)]
pub struct FakeAgent {
    /// Tasks whose container image starts with this fail instead of running.
    failing_image_prefix: String,
    /// Whether it also plays tasks no node holds yet (tests that run no scheduler).
    without_scheduler: bool,
}

impl FakeAgent {
    /// An agent that, like a real one, plays only tasks assigned to a node that is not DOWN,
    /// from ASSIGNED on; tasks of images starting with `failing_image_prefix` fail.
    pub fn new(failing_image_prefix: &str) -> FakeAgent {
        FakeAgent {
            failing_image_prefix: failing_image_prefix.to_string(),
            without_scheduler: false,
        }
    }

    /// Also plays tasks that no node holds, from any state: for tests without a scheduler.
    pub fn without_scheduler(mut self) -> FakeAgent {
        self.without_scheduler = true;
        self
    }

    /// The state the agent reports next for `task` (`node_down`: its node is DOWN, so its agent
    /// is silent), or `None` when it has nothing to report.
    pub fn step(&self, task: &api::Task, node_down: bool) -> Option<api::TaskState> {
        let observed = task.status.as_ref().map_or(0, |s| s.state);
        if node_down || observed > RUNNING {
            return None;
        }
        if !self.without_scheduler && (task.node_id.is_empty() || observed < ASSIGNED) {
            return None;
        }
        if task.desired_state > RUNNING {
            return Some(api::TaskState::Shutdown);
        }
        if task.desired_state == RUNNING && observed < RUNNING {
            let image = match task.spec.as_ref().and_then(|s| s.runtime.as_ref()) {
                Some(api::task_spec::Runtime::Container(c)) => c.image.as_str(),
                _ => "",
            };
            if image.starts_with(&self.failing_image_prefix) {
                return Some(api::TaskState::Failed);
            }
            return Some(api::TaskState::Running);
        }
        None
    }

    /// Runs the agent on `store` until `shutdown` fires or the store closes: at every change of a
    /// task or node it applies [`FakeAgent::step`] to the tasks concerned, in batched writes that
    /// set the state, a message, a fresh timestamp and, for a failure, the error.
    pub fn spawn(self, store: MemoryStore, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let (initial, mut watcher) =
                store.view_and_watch(WatchFilter::none().tasks().nodes(), |tx| {
                    tx.find_tasks(By::All)
                        .into_iter()
                        .map(|t| t.id)
                        .collect::<BTreeSet<_>>()
                });
            let mut dirty = initial;
            loop {
                while !dirty.is_empty() {
                    let batch: Vec<String> = dirty.iter().take(BATCH).cloned().collect();
                    for id in &batch {
                        dirty.remove(id);
                    }
                    let agent = self.clone();
                    let result = store
                        .update(move |tx| {
                            for id in &batch {
                                let Some(mut task) = tx.get_task(id) else {
                                    continue;
                                };
                                let down = tx.get_node(&task.node_id).is_some_and(|n| {
                                    n.status.as_ref().map(|s| s.state)
                                        == Some(api::node_status::State::Down as i32)
                                });
                                let Some(state) = agent.step(&task, down) else {
                                    continue;
                                };
                                let status = task.status.get_or_insert_with(Default::default);
                                status.state = state as i32;
                                status.timestamp = Some(SystemTime::now().into());
                                status.message = match state {
                                    api::TaskState::Shutdown => "shutdown",
                                    _ => "started",
                                }
                                .into();
                                if state == api::TaskState::Failed {
                                    status.err = "task: non-zero exit (1)".into();
                                }
                                tx.update_task(task)?;
                            }
                            Ok(())
                        })
                        .await;
                    if let Err(e) = result {
                        panic!("fake agent write failed: {e}");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    event = watcher.recv() => match event {
                        Some(Event::Object { object, .. }) => match &object.object {
                            Some(api::object::Object::Task(t)) => {
                                dirty.insert(t.id.clone());
                            }
                            Some(api::object::Object::Node(n)) => {
                                let id = n.id.clone();
                                let on_node = store.view(|tx| tx.find_tasks(By::NodeId(&id)));
                                dirty.extend(on_node.into_iter().map(|t| t.id));
                            }
                            _ => {}
                        },
                        Some(Event::Commit { .. }) => {}
                        None => return,
                    },
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(node_id: &str, desired: api::TaskState, observed: api::TaskState) -> api::Task {
        api::Task {
            node_id: node_id.into(),
            desired_state: desired as i32,
            ..crate::fixtures::task("t", "svc", observed)
        }
    }

    #[test]
    fn step_plays_what_a_real_agent_reports() {
        use api::TaskState::*;
        let agent = FakeAgent::new("fail");
        assert_eq!(
            agent.step(&task("n", Running, Assigned), false),
            Some(Running)
        );
        assert_eq!(
            agent.step(&task("n", Shutdown, Running), false),
            Some(Shutdown)
        );
        assert_eq!(agent.step(&task("n", Running, Running), false), None);
        assert_eq!(agent.step(&task("n", Ready, Assigned), false), None);
        assert_eq!(agent.step(&task("n", Shutdown, Failed), false), None);
        // Unassigned, or on a DOWN node: a real agent knows nothing of it.
        assert_eq!(agent.step(&task("", Running, Pending), false), None);
        assert_eq!(agent.step(&task("n", Running, Assigned), true), None);
        let mut failing = task("n", Running, Assigned);
        failing.spec = Some(
            crate::fixtures::service_spec("s", 1, "fail:2")
                .task
                .expect("task"),
        );
        assert_eq!(agent.step(&failing, false), Some(Failed));
        // Without a scheduler, tasks no node holds are played too.
        let alone = agent.without_scheduler();
        assert_eq!(alone.step(&task("", Running, New), false), Some(Running));
        assert_eq!(
            alone.step(&task("", Shutdown, Pending), false),
            Some(Shutdown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spawn_runs_assigned_tasks_and_stops_them() {
        let store = MemoryStore::new(None);
        let t = task("n1", api::TaskState::Running, api::TaskState::Assigned);
        store
            .update(move |tx| {
                tx.create_node(crate::fixtures::node("n1"))?;
                tx.create_task(t)
            })
            .await
            .expect("seed");
        let shutdown = CancellationToken::new();
        FakeAgent::new("fail").spawn(store.clone(), shutdown.clone());
        let observed = |tx: &store::ReadTx<'_>| tx.get_task("t").and_then(|t| t.status);
        let limit = std::time::Duration::from_secs(10);
        let running = crate::wait_for(limit, &store, "t running", |tx| {
            observed(tx).filter(|s| s.state == RUNNING)
        })
        .await;
        assert_eq!(running.message, "started");
        store
            .update(|tx| {
                let mut t = tx.get_task("t").expect("t");
                t.desired_state = api::TaskState::Shutdown as i32;
                tx.update_task(t)
            })
            .await
            .expect("stop");
        let stopped = crate::wait_for(limit, &store, "t shut down", |tx| {
            observed(tx).filter(|s| s.state == api::TaskState::Shutdown as i32)
        })
        .await;
        assert_eq!(stopped.message, "shutdown");
        shutdown.cancel();
    }
}
