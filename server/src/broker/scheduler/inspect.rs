//! Read-only views of live state for operators: one queue, peek, explain;
//! and runtime changes of queue settings.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Round, Scheduler};
use crate::broker::queue_state::{KeyState, QueueState};
use crate::broker::throttle::Throttles;
use crate::broker::{
    ExplainState, ExplainSubject, Explanation, PeekedMessage, QueueInfo, QueueScriptsInfo, SettingsUpdate,
};
use crate::domain::{BrokerError, MessageId, QueueId, QueueName};
use crate::scripting::ScriptHook;
use crate::storage::{Change, Store, StoredMessage};

/// Messages counted at most when telling how far back a message is.
const MAX_AHEAD_COUNTED: u64 = 1_000_000;

impl<S: Store> Scheduler<S> {
    pub(super) fn get_queue(&self, name: &QueueName) -> Result<(QueueInfo, QueueScriptsInfo), BrokerError> {
        let queue = &self.queues[&self.queue_id(name)?];
        let stats = |hook| queue.scripts.as_ref().and_then(|s| s.stats(hook));
        let scripts = QueueScriptsInfo {
            sources: queue.def.scripts.clone(),
            on_enqueue: stats(ScriptHook::OnEnqueue),
            on_failure: stats(ScriptHook::OnFailure),
        };
        Ok((Self::info(queue), scripts))
    }

    /// Applies a settings update. New scripts are compiled first, so a bad
    /// script changes nothing; they apply to the next message.
    pub(super) fn update_queue(
        &mut self,
        name: &QueueName,
        update: SettingsUpdate,
        round: &mut Round,
    ) -> Result<QueueInfo, BrokerError> {
        let id = self.queue_id(name)?;
        let script_limits = self.script_limits;
        let queue = self.queues.get_mut(&id).expect("named queues exist");
        if update.on_enqueue.is_some() || update.on_failure.is_some() {
            let mut sources = queue.def.scripts.clone();
            if let Some(source) = update.on_enqueue {
                sources.on_enqueue = source;
            }
            if let Some(source) = update.on_failure {
                sources.on_failure = source;
            }
            queue.scripts = super::compile_scripts(&sources, script_limits)?;
            queue.def.scripts = sources;
        }
        let settings = &mut queue.def.settings;
        if let Some(timeout) = update.visibility_timeout {
            settings.visibility_timeout = timeout;
        }
        if let Some(quantum) = update.quantum {
            settings.quantum = quantum;
            queue.drr.set_quantum(quantum);
        }
        if let Some(max_attempts) = update.max_attempts {
            settings.max_attempts = max_attempts;
        }
        if let Some(max_payload_bytes) = update.max_payload_bytes {
            settings.max_payload_bytes = max_payload_bytes;
        }
        round.changes.push(Change::PutQueue(queue.def.clone()));
        round.changes.needs_sync = true;
        Ok(Self::info(queue))
    }

    /// Ready messages in delivery order within each key; keys in rotation
    /// order, then keys waiting for a throttle.
    pub(super) fn peek(
        &self,
        name: &QueueName,
        fairness_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PeekedMessage>, BrokerError> {
        let id = self.queue_id(name)?;
        let queue = &self.queues[&id];
        let keys: Vec<&Arc<str>> = match fairness_key {
            Some(key) => queue.keys.get_key_value(key).map(|(k, _)| k).into_iter().collect(),
            None => {
                let rotation = queue.drr.iter().filter_map(|&id| queue.keys.by_id(id)).map(|(k, _)| k);
                rotation.chain(queue.keys.iter().filter(|(_, _, s)| s.parked.is_some()).map(|(_, k, _)| k)).collect()
            }
        };
        let mut out = Vec::new();
        for key in keys {
            let want = limit - out.len();
            if want == 0 {
                break;
            }
            let mut messages: Vec<StoredMessage> = Vec::new();
            for lane in queue.keys[key].lanes.iter().filter(|l| l.pending > 0) {
                let start = lane.ready_after();
                self.store.read_ready(id, &lane.lane, start, want, &mut messages)?;
            }
            messages.sort_by_key(|m| m.seq);
            messages.truncate(want);
            out.extend(
                messages.into_iter().map(|m| PeekedMessage { queue: Arc::clone(&queue.name), record: m.record }),
            );
        }
        Ok(out)
    }

    pub(super) fn explain(
        &mut self,
        name: &QueueName,
        subject: &ExplainSubject,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Explanation, BrokerError> {
        let id = self.queue_id(name)?;
        match subject {
            ExplainSubject::FairnessKey(key) => Ok(self.explain_key(id, key, now)),
            ExplainSubject::Message(message) => self.explain_message(name, id, *message, now, wall),
        }
    }

    fn explain_key(&mut self, queue_id: QueueId, key: &str, now: Instant) -> Explanation {
        let Scheduler { queues, throttles, .. } = self;
        let queue = &queues[&queue_id];
        let Some(state) = queue.keys.get(key).filter(|s| s.pending > 0) else {
            let leased = queue.keys.get(key).map_or(0, |s| s.leased);
            let reason =
                format!("fairness key '{key}' has no ready messages in queue '{}' ({leased} leased)", queue.name);
            return Explanation::new(ExplainState::NotFound, reason);
        };
        let mut explanation = key_state(queue, key, state, throttles, now);
        explanation.pending = state.pending;
        explanation
    }

    fn explain_message(
        &mut self,
        name: &QueueName,
        queue_id: QueueId,
        message: MessageId,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Explanation, BrokerError> {
        if let Some(lease) = self.leases.get(message).filter(|l| l.token.queue == queue_id) {
            let until = wall + lease.deadline.saturating_duration_since(now);
            let mut e = Explanation::new(
                ExplainState::Leased,
                format!("message {message} is leased to a consumer until {}", humantime_utc(until)),
            );
            e.until = Some(until);
            return Ok(e);
        }
        let Some(entry) = self.store.locate(queue_id, message)? else {
            let dead =
                self.dead_letter_queue_of(name).map(|dlq| self.store.locate(dlq, message)).transpose()?.flatten();
            return Ok(match dead {
                Some(_) => Explanation::new(
                    ExplainState::DeadLettered,
                    format!("message {message} was dead-lettered to '{}'", name.dead_letter()),
                ),
                None => Explanation::new(
                    ExplainState::NotFound,
                    format!("message {message} is not in queue '{name}' (acknowledged, or never there)"),
                ),
            });
        };
        if let Some(due_ms) = entry.due_ms {
            let until = SystemTime::UNIX_EPOCH + Duration::from_millis(due_ms);
            let mut e = Explanation::new(
                ExplainState::Delayed,
                format!("message {message} is delayed until {}", humantime_utc(until)),
            );
            e.until = Some(until);
            return Ok(e);
        }
        let queue = &self.queues[&queue_id];
        let key = &*entry.lane.fairness_key;
        let Some(state) = queue.keys.get(key) else {
            return Ok(Explanation::new(ExplainState::NotFound, format!("message {message} is not ready")));
        };
        let mut ahead = 0;
        for lane in state.lanes.iter().filter(|l| l.pending > 0) {
            let start = lane.ready_after();
            ahead += self.store.count_between(queue_id, &lane.lane, start, entry.seq, MAX_AHEAD_COUNTED)?;
        }
        let mut explanation = key_state(queue, key, state, &mut self.throttles, now);
        explanation.pending = state.pending;
        explanation.ahead = ahead;
        if ahead > 0 && explanation.state == ExplainState::Deliverable {
            explanation.state = ExplainState::BehindInKey;
            explanation.reason = format!(
                "message {message} is behind {ahead} ready messages of fairness key '{key}'; {}",
                explanation.reason
            );
        }
        Ok(explanation)
    }
}

/// The state of a key with ready messages.
fn key_state(queue: &QueueState, key: &str, state: &KeyState, throttles: &mut Throttles, now: Instant) -> Explanation {
    if state.parked.is_some() {
        // Every ready lane waits for a token; name the bucket that frees first.
        let blocking = state
            .lanes
            .iter()
            .filter(|l| l.pending > 0)
            .filter_map(|l| {
                l.lane
                    .throttle
                    .keys()
                    .iter()
                    .filter_map(|t| throttles.get_mut(t).map(|b| (t.to_string(), b.tokens(now), b.time_to_token(now))))
                    .max_by_key(|(_, _, wait)| *wait)
            })
            .min_by_key(|(_, _, wait)| *wait);
        if let Some((throttle_key, tokens, wait)) = blocking {
            let mut e = Explanation::new(
                ExplainState::Throttled,
                format!(
                    "fairness key '{key}' is waiting on throttle key '{throttle_key}' (tokens {tokens:.2}, next token in {} ms)",
                    wait.as_millis()
                ),
            );
            e.throttle_key = Some(throttle_key);
            e.tokens = tokens;
            e.next_token_in = wait;
            return e;
        }
    }
    if queue.consumers == 0 {
        return Explanation::new(
            ExplainState::NoConsumer,
            format!(
                "{} messages of fairness key '{key}' are ready but no consumer is connected to queue '{}'",
                state.pending, queue.name
            ),
        );
    }
    if queue.waiting_consumers.is_empty() {
        return Explanation::new(
            ExplainState::ConsumersBusy,
            format!(
                "messages of fairness key '{key}' are ready but all {} consumers' windows are full",
                queue.consumers
            ),
        );
    }
    let id = queue.keys.id_of(key);
    let position = queue.drr.iter().position(|k| Some(*k) == id).map_or(0, |p| p + 1);
    Explanation::new(
        ExplainState::Deliverable,
        format!("fairness key '{key}' is deliverable now (turn {position} of {} active keys)", queue.drr.len()),
    )
}

/// An RFC 3339 UTC time with milliseconds, for messages to people.
fn humantime_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
