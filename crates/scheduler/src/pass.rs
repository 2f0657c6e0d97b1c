//! One scheduling pass (SwarmKit's `tick`, `processPreassignedTasks`, `scheduleTaskGroup`,
//! `noSuitableNode` and `applySchedulingDecisions`): confirm the tasks with a preset node, place
//! the others group by group, explain what does not fit, and write the decisions in batches,
//! settling the bookkeeping of those the store refused. The loop that decides when a pass runs is
//! in `scheduler.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use store::{Event, EventKind, Shared, StoreObject, Watcher};
use tokio::time::{Duration, Instant};
use tracing::{debug, error};

use crate::filter::{FailureCounts, Requirements, no_suitable_node};
use crate::nodeinfo::{TaskOnNode, is_active};
use crate::nodeset::{NodeIdx, NodeSet, ServiceVersion};
use crate::placement::{Group, Picker, Tree, place_n};
use crate::scheduler::{
    ASSIGNED_MESSAGE, COMMIT_DEBOUNCE_GAP, CONFIRMED_MESSAGE, FULL_BATCH, PendingTask, Scheduler,
};

/// Most tasks written in one store transaction.
pub(crate) const MAX_BATCH: usize = 200;

/// Bytes a decision may add to a task (node ID, status message, an explanation), for deciding
/// whether the task still fits in a transaction.
const DECISION_SLACK: usize = 1024;

const COMPLETE: i32 = api::TaskState::Complete as i32;

/// What a pass decided for one task.
#[derive(Debug)]
enum Outcome {
    /// Put on a node (already accounted there).
    Assigned {
        node_id: String,
        message: &'static str,
        generic: Vec<api::GenericResource>,
    },
    /// Stays PENDING with this `status.err`.
    NoNode { err: String },
    /// A pending task nobody wants any more: moved to SHUTDOWN.
    Shutdown,
}

#[derive(Debug)]
struct Decision {
    task: PendingTask,
    outcome: Outcome,
}

impl Decision {
    fn apply(&self, task: &mut api::Task, now: prost_types::Timestamp) {
        let status = task.status.get_or_insert_with(Default::default);
        match &self.outcome {
            Outcome::Assigned {
                node_id,
                message,
                generic,
            } => {
                task.node_id.clone_from(node_id);
                task.assigned_generic_resources.clone_from(generic);
                *status = api::TaskStatus {
                    state: api::TaskState::Assigned as i32,
                    timestamp: Some(now),
                    message: (*message).to_string(),
                    ..Default::default()
                };
            }
            Outcome::NoNode { err } => {
                status.timestamp = Some(now);
                status.err.clone_from(err);
            }
            Outcome::Shutdown => {
                status.state = api::TaskState::Shutdown as i32;
                status.timestamp = Some(now);
                status.err.clear();
            }
        }
    }
}

/// Result of writing one decision.
#[derive(Debug, PartialEq)]
enum Written {
    Ok,
    /// The task changed since the scheduler read it (its current version when known).
    Conflict(Option<Shared<api::Task>>),
    /// The task is gone.
    Gone,
}

/// What decides whether a group fits anywhere: its requirements, and its service when
/// `max_replicas` makes the service's counts matter.
type FitKey = (Arc<Requirements>, Option<Arc<str>>);

/// Explanations already computed in a pass, by what decides them. Placing tasks only takes capacity
/// away, so requirements no node met earlier in the pass are met by none later either.
#[derive(Debug, Default)]
struct PassMemo {
    /// Tasks placed so far in the pass.
    placements: u64,
    /// (requirements, service when `max_replicas` counts) -> (placements then, explanation).
    infeasible: HashMap<FitKey, (u64, String)>,
}

impl Scheduler {
    /// One scheduling pass. Events that arrive while its writes are under way are taken from
    /// `watcher` between transactions, so they do not pile up; a commit among them starts a new
    /// debounce once the pass is over. Returns how many unassigned tasks the pass examined.
    pub(crate) async fn schedule(&mut self, mut watcher: Option<&mut Watcher>) -> usize {
        let now = Instant::now();
        self.fresh = 0;
        let mut decisions = Vec::with_capacity(self.unassigned.len() + self.preassigned.len());
        if !self.preassigned.is_empty() {
            self.confirm_preassigned(&mut decisions);
        }
        let mut examined = 0;
        if self.tick_required {
            self.tick_required = false;
            examined = self.tick(now, &mut decisions);
            self.nodes.prune_failures(now);
        }
        let decided = decisions.len();
        let decide_time = now.elapsed();
        let mut committed = false;
        let mut decisions = decisions.into_iter();
        let mut carried = Vec::new();
        loop {
            let mut batch: Vec<Decision> = std::mem::take(&mut carried);
            batch.extend(decisions.by_ref().take(MAX_BATCH - batch.len()));
            if batch.is_empty() {
                break;
            }
            carried = self.write(batch).await;
            if let Some(watcher) = watcher.as_deref_mut() {
                while let Some(event) = watcher.try_recv() {
                    match event {
                        Event::Commit { .. } => committed = true,
                        event => self.handle(event),
                    }
                }
            }
        }
        if decided > 0 {
            debug!(
                decisions = decided,
                examined,
                decide = ?decide_time,
                total = ?now.elapsed(),
                "scheduling pass done"
            );
        }
        if committed {
            let now = Instant::now();
            // A full batch queued meanwhile is due at once, as in `on_event`.
            let gap = if self.fresh >= FULL_BATCH {
                Duration::ZERO
            } else {
                COMMIT_DEBOUNCE_GAP
            };
            self.debounce = Some((now, now + gap));
        }
        // Forget the requirements no queued task uses any more.
        self.requirements.retain(|_, entry| {
            entry.versions.retain(|(_, req)| Arc::strong_count(req) > 1);
            !entry.versions.is_empty()
        });
        examined
    }

    /// Checks the tasks whose node the orchestrator chose against that node only.
    fn confirm_preassigned(&mut self, decisions: &mut Vec<Decision>) {
        let mut ids: Vec<String> = self.preassigned.keys().cloned().collect();
        ids.sort_unstable();
        for id in ids {
            let task = &self.preassigned[&id];
            if task.desired > COMPLETE {
                let task = self.preassigned.remove(&id).expect("listed above");
                decisions.push(Decision {
                    task,
                    outcome: Outcome::Shutdown,
                });
                continue;
            }
            // A node the store does not hold (yet): wait for it.
            let Some(idx) = self
                .nodes
                .index_of(&task.node_id)
                .filter(|idx| self.nodes.info(*idx).node().is_some())
            else {
                continue;
            };
            let req = task.req.clone();
            let service_tasks = self.nodes.service_tasks(&task.service, idx);
            let pos = self.nodes.eligible_for(&req.statics);
            let verdict = req.check(
                &self.nodes.eligible(pos).filter,
                self.nodes.info(idx),
                service_tasks,
            );
            match verdict {
                Ok(()) => {
                    let task = self.preassigned.remove(&id).expect("listed above");
                    let outcome = assign_on(&mut self.nodes, &task, idx, true, CONFIRMED_MESSAGE);
                    decisions.push(Decision { task, outcome });
                }
                Err(filter) => {
                    let mut counts = FailureCounts::default();
                    counts[filter.index()] = 1;
                    let err = no_suitable_node(&counts);
                    if err != task.err {
                        let task = self.preassigned.remove(&id).expect("listed above");
                        decisions.push(Decision {
                            task,
                            outcome: Outcome::NoNode { err },
                        });
                    }
                }
            }
        }
    }

    /// Places the unassigned tasks, one group per service and spec version: all of them, or only
    /// those not examined yet while the node set is as it was when the others were found to fit
    /// nowhere (see `Scheduler::settled_at`). Returns how many tasks it examined.
    fn tick(&mut self, now: Instant, decisions: &mut Vec<Decision>) -> usize {
        let generation = self.nodes.generation();
        let queue: Vec<PendingTask> = if self.settled_at == Some(generation) {
            let unassigned = &mut self.unassigned;
            self.unexamined
                .drain()
                .filter_map(|id| unassigned.remove(&id))
                .collect()
        } else {
            self.unexamined.clear();
            self.unassigned.drain().map(|(_, task)| task).collect()
        };
        let examined = queue.len();
        let mut groups: BTreeMap<(Arc<str>, u64), Vec<PendingTask>> = BTreeMap::new();
        let mut one_offs = Vec::new();
        for task in queue {
            if task.desired > COMPLETE {
                decisions.push(Decision {
                    task,
                    outcome: Outcome::Shutdown,
                });
                continue;
            }
            match task.spec_version {
                Some(version) => groups
                    .entry((task.service.clone(), version))
                    .or_default()
                    .push(task),
                // Without a spec version, tasks of a service may differ: one at a time.
                None => one_offs.push(task),
            }
        }
        one_offs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut memo = PassMemo::default();
        for (_, mut tasks) in groups {
            tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            self.schedule_group(tasks, now, &mut memo, decisions);
        }
        for task in one_offs {
            self.schedule_group(vec![task], now, &mut memo, decisions);
        }
        // Nothing placed: what stays queued fits nowhere at this generation. Once something is
        // placed, the explanations given before it may no longer hold, so the next pass looks
        // at every task again.
        self.settled_at = (self.nodes.generation() == generation).then_some(generation);
        examined
    }

    /// Places a group of tasks with the same requirements; what cannot be placed stays queued with
    /// an explanation.
    fn schedule_group(
        &mut self,
        tasks: Vec<PendingTask>,
        now: Instant,
        memo: &mut PassMemo,
        decisions: &mut Vec<Decision>,
    ) {
        let Some(first) = tasks.first() else {
            return;
        };
        let req = first.req.clone();
        let key: ServiceVersion = (first.service.clone(), first.spec_version.unwrap_or(0));
        let memo_key: FitKey = (req.clone(), (req.max_replicas > 0).then(|| key.0.clone()));
        let count = tasks.len();
        let mut queue = tasks.into_iter();

        let eligible = self.nodes.eligible_for(&req.statics);
        if !memo.infeasible.contains_key(&memo_key) {
            let group = Group {
                req: &req,
                key: &key,
                eligible,
                now,
            };
            let mut placed = 0u64;
            let mut assign = |ns: &mut NodeSet, idx: NodeIdx| -> bool {
                let Some(task) = queue.next() else {
                    return false;
                };
                let outcome = assign_on(ns, &task, idx, false, ASSIGNED_MESSAGE);
                decisions.push(Decision { task, outcome });
                placed += 1;
                true
            };
            if req.spreads.is_empty() {
                let mut picker = Picker::all_nodes(&self.nodes, &group);
                place_n(&mut self.nodes, &group, &mut picker, count, &mut assign);
            } else {
                let mut tree = Tree::build(&self.nodes, &group);
                tree.place(&mut self.nodes, &group, count, &mut assign);
            }
            memo.placements += placed;
        }

        let rest: Vec<PendingTask> = queue.collect();
        if rest.is_empty() {
            return;
        }
        if !self.services.contains(&*key.0) {
            debug!(service.id = %key.0, tasks = rest.len(), "removing tasks of a deleted service from the scheduler");
            return;
        }
        // Tasks of an older spec version stay queued with their explanation, like any other.
        // SwarmKit drops them here, trusting the updater to replace them; but a change that
        // leaves the task spec alone (a scale) bumps the service's version without making its
        // tasks dirty, so nothing would ever replace them and they stayed PENDING for good. A
        // task the updater does replace leaves the queue when its desired state moves past
        // RUNNING.
        let err = match memo.infeasible.get(&memo_key) {
            Some((at, err)) if *at == memo.placements => err.clone(),
            _ => {
                let (counts, passing) = self.explain(&req, &key.0, eligible);
                let err = no_suitable_node(&counts);
                if passing == 0 {
                    memo.infeasible
                        .insert(memo_key, (memo.placements, err.clone()));
                }
                err
            }
        };
        debug!(service.id = %key.0, tasks = rest.len(), err = %err, "no suitable node available for tasks");
        for task in rest {
            if task.err == err {
                self.unassigned.insert(task.id.clone(), task);
            } else {
                decisions.push(Decision {
                    task,
                    outcome: Outcome::NoNode { err: err.clone() },
                });
            }
        }
    }

    /// Runs every stored node through the whole pipeline: failures per filter, and how many
    /// nodes pass.
    fn explain(
        &self,
        req: &Requirements,
        service: &str,
        eligible: usize,
    ) -> (FailureCounts, usize) {
        let filter = &self.nodes.eligible(eligible).filter;
        let mut counts = FailureCounts::default();
        let mut passing = 0;
        for idx in self.nodes.stored_nodes() {
            let service_tasks = self.nodes.service_tasks(service, idx);
            match req.check(filter, self.nodes.info(idx), service_tasks) {
                Ok(()) => passing += 1,
                Err(f) => counts[f.index()] += 1,
            }
        }
        (counts, passing)
    }

    /// Writes a batch of decisions in one transaction and settles the bookkeeping of those that
    /// could not be written. The transaction ends early once it is full by the store's batch
    /// limits (large tasks); the decisions left out are returned, for the next transaction.
    async fn write(&mut self, mut batch: Vec<Decision>) -> Vec<Decision> {
        let now = prost_types::Timestamp::from(SystemTime::now());
        let result = self
            .store
            .update(|tx| {
                let mut written = Vec::with_capacity(batch.len());
                for decision in &batch {
                    let Some(mut task) = tx.get_shared::<api::Task>(&decision.task.id) else {
                        written.push(Written::Gone);
                        continue;
                    };
                    if !tx.has_room_for(&*task, DECISION_SLACK) {
                        break;
                    }
                    if task.version() != decision.task.version {
                        written.push(Written::Conflict(Some(task)));
                        continue;
                    }
                    // The one copy of the task: the stored version stays as it is for readers
                    // and for the update event's `old`.
                    decision.apply(task.make_mut(), now);
                    written.push(match tx.update_shared(task) {
                        Ok(()) => Written::Ok,
                        Err(e) => {
                            debug!(task.id = %decision.task.id, error = %e, "scheduler failed to update task; will retry");
                            Written::Conflict(None)
                        }
                    });
                }
                Ok(written)
            })
            .await;
        let written = result.unwrap_or_else(|e| {
            error!(error = %e, "scheduler tick transaction failed");
            batch.iter().map(|_| Written::Conflict(None)).collect()
        });
        let rest = batch.split_off(written.len());
        for (decision, written) in batch.into_iter().zip(written) {
            self.settle(decision, written);
        }
        rest
    }

    fn settle(&mut self, decision: Decision, written: Written) {
        let Decision { mut task, outcome } = decision;
        if let Outcome::Assigned { node_id, .. } = &outcome
            && written != Written::Ok
        {
            self.nodes.remove_task(node_id, &task.id);
        }
        match (outcome, written) {
            (_, Written::Gone) | (Outcome::Assigned { .. } | Outcome::Shutdown, Written::Ok) => {}
            (Outcome::NoNode { err }, Written::Ok) => {
                task.err = err;
                self.requeue(task);
            }
            (_, Written::Conflict(current)) => {
                debug!(task.id = %task.id, "task changed while being scheduled; will retry");
                self.tick_required = true;
                match current {
                    // Start over from what the store holds now.
                    Some(current) => self.on_task(EventKind::Update, &current),
                    None => {
                        self.unexamined.insert(task.id.clone());
                        self.requeue(task);
                    }
                }
            }
        }
    }

    /// Queues a task again unless a newer version of it was queued meanwhile.
    fn requeue(&mut self, task: PendingTask) {
        let queue = if task.node_id.is_empty() {
            &mut self.unassigned
        } else {
            &mut self.preassigned
        };
        queue.entry(task.id.clone()).or_insert(task);
    }
}

/// Accounts `task` on node `idx` (taking its generic resources) and returns the outcome to write.
fn assign_on(
    ns: &mut NodeSet,
    task: &PendingTask,
    idx: NodeIdx,
    preassigned: bool,
    message: &'static str,
) -> Outcome {
    let info = ns.info(idx);
    let generic = if task.req.generic.is_empty() {
        Vec::new()
    } else {
        info.claim_generic(&task.req)
    };
    let node_id = info.id.clone();
    let held = TaskOnNode {
        service: task.service.clone(),
        active: is_active(task.desired),
        nano_cpus: task.req.nano_cpus,
        memory_bytes: task.req.memory_bytes,
        generic: generic.clone(),
        host_ports: task.req.host_ports.clone(),
        preassigned,
    };
    ns.add_task_at(idx, &task.id, held);
    debug!(task.id = %task.id, node.id = %node_id, "assigning task to node");
    Outcome::Assigned {
        node_id,
        message,
        generic,
    }
}
