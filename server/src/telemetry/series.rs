//! Bounded label cardinality: at most `cap` labelled series per family;
//! everything beyond folds into one overflow series per group (a queue),
//! so a million tenants cost a bounded number of series.

use std::hash::Hash;

use crate::fast_map::FastMap;

/// The label value of the series that collects everything over the cap.
pub const OVERFLOW_LABEL: &str = "_other";

/// A series that saw nothing for this many snapshots (five minutes) gives
/// up its slot, so new keys can get one.
const IDLE_SNAPSHOTS_BEFORE_EVICTION: u32 = 300;

/// Values kept per series.
pub trait SeriesValue: Default {
    /// Folds a new observation in (counters add, gauges replace or add).
    fn absorb(&mut self, other: &Self);
    /// Gauge parts reset before each snapshot is folded in.
    fn reset_gauges(&mut self);
    /// Whether this snapshot's observation was empty (nothing to report).
    fn is_idle(&self) -> bool;
}

struct Slot<V> {
    value: V,
    idle_snapshots: u32,
}

/// Series keyed by `(group, key)`: the first `cap` keys (across all
/// groups) get their own series, the others add to their group's overflow
/// series.
pub struct CappedSeries<G, K, V> {
    cap: usize,
    labelled: FastMap<(G, K), Slot<V>>,
    overflow: FastMap<G, V>,
}

impl<G: Eq + Hash + Clone, K: Eq + Hash + Clone, V: SeriesValue> CappedSeries<G, K, V> {
    pub fn new(cap: usize) -> Self {
        CappedSeries { cap, labelled: FastMap::default(), overflow: FastMap::default() }
    }

    /// Starts a snapshot: gauge values go back to zero (a key that is not
    /// observed again has no share).
    pub fn begin_snapshot(&mut self) {
        for slot in self.labelled.values_mut() {
            slot.value.reset_gauges();
        }
        for value in self.overflow.values_mut() {
            value.reset_gauges();
        }
    }

    pub fn observe(&mut self, group: &G, key: &K, value: V) {
        let id = (group.clone(), key.clone());
        if let Some(slot) = self.labelled.get_mut(&id) {
            slot.value.absorb(&value);
            if !value.is_idle() {
                slot.idle_snapshots = 0;
            }
        } else if self.labelled.len() < self.cap {
            self.labelled.insert(id, Slot { value, idle_snapshots: 0 });
        } else {
            self.overflow.entry(group.clone()).or_default().absorb(&value);
        }
    }

    /// Ends a snapshot: groups not in `live` are dropped with their series,
    /// and series idle for long enough give up their slots.
    pub fn end_snapshot(&mut self, live: impl Fn(&G) -> bool) {
        self.labelled.retain(|(group, _), slot| {
            slot.idle_snapshots += 1;
            live(group) && slot.idle_snapshots <= IDLE_SNAPSHOTS_BEFORE_EVICTION
        });
        self.overflow.retain(|group, _| live(group));
    }

    /// Every series: `(group, Some(key))` for labelled ones, `(group, None)`
    /// for a group's overflow.
    pub fn for_each(&self, mut f: impl FnMut(&G, Option<&K>, &V)) {
        for ((group, key), slot) in &self.labelled {
            f(group, Some(key), &slot.value);
        }
        for (group, value) in &self.overflow {
            f(group, None, value);
        }
    }

    #[cfg(test)]
    pub fn labelled_len(&self) -> usize {
        self.labelled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Count {
        total: u64,
        gauge: f64,
    }

    impl SeriesValue for Count {
        fn absorb(&mut self, other: &Self) {
            self.total += other.total;
            self.gauge += other.gauge;
        }
        fn reset_gauges(&mut self) {
            self.gauge = 0.0;
        }
        fn is_idle(&self) -> bool {
            self.total == 0 && self.gauge == 0.0
        }
    }

    fn collect(series: &CappedSeries<&'static str, u32, Count>) -> Vec<(Option<u32>, u64, f64)> {
        let mut all = Vec::new();
        series.for_each(|_, key, v| all.push((key.copied(), v.total, v.gauge)));
        all.sort_by_key(|(k, _, _)| k.map_or(u32::MAX, |k| k));
        all
    }

    #[test]
    fn keys_over_the_cap_fold_into_one_overflow_series() {
        let mut s = CappedSeries::new(3);
        s.begin_snapshot();
        for key in 0..10 {
            s.observe(&"q", &key, Count { total: 1, gauge: 0.1 });
        }
        s.end_snapshot(|_| true);
        let all = collect(&s);
        assert_eq!(all.len(), 4, "3 labelled + 1 overflow");
        let overflow = all.last().unwrap();
        assert_eq!((overflow.0, overflow.1), (None, 7));
        assert!((overflow.2 - 0.7).abs() < 1e-9);

        // Counters keep adding up; gauges are re-observed each snapshot.
        s.begin_snapshot();
        s.observe(&"q", &0, Count { total: 2, gauge: 0.5 });
        s.observe(&"q", &99, Count { total: 1, gauge: 0.0 });
        s.end_snapshot(|_| true);
        let all = collect(&s);
        assert_eq!(all[0], (Some(0), 3, 0.5));
        assert_eq!(all[1], (Some(1), 1, 0.0));
        assert_eq!(all.last().unwrap(), &(None, 8, 0.0));
    }

    #[test]
    fn deleted_groups_and_idle_keys_free_their_slots() {
        let mut s = CappedSeries::new(1);
        s.observe(&"gone", &1, Count { total: 1, gauge: 0.0 });
        s.observe(&"gone", &2, Count { total: 1, gauge: 0.0 });
        s.end_snapshot(|g| *g != "gone");
        assert_eq!(collect(&s), vec![]);

        s.observe(&"q", &1, Count { total: 1, gauge: 0.0 });
        for _ in 0..=IDLE_SNAPSHOTS_BEFORE_EVICTION {
            s.begin_snapshot();
            s.end_snapshot(|_| true);
        }
        assert_eq!(s.labelled_len(), 0);
        s.observe(&"q", &2, Count { total: 1, gauge: 0.0 });
        assert_eq!(collect(&s), vec![(Some(2), 1, 0.0)]);
    }
}
