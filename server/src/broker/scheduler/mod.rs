//! The scheduler thread: owns every queue's state and the lease table, and
//! is the only writer to storage.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::consumers::{Consumer, ConsumerEvent, ConsumerId};
use super::ended_leases::Ending;
use super::leases::{Lease, LeaseTable, TokenState};
use super::queue_state::{buffered_size, QueueState};
use super::throttle::Throttles;

mod config;
mod dispatch;
mod failures;
mod hooks;
mod inspect;
mod limits;
mod snapshot;
use super::observer::{Observer, SNAPSHOT_INTERVAL};
use super::{
    ConfigPage, ExplainSubject, Explanation, PeekedMessage, QueueInfo, QueuePage, QueueScriptsInfo, QueueStats,
    SettingsUpdate, ThrottleInfo, ThrottlePage,
};
use crate::domain::message::{due_unix_millis, unix_millis, MessageRecord};
use crate::domain::{
    BrokerError, Lane, LeaseError, LeaseToken, MessageId, QueueError, QueueId, QueueName, QueueSettings, ScriptSources,
    StorageError, ThrottleLimit, ValidationError,
};
use crate::fast_map::FastMap;
use crate::scripting::{QueueScripts, ScriptLimits};
use crate::storage::{Change, ChangeSet, LaneSlot, QueueDef, Store, StoredMessage};

/// Most commands taken into one round, so expiries and deliveries keep
/// flowing under a flood of requests.
const MAX_COMMANDS_PER_ROUND: usize = 512;
/// Most messages a lane holds in memory ahead of delivery: read from
/// storage at once, or kept as they are stored (see `store_ready`), so a
/// backlog builds up in storage, not in memory.
const READ_AHEAD: u64 = 32;
/// Bounds of one Lease stream frame.
const MAX_FRAME_DELIVERIES: usize = 256;
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// A validated message ready to be stored.
pub struct PreparedMessage {
    pub queue: QueueName,
    pub lane: Lane,
    /// As sent by the producer; 0 = none.
    pub weight: u32,
    /// How long before the message may be delivered.
    pub delay: Duration,
    pub payload_len: usize,
    pub id: MessageId,
    pub record: Bytes,
}

/// The weight a stored message carries, and whether it is news about its
/// key's weight (a producer's message) or just kept (a retry, a redrive).
#[derive(Debug, Clone, Copy)]
enum SentWeight {
    SetsKeyWeight(u32),
    Kept(u32),
}

type Reply<T> = oneshot::Sender<T>;

pub enum Command {
    Enqueue {
        items: Vec<Result<PreparedMessage, BrokerError>>,
        reply: Reply<Vec<Result<MessageId, BrokerError>>>,
    },
    Subscribe {
        queue: QueueName,
        window: u32,
        visibility_timeout: Option<Duration>,
        events: UnboundedSender<ConsumerEvent>,
        reply: Reply<Result<ConsumerId, BrokerError>>,
    },
    Unsubscribe {
        consumer: ConsumerId,
        /// The stream's receiver, with whatever it never passed on.
        events: UnboundedReceiver<ConsumerEvent>,
    },
    Ack {
        tokens: Vec<Result<LeaseToken, BrokerError>>,
        reply: Reply<Vec<Result<(), BrokerError>>>,
    },
    Nack {
        items: Vec<Result<(LeaseToken, String), BrokerError>>,
        reply: Reply<Vec<Result<(), BrokerError>>>,
    },
    Extend {
        items: Vec<Result<(LeaseToken, Option<Duration>), BrokerError>>,
        reply: Reply<Vec<Result<SystemTime, BrokerError>>>,
    },
    CreateQueue {
        name: QueueName,
        settings: QueueSettings,
        scripts: ScriptSources,
        reply: Reply<Result<QueueInfo, BrokerError>>,
    },
    DeleteQueue {
        name: QueueName,
        reply: Reply<Result<u64, BrokerError>>,
    },
    ListQueues {
        after: Option<String>,
        limit: usize,
        reply: Reply<QueuePage>,
    },
    SetThrottle {
        key: String,
        limit: ThrottleLimit,
        reply: Reply<Result<ThrottleInfo, BrokerError>>,
    },
    RemoveThrottle {
        key: String,
        reply: Reply<Result<(), BrokerError>>,
    },
    GetThrottle {
        key: String,
        reply: Reply<Result<ThrottleInfo, BrokerError>>,
    },
    ListThrottles {
        after: Option<String>,
        limit: usize,
        reply: Reply<ThrottlePage>,
    },
    SetWeight {
        queue: QueueName,
        key: String,
        weight: Option<u32>,
        reply: Reply<Result<(), BrokerError>>,
    },
    QueueStats {
        queue: QueueName,
        max_keys: usize,
        reply: Reply<Result<QueueStats, BrokerError>>,
    },
    SetConfig {
        key: String,
        value: String,
        reply: Reply<Result<(), BrokerError>>,
    },
    GetConfig {
        key: String,
        reply: Reply<Result<String, BrokerError>>,
    },
    ListConfig {
        prefix: String,
        after: Option<String>,
        limit: usize,
        reply: Reply<ConfigPage>,
    },
    DeleteConfig {
        key: String,
        reply: Reply<Result<(), BrokerError>>,
    },
    GetQueue {
        name: QueueName,
        reply: Reply<Result<(QueueInfo, QueueScriptsInfo), BrokerError>>,
    },
    UpdateQueue {
        name: QueueName,
        update: SettingsUpdate,
        reply: Reply<Result<QueueInfo, BrokerError>>,
    },
    Peek {
        queue: QueueName,
        fairness_key: Option<String>,
        limit: usize,
        reply: Reply<Result<Vec<PeekedMessage>, BrokerError>>,
    },
    Explain {
        queue: QueueName,
        subject: ExplainSubject,
        reply: Reply<Result<Explanation, BrokerError>>,
    },
    Purge {
        queue: QueueName,
        limit: usize,
        reply: Reply<Result<u64, BrokerError>>,
    },
    Redrive {
        queue: QueueName,
        limit: usize,
        reply: Reply<Result<u64, BrokerError>>,
    },
    CloseStreams {
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<Result<(), BrokerError>>,
    },
}

/// An answer that a failed commit turns into an error.
trait Outcome: Send + 'static {
    fn fail(self, error: &BrokerError) -> Self;
}

impl<T: Send + 'static> Outcome for Result<T, BrokerError> {
    fn fail(self, error: &BrokerError) -> Self {
        self.and(Err(error.clone()))
    }
}

impl<T: Outcome> Outcome for Vec<T> {
    fn fail(self, error: &BrokerError) -> Self {
        self.into_iter().map(|item| item.fail(error)).collect()
    }
}

impl Outcome for QueuePage {
    fn fail(self, _: &BrokerError) -> Self {
        self
    }
}

impl Outcome for ConfigPage {
    fn fail(self, _: &BrokerError) -> Self {
        self
    }
}

impl Outcome for ThrottlePage {
    fn fail(self, _: &BrokerError) -> Self {
        self
    }
}

impl Outcome for () {
    fn fail(self, _: &BrokerError) -> Self {}
}

type DeferredReply = Box<dyn FnOnce(Option<&BrokerError>) + Send>;

/// What one round accumulates: storage changes, and the answers to send
/// once they are committed.
#[derive(Default)]
struct Round {
    changes: ChangeSet,
    replies: Vec<DeferredReply>,
    reclaim: Vec<QueueId>,
}

impl Round {
    fn answer<T: Outcome>(&mut self, reply: Reply<T>, value: T) {
        self.replies.push(Box::new(move |error| {
            let _ = reply.send(match error {
                Some(e) => value.fail(e),
                None => value,
            });
        }));
    }

    fn finish(self, error: Option<&BrokerError>) {
        for reply in self.replies {
            reply(error);
        }
    }
}

pub struct Scheduler<S: Store> {
    store: S,
    queues: FastMap<QueueId, QueueState>,
    names: BTreeMap<String, QueueId>,
    consumers: FastMap<ConsumerId, Consumer>,
    leases: LeaseTable,
    dirty: Vec<QueueId>,
    next_seq: u64,
    next_queue_id: QueueId,
    next_consumer: ConsumerId,
    /// Memory held by read-ahead buffers (see [`buffered_size`]).
    buffered_bytes: usize,
    /// Past this many buffered bytes, lanes read one message at a time and
    /// keep nothing as it is stored, so many active keys cannot make
    /// buffers unbounded.
    buffer_budget: usize,
    throttles: Throttles,
    /// Keys waiting for a throttle refill: (wake-up, ticket) → (queue, key).
    parked: BTreeMap<(Instant, u64), (QueueId, Arc<str>)>,
    next_ticket: u64,
    /// Runtime configuration (`fila.get` in scripts), in key order.
    config: BTreeMap<String, String>,
    /// When the earliest delayed message is due (Unix ms), if any.
    next_due_ms: Option<u64>,
    script_limits: ScriptLimits,
    closing: bool,
    observer: Box<dyn Observer>,
    /// When the next metrics snapshot is due; `None` with metrics off.
    next_snapshot: Option<Instant>,
}

impl<S: Store> Scheduler<S> {
    /// Rebuilds state from storage. Every stored message is ready: leases do
    /// not survive a restart.
    pub fn recover(
        store: S,
        script_limits: ScriptLimits,
        buffer_budget: usize,
        observer: Box<dyn Observer>,
    ) -> Result<Self, BrokerError> {
        let recovered = store.recover()?;
        let mut scheduler = Scheduler {
            store,
            queues: FastMap::default(),
            names: BTreeMap::new(),
            consumers: FastMap::default(),
            leases: LeaseTable::new(),
            dirty: Vec::new(),
            next_seq: recovered.max_seq + 1,
            next_queue_id: recovered.next_queue_id,
            next_consumer: 1,
            buffered_bytes: 0,
            buffer_budget,
            throttles: Throttles::default(),
            parked: BTreeMap::new(),
            next_ticket: 1,
            config: recovered.config.iter().cloned().collect(),
            next_due_ms: recovered.next_due_ms,
            script_limits,
            closing: false,
            next_snapshot: observer.wants_snapshots().then(Instant::now),
            observer,
        };
        for def in recovered.queues {
            scheduler.names.insert(def.name.clone(), def.id);
            // Scripts were validated when submitted; one that no longer
            // compiles is logged and skipped rather than keeping the broker
            // down.
            let compiled = compile_scripts(&def.scripts, script_limits).unwrap_or_else(|error| {
                tracing::error!(queue = %def.name, %error, "a stored script does not compile; the queue runs without it");
                None
            });
            let mut state = QueueState::new(def);
            state.scripts = compiled;
            scheduler.queues.insert(state.def.id, state);
        }
        let mut messages = 0;
        // The newest weighted message of each key sets its weight.
        let mut latest_weights: HashMap<(QueueId, Arc<str>), (u64, u32)> = HashMap::new();
        for lane in recovered.lanes {
            match scheduler.queues.get_mut(&lane.queue) {
                Some(queue) => {
                    let key = Arc::clone(&queue.add_ready(&lane.lane, lane.pending, None).lane.fairness_key);
                    messages += lane.pending;
                    if let Some((seq, weight)) = lane.latest_weight {
                        let latest = latest_weights.entry((lane.queue, key)).or_insert((seq, weight));
                        if seq > latest.0 {
                            *latest = (seq, weight);
                        }
                    }
                }
                None => tracing::warn!(queue_id = lane.queue, "stored messages of an unknown queue are ignored"),
            }
        }
        for ((queue, key), (_, weight)) in latest_weights {
            if let Some(state) = scheduler.queues.get_mut(&queue).and_then(|q| q.keys.get_mut(&key)) {
                state.message_weight = weight;
            }
        }
        for (queue, count) in recovered.delayed {
            if let Some(q) = scheduler.queues.get_mut(&queue) {
                q.delayed = count;
            }
        }
        for (queue, key, weight) in recovered.weights {
            if let Some(q) = scheduler.queues.get_mut(&queue) {
                q.weight_overrides.insert(Arc::from(key), weight);
            }
        }
        let now = Instant::now();
        for (key, limit) in recovered.throttles {
            scheduler.throttles.set(&key, limit, now);
        }
        tracing::info!(queues = scheduler.queues.len(), messages, "recovered state from storage");
        Ok(scheduler)
    }

    /// Runs rounds until shutdown (Ok) or a storage failure (Err).
    pub fn run(mut self, inbox: Receiver<Command>) -> Result<(), BrokerError> {
        loop {
            let mut commands = Vec::new();
            match self.wait(&inbox) {
                Wake::Command(command) => commands.push(command),
                Wake::Deadline => {}
                // Every handle is gone: nobody can ask for anything any more.
                Wake::Orphaned => return self.store.flush().map_err(Into::into),
            }
            while commands.len() < MAX_COMMANDS_PER_ROUND {
                match inbox.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            match self.round(commands) {
                Ok(Some(reply)) => {
                    let flushed = self.store.flush();
                    // Close the database before answering: once answered,
                    // the process may exit, and RocksDB must not be
                    // mid-close then.
                    drop(self);
                    let _ = reply.send(flushed.clone().map_err(Into::into));
                    return flushed.map_err(Into::into);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, "storage failed; the broker stops serving (restart it to recover)");
                    self.close_all_streams(BrokerError::Stopped);
                    return Err(error.into());
                }
            }
        }
    }

    /// Waits for a command or the next lease deadline.
    ///
    /// With nothing waiting, the thread yields its core before it blocks.
    /// The gRPC worker that sent the last command woke this thread while
    /// holding the inbox's waker lock, and this thread, woken onto the same
    /// core, preempted it: blocking straight away would wait on that lock
    /// until the worker ran again, and then wake this thread once more,
    /// while the worker has the round's answers and deliveries to write.
    /// Yielding lets it write them first (light-load latency p99 about a
    /// quarter lower, docs/benchmarks.md). Under load commands are waiting
    /// and it does not yield.
    fn wait(&self, inbox: &Receiver<Command>) -> Wake {
        if let Ok(command) = inbox.try_recv() {
            return Wake::Command(command);
        }
        std::thread::yield_now();
        let next_unpark = self.parked.first_key_value().map(|(&(at, _), _)| at);
        let next_due = self.next_due_ms.map(|due| {
            let now_ms = unix_millis(SystemTime::now());
            Instant::now() + Duration::from_millis(due.saturating_sub(now_ms))
        });
        let next = [self.leases.next_deadline(), next_unpark, next_due, self.next_snapshot].into_iter().flatten().min();
        let received = match next {
            Some(deadline) => match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => return Wake::Deadline,
                other => other.ok(),
            },
            None => inbox.recv().ok(),
        };
        received.map_or(Wake::Orphaned, Wake::Command)
    }

    /// One round: expire, apply commands, commit once, answer, deliver.
    /// Returns the caller to answer when the broker was asked to shut down.
    fn round(&mut self, commands: Vec<Command>) -> Result<Option<Reply<Result<(), BrokerError>>>, StorageError> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut round = Round::default();
        self.expire_leases(now, &mut round);
        self.wake_parked(now);
        self.promote_due(wall, &mut round)?;
        let mut shutdown = None;
        for command in commands {
            match command {
                Command::Shutdown { reply } => shutdown = Some(reply),
                command => self.apply(command, now, wall, &mut round),
            }
        }
        if !round.changes.is_empty() {
            let started = Instant::now();
            let count = round.changes.len();
            if let Err(error) = self.store.commit(std::mem::take(&mut round.changes)) {
                round.finish(Some(&BrokerError::Storage(error.clone())));
                return Err(error);
            }
            self.observer.storage_commit(started.elapsed(), count);
        }
        for queue in std::mem::take(&mut round.reclaim) {
            self.store.reclaim_queue_space(queue);
        }
        round.finish(None);
        for queue in std::mem::take(&mut self.dirty) {
            self.dispatch(queue, now, wall)?;
        }
        if self.next_snapshot.is_some_and(|at| at <= now) {
            self.publish_snapshot(now);
            self.next_snapshot = Some(now + SNAPSHOT_INTERVAL);
        }
        if shutdown.is_some() {
            self.close_all_streams(BrokerError::ShuttingDown);
        }
        Ok(shutdown)
    }

    fn apply(&mut self, command: Command, now: Instant, wall: SystemTime, round: &mut Round) {
        match command {
            Command::Enqueue { items, reply } => {
                let results = items.into_iter().map(|item| self.enqueue(item?, round)).collect();
                round.answer(reply, results);
            }
            Command::Subscribe { queue, window, visibility_timeout, events, reply } => {
                let result = self.subscribe(&queue, window, visibility_timeout, events);
                round.answer(reply, result);
            }
            Command::Unsubscribe { consumer, events } => self.unsubscribe(consumer, events, now, round),
            Command::Ack { tokens, reply } => {
                let results = tokens.into_iter().map(|token| self.ack(token?, round)).collect();
                round.answer(reply, results);
            }
            Command::Nack { items, reply } => {
                let results = items
                    .into_iter()
                    .map(|item| {
                        let (token, error) = item?;
                        self.nack(&token, error, round)
                    })
                    .collect();
                round.answer(reply, results);
            }
            Command::Extend { items, reply } => {
                let results = items
                    .into_iter()
                    .map(|item| {
                        let (token, timeout) = item?;
                        self.extend(&token, timeout, now, wall)
                    })
                    .collect();
                round.answer(reply, results);
            }
            Command::CreateQueue { name, settings, scripts, reply } => {
                let result = self.create_queue(name, settings, scripts, round);
                round.answer(reply, result);
            }
            Command::DeleteQueue { name, reply } => {
                let result = self.delete_queue(&name, round);
                round.answer(reply, result);
            }
            Command::ListQueues { after, limit, reply } => {
                let page = self.list_queues(after, limit);
                round.answer(reply, page);
            }
            Command::SetThrottle { key, limit, reply } => {
                let info = self.set_throttle(key, limit, now, round);
                round.answer(reply, Ok(info));
            }
            Command::RemoveThrottle { key, reply } => {
                let result = self.remove_throttle(key, round);
                round.answer(reply, result);
            }
            Command::GetThrottle { key, reply } => {
                let result = self.get_throttle(key, now);
                round.answer(reply, result);
            }
            Command::ListThrottles { after, limit, reply } => {
                let page = self.list_throttles(after, limit, now);
                round.answer(reply, page);
            }
            Command::SetWeight { queue, key, weight, reply } => {
                let result = self.set_weight(&queue, key, weight, round);
                round.answer(reply, result);
            }
            Command::QueueStats { queue, max_keys, reply } => {
                let result = self.queue_stats(&queue, max_keys, now);
                round.answer(reply, result);
            }
            Command::SetConfig { key, value, reply } => {
                self.set_config(key, value, round);
                round.answer(reply, Ok(()));
            }
            Command::GetConfig { key, reply } => {
                let result = self.get_config(key);
                round.answer(reply, result);
            }
            Command::ListConfig { prefix, after, limit, reply } => {
                let page = self.list_config(&prefix, after, limit);
                round.answer(reply, page);
            }
            Command::DeleteConfig { key, reply } => {
                let result = self.delete_config(key, round);
                round.answer(reply, result);
            }
            Command::GetQueue { name, reply } => {
                let result = self.get_queue(&name);
                round.answer(reply, result);
            }
            Command::UpdateQueue { name, update, reply } => {
                let result = self.update_queue(&name, update, round);
                round.answer(reply, result);
            }
            Command::Peek { queue, fairness_key, limit, reply } => {
                let result = self.peek(&queue, fairness_key.as_deref(), limit);
                round.answer(reply, result);
            }
            Command::Explain { queue, subject, reply } => {
                let result = self.explain(&queue, &subject, now, wall);
                round.answer(reply, result);
            }
            Command::Purge { queue, limit, reply } => {
                let result = self.purge(&queue, limit, round);
                round.answer(reply, result);
            }
            Command::Redrive { queue, limit, reply } => {
                let result = self.redrive(&queue, limit, round);
                round.answer(reply, result);
            }
            Command::CloseStreams { reply } => {
                self.closing = true;
                self.close_all_streams(BrokerError::ShuttingDown);
                round.answer(reply, ());
            }
            Command::Shutdown { .. } => unreachable!("handled by round"),
        }
    }

    /// The dead-letter queue of `name`, if it has one (dead-letter queues
    /// have none).
    fn dead_letter_queue_of(&self, name: &QueueName) -> Option<QueueId> {
        if name.is_dead_letter() {
            return None;
        }
        self.names.get(name.dead_letter().as_str()).copied()
    }

    fn queue_id(&self, name: &QueueName) -> Result<QueueId, BrokerError> {
        self.names.get(name.as_str()).copied().ok_or_else(|| QueueError::NotFound(name.to_string()).into())
    }

    fn mark_dirty(dirty: &mut Vec<QueueId>, queue: QueueId) {
        if !dirty.contains(&queue) {
            dirty.push(queue);
        }
    }

    fn enqueue(&mut self, message: PreparedMessage, round: &mut Round) -> Result<MessageId, BrokerError> {
        let queue_id = self.queue_id(&message.queue)?;
        let max = self.queues[&queue_id].def.settings.max_payload_bytes;
        if max > 0 && message.payload_len as u64 > max {
            let queue = message.queue.to_string();
            return Err(ValidationError::PayloadTooLargeForQueue { queue, size: message.payload_len, max }.into());
        }
        let message = self.apply_on_enqueue(queue_id, message);
        if !message.delay.is_zero() {
            let due_ms = due_unix_millis(message.delay);
            self.put_delayed(queue_id, message.lane, message.id, message.weight, due_ms, message.record, round);
            round.changes.needs_sync = true;
            self.queues.get_mut(&queue_id).expect("named queues exist").counters.enqueued += 1;
            return Ok(message.id);
        }
        self.queues.get_mut(&queue_id).expect("named queues exist").counters.enqueued += 1;
        let weight = SentWeight::SetsKeyWeight(message.weight);
        self.store_ready(queue_id, message.lane, message.id, weight, message.record, round);
        round.changes.needs_sync = true;
        Ok(message.id)
    }

    /// Stores a message at the tail of its lane, ready now. When the lane's
    /// read-ahead buffer already holds all its other ready messages (a
    /// consumer is keeping up), the message joins the buffer too, so
    /// delivering it costs no read from storage; it is only delivered after
    /// this round's commit, like everything else.
    fn store_ready(
        &mut self,
        queue_id: QueueId,
        lane: Lane,
        id: MessageId,
        weight: SentWeight,
        record: Bytes,
        round: &mut Round,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (mut lane, mut slot) = (lane, LaneSlot::default());
        if let Some(queue) = self.queues.get_mut(&queue_id) {
            let key_weight = match weight {
                SentWeight::SetsKeyWeight(w) if w > 0 => Some(w),
                _ => None,
            };
            // The change carries the interned lane, which the store's lane
            // map compares by address (see `QueueState::add_ready`), and
            // the lane's handle in the store, so that it needs no lookup.
            let state = queue.add_ready(&lane, 1, key_weight);
            if state.slot == LaneSlot::default() {
                state.slot = self.store.lane_slot(queue_id, &state.lane);
            }
            (lane, slot) = (state.lane.clone(), state.slot);
            let message = StoredMessage { seq, id, record: record.clone() };
            let size = buffered_size(&message);
            if self.buffered_bytes + size <= self.buffer_budget && state.buffer_if_caught_up(message, READ_AHEAD) {
                self.buffered_bytes += size;
            }
            Self::mark_dirty(&mut self.dirty, queue_id);
        }
        let weight = match weight {
            SentWeight::SetsKeyWeight(w) | SentWeight::Kept(w) => w,
        };
        round.changes.push(Change::PutMessage { queue: queue_id, lane, slot, seq, id, weight, record });
    }

    fn subscribe(
        &mut self,
        queue: &QueueName,
        window: u32,
        visibility_timeout: Option<Duration>,
        events: UnboundedSender<ConsumerEvent>,
    ) -> Result<ConsumerId, BrokerError> {
        if self.closing {
            return Err(BrokerError::ShuttingDown);
        }
        let queue_id = self.queue_id(queue)?;
        let id = self.next_consumer;
        self.next_consumer += 1;
        self.consumers.insert(id, Consumer { queue: queue_id, window, in_flight: 0, visibility_timeout, events });
        let state = self.queues.get_mut(&queue_id).expect("named queues exist");
        state.consumers += 1;
        state.waiting_consumers.push_back(id);
        Self::mark_dirty(&mut self.dirty, queue_id);
        Ok(id)
    }

    fn unsubscribe(
        &mut self,
        consumer: ConsumerId,
        mut events: UnboundedReceiver<ConsumerEvent>,
        now: Instant,
        round: &mut Round,
    ) {
        if let Some(gone) = self.consumers.remove(&consumer) {
            if let Some(queue) = self.queues.get_mut(&gone.queue) {
                queue.consumers -= 1;
                queue.waiting_consumers.retain(|&c| c != consumer);
            }
        }
        // With the consumer's sender dropped above, nothing more arrives.
        let mut tokens_returned = false;
        while let Ok(event) = events.try_recv() {
            if let ConsumerEvent::Deliveries(deliveries) = event {
                for delivery in deliveries {
                    tokens_returned |= self.return_unsent(&delivery.token, now, round);
                }
            }
        }
        // Returned messages unpark their own keys; other keys parked on the
        // same throttle keys may have their tokens now too.
        if tokens_returned {
            self.wake_all_parked();
        }
    }

    fn close_all_streams(&mut self, reason: BrokerError) {
        for (_, consumer) in self.consumers.drain() {
            let _ = consumer.events.send(ConsumerEvent::Closed(reason.clone()));
        }
        for queue in self.queues.values_mut() {
            queue.consumers = 0;
            queue.waiting_consumers.clear();
        }
    }

    /// Classifies a token the lease table knows nothing about.
    fn unknown_token(&self, token: &LeaseToken) -> BrokerError {
        let id = token.message.to_string();
        if !self.queues.contains_key(&token.queue) {
            return LeaseError::MessageNotFound(id).into();
        }
        match self.store.contains_message(token.queue, token.message) {
            Ok(true) => LeaseError::Ended(id).into(),
            Ok(false) => LeaseError::MessageNotFound(id).into(),
            Err(error) => error.into(),
        }
    }

    /// Ends the live lease of `token` as `ending` and takes it, or says why
    /// there is none.
    fn take_lease(&mut self, token: &LeaseToken, ending: Ending) -> Result<Lease, BrokerError> {
        match self.leases.state_of(token) {
            TokenState::Current => Ok(self.leases.end(token.message, ending).expect("current lease exists")),
            TokenState::Superseded | TokenState::Failed | TokenState::AckedByThisToken => {
                Err(LeaseError::Ended(token.message.to_string()).into())
            }
            TokenState::Unknown => Err(self.unknown_token(token)),
        }
    }

    fn ack(&mut self, token: LeaseToken, round: &mut Round) -> Result<(), BrokerError> {
        let lease = match self.take_lease(&token, Ending::Acked) {
            Ok(lease) => lease,
            // A repeated ack of the same token succeeds.
            Err(_) if self.leases.state_of(&token) == TokenState::AckedByThisToken => return Ok(()),
            Err(error) => return Err(error),
        };
        self.end_lease_and_delete(&lease, round);
        if let Some(queue) = self.queues.get_mut(&token.queue) {
            queue.counters.acked += 1;
        }
        Ok(())
    }

    fn nack(&mut self, token: &LeaseToken, error: String, round: &mut Round) -> Result<(), BrokerError> {
        let lease = self.take_lease(token, Ending::Failed)?;
        if let Some(queue) = self.queues.get_mut(&token.queue) {
            queue.counters.nacked += 1;
        }
        self.retry(lease, error, round)
    }

    fn expire_leases(&mut self, now: Instant, round: &mut Round) {
        while let Some(lease) = self.leases.pop_expired(now) {
            let token = lease.token;
            if let Some(queue) = self.queues.get_mut(&token.queue) {
                queue.counters.expired += 1;
            }
            if let Err(error) = self.retry(lease, "lease expired (visibility timeout)".to_owned(), round) {
                tracing::error!(%error, message = %token.message, "could not return an expired message");
            }
        }
    }

    /// Bookkeeping when a lease ends for any reason.
    fn lease_ended(&mut self, lease: &Lease) {
        let Some(queue) = self.queues.get_mut(&lease.token.queue) else { return };
        queue.lease_ended(lease.key, &lease.lane);
        if let Some(consumer) = self.consumers.get_mut(&lease.consumer) {
            let was_full = !consumer.has_room();
            consumer.in_flight -= 1;
            if was_full {
                queue.waiting_consumers.push_back(lease.consumer);
            }
        }
        Self::mark_dirty(&mut self.dirty, lease.token.queue);
    }

    /// Ends a lease and deletes the leased copy of the message in this
    /// round's batch (the message itself may be stored again elsewhere).
    fn end_lease_and_delete(&mut self, lease: &Lease, round: &mut Round) {
        round.changes.push(Change::DeleteMessage {
            queue: lease.token.queue,
            lane: lease.lane.clone(),
            slot: lease.slot,
            seq: lease.seq,
            id: lease.token.message,
        });
        self.lease_ended(lease);
    }

    /// Makes a message leased to a stream that went away before sending it
    /// ready again, at the back of its lane like a retry but with no
    /// attempt counted, and gives back the throttle tokens it took (no
    /// downstream saw it). Skipped if its lease has ended meanwhile.
    /// Returns whether any token was given back.
    fn return_unsent(&mut self, token: &LeaseToken, now: Instant, round: &mut Round) -> bool {
        if self.leases.state_of(token) != TokenState::Current || !self.queues.contains_key(&token.queue) {
            return false;
        }
        let record = self.leases.get(token.message).expect("current lease exists").record.clone();
        let weight = match MessageRecord::decode_bytes(record) {
            Ok(record) => record.weight,
            Err(error) => {
                // Left leased: it comes back when the lease runs out.
                tracing::error!(%error, message = %token.message, "cannot return an unsent delivery");
                return false;
            }
        };
        let lease = self.leases.end(token.message, Ending::Failed).expect("current lease exists");
        self.end_lease_and_delete(&lease, round);
        if let Some(queue) = self.queues.get_mut(&token.queue) {
            queue.counters.returned += 1;
        }
        let tokens_returned = self.throttles.give_back(lease.lane.throttle.keys(), now);
        self.store_ready(token.queue, lease.lane, token.message, SentWeight::Kept(weight), lease.record, round);
        tokens_returned
    }

    fn extend(
        &mut self,
        token: &LeaseToken,
        timeout: Option<Duration>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<SystemTime, BrokerError> {
        match self.leases.state_of(token) {
            TokenState::Current => {
                let deadline = self.leases.extend(token, timeout, now).expect("current lease exists");
                Ok(wall + deadline.saturating_duration_since(now))
            }
            TokenState::Unknown => Err(self.unknown_token(token)),
            _ => Err(LeaseError::Ended(token.message.to_string()).into()),
        }
    }

    fn info(queue: &QueueState) -> QueueInfo {
        QueueInfo {
            name: queue.def.name.clone(),
            settings: queue.def.settings,
            depth: queue.depth(),
            in_flight: queue.in_flight,
            delayed: queue.delayed,
            consumers: queue.consumers,
        }
    }

    fn create_queue(
        &mut self,
        name: QueueName,
        settings: QueueSettings,
        scripts: ScriptSources,
        round: &mut Round,
    ) -> Result<QueueInfo, BrokerError> {
        if self.names.contains_key(name.as_str()) {
            return Err(QueueError::AlreadyExists(name.to_string()).into());
        }
        // Validated before anything is stored: a bad script creates nothing.
        let compiled = compile_scripts(&scripts, self.script_limits)?;
        let info = self.add_queue(&name, settings, scripts, compiled, round);
        if !name.is_dead_letter() {
            self.add_queue(&name.dead_letter(), QueueSettings::default(), ScriptSources::default(), None, round);
        }
        Ok(info)
    }

    fn add_queue(
        &mut self,
        name: &QueueName,
        settings: QueueSettings,
        scripts: ScriptSources,
        compiled: Option<QueueScripts>,
        round: &mut Round,
    ) -> QueueInfo {
        let id = self.next_queue_id;
        self.next_queue_id += 1;
        let def = QueueDef { id, name: name.to_string(), settings, scripts };
        round.changes.push(Change::PutQueue(def.clone()));
        round.changes.push(Change::SetNextQueueId(self.next_queue_id));
        round.changes.needs_sync = true;
        let mut state = QueueState::new(def);
        state.scripts = compiled;
        let info = Self::info(&state);
        self.names.insert(name.to_string(), id);
        self.queues.insert(id, state);
        info
    }

    /// Deletes a queue and its dead-letter queue; returns how many messages
    /// went with them.
    fn delete_queue(&mut self, name: &QueueName, round: &mut Round) -> Result<u64, BrokerError> {
        let mut deleted = self.remove_queue(name, round)?;
        if !name.is_dead_letter() {
            deleted += self.remove_queue(&name.dead_letter(), round).unwrap_or(0);
        }
        Ok(deleted)
    }

    fn remove_queue(&mut self, name: &QueueName, round: &mut Round) -> Result<u64, BrokerError> {
        let id = self.queue_id(name)?;
        self.names.remove(name.as_str());
        let queue = self.queues.remove(&id).expect("named queues exist");
        self.buffered_bytes -=
            queue.keys.values().flat_map(|k| &k.lanes).flat_map(|l| &l.buffer).map(buffered_size).sum::<usize>();
        self.leases.remove_queue(id);
        let closed: Vec<ConsumerId> =
            self.consumers.iter().filter(|(_, c)| c.queue == id).map(|(&cid, _)| cid).collect();
        for cid in closed {
            if let Some(consumer) = self.consumers.remove(&cid) {
                let _ = consumer.events.send(ConsumerEvent::Closed(QueueError::Deleted(name.to_string()).into()));
            }
        }
        round.changes.push(Change::DeleteQueue { id, name: name.to_string() });
        round.changes.needs_sync = true;
        round.reclaim.push(id);
        Ok(queue.depth())
    }

    fn list_queues(&self, after: Option<String>, limit: usize) -> QueuePage {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut queues: Vec<QueueInfo> = self
            .names
            .range::<String, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(_, id)| Self::info(&self.queues[id]))
            .collect();
        let more = queues.len() > limit;
        queues.truncate(limit);
        let next_after = if more { queues.last().map(|q| q.name.clone()) } else { None };
        QueuePage { queues, next_after }
    }
}

/// Why the scheduler woke up.
enum Wake {
    Command(Command),
    Deadline,
    Orphaned,
}

/// Compiles a queue's scripts; `None` when it has none.
fn compile_scripts(sources: &ScriptSources, limits: ScriptLimits) -> Result<Option<QueueScripts>, BrokerError> {
    if sources.on_enqueue.is_none() && sources.on_failure.is_none() {
        return Ok(None);
    }
    Ok(Some(QueueScripts::compile(sources.on_enqueue.as_deref(), sources.on_failure.as_deref(), limits)?))
}
