//! `swarmctl config`: ls, inspect, create and remove (SwarmKit's `swarmd/cmd/swarmctl/config`),
//! the same family as `secret.rs` without drivers. `inspect` prints what the reference means to
//! (its output is garbled): the summary, then `Payload:`, a blank line and the data.

use std::io::Read;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::common::{
    CmdResult, Ctx, Positionals, annotations_name, emit, get_config, print_header, read_file_go,
    usage_err,
};
use crate::secret::{created_ago, created_ns, summary_lines};
use crate::tabwriter::TabWriter;

/// Configs management
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Create a config
    #[command(override_usage = "create <config name>")]
    Create(CreateArgs),
    /// Inspect a config
    #[command(override_usage = "inspect <config ID or name>")]
    Inspect(Positionals),
    /// List configs
    #[command(override_usage = "ls")]
    Ls(ListArgs),
    /// Remove a config
    #[command(visible_alias = "rm", override_usage = "remove <config ID or name>")]
    Remove(Positionals),
}

/// Flags of `config ls`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only display config IDs
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[command(flatten)]
    pos: Positionals,
}

/// Flags of `config create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Rather than read the config from STDIN, read from the given file
    #[arg(short = 'f', long, value_name = "string", allow_hyphen_values = true)]
    file: Option<String>,
    #[command(flatten)]
    pos: Positionals,
}

/// Runs one config command.
pub async fn run(cmd: ConfigCommand, ctx: &mut Ctx) -> CmdResult {
    match cmd {
        ConfigCommand::Ls(a) => {
            if !a.pos.args.is_empty() {
                return Err(usage_err("ls command takes no arguments"));
            }
            let configs = ctx
                .client
                .list_configs(api::ListConfigsRequest::default())
                .await?
                .into_inner()
                .configs;
            emit(&render_list(configs, a.quiet, SystemTime::now()));
            Ok(())
        }
        ConfigCommand::Inspect(a) => {
            let [arg] = &a.args[..] else {
                return Err(usage_err(
                    "inspect command takes a single config ID or name",
                ));
            };
            let config = get_config(ctx, arg).await?;
            emit(&render_summary(&config));
            Ok(())
        }
        ConfigCommand::Create(a) => {
            let [name] = &a.pos.args[..] else {
                return Err(usage_err(
                    "create command takes a unique config name as an argument, and accepts config data via stdin or via a file",
                ));
            };
            let data = if let Some(file) = &a.file {
                read_file_go(file)
                    .map_err(|e| usage_err(format!("Error reading from file '{file}': {e}")))?
            } else {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).map_err(|e| {
                    usage_err(format!(
                        "Error reading content from STDIN: {}",
                        crate::common::errno_text(&e)
                    ))
                })?;
                data
            };
            let spec = api::ConfigSpec {
                annotations: Some(api::Annotations {
                    name: name.clone(),
                    ..Default::default()
                }),
                data,
                ..Default::default()
            };
            let req = api::CreateConfigRequest { spec: Some(spec) };
            let created = ctx.client.create_config(req).await?.into_inner();
            emit(&format!(
                "{}\n",
                created.config.map(|c| c.id).unwrap_or_default()
            ));
            Ok(())
        }
        ConfigCommand::Remove(a) => {
            let Some(arg) = a.args.first() else {
                return Err(usage_err("remove command takes a single config ID or name"));
            };
            let config = get_config(ctx, arg).await?;
            let req = api::RemoveConfigRequest {
                config_id: config.id.clone(),
            };
            ctx.client.remove_config(req).await?;
            emit(&format!("{}\n", config.id));
            Ok(())
        }
    }
}

/// The `ls` table, newest first (or IDs with `-q`).
pub fn render_list(mut configs: Vec<api::Config>, quiet: bool, now: SystemTime) -> String {
    configs.sort_by_key(|c| std::cmp::Reverse(created_ns(c.meta.as_ref())));
    if quiet {
        return configs.iter().map(|c| format!("{}\n", c.id)).collect();
    }
    let mut w = TabWriter::new(0, 4, 4);
    print_header(&mut w, &["ID", "Name", "Created"]);
    for c in &configs {
        w.line(format!(
            "{}\t{}\t{}",
            c.id,
            annotations_name(c.spec.as_ref().and_then(|s| s.annotations.as_ref())),
            created_ago(c.meta.as_ref(), now)
        ));
    }
    w.render()
}

/// The `inspect` output: summary, `Payload:`, a blank line, the data and a newline.
pub fn render_summary(c: &api::Config) -> String {
    let mut w = TabWriter::new(8, 8, 8);
    summary_lines(
        &mut w,
        &c.id,
        c.spec.as_ref().and_then(|s| s.annotations.as_ref()),
        c.meta.as_ref(),
    );
    let mut out = w.render();
    out.push_str("Payload:\n\n");
    let data = c.spec.as_ref().map(|s| s.data.as_slice()).unwrap_or(&[]);
    out.push_str(&String::from_utf8_lossy(data));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::tests::{ago, now};

    fn config(id: &str, name: &str, secs_ago: i64, data: &[u8]) -> api::Config {
        api::Config {
            id: id.into(),
            meta: Some(api::Meta {
                created_at: Some(ago(secs_ago)),
                ..Default::default()
            }),
            spec: Some(api::ConfigSpec {
                annotations: Some(api::Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                data: data.to_vec(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn list_table() {
        assert_eq!(
            render_list(
                vec![
                    config("C2", "older", 120, b""),
                    config("C1-id....................", "mycfg", 0, b"")
                ],
                false,
                now()
            ),
            "ID                           Name     Created\n\
             --                           ----     -------\n\
             C1-id....................    mycfg    now\n\
             C2                           older    2 minutes ago\n"
        );
    }

    #[test]
    fn inspect_prints_payload() {
        let out = render_summary(&config("C1", "mycfg", 0, b"hello"));
        assert!(
            out.starts_with("ID             : C1\nName           : mycfg\nCreated        : "),
            "{out}"
        );
        assert!(out.ends_with("Z\nPayload:\n\nhello\n"), "{out}");
    }
}
