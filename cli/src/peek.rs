//! `fila peek`: browse ready messages without leasing them.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use base64::Engine;
use clap::Args;
use fila_sdk::Message;
use serde::Serialize;

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::{self, write_json, Align, Table};

/// Characters of payload shown per row in human output.
const PREVIEW_CHARS: usize = 60;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila peek orders
  fila peek orders --key tenant-acme --limit 50
  fila peek orders --output json | jq -r .payload

Messages are listed in the order they would be delivered within each key;
nothing is leased, so consumers are not disturbed. Leased and delayed
messages are not shown.")]
pub struct PeekArgs {
    /// The queue to browse.
    queue: String,
    /// Only this fairness key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Most messages to show, 1 to 1000.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
}

/// A message as printed with `--output json` (one per line).
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    id: &'a str,
    queue: &'a str,
    fairness_key: &'a str,
    weight: u32,
    throttle_keys: &'a [String],
    /// The number its next delivery will have.
    attempt: u32,
    last_error: &'a str,
    headers: BTreeMap<&'a str, &'a str>,
    payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    payload_size: usize,
    enqueued_at: String,
}

impl<'a> From<&'a Message> for MessageJson<'a> {
    fn from(m: &'a Message) -> Self {
        let utf8 = std::str::from_utf8(&m.payload).is_ok();
        MessageJson {
            id: &m.id,
            queue: &m.queue,
            fairness_key: &m.fairness_key,
            weight: m.weight,
            throttle_keys: &m.throttle_keys,
            attempt: m.attempt,
            last_error: &m.last_error,
            headers: m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
            payload_base64: (!utf8).then(|| base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            payload_size: m.payload.len(),
            enqueued_at: output::timestamp(m.enqueued_at),
        }
    }
}

pub async fn run(ctx: &Context, args: PeekArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let messages = client.peek(&args.queue, args.key.as_deref(), args.limit).await.map_err(|e| ctx.failure(e))?;
    let mut out = std::io::stdout().lock();
    if ctx.json() {
        for m in &messages {
            write_json(&mut out, &MessageJson::from(m))?;
        }
        return Ok(());
    }
    if messages.is_empty() {
        match &args.key {
            Some(key) => writeln!(out, "no ready messages of fairness key '{key}' in '{}'", args.queue)?,
            None => writeln!(out, "no ready messages in '{}'", args.queue)?,
        }
        return Ok(());
    }
    let now = SystemTime::now();
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("KEY", Align::Left),
        ("ATTEMPT", Align::Right),
        ("AGE", Align::Right),
        ("SIZE", Align::Right),
        ("PAYLOAD", Align::Left),
    ]);
    for m in &messages {
        table.row(vec![
            m.id.clone(),
            m.fairness_key.clone(),
            m.attempt.to_string(),
            output::age(m.enqueued_at, now),
            output::size(m.payload.len() as u64),
            output::preview(&m.payload, PREVIEW_CHARS),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}
