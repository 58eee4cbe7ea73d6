//! `fila enqueue`: one message, or many copies of it for load.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use fila_sdk::{Client, NewMessage};
use futures::StreamExt;
use serde::Serialize;

use crate::cli::{parse_duration, parse_header, Context};
use crate::failure::Failure;
use crate::output::{self, write_json};

/// Upper bound on the payload bytes of one Enqueue call, well under the
/// broker's default request limit (64 MiB).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Enqueue calls in flight at once with `--count`.
const CONCURRENT_BATCHES: usize = 4;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila enqueue orders '{\"order\": 42}'
  fila enqueue orders --file order.json -H content-type=application/json
  cat order.json | fila enqueue orders --fairness-key tenant-a --weight 3
  fila enqueue emails hello --throttle-key provider:smtp --throttle-key tenant:acme
  fila enqueue reminders 'call back' --delay 10m
  fila enqueue load-test 'x' --count 100000 > /dev/null")]
pub struct EnqueueArgs {
    /// The queue to enqueue into.
    queue: String,
    /// The payload. Without it (and without --file) it is read from standard input.
    payload: Option<String>,
    /// Read the payload from a file ('-' for standard input).
    #[arg(long, short = 'f', value_name = "PATH", conflicts_with = "payload")]
    file: Option<PathBuf>,
    /// A header; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The group the message is scheduled fairly in (broker default: "default").
    #[arg(long, value_name = "KEY")]
    fairness_key: Option<String>,
    /// The fairness key's relative share, 1 or more.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    weight: Option<u32>,
    /// Deliver no earlier than this from now (500ms, 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    delay: Option<Duration>,
    /// A rate-limit key gating delivery; repeat for more.
    #[arg(long = "throttle-key", value_name = "KEY")]
    throttle_keys: Vec<String>,
    /// Send this many copies, in batches (for load).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Most messages per Enqueue call with --count (the broker's default limit is 1000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
}

#[derive(Debug, Serialize)]
struct EnqueuedJson<'a> {
    queue: &'a str,
    ids: &'a [String],
}

pub async fn run(ctx: &Context, args: EnqueueArgs) -> Result<(), Failure> {
    let payload = read_payload(&args)?;
    let mut message = NewMessage::new(args.queue.clone(), payload);
    message.headers = args.headers.iter().cloned().collect::<HashMap<_, _>>();
    message.fairness_key = args.fairness_key.clone().unwrap_or_default();
    message.weight = args.weight.unwrap_or(0);
    message.throttle_keys = args.throttle_keys.clone();
    message.delay = args.delay;

    let client = ctx.connect().await?;
    let started = Instant::now();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut ids = Vec::new();
    let outcome = send(ctx, &client, &message, &args, |batch_ids| {
        if !ctx.json() {
            for id in batch_ids {
                writeln!(out, "{id}")?;
            }
        }
        ids.extend_from_slice(batch_ids);
        Ok(())
    })
    .await;
    if ctx.json() && (outcome.is_ok() || !ids.is_empty()) {
        write_json(&mut out, &EnqueuedJson { queue: &args.queue, ids: &ids })?;
    }
    out.flush()?;
    drop(out);
    match outcome {
        Ok(()) => {
            if args.count > 1 && !ctx.json() {
                let elapsed = started.elapsed();
                let rate = args.count as f64 / elapsed.as_secs_f64().max(1e-6);
                let shown = Duration::from_millis(elapsed.as_millis().max(1) as u64);
                eprintln!(
                    "enqueued {} messages to '{}' in {} ({rate:.0} messages/s)",
                    args.count,
                    args.queue,
                    output::duration(shown)
                );
            }
            Ok(())
        }
        Err(failure) if args.count > 1 => Err(match failure {
            Failure::Refused(m) => Failure::Refused(format!("{m} ({} of {} messages enqueued)", ids.len(), args.count)),
            Failure::Unreachable(m) => {
                Failure::Unreachable(format!("{m} ({} of {} messages enqueued)", ids.len(), args.count))
            }
            other => other,
        }),
        Err(failure) => Err(failure),
    }
}

/// The payload from the argument, the file, or standard input.
fn read_payload(args: &EnqueueArgs) -> Result<Vec<u8>, Failure> {
    if let Some(payload) = &args.payload {
        return Ok(payload.clone().into_bytes());
    }
    match &args.file {
        Some(path) if path.as_os_str() != "-" => std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read the payload file {}: {e}", path.display()))),
        Some(_) => read_stdin(),
        None if std::io::stdin().is_terminal() => Err(Failure::Usage(
            "no payload: give it as an argument, with --file PATH, or on standard input (see 'fila enqueue --help')"
                .into(),
        )),
        None => read_stdin(),
    }
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut payload = Vec::new();
    std::io::stdin()
        .read_to_end(&mut payload)
        .map_err(|e| Failure::Usage(format!("cannot read the payload from standard input: {e}")))?;
    Ok(payload)
}

/// Messages per call: `--batch-size`, fewer for big messages.
fn batch_len(message: &NewMessage, batch_size: u32) -> usize {
    let bytes = message.payload.len()
        + message.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + message.fairness_key.len()
        + message.throttle_keys.iter().map(String::len).sum::<usize>()
        + message.queue.len()
        + 64;
    (MAX_BATCH_BYTES / bytes).clamp(1, batch_size as usize)
}

/// Sends `--count` copies of `message`, a few calls at a time, and hands the
/// new ids to `on_ids` in order. Stops at the first refusal; the calls
/// already sent are still awaited so their ids are reported.
async fn send(
    ctx: &Context,
    client: &Client,
    message: &NewMessage,
    args: &EnqueueArgs,
    mut on_ids: impl FnMut(&[String]) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let per_batch = batch_len(message, args.batch_size) as u64;
    let batches = args.count.div_ceil(per_batch);
    let stop = Cell::new(false);
    let calls = (0..batches).map_while(|i| {
        if stop.get() {
            return None;
        }
        let len = per_batch.min(args.count - i * per_batch) as usize;
        let batch = vec![message.clone(); len];
        Some(client.enqueue_batch(batch))
    });
    let mut results = futures::stream::iter(calls).buffered(CONCURRENT_BATCHES);
    let mut first_failure = None;
    while let Some(result) = results.next().await {
        let mut ids = Vec::new();
        match result {
            Ok(items) => {
                for item in items {
                    match item {
                        Ok(id) => ids.push(id),
                        Err(e) => {
                            first_failure.get_or_insert_with(|| ctx.failure(e.into()));
                        }
                    }
                }
            }
            Err(e) => {
                first_failure.get_or_insert_with(|| ctx.failure(e));
            }
        }
        if first_failure.is_some() {
            stop.set(true);
        }
        on_ids(&ids)?;
    }
    first_failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_for_big_messages() {
        let small = NewMessage::new("q", "x");
        assert_eq!(batch_len(&small, 1000), 1000);
        assert_eq!(batch_len(&small, 10), 10);
        let big = NewMessage::new("q", vec![0u8; 1024 * 1024]);
        assert_eq!(batch_len(&big, 1000), 7);
        let huge = NewMessage::new("q", vec![0u8; 9 * 1024 * 1024]);
        assert_eq!(batch_len(&huge, 1000), 1);
    }
}
