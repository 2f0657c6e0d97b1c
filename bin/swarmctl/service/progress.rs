//! `--detach=false` of `service create` and `service update` (ours; SwarmKit's swarmctl has no
//! such flag, Docker's CLI has): after the call, follow the service until it converges and show
//! the progress, in the shape of Docker CLI's `cli/command/service/progress`. Every
//! [`POLL`] the service, its up-to-date tasks and the nodes are read; a converged service is
//! watched for its update monitor period (5s by default) before it counts as stable. A paused
//! update or rollback, or an update rolled back by the manager, ends the command with an error
//! naming the service's update status message. A rollback the manager started on the command's
//! own change ends the command with that error once the rollback completes (or pauses), even when
//! the rolled-back tasks converge first: the change did not take. (Docker's CLI reports success
//! when the rolled-back tasks have been stable for the monitor period before the rollback ends.)
//!
//! On a terminal the display is redrawn in place (ANSI cursor moves): an `overall progress` row,
//! one row per slot (per node for global services) with its state and a bar, and a `verify` row.
//! Elsewhere each row is printed as a plain line whenever its text changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use api::service_spec::Mode;
use api::update_status::UpdateState;
use api::{TaskState, node_status};

use crate::common::{CliError, CmdResult, Ctx, all_nodes, emit};

/// How often the service and its tasks are read.
const POLL: Duration = Duration::from_millis(250);
/// SwarmKit's default update monitor period, used when the spec sets none.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// Above this many slots (or nodes) only the overall row is drawn.
const MAX_ROWS: u64 = 20;
/// Width of the state column: the longest state a slot row shows ("preparing").
const STATE_WIDTH: usize = 9;
/// Width of a progress bar between its brackets.
const BAR_WIDTH: usize = 30;
/// Longest error text shown in a row.
const MAX_ERR: usize = 75;

/// `--detach`, shared by `service create` and `service update`.
#[derive(clap::Args, Debug, Default)]
pub struct DetachArg {
    /// exit immediately instead of waiting for the service to converge (default true)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    detach: Option<String>,
}

impl DetachArg {
    /// Whether the command should wait: `--detach=false`. A value that is no bool is an error.
    pub fn wait(&self) -> Result<bool, CliError> {
        Ok(!super::flags::bool_flag(&self.detach, "--detach")?.unwrap_or(true))
    }
}

/// What the command asked of the service, which decides how a rollback ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A create or an update: a rollback by the manager is a failure.
    Change,
    /// `service update --rollback`: a completed rollback is the goal.
    Rollback,
}

/// Follows service `id` until it converges (`Ok`), its update or rollback pauses, or the
/// manager rolls the update back (an error with the status message). Ctrl-C stops following
/// and leaves the service as it is.
pub async fn follow(ctx: &mut Ctx, id: &str, request: Request) -> CmdResult {
    let mut screen = Screen::new(std::io::stdout().is_terminal());
    let result = follow_loop(ctx, id, request, &mut screen).await;
    screen.draw();
    result
}

async fn follow_loop(ctx: &mut Ctx, id: &str, request: Request, screen: &mut Screen) -> CmdResult {
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot handle interrupts: {e}")))?;
    let mut tracker: Option<Tracker> = None;
    let mut converged_at: Option<Instant> = None;
    let mut rolling_back = request == Request::Rollback;
    let mut rollback_reason = String::new();
    loop {
        let service = ctx
            .client
            .get_service(api::GetServiceRequest {
                service_id: id.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .service
            .ok_or_else(|| CliError::Failed(format!("service {id} not found")))?;
        let monitor = service
            .spec
            .as_ref()
            .and_then(|s| s.update.as_ref())
            .and_then(|u| u.monitor)
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_MONITOR);
        if tracker.is_none() {
            tracker = Some(Tracker::new(&service)?);
        }
        let tracker = tracker.as_mut().expect("set above");

        let mut finished_rollback = false;
        if let Some(status) = &service.update_status {
            let message = status.message.as_str();
            match UpdateState::try_from(status.state) {
                Ok(UpdateState::Updating) => rolling_back = false,
                Ok(UpdateState::Paused) => {
                    screen.draw();
                    return Err(CliError::Failed(format!(
                        "service update paused: {message}"
                    )));
                }
                Ok(UpdateState::RollbackStarted) => {
                    if request == Request::Change && !rolling_back && !message.is_empty() {
                        screen.set("rollback", message, None);
                        rollback_reason = message.to_string();
                    }
                    rolling_back = true;
                }
                Ok(UpdateState::RollbackPaused) => {
                    screen.draw();
                    return Err(CliError::Failed(format!(
                        "service rollback paused: {message}"
                    )));
                }
                Ok(UpdateState::RollbackCompleted) => {
                    rolling_back = true;
                    finished_rollback = true;
                    if request == Request::Change {
                        if rollback_reason.is_empty() {
                            rollback_reason = message.to_string();
                        }
                        screen.set("rollback", message, None);
                        screen.draw();
                        return Err(CliError::Failed(format!(
                            "service rolled back: {rollback_reason}"
                        )));
                    }
                }
                _ => {}
            }
        }

        let job = tracker.is_job();
        let tasks = ctx
            .client
            .list_tasks(api::ListTasksRequest {
                filters: Some(api::list_tasks_request::Filters {
                    service_ids: vec![service.id.clone()],
                    // Jobs are told apart by their iteration instead.
                    up_to_date: !job,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .tasks;
        let active: HashSet<String> = all_nodes(ctx)
            .await?
            .into_iter()
            .filter(|n| n.status.as_ref().map(|s| s.state) != Some(node_status::State::Down as i32))
            .map(|n| n.id)
            .collect();

        let converged = tracker.update(&service, &tasks, &active, rolling_back, screen);
        if converged && job {
            screen.set("job", "complete", None);
            screen.draw();
            return Ok(());
        }
        // The manager rolling the command's change back: its end is the answer (above).
        let rolled_back_change = request == Request::Change && rolling_back;
        if converged && !rolled_back_change {
            let since = *converged_at.get_or_insert_with(Instant::now);
            let waited = since.elapsed();
            if waited >= monitor || (finished_rollback && request == Request::Rollback) {
                screen.set("verify", "Service converged", None);
                screen.draw();
                return Ok(());
            }
            let left = (monitor - waited).as_secs() + 1;
            screen.set(
                "verify",
                &format!("Waiting {left} seconds to verify that tasks are stable..."),
                None,
            );
        } else if converged_at.take().is_some() {
            screen.set("verify", "Detected task failure", None);
        }
        screen.draw();
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = interrupt.recv() => {
                screen.set("", "Operation continuing in background.", None);
                screen.set(
                    "",
                    &format!("Use `swarmctl service inspect {id}` to check progress."),
                    None,
                );
                return Ok(());
            }
        }
    }
}

/// Docker CLI's order of task states for progress: running is 9 of 9 for services, complete 10
/// of 10 for jobs; remove and orphaned are not shown (`None`).
fn rank(state: i32) -> Option<u64> {
    let s = TaskState::try_from(state).ok()?;
    Some(match s {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Ready => 7,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        TaskState::Complete => 10,
        TaskState::Shutdown => 11,
        TaskState::Failed => 12,
        TaskState::Rejected => 13,
        TaskState::Remove | TaskState::Orphaned => return None,
    })
}

/// The observed state of a task.
fn observed(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

/// A state past running: the task is done (or should be).
fn terminal(state: i32) -> bool {
    rank(state).is_some_and(|r| r > 9)
}

/// A state's name as a row shows it: lower case, padded to [`STATE_WIDTH`].
fn state_text(state: i32) -> String {
    let name = TaskState::try_from(state)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_else(|_| state.to_string());
    format!("{name:<STATE_WIDTH$}")
}

/// An error message on one row: newlines made spaces, at most [`MAX_ERR`] characters.
fn error_text(err: &str) -> String {
    let one_line = err.replace('\n', " ");
    if one_line.chars().count() <= MAX_ERR {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_ERR - 1).collect();
    cut.push('…');
    cut
}

/// The row of a task: its error if it has one, else its state and a bar while it is not done.
fn task_row(screen: &mut Screen, row: &str, t: &api::Task, total_rank: u64) {
    let err = t.status.as_ref().map_or("", |s| s.err.as_str());
    if !err.is_empty() {
        screen.set(row, &error_text(err), None);
    } else if (!terminal(t.desired_state) && !terminal(observed(t))) || total_rank > 9 {
        let bar = rank(observed(t)).map(|r| (r, total_rank));
        screen.set(row, &state_text(observed(t)), bar);
    }
}

/// Of two tasks for one slot (or node), the one to show: the lower desired state, then the
/// lower observed state (a restarted task and its replacement; start-first updates).
fn prefer(candidate: &api::Task, current: &api::Task) -> bool {
    let key = |t: &api::Task| (rank(t.desired_state), rank(observed(t)));
    key(candidate) < key(current)
}

/// The progress of one kind of service.
enum Tracker {
    Replicated {
        replicas: u64,
        /// Task slot -> row number, in the order slots were first seen.
        rows: HashMap<u64, u64>,
        started: bool,
    },
    Global {
        started: bool,
    },
    ReplicatedJob {
        iteration: u64,
        total: u64,
        concurrent: u64,
        rows: HashMap<u64, u64>,
        started: bool,
    },
    GlobalJob {
        iteration: u64,
        /// The nodes of the job's tasks when first seen; later nodes are not waited for.
        nodes: Option<HashSet<String>>,
    },
}

impl Tracker {
    fn new(service: &api::Service) -> Result<Tracker, CliError> {
        let iteration = service
            .job_status
            .as_ref()
            .and_then(|j| j.job_iteration)
            .map_or(0, |v| v.index);
        Ok(match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(Mode::Replicated(r)) => Tracker::Replicated {
                replicas: r.replicas,
                rows: HashMap::new(),
                started: false,
            },
            Some(Mode::Global(_)) => Tracker::Global { started: false },
            Some(Mode::ReplicatedJob(j)) => Tracker::ReplicatedJob {
                iteration,
                total: j.total_completions,
                concurrent: j.max_concurrent,
                rows: HashMap::new(),
                started: false,
            },
            Some(Mode::GlobalJob(_)) => Tracker::GlobalJob {
                iteration,
                nodes: None,
            },
            None => return Err(CliError::Failed("unrecognized service mode".into())),
        })
    }

    fn is_job(&self) -> bool {
        matches!(
            self,
            Tracker::ReplicatedJob { .. } | Tracker::GlobalJob { .. }
        )
    }

    /// Sets the rows from the service's tasks; whether the service has converged.
    fn update(
        &mut self,
        service: &api::Service,
        tasks: &[api::Task],
        active: &HashSet<String>,
        rolling_back: bool,
        screen: &mut Screen,
    ) -> bool {
        let overall = |screen: &mut Screen, done: u64, of: u64| {
            let text = if rolling_back {
                format!("rolling back update: {done} out of {of} tasks")
            } else {
                format!("{done} out of {of} tasks")
            };
            screen.set("overall progress", &text, None);
        };
        match self {
            Tracker::Replicated {
                replicas,
                rows,
                started,
            } => {
                // The spec may have changed (an update of --replicas).
                if let Some(Mode::Replicated(r)) =
                    service.spec.as_ref().and_then(|s| s.mode.as_ref())
                {
                    *replicas = r.replicas;
                }
                let replicas = *replicas;
                if !*started {
                    overall(screen, 0, replicas);
                    if replicas <= MAX_ROWS {
                        for i in 1..=replicas {
                            screen.set(&format!("{i}/{replicas}"), "", None);
                        }
                    }
                    *started = true;
                }
                let mut by_slot: BTreeMap<u64, &api::Task> = BTreeMap::new();
                for t in tasks {
                    if rank(t.desired_state).is_none() || rank(observed(t)).is_none() {
                        continue;
                    }
                    if !t.node_id.is_empty() && !active.contains(&t.node_id) {
                        continue;
                    }
                    match by_slot.get(&t.slot) {
                        Some(cur) if !prefer(t, cur) => {}
                        _ => {
                            by_slot.insert(t.slot, t);
                        }
                    }
                }
                let mut running = 0;
                for (slot, t) in &by_slot {
                    let next = rows.len() as u64 + 1;
                    let row = *rows.entry(*slot).or_insert(next);
                    if !terminal(t.desired_state) && observed(t) == TaskState::Running as i32 {
                        running += 1;
                    }
                    if replicas <= MAX_ROWS && row <= replicas {
                        task_row(screen, &format!("{row}/{replicas}"), t, 9);
                    }
                }
                overall(screen, running, replicas);
                running == replicas
            }
            Tracker::Global { started } => {
                let mut by_node: BTreeMap<&str, &api::Task> = BTreeMap::new();
                for t in tasks {
                    if rank(t.desired_state).is_none() || rank(observed(t)).is_none() {
                        continue;
                    }
                    match by_node.get(t.node_id.as_str()) {
                        Some(cur) if !prefer(t, cur) => {}
                        _ => {
                            by_node.insert(&t.node_id, t);
                        }
                    }
                }
                // The orchestrator makes the tasks of all eligible nodes at once: their number
                // is the goal.
                let nodes = by_node.len() as u64;
                if nodes == 0 {
                    screen.set("overall progress", "waiting for new tasks", None);
                    return false;
                }
                if !*started {
                    overall(screen, 0, nodes);
                    *started = true;
                }
                let mut running = 0;
                for (node, t) in &by_node {
                    if !active.contains(*node) {
                        continue;
                    }
                    if !terminal(t.desired_state) && observed(t) == TaskState::Running as i32 {
                        running += 1;
                    }
                    if nodes <= MAX_ROWS {
                        let short: String = node.chars().take(12).collect();
                        task_row(screen, &short, t, 9);
                    }
                }
                overall(screen, running, nodes);
                running == nodes
            }
            Tracker::ReplicatedJob {
                iteration,
                total,
                concurrent,
                rows,
                started,
            } => {
                let total = *total;
                if !*started {
                    job_rows(screen, 0, 0, total, *concurrent);
                    if total <= MAX_ROWS {
                        for i in 1..=total {
                            screen.set(&format!("{i}/{total}"), "", None);
                        }
                    }
                    *started = true;
                }
                let mut by_slot: BTreeMap<u64, &api::Task> = BTreeMap::new();
                for t in tasks {
                    if t.job_iteration.map(|v| v.index) != Some(*iteration)
                        || rank(t.desired_state).is_none()
                        || rank(observed(t)).is_none()
                    {
                        continue;
                    }
                    match by_slot.get(&t.slot) {
                        Some(cur) if rank(observed(cur)) <= rank(observed(t)) => {}
                        _ => {
                            by_slot.insert(t.slot, t);
                        }
                    }
                }
                let (mut active_tasks, mut complete) = (0, 0);
                for (slot, t) in &by_slot {
                    let next = rows.len() as u64 + 1;
                    let row = *rows.entry(*slot).or_insert(next);
                    if observed(t) == TaskState::Complete as i32 {
                        complete += 1;
                    } else if !terminal(observed(t)) {
                        active_tasks += 1;
                    }
                    if total <= MAX_ROWS && row <= total {
                        task_row(screen, &format!("{row}/{total}"), t, 10);
                    }
                }
                job_rows(screen, active_tasks, complete, total, *concurrent);
                complete >= total
            }
            Tracker::GlobalJob { iteration, nodes } => {
                let this: Vec<&api::Task> = tasks
                    .iter()
                    .filter(|t| t.job_iteration.map(|v| v.index) == Some(*iteration))
                    .collect();
                if nodes.is_none() {
                    if this.is_empty() && !active.is_empty() {
                        screen.set("job progress", "waiting for tasks", None);
                        return false;
                    }
                    *nodes = Some(this.iter().map(|t| t.node_id.clone()).collect());
                }
                let nodes = nodes.as_ref().expect("set above");
                let mut by_node: BTreeMap<&str, &api::Task> = BTreeMap::new();
                for t in this {
                    if !nodes.contains(&t.node_id) || rank(observed(t)).is_none() {
                        continue;
                    }
                    match by_node.get(t.node_id.as_str()) {
                        Some(cur) if rank(observed(cur)) <= rank(observed(t)) => {}
                        _ => {
                            by_node.insert(&t.node_id, t);
                        }
                    }
                }
                let total = nodes.len() as u64;
                let mut complete = 0;
                for (node, t) in &by_node {
                    if observed(t) == TaskState::Complete as i32 {
                        complete += 1;
                    }
                    if total <= MAX_ROWS {
                        let short: String = node.chars().take(12).collect();
                        task_row(screen, &short, t, 10);
                    }
                }
                screen.set(
                    "job progress",
                    &format!("{complete} out of {total} complete"),
                    Some((complete, total)),
                );
                complete == total
            }
        }
    }
}

/// The overall rows of a replicated job: completions, and active tasks out of those that may
/// run at once.
fn job_rows(screen: &mut Screen, active: u64, complete: u64, total: u64, concurrent: u64) {
    screen.set(
        "job progress",
        &format!("{complete} out of {total} complete"),
        Some((complete, total)),
    );
    let may_run = total.saturating_sub(complete).min(concurrent);
    screen.set(
        "active tasks",
        &format!("{active} out of {may_run} tasks"),
        None,
    );
}

/// One row: `id: text [bar]`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    text: String,
    bar: Option<(u64, u64)>,
}

impl Row {
    fn line(&self) -> String {
        let mut line = if self.id.is_empty() {
            self.text.clone()
        } else {
            format!("{}: {}", self.id, self.text)
        };
        if let Some((done, of)) = self.bar {
            line.push(' ');
            line.push_str(&bar(done, of));
        }
        line
    }
}

/// `[=====>    ]`: `done` out of `of`, full (no head) when done.
fn bar(done: u64, of: u64) -> String {
    let filled = (BAR_WIDTH as u64 * done.min(of))
        .checked_div(of)
        .map_or(BAR_WIDTH, |f| f as usize);
    let mut s = String::with_capacity(BAR_WIDTH + 2);
    s.push('[');
    if filled >= BAR_WIDTH {
        s.push_str(&"=".repeat(BAR_WIDTH));
    } else if filled > 0 {
        s.push_str(&"=".repeat(filled - 1));
        s.push('>');
        s.push_str(&" ".repeat(BAR_WIDTH - filled));
    } else {
        s.push_str(&" ".repeat(BAR_WIDTH));
    }
    s.push(']');
    s
}

/// The rows shown and how they reach the output: redrawn in place on a terminal, as changed
/// lines elsewhere.
struct Screen {
    tty: bool,
    rows: Vec<Row>,
    /// Terminal: lines drawn last time (the cursor is below them). Plain: the text each row
    /// was last printed with.
    drawn: usize,
    printed: HashMap<String, String>,
    /// Whether a row changed since the last draw.
    dirty: bool,
}

impl Screen {
    fn new(tty: bool) -> Screen {
        Screen {
            tty,
            rows: Vec::new(),
            drawn: 0,
            printed: HashMap::new(),
            dirty: false,
        }
    }

    /// Sets row `id` (added below the others when new). Rows with an empty id are messages,
    /// each its own row.
    fn set(&mut self, id: &str, text: &str, bar: Option<(u64, u64)>) {
        let row = Row {
            id: id.to_string(),
            text: text.to_string(),
            bar,
        };
        match self.rows.iter_mut().find(|r| !id.is_empty() && r.id == id) {
            Some(r) if *r == row => {}
            Some(r) => {
                *r = row;
                self.dirty = true;
            }
            None => {
                self.rows.push(row);
                self.dirty = true;
            }
        }
    }

    /// Writes what changed.
    fn draw(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        emit(&self.frame());
    }

    /// The text that brings the output up to date.
    fn frame(&mut self) -> String {
        let mut out = String::new();
        if self.tty {
            // Back to the first row drawn, then every row again, each line cleared first.
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for r in &self.rows {
                out.push_str("\r\x1b[2K");
                out.push_str(&r.line());
                out.push('\n');
            }
            self.drawn = self.rows.len();
            return out;
        }
        // The changed rows: a frame's task rows first, then the totals they add up to, then
        // the rest (verify, rollback, messages), so the lines read in the order things happen.
        let mut changed: Vec<(u8, String)> = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            if r.text.trim().is_empty() {
                continue;
            }
            // Messages (no id) are printed once, by position.
            let key = if r.id.is_empty() {
                format!("\0{i}")
            } else {
                r.id.clone()
            };
            if self.printed.get(&key) == Some(&r.text) {
                continue;
            }
            let class = match r.id.as_str() {
                "overall progress" | "job progress" | "active tasks" => 1,
                "" | "verify" | "rollback" | "job" => 2,
                _ => 0,
            };
            let line = if r.id.is_empty() {
                r.text.trim_end().to_string()
            } else {
                format!("{}: {}", r.id, r.text.trim_end())
            };
            changed.push((class, line));
            self.printed.insert(key, r.text.clone());
        }
        changed.sort_by_key(|(class, _)| *class);
        for (_, line) in changed {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(slot: u64, desired: TaskState, state: TaskState, err: &str) -> api::Task {
        api::Task {
            id: format!("t{slot}{}", state as i32),
            slot,
            node_id: "n1".into(),
            desired_state: desired as i32,
            status: Some(api::TaskStatus {
                state: state as i32,
                err: err.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn replicated(replicas: u64) -> api::Service {
        api::Service {
            id: "s1".into(),
            spec: Some(api::ServiceSpec {
                mode: Some(Mode::Replicated(api::ReplicatedService { replicas })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn bars_fill_with_the_state() {
        assert_eq!(bar(0, 9), format!("[{}]", " ".repeat(30)));
        assert_eq!(bar(3, 9), format!("[{}>{}]", "=".repeat(9), " ".repeat(20)));
        assert_eq!(bar(9, 9), format!("[{}]", "=".repeat(30)));
        assert_eq!(error_text("a\nb"), "a b");
        assert_eq!(error_text(&"x".repeat(100)).chars().count(), 75);
    }

    #[test]
    fn replicated_rows_count_running_tasks_and_prefer_the_live_task_of_a_slot() {
        let service = replicated(2);
        let mut tracker = Tracker::new(&service).expect("replicated");
        let mut screen = Screen::new(false);
        let active: HashSet<String> = ["n1".to_string()].into();
        let tasks = vec![
            task(1, TaskState::Running, TaskState::Running, ""),
            // A failed task of slot 2 and its replacement, still starting.
            task(2, TaskState::Shutdown, TaskState::Failed, "exit 1"),
            task(2, TaskState::Running, TaskState::Starting, ""),
        ];
        assert!(!tracker.update(&service, &tasks, &active, false, &mut screen));
        assert_eq!(
            screen.frame(),
            "1/2: running\n2/2: starting\noverall progress: 1 out of 2 tasks\n"
        );
        let tasks = vec![
            task(1, TaskState::Running, TaskState::Running, ""),
            task(2, TaskState::Running, TaskState::Running, ""),
        ];
        assert!(tracker.update(&service, &tasks, &active, false, &mut screen));
        // Only what changed is printed again.
        assert_eq!(
            screen.frame(),
            "2/2: running\noverall progress: 2 out of 2 tasks\n"
        );
        // A task on a down node does not count.
        let down = HashSet::new();
        assert!(!tracker.update(&service, &tasks, &down, false, &mut screen));
    }

    #[test]
    fn a_terminal_frame_moves_up_over_the_last_one() {
        let mut screen = Screen::new(true);
        screen.set("overall progress", "0 out of 1 tasks", None);
        screen.set("1/1", &state_text(TaskState::Pending as i32), Some((3, 9)));
        let first = screen.frame();
        assert!(!first.contains("\x1b[2A"));
        assert!(first.contains("1/1: pending   [=========>"));
        screen.set("overall progress", "1 out of 1 tasks", None);
        let second = screen.frame();
        assert!(second.starts_with("\x1b[2A\r\x1b[2Koverall progress: 1 out of 1 tasks\n"));
    }
}
