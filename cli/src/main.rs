//! `fila`: the command-line client of the Fila message broker. See
//! docs/cli.md.

mod cli;
mod config;
mod enqueue;
mod explain;
mod failure;
mod lease;
mod lua;
mod output;
mod peek;
mod queue;
mod redrive;
mod stats;
mod throttle;
mod weight;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, Context};
use crate::failure::{Failure, EXIT_USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_failure(&error, &args),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fila: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message() {
                eprintln!("fila: {message}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context { addr: cli.addr, format: cli.output };
    match cli.command {
        Command::Queue(args) => queue::run(&ctx, args).await,
        Command::Enqueue(args) => enqueue::run(&ctx, args).await,
        Command::Lease(args) => lease::run(&ctx, args).await,
        Command::Peek(args) => peek::run(&ctx, args).await,
        Command::Stats(args) => stats::run(&ctx, args).await,
        Command::Explain(args) => explain::run(&ctx, args).await,
        Command::Redrive(args) => redrive::run(&ctx, args).await,
        Command::Throttle(args) => throttle::run(&ctx, args).await,
        Command::Weight(args) => weight::run(&ctx, args).await,
        Command::Config(args) => config::run(&ctx, args).await,
        Command::Lua(args) => lua::run(&ctx, args).await,
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "fila", &mut out);
            Ok(())
        }
    }
}

/// Help and version go to standard output as clap prints them; real usage
/// errors become one line on standard error.
fn usage_failure(error: &clap::Error, args: &[String]) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(error.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            eprintln!("fila: {}", cli::usage_line(error, args));
            ExitCode::from(EXIT_USAGE)
        }
    }
}
