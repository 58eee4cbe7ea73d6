//! `fila lease`: tail a queue's deliveries, optionally acking or nacking
//! each one.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use fila_sdk::{Client, Delivery, LeaseOptions};
use futures::{FutureExt, StreamExt};
use serde::Serialize;

use crate::cli::{parse_duration, Context};
use crate::failure::Failure;
use crate::output::{self, write_json};
use crate::peek::MessageJson;

/// The broker's default window, used to size the window under `--limit`.
const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
/// Tokens per Ack or Nack call when settling held deliveries.
const SETTLE_BATCH: usize = 100;
/// Characters of payload shown per line in human output.
const PREVIEW_CHARS: usize = 100;
/// The fairness-key column grows to the widest key seen, within these bounds.
const MIN_KEY_WIDTH: usize = 8;
const MAX_KEY_WIDTH: usize = 24;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila lease orders                          # watch; leases expire and messages come back
  fila lease orders --ack                    # consume: ack each message once printed
  fila lease orders --nack 'not today' --limit 1
  fila lease orders --ack --idle-exit 2s --output json | jq -r .payload

Without --ack or --nack, the messages stay leased until their visibility
timeout runs out, then are delivered again (attempt + 1).")]
pub struct LeaseArgs {
    /// The queue to lease from.
    queue: String,
    /// Most unacknowledged deliveries at once (broker default 100; capped at --limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: Option<u32>,
    /// Lease duration for these deliveries (default: the queue's visibility timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    visibility_timeout: Option<Duration>,
    /// Acknowledge each message after printing it (deletes it).
    #[arg(long, conflicts_with = "nack")]
    ack: bool,
    /// Nack each message after printing it, with this reason (it is delivered again, attempt + 1).
    #[arg(long, value_name = "REASON")]
    nack: Option<String>,
    /// Stop after this many messages.
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Stop after this long without a delivery (500ms, 5s, 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_exit: Option<Duration>,
}

/// What to do with each delivery once printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settle {
    Keep,
    Ack,
    Nack(String),
}

/// A delivery as printed with `--output json`: the message's fields (as
/// `fila peek` prints them) plus its lease.
#[derive(Debug, Serialize)]
struct DeliveryJson<'a> {
    #[serde(flatten)]
    message: MessageJson<'a>,
    leased_at: String,
    lease_deadline: String,
    lease_token: &'a str,
}

/// Prints deliveries, one line each.
struct Printer {
    json: bool,
    key_width: usize,
}

impl Printer {
    fn print(&mut self, d: &Delivery) -> Result<(), Failure> {
        let mut out = std::io::stdout().lock();
        if self.json {
            let message = d.message();
            let json = DeliveryJson {
                message: MessageJson::from(&message),
                leased_at: output::timestamp(d.leased_at),
                lease_deadline: output::timestamp(d.lease_deadline),
                lease_token: &d.lease_token,
            };
            write_json(&mut out, &json)?;
        } else {
            self.key_width = self.key_width.max(d.fairness_key.chars().count()).min(MAX_KEY_WIDTH);
            writeln!(
                out,
                "{}  {:<kw$}  attempt {:<2}  {:>7}  {}",
                d.id,
                d.fairness_key,
                d.attempt,
                output::size(d.payload.len() as u64),
                output::preview(&d.payload, PREVIEW_CHARS),
                kw = self.key_width,
            )?;
        }
        Ok(())
    }
}

enum Event {
    Interrupted,
    Idle,
    /// Boxed: a delivery is large next to the other variants.
    Item(Box<Option<Result<Delivery, fila_sdk::Error>>>),
}

pub async fn run(ctx: &Context, args: LeaseArgs) -> Result<(), Failure> {
    let settle = match (&args.nack, args.ack) {
        (Some(reason), _) => Settle::Nack(reason.clone()),
        (None, true) => Settle::Ack,
        (None, false) => Settle::Keep,
    };
    // Under --limit the broker must never lease us more than the limit, or
    // the extra messages would sit leased, unseen, until they expire. The
    // window is capped at the limit, and the last `window` deliveries are
    // settled only after the stream is closed: until then every settled
    // message would free a slot that the broker fills.
    let requested = args.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    let window = args.limit.map_or(requested, |limit| limit.min(u64::from(requested)) as u32);
    let settle_at_once = args.limit.map_or(u64::MAX, |limit| limit - u64::from(window));

    let client = ctx.connect().await?;
    let options = LeaseOptions { max_in_flight: Some(window), visibility_timeout: args.visibility_timeout };
    let mut stream = client.lease(&args.queue, options).await.map_err(|e| ctx.failure(e))?;

    let mut printer = Printer { json: ctx.json(), key_width: MIN_KEY_WIDTH };
    let mut held: Vec<Delivery> = Vec::new();
    let mut received = 0u64;
    let mut settled = 0u64;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);

    let outcome = loop {
        if Some(received) == args.limit {
            break Ok(());
        }
        let next = async {
            match args.idle_exit {
                Some(idle) => tokio::time::timeout(idle, stream.next())
                    .await
                    .map_or(Event::Idle, |item| Event::Item(Box::new(item))),
                None => Event::Item(Box::new(stream.next().await)),
            }
        };
        let event = tokio::select! {
            _ = &mut interrupt => Event::Interrupted,
            event = next => event,
        };
        let delivery = match event {
            Event::Idle => break Ok(()),
            Event::Interrupted => {
                // Show (and settle) what has already arrived, then stop.
                let limit = args.limit.unwrap_or(u64::MAX);
                while received < limit {
                    let Some(Some(Ok(delivery))) = stream.next().now_or_never() else { break };
                    received += 1;
                    if printer.print(&delivery).is_err() {
                        break;
                    }
                    held.push(delivery);
                }
                break Err(Failure::Interrupted);
            }
            Event::Item(item) => match *item {
                None => {
                    break Err(Failure::Unreachable(format!(
                        "the broker at {} closed the delivery stream of '{}'",
                        ctx.addr, args.queue
                    )))
                }
                Some(Err(e)) => break Err(ctx.failure(e)),
                Some(Ok(delivery)) => delivery,
            },
        };
        received += 1;
        if let Err(f) = printer.print(&delivery) {
            // Not shown, so not settled: it comes back after its lease.
            break Err(f);
        }
        if settle == Settle::Keep {
            continue;
        }
        if settled < settle_at_once {
            if let Err(f) = settle_all(ctx, &client, &settle, std::slice::from_ref(&delivery)).await {
                break Err(f);
            }
            settled += 1;
        } else {
            held.push(delivery);
        }
    };
    // Closed first, so the broker leases nothing more to it.
    drop(stream);
    let settled_held = settle_all(ctx, &client, &settle, &held).await;
    outcome.and(settled_held)
}

/// Acks or nacks `deliveries` (nothing for [`Settle::Keep`]).
async fn settle_all(ctx: &Context, client: &Client, settle: &Settle, deliveries: &[Delivery]) -> Result<(), Failure> {
    for chunk in deliveries.chunks(SETTLE_BATCH) {
        let (verb, results) = match settle {
            Settle::Keep => return Ok(()),
            Settle::Ack => ("ack", client.ack_batch(chunk.iter().map(|d| d.lease_token.clone()).collect()).await),
            Settle::Nack(reason) => (
                "nack",
                client.nack_batch(chunk.iter().map(|d| (d.lease_token.clone(), reason.clone())).collect()).await,
            ),
        };
        let results = results.map_err(|e| ctx.failure(e).context(format!("cannot {verb} the deliveries")))?;
        for (delivery, result) in chunk.iter().zip(results) {
            result.map_err(|e| ctx.failure(e.into()).context(format!("cannot {verb} message {}", delivery.id)))?;
        }
    }
    Ok(())
}
