//! Server configuration: defaults, overridden by an optional TOML file,
//! overridden by environment variables, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::broker::DEFAULT_MESSAGE_BUFFER_BYTES;
use crate::domain::limits::{DEFAULT_MAX_BATCH, DEFAULT_MAX_PAYLOAD_BYTES, MAX_HEADERS_BYTES};
use crate::domain::Limits;
use crate::scripting::ScriptLimits;
use crate::telemetry::TelemetryConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5555";
pub const DEFAULT_DATA_DIR: &str = "fila-data";
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_OTLP_METRICS_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_METRICS_MAX_KEYS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, each optional so that sources can be layered. The same
/// struct is read from the command line (with environment fallbacks) and
/// from the TOML file, so the two cannot drift apart.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "fila-server",
    version,
    about = "The Fila message broker: fair scheduling and throttling decided at dequeue time.",
    after_help = "Every option can also be set in the TOML file given by --config, using the option's \
                  name with underscores (for example data_dir = \"/var/lib/fila\"). Flags win over \
                  environment variables, which win over the file."
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with settings.
    #[arg(long, env = "FILA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:5555].
    #[arg(long, env = "FILA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the RocksDB database, created if missing [default: ./fila-data].
    #[arg(long, env = "FILA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Fsync every enqueue before answering: survives power loss, costs about
    /// one fsync per group commit [default: false].
    #[arg(long, env = "FILA_SYNC_WRITES", num_args = 0..=1, default_missing_value = "true")]
    pub sync_writes: Option<bool>,
    /// Largest accepted payload in bytes [default: 1048576].
    #[arg(long, env = "FILA_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Most items in one Enqueue, Ack, Nack or ExtendLease call [default: 1000].
    #[arg(long, env = "FILA_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Largest accepted gRPC request in bytes [default: 67108864].
    #[arg(long, env = "FILA_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Time budget of one queue-script call, in milliseconds [default: 5].
    #[arg(long, env = "FILA_SCRIPT_TIMEOUT_MS")]
    pub script_timeout_ms: Option<u64>,
    /// Memory limit of one queue script's Lua VM, in bytes [default: 8388608].
    #[arg(long, env = "FILA_SCRIPT_MEMORY_BYTES")]
    pub script_memory_bytes: Option<usize>,
    /// Memory for ready messages held ahead of delivery, in bytes, all
    /// queues together; past it, messages are read from storage one at a
    /// time [default: 268435456].
    #[arg(long, env = "FILA_MESSAGE_BUFFER_BYTES")]
    pub message_buffer_bytes: Option<usize>,
    /// Log filter, in `tracing` EnvFilter syntax [default: info].
    #[arg(long, env = "FILA_LOG")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "FILA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of the Prometheus endpoint (GET /metrics), or `off`
    /// [default: 127.0.0.1:9464].
    #[arg(long, env = "FILA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Most labelled series per fairness-key metric and per throttle-key
    /// metric; further keys are summed into one series labelled `_other`
    /// [default: 1000].
    #[arg(long, env = "FILA_METRICS_MAX_KEYS")]
    pub metrics_max_keys: Option<usize>,
    /// OTLP/gRPC collector to push metrics and traces to, e.g.
    /// http://localhost:4317 [default: none; also read from
    /// OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, env = "FILA_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP, in milliseconds [default: 10000].
    #[arg(long, env = "FILA_OTLP_METRICS_INTERVAL_MS")]
    pub otlp_metrics_interval_ms: Option<u64>,
}

impl Settings {
    /// Fills what `self` leaves unset from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            config: self.config.or(other.config),
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            sync_writes: self.sync_writes.or(other.sync_writes),
            max_payload_bytes: self.max_payload_bytes.or(other.max_payload_bytes),
            max_batch: self.max_batch.or(other.max_batch),
            max_request_bytes: self.max_request_bytes.or(other.max_request_bytes),
            script_timeout_ms: self.script_timeout_ms.or(other.script_timeout_ms),
            script_memory_bytes: self.script_memory_bytes.or(other.script_memory_bytes),
            message_buffer_bytes: self.message_buffer_bytes.or(other.message_buffer_bytes),
            log: self.log.or(other.log),
            log_format: self.log_format.or(other.log_format),
            metrics_listen: self.metrics_listen.or(other.metrics_listen),
            metrics_max_keys: self.metrics_max_keys.or(other.metrics_max_keys),
            otlp_endpoint: self.otlp_endpoint.or(other.otlp_endpoint),
            otlp_metrics_interval_ms: self.otlp_metrics_interval_ms.or(other.otlp_metrics_interval_ms),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub sync_writes: bool,
    pub limits: Limits,
    pub max_request_bytes: usize,
    pub script_limits: ScriptLimits,
    pub message_buffer_bytes: usize,
    pub log: String,
    pub log_format: LogFormat,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Resolves flags and environment (already in `cli`) over the file they
    /// name over the defaults.
    pub fn resolve(cli: Settings) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        let s = cli.or(file);
        let limits = Limits {
            max_payload_bytes: s.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES),
            max_batch: s.max_batch.unwrap_or(DEFAULT_MAX_BATCH),
        };
        let max_request_bytes = s.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if limits.max_payload_bytes == 0 || limits.max_batch == 0 {
            return Err(ConfigError::Invalid("max_payload_bytes and max_batch must be at least 1".into()));
        }
        if max_request_bytes < limits.max_payload_bytes + MAX_HEADERS_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max_request_bytes ({max_request_bytes}) must leave room for one message of max_payload_bytes ({}) plus headers ({MAX_HEADERS_BYTES})",
                limits.max_payload_bytes
            )));
        }
        let defaults = ScriptLimits::default();
        let script_limits = ScriptLimits {
            timeout: s.script_timeout_ms.map_or(defaults.timeout, Duration::from_millis),
            memory_bytes: s.script_memory_bytes.unwrap_or(defaults.memory_bytes),
            ..defaults
        };
        if script_limits.timeout.is_zero() || script_limits.memory_bytes < 256 * 1024 {
            return Err(ConfigError::Invalid(
                "script_timeout_ms must be at least 1 and script_memory_bytes at least 262144".into(),
            ));
        }
        let telemetry = telemetry_config(&s)?;
        Ok(ServerConfig {
            telemetry,
            script_limits,
            message_buffer_bytes: s.message_buffer_bytes.unwrap_or(DEFAULT_MESSAGE_BUFFER_BYTES),
            listen: s.listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            sync_writes: s.sync_writes.unwrap_or(false),
            limits,
            max_request_bytes,
            log: s.log.unwrap_or_else(|| "info".into()),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
        })
    }
}

fn telemetry_config(s: &Settings) -> Result<TelemetryConfig, ConfigError> {
    let metrics_listen = match s.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
        "off" => None,
        addr => Some(addr.parse().map_err(|_| {
            ConfigError::Invalid(format!("metrics_listen must be an address like 127.0.0.1:9464, or off; got '{addr}'"))
        })?),
    };
    let otlp_endpoint =
        s.otlp_endpoint.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()).filter(|e| !e.is_empty());
    if let Some(endpoint) = &otlp_endpoint {
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(ConfigError::Invalid(format!(
                "otlp_endpoint must be an http:// or https:// URL such as http://localhost:4317; got '{endpoint}'"
            )));
        }
    }
    let interval_ms = s.otlp_metrics_interval_ms.unwrap_or(DEFAULT_OTLP_METRICS_INTERVAL_MS);
    if interval_ms == 0 {
        return Err(ConfigError::Invalid("otlp_metrics_interval_ms must be at least 1".into()));
    }
    Ok(TelemetryConfig {
        metrics_listen,
        otlp_endpoint,
        otlp_metrics_interval: Duration::from_millis(interval_ms),
        max_key_series: s.metrics_max_keys.unwrap_or(DEFAULT_METRICS_MAX_KEYS),
    })
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_with_nothing_set() {
        let c = ServerConfig::resolve(Settings::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!c.sync_writes);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.message_buffer_bytes, DEFAULT_MESSAGE_BUFFER_BYTES);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fila.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndata_dir = \"/from/file\"\nsync_writes = true\nmessage_buffer_bytes = 1024\n",
        )
        .unwrap();
        let cli = Settings::parse_from(["fila-server", "--config", file.to_str().unwrap(), "--data-dir", "/from/flag"]);
        let c = ServerConfig::resolve(cli).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert!(c.sync_writes);
        assert_eq!(c.message_buffer_bytes, 1024);
    }

    #[test]
    fn rejects_unknown_keys_and_inconsistent_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fila.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let cli = Settings { config: Some(file), ..Default::default() };
        assert!(matches!(ServerConfig::resolve(cli), Err(ConfigError::Parse { .. })));
        let cli = Settings { max_request_bytes: Some(10), ..Default::default() };
        assert!(matches!(ServerConfig::resolve(cli), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn bare_sync_flag_means_true() {
        let cli = Settings::parse_from(["fila-server", "--sync-writes"]);
        assert_eq!(cli.sync_writes, Some(true));
    }
}
