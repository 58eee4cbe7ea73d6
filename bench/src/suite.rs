//! What every workload gets: the sizes of this run (full or quick), the
//! systems under test and the figures workloads pass on to each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::brokers::System;
use crate::load::{Payload, Produce};
use crate::measure::Plan;
use crate::targets::TargetCheck;

/// Sizes of a run. The quick mode keeps every workload and case but
/// shrinks windows and message counts so the whole suite takes well under
/// a minute.
#[derive(Debug, Clone)]
pub struct Scale {
    pub quick: bool,
    pub plan: Plan,
    pub payload_sizes: Vec<usize>,
    /// "Several producers".
    pub producers: usize,
    pub consumers: usize,
    /// Messages per call when batched.
    pub batch: usize,
    /// Unacknowledged deliveries a consumer may hold.
    pub prefetch: usize,
    /// How far producers may run ahead of consumers in a lifecycle run.
    pub max_backlog: u64,
    /// Messages per second of the light-load latency run.
    pub light_rate: f64,
    pub key_counts: Vec<usize>,
    /// Messages queued before a fairness run: enough that no key runs dry
    /// during the measurement even if the consumers outpace the producers,
    /// so every key stays active.
    pub standing_backlog: u64,
    /// Rounds of the fairness-cost workload, which compares cases with each
    /// other: its ratios within one round varied by up to 25 points on the
    /// shared two-core VM, so it takes more rounds than other workloads
    /// take windows.
    pub fairness_rounds: usize,
    pub depths: Vec<u64>,
}

impl Scale {
    pub fn full() -> Self {
        Scale {
            quick: false,
            plan: Plan { warmup: Duration::from_secs(1), window: Duration::from_secs(2), runs: 3 },
            payload_sizes: vec![64, 1024, 64 * 1024],
            producers: 4,
            consumers: 4,
            batch: 100,
            prefetch: 1000,
            max_backlog: 20_000,
            light_rate: 200.0,
            key_counts: vec![1, 1_000, 100_000],
            standing_backlog: 1_000_000,
            fairness_rounds: 5,
            depths: vec![0, 1_000_000, 10_000_000],
        }
    }

    pub fn quick() -> Self {
        Scale {
            quick: true,
            plan: Plan { warmup: Duration::from_millis(100), window: Duration::from_millis(150), runs: 2 },
            key_counts: vec![1, 100, 1_000],
            standing_backlog: 50_000,
            fairness_rounds: 2,
            depths: vec![0, 20_000, 50_000],
            ..Scale::full()
        }
    }

    /// Producers of a lifecycle run: 64-byte payloads, `batch` per call,
    /// at most `max_backlog` ahead of the consumers.
    pub fn lifecycle_produce(&self, batch: usize) -> Produce {
        Produce { batch, payload: Payload::fixed(64), max_backlog: Some(self.max_backlog), rate: None, limit: None }
    }
}

pub struct Suite {
    pub scale: Scale,
    pub fila_binary: PathBuf,
    /// Fila first, then the peers that were asked for.
    pub systems: Vec<Box<dyn System>>,
    /// Batched lifecycle throughput by system id, for the latency run at
    /// half of it.
    pub peaks: HashMap<String, f64>,
    pub targets: Vec<TargetCheck>,
    pub failures: Vec<String>,
}

/// "64 B", "1 KB", "64 KB".
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1024 && b.is_multiple_of(1024) => format!("{} KB", b / 1024),
        b => format!("{b} B"),
    }
}
