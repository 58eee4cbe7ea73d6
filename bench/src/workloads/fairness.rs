//! Workloads 4 and 5: what fair scheduling costs (throughput with many
//! active keys, and with a throttled key in the mix) and how accurately it
//! shares deliveries by weight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::brokers::fila::{create_queue, Shape};
use crate::brokers::fila_server::{FilaServer, ServerCpu};
use crate::load::{Consume, KeyCounts};
use crate::measure::{Plan, Probe, Stat};
use crate::report::{thousands, Section, Unit};
use crate::suite::Suite;

use super::fila_load::{fill, lifecycle};
use super::{progress, record_all, Figures};

const QUEUE: &str = "fair";
/// The throttle key of the throttled-key case, and its rate.
const SLOW: &str = "slow";
const SLOW_RATE: f64 = 10.0;
/// Weights of the accuracy run.
const WEIGHTS: [u32; 5] = [1, 2, 3, 4, 5];

fn keys_label(keys: usize) -> String {
    format!("{} key{}", thousands(keys as u64), if keys == 1 { "" } else { "s" })
}

pub async fn cost(suite: &mut Suite, section: &mut Section) -> Result<()> {
    let scale = suite.scale.clone();
    let rounds = scale.fairness_rounds;
    section.method = format!(
        "Batched lifecycle throughput (as in 2) on one queue whose producers spread messages over N fairness \
         keys in turn, in an order scattered over the key space (key-0, key-619, key-238, ... with 1,000 keys) \
         as tenants' traffic arrives, rather than numeric order, which would send consecutive messages to \
         neighbouring lanes in storage. Before measuring, {} messages (at least 10 per key) are queued over the same keys, so \
         that every key stays active (has ready messages) throughout; the active-key count at the end checks it. \
         The throttled case adds a key with {} queued messages that all carry a throttle key limited to \
         {SLOW_RATE} per second, so the scheduler keeps meeting a key it must hold back. The cases take turns \
         in {rounds} rounds (every case once per round, each on a fresh server, one warm-up and one window), so \
         that a machine whose speed drifts over minutes weighs on every case alike: a case's throughput is its \
         median over the rounds, and its share of one key's is the median of the ratios within a round. Each \
         case also gives the server's CPU time per acknowledged message over the same window, from /proc: the \
         whole process, its scheduler thread, and RocksDB's flush and compaction threads; on a shared machine \
         it varies less than throughput, and it shows where a case's extra cost goes.",
        thousands(scale.standing_backlog),
        thousands(scale.max_backlog)
    );
    let keys = scale.key_counts[scale.key_counts.len() / 2];
    let cases: Vec<(usize, bool)> = scale.key_counts.iter().map(|&k| (k, false)).chain([(keys, true)]).collect();
    let one_window = Plan { runs: 1, ..scale.plan };
    let mut results: Vec<Result<Rounds>> = cases.iter().map(|_| Ok(Rounds::default())).collect();
    for round in 1..=rounds {
        let mut base = None;
        for (&(count, throttled), result) in cases.iter().zip(&mut results) {
            let Ok(rounds_so_far) = result else { continue };
            match keyed_throughput(suite, &one_window, count, throttled).await {
                Ok((Window { throughput, cpu }, active_keys)) => {
                    progress(&format!(
                        "{}, round {round}: {}",
                        case_label(count, throttled),
                        thousands(throughput as u64)
                    ));
                    if count == 1 && !throttled {
                        base = Some(throughput);
                    } else if let Some(base) = base {
                        rounds_so_far.of_one_key.push(throughput / base * 100.0);
                    }
                    rounds_so_far.throughput.push(throughput);
                    rounds_so_far.cpu.push(cpu);
                    rounds_so_far.active_keys = active_keys;
                }
                Err(error) => *result = Err(error),
            }
        }
    }
    for (&(count, throttled), result) in cases.iter().zip(results) {
        let figures = result.map(|r| {
            let mut figures = vec![("throughput".to_owned(), Unit::MsgPerSec, Stat::of(r.throughput))];
            if !r.of_one_key.is_empty() {
                figures.push(("of 1 key's throughput".to_owned(), Unit::Percent, Stat::of(r.of_one_key)));
            }
            let cpu = |metric: &str, of: fn(&CpuPerMessage) -> f64| {
                (metric.to_owned(), Unit::Micros, Stat::of(r.cpu.iter().map(of).collect()))
            };
            figures.push(cpu("server CPU per message", |c| c.server));
            figures.push(cpu("of which the scheduler thread", |c| c.scheduler));
            figures.push(cpu("of which RocksDB's flushes and compactions", |c| c.storage));
            figures.push(("active keys at the end".to_owned(), Unit::Count, Stat::once(r.active_keys as f64)));
            figures
        });
        record_all(section, &mut suite.failures, &case_label(count, throttled), "fila", figures);
    }
    let relative = |keys: usize| section.value(&keys_label(keys), "of 1 key's throughput", "fila");
    let most = scale.key_counts.iter().copied().max().unwrap_or(1);
    let target = format!("Lifecycle with {} active keys: ≥ 90% of one key's", thousands(most as u64));
    suite.target(&target, relative(most), Unit::Percent, |v| v >= 90.0);
    let target = format!("Fair scheduling overhead, {} keys vs one: < 2%", thousands(keys as u64));
    suite.target(&target, relative(keys).map(|v| 100.0 - v), Unit::Percent, |v| v < 2.0);
    Ok(())
}

fn case_label(keys: usize, throttled: bool) -> String {
    let mut case = keys_label(keys);
    if throttled {
        case.push_str(" + 1 throttled key");
    }
    case
}

/// One case's figures over the rounds so far.
#[derive(Default)]
struct Rounds {
    throughput: Vec<f64>,
    /// Percent of the same round's one-key throughput.
    of_one_key: Vec<f64>,
    /// CPU time per acknowledged message (µs) of each window.
    cpu: Vec<CpuPerMessage>,
    active_keys: u64,
}

/// What one window of a case measured.
struct Window {
    throughput: f64,
    cpu: CpuPerMessage,
}

/// CPU time per acknowledged message, µs: the server's, its scheduler
/// thread's, RocksDB's background threads'.
#[derive(Clone, Copy)]
struct CpuPerMessage {
    server: f64,
    scheduler: f64,
    storage: f64,
}

/// Acknowledged messages per second, and the server's CPU time per
/// acknowledged message: a steadier measure of the broker's own cost than
/// throughput on a shared machine, and the one a profile explains.
struct RateAndCpu<'a> {
    acked: &'a AtomicU64,
    server: &'a FilaServer,
    start: (u64, ServerCpu),
}

impl Probe for RateAndCpu<'_> {
    type Output = Window;

    async fn begin(&mut self) -> Result<()> {
        self.start = (self.acked.load(Ordering::Relaxed), self.server.cpu_times()?);
        Ok(())
    }

    async fn end(&mut self, elapsed: Duration) -> Result<Window> {
        let (acked, cpu) = (self.acked.load(Ordering::Relaxed), self.server.cpu_times()?);
        let messages = (acked - self.start.0) as f64;
        anyhow::ensure!(messages > 0.0, "nothing was acknowledged during the window");
        let start = self.start.1;
        let per_message = |end: Duration, start: Duration| end.saturating_sub(start).as_secs_f64() * 1e6 / messages;
        Ok(Window {
            throughput: messages / elapsed.as_secs_f64(),
            cpu: CpuPerMessage {
                server: per_message(cpu.process, start.process),
                scheduler: per_message(cpu.scheduler, start.scheduler),
                storage: per_message(cpu.storage, start.storage),
            },
        })
    }
}

/// Throughput and CPU per message with `keys` active keys (and a
/// throttled key if asked), and the number of active keys at the end as a
/// check.
async fn keyed_throughput(suite: &Suite, plan: &Plan, keys: usize, throttled: bool) -> Result<(Window, u64)> {
    let scale = &suite.scale;
    let server = FilaServer::start(&suite.fila_binary, &[], true).await?;
    let client = server.client().await?;
    create_queue(&client, QUEUE).await?;
    let shape = Shape::keys(keys);
    if throttled {
        client.set_throttle(SLOW, SLOW_RATE, Some(1.0)).await.context("SetThrottle")?;
        let slow = Shape {
            keys: vec!["throttled".to_owned()].into(),
            throttle_keys: vec![SLOW.to_owned()],
            ..Shape::default()
        };
        fill(&server, QUEUE, &slow, None, scale.max_backlog).await?;
    }
    fill(&server, QUEUE, &shape, None, scale.standing_backlog.max(keys as u64 * 10)).await?;
    let consume = Consume { batch: scale.batch, ..Consume::default() };
    let load = lifecycle(&server, QUEUE, scale, &shape, scale.lifecycle_produce(scale.batch), consume).await?;
    let counters = Arc::clone(&load.counters);
    let mut probe = RateAndCpu { acked: &counters.acked, server: &server, start: Default::default() };
    let window = plan.measure_and_stop(load, &mut probe).await?.pop().context("no window measured")?;
    let stats = client.queue_stats(QUEUE, Some(1)).await.context("GetQueueStats")?;
    Ok((window, stats.active_keys))
}

pub async fn accuracy(suite: &mut Suite, section: &mut Section) -> Result<()> {
    section.method = format!(
        "Five fairness keys with weights {WEIGHTS:?} (SetFairnessWeight) on one queue, all kept backlogged: \
         producers send to each key in proportion to its weight on top of a standing backlog (as in 4), consumers take \
         everything as fast as they can (batched lifecycle). Share of each key's deliveries per window against \
         its fair share (weight / 15); the deviation is |actual − fair| / fair."
    );
    let result = measure_accuracy(suite).await;
    record_all(section, &mut suite.failures, "weights 1:2:3:4:5, sustained", "fila", result);
    Ok(())
}

fn weighted_key(weight: u32) -> String {
    format!("weight-{weight}")
}

async fn measure_accuracy(suite: &Suite) -> Result<Figures> {
    let scale = &suite.scale;
    let server = FilaServer::start(&suite.fila_binary, &[], true).await?;
    let client = server.client().await?;
    create_queue(&client, QUEUE).await?;
    for weight in WEIGHTS {
        client.set_fairness_weight(QUEUE, &weighted_key(weight), Some(weight)).await.context("SetFairnessWeight")?;
    }
    // Key of weight w appears w times, so it gets w/15 of the messages.
    let keys: Vec<String> = WEIGHTS.iter().flat_map(|&w| std::iter::repeat_n(weighted_key(w), w as usize)).collect();
    let shape = Shape { keys: keys.into(), ..Shape::default() };
    fill(&server, QUEUE, &shape, None, scale.standing_backlog).await?;
    let counts = Arc::new(KeyCounts::new(WEIGHTS.map(weighted_key)));
    let consume = Consume { batch: scale.batch, per_key: Some(counts.clone()), latency: None };
    let load = lifecycle(&server, QUEUE, scale, &shape, scale.lifecycle_produce(scale.batch), consume).await?;
    let windows = scale.plan.measure_and_stop(load, &mut Shares { counts, start: HashMap::new() }).await?;

    let total: u32 = WEIGHTS.iter().sum();
    let deviation = |shares: &HashMap<String, f64>, w: u32| {
        let fair = w as f64 / total as f64;
        (shares[&weighted_key(w)] - fair).abs() / fair * 100.0
    };
    let max_deviation = windows.iter().map(|s| WEIGHTS.iter().map(|&w| deviation(s, w)).fold(0.0, f64::max));
    let mut figures = vec![("max deviation from fair share".into(), Unit::Percent, Stat::of(max_deviation.collect()))];
    for w in WEIGHTS {
        let metric = format!("share of weight {w} (fair {:.1} %)", w as f64 / total as f64 * 100.0);
        let shares = windows.iter().map(|s| s[&weighted_key(w)] * 100.0).collect();
        figures.push((metric, Unit::Percent, Stat::of(shares)));
    }
    Ok(figures)
}

/// Each key's share of the deliveries within a window.
struct Shares {
    counts: Arc<KeyCounts>,
    start: HashMap<String, u64>,
}

impl Probe for Shares {
    type Output = HashMap<String, f64>;

    async fn begin(&mut self) -> Result<()> {
        self.start = self.counts.snapshot();
        Ok(())
    }

    async fn end(&mut self, _elapsed: Duration) -> Result<Self::Output> {
        let delivered: HashMap<String, u64> =
            self.counts.snapshot().into_iter().map(|(k, n)| (k.clone(), n - self.start[&k])).collect();
        let total: u64 = delivered.values().sum();
        anyhow::ensure!(total > 0, "nothing was delivered during the window");
        Ok(delivered.into_iter().map(|(k, n)| (k, n as f64 / total as f64)).collect())
    }
}
