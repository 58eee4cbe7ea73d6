//! Conversions between broker types and wire types.

use std::time::{SystemTime, UNIX_EPOCH};

use fila_proto::v1 as pb;
use prost_types::Timestamp;

use crate::broker::{Delivery, QueueInfo, QueueStats, ThrottleInfo};
use crate::domain::message::MessageRecord;
use crate::domain::{BrokerError, MessageId, NewMessage, StorageError};

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

/// Decodes a stored record into the wire delivery (on a transport thread,
/// not the scheduler's).
pub fn delivery(d: Delivery) -> Result<pb::Delivery, BrokerError> {
    let record = MessageRecord::decode_bytes(d.record)
        .map_err(|e| StorageError::Corrupt(format!("message {}: {e}", d.token.message)))?;
    let id = record.message_id().unwrap_or(d.token.message);
    Ok(pb::Delivery {
        message: Some(pb::Message {
            id: MessageId::to_string(&id),
            queue: d.queue.to_string(),
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
                leased_at: Some(timestamp(d.leased_at)),
            }),
        }),
        lease_token: d.token.to_string(),
        lease_deadline: Some(timestamp(d.deadline)),
    })
}

pub fn queue_info(q: QueueInfo) -> pb::QueueInfo {
    pb::QueueInfo {
        name: q.name,
        settings: Some(pb::QueueSettings {
            visibility_timeout_ms: q.settings.visibility_timeout.as_millis() as u64,
            quantum: q.settings.quantum,
            max_attempts: q.settings.max_attempts,
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
            })
            .collect(),
    }
}
