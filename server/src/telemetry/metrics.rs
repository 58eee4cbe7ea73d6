//! The broker's metrics as OpenTelemetry instruments.
//!
//! Counters and gauges kept by the scheduler arrive as a snapshot about
//! once a second ([`Observer::snapshot`]); observable instruments report the
//! latest one at each collection (a Prometheus scrape or an OTLP export).
//! Only what must be timed as it happens uses synchronous instruments.

use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use super::series::{CappedSeries, SeriesValue, OVERFLOW_LABEL};
use crate::broker::observer::{Observer, QueueCounters, ScriptOutcome, Snapshot};
use crate::scripting::{BreakerState, ScriptHook};

pub const QUEUE: &str = "messaging.destination.name";
pub const FAIRNESS_KEY: &str = "fila.fairness_key";
pub const THROTTLE_KEY: &str = "fila.throttle_key";
pub const HOOK: &str = "fila.script.hook";
pub const ERROR_TYPE: &str = "error.type";

/// Bucket bounds, in seconds, of script call durations (µs to ms). Denser
/// from 5 to 25 µs, where a 10-line hook's tail lies: a p99 read from the
/// histogram is interpolated within one bucket, and (10, 25] made a true
/// 12 µs read as 16 to 20.
const SCRIPT_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 7.5e-6, 1e-5, 1.25e-5, 1.5e-5, 2e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
];
/// Bucket bounds, in seconds, of storage commits.
const COMMIT_BUCKETS: &[f64] =
    &[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0];
/// Changes per commit.
const COMMIT_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

#[derive(Debug, Default, Clone, Copy)]
struct KeyValues {
    deliveries: u64,
    actual_share: f64,
    fair_share: f64,
}

impl SeriesValue for KeyValues {
    fn absorb(&mut self, other: &Self) {
        self.deliveries += other.deliveries;
        self.actual_share += other.actual_share;
        self.fair_share += other.fair_share;
    }
    fn reset_gauges(&mut self) {
        self.actual_share = 0.0;
        self.fair_share = 0.0;
    }
    fn is_idle(&self) -> bool {
        self.deliveries == 0 && self.actual_share == 0.0 && self.fair_share == 0.0
    }
}

/// Throttle buckets report totals, so every snapshot replaces the series'
/// values (summed over the buckets that share an overflow series).
#[derive(Debug, Default, Clone, Copy)]
struct ThrottleValues {
    passes: u64,
    blocks: u64,
    tokens: f64,
    observed: bool,
}

impl SeriesValue for ThrottleValues {
    fn absorb(&mut self, other: &Self) {
        if !self.observed {
            *self = ThrottleValues::default();
        }
        self.passes += other.passes;
        self.blocks += other.blocks;
        self.tokens += other.tokens;
        self.observed = true;
    }
    fn reset_gauges(&mut self) {
        self.observed = false;
    }
    fn is_idle(&self) -> bool {
        false
    }
}

/// The latest snapshot, folded into bounded series.
struct Published {
    snapshot: Snapshot,
    keys: CappedSeries<Arc<str>, Arc<str>, KeyValues>,
    /// Throttle keys are broker-wide: one group.
    throttles: CappedSeries<(), Arc<str>, ThrottleValues>,
}

impl Published {
    fn absorb(&mut self, mut snapshot: Snapshot) {
        self.keys.begin_snapshot();
        for queue in &mut snapshot.queues {
            for key in queue.keys.drain(..) {
                let values = KeyValues {
                    deliveries: key.new_deliveries,
                    actual_share: key.actual_share,
                    fair_share: key.fair_share,
                };
                self.keys.observe(&queue.name, &key.key, values);
            }
        }
        let live: HashSet<Arc<str>> = snapshot.queues.iter().map(|q| q.name.clone()).collect();
        self.keys.end_snapshot(|queue| live.contains(queue));

        self.throttles.begin_snapshot();
        for t in &snapshot.throttles {
            let values = ThrottleValues { passes: t.passes, blocks: t.blocks, tokens: t.tokens, observed: true };
            self.throttles.observe(&(), &t.key, values);
        }
        self.throttles.end_snapshot(|_| true);
        self.snapshot = snapshot;
    }
}

type Shared = Arc<Mutex<Published>>;

fn read<R>(shared: &Shared, f: impl FnOnce(&Published) -> R) -> R {
    f(&shared.lock().unwrap_or_else(PoisonError::into_inner))
}

fn queue_attr(name: &Arc<str>) -> KeyValue {
    KeyValue::new(QUEUE, name.clone())
}

fn label(key: Option<&Arc<str>>) -> opentelemetry::Value {
    key.map_or_else(|| OVERFLOW_LABEL.into(), |k| k.clone().into())
}

/// Implements the scheduler's [`Observer`] with OpenTelemetry instruments.
pub struct MetricsObserver {
    /// Snapshots go to the `fila-metrics` thread, which folds them into the
    /// published series: that work is per key (100,000 active keys: about
    /// 5 % of the scheduler thread), and the lock it takes is also taken by
    /// every scrape, so neither may stall the scheduler.
    snapshots: mpsc::Sender<Snapshot>,
    script_duration: Histogram<f64>,
    script_failures: Counter<u64>,
    commit_duration: Histogram<f64>,
    commit_size: Histogram<u64>,
}

impl MetricsObserver {
    /// Registers every instrument on `meter`. `max_key_series` caps the
    /// labelled per-fairness-key and per-throttle-key series.
    pub fn new(meter: &Meter, max_key_series: usize) -> Result<Self, String> {
        let shared: Shared = Arc::new(Mutex::new(Published {
            snapshot: Snapshot::default(),
            keys: CappedSeries::new(max_key_series),
            throttles: CappedSeries::new(max_key_series),
        }));
        register_queue_counters(meter, &shared);
        register_queue_gauges(meter, &shared);
        register_key_metrics(meter, &shared);
        register_throttle_metrics(meter, &shared);
        register_script_breakers(meter, &shared);
        let (snapshots, received) = mpsc::channel::<Snapshot>();
        // Ends when the observer (the sender) is dropped with the scheduler.
        let spawned = std::thread::Builder::new().name("fila-metrics".into()).spawn(move || {
            for snapshot in received {
                shared.lock().unwrap_or_else(PoisonError::into_inner).absorb(snapshot);
            }
        });
        spawned.map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok(MetricsObserver {
            snapshots,
            script_duration: meter
                .f64_histogram("fila.script.duration")
                .with_unit("s")
                .with_description("Run time of queue-script calls (Lua), per queue and hook.")
                .with_boundaries(SCRIPT_BUCKETS.to_vec())
                .build(),
            script_failures: meter
                .u64_counter("fila.script.failures")
                .with_unit("{call}")
                .with_description(
                    "Script calls that failed (error.type: error, timeout, memory) or were skipped by an open \
                     circuit breaker (breaker_open); safe defaults applied.",
                )
                .build(),
            commit_duration: meter
                .f64_histogram("fila.storage.commit.duration")
                .with_unit("s")
                .with_description("Time to write one group commit (one RocksDB write batch) to storage.")
                .with_boundaries(COMMIT_BUCKETS.to_vec())
                .build(),
            commit_size: meter
                .u64_histogram("fila.storage.commit.size")
                .with_unit("{change}")
                .with_description("Changes (message puts and deletes, ...) carried by one group commit.")
                .with_boundaries(COMMIT_SIZE_BUCKETS.to_vec())
                .build(),
        })
    }
}

impl Observer for MetricsObserver {
    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&self, snapshot: Snapshot) {
        // Fails only once the metrics thread is gone, i.e. at shutdown.
        let _ = self.snapshots.send(snapshot);
    }

    fn script_call(&self, queue: &str, hook: ScriptHook, elapsed: Duration, outcome: ScriptOutcome) {
        let queue = KeyValue::new(QUEUE, queue.to_owned());
        let hook = KeyValue::new(HOOK, hook.as_str());
        if outcome != ScriptOutcome::BreakerOpen {
            self.script_duration.record(elapsed.as_secs_f64(), &[queue.clone(), hook.clone()]);
        }
        if outcome != ScriptOutcome::Ok {
            self.script_failures.add(1, &[queue, hook, KeyValue::new(ERROR_TYPE, outcome.as_str())]);
        }
    }

    fn storage_commit(&self, elapsed: Duration, changes: usize) {
        self.commit_duration.record(elapsed.as_secs_f64(), &[]);
        self.commit_size.record(changes as u64, &[]);
    }
}

fn register_queue_counters(meter: &Meter, shared: &Shared) {
    type Pick = fn(&QueueCounters) -> u64;
    let counters: [(&'static str, &'static str, Pick); 8] = [
        ("fila.messages.enqueued", "Messages accepted into the queue (including delayed ones).", |c| c.enqueued),
        ("fila.messages.leased", "Deliveries to consumers (a retried message counts again).", |c| c.leased),
        ("fila.messages.acked", "Messages acknowledged (done).", |c| c.acked),
        ("fila.messages.nacked", "Negative acknowledgements (failed attempts reported by consumers).", |c| c.nacked),
        ("fila.messages.expired", "Leases that ran out (visibility timeout) before an ack or nack.", |c| c.expired),
        ("fila.messages.dead_lettered", "Messages moved to the queue's dead-letter queue.", |c| c.dead_lettered),
        ("fila.messages.redriven", "Messages moved back from the dead-letter queue.", |c| c.redriven),
        ("fila.messages.returned", "Deliveries a closed Lease stream never sent, made ready again.", |c| c.returned),
    ];
    for (name, description, pick) in counters {
        let shared = shared.clone();
        meter
            .u64_observable_counter(name)
            .with_unit("{message}")
            .with_description(description)
            .with_callback(move |observer| {
                read(&shared, |p| {
                    for q in &p.snapshot.queues {
                        observer.observe(pick(&q.counters), &[queue_attr(&q.name)]);
                    }
                })
            })
            .build();
    }
    let shared = shared.clone();
    meter
        .u64_observable_counter("fila.drr.rounds")
        .with_unit("{round}")
        .with_description("Deficit-round-robin rounds (about one turn per active fairness key) served.")
        .with_callback(move |observer| {
            read(&shared, |p| {
                for q in &p.snapshot.queues {
                    observer.observe(q.drr_rounds, &[queue_attr(&q.name)]);
                }
            })
        })
        .build();
}

fn register_queue_gauges(meter: &Meter, shared: &Shared) {
    type Pick = fn(&crate::broker::observer::QueueSample) -> Option<u64>;
    let gauges: [(&'static str, &'static str, &'static str, Pick); 6] = [
        ("fila.queue.ready", "{message}", "Messages ready for delivery.", |q| Some(q.ready)),
        ("fila.queue.in_flight", "{message}", "Messages leased and not yet acked.", |q| Some(q.in_flight)),
        ("fila.queue.delayed", "{message}", "Messages waiting out a delay or a retry backoff.", |q| Some(q.delayed)),
        ("fila.queue.dead_letter.depth", "{message}", "Messages in the queue's dead-letter queue.", |q| {
            q.dead_letter_depth
        }),
        ("fila.queue.consumers", "{consumer}", "Open delivery streams.", |q| Some(u64::from(q.consumers))),
        ("fila.fairness.active_keys", "{key}", "Fairness keys with ready messages (the keys DRR serves).", |q| {
            Some(q.active_keys)
        }),
    ];
    for (name, unit, description, pick) in gauges {
        let shared = shared.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                read(&shared, |p| {
                    for q in &p.snapshot.queues {
                        if let Some(value) = pick(q) {
                            observer.observe(value, &[queue_attr(&q.name)]);
                        }
                    }
                })
            })
            .build();
    }
}

fn key_attrs(queue: &Arc<str>, key: Option<&Arc<str>>) -> [KeyValue; 2] {
    [queue_attr(queue), KeyValue::new(FAIRNESS_KEY, label(key))]
}

fn register_key_metrics(meter: &Meter, shared: &Shared) {
    let s = shared.clone();
    meter
        .u64_observable_counter("fila.fairness.deliveries")
        .with_unit("{message}")
        .with_description("Deliveries per fairness key (keys over the series cap are summed under _other).")
        .with_callback(move |observer| {
            read(&s, |p| p.keys.for_each(|queue, key, v| observer.observe(v.deliveries, &key_attrs(queue, key))))
        })
        .build();
    let s = shared.clone();
    meter
        .f64_observable_gauge("fila.fairness.share.actual")
        .with_unit("1")
        .with_description("A key's share of the queue's deliveries in the last second (0 when nothing was delivered).")
        .with_callback(move |observer| {
            read(&s, |p| p.keys.for_each(|queue, key, v| observer.observe(v.actual_share, &key_attrs(queue, key))))
        })
        .build();
    let s = shared.clone();
    meter
        .f64_observable_gauge("fila.fairness.share.fair")
        .with_unit("1")
        .with_description("The share DRR owes a key now: its weight over the weights of keys with ready messages.")
        .with_callback(move |observer| {
            read(&s, |p| p.keys.for_each(|queue, key, v| observer.observe(v.fair_share, &key_attrs(queue, key))))
        })
        .build();
}

/// Calls `f` with the values and attributes of every throttle key seen in
/// the last snapshot.
fn each_observed_throttle(shared: &Shared, mut f: impl FnMut(&ThrottleValues, &[KeyValue])) {
    read(shared, |p| {
        p.throttles.for_each(|_, key, values| {
            if values.observed {
                f(values, &[KeyValue::new(THROTTLE_KEY, label(key))])
            }
        })
    })
}

fn register_throttle_metrics(meter: &Meter, shared: &Shared) {
    let s = shared.clone();
    meter
        .u64_observable_counter("fila.throttle.passes")
        .with_unit("{message}")
        .with_description("Deliveries that took a token from the throttle key's bucket.")
        .with_callback(move |observer| each_observed_throttle(&s, |v, attrs| observer.observe(v.passes, attrs)))
        .build();
    let s = shared.clone();
    meter
        .u64_observable_counter("fila.throttle.blocks")
        .with_unit("{check}")
        .with_description("Times a ready message was held back because the throttle key's bucket was empty.")
        .with_callback(move |observer| each_observed_throttle(&s, |v, attrs| observer.observe(v.blocks, attrs)))
        .build();
    let s = shared.clone();
    meter
        .f64_observable_gauge("fila.throttle.tokens")
        .with_unit("{token}")
        .with_description("Tokens in the throttle key's bucket.")
        .with_callback(move |observer| each_observed_throttle(&s, |v, attrs| observer.observe(v.tokens, attrs)))
        .build();
}

fn register_script_breakers(meter: &Meter, shared: &Shared) {
    let s = shared.clone();
    meter
        .u64_observable_gauge("fila.script.breaker.state")
        .with_description("Circuit breaker of a queue's script hook: 0 closed, 1 half-open (trial call), 2 open.")
        .with_callback(move |observer| {
            read(&s, |p| {
                for q in &p.snapshot.queues {
                    for (hook, state) in &q.hooks {
                        let value = match state {
                            BreakerState::Closed => 0,
                            BreakerState::HalfOpen => 1,
                            BreakerState::Open => 2,
                        };
                        observer.observe(value, &[queue_attr(&q.name), KeyValue::new(HOOK, hook.as_str())]);
                    }
                }
            })
        })
        .build();
}

/// Bucket bounds, in seconds, of delivery latency (100 µs to 5 min).
const LATENCY_BUCKETS: &[f64] = &[
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Metrics recorded where deliveries leave the broker.
#[derive(Clone)]
pub struct DeliveryMetrics {
    latency: Histogram<f64>,
}

impl DeliveryMetrics {
    pub fn new(meter: &Meter) -> Self {
        DeliveryMetrics {
            latency: meter
                .f64_histogram("fila.delivery.latency")
                .with_unit("s")
                .with_description(
                    "Time from a message becoming ready (enqueued, its delay or retry backoff over, or \
                     redriven) to its delivery to a consumer: queueing, fair-share and throttle waits.",
                )
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
        }
    }

    pub fn delivered(&self, queue: &Arc<str>, waited: Duration) {
        self.latency.record(waited.as_secs_f64(), &[queue_attr(queue)]);
    }
}
