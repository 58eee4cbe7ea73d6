//! The broker core: one scheduler thread owns all queue state, without
//! locks. Callers (the gRPC handlers) talk to it through [`Broker`], a cheap
//! handle that sends commands over a channel and awaits the answers.
//!
//! The scheduler works in rounds: it takes every command that has arrived,
//! applies them to its state, writes all their storage changes in one atomic
//! batch (group commit), then answers the callers and pushes deliveries.
//! Nothing is answered or delivered before it is durable.

mod consumers;
pub mod drr;
mod ended_leases;
mod failure_policy;
mod key_table;
mod leases;
pub mod observer;
mod queue_state;
mod rate;
mod scheduler;
pub mod throttle;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

pub use consumers::{ConsumerEvent, ConsumerId, DEFAULT_WINDOW, MAX_WINDOW};
pub use ended_leases::ENDED_LEASES_REMEMBERED;

use crate::domain::limits::{MAX_FAIRNESS_KEY_BYTES, MAX_WEIGHT};
use crate::domain::queue::{max_attempts_from_wire, quantum_from_wire, visibility_timeout_from_ms};
use crate::domain::runtime_config::{check_config_value, parse_config_key};
use crate::domain::throttle::parse_throttle_key;
use crate::domain::{
    BrokerError, Lane, LeaseToken, Limits, MessageId, NewMessage, QueueName, QueueSettings, ScriptSources,
    ThrottleLimit, ThrottleSet, ValidationError,
};
use crate::scripting::{
    self, EnqueueDecision, FailureDecision, HookStats, ScriptError, ScriptHeaders, ScriptLimits, ScriptMessage,
};
use crate::storage::Store;
use observer::Observer;
use scheduler::{Command, Scheduler};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Fairness keys listed in queue stats unless the caller asks otherwise.
pub const DEFAULT_STATS_KEYS: u32 = 100;
pub const MAX_STATS_KEYS: u32 = 10_000;

/// A message leased to a consumer, as pushed on its stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<str>,
    /// The stored message (`domain::message::MessageRecord`, encoded);
    /// decoding is left to the transport thread.
    pub record: Bytes,
    pub token: LeaseToken,
    pub leased_at: SystemTime,
    pub deadline: SystemTime,
}

/// A queue with its live counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub settings: QueueSettings,
    /// Ready, leased and delayed messages.
    pub depth: u64,
    pub in_flight: u64,
    /// Messages waiting for a delay (a delayed enqueue or a retry backoff).
    pub delayed: u64,
    pub consumers: u32,
}

/// Scheduling state of one active fairness key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStats {
    pub fairness_key: String,
    /// Ready messages.
    pub pending: u64,
    /// Messages leased and not yet acknowledged.
    pub leased: u64,
    /// The weight DRR uses now.
    pub weight: u32,
    /// Whether `weight` comes from an operator override.
    pub weight_overridden: bool,
    /// Deliveries left in the key's current DRR turn (0 between turns).
    pub deficit: u64,
    /// Whether every ready message of the key waits for a throttle.
    pub throttled: bool,
    /// Recent deliveries per second (decaying average over about 10 s).
    pub delivery_rate: f64,
}

/// A queue's counters and its busiest fairness keys.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub info: QueueInfo,
    /// Fairness keys with ready messages.
    pub active_keys: u64,
    /// Fairness keys with ready or leased messages.
    pub tracked_keys: u64,
    /// Up to the requested number of keys, most pending first.
    pub keys: Vec<KeyStats>,
    /// Messages in the queue's dead-letter queue.
    pub dead_lettered: u64,
}

/// A throttle key's limit and live bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleInfo {
    pub key: String,
    pub limit: ThrottleLimit,
    pub tokens: f64,
    /// Times a delivery was held back because this bucket was empty, since
    /// the broker started.
    pub blocked: u64,
}

/// What Explain is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplainSubject {
    FairnessKey(String),
    Message(MessageId),
}

/// Why a key or message is (not) being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainState {
    Deliverable,
    NoConsumer,
    ConsumersBusy,
    Throttled,
    BehindInKey,
    Leased,
    Delayed,
    DeadLettered,
    NotFound,
}

/// Explain's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub state: ExplainState,
    /// One sentence for people.
    pub reason: String,
    pub throttle_key: Option<String>,
    pub tokens: f64,
    pub next_token_in: Duration,
    pub ahead: u64,
    pub until: Option<SystemTime>,
    /// Ready messages of the fairness key.
    pub pending: u64,
}

impl Explanation {
    pub fn new(state: ExplainState, reason: String) -> Self {
        Explanation {
            state,
            reason,
            throttle_key: None,
            tokens: 0.0,
            next_token_in: Duration::ZERO,
            ahead: 0,
            until: None,
            pending: 0,
        }
    }
}

/// A stored message as Peek returns it.
#[derive(Debug, Clone)]
pub struct PeekedMessage {
    pub queue: Arc<str>,
    pub record: Bytes,
}

/// Settings to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct SettingsUpdate {
    pub visibility_timeout: Option<Duration>,
    pub quantum: Option<u32>,
    pub max_attempts: Option<u32>,
    /// `Some(0)` returns to the server's maximum.
    pub max_payload_bytes: Option<u64>,
    /// `Some(None)` removes the script.
    pub on_enqueue: Option<Option<String>>,
    pub on_failure: Option<Option<String>>,
}

/// A settings update as the wire carries it: `None` = unchanged; an empty
/// script removes the script.
#[derive(Debug, Clone, Default)]
pub struct WireSettingsUpdate {
    pub visibility_timeout_ms: Option<u64>,
    pub quantum: Option<u32>,
    pub max_attempts: Option<u32>,
    pub max_payload_bytes: Option<u64>,
    pub on_enqueue: Option<String>,
    pub on_failure: Option<String>,
}

/// A queue's script sources and the live state of its hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueScriptsInfo {
    pub sources: ScriptSources,
    pub on_enqueue: Option<HookStats>,
    pub on_failure: Option<HookStats>,
}

/// Which hook a script test runs, with its source.
#[derive(Debug, Clone)]
pub enum TestedHook {
    OnEnqueue(String),
    OnFailure(String),
}

/// A script test: the script and a sample message.
#[derive(Debug, Clone)]
pub struct ScriptTest {
    pub hook: TestedHook,
    pub queue: String,
    pub headers: std::collections::HashMap<String, String>,
    pub payload: Bytes,
    pub attempts: u32,
    pub error: String,
    pub config: std::collections::HashMap<String, String>,
}

/// What a tested script decided (its failure is the `Err` beside this).
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptTestOutcome {
    Enqueue(EnqueueDecision),
    /// `None`: the script returned nil, so the default policy would apply.
    Failure(Option<FailureDecision>),
}

/// One page of runtime configuration entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPage {
    pub entries: Vec<(String, String)>,
    pub next_after: Option<String>,
}

/// One page of throttles.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottlePage {
    pub throttles: Vec<ThrottleInfo>,
    pub next_after: Option<String>,
}

/// One page of queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePage {
    pub queues: Vec<QueueInfo>,
    /// Name of the last queue returned, when more may follow.
    pub next_after: Option<String>,
}

/// An open Lease stream. Dropping it unsubscribes the consumer. The leases
/// its client received stay until their visibility timeout; deliveries the
/// stream had not passed on yet go back to the queue at once.
pub struct Subscription {
    /// `None` only once dropped.
    events: Option<tokio_mpsc::UnboundedReceiver<ConsumerEvent>>,
    id: ConsumerId,
    commands: mpsc::Sender<Command>,
}

impl Subscription {
    /// The stream's next event; `None` once the broker has gone.
    pub async fn recv(&mut self) -> Option<ConsumerEvent> {
        self.events.as_mut()?.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The receiver goes to the scheduler, the only sender: once it has
        // dropped the consumer nothing more can arrive, so what the receiver
        // still holds is exactly what was never sent.
        if let Some(events) = self.events.take() {
            let _ = self.commands.send(Command::Unsubscribe { consumer: self.id, events });
        }
    }
}

/// A nack of one delivery.
#[derive(Debug, Clone)]
pub struct NackItem {
    pub token: String,
    pub error: String,
}

/// An extension of one lease.
#[derive(Debug, Clone)]
pub struct ExtendItem {
    pub token: String,
    /// 0 = the timeout the lease was granted with.
    pub visibility_timeout_ms: u64,
}

/// Broker-wide options.
#[derive(Debug, Clone, Copy)]
pub struct BrokerOptions {
    pub limits: Limits,
    /// Budgets of queue scripts.
    pub script_limits: ScriptLimits,
    /// Memory for ready messages held ahead of delivery, all queues
    /// together (see [`DEFAULT_MESSAGE_BUFFER_BYTES`]).
    pub message_buffer_bytes: usize,
}

/// Enough for every one of 100,000 active keys to hold ten small messages
/// in memory, and for 1,000 keys to hold their full read-ahead of 1 KiB
/// messages.
pub const DEFAULT_MESSAGE_BUFFER_BYTES: usize = 256 * 1024 * 1024;

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            limits: Limits::default(),
            script_limits: ScriptLimits::default(),
            message_buffer_bytes: DEFAULT_MESSAGE_BUFFER_BYTES,
        }
    }
}

/// Handle to the scheduler thread. Clones share the same scheduler.
#[derive(Clone)]
pub struct Broker {
    commands: mpsc::Sender<Command>,
    options: BrokerOptions,
}

/// Fires once when the scheduler thread stops; carries the storage error
/// that stopped it, if any.
pub type StopSignal = oneshot::Receiver<Option<BrokerError>>;

impl Broker {
    /// Recovers state from `store` and starts the scheduler thread.
    pub fn start<S: Store>(
        store: S,
        options: BrokerOptions,
        observer: Box<dyn Observer>,
    ) -> Result<(Broker, StopSignal), BrokerError> {
        let (commands, inbox) = mpsc::channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let (recovered_tx, recovered_rx) = mpsc::sync_channel(1);
        let (script_limits, buffer_budget) = (options.script_limits, options.message_buffer_bytes);
        // The scheduler is built on its own thread: its queue scripts' Lua
        // VMs stay on the thread that created them (mlua without its `send`
        // feature, which would take a lock on every Lua operation).
        std::thread::Builder::new()
            .name("fila-scheduler".into())
            .spawn(move || {
                let scheduler = match Scheduler::recover(store, script_limits, buffer_budget, observer) {
                    Ok(scheduler) => scheduler,
                    Err(error) => return drop(recovered_tx.send(Err(error))),
                };
                let _ = recovered_tx.send(Ok(()));
                let outcome = scheduler.run(inbox);
                let _ = stopped_tx.send(outcome.err());
            })
            .map_err(|e| {
                BrokerError::Storage(crate::domain::StorageError::Io(format!("cannot start scheduler: {e}")))
            })?;
        recovered_rx.recv().map_err(|_| BrokerError::Stopped)??;
        Ok((Broker { commands, options }, stopped_rx))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Enqueues a batch; answers per message, in order.
    pub async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Result<MessageId, BrokerError>>, BrokerError> {
        self.options.limits.check_batch(messages.len())?;
        let now = SystemTime::now();
        let items = messages
            .into_iter()
            .map(|m| -> Result<scheduler::PreparedMessage, BrokerError> {
                let m = m.validate(&self.options.limits)?;
                let queue = QueueName::parse(&m.queue)?;
                let id = MessageId::generate();
                let lane = Lane::new(m.fairness_key.as_str().into(), ThrottleSet::new(&m.throttle_keys));
                let weight = m.weight;
                let delay = Duration::from_millis(m.delay_ms);
                let payload_len = m.payload.len();
                let record = m.into_record(id, now).encode_bytes();
                Ok(scheduler::PreparedMessage { queue, lane, weight, delay, payload_len, id, record })
            })
            .collect();
        self.ask(|reply| Command::Enqueue { items, reply }).await
    }

    /// Opens a delivery stream on `queue`.
    pub async fn subscribe(
        &self,
        queue: &str,
        max_in_flight: u32,
        visibility_timeout_ms: u64,
    ) -> Result<Subscription, BrokerError> {
        let queue = QueueName::parse(queue)?;
        let window = match max_in_flight {
            0 => DEFAULT_WINDOW,
            1..=MAX_WINDOW => max_in_flight,
            _ => {
                return Err(ValidationError::WindowOutOfRange {
                    value: max_in_flight,
                    max: MAX_WINDOW,
                    default: DEFAULT_WINDOW,
                }
                .into())
            }
        };
        let visibility_timeout = match visibility_timeout_ms {
            0 => None,
            ms => Some(visibility_timeout_from_ms("visibility_timeout_ms", ms, Duration::ZERO)?),
        };
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        let id = self
            .ask(|reply| Command::Subscribe { queue, window, visibility_timeout, events: events_tx, reply })
            .await??;
        Ok(Subscription { events: Some(events), id, commands: self.commands.clone() })
    }

    /// Acknowledges deliveries; answers per token, in order.
    pub async fn ack(&self, tokens: Vec<String>) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        self.options.limits.check_batch(tokens.len())?;
        let tokens = tokens.iter().map(|t| Ok(t.parse::<LeaseToken>()?)).collect();
        self.ask(|reply| Command::Ack { tokens, reply }).await
    }

    /// Reports failed deliveries; answers per item, in order.
    pub async fn nack(&self, items: Vec<NackItem>) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        use crate::domain::limits::MAX_NACK_ERROR_BYTES;
        self.options.limits.check_batch(items.len())?;
        let items = items
            .into_iter()
            .map(|item| {
                let token = item.token.parse::<LeaseToken>()?;
                if item.error.len() > MAX_NACK_ERROR_BYTES {
                    return Err(
                        ValidationError::NackErrorTooLong { len: item.error.len(), max: MAX_NACK_ERROR_BYTES }.into()
                    );
                }
                Ok((token, item.error))
            })
            .collect();
        self.ask(|reply| Command::Nack { items, reply }).await
    }

    /// Extends leases; answers per item with the new deadline.
    pub async fn extend(&self, items: Vec<ExtendItem>) -> Result<Vec<Result<SystemTime, BrokerError>>, BrokerError> {
        self.options.limits.check_batch(items.len())?;
        let items = items
            .into_iter()
            .map(|item| {
                let token = item.token.parse::<LeaseToken>()?;
                let timeout = match item.visibility_timeout_ms {
                    0 => None,
                    ms => Some(visibility_timeout_from_ms("visibility_timeout_ms", ms, Duration::ZERO)?),
                };
                Ok((token, timeout))
            })
            .collect();
        self.ask(|reply| Command::Extend { items, reply }).await
    }

    /// Creates a queue and its dead-letter queue (`<name>.dlq`).
    pub async fn create_queue(
        &self,
        name: &str,
        visibility_timeout_ms: u64,
        quantum: u32,
        max_attempts: u32,
        max_payload_bytes: u64,
        scripts: ScriptSources,
    ) -> Result<QueueInfo, BrokerError> {
        let name = QueueName::parse_for_create(name)?;
        let settings = QueueSettings {
            visibility_timeout: visibility_timeout_from_ms(
                "visibility_timeout_ms",
                visibility_timeout_ms,
                crate::domain::queue::DEFAULT_VISIBILITY_TIMEOUT,
            )?,
            quantum: quantum_from_wire(quantum)?,
            max_attempts: max_attempts_from_wire(max_attempts)?,
            max_payload_bytes,
        };
        self.ask(|reply| Command::CreateQueue { name, settings, scripts, reply }).await?
    }

    /// Deletes a queue and its messages; returns how many messages went.
    pub async fn delete_queue(&self, name: &str) -> Result<u64, BrokerError> {
        let name = QueueName::parse(name)?;
        self.ask(|reply| Command::DeleteQueue { name, reply }).await?
    }

    /// Lists queues in name order, starting after `after`.
    pub async fn list_queues(&self, after: Option<String>, page_size: u32) -> Result<QueuePage, BrokerError> {
        let limit = page_limit(page_size)?;
        if let Some(token) = &after {
            QueueName::parse(token).map_err(|_| ValidationError::BadPageToken { token: token.clone() })?;
        }
        self.ask(|reply| Command::ListQueues { after, limit, reply }).await
    }

    /// Sets (or changes) the limit of a throttle key; takes effect at once.
    pub async fn set_throttle(&self, key: &str, rate_per_second: f64, burst: f64) -> Result<ThrottleInfo, BrokerError> {
        let key = parse_throttle_key(key)?.to_owned();
        let limit = ThrottleLimit::new(rate_per_second, burst)?;
        self.ask(|reply| Command::SetThrottle { key, limit, reply }).await?
    }

    /// Removes a throttle key's limit: the key becomes unlimited.
    pub async fn remove_throttle(&self, key: &str) -> Result<(), BrokerError> {
        let key = parse_throttle_key(key)?.to_owned();
        self.ask(|reply| Command::RemoveThrottle { key, reply }).await?
    }

    /// One throttle key's limit and live bucket.
    pub async fn get_throttle(&self, key: &str) -> Result<ThrottleInfo, BrokerError> {
        let key = parse_throttle_key(key)?.to_owned();
        self.ask(|reply| Command::GetThrottle { key, reply }).await?
    }

    /// Lists throttle keys with limits, in name order, starting after `after`.
    pub async fn list_throttles(&self, after: Option<String>, page_size: u32) -> Result<ThrottlePage, BrokerError> {
        let limit = page_limit(page_size)?;
        self.ask(|reply| Command::ListThrottles { after, limit, reply }).await
    }

    /// Overrides the weight of a fairness key (`None` removes the override,
    /// so message weights apply again).
    pub async fn set_fairness_weight(&self, queue: &str, key: &str, weight: Option<u32>) -> Result<(), BrokerError> {
        let queue = QueueName::parse(queue)?;
        if key.is_empty() || key.len() > MAX_FAIRNESS_KEY_BYTES {
            return Err(ValidationError::BadFairnessKey { max: MAX_FAIRNESS_KEY_BYTES }.into());
        }
        if let Some(w) = weight {
            if w == 0 || w > MAX_WEIGHT {
                return Err(ValidationError::WeightOutOfRange { weight: w, max: MAX_WEIGHT }.into());
            }
        }
        let key = key.to_owned();
        self.ask(|reply| Command::SetWeight { queue, key, weight, reply }).await?
    }

    /// A queue's counters and up to `max_keys` of its busiest fairness keys.
    pub async fn queue_stats(&self, queue: &str, max_keys: u32) -> Result<QueueStats, BrokerError> {
        let queue = QueueName::parse(queue)?;
        let max_keys = match max_keys {
            0 => DEFAULT_STATS_KEYS,
            1..=MAX_STATS_KEYS => max_keys,
            _ => return Err(ValidationError::PageSizeOutOfRange { value: max_keys, max: MAX_STATS_KEYS }.into()),
        } as usize;
        self.ask(|reply| Command::QueueStats { queue, max_keys, reply }).await?
    }

    /// Sets a runtime configuration value; scripts see it from their next
    /// call.
    pub async fn set_config(&self, key: &str, value: String) -> Result<(), BrokerError> {
        let key = parse_config_key(key)?.to_owned();
        check_config_value(&value)?;
        self.ask(|reply| Command::SetConfig { key, value, reply }).await?
    }

    pub async fn get_config(&self, key: &str) -> Result<String, BrokerError> {
        let key = parse_config_key(key)?.to_owned();
        self.ask(|reply| Command::GetConfig { key, reply }).await?
    }

    /// Lists configuration entries whose key starts with `prefix`, in key
    /// order, starting after `after`.
    pub async fn list_config(
        &self,
        prefix: String,
        after: Option<String>,
        page_size: u32,
    ) -> Result<ConfigPage, BrokerError> {
        let limit = page_limit(page_size)?;
        self.ask(|reply| Command::ListConfig { prefix, after, limit, reply }).await
    }

    pub async fn delete_config(&self, key: &str) -> Result<(), BrokerError> {
        let key = parse_config_key(key)?.to_owned();
        self.ask(|reply| Command::DeleteConfig { key, reply }).await?
    }

    /// One queue, its scripts and their hook counters.
    pub async fn get_queue(&self, name: &str) -> Result<(QueueInfo, QueueScriptsInfo), BrokerError> {
        let name = QueueName::parse(name)?;
        self.ask(|reply| Command::GetQueue { name, reply }).await?
    }

    /// Changes queue settings at runtime (wire values; `None` = unchanged).
    pub async fn update_queue(&self, name: &str, wire: WireSettingsUpdate) -> Result<QueueInfo, BrokerError> {
        let WireSettingsUpdate {
            visibility_timeout_ms,
            quantum,
            max_attempts,
            max_payload_bytes,
            on_enqueue,
            on_failure,
        } = wire;
        let name = QueueName::parse(name)?;
        let update = SettingsUpdate {
            on_enqueue: on_enqueue.map(|s| Some(s).filter(|s| !s.is_empty())),
            on_failure: on_failure.map(|s| Some(s).filter(|s| !s.is_empty())),
            visibility_timeout: visibility_timeout_ms
                .map(|ms| {
                    let ms = ms.max(1);
                    visibility_timeout_from_ms("visibility_timeout_ms", ms, Duration::ZERO)
                })
                .transpose()?,
            quantum: quantum.map(|q| quantum_from_wire(q.max(1))).transpose()?,
            max_attempts: max_attempts.map(|m| max_attempts_from_wire(m.max(1))).transpose()?,
            max_payload_bytes,
        };
        self.ask(|reply| Command::UpdateQueue { name, update, reply }).await?
    }

    /// Up to `limit` ready messages (0 = 10, at most 1000), without leasing.
    pub async fn peek(
        &self,
        queue: &str,
        fairness_key: Option<String>,
        limit: u32,
    ) -> Result<Vec<PeekedMessage>, BrokerError> {
        let queue = QueueName::parse(queue)?;
        let limit = match limit {
            0 => 10,
            1..=MAX_PAGE_SIZE => limit as usize,
            _ => return Err(ValidationError::PageSizeOutOfRange { value: limit, max: MAX_PAGE_SIZE }.into()),
        };
        self.ask(|reply| Command::Peek { queue, fairness_key, limit, reply }).await?
    }

    pub async fn explain(&self, queue: &str, subject: ExplainSubject) -> Result<Explanation, BrokerError> {
        let queue = QueueName::parse(queue)?;
        self.ask(|reply| Command::Explain { queue, subject, reply }).await?
    }

    /// Runs a script's hook once against a sample, on a blocking thread (a
    /// script may run up to its time budget).
    pub async fn test_script(&self, test: ScriptTest) -> Result<Result<ScriptTestOutcome, ScriptError>, BrokerError> {
        let limits = self.options.script_limits;
        tokio::task::spawn_blocking(move || {
            let sample = ScriptMessage {
                queue: &test.queue,
                headers: ScriptHeaders::Map(&test.headers),
                payload: &test.payload,
            };
            match &test.hook {
                TestedHook::OnEnqueue(source) => {
                    scripting::test_on_enqueue(source, &sample, &test.config, limits).map(ScriptTestOutcome::Enqueue)
                }
                TestedHook::OnFailure(source) => {
                    scripting::test_on_failure(source, &sample, test.attempts.max(1), &test.error, &test.config, limits)
                        .map(ScriptTestOutcome::Failure)
                }
            }
        })
        .await
        .map_err(|_| BrokerError::Stopped)
    }

    /// Moves up to `max_messages` (0 = all) ready dead letters of `queue`
    /// back to it; returns how many moved.
    pub async fn redrive(&self, queue: &str, max_messages: u64) -> Result<u64, BrokerError> {
        let queue = QueueName::parse(queue)?;
        self.in_chunks(max_messages, |limit, reply| Command::Redrive { queue: queue.clone(), limit, reply }).await
    }

    /// Deletes the ready and delayed messages of a queue (leased ones stay
    /// until acked or expired); returns how many went.
    pub async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let queue = QueueName::parse(queue)?;
        self.in_chunks(0, |limit, reply| Command::Purge { queue: queue.clone(), limit, reply }).await
    }

    /// Runs a bulk command in chunks of 10,000 messages, each committed
    /// atomically in its own round so other work keeps flowing, until
    /// `max` (0 = no limit) or nothing is left.
    async fn in_chunks(
        &self,
        max: u64,
        command: impl Fn(usize, oneshot::Sender<Result<u64, BrokerError>>) -> Command,
    ) -> Result<u64, BrokerError> {
        const CHUNK: u64 = 10_000;
        let mut total = 0;
        loop {
            let want = if max == 0 { CHUNK } else { (max - total).min(CHUNK) };
            if want == 0 {
                return Ok(total);
            }
            let done = self.ask(|reply| command(want as usize, reply)).await??;
            total += done;
            if done < want {
                return Ok(total);
            }
        }
    }

    /// Ends every delivery stream and refuses new ones: the first step of a
    /// graceful shutdown, so the transport can drain.
    pub async fn close_streams(&self) {
        let _ = self.ask(|reply| Command::CloseStreams { reply }).await;
    }

    /// Finishes pending work, makes it durable and stops the scheduler.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.ask(|reply| Command::Shutdown { reply }).await?
    }
}

/// Checks a wire page size (0 = the default).
fn page_limit(page_size: u32) -> Result<usize, BrokerError> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        1..=MAX_PAGE_SIZE => Ok(page_size as usize),
        _ => Err(ValidationError::PageSizeOutOfRange { value: page_size, max: MAX_PAGE_SIZE }.into()),
    }
}
