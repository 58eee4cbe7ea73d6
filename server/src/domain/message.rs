//! Messages: what producers send, how the broker stores them, and their ids.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use uuid::Uuid;

use super::error::ValidationError;
use super::limits::{
    Limits, MAX_DELAY_MS, MAX_FAIRNESS_KEY_BYTES, MAX_HEADERS_BYTES, MAX_THROTTLE_KEYS, MAX_THROTTLE_KEY_BYTES,
    MAX_WEIGHT,
};

/// Fairness key of messages whose producer (or script) set none.
pub const DEFAULT_FAIRNESS_KEY: &str = "default";

/// Broker-assigned message id: a time-ordered UUID (v7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u128);

impl MessageId {
    pub fn generate() -> Self {
        MessageId(Uuid::now_v7().as_u128())
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(MessageId(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Uuid::from_u128(self.0).hyphenated().fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(MessageId(Uuid::parse_str(s)?.as_u128()))
    }
}

/// A message as a producer submits it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewMessage {
    pub queue: String,
    pub headers: HashMap<String, String>,
    pub payload: Bytes,
    /// Empty means [`DEFAULT_FAIRNESS_KEY`].
    pub fairness_key: String,
    /// 0 means "not set": the key keeps its weight (1 for a new key).
    pub weight: u32,
    pub throttle_keys: Vec<String>,
    /// Milliseconds before the message may be delivered; 0 = at once.
    pub delay_ms: u64,
}

impl NewMessage {
    /// Checks everything that can be checked without broker state, and fills
    /// in defaults.
    pub fn validate(mut self, limits: &Limits) -> Result<Self, ValidationError> {
        if self.payload.is_empty() {
            return Err(ValidationError::EmptyPayload);
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(ValidationError::PayloadTooLarge { size: self.payload.len(), max: limits.max_payload_bytes });
        }
        if self.headers.keys().any(String::is_empty) {
            return Err(ValidationError::EmptyHeaderName);
        }
        let header_bytes: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > MAX_HEADERS_BYTES {
            return Err(ValidationError::HeadersTooLarge { size: header_bytes, max: MAX_HEADERS_BYTES });
        }
        if self.fairness_key.len() > MAX_FAIRNESS_KEY_BYTES {
            return Err(ValidationError::FairnessKeyTooLong {
                len: self.fairness_key.len(),
                max: MAX_FAIRNESS_KEY_BYTES,
            });
        }
        if self.fairness_key.is_empty() {
            self.fairness_key = DEFAULT_FAIRNESS_KEY.to_owned();
        }
        if self.weight > MAX_WEIGHT {
            return Err(ValidationError::WeightOutOfRange { weight: self.weight, max: MAX_WEIGHT });
        }
        if self.throttle_keys.len() > MAX_THROTTLE_KEYS {
            return Err(ValidationError::TooManyThrottleKeys {
                count: self.throttle_keys.len(),
                max: MAX_THROTTLE_KEYS,
            });
        }
        if self.throttle_keys.iter().any(|k| k.is_empty() || k.len() > MAX_THROTTLE_KEY_BYTES) {
            return Err(ValidationError::BadThrottleKey { max: MAX_THROTTLE_KEY_BYTES });
        }
        if self.delay_ms > MAX_DELAY_MS {
            return Err(ValidationError::DelayOutOfRange { value: self.delay_ms, max: MAX_DELAY_MS });
        }
        Ok(self)
    }

    /// The stored form of this (validated) message.
    pub fn into_record(self, id: MessageId, enqueued_at: SystemTime) -> MessageRecord {
        let ready_at = enqueued_at + std::time::Duration::from_millis(self.delay_ms);
        MessageRecord {
            id: id.to_bytes().to_vec(),
            headers: self.headers,
            payload: self.payload,
            fairness_key: self.fairness_key,
            weight: self.weight,
            throttle_keys: self.throttle_keys,
            enqueued_at_ms: unix_millis(enqueued_at),
            failures: 0,
            last_error: String::new(),
            ready_at_us: unix_micros(ready_at),
        }
    }
}

/// The persisted form of a message (the value in storage). Protobuf-encoded,
/// so fields can be added compatibly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(map = "string, string", tag = "2")]
    pub headers: HashMap<String, String>,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    #[prost(string, tag = "4")]
    pub fairness_key: String,
    #[prost(uint32, tag = "5")]
    pub weight: u32,
    #[prost(string, repeated, tag = "6")]
    pub throttle_keys: Vec<String>,
    #[prost(uint64, tag = "7")]
    pub enqueued_at_ms: u64,
    /// Failed delivery attempts so far (nacks and expired leases).
    #[prost(uint32, tag = "8")]
    pub failures: u32,
    /// Error text of the latest nack.
    #[prost(string, tag = "9")]
    pub last_error: String,
    /// When the message (last) became ready for delivery, in Unix
    /// microseconds: its enqueue, the end of its delay or of a retry backoff,
    /// a redrive. Delivery latency is measured from here. 0 in records
    /// stored before the field existed.
    #[prost(uint64, tag = "10")]
    pub ready_at_us: u64,
}

impl MessageRecord {
    pub fn encode_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    pub fn decode_bytes(bytes: Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }

    pub fn message_id(&self) -> Option<MessageId> {
        MessageId::from_slice(&self.id)
    }

    /// Records that the message becomes ready `after` from now.
    pub fn ready_after(&mut self, after: std::time::Duration) {
        self.ready_at_us = unix_micros(SystemTime::now() + after);
    }

    /// When the message became ready; records from before the field existed
    /// fall back to their enqueue time.
    pub fn ready_at(&self) -> SystemTime {
        match self.ready_at_us {
            0 => UNIX_EPOCH + std::time::Duration::from_millis(self.enqueued_at_ms),
            us => UNIX_EPOCH + std::time::Duration::from_micros(us),
        }
    }
}

pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// When something `delay` from now is due, in Unix milliseconds rounded up,
/// so it never comes due early.
pub fn due_unix_millis(delay: std::time::Duration) -> u64 {
    let due = SystemTime::now() + delay;
    due.duration_since(UNIX_EPOCH).map(|d| d.as_micros().div_ceil(1000) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &'static [u8]) -> NewMessage {
        NewMessage { queue: "q".into(), payload: Bytes::from_static(payload), ..Default::default() }
    }

    #[test]
    fn fills_defaults() {
        let m = msg(b"x").validate(&Limits::default()).unwrap();
        assert_eq!(m.fairness_key, DEFAULT_FAIRNESS_KEY);
        assert_eq!(m.weight, 0, "unset weight stays unset: the key keeps its weight");
    }

    #[test]
    fn rejects_bad_messages() {
        let limits = Limits { max_payload_bytes: 4, max_batch: 10 };
        assert_eq!(msg(b"").validate(&limits), Err(ValidationError::EmptyPayload));
        assert!(matches!(msg(b"12345").validate(&limits), Err(ValidationError::PayloadTooLarge { size: 5, max: 4 })));
        let mut m = msg(b"x");
        m.weight = MAX_WEIGHT + 1;
        assert!(matches!(m.validate(&limits), Err(ValidationError::WeightOutOfRange { .. })));
        let mut m = msg(b"x");
        m.throttle_keys = vec![String::new()];
        assert!(matches!(m.validate(&limits), Err(ValidationError::BadThrottleKey { .. })));
        let mut m = msg(b"x");
        m.headers.insert(String::new(), "v".into());
        assert_eq!(m.validate(&limits), Err(ValidationError::EmptyHeaderName));
        let mut m = msg(b"x");
        m.fairness_key = "k".repeat(MAX_FAIRNESS_KEY_BYTES + 1);
        assert!(matches!(m.validate(&limits), Err(ValidationError::FairnessKeyTooLong { .. })));
    }

    #[test]
    fn record_round_trips() {
        let id = MessageId::generate();
        let mut m = msg(b"hello").validate(&Limits::default()).unwrap();
        m.headers.insert("h".into(), "v".into());
        let rec = m.into_record(id, SystemTime::now());
        let back = MessageRecord::decode_bytes(rec.encode_bytes()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.message_id(), Some(id));
    }

    #[test]
    fn message_ids_print_and_parse() {
        let id = MessageId::generate();
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert!(MessageId::generate() > id, "v7 ids are time-ordered");
    }
}
