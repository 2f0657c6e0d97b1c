//! `swarmctl service inspect`: the summary block of spec 1.3 (ID, name, labels, replicas, update
//! status, template with container, resources, networks, ports, mounts, secrets, configs, log
//! driver), then (ours) the VIPs, followed by the service's task table (main's
//! `tasks::print_task_table`).

use std::fmt::Write;
use std::time::SystemTime;

use api::gofmt::{format_g, quote};
use clap::Args;

use super::{ServiceStatus, job_statuses, replicas_text};
use crate::common::{CmdResult, Ctx, emit, get_service, usage_err};
use crate::humanize::{iec_bytes, relative_time_at};
use crate::tabwriter::TabWriter;
use crate::tasks::print_task_table;

/// Arguments of `service inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// service ID or name
    #[arg(value_name = "service ID")]
    service: Vec<String>,
    /// Show all tasks (default shows just running)
    #[arg(short, long)]
    all: bool,
}

/// Runs `service inspect`.
pub async fn run(a: InspectArgs, ctx: &mut Ctx) -> CmdResult {
    match a.service.len() {
        0 => return Err(usage_err("service ID missing")),
        1 => {}
        _ => return Err(usage_err("inspect command takes exactly 1 argument")),
    }
    let service = get_service(ctx, &a.service[0]).await?;
    let req = api::ListTasksRequest {
        filters: Some(api::list_tasks_request::Filters {
            service_ids: vec![service.id.clone()],
            ..Default::default()
        }),
    };
    let tasks = ctx.client.list_tasks(req).await?.into_inner().tasks;
    let running = tasks
        .iter()
        .filter(|t| t.status.as_ref().map_or(0, |s| s.state) == api::TaskState::Running as i32)
        .count();
    let jobs = job_statuses(ctx, std::slice::from_ref(&service)).await?;
    let mut out = render_summary(&service, running, jobs.get(&service.id), SystemTime::now());
    let mut vips = Vec::new();
    for vip in service.endpoint.iter().flat_map(|e| &e.virtual_ips) {
        vips.push((ctx.network_name(&vip.network_id).await, vip.addr.clone()));
    }
    out.push_str(&render_virtual_ips(&vips));
    if !tasks.is_empty() {
        out.push('\n');
        print_task_table(ctx, &mut out, &tasks, a.all).await;
    }
    emit(&out);
    Ok(())
}

/// Go's `text/tabwriter` over `raw`: complete lines are aligned, a trailing partial line (the
/// `Networks:` line that SwarmKit leaves open when nothing follows) is copied as is.
fn tabulate(raw: &str) -> String {
    let mut w = TabWriter::new(8, 8, 8);
    let partial = match raw.rfind('\n') {
        Some(i) => {
            for line in raw[..i].split('\n') {
                w.line(line);
            }
            &raw[i + 1..]
        }
        None => raw,
    };
    let mut out = w.render();
    out.push_str(partial);
    out
}

fn print_resources(raw: &mut String, r: &api::Resources) {
    if r.nano_cpus != 0 {
        let _ = writeln!(raw, "      CPU\t: {}", format_g(r.nano_cpus as f64 / 1e9));
    }
    if r.memory_bytes != 0 {
        let _ = writeln!(raw, "      Memory\t: {}", iec_bytes(r.memory_bytes));
    }
    if !r.generic.is_empty() {
        raw.push_str("      Generic Resources\t\n");
    }
    for g in &r.generic {
        use api::generic_resource::Resource;
        let (kind, value) = match &g.resource {
            Some(Resource::DiscreteResourceSpec(d)) => (d.kind.clone(), d.value.to_string()),
            Some(Resource::NamedResourceSpec(n)) => (n.kind.clone(), n.value.clone()),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(raw, "        {kind}\t: {value}");
    }
}

/// The summary part of `service inspect`; `running` = tasks of the service in RUNNING, `job` a
/// job's task counts, `now`
/// the time relative update timestamps are measured from.
pub fn render_summary(
    service: &api::Service,
    running: usize,
    job: Option<&ServiceStatus>,
    now: SystemTime,
) -> String {
    let mut raw = String::new();
    let default_spec = api::ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let default_task = api::TaskSpec::default();
    let task = spec.task.as_ref().unwrap_or(&default_task);
    let annotations = spec.annotations.clone().unwrap_or_default();

    if !service.id.is_empty() {
        let _ = writeln!(raw, "ID\t: {}", service.id);
    }
    if !annotations.name.is_empty() {
        let _ = writeln!(raw, "Name\t: {}", annotations.name);
    }
    if !annotations.labels.is_empty() {
        raw.push_str("Labels\t\n");
        for (k, v) in &annotations.labels {
            let _ = writeln!(raw, "  {k}\t: {v}");
        }
    }
    let replicas = replicas_text(service, running, job);
    if !replicas.is_empty() {
        let _ = writeln!(raw, "Replicas\t: {replicas}");
    }

    if let Some(us) = &service.update_status {
        use api::update_status::UpdateState;
        let state = UpdateState::try_from(us.state).unwrap_or(UpdateState::Unknown);
        raw.push_str("Update Status\t\n");
        let _ = writeln!(raw, " State\t: {}", state.as_str_name());
        if let Some(ts) = &us.started_at {
            let _ = writeln!(raw, " Started\t: {}", relative_time_at(ts, now));
        }
        if state == UpdateState::Completed
            && let Some(ts) = &us.completed_at
        {
            let _ = writeln!(raw, " Completed\t: {}", relative_time_at(ts, now));
        }
        let _ = writeln!(raw, " Message\t: {}", us.message);
    }

    raw.push_str("Template\t\n");
    let container = match &task.runtime {
        Some(api::task_spec::Runtime::Container(c)) => Some(c),
        _ => None,
    };
    if let Some(c) = container {
        raw.push_str(" Container\t\n");
        if !c.image.is_empty() {
            let _ = writeln!(raw, "  Image\t: {}", c.image);
        }
        let command = c.command.join(" ");
        if !command.is_empty() {
            let _ = writeln!(raw, "  Command\t: {}", quote(&command));
        }
        let args = c.args.join(", ");
        if !args.is_empty() {
            let _ = writeln!(raw, "  Args\t: [{args}]");
        }
        let env = c.env.join(", ");
        if !env.is_empty() {
            let _ = writeln!(raw, "  Env\t: [{env}]");
        }
    }
    if let Some(p) = &task.placement {
        let constraints = p.constraints.join(", ");
        if !constraints.is_empty() {
            let _ = writeln!(raw, "  Constraints\t: {constraints}");
        }
    }
    if let Some(res) = &task.resources {
        raw.push_str("  Resources\t\n");
        if let Some(r) = &res.reservations {
            raw.push_str("    Reservations:\t\n");
            print_resources(&mut raw, r);
        }
        if let Some(l) = &res.limits {
            raw.push_str("    Limits:\t\n");
            print_resources(&mut raw, l);
        }
    }
    // SwarmKit ends this line only when the Ports block follows.
    if !task.networks.is_empty() {
        raw.push_str("  Networks:");
        for n in &task.networks {
            let _ = write!(raw, " {}", n.target);
        }
    }
    if let Some(ep) = &service.endpoint
        && !ep.ports.is_empty()
    {
        raw.push_str("\nPorts:\n");
        for p in &ep.ports {
            let proto = api::port_config::Protocol::try_from(p.protocol)
                .map_or_else(|_| p.protocol.to_string(), |v| v.as_str_name().to_string());
            let _ = writeln!(raw, "    - Name\t= {}", p.name);
            let _ = writeln!(raw, "      Protocol\t= {proto}");
            let _ = writeln!(raw, "      Port\t= {}", p.target_port);
            let _ = writeln!(raw, "      SwarmPort\t= {}", p.published_port);
        }
    }
    if let Some(c) = container {
        if !c.mounts.is_empty() {
            raw.push_str("  Mounts:\n");
            for m in &c.mounts {
                let kind = api::mount::Type::try_from(m.r#type)
                    .map_or_else(|_| m.r#type.to_string(), |t| t.as_str_name().to_lowercase());
                let _ = writeln!(raw, "    - target = {}", m.target);
                let _ = writeln!(raw, "      source = {}", m.source);
                let _ = writeln!(raw, "      readonly = {}", m.readonly);
                let _ = writeln!(raw, "      type = {kind}");
            }
        }
        if !c.secrets.is_empty() {
            raw.push_str("  Secrets:\n");
            for s in &c.secrets {
                let (mode, target) = match &s.target {
                    Some(api::secret_reference::Target::File(f)) => ("FILE", f.name.as_str()),
                    _ => ("", ""),
                };
                let _ = writeln!(
                    raw,
                    "    [{mode}] {}@{}:{target}",
                    s.secret_name, s.secret_id
                );
            }
        }
        if !c.configs.is_empty() {
            raw.push_str("  Configs:\n");
            for cr in &c.configs {
                let (mode, target) = match &cr.target {
                    Some(api::config_reference::Target::File(f)) => ("FILE", f.name.as_str()),
                    _ => ("", ""),
                };
                let _ = writeln!(
                    raw,
                    "    [{mode}] {}@{}:{target}",
                    cr.config_name, cr.config_id
                );
            }
        }
    }
    if let Some(d) = &task.log_driver {
        let _ = writeln!(raw, "  LogDriver\t: {}", d.name);
        for (k, v) in &d.options {
            if v.is_empty() {
                let _ = writeln!(raw, "    {k}\t");
            } else {
                let _ = writeln!(raw, "    {k}\t: {v}");
            }
        }
    }
    tabulate(&raw)
}

/// Ours, not SwarmKit's: the service's VIPs, (network name, address) each, after the summary as
/// a block of its own, `Virtual IPs:` and one `  <network>\t: <addr>` line per VIP; nothing
/// without VIPs. Its leading newline ends a `Networks:` line left open, or else leaves a blank
/// line, as the `Ports:` block's does.
pub fn render_virtual_ips(vips: &[(String, String)]) -> String {
    if vips.is_empty() {
        return String::new();
    }
    let mut w = TabWriter::new(8, 8, 8);
    for (network, addr) in vips {
        w.line(format!("  {network}\t: {addr}"));
    }
    format!("\nVirtual IPs:\n{}", w.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::service_spec::Mode;
    use std::collections::BTreeMap;

    /// The fixed "now" of these tests.
    fn now() -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000)
    }

    fn ago(secs: i64) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_800_000_000 - secs,
            nanos: 0,
        }
    }

    fn lines(l: &[&str]) -> String {
        l.iter().map(|s| format!("{s}\n")).collect()
    }

    fn mount(kind: api::mount::Type, source: &str, target: &str) -> api::Mount {
        api::Mount {
            r#type: kind as i32,
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn file(name: &str) -> api::FileTarget {
        api::FileTarget {
            name: name.into(),
            mode: 0o444,
            ..Default::default()
        }
    }

    /// The `web` service of spec 1.3.
    fn web() -> api::Service {
        api::Service {
            id: "S1-id....................".into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: "web".into(),
                    labels: BTreeMap::from([("tier".to_string(), "front".to_string())]),
                    ..Default::default()
                }),
                task: Some(api::TaskSpec {
                    runtime: Some(api::task_spec::Runtime::Container(Box::new(
                        api::ContainerSpec {
                            image: "nginx:latest".into(),
                            command: vec!["/bin/sh".into()],
                            args: vec!["x".into(), "y".into()],
                            env: vec!["A=1".into(), "B=2".into()],
                            ..Default::default()
                        },
                    ))),
                    placement: Some(Box::new(api::Placement {
                        constraints: vec!["node.platform.os==linux".into()],
                        ..Default::default()
                    })),
                    resources: Some(Box::new(api::ResourceRequirements {
                        reservations: Some(api::Resources {
                            nano_cpus: 500_000_000,
                            ..Default::default()
                        }),
                        limits: Some(api::Resources {
                            memory_bytes: 256 << 20,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(api::ReplicatedService { replicas: 3 })),
                ..Default::default()
            }),
            endpoint: Some(api::Endpoint {
                ports: vec![api::PortConfig {
                    name: "http".into(),
                    protocol: api::port_config::Protocol::Tcp as i32,
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: api::port_config::PublishMode::Host as i32,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(s: &mut api::Service) -> &mut api::ContainerSpec {
        match s
            .spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .and_then(|t| t.runtime.as_mut())
        {
            Some(api::task_spec::Runtime::Container(c)) => c,
            _ => panic!("web has a container"),
        }
    }

    #[test]
    fn plain_service_has_blank_line_before_ports() {
        assert_eq!(
            render_summary(&web(), 3, None, now()),
            lines(&[
                "ID                       : S1-id....................",
                "Name                     : web",
                "Labels                   ",
                "  tier                   : front",
                "Replicas                 : 3/3",
                "Template                 ",
                " Container               ",
                "  Image                  : nginx:latest",
                "  Command                : \"/bin/sh\"",
                "  Args                   : [x, y]",
                "  Env                    : [A=1, B=2]",
                "  Constraints            : node.platform.os==linux",
                "  Resources              ",
                "    Reservations:        ",
                "      CPU                : 0.5",
                "    Limits:              ",
                "      Memory             : 256 MiB",
                "",
                "Ports:",
                "    - Name             = http",
                "      Protocol         = TCP",
                "      Port             = 80",
                "      SwarmPort        = 8080",
            ])
        );
    }

    #[test]
    fn updating_service_shows_update_status_without_completed() {
        let mut s = web();
        container(&mut s).image = "nginx:1.25".into();
        s.update_status = Some(api::UpdateStatus {
            state: api::update_status::UpdateState::Updating as i32,
            started_at: Some(ago(2)),
            completed_at: Some(ago(1)),
            message: "update in progress".into(),
        });
        let out = render_summary(&s, 3, None, now());
        assert!(
            out.contains(&lines(&[
                "Replicas                 : 3/3",
                "Update Status            ",
                " State                   : UPDATING",
                " Started                 : 2 seconds ago",
                " Message                 : update in progress",
                "Template                 ",
            ])),
            "{out}"
        );
    }

    #[test]
    fn full_service_with_networks_mounts_secrets_configs_and_log_driver() {
        use api::mount::Type;
        let mut s = web();
        container(&mut s).image = "nginx:1.25".into();
        s.update_status = Some(api::UpdateStatus {
            state: api::update_status::UpdateState::Completed as i32,
            started_at: Some(ago(14)),
            completed_at: Some(ago(4)),
            message: "update completed".into(),
        });
        let spec = s.spec.as_mut().expect("spec");
        let task = spec.task.as_mut().expect("task");
        task.networks = vec![api::NetworkAttachmentConfig {
            target: "K4-id....................".into(),
            ..Default::default()
        }];
        task.log_driver = Some(Box::new(api::Driver {
            name: "json-file".into(),
            options: BTreeMap::from([("max-size".to_string(), "10m".to_string())]),
        }));
        let c = container(&mut s);
        c.mounts = vec![
            mount(Type::Bind, "/src", "/dst"),
            mount(Type::Volume, "", "/data"),
            mount(Type::Tmpfs, "", "/tmp"),
        ];
        c.secrets = vec![api::SecretReference {
            secret_id: "X1-id....................".into(),
            secret_name: "mysecret".into(),
            target: Some(api::secret_reference::Target::File(file("target.txt"))),
        }];
        c.configs = vec![api::ConfigReference {
            config_id: "C1-id....................".into(),
            config_name: "mycfg".into(),
            target: Some(api::config_reference::Target::File(file("mycfg"))),
        }];
        assert_eq!(
            render_summary(&s, 3, None, now()),
            lines(&[
                "ID                       : S1-id....................",
                "Name                     : web",
                "Labels                   ",
                "  tier                   : front",
                "Replicas                 : 3/3",
                "Update Status            ",
                " State                   : COMPLETED",
                " Started                 : 14 seconds ago",
                " Completed               : 4 seconds ago",
                " Message                 : update completed",
                "Template                 ",
                " Container               ",
                "  Image                  : nginx:1.25",
                "  Command                : \"/bin/sh\"",
                "  Args                   : [x, y]",
                "  Env                    : [A=1, B=2]",
                "  Constraints            : node.platform.os==linux",
                "  Resources              ",
                "    Reservations:        ",
                "      CPU                : 0.5",
                "    Limits:              ",
                "      Memory             : 256 MiB",
                "  Networks: K4-id....................",
                "Ports:",
                "    - Name             = http",
                "      Protocol         = TCP",
                "      Port             = 80",
                "      SwarmPort        = 8080",
                "  Mounts:",
                "    - target = /dst",
                "      source = /src",
                "      readonly = false",
                "      type = bind",
                "    - target = /data",
                "      source = ",
                "      readonly = false",
                "      type = volume",
                "    - target = /tmp",
                "      source = ",
                "      readonly = false",
                "      type = tmpfs",
                "  Secrets:",
                "    [FILE] mysecret@X1-id....................:target.txt",
                "  Configs:",
                "    [FILE] mycfg@C1-id....................:mycfg",
                "  LogDriver         : json-file",
                "    max-size        : 10m",
            ])
        );
    }

    #[test]
    fn global_service() {
        let s = api::Service {
            id: "S3-id....................".into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: "glob".into(),
                    ..Default::default()
                }),
                task: Some(api::TaskSpec {
                    runtime: Some(api::task_spec::Runtime::Container(Box::new(
                        api::ContainerSpec {
                            image: "g:1".into(),
                            ..Default::default()
                        },
                    ))),
                    ..Default::default()
                }),
                mode: Some(Mode::Global(api::GlobalService {})),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            render_summary(&s, 3, None, now()),
            lines(&[
                "ID                : S3-id....................",
                "Name              : glob",
                "Replicas          : global",
                "Template          ",
                " Container        ",
                "  Image           : g:1",
            ])
        );
    }

    /// `web` without ports, its tasks on the networks `targets`.
    fn web_on_networks_without_ports(targets: &[&str]) -> api::Service {
        let mut s = web();
        s.endpoint = None;
        s.spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .expect("task")
            .networks = targets
            .iter()
            .map(|t| api::NetworkAttachmentConfig {
                target: t.to_string(),
                ..Default::default()
            })
            .collect();
        s
    }

    #[test]
    fn networks_line_stays_open_without_ports() {
        let mut s = web_on_networks_without_ports(&["K1", "K2"]);
        assert!(
            render_summary(&s, 0, None, now())
                .ends_with("      Memory             : 256 MiB\n  Networks: K1 K2")
        );
        container(&mut s).mounts = vec![mount(api::mount::Type::Volume, "", "/v")];
        assert!(
            render_summary(&s, 0, None, now())
                .contains("\n  Networks: K1 K2  Mounts:\n    - target = /v\n")
        );
    }

    #[test]
    fn generic_resources_and_log_options_without_value() {
        let mut s = web();
        let task = s.spec.as_mut().and_then(|s| s.task.as_mut()).expect("task");
        task.resources = Some(Box::new(api::ResourceRequirements {
            reservations: Some(api::Resources {
                nano_cpus: 1_500_000_000,
                memory_bytes: 1 << 30,
                generic: vec![api::GenericResource {
                    resource: Some(api::generic_resource::Resource::DiscreteResourceSpec(
                        api::DiscreteGenericResource {
                            kind: "gpu".into(),
                            value: 2,
                        },
                    )),
                }],
            }),
            ..Default::default()
        }));
        task.log_driver = Some(Box::new(api::Driver {
            name: "syslog".into(),
            options: BTreeMap::from([
                ("b".to_string(), String::new()),
                ("a".to_string(), "1".to_string()),
            ]),
        }));
        let out = render_summary(&s, 1, None, now());
        // The longest first cell, "      Generic Resources", widens the whole first block; the
        // log driver lines follow the port lines directly, so they share their block.
        let w = |k: &str| format!("{k:<31}");
        assert!(
            out.contains(&lines(&[
                &w("  Resources"),
                &w("    Reservations:"),
                &format!("{}: 1.5", w("      CPU")),
                &format!("{}: 1.0 GiB", w("      Memory")),
                &w("      Generic Resources"),
                &format!("{}: 2", w("        gpu")),
                "",
                "Ports:",
            ])),
            "{out}"
        );
        assert!(
            out.ends_with(&lines(&[
                "      SwarmPort        = 8080",
                "  LogDriver            : syslog",
                "    a                  : 1",
                "    b                  ",
            ])),
            "{out}"
        );
    }

    #[test]
    fn job_without_container_prints_its_counts_and_template() {
        let s = api::Service {
            id: "S9".into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: "job".into(),
                    ..Default::default()
                }),
                mode: Some(Mode::GlobalJob(api::GlobalJob {})),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = ServiceStatus {
            service_id: "S9".into(),
            desired_tasks: 1,
            running_tasks: 0,
            completed_tasks: 2,
        };
        assert_eq!(
            render_summary(&s, 0, Some(&status), now()),
            lines(&[
                "ID              : S9",
                "Name            : job",
                "Replicas        : 0/1 (2/3 completed)",
                "Template        "
            ])
        );
    }

    #[test]
    fn virtual_ips_close_an_open_networks_line_and_nothing_without_them() {
        assert_eq!(render_virtual_ips(&[]), "");
        let s = web_on_networks_without_ports(&["K1"]);
        let vips = [
            ("net1".to_string(), "10.20.0.2/24".to_string()),
            ("backend-net".to_string(), "10.0.1.2/24".to_string()),
        ];
        let out = render_summary(&s, 0, None, now()) + &render_virtual_ips(&vips);
        assert!(
            out.ends_with(&lines(&[
                "      Memory             : 256 MiB",
                "  Networks: K1",
                "Virtual IPs:",
                "  net1               : 10.20.0.2/24",
                "  backend-net        : 10.0.1.2/24",
            ])),
            "{out}"
        );
        // After complete lines (the ports), a blank line first, as before `Ports:`.
        let out = render_summary(&web(), 0, None, now()) + &render_virtual_ips(&vips[..1]);
        assert!(
            out.ends_with(&lines(&[
                "      SwarmPort        = 8080",
                "",
                "Virtual IPs:",
                "  net1        : 10.20.0.2/24",
            ])),
            "{out}"
        );
    }
}
