//! Warm-up, fixed measurement windows, medians.
//!
//! Every workload measures the same way: its load runs continuously; after
//! the warm-up, `runs` back-to-back windows of fixed length are measured,
//! and the report gives the median (with every run's value in
//! results.json).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::load::Load;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    #[serde(serialize_with = "seconds")]
    pub warmup: Duration,
    #[serde(serialize_with = "seconds")]
    pub window: Duration,
    pub runs: usize,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Reads a figure from a running load over one window.
pub trait Probe {
    type Output;
    fn begin(&mut self) -> impl Future<Output = Result<()>>;
    fn end(&mut self, elapsed: Duration) -> impl Future<Output = Result<Self::Output>>;
}

impl Plan {
    /// Waits out the warm-up, then measures `runs` windows with `probe`.
    /// Fails as soon as a task of the load fails.
    pub async fn measure<P: Probe>(&self, load: &mut Load, probe: &mut P) -> Result<Vec<P::Output>> {
        load.run_for(self.warmup).await?;
        let mut results = Vec::with_capacity(self.runs);
        for _ in 0..self.runs {
            probe.begin().await?;
            let started = Instant::now();
            load.run_for(self.window).await?;
            results.push(probe.end(started.elapsed()).await?);
        }
        Ok(results)
    }

    /// Measures, then stops the load; a failed measurement's error wins
    /// over the stop's.
    pub async fn measure_and_stop<P: Probe>(&self, mut load: Load, probe: &mut P) -> Result<Vec<P::Output>> {
        let measured = self.measure(&mut load, probe).await;
        let stopped = load.stop().await;
        let results = measured?;
        stopped?;
        Ok(results)
    }
}

/// A figure: the median of the runs, and the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    pub fn of(runs: Vec<f64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat { median, runs }
    }

    /// A figure measured once.
    pub fn once(value: f64) -> Self {
        Stat { median: value, runs: vec![value] }
    }
}

/// Events per second of a counter.
pub struct Rate<'a> {
    counter: &'a AtomicU64,
    start: u64,
}

impl<'a> Rate<'a> {
    pub fn of(counter: &'a AtomicU64) -> Self {
        Rate { counter, start: 0 }
    }
}

impl Probe for Rate<'_> {
    type Output = f64;

    async fn begin(&mut self) -> Result<()> {
        self.start = self.counter.load(Ordering::Relaxed);
        Ok(())
    }

    async fn end(&mut self, elapsed: Duration) -> Result<f64> {
        Ok((self.counter.load(Ordering::Relaxed) - self.start) as f64 / elapsed.as_secs_f64())
    }
}

/// Latency samples recorded by consumers, in nanoseconds.
#[derive(Default)]
pub struct Samples(Mutex<Vec<u64>>);

impl Samples {
    pub fn record(&self, values: impl IntoIterator<Item = u64>) {
        self.0.lock().unwrap().extend(values);
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The percentiles `Percentiles` holds, by name and quantile.
pub const PERCENTILES: [(&str, f64); 3] = [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)];

/// The `PERCENTILES` of a window's latencies, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles(pub [f64; 3]);

impl Percentiles {
    fn of(mut nanos: Vec<u64>) -> Result<Self> {
        anyhow::ensure!(!nanos.is_empty(), "no message was delivered during the measurement window");
        nanos.sort_unstable();
        let at = |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)] as f64 / 1e6;
        Ok(Percentiles(PERCENTILES.map(|(_, q)| at(q))))
    }
}

/// Latency percentiles of the deliveries within a window.
pub struct Latency<'a>(pub &'a Samples);

impl Probe for Latency<'_> {
    type Output = Percentiles;

    async fn begin(&mut self) -> Result<()> {
        self.0.take();
        Ok(())
    }

    async fn end(&mut self, _elapsed: Duration) -> Result<Percentiles> {
        Percentiles::of(self.0.take())
    }
}

/// Two probes over the same windows.
impl<A: Probe, B: Probe> Probe for (A, B) {
    type Output = (A::Output, B::Output);

    async fn begin(&mut self) -> Result<()> {
        self.0.begin().await?;
        self.1.begin().await
    }

    async fn end(&mut self, elapsed: Duration) -> Result<Self::Output> {
        Ok((self.0.end(elapsed).await?, self.1.end(elapsed).await?))
    }
}
