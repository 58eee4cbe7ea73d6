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
            .map(|(queue, dead_letter_depth)| sample_queue(queue, dead_letter_depth))
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

fn sample_queue(queue: &mut QueueState, dead_letter_depth: Option<u64>) -> QueueSample {
    let retired = std::mem::take(&mut queue.retired_deliveries);
    let total_delivered: u64 =
        queue.keys.values().map(|k| k.unreported_deliveries).sum::<u64>() + retired.iter().map(|(_, n)| n).sum::<u64>();
    let share = |n: u64| if total_delivered > 0 { n as f64 / total_delivered as f64 } else { 0.0 };
    let total_weight: u64 = queue
        .keys
        .iter()
        .filter(|(_, _, k)| k.pending > 0)
        .map(|(_, key, k)| u64::from(effective_weight(&queue.weight_overrides, key, k)))
        .sum();
    let overrides = &queue.weight_overrides;
    // Keys with nothing to report are left out: their series (if any)
    // keep their totals, and their shares are 0.
    let mut keys: Vec<KeySample> = queue
        .keys
        .iter_mut()
        .filter(|(_, _, k)| k.unreported_deliveries > 0 || k.pending > 0)
        .map(|(_, key, k)| {
            let new_deliveries = std::mem::take(&mut k.unreported_deliveries);
            let fair_share = if k.pending > 0 && total_weight > 0 {
                f64::from(effective_weight(overrides, key, k)) / total_weight as f64
            } else {
                0.0
            };
            KeySample { key: key.clone(), new_deliveries, actual_share: share(new_deliveries), fair_share }
        })
        .collect();
    keys.extend(retired.into_iter().map(|(key, new_deliveries)| KeySample {
        key,
        new_deliveries,
        actual_share: share(new_deliveries),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Lane, QueueSettings, ThrottleSet};
    use crate::storage::QueueDef;

    #[test]
    fn shares_compare_recent_deliveries_with_weights_of_backlogged_keys() {
        let def = QueueDef { id: 1, name: "q".into(), settings: QueueSettings::default(), scripts: Default::default() };
        let mut queue = QueueState::new(def);
        let lane = |key: &str| Lane::new(Arc::from(key), ThrottleSet::default());
        queue.add_ready(&lane("a"), 5, Some(1));
        queue.add_ready(&lane("b"), 5, Some(3));
        queue.keys.get_mut("a").unwrap().unreported_deliveries = 2;
        queue.keys.get_mut("b").unwrap().unreported_deliveries = 6;
        // "gone" was delivered to and forgotten since the last snapshot.
        queue.retired_deliveries.push((Arc::from("gone"), 2));
        let sample = sample_queue(&mut queue, None);
        let key = |k: &str| sample.keys.iter().find(|s| &*s.key == k).unwrap();
        assert_eq!((key("a").new_deliveries, key("a").actual_share, key("a").fair_share), (2, 0.2, 0.25));
        assert_eq!((key("b").new_deliveries, key("b").actual_share, key("b").fair_share), (6, 0.6, 0.75));
        assert_eq!((key("gone").new_deliveries, key("gone").actual_share, key("gone").fair_share), (2, 0.2, 0.0));
        assert_eq!(sample.active_keys, 2);

        let next = sample_queue(&mut queue, None);
        assert_eq!(next.keys.len(), 2, "the forgotten key is reported once");
        assert!(next.keys.iter().all(|k| k.new_deliveries == 0 && k.actual_share == 0.0), "counts restart");
    }
}
