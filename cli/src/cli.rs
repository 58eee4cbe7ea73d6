//! The command line: global options, the subcommands (one module per noun),
//! and the parsers their arguments share.

use std::time::Duration;

use clap::{Parser, Subcommand};
use fila_sdk::Client;

use crate::failure::Failure;
use crate::output::Format;
use crate::{config, enqueue, explain, lease, lua, peek, queue, redrive, stats, throttle, weight};

/// The broker's default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5555";

/// How long to wait for the broker to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const EXAMPLES: &str = "\
Examples:
  fila queue create orders --visibility-timeout 30s
  echo '{\"id\": 1}' | fila enqueue orders --fairness-key tenant-a
  fila lease orders --ack --limit 10
  fila stats orders --watch
  fila explain orders --key tenant-a
  fila --addr broker.internal:5555 queue list --output json

Exit status: 0 success, 1 refused by the broker, 2 usage error, 3 broker unreachable.";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  fila completions bash > ~/.local/share/bash-completion/completions/fila
  fila completions zsh > \"${fpath[1]}/_fila\"
  fila completions fish > ~/.config/fish/completions/fila.fish";

/// Command-line client of the Fila message broker.
#[derive(Debug, Parser)]
#[command(name = "fila", version, after_help = EXAMPLES, propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    /// The broker's address, HOST:PORT (or http://HOST:PORT).
    #[arg(long, global = true, env = "FILA_ADDR", default_value = DEFAULT_ADDR, value_name = "HOST:PORT")]
    pub addr: String,

    /// Output format: tables and sentences, or one JSON document per line.
    #[arg(long, short = 'o', global = true, env = "FILA_OUTPUT", value_enum, default_value_t = Format::Human)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, delete, list and inspect queues.
    Queue(queue::QueueArgs),
    /// Enqueue a message (or many copies of it).
    Enqueue(enqueue::EnqueueArgs),
    /// Lease messages from a queue and print them as they arrive.
    Lease(lease::LeaseArgs),
    /// Browse ready messages without leasing them.
    Peek(peek::PeekArgs),
    /// Show a queue's counters, busiest fairness keys and throttles (optionally live).
    Stats(stats::StatsArgs),
    /// Say why a fairness key or a message is not being delivered.
    Explain(explain::ExplainArgs),
    /// Move dead-lettered messages back to their queue.
    Redrive(redrive::RedriveArgs),
    /// Set, list and remove throttle limits.
    Throttle(throttle::ThrottleArgs),
    /// Override fairness-key weights.
    Weight(weight::WeightArgs),
    /// Set, read, list and delete runtime configuration (read by scripts).
    Config(config::ConfigArgs),
    /// Try Lua policy scripts.
    Lua(lua::LuaArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every command needs: where the broker is and how to print.
pub struct Context {
    pub addr: String,
    pub format: Format,
}

impl Context {
    pub async fn connect(&self) -> Result<Client, Failure> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(self.addr.clone())).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(self.failure(e)),
            Err(_) => Err(Failure::connect_timeout(&self.addr, CONNECT_TIMEOUT)),
        }
    }

    pub fn failure(&self, error: fila_sdk::Error) -> Failure {
        Failure::from_sdk(error, &self.addr)
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// A duration such as `500ms`, `30s`, `5m` or `1h 30m`; at least 1ms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    let d = humantime::parse_duration(text.trim()).map_err(|e| match e {
        // These name the unit problem or give an example themselves.
        DurationError::UnknownUnit { .. } | DurationError::NumberOverflow => e.to_string(),
        _ => "expected a duration such as 500ms, 30s, 5m or 1h 30m".to_owned(),
    })?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// A header as `key=value` (the value may contain `=` and be empty).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE, for example -H trace-id=abc123".into()),
    }
}

/// Turns a clap error into one line, naming the command whose `--help`
/// explains the usage. `args` is the command line without the program name.
pub fn usage_line(error: &clap::Error, args: &[String]) -> String {
    let rendered = error.render().to_string();
    let body = rendered.split("\n\n").next().unwrap_or_default();
    let body = body.strip_prefix("error: ").unwrap_or(body);
    let body: Vec<&str> = body.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    format!("{} (see '{} --help')", body.join(" "), command_path(args))
}

/// `fila queue create` for `["--addr", "x", "queue", "create", "q"]`.
fn command_path(args: &[String]) -> String {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut path = vec!["fila".to_owned()];
    for arg in args {
        if !command.has_subcommands() {
            break;
        }
        if let Some(sub) = command.find_subcommand(arg).cloned() {
            path.push(sub.get_name().to_owned());
            command = sub;
        }
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("30").unwrap_err().contains("time unit needed"));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10us").is_err());
        assert_eq!(parse_duration("soon"), Err("expected a duration such as 500ms, 30s, 5m or 1h 30m".into()));
        assert!(parse_duration("5x").unwrap_err().starts_with("unknown time unit \"x\""));
    }

    #[test]
    fn headers_split_at_the_first_equals_sign() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), "".into())));
        assert!(parse_header("a").is_err());
        assert!(parse_header("=b").is_err());
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let args: Vec<String> = ["queue", "create"].iter().map(|s| s.to_string()).collect();
        let error = Cli::try_parse_from(std::iter::once("fila".to_owned()).chain(args.clone())).unwrap_err();
        let line = usage_line(&error, &args);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<NAME>"), "{line}");
        assert!(line.ends_with("(see 'fila queue create --help')"), "{line}");
    }

    #[test]
    fn command_path_skips_options_and_stops_at_leaves() {
        let args: Vec<String> = ["--addr", "x", "queue", "inspect", "list"].iter().map(|s| s.to_string()).collect();
        assert_eq!(command_path(&args), "fila queue inspect");
        assert_eq!(command_path(&[]), "fila");
    }
}
