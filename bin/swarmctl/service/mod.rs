//! `swarmctl service` (alias `svc`, set by main): the clap subcommands and their dispatch, plus
//! what several service commands share (replica text, secret/config lookups, stdout). Flag
//! parsing into a spec lives in `flags.rs`, one file per command for the rest. Errors, lookups by
//! argument, Go-compatible value parsing, tables and time formatting are main's (`common`,
//! `goparse`, `tabwriter`, `humanize`, `tasks`).

mod create;
mod flags;
mod inspect;
mod list;
mod logs;
mod progress;
mod remove;
mod update;

use std::collections::{BTreeMap, HashMap};

use api::service_spec::Mode;
use clap::Subcommand;

use crate::common::{CliError, CmdResult, Ctx, annotations_name};

pub use create::CreateArgs;
pub use inspect::InspectArgs;
pub use list::ListArgs;
pub use logs::LogsArgs;
pub use remove::RemoveArgs;
pub use update::UpdateArgs;

/// Service management.
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service
    Create(CreateArgs),
    /// Inspect a service
    Inspect(InspectArgs),
    /// Obtain log output from a service
    #[command(visible_alias = "log")]
    Logs(LogsArgs),
    /// List services
    Ls(ListArgs),
    /// Remove a service
    #[command(visible_alias = "rm")]
    Remove(RemoveArgs),
    /// Update a service
    Update(UpdateArgs),
}

/// Runs one service command; output goes to stdout, errors are returned for main to print.
pub async fn run(cmd: ServiceCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        ServiceCommand::Create(args) => create::run(args, ctx).await,
        ServiceCommand::Inspect(args) => inspect::run(args, ctx).await,
        ServiceCommand::Logs(args) => logs::run(args, ctx).await,
        ServiceCommand::Ls(args) => list::run(args, ctx).await,
        ServiceCommand::Remove(args) => remove::run(args, ctx).await,
        ServiceCommand::Update(args) => update::run(args, ctx).await,
    }
}

impl From<flags::FlagError> for CliError {
    fn from(e: flags::FlagError) -> Self {
        CliError::Usage(e.0)
    }
}

/// The task counts SwarmKit reports for a service (`ListServiceStatuses`).
pub type ServiceStatus = api::list_service_statuses_response::ServiceStatus;

/// The Replicas column: `running/desired` for replicated services, `global` for global ones (as
/// SwarmKit's client), and for jobs, which SwarmKit's client cannot make, what the manager's
/// `ListServiceStatuses` says in Docker's form: `running/desired (completed/total completed)`,
/// where a global job's total is what completed plus what is still desired.
pub fn replicas_text(
    service: &api::Service,
    running: usize,
    job: Option<&ServiceStatus>,
) -> String {
    let job = job.cloned().unwrap_or_default();
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Global(_)) => "global".to_string(),
        Some(Mode::Replicated(r)) => format!("{running}/{}", r.replicas),
        Some(Mode::ReplicatedJob(r)) => format!(
            "{}/{} ({}/{} completed)",
            job.running_tasks, job.desired_tasks, job.completed_tasks, r.total_completions
        ),
        Some(Mode::GlobalJob(_)) => format!(
            "{}/{} ({}/{} completed)",
            job.running_tasks,
            job.desired_tasks,
            job.completed_tasks,
            job.completed_tasks + job.desired_tasks
        ),
        None => String::new(),
    }
}

/// The task counts of the job services among `services`, by service ID (no call without jobs).
pub async fn job_statuses(
    ctx: &mut Ctx,
    services: &[api::Service],
) -> Result<HashMap<String, ServiceStatus>, CliError> {
    let jobs: Vec<String> = services
        .iter()
        .filter(|s| {
            matches!(
                s.spec.as_ref().and_then(|s| s.mode.as_ref()),
                Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_))
            )
        })
        .map(|s| s.id.clone())
        .collect();
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let req = api::ListServiceStatusesRequest { services: jobs };
    Ok(ctx
        .client
        .list_service_statuses(req)
        .await?
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| (s.service_id.clone(), s))
        .collect())
}

/// Adds references to the secrets of a flag's occurrences (`flags::parse_references`), looked
/// up with `ListSecrets` by name.
async fn add_secrets(
    ctx: &mut Ctx,
    spec: &mut api::ServiceSpec,
    records: &[Vec<String>],
) -> CmdResult {
    let items = flags::parse_references(records, "secret")?;
    let names = items.iter().map(|r| r.name.clone()).collect();
    let req = api::ListSecretsRequest {
        filters: Some(api::list_secrets_request::Filters {
            names,
            ..Default::default()
        }),
    };
    let found: BTreeMap<String, String> = ctx
        .client
        .list_secrets(req)
        .await?
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| {
            (
                annotations_name(s.spec.as_ref().and_then(|sp| sp.annotations.as_ref()))
                    .to_string(),
                s.id,
            )
        })
        .collect();
    flags::add_secrets(spec, &items, &found)?;
    Ok(())
}

/// Adds references to the configs of a flag's occurrences, looked up with `ListConfigs` by name.
async fn add_configs(
    ctx: &mut Ctx,
    spec: &mut api::ServiceSpec,
    records: &[Vec<String>],
) -> CmdResult {
    let items = flags::parse_references(records, "config")?;
    let names = items.iter().map(|r| r.name.clone()).collect();
    let req = api::ListConfigsRequest {
        filters: Some(api::list_configs_request::Filters {
            names,
            ..Default::default()
        }),
    };
    let found: BTreeMap<String, String> = ctx
        .client
        .list_configs(req)
        .await?
        .into_inner()
        .configs
        .into_iter()
        .map(|c| {
            (
                annotations_name(c.spec.as_ref().and_then(|sp| sp.annotations.as_ref()))
                    .to_string(),
                c.id,
            )
        })
        .collect();
    flags::add_configs(spec, &items, &found)?;
    Ok(())
}

/// Resolves `--network` by ID or name and attaches the task to it.
async fn resolve_network(ctx: &mut Ctx, spec: &mut api::ServiceSpec, arg: &str) -> CmdResult {
    let network = crate::common::get_network(ctx, arg).await?;
    flags::apply_network(spec, &network.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// `swarmctl service` as main mounts it.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ServiceCommand,
    }

    fn parse(args: &[&str]) -> ServiceCommand {
        Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn aliases_and_positionals() {
        assert!(matches!(parse(&["rm", "web"]), ServiceCommand::Remove(_)));
        assert!(matches!(
            parse(&["log", "web", "-f"]),
            ServiceCommand::Logs(_)
        ));
        assert!(matches!(parse(&["ls", "-q"]), ServiceCommand::Ls(_)));
        let ServiceCommand::Create(c) = parse(&["create", "--name", "a", "--image", "b", "extra"])
        else {
            panic!("create")
        };
        assert!(format!("{c:?}").contains("extra: [\"extra\"]"));
    }

    #[test]
    fn values_may_start_with_a_dash_and_bools_take_only_attached_values() {
        let ServiceCommand::Update(u) = parse(&[
            "update",
            "--force",
            "web",
            "--replicas",
            "-1",
            "--tty",
            "--init=false",
            "--restart-delay",
            "-5s",
        ]) else {
            panic!("update")
        };
        let dbg = format!("{u:?}");
        assert!(dbg.contains("service: [\"web\"]"), "{dbg}");
        assert!(dbg.contains("replicas: Some(\"-1\")"), "{dbg}");
        assert!(dbg.contains("tty: Some(\"true\")"), "{dbg}");
        assert!(dbg.contains("init: Some(\"false\")"), "{dbg}");
        assert!(dbg.contains("restart_delay: Some(\"-5s\")"), "{dbg}");
        assert!(dbg.contains("force: Some(\"true\")"), "{dbg}");
    }

    fn service(mode: Mode) -> api::Service {
        api::Service {
            spec: Some(api::ServiceSpec {
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_text_by_mode() {
        let r = service(Mode::Replicated(api::ReplicatedService { replicas: 3 }));
        assert_eq!(replicas_text(&r, 2, None), "2/3");
        assert_eq!(
            replicas_text(&service(Mode::Global(api::GlobalService {})), 5, None),
            "global"
        );
        let job = service(Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 5,
        }));
        let status = ServiceStatus {
            service_id: String::new(),
            desired_tasks: 1,
            running_tasks: 1,
            completed_tasks: 3,
        };
        assert_eq!(replicas_text(&job, 0, Some(&status)), "1/1 (3/5 completed)");
        assert_eq!(replicas_text(&job, 0, None), "0/0 (0/5 completed)");
        let global_job = service(Mode::GlobalJob(api::GlobalJob {}));
        assert_eq!(
            replicas_text(&global_job, 0, Some(&status)),
            "1/1 (3/4 completed)"
        );
        assert_eq!(replicas_text(&api::Service::default(), 0, None), "");
    }
}
