//! `swarmctl service logs` (alias `log`): subscribes to the services' logs (`Logs.SubscribeLogs`)
//! and prints each line as SwarmKit's swarmctl does, `<service>.<slot>@<node>❯ ` then the bytes
//! as the task wrote them, stdout lines on stdout and stderr lines on stderr. `--tail N` (the last
//! N lines of each task) and `--since T` (an RFC 3339 time, Unix seconds, or a Go duration
//! before now) are ours: SwarmKit's API has them, its CLI not.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use api::logs_client::LogsClient;
use clap::Args;

use crate::common::{CliError, CmdResult, Ctx, get_service, go_int64, usage_err};

/// Arguments of `service logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// services by ID or name
    #[arg(value_name = "service ID...")]
    services: Vec<String>,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of each task's log (all when unset)
    #[arg(long, value_name = "N")]
    tail: Option<String>,
    /// Show lines written since a time (RFC 3339, Unix seconds) or for a duration before now (10m)
    #[arg(long, value_name = "T")]
    since: Option<String>,
}

/// Go's text of a gRPC error, which SwarmKit's swarmctl prints inside its own messages.
fn rpc_error(context: &str, s: &tonic::Status) -> CliError {
    CliError::Grpc(tonic::Status::new(
        s.code(),
        format!(
            "{context}: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        ),
    ))
}

/// `--since`: an RFC 3339 time, Unix seconds (with a fraction), or a duration before `now`.
fn parse_since(v: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Ok(t);
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs >= 0.0
        && secs.is_finite()
    {
        return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    match api::gofmt::parse_duration(v) {
        Ok(nanos) if nanos >= 0 => Ok(now - Duration::from_nanos(nanos.unsigned_abs())),
        _ => Err(format!(
            "invalid argument \"{v}\" for \"--since\" flag: not a time, Unix seconds or duration"
        )),
    }
}

/// SwarmKit's tail for "the last `n` lines".
fn tail_option(n: i64) -> i64 {
    -(n + 1)
}

/// Runs `service logs`.
pub async fn run(a: LogsArgs, ctx: &mut Ctx) -> CmdResult {
    if a.services.is_empty() {
        return Err(usage_err("missing service IDs"));
    }
    let tail = match &a.tail {
        None => 0,
        Some(v) => {
            let n = go_int64("tail", v)?;
            if n < 0 {
                return Err(usage_err(format!(
                    "invalid argument \"{v}\" for \"--tail\" flag: must not be negative"
                )));
            }
            tail_option(n)
        }
    };
    let since = a
        .since
        .as_deref()
        .map(|v| parse_since(v, SystemTime::now()).map_err(usage_err))
        .transpose()?;
    let mut service_ids = Vec::new();
    for arg in &a.services {
        service_ids.push(get_service(ctx, arg).await?.id);
    }
    let mut client =
        LogsClient::new(ctx.channel.clone()).max_decoding_message_size(api::CLIENT_MAX_RECV);
    let req = api::SubscribeLogsRequest {
        selector: Some(api::LogSelector {
            service_ids,
            ..Default::default()
        }),
        options: Some(api::LogSubscriptionOptions {
            follow: a.follow,
            tail,
            since: since.map(Into::into),
            ..Default::default()
        }),
    };
    let mut stream = client
        .subscribe_logs(req)
        .await
        .map_err(|s| rpc_error("failed to subscribe to logs", &s))?
        .into_inner();
    let mut tasks: HashMap<String, String> = HashMap::new();
    loop {
        let batch = match stream.message().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(()),
            Err(s) => return Err(rpc_error("failed receiving stream message", &s)),
        };
        for msg in batch.messages {
            let context = msg.context.unwrap_or_default();
            let task = task_name(ctx, &mut tasks, &context.task_id).await;
            let node = ctx.node_name(&context.node_id).await;
            let mut line = format!("{task}@{node}❯ ").into_bytes();
            line.extend_from_slice(&msg.data);
            // A closed output (a pipe whose reader left) ends the command quietly.
            let written = if msg.stream == api::LogStream::Stderr as i32 {
                std::io::stderr().lock().write_all(&line)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            };
            if written.is_err() {
                return Ok(());
            }
        }
    }
}

/// SwarmKit's name of a task in log lines: `<service name>.<slot>`, else its ID.
async fn task_name(ctx: &mut Ctx, cache: &mut HashMap<String, String>, id: &str) -> String {
    if ctx.no_resolve {
        return id.to_string();
    }
    if let Some(name) = cache.get(id) {
        return name.clone();
    }
    let req = api::GetTaskRequest {
        task_id: id.to_string(),
    };
    let name = match ctx.client.get_task(req).await {
        Ok(r) => match r.into_inner().task {
            Some(t) => format!("{}.{}", ctx.service_name(&t.service_id).await, t.slot),
            None => id.to_string(),
        },
        Err(_) => id.to_string(),
    };
    cache.insert(id.to_string(), name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_seconds_and_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("1970-01-12T13:46:40Z", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        );
        assert_eq!(
            parse_since("1.5", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(parse_since("10m", now), Ok(now - Duration::from_secs(600)));
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail_option(0), -1);
        assert_eq!(tail_option(10), -11);
    }
}
