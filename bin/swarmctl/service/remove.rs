//! `swarmctl service remove` (alias `rm`): looks the service up by ID or name, removes it and
//! prints the argument as typed.

use clap::Args;

use crate::common::{CmdResult, Ctx, emit, get_service, usage_err};

/// Arguments of `service remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// service ID or name
    #[arg(value_name = "service ID")]
    service: Vec<String>,
}

/// Runs `service remove`.
pub async fn run(a: RemoveArgs, ctx: &mut Ctx) -> CmdResult {
    match a.service.len() {
        0 => return Err(usage_err("service ID missing")),
        1 => {}
        _ => return Err(usage_err("remove command takes exactly 1 argument")),
    }
    let arg = &a.service[0];
    let service = get_service(ctx, arg).await?;
    ctx.client
        .remove_service(api::RemoveServiceRequest {
            service_id: service.id,
        })
        .await?;
    emit(&format!("{arg}\n"));
    Ok(())
}
