//! `swarmctl node`: ls, inspect, activate/pause/drain, promote/demote, update and remove
//! (SwarmKit's `swarmd/cmd/swarmctl/node`). Rendering is done by pure functions.

use clap::{Args, Subcommand};

use crate::common::{
    CliError, CmdResult, Ctx, ListArgs, Positionals, all_nodes, annotations_name, emit, enum_name,
    get_node, one_arg, print_header, string_slice, usage_err,
};
use crate::humanize::iec_bytes;
use crate::tabwriter::TabWriter;

/// Node management
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Activate a node
    #[command(override_usage = "activate <node ID>")]
    Activate(Positionals),
    /// Demote a node from a manager to a worker
    #[command(override_usage = "demote <node ID>")]
    Demote(Positionals),
    /// Drain a node
    #[command(override_usage = "drain <node ID>")]
    Drain(Positionals),
    /// Inspect a node
    #[command(override_usage = "inspect <node ID>")]
    Inspect(InspectArgs),
    /// List nodes
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Pause a node
    #[command(override_usage = "pause <node ID>")]
    Pause(Positionals),
    /// Promote a node to a manager
    #[command(override_usage = "promote <node ID>")]
    Promote(Positionals),
    /// Remove a node
    #[command(visible_alias = "rm", override_usage = "remove <node ID>")]
    Remove(RemoveArgs),
    /// Update a node
    #[command(override_usage = "update <node ID>")]
    Update(UpdateArgs),
}

/// Flags of `node inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Show all tasks (default shows just running)
    #[arg(short = 'a', long = "all")]
    all: bool,
    #[command(flatten)]
    pos: Positionals,
}

/// Flags of `node remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Force the removal of a node
    #[arg(short = 'f', long = "force")]
    force: bool,
    #[command(flatten)]
    pos: Positionals,
}

/// Flags of `node update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// node label (key=value)
    #[arg(long = "label", value_name = "strings", allow_hyphen_values = true)]
    label: Vec<String>,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one node command.
pub async fn run(cmd: NodeCommand, ctx: &mut Ctx) -> CmdResult {
    use api::node_spec::Availability;
    match cmd {
        NodeCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let nodes = all_nodes(ctx).await?;
            emit(&render_list(&nodes, a.quiet));
            Ok(())
        }
        NodeCommand::Inspect(a) => {
            let arg = one_arg(
                &a.pos.args,
                "node ID missing",
                "inspect command takes exactly 1 argument",
            )?;
            let node = get_node(ctx, arg).await?;
            let req = api::ListTasksRequest {
                filters: Some(api::list_tasks_request::Filters {
                    node_ids: vec![node.id.clone()],
                    ..Default::default()
                }),
            };
            let tasks = ctx.client.list_tasks(req).await?.into_inner().tasks;
            let mut out = render_summary(&node);
            if !tasks.is_empty() {
                out.push('\n');
                crate::tasks::print_task_table(ctx, &mut out, &tasks, a.all).await;
            }
            emit(&out);
            Ok(())
        }
        NodeCommand::Activate(a) => {
            change_availability(ctx, &a.args, Availability::Active, "is already active").await
        }
        NodeCommand::Pause(a) => {
            change_availability(ctx, &a.args, Availability::Pause, "was already paused").await
        }
        NodeCommand::Drain(a) => {
            change_availability(ctx, &a.args, Availability::Drain, "was already drained").await
        }
        NodeCommand::Promote(a) => {
            change_role(ctx, &a.args, api::NodeRole::Manager, "is already a manager").await
        }
        NodeCommand::Demote(a) => {
            change_role(ctx, &a.args, api::NodeRole::Worker, "is already a worker").await
        }
        NodeCommand::Remove(a) => {
            let arg = one_arg(
                &a.pos.args,
                "missing node ID",
                "remove command takes exactly 1 argument",
            )?;
            let node = get_node(ctx, arg).await?;
            let req = api::RemoveNodeRequest {
                node_id: node.id,
                force: a.force,
            };
            ctx.client.remove_node(req).await?;
            Ok(())
        }
        NodeCommand::Update(a) => update(ctx, a).await,
    }
}

/// Sends the changed spec with the version it was read at.
async fn send_update(ctx: &mut Ctx, node: &api::Node, spec: api::NodeSpec) -> CmdResult {
    let req = api::UpdateNodeRequest {
        node_id: node.id.clone(),
        node_version: node.meta.as_ref().and_then(|m| m.version),
        spec: Some(spec),
    };
    ctx.client.update_node(req).await?;
    Ok(())
}

async fn change_availability(
    ctx: &mut Ctx,
    args: &[String],
    to: api::node_spec::Availability,
    already: &str,
) -> CmdResult {
    let arg = one_arg(args, "missing node ID", "command takes exactly 1 argument")?;
    let node = get_node(ctx, arg).await?;
    let mut spec = node.spec.clone().unwrap_or_default();
    if spec.availability == to as i32 {
        return Err(usage_err(format!("Node {arg} {already}")));
    }
    spec.availability = to as i32;
    send_update(ctx, &node, spec).await
}

async fn change_role(
    ctx: &mut Ctx,
    args: &[String],
    to: api::NodeRole,
    already: &str,
) -> CmdResult {
    let arg = one_arg(args, "missing node ID", "command takes exactly 1 argument")?;
    let node = get_node(ctx, arg).await?;
    let mut spec = node.spec.clone().unwrap_or_default();
    if spec.desired_role == to as i32 {
        return Err(usage_err(format!("Node {arg} {already}")));
    }
    spec.desired_role = to as i32;
    send_update(ctx, &node, spec).await
}

/// `--label k=v` values (trimmed) replacing all labels.
fn parse_labels(values: &[String]) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    let mut labels = std::collections::BTreeMap::new();
    for l in string_slice("label", values)? {
        let Some((k, v)) = l.split_once('=') else {
            return Err(usage_err(format!("malformed label for node {l}")));
        };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

async fn update(ctx: &mut Ctx, a: UpdateArgs) -> CmdResult {
    let arg = one_arg(
        &a.pos.args,
        "node ID missing",
        "command takes exactly 1 argument",
    )?;
    let node = get_node(ctx, arg).await?;
    let original = node.spec.clone().unwrap_or_default();
    let mut spec = original.clone();
    if !a.label.is_empty() {
        spec.annotations.get_or_insert_with(Default::default).labels = parse_labels(&a.label)?;
    }
    if spec == original {
        return Err(usage_err(format!("No change for node {arg}")));
    }
    send_update(ctx, &node, spec).await
}

/// The `ls` table (or IDs with `-q`).
pub fn render_list(nodes: &[api::Node], quiet: bool) -> String {
    if quiet {
        return nodes.iter().map(|n| format!("{}\n", n.id)).collect();
    }
    let mut w = TabWriter::new(0, 4, 2);
    print_header(
        &mut w,
        &[
            "ID",
            "Name",
            "Membership",
            "Status",
            "Availability",
            "Manager Status",
        ],
    );
    for n in nodes {
        let spec = n.spec.clone().unwrap_or_default();
        let mut name = annotations_name(spec.annotations.as_ref()).to_string();
        if name.is_empty()
            && let Some(d) = &n.description
        {
            name = d.hostname.clone();
        }
        let mut reachability = String::new();
        if let Some(m) = &n.manager_status {
            reachability = enum_name(
                m.reachability,
                api::raft_member_status::Reachability::as_str_name,
            );
            if m.leader {
                reachability.push_str(" *");
            }
        }
        if reachability.is_empty() && spec.desired_role == api::NodeRole::Manager as i32 {
            reachability = "UNKNOWN".to_string();
        }
        w.line(format!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            n.id,
            name,
            enum_name(spec.membership, api::node_spec::Membership::as_str_name),
            node_state(n),
            enum_name(spec.availability, api::node_spec::Availability::as_str_name),
            reachability
        ));
    }
    w.render()
}

fn node_state(n: &api::Node) -> String {
    enum_name(
        n.status.as_ref().map(|s| s.state).unwrap_or(0),
        api::node_status::State::as_str_name,
    )
}

/// Sorted ` k=v` pairs as the reference prints labels after `Label\t:`.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!(" {k}={v}")).collect()
}

/// The `inspect` summary (without the task table).
pub fn render_summary(node: &api::Node) -> String {
    let spec = node.spec.clone().unwrap_or_default();
    let desc = node.description.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let mut w = TabWriter::new(8, 8, 8);
    if !node.id.is_empty() {
        w.line(format!("ID\t: {}", node.id));
    }
    if let Some(d) = &node.description
        && !d.hostname.is_empty()
    {
        w.line(format!("Hostname\t: {}", d.hostname));
    }
    let labels = spec
        .annotations
        .as_ref()
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    if !labels.is_empty() {
        w.line(format!("Node Labels\t:{}", labels_text(&labels)));
    }
    w.line("Status:\t");
    w.line(format!("  State\t: {}", node_state(node)));
    if !status.message.is_empty() {
        w.line(format!("  Message\t: {}", status.message));
    }
    w.line(format!(
        "  Availability\t: {}",
        enum_name(spec.availability, api::node_spec::Availability::as_str_name)
    ));
    if !status.addr.is_empty() {
        w.line(format!("  Address\t: {}", status.addr));
    }
    if let Some(m) = &node.manager_status {
        w.line("Manager status:\t");
        if !m.addr.is_empty() {
            w.line(format!("  Address\t: {}", m.addr));
        }
        w.line(format!(
            "  Raft status\t: {}",
            enum_name(
                m.reachability,
                api::raft_member_status::Reachability::as_str_name
            )
        ));
        w.line(format!(
            "  Leader\t: {}",
            if m.leader { "yes" } else { "no" }
        ));
    }
    if let Some(p) = &desc.platform {
        w.line("Platform:\t");
        if !p.os.is_empty() {
            w.line(format!("  Operating System\t: {}", p.os));
        }
        if !p.architecture.is_empty() {
            w.line(format!("  Architecture\t: {}", p.architecture));
        }
    }
    if let Some(r) = &desc.resources {
        w.line("Resources:\t");
        w.line(format!("  CPUs\t: {}", r.nano_cpus / 1_000_000_000));
        w.line(format!("  Memory\t: {}", iec_bytes(r.memory_bytes)));
        w.line("  Generic Resources:\t");
        for g in &r.generic {
            use api::generic_resource::Resource;
            let (kind, value) = match &g.resource {
                Some(Resource::NamedResourceSpec(n)) => (n.kind.clone(), n.value.clone()),
                Some(Resource::DiscreteResourceSpec(d)) => (d.kind.clone(), d.value.to_string()),
                None => (String::new(), String::new()),
            };
            w.line(format!("    {kind}\t: {value}"));
        }
    }
    if let Some(e) = &desc.engine {
        w.line("Plugins:\t");
        let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for p in &e.plugins {
            by_type.entry(&p.r#type).or_default().push(&p.name);
        }
        for (t, names) in by_type {
            w.line(format!("  {t}\t: [{}]", names.join(" ")));
        }
        if !e.engine_version.is_empty() {
            w.line(format!("Engine Version\t: {}", e.engine_version));
        }
        if !e.labels.is_empty() {
            w.line(format!("Engine Labels\t:{}", labels_text(&e.labels)));
        }
    }
    crate::common::attachment_lines(&mut w, "Network attachments:", &node.attachments);
    w.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::node_spec::{Availability, Membership};

    fn node(id: &str, host: &str, manager: Option<(bool, &str)>) -> api::Node {
        api::Node {
            id: id.into(),
            spec: Some(api::NodeSpec {
                membership: Membership::Accepted as i32,
                availability: Availability::Active as i32,
                desired_role: if manager.is_some() {
                    api::NodeRole::Manager as i32
                } else {
                    api::NodeRole::Worker as i32
                },
                ..Default::default()
            }),
            description: Some(api::NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            status: Some(api::NodeStatus {
                state: api::node_status::State::Ready as i32,
                addr: "127.0.0.1".into(),
                ..Default::default()
            }),
            manager_status: manager.map(|(leader, addr)| api::ManagerStatus {
                leader,
                addr: addr.into(),
                reachability: api::raft_member_status::Reachability::Reachable as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected, "\ngot:\n{got}\nexpected:\n{expected}");
    }

    #[test]
    fn list_table_with_leader_and_trailing_spaces() {
        let mut unknown = node("N4-id....................", "node-4", None);
        unknown.spec.as_mut().expect("spec").desired_role = api::NodeRole::Manager as i32;
        check(
            render_list(
                &[
                    node(
                        "N1-id....................",
                        "node-1",
                        Some((true, "0.0.0.0:4242")),
                    ),
                    node("N2-id....................", "node-2", None),
                    unknown,
                ],
                false,
            ),
            "ID                         Name    Membership  Status  Availability  Manager Status\n\
             --                         ----    ----------  ------  ------------  --------------\n\
             N1-id....................  node-1  ACCEPTED    READY   ACTIVE        REACHABLE *\n\
             N2-id....................  node-2  ACCEPTED    READY   ACTIVE        \n\
             N4-id....................  node-4  ACCEPTED    READY   ACTIVE        UNKNOWN\n",
        );
    }

    #[test]
    fn inspect_manager_with_engine() {
        let mut n = node(
            "N1-id....................",
            "node-1",
            Some((true, "0.0.0.0:4242")),
        );
        let d = n.description.as_mut().expect("description");
        d.platform = Some(api::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        });
        d.resources = Some(api::Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            generic: vec![],
        });
        let plugin = |t: &str, name: &str| api::PluginDescription {
            r#type: t.into(),
            name: name.into(),
        };
        d.engine = Some(api::EngineDescription {
            engine_version: "24.0.7-fake".into(),
            labels: [("zone".to_string(), "z10".to_string())].into(),
            plugins: vec![
                plugin("Volume", "local"),
                plugin("Network", "bridge"),
                plugin("Network", "host"),
            ],
        });
        check(
            render_summary(&n),
            "ID                          : N1-id....................\n\
             Hostname                    : node-1\n\
             Status:                     \n  \
               State                     : READY\n  \
               Availability              : ACTIVE\n  \
               Address                   : 127.0.0.1\n\
             Manager status:             \n  \
               Address                   : 0.0.0.0:4242\n  \
               Raft status               : REACHABLE\n  \
               Leader                    : yes\n\
             Platform:                   \n  \
               Operating System          : linux\n  \
               Architecture              : x86_64\n\
             Resources:                  \n  \
               CPUs                      : 4\n  \
               Memory                    : 8.0 GiB\n  \
               Generic Resources:        \n\
             Plugins:                    \n  \
               Network                   : [bridge host]\n  \
               Volume                    : [local]\n\
             Engine Version              : 24.0.7-fake\n\
             Engine Labels               : zone=z10\n",
        );
    }

    #[test]
    fn inspect_without_description() {
        let mut n = node("N2", "", None);
        n.description = None;
        n.spec.as_mut().expect("spec").annotations = Some(api::Annotations {
            labels: [("zone", "a"), ("rack", "r1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        });
        check(
            render_summary(&n),
            "ID                    : N2\n\
             Node Labels           : rack=r1 zone=a\n\
             Status:               \n  \
               State               : READY\n  \
               Availability        : ACTIVE\n  \
               Address             : 127.0.0.1\n",
        );
    }

    #[test]
    fn labels_replace_and_reject_malformed() {
        let l = parse_labels(&[" a = 1 ,b=2".to_string()]).expect("valid");
        assert_eq!(l.get("a").map(String::as_str), Some("1"));
        assert_eq!(l.len(), 2);
        assert_eq!(
            parse_labels(&["novalue".to_string()]).map_err(|e| e.to_string()),
            Err("malformed label for node novalue".to_string())
        );
    }

    #[test]
    fn inspect_ends_with_the_network_attachments() {
        let mut n = node("N3", "node-3", None);
        let without = render_summary(&n);
        n.attachments = vec![crate::task::tests::attachment(
            "ingress",
            &["10.0.0.2/24"],
            &[],
        )];
        let with = render_summary(&n);
        check(
            with.strip_prefix(&without)
                .expect("the same lines first")
                .to_string(),
            "Network attachments:\n  \
               ingress        : 10.0.0.2/24\n",
        );
    }
}
