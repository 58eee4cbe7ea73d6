use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fila_proto::v1 as pb;

/// A message to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub queue: String,
    pub payload: Bytes,
    pub headers: HashMap<String, String>,
    pub fairness_key: String,
    pub weight: u32,
    pub throttle_keys: Vec<String>,
    /// How long before the message may be delivered.
    pub delay: Option<Duration>,
}

impl NewMessage {
    pub fn new(queue: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        NewMessage { queue: queue.into(), payload: payload.into(), ..Default::default() }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn fairness_key(mut self, key: impl Into<String>) -> Self {
        self.fairness_key = key.into();
        self
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    pub fn throttle_key(mut self, key: impl Into<String>) -> Self {
        self.throttle_keys.push(key.into());
        self
    }

    /// Delivers the message no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub(crate) fn into_proto(self) -> pb::EnqueueMessage {
        pb::EnqueueMessage {
            queue: self.queue,
            headers: self.headers,
            payload: self.payload,
            fairness_key: self.fairness_key,
            weight: self.weight,
            delay_ms: self.delay.map_or(0, |d| d.as_millis() as u64),
            throttle_keys: self.throttle_keys,
        }
    }
}

impl<Q: Into<String>, P: Into<Bytes>> From<(Q, P)> for NewMessage {
    fn from((queue, payload): (Q, P)) -> Self {
        NewMessage::new(queue, payload)
    }
}

/// Options of a Lease stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseOptions {
    /// Most unacknowledged deliveries at once; `None` for the broker default (100).
    pub max_in_flight: Option<u32>,
    /// Lease duration; `None` for the queue's visibility timeout.
    pub visibility_timeout: Option<Duration>,
}

/// Options of a new queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueOptions {
    /// `None` for the broker default (30 s).
    pub visibility_timeout: Option<Duration>,
    /// DRR quantum: deliveries per turn for a key of weight 1. `None` for
    /// the broker default (1).
    pub quantum: Option<u32>,
    /// Failed attempts before the default policy dead-letters a message.
    /// `None` for the broker default (10).
    pub max_attempts: Option<u32>,
    /// Largest payload the queue accepts, in bytes. `None` (or 0) for the
    /// server's maximum.
    pub max_payload_bytes: Option<u64>,
}

/// A queue and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub visibility_timeout: Duration,
    pub quantum: u32,
    pub max_attempts: u32,
    /// 0 = the server's maximum.
    pub max_payload_bytes: u64,
    /// Ready, leased and delayed messages.
    pub depth: u64,
    pub in_flight: u64,
    /// Messages waiting out a delay or retry backoff.
    pub delayed: u64,
    pub consumers: u32,
}

impl From<pb::QueueInfo> for QueueInfo {
    fn from(q: pb::QueueInfo) -> Self {
        QueueInfo {
            name: q.name,
            visibility_timeout: Duration::from_millis(q.settings.as_ref().map_or(0, |s| s.visibility_timeout_ms)),
            quantum: q.settings.as_ref().map_or(0, |s| s.quantum),
            max_attempts: q.settings.as_ref().map_or(0, |s| s.max_attempts),
            max_payload_bytes: q.settings.map_or(0, |s| s.max_payload_bytes),
            delayed: q.delayed,
            depth: q.depth,
            in_flight: q.in_flight,
            consumers: q.consumers,
        }
    }
}

/// A throttle key's limit and live token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleInfo {
    pub key: String,
    pub rate_per_second: f64,
    pub burst: f64,
    pub tokens: f64,
    /// Deliveries held back by this key since the broker started.
    pub blocked_count: u64,
}

impl From<pb::ThrottleInfo> for ThrottleInfo {
    fn from(t: pb::ThrottleInfo) -> Self {
        ThrottleInfo {
            key: t.throttle_key,
            rate_per_second: t.rate_per_second,
            burst: t.burst,
            tokens: t.tokens,
            blocked_count: t.blocked_count,
        }
    }
}

/// Scheduling state of one fairness key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStats {
    pub fairness_key: String,
    pub pending: u64,
    pub leased: u64,
    pub weight: u32,
    pub weight_overridden: bool,
    pub deficit: u64,
    pub throttled: bool,
    /// Recent deliveries per second (decaying average, ~10 s).
    pub delivery_rate: f64,
}

/// A queue's counters and its busiest fairness keys.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub queue: QueueInfo,
    pub active_keys: u64,
    pub tracked_keys: u64,
    pub keys: Vec<KeyStats>,
    /// Messages in the queue's dead-letter queue.
    pub dead_lettered: u64,
}

impl From<pb::GetQueueStatsResponse> for QueueStats {
    fn from(s: pb::GetQueueStatsResponse) -> Self {
        QueueStats {
            queue: s.queue.map(QueueInfo::from).unwrap_or_else(|| QueueInfo::from(pb::QueueInfo::default())),
            active_keys: s.active_keys,
            tracked_keys: s.tracked_keys,
            dead_lettered: s.dead_lettered,
            keys: s
                .keys
                .into_iter()
                .map(|k| KeyStats {
                    fairness_key: k.fairness_key,
                    pending: k.pending,
                    leased: k.leased,
                    weight: k.weight,
                    weight_overridden: k.weight_overridden,
                    deficit: k.deficit,
                    throttled: k.throttled,
                    delivery_rate: k.delivery_rate,
                })
                .collect(),
        }
    }
}

/// A leased message. Ack or nack it with `lease_token`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub queue: String,
    pub headers: HashMap<String, String>,
    pub payload: Bytes,
    pub fairness_key: String,
    pub weight: u32,
    pub throttle_keys: Vec<String>,
    /// 1 for the first delivery; each failed attempt adds one.
    pub attempt: u32,
    /// Error of the latest failed attempt; empty before any failure.
    pub last_error: String,
    pub enqueued_at: SystemTime,
    pub leased_at: SystemTime,
    pub lease_token: String,
    pub lease_deadline: SystemTime,
}

pub(crate) fn system_time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
}

impl Delivery {
    /// The message this delivery carries, without its lease.
    pub fn message(&self) -> Message {
        Message {
            id: self.id.clone(),
            queue: self.queue.clone(),
            headers: self.headers.clone(),
            payload: self.payload.clone(),
            fairness_key: self.fairness_key.clone(),
            weight: self.weight,
            throttle_keys: self.throttle_keys.clone(),
            attempt: self.attempt,
            last_error: self.last_error.clone(),
            enqueued_at: self.enqueued_at,
        }
    }
}

impl Delivery {
    pub(crate) fn from_proto(d: pb::Delivery) -> Self {
        let message = d.message.unwrap_or_default();
        let leased_at = system_time(message.timestamps.as_ref().and_then(|t| t.leased_at));
        let Message {
            id,
            queue,
            headers,
            payload,
            fairness_key,
            weight,
            throttle_keys,
            attempt,
            last_error,
            enqueued_at,
        } = Message::from_proto(message);
        Delivery {
            id,
            queue,
            headers,
            payload,
            fairness_key,
            weight,
            throttle_keys,
            attempt,
            last_error,
            enqueued_at,
            leased_at,
            lease_token: d.lease_token,
            lease_deadline: system_time(d.lease_deadline),
        }
    }
}

/// A stored message, as Peek returns it (not leased).
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub queue: String,
    pub headers: HashMap<String, String>,
    pub payload: Bytes,
    pub fairness_key: String,
    pub weight: u32,
    pub throttle_keys: Vec<String>,
    /// The number its next delivery will have.
    pub attempt: u32,
    pub last_error: String,
    pub enqueued_at: SystemTime,
}

impl Message {
    pub(crate) fn from_proto(m: pb::Message) -> Self {
        let meta = m.metadata.unwrap_or_default();
        Message {
            id: m.id,
            queue: m.queue,
            headers: m.headers,
            payload: m.payload,
            fairness_key: meta.fairness_key,
            weight: meta.weight,
            throttle_keys: meta.throttle_keys,
            attempt: meta.attempt_count,
            last_error: meta.last_error,
            enqueued_at: system_time(m.timestamps.and_then(|t| t.enqueued_at)),
        }
    }
}

/// What to explain.
#[derive(Debug, Clone, Copy)]
pub enum ExplainSubject<'a> {
    FairnessKey(&'a str),
    Message(&'a str),
}

/// Why a key or message is (not) being delivered, from live broker state.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub state: pb::ExplainState,
    /// One sentence for people.
    pub reason: String,
    pub throttle_key: Option<String>,
    pub tokens: f64,
    pub next_token_in: Duration,
    pub ahead: u64,
    pub until: Option<SystemTime>,
    pub pending: u64,
}

impl Explanation {
    pub(crate) fn from_proto(e: pb::ExplainResponse) -> Self {
        Explanation {
            state: pb::ExplainState::try_from(e.state).unwrap_or(pb::ExplainState::Unspecified),
            reason: e.reason,
            throttle_key: Some(e.throttle_key).filter(|k| !k.is_empty()),
            tokens: e.tokens,
            next_token_in: Duration::from_millis(e.next_token_in_ms),
            ahead: e.ahead,
            until: e.until.map(|t| system_time(Some(t))),
            pending: e.pending,
        }
    }
}

/// The Lua scripts of a queue (`None`: no script).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueScripts {
    pub on_enqueue: Option<String>,
    pub on_failure: Option<String>,
}

/// A script test: which hook, its source, and the sample it runs against.
#[derive(Debug, Clone, Default)]
pub struct ScriptTest {
    /// Source of an `on_enqueue` script (set this or `on_failure`).
    pub on_enqueue: Option<String>,
    /// Source of an `on_failure` script.
    pub on_failure: Option<String>,
    pub queue: String,
    pub headers: HashMap<String, String>,
    pub payload: Bytes,
    /// `on_failure`: failed attempts so far.
    pub attempts: u32,
    /// `on_failure`: the failure's error text.
    pub error: String,
    /// What `fila.get` sees.
    pub config: HashMap<String, String>,
}
