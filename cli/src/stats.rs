//! `fila stats`: a queue's counters, its busiest fairness keys and the
//! throttles, once or redrawn every interval.

use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::Args;
use fila_sdk::{Client, Code, KeyStats, QueueStats, ThrottleInfo};
use serde::Serialize;

use crate::cli::{parse_duration, Context};
use crate::failure::Failure;
use crate::output::{self, write_json, Align, Table};
use crate::throttle::{self, ThrottleJson};

/// Clears the terminal and moves the cursor to the top left.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila stats orders
  fila stats orders --keys 25
  fila stats orders --watch                  # redraw every 2s until Ctrl-C
  fila stats orders --watch --interval 500ms --output json | jq .depth

In the keys table, a weight marked * is an operator override (fila weight),
DEFICIT is what is left of the key's current turn, and THROTTLED says every
ready message of the key is waiting for a throttle token, and RATE is the
broker's recent deliveries per second (a 10s decaying average). Throttles
apply to all queues; all of them are listed.")]
pub struct StatsArgs {
    /// The queue.
    queue: String,
    /// Most fairness keys to show, busiest (most ready messages) first; 1 to 10000.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    keys: u32,
    /// Redraw until Ctrl-C (with --output json: one JSON object per line).
    #[arg(long, short = 'w')]
    watch: bool,
    /// Time between redraws with --watch.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, requires = "watch")]
    interval: Duration,
}

#[derive(Debug, Serialize)]
struct KeyJson<'a> {
    fairness_key: &'a str,
    pending: u64,
    leased: u64,
    weight: u32,
    weight_overridden: bool,
    deficit: u64,
    throttled: bool,
    /// The broker's recent deliveries per second (decaying average, ~10 s).
    delivery_rate: f64,
}

impl<'a> From<&'a KeyStats> for KeyJson<'a> {
    fn from(k: &'a KeyStats) -> Self {
        KeyJson {
            fairness_key: &k.fairness_key,
            pending: k.pending,
            leased: k.leased,
            weight: k.weight,
            weight_overridden: k.weight_overridden,
            deficit: k.deficit,
            throttled: k.throttled,
            delivery_rate: k.delivery_rate,
        }
    }
}

/// One snapshot as printed with `--output json`.
#[derive(Debug, Serialize)]
struct StatsJson<'a> {
    queue: &'a str,
    at: String,
    depth: u64,
    in_flight: u64,
    delayed: u64,
    consumers: u32,
    /// Depth of QUEUE.dlq; null if there is none (QUEUE is itself a dead-letter queue).
    dead_letters: Option<u64>,
    active_keys: u64,
    tracked_keys: u64,
    keys: Vec<KeyJson<'a>>,
    throttles: Vec<ThrottleJson<'a>>,
}

/// Everything one refresh fetched.
struct Snapshot {
    at: SystemTime,
    stats: QueueStats,
    dead_letters: Option<u64>,
    throttles: Vec<ThrottleInfo>,
}

async fn fetch(ctx: &Context, client: &Client, queue: &str, keys: u32) -> Result<Snapshot, Failure> {
    let stats = client.queue_stats(queue, Some(keys)).await.map_err(|e| ctx.failure(e))?;
    let dead_letters = match client.get_queue(&format!("{queue}.dlq")).await {
        Ok(dlq) => Some(dlq.depth),
        Err(fila_sdk::Error::Status(s)) if s.code() == Code::NotFound => None,
        Err(e) => return Err(ctx.failure(e)),
    };
    let throttles = client.list_throttles().await.map_err(|e| ctx.failure(e))?;
    Ok(Snapshot { at: SystemTime::now(), stats, dead_letters, throttles })
}

fn write_json_snapshot(out: &mut impl Write, queue: &str, s: &Snapshot) -> Result<(), Failure> {
    let q = &s.stats.queue;
    let json = StatsJson {
        queue,
        at: output::timestamp(s.at),
        depth: q.depth,
        in_flight: q.in_flight,
        delayed: q.delayed,
        consumers: q.consumers,
        dead_letters: s.dead_letters,
        active_keys: s.stats.active_keys,
        tracked_keys: s.stats.tracked_keys,
        keys: s.stats.keys.iter().map(KeyJson::from).collect(),
        throttles: s.throttles.iter().map(ThrottleJson::from).collect(),
    };
    write_json(out, &json)?;
    Ok(())
}

fn write_human(out: &mut impl Write, queue: &str, s: &Snapshot) -> Result<(), Failure> {
    let q = &s.stats.queue;
    let dead_letters = match s.dead_letters {
        Some(depth) => format!("{depth} (in {queue}.dlq)"),
        None => "none (no dead-letter queue)".to_owned(),
    };
    output::write_pairs(
        out,
        &[
            ("queue", queue.to_owned()),
            ("depth", q.depth.to_string()),
            ("in flight", q.in_flight.to_string()),
            ("delayed", q.delayed.to_string()),
            ("consumers", q.consumers.to_string()),
            ("dead letters", dead_letters),
            (
                "active keys",
                format!("{} ({} with ready or leased messages)", s.stats.active_keys, s.stats.tracked_keys),
            ),
        ],
    )?;
    writeln!(out)?;
    if s.stats.keys.is_empty() {
        writeln!(out, "no fairness keys with messages")?;
    } else {
        let mut table = Table::new(&[
            ("KEY", Align::Left),
            ("PENDING", Align::Right),
            ("LEASED", Align::Right),
            ("WEIGHT", Align::Right),
            ("DEFICIT", Align::Right),
            ("THROTTLED", Align::Left),
            ("RATE", Align::Right),
        ]);
        for k in &s.stats.keys {
            let weight = if k.weight_overridden { format!("{}*", k.weight) } else { format!("{} ", k.weight) };
            table.row(vec![
                k.fairness_key.clone(),
                k.pending.to_string(),
                k.leased.to_string(),
                weight,
                k.deficit.to_string(),
                if k.throttled { "yes" } else { "no" }.to_owned(),
                output::rate(k.delivery_rate),
            ]);
        }
        table.write(out)?;
        let shown = s.stats.keys.len() as u64;
        if shown < s.stats.tracked_keys {
            writeln!(out, "(the {shown} busiest of {} keys)", s.stats.tracked_keys)?;
        }
        writeln!(out, "RATE: recent deliveries per second, as the broker measures them (10s decaying average)")?;
        if s.stats.keys.iter().any(|k| k.weight_overridden) {
            writeln!(out, "* weight set by an operator (fila weight)")?;
        }
    }
    writeln!(out)?;
    if s.throttles.is_empty() {
        writeln!(out, "no throttles")?;
    } else {
        writeln!(out, "throttles (all queues):")?;
        throttle::table(&s.throttles).write(out)?;
    }
    Ok(())
}

pub async fn run(ctx: &Context, args: StatsArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    if !args.watch {
        let snapshot = fetch(ctx, &client, &args.queue, args.keys).await?;
        let mut out = std::io::stdout().lock();
        return if ctx.json() {
            write_json_snapshot(&mut out, &args.queue, &snapshot)
        } else {
            write_human(&mut out, &args.queue, &snapshot)
        };
    }
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut interrupt => return Err(Failure::Interrupted),
            _ = ticks.tick() => {}
        }
        let snapshot = tokio::select! {
            _ = &mut interrupt => return Err(Failure::Interrupted),
            snapshot = fetch(ctx, &client, &args.queue, args.keys) => snapshot?,
        };
        // Drawn into a buffer first, so the screen is replaced in one write.
        let mut frame = Vec::new();
        if ctx.json() {
            write_json_snapshot(&mut frame, &args.queue, &snapshot)?;
        } else {
            frame.extend_from_slice(CLEAR_SCREEN.as_bytes());
            write_human(&mut frame, &args.queue, &snapshot)?;
            writeln!(
                frame,
                "\nevery {}, {} (Ctrl-C to stop)",
                output::duration(args.interval),
                output::timestamp(snapshot.at)
            )?;
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&frame)?;
        out.flush()?;
    }
}
