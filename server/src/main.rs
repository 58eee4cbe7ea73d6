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
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
            tracing::error!("{e}");
            eprintln!("fila-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
