//! `fila lua test`: run a policy script once against a sample message.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use fila_sdk::proto::test_script_response::Outcome;
use fila_sdk::ScriptTest;
use serde_json::json;

use crate::cli::{parse_header, Context};
use crate::failure::{self, Failure};
use crate::output::{self, write_json};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila lua test --on-enqueue route.lua -H tenant=acme --payload '{\"plan\": \"gold\"}'
  fila lua test --on-failure retry.lua --attempts 3 --error 'timeout'
  fila lua test --on-enqueue route.lua --config tenant.acme.tier=gold --output json")]
pub struct LuaArgs {
    #[command(subcommand)]
    command: LuaCommand,
}

#[derive(Debug, Subcommand)]
enum LuaCommand {
    /// Run a script's hook once against a sample message and print its decision.
    #[command(after_help = "\
Examples:
  fila lua test --on-enqueue route.lua -H tenant=acme --payload '{\"plan\": \"gold\"}'
  fila lua test --on-enqueue route.lua --payload-file sample.json --queue orders
  fila lua test --on-failure retry.lua --attempts 3 --error 'upstream timeout'
  fila lua test --on-enqueue route.lua --config tenant.acme.tier=gold

The broker runs the script in the same sandbox and limits as in a queue, but
no queue is touched and fila.get sees only the --config values, so a test
gives the same answer every time. If the script fails (syntax error, missing
hook function, runtime error, time or memory limit, invalid return value) the
error is printed with Lua's line number and the exit status is 1.")]
    Test(TestArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("script").required(true).args(["on_enqueue", "on_failure"])))]
struct TestArgs {
    /// A script defining `function on_enqueue(msg)`.
    #[arg(long, value_name = "FILE")]
    on_enqueue: Option<PathBuf>,
    /// A script defining `function on_failure(msg, attempts, error)`.
    #[arg(long, value_name = "FILE")]
    on_failure: Option<PathBuf>,
    /// The sample message's queue (msg.queue).
    #[arg(long, value_name = "QUEUE", default_value = "")]
    queue: String,
    /// A header of the sample message (msg.headers); repeat for more.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The sample message's payload (msg.payload).
    #[arg(long, value_name = "TEXT", conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the sample payload from a file.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// on_failure: failed attempts so far.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,
    /// on_failure: the failure's error text.
    #[arg(long, value_name = "TEXT", default_value = "")]
    error: String,
    /// A value fila.get(KEY) returns; repeat for more (others read as nil).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
    config: Vec<(String, String)>,
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE, for example --config tenant.acme.tier=gold".into()),
    }
}

/// Reads a script file; a file that cannot be read is a usage error.
pub fn read_script(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read the script file {}: {e}", path.display())))
}

pub async fn run(ctx: &Context, args: LuaArgs) -> Result<(), Failure> {
    let LuaCommand::Test(args) = args.command;
    let (hook, path) = match (&args.on_enqueue, &args.on_failure) {
        (Some(path), _) => ("on_enqueue", path),
        (None, Some(path)) => ("on_failure", path),
        (None, None) => unreachable!("clap requires --on-enqueue or --on-failure"),
    };
    let source = read_script(path)?;
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(file)) => std::fs::read(file)
            .map_err(|e| Failure::Usage(format!("cannot read the payload file {}: {e}", file.display())))?,
        (None, None) => Vec::new(),
    };
    let mut test = ScriptTest {
        queue: args.queue.clone(),
        headers: args.headers.iter().cloned().collect::<HashMap<_, _>>(),
        payload: payload.into(),
        attempts: args.attempts,
        error: args.error.clone(),
        config: args.config.iter().cloned().collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    if hook == "on_enqueue" {
        test.on_enqueue = Some(source);
    } else {
        test.on_failure = Some(source);
    }

    let client = ctx.connect().await?;
    let outcome = client.test_script(test).await.map_err(|e| ctx.failure(e))?;
    let mut out = std::io::stdout().lock();
    match outcome {
        Outcome::Error(error) => {
            let code = fila_sdk::Code::from_i32(error.code);
            Err(failure::from_code(code, &error.message, &ctx.addr).context(path.display()))
        }
        Outcome::Enqueue(d) => {
            let throttle_keys = d.throttle_keys_set.then_some(&d.throttle_keys);
            if ctx.json() {
                let decision = json!({
                    "fairness_key": d.fairness_key,
                    "weight": d.weight,
                    "throttle_keys": throttle_keys,
                });
                write_json(&mut out, &json!({ "hook": hook, "decision": decision }))?;
            } else {
                let unchanged = || "(unchanged: the producer's)".to_owned();
                writeln!(out, "on_enqueue decided:")?;
                output::write_pairs(
                    &mut out,
                    &[
                        ("  fairness key", d.fairness_key.clone().unwrap_or_else(unchanged)),
                        ("  weight", d.weight.map_or_else(unchanged, |w| w.to_string())),
                        (
                            "  throttle keys",
                            match throttle_keys {
                                None => unchanged(),
                                Some(keys) if keys.is_empty() => "(none)".to_owned(),
                                Some(keys) => keys.join(", "),
                            },
                        ),
                    ],
                )?;
            }
            Ok(())
        }
        Outcome::Failure(d) => {
            let retry = d.action == "retry";
            if ctx.json() {
                let decision = json!({
                    "action": d.action,
                    "delay_ms": retry.then_some(d.delay_ms),
                });
                write_json(&mut out, &json!({ "hook": hook, "decision": decision }))?;
            } else {
                match d.action.as_str() {
                    "retry" => writeln!(
                        out,
                        "on_failure decided: retry after {}",
                        output::duration(std::time::Duration::from_millis(d.delay_ms))
                    )?,
                    "dlq" => writeln!(out, "on_failure decided: move the message to the dead-letter queue")?,
                    "default" => writeln!(
                        out,
                        "on_failure decided: nothing (it returned nil), so the queue's default policy applies"
                    )?,
                    other => writeln!(out, "on_failure decided: {other}")?,
                }
            }
            Ok(())
        }
    }
}
