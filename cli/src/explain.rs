//! `fila explain`: why a fairness key or a message is not delivered now.

use std::io::Write;

use clap::Args;
use fila_sdk::{ExplainState, ExplainSubject, Explanation};
use serde::Serialize;

use crate::cli::Context;
use crate::failure::Failure;
use crate::output::{self, write_json};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila explain orders --key tenant-acme
  fila explain orders --message 0190a7c2-5b1e-7d3a-9f00-3c5e2a1b4d6f
  fila explain orders --key tenant-acme --output json | jq -r .state

The answer comes from the broker's live scheduler state: no consumer, busy
consumers, a throttle without tokens, messages ahead in the same key, a lease,
a delay or retry backoff, or the dead-letter queue.")]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["key", "message"])))]
pub struct ExplainArgs {
    /// The queue.
    queue: String,
    /// Explain a fairness key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Explain a message, by id.
    #[arg(long, value_name = "ID")]
    message: Option<String>,
}

/// The state as a short lower-case word, for JSON and human output.
fn state_name(state: ExplainState) -> &'static str {
    match state {
        ExplainState::Unspecified => "unspecified",
        ExplainState::Deliverable => "deliverable",
        ExplainState::NoConsumer => "no_consumer",
        ExplainState::ConsumersBusy => "consumers_busy",
        ExplainState::Throttled => "throttled",
        ExplainState::BehindInKey => "behind_in_key",
        ExplainState::Leased => "leased",
        ExplainState::Delayed => "delayed",
        ExplainState::DeadLettered => "dead_lettered",
        ExplainState::NotFound => "not_found",
    }
}

#[derive(Debug, Serialize)]
struct ExplanationJson<'a> {
    queue: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fairness_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    state: &'static str,
    reason: &'a str,
    pending: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    throttle_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ahead: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

pub async fn run(ctx: &Context, args: ExplainArgs) -> Result<(), Failure> {
    let subject = match (&args.key, &args.message) {
        (Some(key), _) => ExplainSubject::FairnessKey(key),
        (None, Some(id)) => ExplainSubject::Message(id),
        (None, None) => unreachable!("clap requires --key or --message"),
    };
    let client = ctx.connect().await?;
    let e: Explanation = client.explain(&args.queue, subject).await.map_err(|e| ctx.failure(e))?;
    let throttled = e.state == ExplainState::Throttled;
    let behind = e.state == ExplainState::BehindInKey;
    let mut out = std::io::stdout().lock();
    if ctx.json() {
        let json = ExplanationJson {
            queue: &args.queue,
            fairness_key: args.key.as_deref(),
            message_id: args.message.as_deref(),
            state: state_name(e.state),
            reason: &e.reason,
            pending: e.pending,
            throttle_key: e.throttle_key.as_deref(),
            tokens: throttled.then_some(e.tokens),
            next_token_in_ms: throttled.then_some(e.next_token_in.as_millis() as u64),
            ahead: behind.then_some(e.ahead),
            until: e.until.map(output::timestamp),
        };
        write_json(&mut out, &json)?;
        return Ok(());
    }
    writeln!(out, "{}", e.reason)?;
    writeln!(out)?;
    let mut pairs = vec![("state", state_name(e.state).replace('_', " "))];
    pairs.push(("ready in key", e.pending.to_string()));
    if let Some(key) = &e.throttle_key {
        pairs.push(("throttle key", key.clone()));
    }
    if throttled {
        pairs.push(("tokens", output::number(e.tokens)));
        pairs.push(("next token in", output::duration(e.next_token_in)));
    }
    if behind {
        pairs.push(("ahead in key", e.ahead.to_string()));
    }
    if let Some(until) = e.until {
        pairs.push(("until", output::timestamp(until)));
    }
    output::write_pairs(&mut out, &pairs.iter().map(|(l, v)| (*l, v.clone())).collect::<Vec<_>>())?;
    Ok(())
}
