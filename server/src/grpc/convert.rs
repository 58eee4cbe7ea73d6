//! Conversions between broker types and wire types.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fila_proto::v1 as pb;
use prost_types::Timestamp;

use super::status::to_item_error;
use crate::broker::{Delivery, ExplainState, Explanation, QueueInfo, QueueStats, ScriptTestOutcome, ThrottleInfo};
use crate::domain::message::MessageRecord;
use crate::domain::{BrokerError, NewMessage, StorageError};
use crate::domain::{ScriptError, ScriptSources};
use crate::scripting::{BreakerState, FailureDecision, HookStats};

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn timestamp_from_millis(ms: u64) -> Timestamp {
    Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub fn new_message(m: pb::EnqueueMessage) -> NewMessage {
    NewMessage {
        queue: m.queue,
        headers: m.headers,
        payload: m.payload,
        fairness_key: m.fairness_key,
        weight: m.weight,
        throttle_keys: m.throttle_keys,
        delay_ms: m.delay_ms,
    }
}

/// Decodes a stored record (on a transport thread, not the scheduler's).
pub fn record(bytes: Bytes) -> Result<MessageRecord, BrokerError> {
    MessageRecord::decode_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("message record: {e}")).into())
}

/// Decodes a stored record into the wire message.
pub fn message(queue: &str, record: Bytes, leased_at: Option<SystemTime>) -> Result<pb::Message, BrokerError> {
    Ok(message_of(queue, self::record(record)?, leased_at))
}

fn message_of(queue: &str, record: MessageRecord, leased_at: Option<SystemTime>) -> pb::Message {
    let id = record.message_id().map(|id| id.to_string()).unwrap_or_default();
    pb::Message {
        id,
        queue: queue.to_owned(),
        headers: record.headers,
        payload: record.payload,
        metadata: Some(pb::MessageMetadata {
            fairness_key: record.fairness_key,
            weight: record.weight.max(1),
            throttle_keys: record.throttle_keys,
            attempt_count: record.failures + 1,
            last_error: record.last_error,
        }),
        timestamps: Some(pb::MessageTimestamps {
            enqueued_at: Some(timestamp_from_millis(record.enqueued_at_ms)),
            leased_at: leased_at.map(timestamp),
        }),
    }
}

/// A delivery on the wire, from its already decoded record.
pub fn delivery(d: &Delivery, record: MessageRecord) -> pb::Delivery {
    pb::Delivery {
        message: Some(message_of(&d.queue, record, Some(d.leased_at))),
        lease_token: d.token.to_string(),
        lease_deadline: Some(timestamp(d.deadline)),
    }
}

pub fn explanation(e: Explanation) -> pb::ExplainResponse {
    let state = match e.state {
        ExplainState::Deliverable => pb::ExplainState::Deliverable,
        ExplainState::NoConsumer => pb::ExplainState::NoConsumer,
        ExplainState::ConsumersBusy => pb::ExplainState::ConsumersBusy,
        ExplainState::Throttled => pb::ExplainState::Throttled,
        ExplainState::BehindInKey => pb::ExplainState::BehindInKey,
        ExplainState::Leased => pb::ExplainState::Leased,
        ExplainState::Delayed => pb::ExplainState::Delayed,
        ExplainState::DeadLettered => pb::ExplainState::DeadLettered,
        ExplainState::NotFound => pb::ExplainState::NotFound,
    };
    pb::ExplainResponse {
        state: state as i32,
        reason: e.reason,
        throttle_key: e.throttle_key.unwrap_or_default(),
        tokens: e.tokens,
        next_token_in_ms: e.next_token_in.as_millis() as u64,
        ahead: e.ahead,
        until: e.until.map(timestamp),
        pending: e.pending,
    }
}

pub fn queue_info(q: QueueInfo) -> pb::QueueInfo {
    pb::QueueInfo {
        name: q.name,
        settings: Some(pb::QueueSettings {
            visibility_timeout_ms: q.settings.visibility_timeout.as_millis() as u64,
            quantum: q.settings.quantum,
            max_attempts: q.settings.max_attempts,
            max_payload_bytes: q.settings.max_payload_bytes,
        }),
        depth: q.depth,
        in_flight: q.in_flight,
        consumers: q.consumers,
        delayed: q.delayed,
    }
}

pub fn throttle_info(t: ThrottleInfo) -> pb::ThrottleInfo {
    pb::ThrottleInfo {
        throttle_key: t.key,
        rate_per_second: t.limit.rate_per_second,
        burst: t.limit.burst,
        tokens: t.tokens,
        blocked_count: t.blocked,
    }
}

pub fn queue_stats(s: QueueStats) -> pb::GetQueueStatsResponse {
    pb::GetQueueStatsResponse {
        queue: Some(queue_info(s.info)),
        active_keys: s.active_keys,
        tracked_keys: s.tracked_keys,
        dead_lettered: s.dead_lettered,
        keys: s
            .keys
            .into_iter()
            .map(|k| pb::FairnessKeyStats {
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

pub fn script_sources(s: pb::QueueScripts) -> ScriptSources {
    ScriptSources {
        on_enqueue: Some(s.on_enqueue).filter(|s| !s.is_empty()),
        on_failure: Some(s.on_failure).filter(|s| !s.is_empty()),
    }
}

pub fn hook_stats(s: HookStats) -> pb::HookStats {
    pb::HookStats {
        calls: s.calls,
        errors: s.errors,
        bad_returns: s.bad_returns,
        timeouts: s.timeouts,
        memory_errors: s.memory_errors,
        skipped: s.skipped,
        consecutive_failures: s.consecutive_failures,
        breaker: match s.breaker {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
        .to_owned(),
    }
}

pub fn script_test_outcome(outcome: Result<ScriptTestOutcome, ScriptError>) -> pb::test_script_response::Outcome {
    use pb::test_script_response::Outcome;
    match outcome {
        Ok(ScriptTestOutcome::Enqueue(d)) => Outcome::Enqueue(pb::EnqueueDecision {
            fairness_key: d.fairness_key,
            weight: d.weight,
            throttle_keys_set: d.throttle_keys.is_some(),
            throttle_keys: d.throttle_keys.unwrap_or_default(),
        }),
        Ok(ScriptTestOutcome::Failure(decision)) => Outcome::Failure(match decision {
            Some(FailureDecision::Retry { delay }) => {
                pb::FailureDecision { action: "retry".into(), delay_ms: delay.as_millis() as u64 }
            }
            Some(FailureDecision::DeadLetter) => pb::FailureDecision { action: "dlq".into(), delay_ms: 0 },
            None => pb::FailureDecision { action: "default".into(), delay_ms: 0 },
        }),
        Err(error) => Outcome::Error(to_item_error(&error.into())),
    }
}
