//! `swarmctl service logs` (alias `log`). The manager does not serve log subscriptions yet, so
//! after checking its arguments the command fails with `not supported yet: service logs`.

use clap::Args;

use crate::common::{CliError, CmdResult, Ctx, usage_err};

/// Arguments of `service logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// services by ID or name
    #[arg(value_name = "service ID...")]
    services: Vec<String>,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
}

/// Runs `service logs`.
pub async fn run(a: LogsArgs, _ctx: &mut Ctx) -> CmdResult {
    if a.services.is_empty() {
        return Err(usage_err("missing service IDs"));
    }
    // `--follow` is accepted so scripts written for SwarmKit parse; there is nothing to follow yet.
    let _ = a.follow;
    Err(CliError::Grpc(tonic::Status::unimplemented(
        "not supported yet: service logs",
    )))
}
