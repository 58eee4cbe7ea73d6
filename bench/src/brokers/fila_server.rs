//! Runs the real `fila-server` binary on loopback with a fresh data
//! directory, and can kill and restart it on the same data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fila_sdk::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{cpu_times, free_port, wait_until_serving, Process};

/// How long a start (including recovery of a large database) may take.
const START_LIMIT: Duration = Duration::from_secs(120);
/// Starts tried with fresh ports when the chosen ones were taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// Finds the `fila-server` binary: `$FILA_SERVER_BIN`, else the one next to
/// this executable (same target directory and profile). When run through
/// `cargo run`, first builds it with the same profile, so the suite never
/// measures a stale broker.
pub fn locate_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FILA_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "FILA_SERVER_BIN is {}, which is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("the path of fila-bench")?;
    let profile_dir = exe.parent().context("fila-bench has no parent directory")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_with_cargo(&cargo, profile_dir)?;
    }
    let path = profile_dir.join(format!("fila-server{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        path.is_file(),
        "no fila-server at {}: run the suite with `cargo run -p fila-bench`, build the server with `cargo build -p \
         fila-server` (same profile and target directory), or set FILA_SERVER_BIN",
        path.display()
    );
    Ok(path)
}

/// `cargo build -p fila-server` in the profile whose directory holds us.
fn build_with_cargo(cargo: &std::ffi::OsStr, profile_dir: &Path) -> Result<()> {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("cannot tell the build profile from {}", profile_dir.display()),
    };
    eprintln!("building fila-server (profile {profile})");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "fila-server", "--profile", profile])
        .status()
        .context("running cargo build -p fila-server")?;
    anyhow::ensure!(status.success(), "cargo build -p fila-server failed: {status}");
    Ok(())
}

/// The name the server gives the thread that owns all queue state
/// (`server/src/broker/mod.rs`).
const SCHEDULER_THREAD: &str = "fila-scheduler";
/// How RocksDB's flush and compaction threads are named
/// (`rocksdb:high`, `rocksdb:low`).
const ROCKSDB_THREADS: &str = "rocksdb:";

/// CPU time a server has used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCpu {
    pub process: Duration,
    pub scheduler: Duration,
    pub storage: Duration,
}

/// A `fila-server` process with its own temporary data directory.
pub struct FilaServer {
    process: Option<Process>,
    binary: PathBuf,
    pub addr: String,
    /// The Prometheus endpoint, unless telemetry is off.
    pub metrics_addr: Option<String>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl FilaServer {
    /// Starts a server with an empty database. `args` are extra flags
    /// (`--sync-writes`, ...); `telemetry: false` passes `--metrics-listen off`.
    pub async fn start(binary: &Path, args: &[&str], telemetry: bool) -> Result<Self> {
        // A port found free can be taken (by the ephemeral port of some
        // connection) before the server binds it; then try other ports.
        for _ in 1..START_ATTEMPTS {
            match Self::start_once(binary, args, telemetry).await {
                Err(error) if format!("{error:#}").contains("Address already in use") => continue,
                result => return result,
            }
        }
        Self::start_once(binary, args, telemetry).await
    }

    async fn start_once(binary: &Path, args: &[&str], telemetry: bool) -> Result<Self> {
        let metrics_addr = if telemetry { Some(format!("127.0.0.1:{}", free_port()?)) } else { None };
        let mut server = FilaServer {
            process: None,
            binary: binary.to_owned(),
            addr: format!("127.0.0.1:{}", free_port()?),
            args: args.iter().map(|a| a.to_string()).collect(),
            metrics_addr,
            dir: tempfile::Builder::new().prefix("fila-bench-").tempdir().context("creating a data directory")?,
        };
        server.spawn().await?;
        Ok(server)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the binary (again) on the same address and data; returns how
    /// long it took until it answered a call.
    pub async fn spawn(&mut self) -> Result<Duration> {
        anyhow::ensure!(self.process.is_none(), "fila-server is already running");
        let mut command = Command::new(&self.binary);
        command
            .args(["--listen", &self.addr, "--log", "warn", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--metrics-listen", self.metrics_addr.as_deref().unwrap_or("off")])
            .args(&self.args);
        let mut process = Process::spawn("fila-server", command, &self.log_path())?;
        let addr = self.addr.clone();
        let ready = wait_until_serving(&mut process, START_LIMIT, || {
            let addr = addr.clone();
            async move {
                let client = Client::connect(addr).await?;
                client.list_queues().await?;
                Ok(())
            }
        })
        .await;
        self.process = Some(process);
        let ((), took) = ready.with_context(|| format!("starting fila-server; its log:\n{}", self.log_tail()))?;
        Ok(took)
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        self.process.take().context("fila-server is not running")?.kill()
    }

    pub fn rss_bytes(&self) -> Result<u64> {
        self.process.as_ref().context("fila-server is not running")?.rss_bytes()
    }

    /// CPU time used so far by the server, by its scheduler thread and by
    /// RocksDB's background threads (flushes and compactions).
    pub fn cpu_times(&self) -> Result<ServerCpu> {
        let pid = self.process.as_ref().context("fila-server is not running")?.pid();
        let (process, threads) = cpu_times(pid, &[SCHEDULER_THREAD, ROCKSDB_THREADS])?;
        Ok(ServerCpu { process, scheduler: threads[0], storage: threads[1] })
    }

    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.addr.clone()).await.with_context(|| format!("connecting to fila-server at {}", self.addr))
    }

    /// The Prometheus exposition text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let addr = self.metrics_addr.as_deref().context("telemetry is off")?;
        let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP answer from /metrics")?;
        anyhow::ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "GET /metrics: {head}");
        Ok(body.to_owned())
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
