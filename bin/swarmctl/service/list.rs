//! `swarmctl service ls`: the ID/Name/Image/Replicas table, where running replicas are RUNNING
//! tasks on nodes that are not DOWN (`ListServices`, `ListNodes`, `ListTasks`), or IDs only.

use std::collections::{HashMap, HashSet};

use clap::Args;

use super::{ServiceStatus, job_statuses, replicas_text};
use crate::common::{CmdResult, Ctx, all_nodes, emit, usage_err};
use crate::tabwriter::TabWriter;

/// Arguments of `service ls`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only display IDs
    #[arg(short, long)]
    quiet: bool,
    /// Positional arguments are refused with SwarmKit's message rather than clap's.
    #[arg(hide = true)]
    extra: Vec<String>,
}

/// Runs `service ls`.
pub async fn run(a: ListArgs, ctx: &mut Ctx) -> CmdResult {
    if !a.extra.is_empty() {
        return Err(usage_err("ls command takes no arguments"));
    }
    let services = ctx
        .client
        .list_services(api::ListServicesRequest::default())
        .await?
        .into_inner()
        .services;
    let nodes = all_nodes(ctx).await?;
    if a.quiet {
        emit(
            &services
                .iter()
                .map(|s| format!("{}\n", s.id))
                .collect::<String>(),
        );
        return Ok(());
    }
    let tasks = ctx
        .client
        .list_tasks(api::ListTasksRequest::default())
        .await?
        .into_inner()
        .tasks;
    let jobs = job_statuses(ctx, &services).await?;
    emit(&render_list(
        &services,
        &count_running(&tasks, &nodes),
        &jobs,
    ));
    Ok(())
}

/// RUNNING tasks per service ID, counting only tasks on nodes that are not DOWN.
pub fn count_running(tasks: &[api::Task], nodes: &[api::Node]) -> HashMap<String, usize> {
    let down = api::node_status::State::Down as i32;
    let live: HashSet<&str> = nodes
        .iter()
        .filter(|n| n.status.as_ref().map_or(0, |s| s.state) != down)
        .map(|n| n.id.as_str())
        .collect();
    let mut running = HashMap::new();
    for t in tasks {
        let state = t.status.as_ref().map_or(0, |s| s.state);
        if state == api::TaskState::Running as i32 && live.contains(t.node_id.as_str()) {
            *running.entry(t.service_id.clone()).or_insert(0) += 1;
        }
    }
    running
}

/// The `service ls` table, services in the order the manager returned them.
pub fn render_list(
    services: &[api::Service],
    running: &HashMap<String, usize>,
    jobs: &HashMap<String, ServiceStatus>,
) -> String {
    let mut w = TabWriter::new(0, 4, 2);
    w.line("ID\tName\tImage\tReplicas");
    w.line("--\t----\t-----\t--------");
    for s in services {
        let spec = s.spec.as_ref();
        let name = spec
            .and_then(|sp| sp.annotations.as_ref())
            .map_or("", |a| a.name.as_str());
        let image = match spec
            .and_then(|sp| sp.task.as_ref())
            .and_then(|t| t.runtime.as_ref())
        {
            Some(api::task_spec::Runtime::Container(c)) => c.image.as_str(),
            _ => "",
        };
        let replicas = replicas_text(s, running.get(&s.id).copied().unwrap_or(0), jobs.get(&s.id));
        w.line(format!("{}\t{name}\t{image}\t{replicas}", s.id));
    }
    w.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::service_spec::Mode;
    use testkit::fixtures::node_in_state as node;

    fn service(id: &str, name: &str, image: Option<&str>, mode: Mode) -> api::Service {
        api::Service {
            id: id.into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                task: Some(api::TaskSpec {
                    runtime: image.map(|i| {
                        api::task_spec::Runtime::Container(Box::new(api::ContainerSpec {
                            image: i.into(),
                            ..Default::default()
                        }))
                    }),
                    ..Default::default()
                }),
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(service: &str, node: &str, state: api::TaskState) -> api::Task {
        api::Task {
            service_id: service.into(),
            node_id: node.into(),
            status: Some(api::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_excludes_down_nodes_and_other_states() {
        use api::TaskState::{Pending, Running, Shutdown};
        use api::node_status::State::{Down, Ready};
        let nodes = [
            node("n1", Ready),
            node("n2", Down),
            api::Node {
                id: "n3".into(),
                ..Default::default()
            },
        ];
        let tasks = [
            task("s1", "n1", Running),
            task("s1", "n2", Running),
            task("s1", "n3", Running),
            task("s1", "n1", Shutdown),
            task("s2", "", Pending),
            task("s2", "gone", Running),
        ];
        let running = count_running(&tasks, &nodes);
        assert_eq!(running.get("s1"), Some(&2));
        assert_eq!(running.get("s2"), None);
    }

    #[test]
    fn table_layout() {
        let services = [
            service(
                "S2-id....................",
                "x4",
                Some("y"),
                Mode::Replicated(api::ReplicatedService { replicas: 1 }),
            ),
            service(
                "S3-id....................",
                "glob",
                Some("g:1"),
                Mode::Global(api::GlobalService {}),
            ),
            service(
                "S1-id....................",
                "web",
                Some("nginx:1.25"),
                Mode::Replicated(api::ReplicatedService { replicas: 3 }),
            ),
            service(
                "S4-id....................",
                "batch",
                Some("b"),
                Mode::ReplicatedJob(api::ReplicatedJob {
                    max_concurrent: 2,
                    total_completions: 6,
                }),
            ),
        ];
        let running = HashMap::from([
            ("S1-id....................".to_string(), 3),
            ("S3-id....................".to_string(), 3),
        ]);
        let jobs = HashMap::from([(
            "S4-id....................".to_string(),
            ServiceStatus {
                service_id: "S4-id....................".into(),
                desired_tasks: 2,
                running_tasks: 2,
                completed_tasks: 4,
            },
        )]);
        assert_eq!(
            render_list(&services, &running, &jobs),
            "ID                         Name   Image       Replicas\n\
             --                         ----   -----       --------\n\
             S2-id....................  x4     y           0/1\n\
             S3-id....................  glob   g:1         global\n\
             S1-id....................  web    nginx:1.25  3/3\n\
             S4-id....................  batch  b           2/2 (4/6 completed)\n"
        );
    }

    #[test]
    fn non_container_runtime_has_empty_image() {
        let services = [service(
            "S1",
            "gen",
            None,
            Mode::Replicated(api::ReplicatedService { replicas: 2 }),
        )];
        assert_eq!(
            render_list(&services, &HashMap::new(), &HashMap::new()),
            "ID  Name  Image  Replicas\n--  ----  -----  --------\nS1  gen          0/2\n"
        );
    }
}
