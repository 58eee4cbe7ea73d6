//! Queue names and settings.

use std::fmt;
use std::time::Duration;

use super::error::ValidationError;

/// Storage-internal queue number, never reused, so data of a deleted queue
/// can never surface in a new queue of the same name.
pub type QueueId = u64;

pub const MAX_QUEUE_NAME_LEN: usize = 128;
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest lease or visibility timeout accepted: 12 hours.
pub const MAX_VISIBILITY_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
/// Default DRR quantum: deliveries per unit of weight in one turn of a key.
pub const DEFAULT_QUANTUM: u32 = 1;
pub const MAX_QUANTUM: u32 = 10_000;
/// Failed attempts after which the default failure policy dead-letters a
/// message.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
pub const MAX_MAX_ATTEMPTS: u32 = 1000;
const DLQ_SUFFIX: &str = ".dlq";

/// A validated queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// Validates a name for an existing queue (any well-formed name).
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        if name.is_empty() {
            return Err(ValidationError::EmptyQueueName);
        }
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok || name.len() > MAX_QUEUE_NAME_LEN {
            return Err(ValidationError::BadQueueName { name: name.to_owned() });
        }
        Ok(QueueName(name.to_owned()))
    }

    /// Validates a name for a queue a user creates: dead-letter names are
    /// reserved.
    pub fn parse_for_create(name: &str) -> Result<Self, ValidationError> {
        let parsed = Self::parse(name)?;
        if name.ends_with(DLQ_SUFFIX) {
            return Err(ValidationError::ReservedQueueName { name: name.to_owned() });
        }
        Ok(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this queue's dead-letter queue.
    pub fn dead_letter(&self) -> QueueName {
        QueueName(format!("{}{DLQ_SUFFIX}", self.0))
    }

    /// Whether this is a dead-letter queue.
    pub fn is_dead_letter(&self) -> bool {
        self.0.ends_with(DLQ_SUFFIX)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-queue settings with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub visibility_timeout: Duration,
    /// Deliveries a fairness key of weight 1 gets per turn (DRR quantum); a
    /// key of weight w gets `quantum × w`.
    pub quantum: u32,
    /// Failed attempts after which the default failure policy moves a
    /// message to the dead-letter queue.
    pub max_attempts: u32,
    /// Largest payload this queue accepts, in bytes; 0 = the server's
    /// maximum (`--max-payload-bytes`), which also caps this.
    pub max_payload_bytes: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            quantum: DEFAULT_QUANTUM,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_payload_bytes: 0,
        }
    }
}

/// The Lua sources of a queue's hooks, as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptSources {
    pub on_enqueue: Option<String>,
    pub on_failure: Option<String>,
}

/// Checks a wire max_attempts (0 = the default).
pub fn max_attempts_from_wire(value: u32) -> Result<u32, ValidationError> {
    match value {
        0 => Ok(DEFAULT_MAX_ATTEMPTS),
        1..=MAX_MAX_ATTEMPTS => Ok(value),
        _ => Err(ValidationError::MaxAttemptsOutOfRange { value, max: MAX_MAX_ATTEMPTS }),
    }
}

/// Checks a wire quantum (0 = the default).
pub fn quantum_from_wire(value: u32) -> Result<u32, ValidationError> {
    match value {
        0 => Ok(DEFAULT_QUANTUM),
        1..=MAX_QUANTUM => Ok(value),
        _ => Err(ValidationError::QuantumOutOfRange { value, max: MAX_QUANTUM }),
    }
}

/// Turns a wire duration in milliseconds (0 = use `default`) into a checked
/// `Duration`.
pub fn visibility_timeout_from_ms(what: &'static str, ms: u64, default: Duration) -> Result<Duration, ValidationError> {
    match ms {
        0 => Ok(default),
        1..=MAX_VISIBILITY_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
        _ => Err(ValidationError::DurationOutOfRange { what, value: ms, max: MAX_VISIBILITY_TIMEOUT_MS }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["orders", "a", "Orders-2.eu_west", &"x".repeat(128)] {
            assert!(QueueName::parse_for_create(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(QueueName::parse(""), Err(ValidationError::EmptyQueueName));
        for name in [".hidden", "-x", "has space", "slash/y", "ünï", &"x".repeat(129)] {
            assert!(matches!(QueueName::parse(name), Err(ValidationError::BadQueueName { .. })), "{name}");
        }
    }

    #[test]
    fn reserves_dead_letter_names_for_creation_only() {
        assert!(QueueName::parse("orders.dlq").is_ok());
        assert!(matches!(QueueName::parse_for_create("orders.dlq"), Err(ValidationError::ReservedQueueName { .. })));
    }

    #[test]
    fn visibility_timeout_bounds() {
        let d = Duration::from_secs(7);
        assert_eq!(visibility_timeout_from_ms("t", 0, d), Ok(d));
        assert_eq!(visibility_timeout_from_ms("t", 5, d), Ok(Duration::from_millis(5)));
        assert!(visibility_timeout_from_ms("t", MAX_VISIBILITY_TIMEOUT_MS + 1, d).is_err());
    }
}
