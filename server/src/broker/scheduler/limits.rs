//! Admin commands on fairness weights, throttle limits and queue stats.

use std::sync::Arc;
use std::time::Instant;

use super::{Round, Scheduler};
use crate::broker::{KeyStats, QueueStats, ThrottleInfo, ThrottlePage};
use crate::domain::{BrokerError, QueueName, ThrottleError, ThrottleLimit};
use crate::storage::{Change, Store};

impl<S: Store> Scheduler<S> {
    /// Wakes keys whose throttle wait is over.
    pub(super) fn wake_parked(&mut self, now: Instant) {
        while let Some(entry) = self.parked.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, ticket), (queue_id, key)) = entry.remove_entry();
            if let Some(queue) = self.queues.get_mut(&queue_id) {
                if queue.unpark(&key, ticket) {
                    Self::mark_dirty(&mut self.dirty, queue_id);
                }
            }
        }
    }

    /// Gives every parked key another look (after a limit changed).
    pub(super) fn wake_all_parked(&mut self) {
        for ((_, ticket), (queue_id, key)) in std::mem::take(&mut self.parked) {
            if let Some(queue) = self.queues.get_mut(&queue_id) {
                if queue.unpark(&key, ticket) {
                    Self::mark_dirty(&mut self.dirty, queue_id);
                }
            }
        }
    }

    pub(super) fn set_throttle(
        &mut self,
        key: String,
        limit: ThrottleLimit,
        now: Instant,
        round: &mut Round,
    ) -> ThrottleInfo {
        self.throttles.set(&key, limit, now);
        round.changes.push(Change::PutThrottle { key: key.clone(), limit });
        round.changes.needs_sync = true;
        self.wake_all_parked();
        let bucket = self.throttles.get_mut(&key).expect("just set");
        ThrottleInfo { tokens: bucket.tokens(now), blocked: bucket.blocked(), limit, key }
    }

    pub(super) fn remove_throttle(&mut self, key: String, round: &mut Round) -> Result<(), BrokerError> {
        if !self.throttles.remove(&key) {
            return Err(ThrottleError::NotFound(key).into());
        }
        round.changes.push(Change::DeleteThrottle { key });
        round.changes.needs_sync = true;
        self.wake_all_parked();
        Ok(())
    }

    pub(super) fn get_throttle(&mut self, key: String, now: Instant) -> Result<ThrottleInfo, BrokerError> {
        let Some(bucket) = self.throttles.get_mut(&key) else { return Err(ThrottleError::NotFound(key).into()) };
        Ok(ThrottleInfo { tokens: bucket.tokens(now), blocked: bucket.blocked(), limit: bucket.limit(), key })
    }

    pub(super) fn list_throttles(&mut self, after: Option<String>, limit: usize, now: Instant) -> ThrottlePage {
        let mut throttles: Vec<ThrottleInfo> = self
            .throttles
            .iter_mut()
            .filter(|(key, _)| after.as_deref().is_none_or(|a| &***key > a))
            .map(|(key, bucket)| ThrottleInfo {
                key: key.to_string(),
                limit: bucket.limit(),
                tokens: bucket.tokens(now),
                blocked: bucket.blocked(),
            })
            .collect();
        throttles.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let more = throttles.len() > limit;
        throttles.truncate(limit);
        let next_after = if more { throttles.last().map(|t| t.key.clone()) } else { None };
        ThrottlePage { throttles, next_after }
    }

    pub(super) fn set_weight(
        &mut self,
        queue: &QueueName,
        key: String,
        weight: Option<u32>,
        round: &mut Round,
    ) -> Result<(), BrokerError> {
        let queue_id = self.queue_id(queue)?;
        let state = self.queues.get_mut(&queue_id).expect("named queues exist");
        match weight {
            Some(weight) => {
                state.weight_overrides.insert(Arc::from(key.as_str()), weight);
                round.changes.push(Change::PutWeight { queue: queue_id, fairness_key: key, weight });
            }
            None => {
                state.weight_overrides.remove(key.as_str());
                round.changes.push(Change::DeleteWeight { queue: queue_id, fairness_key: key });
            }
        }
        round.changes.needs_sync = true;
        Ok(())
    }

    pub(super) fn queue_stats(
        &self,
        name: &QueueName,
        max_keys: usize,
        now: Instant,
    ) -> Result<QueueStats, BrokerError> {
        let queue = &self.queues[&self.queue_id(name)?];
        let mut keys: Vec<KeyStats> = queue
            .keys
            .iter()
            .map(|(_, key, state)| KeyStats {
                fairness_key: key.to_string(),
                pending: state.pending,
                leased: state.leased,
                weight: queue.weight_of(key, state),
                weight_overridden: queue.weight_overrides.contains_key(key),
                deficit: state.credit.deficit,
                throttled: state.parked.is_some(),
                delivery_rate: state.delivery_rate.per_second(now),
            })
            .collect();
        let active_keys = keys.iter().filter(|k| k.pending > 0).count() as u64;
        let tracked_keys = keys.len() as u64;
        let by_pending =
            |a: &KeyStats, b: &KeyStats| b.pending.cmp(&a.pending).then_with(|| a.fairness_key.cmp(&b.fairness_key));
        if keys.len() > max_keys {
            keys.select_nth_unstable_by(max_keys, by_pending);
            keys.truncate(max_keys);
        }
        keys.sort_unstable_by(by_pending);
        let dead_lettered = self.dead_letter_queue_of(name).map_or(0, |id| self.queues[&id].depth());
        Ok(QueueStats { info: Self::info(queue), active_keys, tracked_keys, keys, dead_lettered })
    }
}
