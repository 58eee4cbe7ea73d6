//! The load generator shared by every workload: producer tasks that send
//! batches (as fast as they can, or at a set rate), consumer tasks that
//! receive and acknowledge, and the counters the probes read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::brokers::{Consumer, Delivered, Producer};
use crate::measure::Samples;

/// How long a consumer waits for a delivery before checking whether to stop.
const RECEIVE_WAIT: Duration = Duration::from_millis(50);
/// How long stopping may take before the remaining tasks are aborted.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What the producers send.
#[derive(Clone)]
pub enum Payload {
    /// The same bytes every time (throughput: no work per message).
    Fixed(Bytes),
    /// `size` bytes starting with the send time, for latency.
    Stamped(usize),
}

impl Payload {
    pub fn fixed(size: usize) -> Self {
        Payload::Fixed(Bytes::from(vec![b'x'; size]))
    }
}

/// Nanoseconds since the suite started; the clock of stamped payloads.
fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn stamped(size: usize) -> Bytes {
    let mut buffer = BytesMut::with_capacity(size.max(8));
    buffer.put_u64(now_nanos());
    buffer.resize(size.max(8), b'x');
    buffer.freeze()
}

fn sent_at(payload: &Bytes) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

#[derive(Clone)]
pub struct Produce {
    pub batch: usize,
    pub payload: Payload,
    /// Pause while more than this many messages are in the queue beyond
    /// where it started: producers keep pace with consumers, so a
    /// lifecycle run measures a steady state rather than a growing backlog.
    pub max_backlog: Option<u64>,
    /// Messages per second of this producer; `None`: as fast as it can.
    pub rate: Option<f64>,
    /// Stop after sending this many; `None`: until the load stops.
    pub limit: Option<u64>,
}

#[derive(Clone, Default)]
pub struct Consume {
    /// Most deliveries taken (and then acknowledged) at once.
    pub batch: usize,
    /// Records enqueue-to-delivery latency of stamped payloads.
    pub latency: Option<Arc<Samples>>,
    /// Counts deliveries per fairness key.
    pub per_key: Option<Arc<KeyCounts>>,
}

/// Deliveries per fairness key, for a fixed set of keys.
pub struct KeyCounts(HashMap<String, AtomicU64>);

impl KeyCounts {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        KeyCounts(keys.into_iter().map(|k| (k, AtomicU64::new(0))).collect())
    }

    fn add(&self, key: &str) {
        if let Some(count) = self.0.get(key) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.0.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).collect()
    }
}

/// What the tasks share.
#[derive(Default)]
pub struct Counters {
    /// Messages confirmed by the broker.
    pub sent: AtomicU64,
    /// Messages delivered and acknowledged.
    pub acked: AtomicU64,
    stop: AtomicBool,
    /// Woken after every acknowledgement, for producers waiting on the backlog.
    progress: Notify,
}

impl Counters {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> u64 {
        self.sent.load(Ordering::Relaxed).saturating_sub(self.acked.load(Ordering::Relaxed))
    }
}

/// Running producer and consumer tasks.
pub struct Load {
    pub counters: Arc<Counters>,
    tasks: JoinSet<Result<()>>,
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

impl Load {
    pub fn new() -> Self {
        Load { counters: Arc::default(), tasks: JoinSet::new() }
    }

    pub fn add_producer(&mut self, producer: Box<dyn Producer>, spec: Produce) {
        self.tasks.spawn(produce(producer, spec, self.counters.clone()));
    }

    pub fn add_consumer(&mut self, consumer: Box<dyn Consumer>, spec: Consume) {
        self.tasks.spawn(consume(consumer, spec, self.counters.clone()));
    }

    /// Lets the load run for `duration`; fails as soon as a task fails.
    pub async fn run_for(&mut self, duration: Duration) -> Result<()> {
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                // Tasks end early only when they fail or have sent their limit.
                Some(finished) = self.tasks.join_next() => finished.context("a load task panicked")??,
            }
        }
    }

    /// Waits until `done` holds (checked every few milliseconds), failing if
    /// a task fails or `limit` passes.
    pub async fn run_until(&mut self, limit: Duration, done: impl Fn(&Counters) -> bool) -> Result<()> {
        let started = Instant::now();
        while !done(&self.counters) {
            anyhow::ensure!(started.elapsed() < limit, "the load did not finish within {limit:?}");
            self.run_for(Duration::from_millis(5)).await?;
        }
        Ok(())
    }

    /// Stops every task and reports the first error.
    pub async fn stop(mut self) -> Result<()> {
        self.counters.stop.store(true, Ordering::Relaxed);
        self.counters.progress.notify_waiters();
        let joined = tokio::time::timeout(STOP_LIMIT, async {
            let mut first_error = None;
            while let Some(finished) = self.tasks.join_next().await {
                if let Err(e) = finished.context("a load task panicked").and_then(|r| r) {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await;
        self.tasks.abort_all(); // any still blocked in a call after the limit
        joined.unwrap_or(Ok(()))
    }
}

async fn produce(mut producer: Box<dyn Producer>, spec: Produce, counters: Arc<Counters>) -> Result<()> {
    let fixed: Vec<Bytes> = match &spec.payload {
        Payload::Fixed(bytes) => vec![bytes.clone(); spec.batch],
        Payload::Stamped(_) => Vec::new(),
    };
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !counters.stopped() && spec.limit.is_none_or(|limit| sent < limit) {
        if let Some(limit) = spec.max_backlog {
            while counters.backlog() > limit && !counters.stopped() {
                let _ = tokio::time::timeout(Duration::from_millis(5), counters.progress.notified()).await;
            }
        }
        if let Some(rate) = spec.rate {
            // Catches up after a slow call, so the average rate holds.
            tokio::time::sleep_until((started + Duration::from_secs_f64(sent as f64 / rate)).into()).await;
        }
        let size = spec.limit.map_or(spec.batch, |limit| spec.batch.min((limit - sent) as usize));
        let stamped_batch: Vec<Bytes>;
        let batch = match &spec.payload {
            Payload::Fixed(_) => &fixed[..size],
            Payload::Stamped(bytes) => {
                stamped_batch = (0..size).map(|_| stamped(*bytes)).collect();
                &stamped_batch[..]
            }
        };
        producer.send(batch).await?;
        sent += batch.len() as u64;
        counters.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn consume(mut consumer: Box<dyn Consumer>, spec: Consume, counters: Arc<Counters>) -> Result<()> {
    let mut received: Vec<Delivered> = Vec::with_capacity(spec.batch);
    while !counters.stopped() {
        received.clear();
        consumer.receive(spec.batch, RECEIVE_WAIT, &mut received).await?;
        if received.is_empty() {
            continue;
        }
        if let Some(samples) = &spec.latency {
            let now = now_nanos();
            samples.record(received.iter().filter_map(|d| sent_at(&d.payload)).map(|t| now.saturating_sub(t)));
        }
        if let Some(per_key) = &spec.per_key {
            received.iter().for_each(|d| per_key.add(&d.key));
        }
        consumer.ack().await?;
        counters.acked.fetch_add(received.len() as u64, Ordering::Relaxed);
        counters.progress.notify_waiters();
    }
    Ok(())
}
