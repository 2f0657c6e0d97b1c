//! The task table shared by `service inspect`, `node inspect` and `task inspect` (SwarmKit's
//! `task.Print`): sorted by slot, newest first within a slot, tasks whose desired state is past
//! RUNNING hidden unless `all`; minwidth 4, padding 4. Only the Node column is resolved.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::common::{Ctx, enum_name, print_header};
use crate::humanize::relative_time_at;
use crate::tabwriter::TabWriter;

/// Appends the task table for `tasks` to `out`, resolving node names through `ctx`.
pub async fn print_task_table(ctx: &mut Ctx, out: &mut String, tasks: &[api::Task], all: bool) {
    let mut names = HashMap::new();
    for t in tasks {
        if !names.contains_key(&t.node_id) {
            let name = ctx.node_name(&t.node_id).await;
            names.insert(t.node_id.clone(), name);
        }
    }
    out.push_str(&render_task_table(
        tasks,
        all,
        &|id| names.get(id).cloned().unwrap_or_else(|| id.to_string()),
        SystemTime::now(),
    ));
}

/// Sort key within a slot: creation time (newest first); a task without one sorts as oldest.
fn created_ns(t: &api::Task) -> i128 {
    t.meta
        .as_ref()
        .and_then(|m| m.created_at.as_ref())
        .map(|ts| i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos))
        .unwrap_or(i128::MIN)
}

/// The task table as text (testable core of [`print_task_table`]).
pub fn render_task_table(
    tasks: &[api::Task],
    all: bool,
    node_name: &dyn Fn(&str) -> String,
    now: SystemTime,
) -> String {
    let mut sorted: Vec<&api::Task> = tasks.iter().collect();
    sorted.sort_by(|a, b| {
        a.slot
            .cmp(&b.slot)
            .then_with(|| created_ns(b).cmp(&created_ns(a)))
    });
    let mut w = TabWriter::new(4, 4, 4);
    print_header(
        &mut w,
        &[
            "Task ID",
            "Service",
            "Slot",
            "Image",
            "Desired State",
            "Last State",
            "Node",
        ],
    );
    for t in sorted {
        if !all && t.desired_state > api::TaskState::Running as i32 {
            continue;
        }
        w.line(format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.id,
            crate::common::annotations_name(t.service_annotations.as_ref()),
            t.slot,
            task_image(t),
            enum_name(t.desired_state, api::TaskState::as_str_name),
            last_state(t, now),
            node_name(&t.node_id),
        ));
    }
    w.render()
}

/// The container image of a task's spec, "" for other runtimes.
pub fn task_image(t: &api::Task) -> &str {
    match t.spec.as_ref().and_then(|s| s.runtime.as_ref()) {
        Some(api::task_spec::Runtime::Container(c)) => &c.image,
        _ => "",
    }
}

/// `<STATE> <relative timestamp>` (a missing timestamp leaves a trailing space, as Go does).
pub fn last_state(t: &api::Task, now: SystemTime) -> String {
    let status = t.status.clone().unwrap_or_default();
    let ago = status
        .timestamp
        .as_ref()
        .map(|ts| relative_time_at(ts, now))
        .unwrap_or_default();
    format!(
        "{} {ago}",
        enum_name(status.state, api::TaskState::as_str_name)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The fixed "now" of rendering tests.
    pub(crate) fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_331_891)
    }

    /// A timestamp `secs_ago` seconds before [`now`].
    pub(crate) fn ago(secs_ago: i64) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_795_331_891 - secs_ago,
            nanos: 0,
        }
    }

    /// A fake task of service `svc`.
    #[allow(clippy::too_many_arguments)] // one column of the table each
    pub(crate) fn task(
        id: &str,
        svc: &str,
        slot: u64,
        image: &str,
        desired: api::TaskState,
        state: api::TaskState,
        secs_ago: i64,
        node: &str,
    ) -> api::Task {
        api::Task {
            id: id.into(),
            slot,
            node_id: node.into(),
            service_id: format!("{svc}-id"),
            meta: Some(api::Meta {
                created_at: Some(ago(secs_ago)),
                ..Default::default()
            }),
            service_annotations: Some(api::Annotations {
                name: svc.into(),
                ..Default::default()
            }),
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(
                    api::ContainerSpec {
                        image: image.into(),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            }),
            desired_state: desired as i32,
            status: Some(api::TaskStatus {
                state: state as i32,
                timestamp: Some(ago(secs_ago)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(tasks: &[api::Task], all: bool, expected: &str) {
        let names = |id: &str| match id {
            "N1" => "node-1".to_string(),
            other => other.to_string(),
        };
        assert_eq!(render_task_table(tasks, all, &names, now()), expected);
    }

    use api::TaskState::{Pending, Running, Shutdown};

    #[test]
    fn sorted_by_slot_then_newest_and_filtered() {
        let tasks = [
            task("T3", "web", 2, "nginx:1.25", Running, Running, 12, "N1"),
            task("T1", "web", 1, "nginx:latest", Shutdown, Shutdown, 25, "N1"),
            task("T2", "web", 1, "nginx:1.25", Running, Running, 10, "N1"),
        ];
        check(
            &tasks,
            false,
            "Task ID    Service    Slot    Image         Desired State    Last State                Node\n\
             -------    -------    ----    -----         -------------    ----------                ----\n\
             T2         web        1       nginx:1.25    RUNNING          RUNNING 10 seconds ago    node-1\n\
             T3         web        2       nginx:1.25    RUNNING          RUNNING 12 seconds ago    node-1\n",
        );
        check(
            &tasks,
            true,
            "Task ID    Service    Slot    Image           Desired State    Last State                 Node\n\
             -------    -------    ----    -----           -------------    ----------                 ----\n\
             T2         web        1       nginx:1.25      RUNNING          RUNNING 10 seconds ago     node-1\n\
             T1         web        1       nginx:latest    SHUTDOWN         SHUTDOWN 25 seconds ago    node-1\n\
             T3         web        2       nginx:1.25      RUNNING          RUNNING 12 seconds ago     node-1\n",
        );
    }

    #[test]
    fn unassigned_task_has_empty_node() {
        let tasks = [task("T10", "x4", 1, "y", Running, Pending, 2, "")];
        check(
            &tasks,
            false,
            "Task ID    Service    Slot    Image    Desired State    Last State               Node\n\
             -------    -------    ----    -----    -------------    ----------               ----\n\
             T10        x4         1       y        RUNNING          PENDING 2 seconds ago    \n",
        );
    }
}
