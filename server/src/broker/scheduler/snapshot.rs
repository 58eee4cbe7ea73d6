//! Building the metrics snapshot from the scheduler's own state.

use std::time::Instant;

use super::Scheduler;
use crate::broker::observer::{KeySample, QueueSample, Snapshot, ThrottleSample};
use crate::broker::queue_state::{effective_weight, QueueState};
use crate::domain::QueueName;
use crate::scripting::ScriptHook;
use crate::storage::Store;

impl<S: Store> Scheduler<S> {
    /// Hands the observer the current counters and gauges; per-key delivery
    /// counts restart from zero.
    pub(super) fn publish_snapshot(&mut self, now: Instant) {
        let dead_letter_depths: Vec<Option<u64>> = self
            .queues
            .values()
            .map(|queue| {
                let name = QueueName::parse(&queue.def.name).ok()?;
                if name.is_dead_letter() {
                    return None;
                }
                let dlq = self.names.get(name.dead_letter().as_str())?;
                self.queues.get(dlq).map(QueueState::depth)
            })
            .collect();
        let queues = self
            .queues
            .values_mut()
            .zip(dead_letter_depths)
            .map(|(queue, dead_letter_depth)| sample_queue(queue, dead_letter_depth, now))
            .collect();
        let throttles = self
            .throttles
            .iter_mut()
            .map(|(key, bucket)| ThrottleSample {
                key: key.clone(),
                passes: bucket.passed(),
                blocks: bucket.blocked(),
                tokens: bucket.tokens(now),
            })
            .collect();
        self.observer.snapshot(Snapshot { queues, throttles });
    }
}

fn sample_queue(queue: &mut QueueState, dead_letter_depth: Option<u64>, now: Instant) -> QueueSample {
    let mut delivered = std::mem::take(&mut queue.unreported_deliveries);
    let total_rate: f64 = queue.keys.values().map(|k| k.delivery_rate.per_second(now)).sum();
    let total_weight: u64 = queue
        .keys
        .iter()
        .filter(|(_, k)| k.pending > 0)
        .map(|(key, k)| u64::from(effective_weight(&queue.weight_overrides, key, k)))
        .sum();
    let mut keys: Vec<KeySample> = queue
        .keys
        .iter()
        .map(|(key, k)| {
            let rate = k.delivery_rate.per_second(now);
            let weight = effective_weight(&queue.weight_overrides, key, k);
            KeySample {
                key: key.clone(),
                new_deliveries: delivered.remove(key).unwrap_or(0),
                actual_share: if total_rate > 0.0 { rate / total_rate } else { 0.0 },
                fair_share: if k.pending > 0 && total_weight > 0 {
                    f64::from(weight) / total_weight as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    // Keys delivered to and then forgotten since the last snapshot.
    keys.extend(delivered.into_iter().map(|(key, new_deliveries)| KeySample {
        key,
        new_deliveries,
        actual_share: 0.0,
        fair_share: 0.0,
    }));
    let hooks = queue
        .scripts
        .as_ref()
        .map(|scripts| {
            [ScriptHook::OnEnqueue, ScriptHook::OnFailure]
                .into_iter()
                .filter_map(|hook| scripts.stats(hook).map(|stats| (hook, stats.breaker)))
                .collect()
        })
        .unwrap_or_default();
    QueueSample {
        name: queue.name.clone(),
        counters: queue.counters,
        ready: queue.pending,
        in_flight: queue.in_flight,
        delayed: queue.delayed,
        dead_letter_depth,
        consumers: queue.consumers,
        active_keys: queue.keys.values().filter(|k| k.pending > 0).count() as u64,
        drr_rounds: queue.drr.rounds(),
        keys,
        hooks,
    }
}
