//! `swarmctl service create`: builds a spec from the service flags (plus `--mode`, `--secret`
//! and, ours, `--config`), resolves the network, secrets and configs, calls `CreateService` and
//! prints the new ID; with `--detach=false` (ours) it then follows the service until it converges
//! (`progress.rs`).

use clap::Args;

use super::flags::{self, ServiceFlags, record_flag};
use super::progress::{self, DetachArg};
use super::{add_configs, add_secrets, resolve_network};
use crate::common::{CmdResult, Ctx, emit, usage_err};

/// Arguments of `service create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    flags: ServiceFlags,
    /// one of replicated, global, replicated-job, global-job (default "replicated")
    #[arg(long, value_name = "string", allow_hyphen_values = true)]
    mode: Option<String>,
    /// add a secret from swarm
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    secret: Option<Vec<String>>,
    /// add a config from swarm
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    config: Option<Vec<String>>,
    #[command(flatten)]
    detach: DetachArg,
    /// Positional arguments are refused with SwarmKit's message rather than clap's.
    #[arg(hide = true)]
    extra: Vec<String>,
}

/// Runs `service create`.
pub async fn run(a: CreateArgs, ctx: &mut Ctx) -> CmdResult {
    a.flags.check_syntax()?;
    let secrets = record_flag(&a.secret, "--secret")?;
    let configs = record_flag(&a.config, "--config")?;
    let wait = a.detach.wait()?;
    if !a.extra.is_empty() {
        return Err(usage_err("create command takes no arguments"));
    }
    if a.flags.name.is_none() || a.flags.image.is_none() {
        return Err(usage_err("--name and --image are mandatory"));
    }
    let mut spec = flags::new_create_spec();
    flags::merge_head(&a.flags, a.mode.as_deref(), false, &mut spec)?;
    if let Some(network) = &a.flags.network {
        resolve_network(ctx, &mut spec, network).await?;
    }
    flags::merge_tail(&a.flags, &mut spec)?;
    if let Some(secrets) = secrets {
        add_secrets(ctx, &mut spec, &secrets).await?;
    }
    if let Some(configs) = configs {
        add_configs(ctx, &mut spec, &configs).await?;
    }
    let resp = ctx
        .client
        .create_service(api::CreateServiceRequest { spec: Some(spec) })
        .await?
        .into_inner();
    let id = resp.service.map(|s| s.id).unwrap_or_default();
    emit(&format!("{id}\n"));
    if wait {
        progress::follow(ctx, &id, progress::Request::Change).await?;
    }
    Ok(())
}
