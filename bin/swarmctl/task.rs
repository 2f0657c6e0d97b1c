//! `swarmctl task`: ls, inspect and remove (SwarmKit's `swarmd/cmd/swarmctl/task`). The task
//! table of inspect outputs lives in `tasks.rs`; rendering here is done by pure functions.

use std::collections::HashMap;
use std::time::SystemTime;

use api::gofmt::quote;
use clap::{Args, Subcommand};

use crate::common::{
    CmdResult, Ctx, Positionals, emit, enum_name, one_arg, print_header, usage_err,
};
use crate::tabwriter::TabWriter;
use crate::tasks::last_state;

/// Task management
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Inspect a task
    #[command(override_usage = "inspect <task ID>")]
    Inspect(Positionals),
    /// List tasks
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Remove a task
    #[command(visible_alias = "rm", override_usage = "remove <task ID>")]
    Remove(Positionals),
}

/// Flags of `task ls`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Show all tasks (default shows just running)
    #[arg(short = 'a', long = "all")]
    all: bool,
    /// Only display IDs
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one task command.
pub async fn run(cmd: TaskCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        TaskCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let tasks = ctx
                .client
                .list_tasks(api::ListTasksRequest::default())
                .await?
                .into_inner()
                .tasks;
            let shown: Vec<api::Task> = tasks
                .into_iter()
                .filter(|t| a.all || t.desired_state <= api::TaskState::Running as i32)
                .collect();
            if a.quiet {
                emit(
                    &shown
                        .iter()
                        .map(|t| format!("{}\n", t.id))
                        .collect::<String>(),
                );
                return Ok(());
            }
            let mut names = HashMap::new();
            for t in &shown {
                if !names.contains_key(&t.service_id) {
                    let n = ctx.service_name(&t.service_id).await;
                    names.insert(t.service_id.clone(), n);
                }
                if !names.contains_key(&t.node_id) {
                    let n = ctx.node_name(&t.node_id).await;
                    names.insert(t.node_id.clone(), n);
                }
            }
            let resolve = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
            emit(&render_list(&shown, &resolve, SystemTime::now()));
            Ok(())
        }
        TaskCommand::Inspect(a) => {
            let id = one_arg(
                &a.args,
                "task ID missing",
                "inspect command takes exactly 1 argument",
            )?;
            let req = api::GetTaskRequest {
                task_id: id.to_string(),
            };
            let task = ctx
                .client
                .get_task(req)
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            let req = api::ListTasksRequest {
                filters: Some(api::list_tasks_request::Filters {
                    service_ids: vec![task.service_id.clone()],
                    ..Default::default()
                }),
            };
            let previous: Vec<api::Task> = ctx
                .client
                .list_tasks(req)
                .await?
                .into_inner()
                .tasks
                .into_iter()
                .filter(|t| t.slot == task.slot)
                .collect();
            let service = ctx.service_name(&task.service_id).await;
            let node = ctx.node_name(&task.node_id).await;
            let mut out = render_summary(&task, &service, &node);
            if !previous.is_empty() {
                out.push_str("\n===> Task Parents\n");
                crate::tasks::print_task_table(ctx, &mut out, &previous, true).await;
            }
            emit(&out);
            Ok(())
        }
        TaskCommand::Remove(a) => {
            let id = one_arg(
                &a.args,
                "task ID missing",
                "remove command takes exactly 1 argument",
            )?;
            let req = api::RemoveTaskRequest {
                task_id: id.to_string(),
            };
            ctx.client.remove_task(req).await?;
            emit(&format!("{id}\n"));
            Ok(())
        }
    }
}

/// The `task ls` table; `resolve` maps service and node IDs to names.
pub fn render_list(
    tasks: &[api::Task],
    resolve: &dyn Fn(&str) -> String,
    now: SystemTime,
) -> String {
    let mut w = TabWriter::new(0, 4, 2);
    print_header(
        &mut w,
        &["ID", "Service", "Desired State", "Last State", "Node"],
    );
    for t in tasks {
        w.line(format!(
            "{}\t{}.{}\t{}\t{}\t{}",
            t.id,
            resolve(&t.service_id),
            t.slot,
            enum_name(t.desired_state, api::TaskState::as_str_name),
            last_state(t, now),
            resolve(&t.node_id),
        ));
    }
    w.render()
}

/// The status block of `task inspect`.
fn status_lines(w: &mut TabWriter, t: &api::Task) {
    let status = t.status.clone().unwrap_or_default();
    w.line("Status\t");
    w.line(format!(
        "  Desired State\t: {}",
        enum_name(t.desired_state, api::TaskState::as_str_name)
    ));
    w.line(format!(
        "  Last State\t: {}",
        enum_name(status.state, api::TaskState::as_str_name)
    ));
    if let Some(ts) = &status.timestamp {
        w.line(format!(
            "  Timestamp\t: {}",
            crate::humanize::rfc3339_nanos(ts)
        ));
    }
    if !status.message.is_empty() {
        w.line(format!("  Message\t: {}", status.message));
    }
    if !status.err.is_empty() {
        w.line(format!("  Error\t: {}", status.err));
    }
    let Some(api::task_status::RuntimeStatus::Container(c)) = &status.runtime_status else {
        return;
    };
    if !c.container_id.is_empty() {
        w.line(format!("  ContainerID:\t: {}", c.container_id));
    }
    if c.pid != 0 {
        w.line(format!("  Pid\t: {}", c.pid));
    }
    if status.state > api::TaskState::Running as i32 {
        w.line(format!("  ExitCode\t: {}", c.exit_code));
    }
    if let Some(ps) = &status.port_status
        && !ps.ports.is_empty()
    {
        let ports: Vec<String> = ps
            .ports
            .iter()
            .map(|p| {
                format!(
                    "0.0.0.0:{}->{}/{}",
                    p.published_port,
                    p.target_port,
                    enum_name(p.protocol, api::port_config::Protocol::as_str_name).to_lowercase()
                )
            })
            .collect();
        w.line(format!("Ports\t: {}", ports.join(", ")));
    }
}

/// The `task inspect` summary (without the "Task Parents" table).
pub fn render_summary(t: &api::Task, service: &str, node: &str) -> String {
    let mut w = TabWriter::new(8, 8, 8);
    w.line(format!("ID\t: {}", t.id));
    w.line(format!("Slot\t: {}", t.slot));
    w.line(format!("Service\t: {service}"));
    status_lines(&mut w, t);
    w.line(format!("Node\t: {node}"));
    w.line("Spec\t");
    let ctr = match t.spec.as_ref().and_then(|s| s.runtime.as_ref()) {
        Some(api::task_spec::Runtime::Container(c)) => api::ContainerSpec::clone(c),
        _ => api::ContainerSpec::default(),
    };
    if !ctr.image.is_empty() {
        w.line(format!("  Image\t: {}", ctr.image));
    }
    // The reference tests the joined value for emptiness, not the formatted line.
    let command = ctr.command.join(" ");
    if !command.is_empty() {
        w.line(format!("  Command\t: {}", quote(&command)));
    }
    if !ctr.args.is_empty() {
        w.line(format!("  Args\t: [{}]", ctr.args.join(", ")));
    }
    if !ctr.env.is_empty() {
        w.line(format!("  Env\t: [{}]", ctr.env.join(", ")));
    }
    if !ctr.secrets.is_empty() {
        w.line("  Secrets:");
        for s in &ctr.secrets {
            let (mode, target) = match &s.target {
                Some(api::secret_reference::Target::File(f)) => ("FILE", f.name.as_str()),
                _ => ("", ""),
            };
            w.line(format!("    [{mode}] {}:{target}", s.secret_name));
        }
    }
    if !ctr.configs.is_empty() {
        w.line("  Configs:");
        for c in &ctr.configs {
            let (mode, target) = match &c.target {
                Some(api::config_reference::Target::File(f)) => ("FILE", f.name.as_str()),
                _ => ("", ""),
            };
            w.line(format!("    [{mode}] {}:{target}", c.config_name));
        }
    }
    crate::common::attachment_lines(&mut w, "Networks:", &t.networks);
    w.render()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tasks::tests::{now, task};
    use api::TaskState::{Pending, Rejected, Running};

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected, "\ngot:\n{got}\nexpected:\n{expected}");
    }

    #[test]
    fn list_table_resolves_service_and_node() {
        let tasks = [
            task(
                "T2-id....................",
                "web",
                2,
                "nginx",
                Running,
                Running,
                4,
                "N2",
            ),
            task(
                "T10-id...................",
                "x4",
                1,
                "y",
                Running,
                Pending,
                7,
                "",
            ),
        ];
        let resolve = |id: &str| match id {
            "web-id" => "web".to_string(),
            "x4-id" => "x4".to_string(),
            "N2" => "node-2".to_string(),
            other => other.to_string(),
        };
        check(
            render_list(&tasks, &resolve, now()),
            "ID                         Service  Desired State  Last State             Node\n\
             --                         -------  -------------  ----------             ----\n\
             T2-id....................  web.2    RUNNING        RUNNING 4 seconds ago  node-2\n\
             T10-id...................  x4.1     RUNNING        PENDING 7 seconds ago  \n",
        );
    }

    #[test]
    fn summary_of_a_running_container() {
        let mut t = task(
            "T7-id....................",
            "web",
            1,
            "nginx:1.25",
            Running,
            Running,
            0,
            "N1",
        );
        let status = t.status.as_mut().expect("status");
        status.timestamp = Some(prost_types::Timestamp {
            seconds: 1_795_331_914,
            nanos: 893_145_622,
        });
        status.message = "started".into();
        status.runtime_status = Some(api::task_status::RuntimeStatus::Container(
            api::ContainerStatus {
                container_id: "abc".into(),
                pid: 37279,
                exit_code: 0,
            },
        ));
        if let Some(api::task_spec::Runtime::Container(c)) =
            t.spec.as_mut().and_then(|s| s.runtime.as_mut())
        {
            c.command = vec!["/bin/sh".into()];
            c.args = vec!["x".into(), "y".into()];
            c.env = vec!["A=1".into(), "B=2".into()];
            c.secrets = vec![api::SecretReference {
                secret_name: "mysecret".into(),
                target: Some(api::secret_reference::Target::File(api::FileTarget {
                    name: "target.txt".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }];
        }
        check(
            render_summary(&t, "web", "node-1"),
            "ID                     : T7-id....................\n\
             Slot                   : 1\n\
             Service                : web\n\
             Status                 \n  \
               Desired State        : RUNNING\n  \
               Last State           : RUNNING\n  \
               Timestamp            : 2026-11-22T07:18:34.893145622Z\n  \
               Message              : started\n  \
               ContainerID:         : abc\n  \
               Pid                  : 37279\n\
             Node                   : node-1\n\
             Spec                   \n  \
               Image                : nginx:1.25\n  \
               Command              : \"/bin/sh\"\n  \
               Args                 : [x, y]\n  \
               Env                  : [A=1, B=2]\n  \
               Secrets:\n    \
                 [FILE] mysecret:target.txt\n",
        );
    }

    #[test]
    fn summary_of_a_rejected_task_shows_exit_code() {
        let mut t = task("T1", "web", 1, "img", Running, Rejected, 0, "");
        let status = t.status.as_mut().expect("status");
        status.timestamp = None;
        status.err = "boom".into();
        status.runtime_status = Some(api::task_status::RuntimeStatus::Container(
            api::ContainerStatus::default(),
        ));
        let out = render_summary(&t, "web", "");
        let lines: Vec<&str> = out.lines().collect();
        let err = lines
            .iter()
            .position(|l| l.starts_with("  Error "))
            .expect("error line");
        assert!(lines[err].ends_with(": boom"), "{out}");
        assert!(
            lines[err + 1].starts_with("  ExitCode ") && lines[err + 1].ends_with(": 0"),
            "{out}"
        );
        assert!(!out.contains("Command"), "{out}");
        assert!(!out.contains("Timestamp"), "{out}");
    }

    /// An attachment to a copy of the network `name` (ID `<name>-id`).
    pub(crate) fn attachment(
        name: &str,
        addresses: &[&str],
        aliases: &[&str],
    ) -> api::NetworkAttachment {
        api::NetworkAttachment {
            network: Some(api::Network {
                id: format!("{name}-id"),
                spec: Some(api::NetworkSpec {
                    annotations: Some(api::Annotations {
                        name: name.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn summary_ends_with_the_attachments_aligned_on_their_own() {
        let mut t = task("T1", "web", 1, "img", Running, Pending, 0, "");
        t.status.as_mut().expect("status").timestamp = None;
        let without = render_summary(&t, "web", "");
        t.networks = vec![
            attachment("ingress", &["10.0.0.5/24"], &[]),
            attachment("backend", &["10.0.1.3/24", "fd00::3/64"], &["db", "cache"]),
        ];
        // A copy of a network without a name shows its ID.
        let mut unnamed = attachment("", &["10.0.2.4/24"], &[]);
        unnamed.network.as_mut().expect("network").id = "K9".into();
        t.networks.push(unnamed);
        let with = render_summary(&t, "web", "");
        check(
            with.strip_prefix(&without)
                .expect("the same lines first")
                .to_string(),
            "Networks:\n  \
               ingress          : 10.0.0.5/24\n  \
               backend          : 10.0.1.3/24, fd00::3/64\n    \
                 Aliases        : db, cache\n  \
               K9               : 10.0.2.4/24\n",
        );
    }
}
