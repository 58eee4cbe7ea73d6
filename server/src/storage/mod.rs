//! Durable state behind a trait in domain terms. The scheduler never sees a
//! key or a column family; `rocks` is the one implementation.

pub mod keys;
mod rocks;

use std::sync::Arc;

use bytes::Bytes;

pub use rocks::RocksStore;

use crate::domain::{MessageId, QueueId, QueueSettings, StorageError};

/// A queue as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDef {
    pub id: QueueId,
    pub name: String,
    pub settings: QueueSettings,
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
        fairness_key: Arc<str>,
        seq: u64,
        id: MessageId,
        record: Bytes,
    },
    DeleteMessage {
        queue: QueueId,
        fairness_key: Arc<str>,
        seq: u64,
        id: MessageId,
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
}

/// A ready message read from storage.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub id: MessageId,
    pub record: Bytes,
}

/// Pending messages of one fairness key found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredKey {
    pub queue: QueueId,
    pub fairness_key: String,
    pub pending: u64,
}

/// Everything the scheduler needs to rebuild its state after a restart.
#[derive(Debug, Default)]
pub struct Recovered {
    pub queues: Vec<QueueDef>,
    pub keys: Vec<RecoveredKey>,
    pub max_seq: u64,
    pub next_queue_id: QueueId,
}

/// Durable broker state.
pub trait Store: Send + 'static {
    /// Reads what is needed to rebuild in-memory state (not the messages).
    fn recover(&self) -> Result<Recovered, StorageError>;
    /// Applies all changes atomically; returns once they are in the WAL.
    fn commit(&self, changes: &ChangeSet) -> Result<(), StorageError>;
    /// Appends to `out` up to `limit` messages of one fairness key with a
    /// sequence above `after_seq`, in order.
    fn read_ready(
        &self,
        queue: QueueId,
        fairness_key: &str,
        after_seq: u64,
        limit: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError>;
    /// Whether a message with this id is stored in the queue.
    fn contains_message(&self, queue: QueueId, id: MessageId) -> Result<bool, StorageError>;
    /// Starts reclaiming the disk space of a deleted queue in the background.
    fn reclaim_queue_space(&self, queue: QueueId);
    /// Makes everything committed so far durable on disk.
    fn flush(&self) -> Result<(), StorageError>;
}
