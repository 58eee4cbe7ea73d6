//! Size limits on what clients send, with their documented defaults.

use super::error::ValidationError;

pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_BATCH: usize = 1000;
pub const MAX_HEADERS_BYTES: usize = 64 * 1024;
pub const MAX_FAIRNESS_KEY_BYTES: usize = 256;
pub const MAX_THROTTLE_KEYS: usize = 16;
pub const MAX_THROTTLE_KEY_BYTES: usize = 256;
pub const MAX_WEIGHT: u32 = 1_000_000;
pub const MAX_NACK_ERROR_BYTES: usize = 4096;
/// Longest delay of a delayed enqueue or retry: 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Limits the operator may configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES, max_batch: DEFAULT_MAX_BATCH }
    }
}

impl Limits {
    /// Checks the size of a batch of `size` items.
    pub fn check_batch(&self, size: usize) -> Result<(), ValidationError> {
        if size == 0 {
            return Err(ValidationError::EmptyBatch);
        }
        if size > self.max_batch {
            return Err(ValidationError::BatchTooLarge { size, max: self.max_batch });
        }
        Ok(())
    }
}
