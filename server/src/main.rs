use std::io::IsTerminal;

use clap::Parser;
use fila_server::config::{LogFormat, ServerConfig, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = match ServerConfig::resolve(Settings::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fila-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!("fila-server: invalid log filter '{}' ({e}); using 'info'", config.log);
        EnvFilter::new("info")
    });
    // Colours only for a terminal: log files and journald get plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fila-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fila_server::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a log line (JSON when asked for), or plainly if the
            // log filter hides errors.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e}");
            } else {
                eprintln!("fila-server: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
