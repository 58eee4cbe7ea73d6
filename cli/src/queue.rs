//! `fila queue ...`: create, delete, list and inspect queues.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use fila_sdk::{QueueInfo, QueueOptions};
use serde::Serialize;

use crate::cli::{parse_duration, Context};
use crate::failure::Failure;
use crate::output::{self, write_json, Align, Table};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila queue create orders --visibility-timeout 1m
  fila queue list
  fila queue inspect orders --output json
  fila queue delete orders")]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Create a queue.
    #[command(after_help = "\
Examples:
  fila queue create orders
  fila queue create emails --visibility-timeout 5m
  fila queue create reports --visibility-timeout 500ms --quantum 10 --max-attempts 3

Every queue gets a dead-letter queue NAME.dlq with it.")]
    Create {
        /// Name: 1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit.
        name: String,
        /// How long a lease lasts before its message is delivered again (500ms, 30s, 5m; broker default 30s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        visibility_timeout: Option<Duration>,
        /// Deliveries per fair-scheduling turn for a key of weight 1 (broker default 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        quantum: Option<u32>,
        /// Failed attempts before a message moves to the dead-letter queue NAME.dlq (broker default 10).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: Option<u32>,
    },
    /// Delete a queue and all its messages.
    #[command(after_help = "\
Example:
  fila queue delete orders")]
    Delete {
        /// The queue to delete.
        name: String,
    },
    /// List all queues (dead-letter queues included) with their counters.
    #[command(after_help = "\
Examples:
  fila queue list
  fila queue list --output json | jq -r '.[].name'")]
    List,
    /// Show one queue's settings and counters.
    #[command(after_help = "\
Examples:
  fila queue inspect orders
  fila queue inspect orders --output json | jq .depth")]
    Inspect {
        /// The queue to show.
        name: String,
    },
}

/// A queue as printed with `--output json`.
#[derive(Debug, Serialize)]
struct QueueJson<'a> {
    name: &'a str,
    depth: u64,
    in_flight: u64,
    delayed: u64,
    consumers: u32,
    visibility_timeout_ms: u64,
    quantum: u32,
    max_attempts: u32,
}

impl<'a> From<&'a QueueInfo> for QueueJson<'a> {
    fn from(q: &'a QueueInfo) -> Self {
        QueueJson {
            name: &q.name,
            depth: q.depth,
            in_flight: q.in_flight,
            delayed: q.delayed,
            consumers: q.consumers,
            visibility_timeout_ms: q.visibility_timeout.as_millis() as u64,
            quantum: q.quantum,
            max_attempts: q.max_attempts,
        }
    }
}

pub async fn run(ctx: &Context, args: QueueArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        QueueCommand::Create { name, visibility_timeout, quantum, max_attempts } => {
            let options = QueueOptions { visibility_timeout, quantum, max_attempts };
            let queue = client.create_queue(&name, options).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &QueueJson::from(&queue))?;
            } else {
                writeln!(
                    out,
                    "created queue '{}' (visibility timeout {}, quantum {}, max attempts {})",
                    queue.name,
                    output::duration(queue.visibility_timeout),
                    queue.quantum,
                    queue.max_attempts
                )?;
            }
        }
        QueueCommand::Delete { name } => {
            let deleted = client.delete_queue(&name).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "name": name, "deleted_messages": deleted }))?;
            } else {
                let noun = if deleted == 1 { "message" } else { "messages" };
                writeln!(out, "deleted queue '{name}' and its {deleted} {noun}")?;
            }
        }
        QueueCommand::List => {
            let queues = client.list_queues().await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &queues.iter().map(QueueJson::from).collect::<Vec<_>>())?;
            } else if queues.is_empty() {
                writeln!(out, "no queues")?;
            } else {
                let mut table = Table::new(&[
                    ("NAME", Align::Left),
                    ("DEPTH", Align::Right),
                    ("IN FLIGHT", Align::Right),
                    ("DELAYED", Align::Right),
                    ("CONSUMERS", Align::Right),
                    ("VISIBILITY TIMEOUT", Align::Right),
                ]);
                for q in &queues {
                    table.row(vec![
                        q.name.clone(),
                        q.depth.to_string(),
                        q.in_flight.to_string(),
                        q.delayed.to_string(),
                        q.consumers.to_string(),
                        output::duration(q.visibility_timeout),
                    ]);
                }
                table.write(&mut out)?;
            }
        }
        QueueCommand::Inspect { name } => {
            let queue = client.get_queue(&name).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &QueueJson::from(&queue))?;
            } else {
                output::write_pairs(
                    &mut out,
                    &[
                        ("name", queue.name.clone()),
                        ("depth", queue.depth.to_string()),
                        ("in flight", queue.in_flight.to_string()),
                        ("delayed", queue.delayed.to_string()),
                        ("consumers", queue.consumers.to_string()),
                        ("visibility timeout", output::duration(queue.visibility_timeout)),
                        ("quantum", queue.quantum.to_string()),
                        ("max attempts", queue.max_attempts.to_string()),
                    ],
                )?;
            }
        }
    }
    Ok(())
}
