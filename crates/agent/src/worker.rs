//! The worker (SwarmKit agent/worker.go): the set of tasks assigned to this node, one runner
//! each. A COMPLETE assignment set replaces the local set (tasks missing from it are shut down,
//! removed and forgotten); an INCREMENTAL one applies its updates and removals. A COMPLETE set
//! the dispatcher split over several messages (`api::assignment_parts`) is applied as it
//! arrives, but what it leaves out is removed only once its last part arrived: a set cut short
//! (the stream failed) removes nothing. On start it
//! resumes every task in the task database from its stored status and checkpoint, so a restart
//! re-runs nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use api::assignment_change::AssignmentAction;
use api::assignment_parts;
use api::assignments_message::Type as AssignmentsType;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::db::TaskDb;
use crate::executor::Executor;
use crate::runner::{self, RunnerHandle, StatusReport};

/// The tasks of this node and their runners.
pub struct Worker {
    executor: Arc<dyn Executor>,
    db: TaskDb,
    runners: HashMap<String, RunnerHandle>,
    removing: Vec<RunnerHandle>,
    /// Tasks the executor refused (already reported REJECTED).
    refused: HashSet<String>,
    reports: mpsc::UnboundedSender<StatusReport>,
    /// The tasks of a split COMPLETE set received so far, until its last part.
    partial: Option<HashSet<String>>,
}

impl Worker {
    /// A worker running tasks with `executor`, remembering them in `db`, reporting status
    /// changes to `reports`.
    pub fn new(
        executor: Arc<dyn Executor>,
        db: TaskDb,
        reports: mpsc::UnboundedSender<StatusReport>,
    ) -> Worker {
        Worker {
            executor,
            db,
            runners: HashMap::new(),
            removing: Vec::new(),
            refused: Default::default(),
            reports,
            partial: None,
        }
    }

    /// Restarts a runner for every task of the database, from its stored status.
    pub fn resume(&mut self) {
        let stored = match self.db.load() {
            Ok(stored) => stored,
            Err(e) => {
                warn!("reading the worker task database failed: {e}");
                return;
            }
        };
        if !stored.is_empty() {
            info!(
                tasks = stored.len(),
                "resuming tasks from the worker database"
            );
        }
        for row in stored {
            self.start_runner(row.task, row.status, row.checkpoint);
        }
    }

    /// Applies one message of the Assignments stream.
    pub fn apply(&mut self, msg: api::AssignmentsMessage) {
        let more = assignment_parts::more_parts_follow(&msg.results_in);
        let complete = msg.r#type == AssignmentsType::Complete as i32;
        let tasks = msg.changes.into_iter().filter_map(|c| {
            let task = match c.assignment?.item? {
                api::assignment::Item::Task(t) => t,
                // Secrets, configs and volumes are not supported yet.
                _ => return None,
            };
            Some((c.action, task))
        });
        if complete {
            // A new set supersedes one still arriving.
            self.partial = Some(HashSet::new());
        }
        for (action, task) in tasks {
            if action == AssignmentAction::Remove as i32 {
                if let Some(set) = &mut self.partial {
                    set.remove(&task.id);
                }
                self.remove(&task.id);
            } else {
                if let Some(set) = &mut self.partial {
                    set.insert(task.id.clone());
                }
                self.upsert(task);
            }
        }
        if !more && let Some(keep) = self.partial.take() {
            let gone: Vec<String> = self
                .runners
                .keys()
                .chain(self.refused.iter())
                .filter(|id| !keep.contains(*id))
                .cloned()
                .collect();
            for id in gone {
                self.remove(&id);
            }
        }
        self.removing.retain(|r| !r.is_finished());
    }

    /// Forgets a split COMPLETE set whose last part will not come (its stream ended): it
    /// removes nothing.
    pub fn abandon_partial(&mut self) {
        self.partial = None;
    }

    fn upsert(&mut self, task: api::Task) {
        if self.refused.contains(&task.id) {
            return;
        }
        if let Err(e) = self.db.put_task(&task) {
            warn!(task.id = %task.id, "saving the task failed: {e}");
        }
        if let Some(runner) = self.runners.get(&task.id) {
            runner.update(task);
            return;
        }
        let status = task.status.clone().unwrap_or_default();
        self.start_runner(task, status, None);
    }

    fn start_runner(
        &mut self,
        task: api::Task,
        status: api::TaskStatus,
        checkpoint: Option<Vec<u8>>,
    ) {
        let id = task.id.clone();
        match self.executor.controller(&task, checkpoint) {
            Ok(controller) => {
                let handle = runner::spawn(
                    task,
                    status,
                    controller,
                    self.db.clone(),
                    self.reports.clone(),
                );
                self.runners.insert(id, handle);
            }
            Err(e) => {
                // The executor can never run it: REJECTED at once, as SwarmKit's agent does.
                warn!(task.id = %id, "the executor refused the task: {e}");
                let rejected = api::TaskStatus {
                    timestamp: Some(SystemTime::now().into()),
                    state: api::TaskState::Rejected as i32,
                    message: status.message,
                    err: e.to_string(),
                    ..Default::default()
                };
                if let Err(e) = self.db.put_status(&id, &rejected) {
                    warn!(task.id = %id, "saving the task status failed: {e}");
                }
                let _ = self.reports.send((id.clone(), rejected));
                self.refused.insert(id);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        self.refused.remove(id);
        if let Some(runner) = self.runners.remove(id) {
            runner.remove();
            self.removing.push(runner);
        } else if let Err(e) = self.db.delete(id) {
            warn!(task.id = %id, "forgetting the task failed: {e}");
        }
    }

    /// The node leaves (graceful stop): every task is shut down and removed.
    pub async fn leave(&mut self) {
        let ids: Vec<String> = self.runners.keys().cloned().collect();
        for id in ids {
            self.remove(&id);
        }
        for runner in self.removing.drain(..) {
            runner.join().await;
        }
    }
}
