//! `fila weight ...`: operator overrides of fairness-key weights.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::write_json;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila weight set orders tenant-acme 5
  fila weight clear orders tenant-acme

An override wins over the weights messages carry, applies from the key's
next turn and survives restarts. 'fila stats QUEUE' marks overridden weights.")]
pub struct WeightArgs {
    #[command(subcommand)]
    command: WeightCommand,
}

#[derive(Debug, Subcommand)]
enum WeightCommand {
    /// Override a fairness key's weight in a queue.
    #[command(after_help = "\
Example:
  fila weight set orders tenant-acme 5    # 5 deliveries per turn for each 1 of a weight-1 key")]
    Set {
        /// The queue.
        queue: String,
        /// The fairness key.
        key: String,
        /// The weight, 1 to 1000000.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        weight: u32,
    },
    /// Remove the override: the weights messages carry apply again.
    #[command(after_help = "\
Example:
  fila weight clear orders tenant-acme")]
    Clear {
        /// The queue.
        queue: String,
        /// The fairness key.
        key: String,
    },
}

pub async fn run(ctx: &Context, args: WeightArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut out = std::io::stdout().lock();
    let (queue, key, weight) = match args.command {
        WeightCommand::Set { queue, key, weight } => (queue, key, Some(weight)),
        WeightCommand::Clear { queue, key } => (queue, key, None),
    };
    client.set_fairness_weight(&queue, &key, weight).await.map_err(|e| ctx.failure(e))?;
    if ctx.json() {
        write_json(&mut out, &serde_json::json!({ "queue": queue, "fairness_key": key, "weight": weight }))?;
    } else {
        match weight {
            Some(w) => writeln!(out, "fairness key '{key}' of queue '{queue}' now has weight {w}")?,
            None => writeln!(out, "fairness key '{key}' of queue '{queue}' uses its messages' weights again")?,
        }
    }
    Ok(())
}
