//! `fila config ...`: the runtime configuration scripts read with `fila.get`.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::{write_json, Align, Table};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila config set tenant.acme.tier gold
  fila config get tenant.acme.tier
  fila config list tenant.
  fila config delete tenant.acme.tier

Scripts read these values with fila.get(key) from their next call.")]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Set a value (it survives restarts).
    #[command(after_help = "\
Examples:
  fila config set tenant.acme.tier gold
  fila config set limits.max_weight 10")]
    Set {
        /// The key, 1 to 256 bytes.
        key: String,
        /// The value, at most 64 KiB.
        value: String,
    },
    /// Print one value (exit status 1 if it is not set).
    #[command(after_help = "\
Examples:
  fila config get tenant.acme.tier
  fila config get tenant.acme.tier --output json | jq -r .value")]
    Get {
        /// The key.
        key: String,
    },
    /// List the entries whose key starts with PREFIX (all without it).
    #[command(after_help = "\
Examples:
  fila config list
  fila config list tenant.acme.
  fila config list --output json | jq -r '.[] | .key'")]
    List {
        /// Only keys starting with this.
        prefix: Option<String>,
    },
    /// Delete a value.
    #[command(after_help = "\
Example:
  fila config delete tenant.acme.tier")]
    Delete {
        /// The key.
        key: String,
    },
}

pub async fn run(ctx: &Context, args: ConfigArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ConfigCommand::Set { key, value } => {
            client.set_config(&key, &value).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "key": key, "value": value }))?;
            } else {
                writeln!(out, "set '{key}'")?;
            }
        }
        ConfigCommand::Get { key } => {
            let value = client.get_config(&key).await.map_err(|e| ctx.failure(e))?;
            let Some(value) = value else {
                return Err(Failure::Refused(format!("configuration key '{key}' is not set")));
            };
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "key": key, "value": value }))?;
            } else {
                writeln!(out, "{value}")?;
            }
        }
        ConfigCommand::List { prefix } => {
            let prefix = prefix.unwrap_or_default();
            let entries = client.list_config(&prefix).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                let entries: Vec<_> =
                    entries.iter().map(|(k, v)| serde_json::json!({ "key": k, "value": v })).collect();
                write_json(&mut out, &entries)?;
            } else if entries.is_empty() {
                if prefix.is_empty() {
                    writeln!(out, "no configuration entries")?;
                } else {
                    writeln!(out, "no configuration entries starting with '{prefix}'")?;
                }
            } else {
                let mut table = Table::new(&[("KEY", Align::Left), ("VALUE", Align::Left)]);
                for (key, value) in &entries {
                    table.row(vec![key.clone(), crate::output::preview(value.as_bytes(), 100)]);
                }
                table.write(&mut out)?;
            }
        }
        ConfigCommand::Delete { key } => {
            client.delete_config(&key).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "key": key, "deleted": true }))?;
            } else {
                writeln!(out, "deleted '{key}'")?;
            }
        }
    }
    Ok(())
}
