//! `fila throttle ...`: token-bucket limits on throttle keys.

use std::io::Write;

use clap::{Args, Subcommand};
use fila_sdk::ThrottleInfo;
use serde::Serialize;

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::{self, write_json, Align, Table};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila throttle set provider:stripe --rate 100
  fila throttle set provider:smtp --rate 0.5 --burst 5
  fila throttle list
  fila throttle delete provider:smtp

A limit applies to every message carrying the key, in every queue.")]
pub struct ThrottleArgs {
    #[command(subcommand)]
    command: ThrottleCommand,
}

#[derive(Debug, Subcommand)]
enum ThrottleCommand {
    /// Set or change a throttle key's rate (takes effect at once, survives restarts).
    #[command(after_help = "\
Examples:
  fila throttle set provider:stripe --rate 100          # 100 deliveries/s, bursts of 100
  fila throttle set provider:smtp --rate 0.5 --burst 5  # one every 2s, bursts of 5")]
    Set {
        /// The throttle key, as messages carry it.
        key: String,
        /// Deliveries per second; fractions allowed (0.5 = one every two seconds).
        #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
        rate: f64,
        /// Most deliveries at once after a quiet period, 1 or more (default: max(1, rate)).
        #[arg(long, value_name = "N", value_parser = parse_burst)]
        burst: Option<f64>,
    },
    /// Show one throttle key's limit and live bucket (exit status 1 if it has no limit).
    #[command(after_help = "\
Example:
  fila throttle get provider:stripe")]
    Get {
        /// The throttle key.
        key: String,
    },
    /// List throttle keys with a limit and their live buckets.
    #[command(after_help = "\
Examples:
  fila throttle list
  fila throttle list --output json | jq '.[] | select(.tokens < 1) | .key'")]
    List,
    /// Remove a throttle key's limit.
    #[command(after_help = "\
Example:
  fila throttle delete provider:smtp")]
    Delete {
        /// The throttle key.
        key: String,
    },
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err("must be more than 0".into()),
        Err(_) => Err("expected deliveries per second, such as 100 or 0.5".into()),
    }
}

fn parse_burst(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(burst) if burst.is_finite() && burst >= 1.0 => Ok(burst),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err("expected a number of deliveries, such as 10".into()),
    }
}

/// A throttle as printed with `--output json`.
#[derive(Debug, Serialize)]
pub struct ThrottleJson<'a> {
    key: &'a str,
    rate_per_second: f64,
    burst: f64,
    tokens: f64,
    blocked_count: u64,
}

impl<'a> From<&'a ThrottleInfo> for ThrottleJson<'a> {
    fn from(t: &'a ThrottleInfo) -> Self {
        ThrottleJson {
            key: &t.key,
            rate_per_second: t.rate_per_second,
            burst: t.burst,
            tokens: t.tokens,
            blocked_count: t.blocked_count,
        }
    }
}

/// The human table of throttles (shared with `fila stats`).
pub fn table(throttles: &[ThrottleInfo]) -> Table {
    let mut table = Table::new(&[
        ("KEY", Align::Left),
        ("RATE", Align::Right),
        ("BURST", Align::Right),
        ("TOKENS", Align::Right),
        ("BLOCKED", Align::Right),
    ]);
    for t in throttles {
        table.row(vec![
            t.key.clone(),
            output::rate(t.rate_per_second),
            output::number(t.burst),
            output::number(t.tokens),
            t.blocked_count.to_string(),
        ]);
    }
    table
}

pub async fn run(ctx: &Context, args: ThrottleArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ThrottleCommand::Set { key, rate, burst } => {
            let throttle = client.set_throttle(&key, rate, burst).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &ThrottleJson::from(&throttle))?;
            } else {
                writeln!(
                    out,
                    "throttle '{}' set to {} (burst {})",
                    throttle.key,
                    output::rate(throttle.rate_per_second),
                    output::number(throttle.burst)
                )?;
            }
        }
        ThrottleCommand::Get { key } => {
            let Some(throttle) = client.get_throttle(&key).await.map_err(|e| ctx.failure(e))? else {
                return Err(Failure::Refused(format!("throttle key '{key}' has no rate set")));
            };
            if ctx.json() {
                write_json(&mut out, &ThrottleJson::from(&throttle))?;
            } else {
                table(std::slice::from_ref(&throttle)).write(&mut out)?;
            }
        }
        ThrottleCommand::List => {
            let throttles = client.list_throttles().await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &throttles.iter().map(ThrottleJson::from).collect::<Vec<_>>())?;
            } else if throttles.is_empty() {
                writeln!(out, "no throttles")?;
            } else {
                table(&throttles).write(&mut out)?;
            }
        }
        ThrottleCommand::Delete { key } => {
            client.remove_throttle(&key).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "key": key, "deleted": true }))?;
            } else {
                writeln!(out, "removed the limit of throttle '{key}'")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_bursts_are_checked() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("inf").is_err());
        assert_eq!(parse_burst("1"), Ok(1.0));
        assert!(parse_burst("0.5").is_err());
    }
}
