//! `swarmctl secret`: ls, inspect, create and remove (SwarmKit's `swarmd/cmd/swarmctl/secret`).
//! Rendering is done by pure functions; `config.rs` is the same family for configs.

use std::io::Read;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::common::{
    CmdResult, Ctx, Positionals, annotations_name, emit, get_secret, print_header, read_file_go,
    usage_err,
};
use crate::humanize::{relative_time_at, rfc3339_nanos};
use crate::tabwriter::TabWriter;

/// Secrets management
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a secret
    #[command(override_usage = "create <secret name>")]
    Create(CreateArgs),
    /// Inspect a secret
    #[command(override_usage = "inspect <secret ID or name>")]
    Inspect(Positionals),
    /// List secrets
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Remove a secret
    #[command(visible_alias = "rm", override_usage = "remove <secret ID or name>")]
    Remove(Positionals),
}

/// Flags of `secret ls`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only display secret IDs
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[command(flatten)]
    pos: Positionals,
}

/// Flags of `secret create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Rather than read the secret from STDIN, read the value from an external secret driver
    #[arg(short = 'd', long, value_name = "string", allow_hyphen_values = true)]
    driver: Option<String>,
    /// Rather than read the secret from STDIN, read from the given file
    #[arg(short = 'f', long, value_name = "string", allow_hyphen_values = true)]
    file: Option<String>,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one secret command.
pub async fn run(cmd: SecretCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        SecretCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let secrets = ctx
                .client
                .list_secrets(api::ListSecretsRequest::default())
                .await?
                .into_inner()
                .secrets;
            emit(&render_list(secrets, a.quiet, SystemTime::now()));
            Ok(())
        }
        SecretCommand::Inspect(a) => {
            let [arg] = &a.args[..] else {
                return Err(usage_err(
                    "inspect command takes a single secret ID or name",
                ));
            };
            let secret = get_secret(ctx, arg).await?;
            emit(&render_summary(&secret));
            Ok(())
        }
        SecretCommand::Create(a) => {
            let [name] = &a.pos.args[..] else {
                return Err(usage_err(
                    "create command takes a unique secret name as an argument, and accepts secret data via stdin or via a file",
                ));
            };
            let driver = a.driver.clone().unwrap_or_default();
            let data = if let Some(file) = &a.file {
                read_file_go(file)
                    .map_err(|e| usage_err(format!("Error reading from file '{file}': {e}")))?
            } else if driver.is_empty() {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).map_err(|e| {
                    usage_err(format!(
                        "Error reading content from STDIN: {}",
                        crate::common::errno_text(&e)
                    ))
                })?;
                data
            } else {
                Vec::new()
            };
            let spec = api::SecretSpec {
                annotations: Some(api::Annotations {
                    name: name.clone(),
                    ..Default::default()
                }),
                data,
                driver: (!driver.is_empty()).then(|| api::Driver {
                    name: driver,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let req = api::CreateSecretRequest { spec: Some(spec) };
            let created = ctx.client.create_secret(req).await?.into_inner();
            emit(&format!(
                "{}\n",
                created.secret.map(|s| s.id).unwrap_or_default()
            ));
            Ok(())
        }
        SecretCommand::Remove(a) => {
            let Some(arg) = a.args.first() else {
                return Err(usage_err("remove command takes a single secret ID or name"));
            };
            let secret = get_secret(ctx, arg).await?;
            let req = api::RemoveSecretRequest {
                secret_id: secret.id.clone(),
            };
            ctx.client.remove_secret(req).await?;
            emit(&format!("{}\n", secret.id));
            Ok(())
        }
    }
}

/// Creation time in nanoseconds, for newest-first ordering.
pub(crate) fn created_ns(meta: Option<&api::Meta>) -> i128 {
    meta.and_then(|m| m.created_at.as_ref())
        .map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
        .unwrap_or(i128::MIN)
}

/// The relative creation time of the `Created` column.
pub(crate) fn created_ago(meta: Option<&api::Meta>, now: SystemTime) -> String {
    let ts = meta.and_then(|m| m.created_at).unwrap_or_default();
    relative_time_at(&ts, now)
}

/// The `ls` table, newest first (or IDs with `-q`).
pub fn render_list(mut secrets: Vec<api::Secret>, quiet: bool, now: SystemTime) -> String {
    secrets.sort_by_key(|s| std::cmp::Reverse(created_ns(s.meta.as_ref())));
    if quiet {
        return secrets.iter().map(|s| format!("{}\n", s.id)).collect();
    }
    let mut w = TabWriter::new(0, 4, 4);
    print_header(&mut w, &["ID", "Name", "Driver", "Created"]);
    for s in &secrets {
        let spec = s.spec.clone().unwrap_or_default();
        w.line(format!(
            "{}\t{}\t{}\t{}",
            s.id,
            annotations_name(spec.annotations.as_ref()),
            spec.driver.map(|d| d.name).unwrap_or_default(),
            created_ago(s.meta.as_ref(), now)
        ));
    }
    w.render()
}

/// The summary lines shared by secret and config inspect.
pub(crate) fn summary_lines(
    w: &mut TabWriter,
    id: &str,
    annotations: Option<&api::Annotations>,
    meta: Option<&api::Meta>,
) {
    if !id.is_empty() {
        w.line(format!("ID\t: {id}"));
    }
    let name = annotations_name(annotations);
    if !name.is_empty() {
        w.line(format!("Name\t: {name}"));
    }
    if let Some(a) = annotations
        && !a.labels.is_empty()
    {
        w.line("Labels\t");
        for (k, v) in &a.labels {
            w.line(format!("  {k}\t: {v}"));
        }
    }
    let created = meta.and_then(|m| m.created_at).unwrap_or_default();
    w.line(format!("Created\t: {}", rfc3339_nanos(&created)));
}

/// The `inspect` summary.
pub fn render_summary(s: &api::Secret) -> String {
    let mut w = TabWriter::new(8, 8, 8);
    summary_lines(
        &mut w,
        &s.id,
        s.spec.as_ref().and_then(|sp| sp.annotations.as_ref()),
        s.meta.as_ref(),
    );
    w.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::tests::{ago, now};

    pub(crate) fn meta(secs_ago: i64) -> Option<api::Meta> {
        Some(api::Meta {
            created_at: Some(ago(secs_ago)),
            ..Default::default()
        })
    }

    fn secret(id: &str, name: &str, secs_ago: i64) -> api::Secret {
        api::Secret {
            id: id.into(),
            meta: meta(secs_ago),
            spec: Some(api::SecretSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected, "\ngot:\n{got}\nexpected:\n{expected}");
    }

    #[test]
    fn list_is_newest_first_with_padding_four() {
        let mut old = secret("X2-id....................", "older", 3600);
        old.spec.as_mut().expect("spec").driver = Some(api::Driver {
            name: "vault".into(),
            ..Default::default()
        });
        check(
            render_list(
                vec![old, secret("X1-id....................", "mysecret", 0)],
                false,
                now(),
            ),
            "ID                           Name        Driver    Created\n\
             --                           ----        ------    -------\n\
             X1-id....................    mysecret              now\n\
             X2-id....................    older       vault     1 hour ago\n",
        );
    }

    #[test]
    fn inspect_summary() {
        let mut s = secret("X1-id....................", "mysecret", 0);
        s.meta.as_mut().expect("meta").created_at = Some(prost_types::Timestamp {
            seconds: 1_795_331_891,
            nanos: 51_454_157,
        });
        check(
            render_summary(&s),
            "ID             : X1-id....................\n\
             Name           : mysecret\n\
             Created        : 2026-11-22T07:18:11.051454157Z\n",
        );
    }
}
