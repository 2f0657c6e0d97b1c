//! `swarmctl service update`: starts from the current spec, applies only the flags that were
//! given (plus secret/config/capability edits and `--force`), refuses an unchanged spec and sends
//! the result with the service's `meta.version`. `--rollback` (ours) asks the manager to go back
//! to the previous spec instead. With `--detach=false` (ours) it then follows the service until
//! it converges (`progress.rs`).

use clap::Args;

use super::flags::{self, ServiceFlags, bool_flag, list_flag, record_flag};
use super::progress::{self, DetachArg};
use super::{add_configs, add_secrets, resolve_network};
use crate::common::{CmdResult, Ctx, emit, get_service, usage_err};

/// Arguments of `service update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// service ID or name
    #[arg(value_name = "service ID")]
    service: Vec<String>,
    #[command(flatten)]
    flags: ServiceFlags,
    /// add a new secret to the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    add_secret: Option<Vec<String>>,
    /// remove a secret from the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    rm_secret: Option<Vec<String>>,
    /// add a new config to the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    add_config: Option<Vec<String>>,
    /// remove a config from the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    rm_config: Option<Vec<String>>,
    /// add a new capability to the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    add_capability: Option<Vec<String>>,
    /// remove a capability from the service
    #[arg(long, value_name = "strings", allow_hyphen_values = true)]
    rm_capability: Option<Vec<String>>,
    /// force tasks to restart even if nothing has changed
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    force: Option<String>,
    /// roll the service back to its previous spec
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "bool")]
    rollback: Option<String>,
    #[command(flatten)]
    detach: DetachArg,
}

impl UpdateArgs {
    /// Whether any flag other than `--rollback` was given.
    fn has_spec_flags(&self) -> bool {
        self.flags != ServiceFlags::default()
            || [
                &self.add_secret,
                &self.rm_secret,
                &self.add_config,
                &self.rm_config,
                &self.add_capability,
                &self.rm_capability,
            ]
            .iter()
            .any(|f| f.is_some())
            || self.force.is_some()
    }
}

/// Runs `service update`.
pub async fn run(a: UpdateArgs, ctx: &mut Ctx) -> CmdResult {
    a.flags.check_syntax()?;
    let add_secret = record_flag(&a.add_secret, "--add-secret")?;
    let rm_secret = list_flag(&a.rm_secret, "--rm-secret")?;
    let add_config = record_flag(&a.add_config, "--add-config")?;
    let rm_config = list_flag(&a.rm_config, "--rm-config")?;
    let add_cap = list_flag(&a.add_capability, "--add-capability")?;
    let rm_cap = list_flag(&a.rm_capability, "--rm-capability")?;
    let force = bool_flag(&a.force, "--force")?.unwrap_or(false);
    let rollback = bool_flag(&a.rollback, "--rollback")?.unwrap_or(false);
    let wait = a.detach.wait()?;
    match a.service.len() {
        0 => return Err(usage_err("service ID missing")),
        1 => {}
        _ => return Err(usage_err("update command takes exactly 1 argument")),
    }
    if rollback && a.has_spec_flags() {
        return Err(usage_err("other flags may not be combined with --rollback"));
    }

    let service = get_service(ctx, &a.service[0]).await?;
    let current = service.spec.clone().unwrap_or_default();
    let mut spec = current.clone();
    flags::merge_head(&a.flags, None, force, &mut spec)?;
    if let Some(network) = &a.flags.network {
        resolve_network(ctx, &mut spec, network).await?;
    }
    flags::merge_tail(&a.flags, &mut spec)?;
    if let Some(items) = add_secret {
        add_secrets(ctx, &mut spec, &items).await?;
    }
    if let Some(items) = rm_secret {
        let names = parse_names(&items, "secret")?;
        flags::remove_secrets(&mut spec, &names);
    }
    if let Some(items) = add_config {
        add_configs(ctx, &mut spec, &items).await?;
    }
    if let Some(items) = rm_config {
        let names = parse_names(&items, "config")?;
        flags::remove_configs(&mut spec, &names);
    }
    if let Some(caps) = add_cap {
        flags::add_capabilities(&mut spec, &caps);
    }
    if let Some(caps) = rm_cap {
        flags::drop_capabilities(&mut spec, &caps);
    }
    if !rollback && flags::same_spec(&spec, &current) {
        return Err(usage_err("no changes detected"));
    }

    let request = api::UpdateServiceRequest {
        service_id: service.id.clone(),
        service_version: service.meta.as_ref().and_then(|m| m.version),
        spec: Some(spec),
        rollback: if rollback {
            api::update_service_request::Rollback::Previous
        } else {
            api::update_service_request::Rollback::None
        } as i32,
    };
    let resp = ctx.client.update_service(request).await?.into_inner();
    let id = resp.service.map(|s| s.id).unwrap_or_default();
    emit(&format!("{id}\n"));
    if wait {
        let request = if rollback {
            progress::Request::Rollback
        } else {
            progress::Request::Change
        };
        progress::follow(ctx, &id, request).await?;
    }
    Ok(())
}

/// The names of `--rm-secret`/`--rm-config` items (`name[:target]`, target ignored).
fn parse_names(items: &[String], kind: &str) -> Result<Vec<String>, flags::FlagError> {
    items
        .iter()
        .map(|s| flags::parse_reference(s, kind).map(|(n, _)| n))
        .collect()
}
