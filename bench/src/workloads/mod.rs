//! The workloads of the suite, one module per family. The first three run
//! against every system side by side; the others measure Fila alone.

mod depth;
mod durability;
mod enqueue;
mod fairness;
mod fila_load;
mod latency;
mod lifecycle;
mod lua;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::brokers::{display_name, System};
use crate::measure::Stat;
use crate::report::{Section, Unit};
use crate::suite::Suite;

/// The queue (NATS: stream) every side-by-side measurement uses.
const QUEUE: &str = "bench";

pub struct Workload {
    /// For `--only`.
    pub id: &'static str,
    pub title: &'static str,
    /// Runs against the peers too.
    pub side_by_side: bool,
}

const fn workload(id: &'static str, title: &'static str, side_by_side: bool) -> Workload {
    Workload { id, title, side_by_side }
}

/// In the order they run. Latency at half of peak reuses the lifecycle
/// figures, so lifecycle runs first.
pub const ALL: &[Workload] = &[
    workload("enqueue", "1. Enqueue throughput", true),
    workload("lifecycle", "2. Lifecycle throughput", true),
    workload("latency", "3. End-to-end latency", true),
    workload("fairness-cost", "4. Fairness cost", false),
    workload("fairness-accuracy", "5. Fairness accuracy", false),
    workload("lua", "6. Lua cost", false),
    workload("depth", "7. Depth: memory, throughput and restart", false),
    workload("durability", "8. Durability modes", false),
    workload("telemetry", "9. Telemetry cost", false),
];

/// Runs one workload, filling `section`; a workload that fails part-way
/// keeps what it measured.
pub async fn run(id: &str, suite: &mut Suite, section: &mut Section) -> Result<()> {
    match id {
        "enqueue" => enqueue::run(suite, section).await,
        "lifecycle" => lifecycle::run(suite, section).await,
        "latency" => latency::run(suite, section).await,
        "fairness-cost" => fairness::cost(suite, section).await,
        "fairness-accuracy" => fairness::accuracy(suite, section).await,
        "lua" => lua::run(suite, section).await,
        "depth" => depth::run(suite, section).await,
        "durability" => durability::durability(suite, section).await,
        "telemetry" => durability::telemetry(suite, section).await,
        other => anyhow::bail!("unknown workload {other}"),
    }
}

/// However a broker misbehaves, a side-by-side case ends within this.
const CASE_LIMIT: Duration = Duration::from_secs(300);

/// Runs `measure` on a fresh `QUEUE` of `system`, then removes the queue;
/// if both fail, the measurement's error is the one reported.
async fn on_fresh_queue<T>(system: &mut dyn System, measure: impl AsyncFnOnce(&dyn System) -> Result<T>) -> Result<T> {
    let case = async {
        system.fresh_queue(QUEUE).await?;
        let measured = measure(&*system).await;
        let removed = system.remove_queue(QUEUE).await;
        let value = measured?;
        removed?;
        Ok(value)
    };
    tokio::time::timeout(CASE_LIMIT, case)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not done within {CASE_LIMIT:?}")))
}

fn batching_label(batch: usize) -> String {
    if batch == 1 {
        "unbatched".into()
    } else {
        format!("batched ({batch}/call)")
    }
}

/// Prints a line to stderr with the time since the previous one.
pub fn progress(what: &str) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap();
    let took = last.map_or(0.0, |t| t.elapsed().as_secs_f64());
    *last = Some(Instant::now());
    eprintln!("  [{took:5.1} s] {what}");
}

/// Several figures of one case: (metric, unit, value).
type Figures = Vec<(String, Unit, Stat)>;

/// Adds a case's figure to the section, or its error to the failures (the
/// other systems and cases still run).
fn record(
    section: &mut Section,
    failures: &mut Vec<String>,
    case: &str,
    metric: &str,
    unit: Unit,
    column: &str,
    result: Result<Stat>,
) {
    record_all(section, failures, case, column, result.map(|stat| vec![(metric.to_owned(), unit, stat)]));
}

fn record_all(section: &mut Section, failures: &mut Vec<String>, case: &str, column: &str, result: Result<Figures>) {
    progress(&format!("{case} · {}: {}", display_name(column), if result.is_ok() { "done" } else { "failed" }));
    match result {
        Ok(figures) => {
            for (metric, unit, stat) in figures {
                section.add(case, &metric, unit, column, stat);
            }
        }
        Err(error) => failures.push(format!("{}, {case}, {}: {error:#}", section.title, display_name(column))),
    }
}
