//! `swarmctl watch` (ours; SwarmKit's swarmctl has no such command): follows the manager's Watch
//! API and prints one line per change, `VERSION ACTION KIND ID NAME [STATE]`, as commits are
//! applied, until interrupted or the manager ends the stream. The version is the commit's (its
//! raft index), which `--resume-from` takes to replay what came after it first.

use api::watch_client::WatchClient;
use api::{WatchActionKind, object};
use clap::Args;

use crate::common::{CmdResult, Ctx, emit, enum_name, string_slice, usage_err};

/// Kinds watched when `--kind` is not given: every store kind but resources (which are
/// watched by their extension's name).
const DEFAULT_KINDS: &[&str] = &[
    "node",
    "service",
    "task",
    "network",
    "cluster",
    "secret",
    "config",
    "extension",
    "volume",
];

/// Arguments of `watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Kinds of objects to watch: node, service, task, network, cluster, secret, config,
    /// extension, volume, or the name of an extension for its resources (default all but
    /// resources)
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    kind: Vec<String>,
    /// Changes to report: create, update, remove (default all)
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    action: Vec<String>,
    /// Replay first the changes committed after this version (a VERSION printed earlier)
    #[arg(long = "resume-from", value_name = "uint")]
    resume_from: Option<u64>,
    /// Positional arguments are refused with a message rather than clap's.
    #[arg(hide = true)]
    extra: Vec<String>,
}

/// The `WatchActionKind` bits of `--action` values.
fn actions(values: &[String]) -> Result<i32, String> {
    if values.is_empty() {
        return Ok(WatchActionKind::WatchActionCreate as i32
            | WatchActionKind::WatchActionUpdate as i32
            | WatchActionKind::WatchActionRemove as i32);
    }
    values.iter().try_fold(0, |bits, v| {
        let bit = match v.as_str() {
            "create" => WatchActionKind::WatchActionCreate,
            "update" => WatchActionKind::WatchActionUpdate,
            "remove" => WatchActionKind::WatchActionRemove,
            other => {
                return Err(format!(
                    "invalid action {other:?}: must be create, update or remove"
                ));
            }
        };
        Ok(bits | bit as i32)
    })
}

/// Runs `watch`.
pub async fn run(a: WatchArgs, ctx: &mut Ctx) -> CmdResult {
    if !a.extra.is_empty() {
        return Err(usage_err("watch command takes no arguments"));
    }
    let mut kinds = string_slice("kind", &a.kind)?;
    if kinds.is_empty() {
        kinds = DEFAULT_KINDS.iter().map(|k| k.to_string()).collect();
    }
    let action = actions(&string_slice("action", &a.action)?).map_err(usage_err)?;
    let request = api::WatchRequest {
        entries: kinds
            .into_iter()
            .map(|kind| api::watch_request::WatchEntry {
                kind,
                action,
                filters: Vec::new(),
            })
            .collect(),
        resume_from: a.resume_from.map(|index| api::Version { index }),
        include_old_object: false,
    };
    let mut client =
        WatchClient::new(ctx.channel.clone()).max_decoding_message_size(api::CLIENT_MAX_RECV);
    let mut stream = client.watch(request).await?.into_inner();
    while let Some(msg) = stream.message().await? {
        let version = msg.version.map_or(0, |v| v.index);
        let mut out = String::new();
        for event in &msg.events {
            out.push_str(&event_line(version, event));
            out.push('\n');
        }
        emit(&out);
    }
    Ok(())
}

/// One event as `VERSION ACTION KIND ID NAME [STATE]` (a name or state the object lacks is
/// `-`).
pub fn event_line(version: u64, event: &api::watch_message::Event) -> String {
    let action = match WatchActionKind::try_from(event.action) {
        Ok(WatchActionKind::WatchActionCreate) => "create",
        Ok(WatchActionKind::WatchActionUpdate) => "update",
        Ok(WatchActionKind::WatchActionRemove) => "remove",
        _ => "unknown",
    };
    let Some(obj) = event.object.as_ref().and_then(|o| o.object.as_ref()) else {
        return format!("{version} {action} - - -");
    };
    let spec_name = |a: Option<&api::Annotations>| a.map(|a| a.name.clone()).unwrap_or_default();
    use object::Object as O;
    let (kind, id, name, state) = match obj {
        O::Node(n) => (
            "node",
            &n.id,
            n.description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default(),
            n.status
                .as_ref()
                .map(|s| enum_name(s.state, api::node_status::State::as_str_name).to_string()),
        ),
        O::Service(s) => (
            "service",
            &s.id,
            spec_name(s.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
        O::Task(t) => {
            let service = spec_name(t.service_annotations.as_ref());
            let name = if t.slot == 0 && !t.node_id.is_empty() {
                format!("{service}.{}", t.node_id)
            } else {
                format!("{service}.{}", t.slot)
            };
            let state = t
                .status
                .as_ref()
                .map(|s| enum_name(s.state, api::TaskState::as_str_name));
            ("task", &t.id, name, state)
        }
        O::Network(n) => (
            "network",
            &n.id,
            spec_name(n.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
        O::Cluster(c) => (
            "cluster",
            &c.id,
            spec_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
        O::Secret(s) => (
            "secret",
            &s.id,
            spec_name(s.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
        O::Config(c) => (
            "config",
            &c.id,
            spec_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
        O::Resource(r) => ("resource", &r.id, spec_name(r.annotations.as_ref()), None),
        O::Extension(e) => ("extension", &e.id, spec_name(e.annotations.as_ref()), None),
        O::Volume(v) => (
            "volume",
            &v.id,
            spec_name(v.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            None,
        ),
    };
    let name = if name.is_empty() { "-".into() } else { name };
    let id = if id.is_empty() { "-" } else { id.as_str() };
    match state {
        Some(state) => format!("{version} {action} {kind} {id} {name} {state}"),
        None => format!("{version} {action} {kind} {id} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: WatchActionKind, obj: object::Object) -> api::watch_message::Event {
        api::watch_message::Event {
            action: action as i32,
            object: Some(api::Object { object: Some(obj) }),
            old_object: None,
        }
    }

    #[test]
    fn one_line_per_event_names_version_action_kind_id_name_and_state() {
        let task = api::Task {
            id: "t1".into(),
            slot: 2,
            service_annotations: Some(api::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            status: Some(api::TaskStatus {
                state: api::TaskState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            event_line(
                7,
                &event(
                    WatchActionKind::WatchActionUpdate,
                    object::Object::Task(Box::new(task))
                )
            ),
            "7 update task t1 web.2 RUNNING"
        );
        let service = api::Service {
            id: "s1".into(),
            spec: Some(api::ServiceSpec {
                annotations: Some(api::Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            event_line(
                3,
                &event(
                    WatchActionKind::WatchActionCreate,
                    object::Object::Service(Box::new(service))
                )
            ),
            "3 create service s1 web"
        );
        assert_eq!(
            event_line(
                4,
                &event(
                    WatchActionKind::WatchActionRemove,
                    object::Object::Node(Box::default())
                )
            ),
            "4 remove node - -"
        );
    }

    #[test]
    fn actions_are_bits() {
        assert_eq!(actions(&[]), Ok(7));
        assert_eq!(actions(&["create".into(), "remove".into()]), Ok(5));
        assert!(actions(&["delete".into()]).is_err());
    }
}
