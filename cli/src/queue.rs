//! `fila queue ...`: create, delete, list and inspect queues.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use fila_sdk::proto::HookStats;
use fila_sdk::{QueueInfo, QueueOptions, QueueScripts};
use serde::Serialize;

use crate::cli::{parse_duration, Context};
use crate::failure::Failure;
use crate::lua::read_script;
use crate::output::{self, write_json, Align, Table};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fila queue create orders --visibility-timeout 1m
  fila queue create orders --on-enqueue route.lua --on-failure retry.lua
  fila queue update orders --quantum 10 --max-attempts 5
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
  fila queue create orders --on-enqueue route.lua --on-failure retry.lua

Every queue gets a dead-letter queue NAME.dlq with it. Scripts are checked
first: one that does not compile or lacks its hook function is refused with
Lua's message (which names the line), and nothing is created.")]
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
        /// Largest payload this queue accepts, in bytes (default: the server's maximum, which also caps it).
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
        max_payload_bytes: Option<u64>,
        /// A Lua script defining `function on_enqueue(msg)`, run for every message enqueued.
        #[arg(long, value_name = "FILE")]
        on_enqueue: Option<PathBuf>,
        /// A Lua script defining `function on_failure(msg, attempts, error)`, run after each failed attempt.
        #[arg(long, value_name = "FILE")]
        on_failure: Option<PathBuf>,
    },
    /// Change a queue's settings or scripts at runtime.
    #[command(after_help = "\
Examples:
  fila queue update orders --visibility-timeout 5m
  fila queue update orders --quantum 10 --max-attempts 5
  fila queue update orders --on-enqueue route.lua
  fila queue update orders --remove-on-failure

Options not given keep their value. A new visibility timeout applies to later
leases, a new quantum from the next turn, a new max attempts to the next
failure, new scripts to later messages and failures. Scripts are changed
first, then settings: if the broker refuses a setting, the scripts stay
changed.")]
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args([
        "visibility_timeout", "quantum", "max_attempts", "max_payload_bytes", "on_enqueue", "on_failure",
        "remove_on_enqueue", "remove_on_failure",
    ])))]
    Update {
        /// The queue to change.
        name: String,
        /// How long a lease lasts before its message is delivered again (500ms, 30s, 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        visibility_timeout: Option<Duration>,
        /// Deliveries per fair-scheduling turn for a key of weight 1.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        quantum: Option<u32>,
        /// Failed attempts before a message moves to the dead-letter queue NAME.dlq.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: Option<u32>,
        /// Largest payload this queue accepts, in bytes; 0 returns to the server's maximum.
        #[arg(long, value_name = "BYTES")]
        max_payload_bytes: Option<u64>,
        /// Replace the on_enqueue script with this file.
        #[arg(long, value_name = "FILE", conflicts_with = "remove_on_enqueue")]
        on_enqueue: Option<PathBuf>,
        /// Replace the on_failure script with this file.
        #[arg(long, value_name = "FILE", conflicts_with = "remove_on_failure")]
        on_failure: Option<PathBuf>,
        /// Remove the on_enqueue script.
        #[arg(long)]
        remove_on_enqueue: bool,
        /// Remove the on_failure script.
        #[arg(long)]
        remove_on_failure: bool,
    },
    /// Delete every ready and delayed message of a queue (leased ones stay).
    #[command(after_help = "\
Examples:
  fila queue purge orders          # asks for confirmation
  fila queue purge orders --yes    # in scripts

Leased messages stay until they are acked or their lease runs out. The queue,
its settings and its dead-letter queue are kept.")]
    Purge {
        /// The queue to empty.
        name: String,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
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
    /// Show one queue's settings, counters, scripts and hook counters.
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
    max_payload_bytes: u64,
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
            max_payload_bytes: q.max_payload_bytes,
        }
    }
}

/// `fila queue inspect` with `--output json`: the queue, its scripts and
/// the counters of its hooks (null without a script).
#[derive(Debug, Serialize)]
struct InspectJson<'a> {
    #[serde(flatten)]
    queue: QueueJson<'a>,
    scripts: ScriptsJson<'a>,
    hooks: HooksJson,
}

#[derive(Debug, Serialize)]
struct ScriptsJson<'a> {
    on_enqueue: Option<&'a str>,
    on_failure: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct HooksJson {
    on_enqueue: Option<HookJson>,
    on_failure: Option<HookJson>,
}

#[derive(Debug, Serialize)]
struct HookJson {
    calls: u64,
    errors: u64,
    bad_returns: u64,
    timeouts: u64,
    memory_errors: u64,
    skipped: u64,
    consecutive_failures: u32,
    breaker: String,
}

impl From<&HookStats> for HookJson {
    fn from(h: &HookStats) -> Self {
        HookJson {
            calls: h.calls,
            errors: h.errors,
            bad_returns: h.bad_returns,
            timeouts: h.timeouts,
            memory_errors: h.memory_errors,
            skipped: h.skipped,
            consecutive_failures: h.consecutive_failures,
            breaker: h.breaker.clone(),
        }
    }
}

/// Asks on the terminal before a purge; without a terminal, `--yes` is required.
fn confirm_purge(queue: &QueueInfo) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::Usage(format!(
            "not purging '{}' without confirmation: add --yes (standard input is not a terminal)",
            queue.name
        )));
    }
    let purgeable = queue.depth.saturating_sub(queue.in_flight);
    eprint!("delete the {purgeable} ready and delayed messages of '{}'? [y/N] ", queue.name);
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).map_err(|e| Failure::Usage(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Usage("not purged".into()))
    }
}

/// `, with an on_enqueue script` and the like, for `queue create`.
fn script_note(on_enqueue: bool, on_failure: bool) -> &'static str {
    match (on_enqueue, on_failure) {
        (true, true) => ", with on_enqueue and on_failure scripts",
        (true, false) => ", with an on_enqueue script",
        (false, true) => ", with an on_failure script",
        (false, false) => "",
    }
}

/// A script on one line: its first non-blank line, its length and size.
fn describe_script(source: &str) -> String {
    let lines = source.lines().count();
    let first = source.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let noun = if lines == 1 { "line" } else { "lines" };
    format!("{lines} {noun}, {}: {}", output::size(source.len() as u64), output::preview(first.as_bytes(), 60))
}

/// A hook's counters on one line.
fn describe_hook(h: &HookStats) -> String {
    let mut text = format!(
        "{} calls, {} errors, {} bad returns, {} timeouts, {} memory errors",
        h.calls, h.errors, h.bad_returns, h.timeouts, h.memory_errors
    );
    if h.skipped > 0 {
        text.push_str(&format!(", {} skipped", h.skipped));
    }
    text.push_str(&format!("; breaker {}", h.breaker.replace('_', "-")));
    if h.consecutive_failures > 0 {
        text.push_str(&format!(" ({} failures in a row)", h.consecutive_failures));
    }
    text
}

pub async fn run(ctx: &Context, args: QueueArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        QueueCommand::Create {
            name,
            visibility_timeout,
            quantum,
            max_attempts,
            max_payload_bytes,
            on_enqueue,
            on_failure,
        } => {
            let options = QueueOptions { visibility_timeout, quantum, max_attempts, max_payload_bytes };
            let scripts = QueueScripts {
                on_enqueue: on_enqueue.as_deref().map(read_script).transpose()?,
                on_failure: on_failure.as_deref().map(read_script).transpose()?,
            };
            let has_scripts = scripts != QueueScripts::default();
            let queue = if has_scripts {
                client.create_queue_with_scripts(&name, options, scripts).await
            } else {
                client.create_queue(&name, options).await
            };
            let queue = queue.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &QueueJson::from(&queue))?;
            } else {
                writeln!(
                    out,
                    "created queue '{}' (visibility timeout {}, quantum {}, max attempts {}{})",
                    queue.name,
                    output::duration(queue.visibility_timeout),
                    queue.quantum,
                    queue.max_attempts,
                    script_note(on_enqueue.is_some(), on_failure.is_some()),
                )?;
            }
        }
        QueueCommand::Update {
            name,
            visibility_timeout,
            quantum,
            max_attempts,
            max_payload_bytes,
            on_enqueue,
            on_failure,
            remove_on_enqueue,
            remove_on_failure,
        } => {
            let on_enqueue = match on_enqueue {
                Some(path) => Some(read_script(&path)?),
                None if remove_on_enqueue => Some(String::new()),
                None => None,
            };
            let on_failure = match on_failure {
                Some(path) => Some(read_script(&path)?),
                None if remove_on_failure => Some(String::new()),
                None => None,
            };
            let mut queue = None;
            if on_enqueue.is_some() || on_failure.is_some() {
                let updated = client
                    .update_queue_scripts(&name, on_enqueue.as_deref(), on_failure.as_deref())
                    .await
                    .map_err(|e| ctx.failure(e))?;
                queue = Some(updated);
            }
            let options = QueueOptions { visibility_timeout, quantum, max_attempts, max_payload_bytes };
            if visibility_timeout.is_some()
                || quantum.is_some()
                || max_attempts.is_some()
                || max_payload_bytes.is_some()
            {
                let updated = client.update_queue(&name, options).await.map_err(|e| {
                    let failure = ctx.failure(e);
                    if queue.is_some() {
                        failure.context("the scripts were changed, but not the settings")
                    } else {
                        failure
                    }
                })?;
                queue = Some(updated);
            }
            let queue = queue.expect("clap requires at least one change");
            if ctx.json() {
                write_json(&mut out, &QueueJson::from(&queue))?;
            } else {
                let mut changes = Vec::new();
                if visibility_timeout.is_some() {
                    changes.push(format!("visibility timeout {}", output::duration(queue.visibility_timeout)));
                }
                if quantum.is_some() {
                    changes.push(format!("quantum {}", queue.quantum));
                }
                if max_attempts.is_some() {
                    changes.push(format!("max attempts {}", queue.max_attempts));
                }
                if max_payload_bytes.is_some() {
                    changes.push(format!("max payload {}", payload_limit(queue.max_payload_bytes)));
                }
                for (hook, change) in [("on_enqueue", &on_enqueue), ("on_failure", &on_failure)] {
                    match change.as_deref() {
                        Some("") => changes.push(format!("{hook} script removed")),
                        Some(_) => changes.push(format!("{hook} script replaced")),
                        None => {}
                    }
                }
                writeln!(out, "updated queue '{}': {}", queue.name, changes.join(", "))?;
            }
        }
        QueueCommand::Purge { name, yes } => {
            if !yes {
                let queue = client.get_queue(&name).await.map_err(|e| ctx.failure(e))?;
                confirm_purge(&queue)?;
            }
            let purged = client.purge(&name).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                write_json(&mut out, &serde_json::json!({ "name": name, "purged_messages": purged }))?;
            } else {
                let noun = if purged == 1 { "message" } else { "messages" };
                writeln!(out, "purged {purged} {noun} from '{name}'")?;
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
            let (scripts, on_enqueue_stats, on_failure_stats) =
                client.queue_scripts(&name).await.map_err(|e| ctx.failure(e))?;
            if ctx.json() {
                let json = InspectJson {
                    queue: QueueJson::from(&queue),
                    scripts: ScriptsJson {
                        on_enqueue: scripts.on_enqueue.as_deref(),
                        on_failure: scripts.on_failure.as_deref(),
                    },
                    hooks: HooksJson {
                        on_enqueue: on_enqueue_stats.as_ref().map(HookJson::from),
                        on_failure: on_failure_stats.as_ref().map(HookJson::from),
                    },
                };
                write_json(&mut out, &json)?;
            } else {
                let mut pairs = vec![
                    ("name", queue.name.clone()),
                    ("depth", queue.depth.to_string()),
                    ("in flight", queue.in_flight.to_string()),
                    ("delayed", queue.delayed.to_string()),
                    ("consumers", queue.consumers.to_string()),
                    ("visibility timeout", output::duration(queue.visibility_timeout)),
                    ("quantum", queue.quantum.to_string()),
                    ("max attempts", queue.max_attempts.to_string()),
                    ("max payload", payload_limit(queue.max_payload_bytes)),
                ];
                for (label, source, stats) in [
                    ("on_enqueue", &scripts.on_enqueue, &on_enqueue_stats),
                    ("on_failure", &scripts.on_failure, &on_failure_stats),
                ] {
                    pairs.push((label, source.as_deref().map_or_else(|| "none".to_owned(), describe_script)));
                    if let Some(stats) = stats {
                        pairs.push(("", describe_hook(stats)));
                    }
                }
                output::write_pairs(&mut out, &pairs)?;
            }
        }
    }
    Ok(())
}

/// A queue's payload limit for people (0 means the server's).
fn payload_limit(bytes: u64) -> String {
    if bytes == 0 {
        "server maximum".to_owned()
    } else {
        output::size(bytes)
    }
}
