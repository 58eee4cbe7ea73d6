//! `fila redrive`: move dead-lettered messages back to their queue.

use std::io::Write;

use clap::Args;

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::write_json;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila redrive orders             # every ready message of orders.dlq back to orders
  fila redrive orders --max 100

Messages move oldest first per fairness key, with their attempt counts reset.
Leased dead letters stay where they are.")]
pub struct RedriveArgs {
    /// The queue whose dead letters (QUEUE.dlq) to move back.
    queue: String,
    /// Move at most this many.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max: Option<u64>,
}

pub async fn run(ctx: &Context, args: RedriveArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let moved = client.redrive(&args.queue, args.max).await.map_err(|e| ctx.failure(e))?;
    let mut out = std::io::stdout().lock();
    if ctx.json() {
        write_json(&mut out, &serde_json::json!({ "queue": args.queue, "moved": moved }))?;
    } else {
        let noun = if moved == 1 { "message" } else { "messages" };
        writeln!(out, "moved {moved} {noun} from '{}.dlq' back to '{}'", args.queue, args.queue)?;
    }
    Ok(())
}
