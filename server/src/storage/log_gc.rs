//! Dropping dead entries of the message log.
//!
//! Nothing is deleted from the log message by message: a deletion is a
//! write of its own, and one per acknowledgement cost more than the
//! message's put. An entry whose sequence is below the lowest open sequence
//! of every lane (the *horizon*) is dead, acknowledged or sealed into its
//! lane's chunk (see `lane_index.rs`), and compactions of `message_log`
//! drop it.
//!
//! The horizon only rises: the store raises it at every checkpoint, every
//! [`HORIZON_EVERY_BYTES`] of log between them, and at recovery; until then
//! it is 0 and compactions keep everything. When it rises during a run the
//! store also range-deletes the entries below it, so that a flush of the
//! log's memtable leaves them out instead of writing them to a table. A lane
//! whose oldest open message is more than [`MAX_OPEN_AGE`] sequences old is
//! sealed at a checkpoint, so a lane that is seldom written cannot hold the
//! horizon back, and the log holds at most that many dead entries beyond
//! what its compactions have not reached yet.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

/// How far behind the newest sequence a lane's oldest open message may be
/// before a checkpoint seals it.
pub const MAX_OPEN_AGE: u64 = 4_000_000;

/// Bytes put to the log between two raises of the horizon outside
/// checkpoints: an eighth of the log's memtable, so that a flush finds most
/// dead entries already deleted. Each raise looks at every lane once.
pub const HORIZON_EVERY_BYTES: usize = 4 * 1024 * 1024;

const NAME: &CStr = c"fila.message_log_gc";

/// The horizon, shared by the store and the compactions.
#[derive(Clone, Default)]
pub struct Horizon(Arc<AtomicU64>);

impl Horizon {
    /// Raises the horizon to `seq` (never lowers it).
    pub fn raise(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// The compaction filter factory for `message_log`.
    pub fn filter_factory(&self) -> GcFactory {
        GcFactory(self.clone())
    }
}

pub struct GcFactory(Horizon);

impl CompactionFilterFactory for GcFactory {
    type Filter = Gc;

    fn create(&mut self, _context: CompactionFilterContext) -> Gc {
        Gc { horizon: self.0.get() }
    }

    fn name(&self) -> &CStr {
        NAME
    }
}

/// One compaction's filter, with the horizon as it was when it started.
pub struct Gc {
    horizon: u64,
}

impl CompactionFilter for Gc {
    fn filter(&mut self, _level: u32, key: &[u8], _value: &[u8]) -> Decision {
        match key.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) {
            Some(seq) if seq < self.horizon => Decision::Remove,
            _ => Decision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::log_key;

    #[test]
    fn entries_below_the_horizon_are_dropped_and_it_never_falls() {
        let horizon = Horizon::default();
        let mut gc = horizon
            .filter_factory()
            .create(CompactionFilterContext { is_full_compaction: false, is_manual_compaction: false });
        assert!(matches!(gc.filter(1, &log_key(1, 5), b""), Decision::Keep), "0 keeps everything");
        horizon.raise(10);
        horizon.raise(7);
        assert_eq!(horizon.get(), 10);
        let mut gc = horizon
            .filter_factory()
            .create(CompactionFilterContext { is_full_compaction: false, is_manual_compaction: false });
        assert!(matches!(gc.filter(1, &log_key(1, 9), b""), Decision::Remove));
        assert!(matches!(gc.filter(1, &log_key(2, 10), b""), Decision::Keep));
        assert!(matches!(gc.filter(1, b"short", b""), Decision::Keep));
    }
}
