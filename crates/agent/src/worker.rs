//! The worker (SwarmKit agent/worker.go): the set of tasks assigned to this node, one runner
//! each. A COMPLETE assignment set replaces the local set (tasks missing from it are shut down,
//! removed and forgotten); an INCREMENTAL one applies its updates and removals. A COMPLETE set
//! the dispatcher split over several messages (`api::assignment_parts`) is applied as it
//! arrives, but what it leaves out is removed only once its last part arrived: a set cut short
//! (the stream failed) removes nothing. On start it
//! resumes every task in the task database from its stored status and checkpoint, so a restart
//! re-runs nothing, and has the executor remove what tasks it no longer knows left behind. A
//! task sent while its earlier runner is still being removed waits for a later message.
//!
//! Secrets and configs come in the same messages, before the tasks that need them, and follow
//! the same rules (SwarmKit's reconcileSecrets/reconcileConfigs): a COMPLETE set replaces the
//! node's (once whole), an INCREMENTAL one updates and removes. They live in memory only
//! ([`Dependencies`]); each task's controller sees only those its spec references.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use api::assignment_change::AssignmentAction;
use api::assignment_parts;
use api::assignments_message::Type as AssignmentsType;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::db::TaskDb;
use crate::dependencies::Dependencies;
use crate::executor::Executor;
use crate::logs::LogSources;
use crate::runner::{self, RunnerHandle, StatusReport};

/// The tasks of this node and their runners.
pub struct Worker {
    executor: Arc<dyn Executor>,
    db: TaskDb,
    runners: HashMap<String, RunnerHandle>,
    /// Runners being removed, by task ID.
    removing: HashMap<String, RunnerHandle>,
    /// Tasks the executor refused (already reported REJECTED).
    refused: HashSet<String>,
    reports: mpsc::UnboundedSender<StatusReport>,
    /// The secrets and configs of this node, in memory only.
    dependencies: Arc<Dependencies>,
    /// What a split COMPLETE set has named so far, until its last part.
    partial: Option<Partial>,
    /// The runners' tasks and controllers, for log subscriptions.
    log_sources: LogSources,
}

/// The IDs a COMPLETE set named, by kind.
#[derive(Default)]
struct Partial {
    tasks: HashSet<String>,
    secrets: HashSet<String>,
    configs: HashSet<String>,
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
            removing: HashMap::new(),
            refused: Default::default(),
            reports,
            dependencies: Arc::default(),
            partial: None,
            log_sources: LogSources::new(),
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
        let known: HashSet<String> = stored.iter().map(|r| r.task.id.clone()).collect();
        self.executor.remove_orphans(&known);
        for row in stored {
            self.start_runner(row.task, row.status, row.checkpoint);
        }
    }

    /// Applies one message of the Assignments stream: secrets and configs first, then tasks,
    /// so that a task never starts before what it needs.
    pub fn apply(&mut self, msg: api::AssignmentsMessage) {
        let more = assignment_parts::more_parts_follow(&msg.results_in);
        if msg.r#type == AssignmentsType::Complete as i32 {
            // A new set supersedes one still arriving.
            self.partial = Some(Partial::default());
        }
        let mut tasks = Vec::new();
        for c in msg.changes {
            let remove = c.action == AssignmentAction::Remove as i32;
            match c.assignment.and_then(|a| a.item) {
                Some(api::assignment::Item::Task(t)) => tasks.push((remove, t)),
                Some(api::assignment::Item::Secret(secret)) => {
                    self.track(|p| &mut p.secrets, remove, &secret.id);
                    if remove {
                        self.dependencies.remove_secret(&secret.id);
                    } else {
                        self.dependencies.put_secret(secret);
                    }
                }
                Some(api::assignment::Item::Config(config)) => {
                    self.track(|p| &mut p.configs, remove, &config.id);
                    if remove {
                        self.dependencies.remove_config(&config.id);
                    } else {
                        self.dependencies.put_config(config);
                    }
                }
                // Volumes are not supported yet.
                _ => {}
            }
        }
        for (remove, task) in tasks {
            self.track(|p| &mut p.tasks, remove, &task.id);
            if remove {
                self.remove(&task.id);
            } else {
                self.upsert(task);
            }
        }
        if !more && let Some(keep) = self.partial.take() {
            self.dependencies.retain(&keep.secrets, &keep.configs);
            let gone: Vec<String> = self
                .runners
                .keys()
                .chain(self.refused.iter())
                .filter(|id| !keep.tasks.contains(*id))
                .cloned()
                .collect();
            for id in gone {
                self.remove(&id);
            }
        }
        self.removing.retain(|_, r| !r.is_finished());
    }

    /// Records in the COMPLETE set arriving, if any, that `id` is in it (or, removed, not).
    fn track(
        &mut self,
        kind: impl FnOnce(&mut Partial) -> &mut HashSet<String>,
        remove: bool,
        id: &str,
    ) {
        if let Some(partial) = &mut self.partial {
            let set = kind(partial);
            if remove {
                set.remove(id);
            } else {
                set.insert(id.to_string());
            }
        }
    }

    /// The tasks log subscriptions read from.
    pub(crate) fn log_sources(&self) -> LogSources {
        self.log_sources.clone()
    }

    /// Forgets a split COMPLETE set whose last part will not come (its stream ended): it
    /// removes nothing.
    pub fn abandon_partial(&mut self) {
        self.partial = None;
    }

    /// Updates a task's runner, or starts one. A task whose earlier runner is still being
    /// removed is left for a later message: that runner's end would delete the new one's files
    /// and database row.
    fn upsert(&mut self, task: api::Task) {
        if self.refused.contains(&task.id) {
            return;
        }
        if self
            .removing
            .get(&task.id)
            .is_some_and(|r| !r.is_finished())
        {
            debug!(task.id = %task.id, "ignoring the task while its earlier runner is being removed");
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
        let dependencies = self.dependencies.restrict(&task);
        match self.executor.controller(&task, checkpoint, dependencies) {
            Ok(controller) => {
                let controller: Arc<dyn crate::executor::Controller> = Arc::from(controller);
                self.log_sources.add(task.clone(), controller.clone());
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
        self.log_sources.remove(id);
        if let Some(runner) = self.runners.remove(id) {
            runner.remove();
            self.removing.insert(id.to_string(), runner);
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
        for (_, runner) in self.removing.drain() {
            runner.join().await;
        }
    }
}
