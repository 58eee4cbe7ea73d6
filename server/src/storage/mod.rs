//! Durable state behind a trait in domain terms. The scheduler never sees a
//! key or a column family; `rocks` is the one implementation.

mod checkpoint_writer;
mod journal;
pub mod keys;
mod lane_index;
mod lane_reads;
mod log_gc;
mod rocks;
mod tally;
mod upgrade;
mod write_order;

use bytes::Bytes;

pub use lane_index::LaneSlot;
pub use rocks::RocksStore;

use crate::domain::{Lane, MessageId, QueueId, QueueSettings, ScriptSources, StorageError, ThrottleLimit};

/// A queue as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDef {
    pub id: QueueId,
    pub name: String,
    pub settings: QueueSettings,
    pub scripts: ScriptSources,
}

/// One state change. A [`ChangeSet`] is applied atomically.
#[derive(Debug, Clone)]
pub enum Change {
    PutQueue(QueueDef),
    /// Removes the queue and every message in it.
    DeleteQueue {
        id: QueueId,
        name: String,
    },
    SetNextQueueId(QueueId),
    PutMessage {
        queue: QueueId,
        lane: Lane,
        /// The lane's slot from [`Store::lane_slot`], or the default.
        slot: LaneSlot,
        seq: u64,
        id: MessageId,
        /// The weight the producer sent (0 = none), for recovery.
        weight: u32,
        record: Bytes,
    },
    DeleteMessage {
        queue: QueueId,
        lane: Lane,
        /// The lane's slot from [`Store::lane_slot`], or the default.
        slot: LaneSlot,
        seq: u64,
        id: MessageId,
    },
    PutThrottle {
        key: String,
        limit: ThrottleLimit,
    },
    DeleteThrottle {
        key: String,
    },
    /// An operator's override of a fairness key's weight.
    PutWeight {
        queue: QueueId,
        fairness_key: String,
        weight: u32,
    },
    DeleteWeight {
        queue: QueueId,
        fairness_key: String,
    },
    PutConfig {
        key: String,
        value: String,
    },
    /// A message that becomes ready at `due_ms` (Unix ms).
    PutDelayed {
        queue: QueueId,
        lane: Lane,
        id: MessageId,
        weight: u32,
        due_ms: u64,
        record: Bytes,
    },
    /// Removes a delayed entry (it became ready, or its queue is gone). The
    /// index entry is left to whoever replaces it.
    DeleteDelayed {
        queue: QueueId,
        id: MessageId,
        due_ms: u64,
    },
    /// Deletes a delayed message for good: its entry and its index entry.
    DiscardDelayed {
        queue: QueueId,
        id: MessageId,
        due_ms: u64,
    },
    DeleteConfig {
        key: String,
    },
}

/// Changes to apply in one atomic write.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
    /// Whether the write must be fsynced when the broker runs with sync
    /// writes (enqueues and queue definitions; acks and retries need not be,
    /// since losing them only causes a redelivery).
    pub needs_sync: bool,
}

impl ChangeSet {
    pub fn push(&mut self, change: Change) {
        self.changes.push(change);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

/// A ready message read from storage.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub id: MessageId,
    pub record: Bytes,
}

/// A delayed message read back when it is due.
#[derive(Debug, Clone)]
pub struct DueMessage {
    pub due_ms: u64,
    pub queue: QueueId,
    pub id: MessageId,
    pub lane: Lane,
    pub weight: u32,
    pub record: Bytes,
}

/// Stored messages of one lane found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredLane {
    pub queue: QueueId,
    pub lane: Lane,
    pub pending: u64,
    /// Sequence and weight of the newest message that carried a weight.
    pub latest_weight: Option<(u64, u32)>,
}

/// Everything the scheduler needs to rebuild its state after a restart.
#[derive(Debug, Default)]
pub struct Recovered {
    pub queues: Vec<QueueDef>,
    pub lanes: Vec<RecoveredLane>,
    pub max_seq: u64,
    pub next_queue_id: QueueId,
    pub throttles: Vec<(String, ThrottleLimit)>,
    /// Weight overrides: queue, fairness key, weight.
    pub weights: Vec<(QueueId, String, u32)>,
    /// Runtime configuration entries.
    pub config: Vec<(String, String)>,
    /// Delayed messages per queue.
    pub delayed: Vec<(QueueId, u64)>,
    /// When the earliest delayed message is due (Unix ms).
    pub next_due_ms: Option<u64>,
}

/// Durable broker state.
pub trait Store: Send + 'static {
    /// Reads what is needed to rebuild in-memory state (not the messages).
    fn recover(&self) -> Result<Recovered, StorageError>;
    /// Applies all changes atomically; returns once they are in the WAL.
    fn commit(&self, changes: ChangeSet) -> Result<(), StorageError>;
    /// A handle for the lane's changes, so that commits reach the lane
    /// without a lookup by name (the default handle always works, by
    /// name). Call it for a lane about to get a message in this round's
    /// commit; a lane left with nothing stored is forgotten at the end of
    /// a commit, and its handles then fall back to the name.
    fn lane_slot(&self, queue: QueueId, lane: &Lane) -> LaneSlot;
    /// Appends to `out` up to `limit` messages of one lane with a sequence
    /// above `after_seq`, in order.
    fn read_ready(
        &self,
        queue: QueueId,
        lane: &Lane,
        after_seq: u64,
        limit: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError>;
    /// Appends to `out` up to `limit` delayed messages due at or before
    /// `now_ms`, earliest first; returns when the next one not taken is due.
    fn read_due(&self, now_ms: u64, limit: usize, out: &mut Vec<DueMessage>) -> Result<Option<u64>, StorageError>;
    /// Whether a message with this id is stored in the queue.
    fn contains_message(&self, queue: QueueId, id: MessageId) -> Result<bool, StorageError>;
    /// Appends to `out` up to `limit` delayed messages of a queue (id and
    /// due time), in id order.
    fn delayed_of_queue(
        &self,
        queue: QueueId,
        limit: usize,
        out: &mut Vec<(MessageId, u64)>,
    ) -> Result<(), StorageError>;
    /// Where a message of the queue is stored, if it is.
    fn locate(&self, queue: QueueId, id: MessageId) -> Result<Option<keys::IndexEntry>, StorageError>;
    /// Counts the messages of a lane with a sequence in `(after_seq,
    /// before_seq)`, stopping at `cap`.
    fn count_between(
        &self,
        queue: QueueId,
        lane: &Lane,
        after_seq: u64,
        before_seq: u64,
        cap: u64,
    ) -> Result<u64, StorageError>;
    /// Starts reclaiming the disk space of a deleted queue in the background.
    fn reclaim_queue_space(&self, queue: QueueId);
    /// Makes everything committed so far durable on disk.
    fn flush(&self) -> Result<(), StorageError>;
}
