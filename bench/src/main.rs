//! fila-bench: the benchmark suite of Fila, side by side with NATS
//! JetStream and RabbitMQ. See docs/benchmarks.md.
//!
//!     cargo run -p fila-bench -- --out target/fila-bench           # full run
//!     cargo run -p fila-bench -- --quick                           # smoke test
//!     cargo run -p fila-bench -- --only lifecycle,latency --systems fila,nats

mod brokers;
mod load;
mod machine;
mod measure;
mod process;
mod report;
mod suite;
mod targets;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;

use brokers::fila::FilaSystem;
use brokers::nats::NatsSystem;
use brokers::rabbitmq::RabbitMqSystem;
use brokers::{System, SystemInfo};
use report::{Report, Section};
use suite::{Scale, Suite};
use workloads::Workload;

const PEERS: &[&str] = &["nats", "rabbitmq"];

#[derive(Debug, Parser)]
#[command(name = "fila-bench", about = "Fila's benchmark suite, side by side with NATS JetStream and RabbitMQ.")]
struct Args {
    /// Tiny sizes and short windows: every workload in about a minute (the CI smoke test).
    #[arg(long)]
    quick: bool,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "target/fila-bench")]
    out: PathBuf,
    /// Workloads to run, comma-separated [default: all]: enqueue, lifecycle, latency, fairness-cost,
    /// fairness-accuracy, lua, depth, durability, telemetry.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Peers to run the side-by-side workloads against, comma-separated, or `none`.
    #[arg(long, value_delimiter = ',', default_value = "nats,rabbitmq")]
    peers: Vec<String>,
    /// Measurement windows per figure (the median is reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Length of a measurement window, in seconds.
    #[arg(long)]
    window: Option<f64>,
    /// Warm-up before the first window, in seconds.
    #[arg(long)]
    warmup: Option<f64>,
}

impl Args {
    fn scale(&self) -> Scale {
        let mut scale = if self.quick { Scale::quick() } else { Scale::full() };
        if let Some(runs) = self.runs {
            scale.plan.runs = runs.max(1);
        }
        if let Some(window) = self.window {
            scale.plan.window = Duration::from_secs_f64(window);
        }
        if let Some(warmup) = self.warmup {
            scale.plan.warmup = Duration::from_secs_f64(warmup);
        }
        scale
    }

    fn workloads(&self) -> Result<Vec<&'static Workload>> {
        for id in &self.only {
            anyhow::ensure!(
                workloads::ALL.iter().any(|w| w.id == id),
                "unknown workload {id}; known: {}",
                workloads::ALL.iter().map(|w| w.id).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(workloads::ALL.iter().filter(|w| self.only.is_empty() || self.only.iter().any(|o| o == w.id)).collect())
    }

    fn peers(&self) -> Result<Vec<&str>> {
        let peers: Vec<&str> = self.peers.iter().map(String::as_str).filter(|p| *p != "none").collect();
        for peer in &peers {
            anyhow::ensure!(PEERS.contains(peer), "unknown peer {peer}; known: {}", PEERS.join(", "));
        }
        Ok(peers)
    }

    /// The command line, as the report quotes it.
    fn command(&self) -> String {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let program = if std::env::var_os("CARGO").is_some() { "cargo run -p fila-bench --" } else { "fila-bench" };
        format!("{program} {}", args.join(" ")).trim_end().to_owned()
    }
}

/// Starts a peer and describes it; a peer that fails to start is reported
/// and left out.
async fn start_peer(id: &str) -> Result<(Box<dyn System>, SystemInfo)> {
    Ok(match id {
        "nats" => (Box::new(NatsSystem::start().await?), NatsSystem::info()?),
        "rabbitmq" => (Box::new(RabbitMqSystem::start().await?), RabbitMqSystem::info()?),
        other => anyhow::bail!("unknown peer {other}"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    // On Ctrl-C the run is dropped, and with it every broker it started.
    let result = tokio::select! {
        result = run(Args::parse()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fila-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let workloads = args.workloads()?;
    let peers = args.peers()?;
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let machine = machine::Machine::describe();
    let fila_binary = brokers::fila_server::locate_binary()?;

    let mut suite = Suite {
        scale: args.scale(),
        systems: vec![Box::new(FilaSystem::new(fila_binary.clone()))],
        fila_binary: fila_binary.clone(),
        peaks: Default::default(),
        targets: Vec::new(),
        failures: Vec::new(),
    };
    let mut system_infos = vec![FilaSystem::info(&fila_binary)?];
    if workloads.iter().any(|w| w.side_by_side) {
        for peer in peers {
            let starting = Instant::now();
            match start_peer(peer).await {
                Ok((system, info)) => {
                    eprintln!("started {} in {:.1} s", info.name, starting.elapsed().as_secs_f64());
                    suite.systems.push(system);
                    system_infos.push(info);
                }
                Err(error) => suite.failures.push(format!("starting {peer}: {error:#}")),
            }
        }
    }

    let peers_failed = suite.failures.len();
    let mut sections = Vec::new();
    let mut workloads_failed = 0;
    for workload in workloads {
        eprintln!("{}", workload.title);
        let workload_started = Instant::now();
        let mut section = Section::new(workload.id, workload.title);
        if workload.side_by_side {
            section.columns = suite.systems.iter().map(|s| s.id().to_owned()).collect();
        }
        let failures_before = suite.failures.len();
        if let Err(error) = workloads::run(workload.id, &mut suite, &mut section).await {
            suite.failures.push(format!("{}: {error:#}", workload.title));
        }
        workloads_failed += usize::from(suite.failures.len() > failures_before);
        eprintln!("  {:.1} s", workload_started.elapsed().as_secs_f64());
        sections.push(section);
    }
    let stopping = Instant::now();
    drop(std::mem::take(&mut suite.systems)); // stops the peers
    eprintln!("stopped the brokers in {:.1} s", stopping.elapsed().as_secs_f64());

    let report = Report {
        mode: if suite.scale.quick { "quick" } else { "full" },
        command: args.command(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        plan: suite.scale.plan,
        systems: system_infos,
        sections,
        targets: suite.targets,
        failures: suite.failures,
    };
    write(&args.out, &report)?;
    // Workloads that had no failure, and those that had (a peer that did not
    // start counts as one more failure).
    let failed = workloads_failed + peers_failed;
    println!("fila-bench: {} passed, {failed} failed", report.sections.len() - workloads_failed);
    if !report.failures.is_empty() {
        anyhow::bail!("{} failure(s):\n{}", report.failures.len(), report.failures.join("\n"));
    }
    Ok(())
}

/// Writes results.json and results.md into `out` and prints the Markdown.
fn write(out: &Path, report: &Report) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let markdown = report.markdown();
    let md = out.join("results.md");
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    println!("{markdown}");
    eprintln!("wrote {} and {} ({:.0} s)", json.display(), md.display(), report.duration_s);
    Ok(())
}
