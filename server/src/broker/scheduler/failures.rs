//! Failed attempts, delays and dead letters: where a message goes after a
//! nack or an expired lease, and how delayed messages become ready.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Round, Scheduler, SentWeight};
use crate::broker::failure_policy::{backoff, default_action, FailureAction};
use crate::broker::key_table::KeyId;
use crate::broker::leases::Lease;
use crate::broker::queue_state::buffered_size;
use crate::domain::message::{due_unix_millis, unix_millis, MessageRecord};
use crate::domain::{BrokerError, Lane, MessageId, QueueId, QueueName, StorageError, ThrottleSet};
use crate::storage::{Change, DueMessage, Store, StoredMessage};

/// Most delayed messages made ready in one round, so a burst of due
/// messages cannot stall everything else.
const MAX_DUE_PER_ROUND: usize = 4096;

impl<S: Store> Scheduler<S> {
    /// Handles a failed attempt: counts it and retries (at once or after a
    /// delay) or dead-letters the message, as the failure policy decides.
    pub(super) fn retry(&mut self, lease: Lease, error: String, round: &mut Round) -> Result<(), BrokerError> {
        let queue_id = lease.token.queue;
        let mut record = MessageRecord::decode_bytes(lease.record.clone())
            .map_err(|e| StorageError::Corrupt(format!("message {}: {e}", lease.token.message)))?;
        record.failures += 1;
        record.last_error = error;
        let Some(queue) = self.queues.get(&queue_id) else { return Ok(()) };
        let name = QueueName::parse(&queue.def.name).expect("stored queue names are valid");
        let max_attempts = queue.def.settings.max_attempts;
        let dead_letter_queue = self.dead_letter_queue_of(&name);
        let action = self
            .ask_on_failure(queue_id, &record)
            .unwrap_or_else(|| default_action(record.failures, max_attempts, dead_letter_queue.is_some()));
        self.end_lease_and_delete(&lease, round);
        let id = lease.token.message;
        // A queue without a dead-letter queue (a dead-letter queue itself)
        // retries with backoff instead.
        let action = match (action, dead_letter_queue) {
            (FailureAction::DeadLetter, None) => FailureAction::Retry { delay: backoff(record.failures) },
            (action, _) => action,
        };
        match (action, dead_letter_queue) {
            (FailureAction::DeadLetter, Some(dlq)) => {
                if let Some(queue) = self.queues.get_mut(&queue_id) {
                    queue.counters.dead_lettered += 1;
                }
                self.dead_letter(dlq, id, record, round)
            }
            (FailureAction::Retry { delay }, _) if !delay.is_zero() => {
                let due_ms = due_unix_millis(delay);
                record.ready_after(delay);
                self.put_delayed(queue_id, lease.lane, id, record.weight, due_ms, record.encode_bytes(), round);
            }
            _ => {
                record.ready_after(Duration::ZERO);
                self.store_ready(
                    queue_id,
                    lease.lane,
                    id,
                    SentWeight::Kept(record.weight),
                    record.encode_bytes(),
                    round,
                )
            }
        }
        Ok(())
    }

    /// Moves a message to a dead-letter queue, keeping its headers, payload,
    /// attempt count and last error. It is not throttled there.
    fn dead_letter(&mut self, dlq: QueueId, id: MessageId, mut record: MessageRecord, round: &mut Round) {
        record.ready_after(Duration::ZERO);
        let lane = Lane::new(Arc::from(record.fairness_key.as_str()), ThrottleSet::default());
        self.store_ready(dlq, lane, id, SentWeight::Kept(record.weight), record.encode_bytes(), round);
    }

    /// Stores a message that becomes ready at `due_ms`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_delayed(
        &mut self,
        queue_id: QueueId,
        lane: Lane,
        id: MessageId,
        weight: u32,
        due_ms: u64,
        record: Bytes,
        round: &mut Round,
    ) {
        round.changes.push(Change::PutDelayed { queue: queue_id, lane, id, weight, due_ms, record });
        if let Some(queue) = self.queues.get_mut(&queue_id) {
            queue.delayed += 1;
        }
        self.next_due_ms = Some(self.next_due_ms.map_or(due_ms, |next| next.min(due_ms)));
    }

    /// Makes delayed messages whose time has come ready, at the tail of
    /// their lanes.
    pub(super) fn promote_due(&mut self, wall: SystemTime, round: &mut Round) -> Result<(), StorageError> {
        let now_ms = unix_millis(wall);
        if self.next_due_ms.is_none_or(|due| due > now_ms) {
            return Ok(());
        }
        let mut due: Vec<DueMessage> = Vec::new();
        self.next_due_ms = self.store.read_due(now_ms, MAX_DUE_PER_ROUND, &mut due)?;
        for message in due {
            round.changes.push(Change::DeleteDelayed { queue: message.queue, id: message.id, due_ms: message.due_ms });
            // A message of a deleted queue is simply dropped.
            let Some(queue) = self.queues.get_mut(&message.queue) else { continue };
            queue.delayed -= 1;
            let weight = SentWeight::SetsKeyWeight(message.weight);
            self.store_ready(message.queue, message.lane, message.id, weight, message.record, round);
        }
        Ok(())
    }
}

impl<S: Store> Scheduler<S> {
    /// Takes up to `limit` ready messages out of a queue's lanes, oldest
    /// first per key, and deletes them in this round's batch. Read-ahead
    /// buffers are dropped first, so none holds a message that is gone.
    fn take_ready(
        &mut self,
        queue_id: QueueId,
        limit: usize,
        round: &mut Round,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let mut taken: Vec<StoredMessage> = Vec::new();
        let Scheduler { queues, store, buffered_bytes, .. } = self;
        let queue = queues.get_mut(&queue_id).expect("caller checked the queue");
        let keys: Vec<KeyId> = queue.keys.iter().map(|(id, _, _)| id).collect();
        'keys: for key in keys {
            let (_, state) = queue.keys.by_id_mut(key).expect("listed above");
            for lane in state.lanes.iter_mut().filter(|l| l.pending > 0) {
                lane.cursor = lane.ready_after();
                *buffered_bytes -= lane.buffer.drain(..).map(|m| buffered_size(&m)).sum::<usize>();
                let mut read = Vec::new();
                let want = (lane.pending as usize).min(limit - taken.len());
                store.read_ready(queue_id, &lane.lane, lane.cursor, want, &mut read)?;
                for message in read {
                    round.changes.push(Change::DeleteMessage {
                        queue: queue_id,
                        lane: lane.lane.clone(),
                        slot: lane.slot,
                        seq: message.seq,
                        id: message.id,
                    });
                    lane.cursor = message.seq;
                    lane.pending -= 1;
                    state.pending -= 1;
                    queue.pending -= 1;
                    taken.push(message);
                }
                if taken.len() >= limit {
                    break;
                }
            }
            // Keep "in the rotation ⇔ ready and not parked": a key emptied
            // here leaves the rotation (O(keys), fine for a bulk admin call).
            if state.pending == 0 {
                state.lanes.retain(|l| l.leased > 0);
                state.credit.deficit = 0;
                if state.parked.take().is_none() {
                    queue.drr.remove(&key);
                }
                queue.forget_if_idle(key);
            }
            if taken.len() >= limit {
                break 'keys;
            }
        }
        Ok(taken)
    }

    /// Moves up to `limit` ready messages from `source`'s dead-letter queue
    /// back to `source`, with their attempt counts reset. Each move (delete
    /// there, put here) is in this round's atomic batch.
    pub(super) fn redrive(&mut self, source: &QueueName, limit: usize, round: &mut Round) -> Result<u64, BrokerError> {
        let source_id = self.queue_id(source)?;
        let dlq_id = self.queue_id(&source.dead_letter())?;
        let taken = self.take_ready(dlq_id, limit, round)?;
        let count = taken.len() as u64;
        self.queues.get_mut(&source_id).expect("named queues exist").counters.redriven += count;
        for message in taken {
            let mut record = MessageRecord::decode_bytes(message.record)
                .map_err(|e| StorageError::Corrupt(format!("message {}: {e}", message.id)))?;
            record.failures = 0;
            record.ready_after(Duration::ZERO);
            let lane = Lane::new(Arc::from(record.fairness_key.as_str()), ThrottleSet::new(&record.throttle_keys));
            self.store_ready(
                source_id,
                lane,
                message.id,
                SentWeight::Kept(record.weight),
                record.encode_bytes(),
                round,
            );
        }
        Ok(count)
    }

    /// Deletes up to `limit` ready and delayed messages of a queue (leased
    /// ones stay until acked or expired); returns how many went.
    pub(super) fn purge(&mut self, name: &QueueName, limit: usize, round: &mut Round) -> Result<u64, BrokerError> {
        let queue_id = self.queue_id(name)?;
        let mut purged = self.take_ready(queue_id, limit, round)?.len();
        if purged < limit {
            let mut delayed = Vec::new();
            self.store.delayed_of_queue(queue_id, limit - purged, &mut delayed)?;
            let queue = self.queues.get_mut(&queue_id).expect("named queues exist");
            for (id, due_ms) in delayed {
                round.changes.push(Change::DiscardDelayed { queue: queue_id, id, due_ms });
                queue.delayed -= 1;
                purged += 1;
            }
        }
        Ok(purged as u64)
    }
}
