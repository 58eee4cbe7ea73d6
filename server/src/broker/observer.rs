//! What the scheduler tells the outside about itself, for metrics.
//!
//! The scheduler knows nothing of OpenTelemetry: it keeps plain counters in
//! its own state and, about once a second, hands an [`Observer`] a
//! [`Snapshot`] of them; the few things that must be timed as they happen
//! (script calls, storage commits) are reported one by one. The telemetry
//! module implements the trait; [`NoObserver`] turns it all off.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::ScriptError;
use crate::scripting::{BreakerState, ScriptHook};

/// How often the scheduler publishes a snapshot.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

pub trait Observer: Send + 'static {
    /// Whether snapshots are wanted at all; when not, the scheduler neither
    /// builds them nor counts per-key deliveries.
    fn wants_snapshots(&self) -> bool;
    fn snapshot(&self, snapshot: Snapshot);
    fn script_call(&self, queue: &str, hook: ScriptHook, elapsed: Duration, outcome: ScriptOutcome);
    /// One group commit: how long the write took and how many changes it
    /// carried.
    fn storage_commit(&self, elapsed: Duration, changes: usize);
}

/// Reports nowhere (telemetry off).
pub struct NoObserver;

impl Observer for NoObserver {
    fn wants_snapshots(&self) -> bool {
        false
    }
    fn snapshot(&self, _: Snapshot) {}
    fn script_call(&self, _: &str, _: ScriptHook, _: Duration, _: ScriptOutcome) {}
    fn storage_commit(&self, _: Duration, _: usize) {}
}

/// How one script call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptOutcome {
    Ok,
    /// A Lua error or an invalid result.
    Error,
    /// Stopped by the time budget.
    Timeout,
    /// Stopped by the memory limit.
    Memory,
    /// Not run: the hook's circuit breaker is open.
    BreakerOpen,
}

impl ScriptOutcome {
    pub fn of<T>(result: &Result<T, ScriptError>) -> Self {
        match result {
            Ok(_) => ScriptOutcome::Ok,
            Err(ScriptError::Timeout { .. }) => ScriptOutcome::Timeout,
            Err(ScriptError::Memory { .. }) => ScriptOutcome::Memory,
            Err(ScriptError::BreakerOpen { .. }) => ScriptOutcome::BreakerOpen,
            Err(_) => ScriptOutcome::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScriptOutcome::Ok => "ok",
            ScriptOutcome::Error => "error",
            ScriptOutcome::Timeout => "timeout",
            ScriptOutcome::Memory => "memory",
            ScriptOutcome::BreakerOpen => "breaker_open",
        }
    }
}

/// Everything-so-far counters of one queue, kept by the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    pub enqueued: u64,
    pub leased: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Leases that ran out (visibility timeout) before an ack or nack.
    pub expired: u64,
    /// Messages this queue moved to its dead-letter queue.
    pub dead_lettered: u64,
    /// Messages moved back to this queue from its dead-letter queue.
    pub redriven: u64,
    /// Deliveries a closed Lease stream never sent, made ready again.
    pub returned: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub queues: Vec<QueueSample>,
    pub throttles: Vec<ThrottleSample>,
}

#[derive(Debug, Clone)]
pub struct QueueSample {
    pub name: Arc<str>,
    pub counters: QueueCounters,
    /// Ready messages.
    pub ready: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// Depth of the queue's dead-letter queue (none for a dead-letter queue).
    pub dead_letter_depth: Option<u64>,
    pub consumers: u32,
    /// Keys with ready messages (DRR serves only these).
    pub active_keys: u64,
    pub drr_rounds: u64,
    pub keys: Vec<KeySample>,
    pub hooks: Vec<(ScriptHook, BreakerState)>,
}

/// One fairness key: deliveries since the previous snapshot, and its share
/// of the queue's recent deliveries against the share DRR owes it.
#[derive(Debug, Clone)]
pub struct KeySample {
    pub key: Arc<str>,
    pub new_deliveries: u64,
    /// Fraction of the queue's deliveries since the previous snapshot.
    pub actual_share: f64,
    /// weight / total weight of the keys with ready messages; 0 for a key
    /// with none.
    pub fair_share: f64,
}

#[derive(Debug, Clone)]
pub struct ThrottleSample {
    pub key: Arc<str>,
    /// Deliveries that took a token, since the limit was set.
    pub passes: u64,
    /// Checks that found the bucket empty, since the limit was set.
    pub blocks: u64,
    pub tokens: f64,
}
