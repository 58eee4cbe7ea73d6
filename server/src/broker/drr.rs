//! Deficit Round Robin over the active fairness keys of a queue.
//!
//! Only keys with deliverable messages are in the rotation. The key at the
//! front starts its turn with `quantum × weight` credit and keeps the turn
//! until the credit is spent or it runs out of messages; then the next key
//! goes. Every operation is O(1) in the number of keys. Each delivery costs
//! one credit, so with all keys backlogged every round gives each key exactly
//! `quantum × weight` deliveries.

use std::collections::VecDeque;

/// Per-key DRR bookkeeping, stored with the rest of the key's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Deliveries left in the key's current turn; 0 when it is not its turn.
    pub deficit: u64,
}

#[derive(Debug)]
pub struct Drr<K> {
    rotation: VecDeque<K>,
    quantum: u64,
    /// Completed rounds (about one turn per key in the rotation), for
    /// metrics.
    rounds: u64,
    turns_this_round: usize,
}

impl<K: Clone> Drr<K> {
    pub fn new(quantum: u32) -> Self {
        Drr { rotation: VecDeque::new(), quantum: u64::from(quantum.max(1)), rounds: 0, turns_this_round: 0 }
    }

    pub fn set_quantum(&mut self, quantum: u32) {
        self.quantum = u64::from(quantum.max(1));
    }

    pub fn len(&self) -> usize {
        self.rotation.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rotation.is_empty()
    }

    /// Keys in service order, the current one first.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.rotation.iter()
    }

    /// Adds a key that just became deliverable at the back of the rotation.
    /// The caller makes sure a key is in the rotation at most once.
    pub fn join(&mut self, key: K) {
        self.rotation.push_back(key);
    }

    /// The key whose turn it is, if any. Call [`Drr::start_turn`] with its
    /// credit before serving it.
    pub fn front(&self) -> Option<&K> {
        self.rotation.front()
    }

    /// Grants the front key its credit if its turn is just starting. A
    /// round is counted once as many turns have started as there are keys
    /// in the rotation.
    pub fn start_turn(&mut self, credit: &mut Credit, weight: u32) {
        if credit.deficit == 0 {
            credit.deficit = self.quantum * u64::from(weight.max(1));
            self.turns_this_round += 1;
            if self.turns_this_round >= self.rotation.len() {
                self.rounds += 1;
                self.turns_this_round = 0;
            }
        }
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Charges one delivery to the front key. `still_deliverable` says
    /// whether it has more messages; if not, it leaves the rotation.
    pub fn charge_front(&mut self, credit: &mut Credit, still_deliverable: bool) {
        credit.deficit = credit.deficit.saturating_sub(1);
        if !still_deliverable {
            self.leave_front(credit);
        } else if credit.deficit == 0 {
            self.rotation.rotate_left(1);
        }
    }

    /// Takes the front key out of the rotation (it has nothing deliverable
    /// now); its unused credit is dropped, as DRR does for idle keys.
    pub fn leave_front(&mut self, credit: &mut Credit) {
        credit.deficit = 0;
        self.rotation.pop_front();
    }

    /// Removes a key wherever it is (O(n); only for rare administrative
    /// changes, never per delivery).
    pub fn remove(&mut self, key: &K)
    where
        K: PartialEq,
    {
        self.rotation.retain(|k| k != key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A simulated backlogged key.
    struct Sim {
        weight: u32,
        credit: Credit,
        backlog: u64,
    }

    /// Serves `deliveries` messages from `keys` (all in the rotation),
    /// topping up backlogs with `arrivals(step)`; returns the delivery order.
    fn run(
        keys: &mut HashMap<u32, Sim>,
        drr: &mut Drr<u32>,
        deliveries: usize,
        mut arrivals: impl FnMut(usize, &mut HashMap<u32, Sim>, &mut Drr<u32>),
    ) -> Vec<u32> {
        let mut order = Vec::with_capacity(deliveries);
        for step in 0..deliveries {
            arrivals(step, keys, drr);
            let key = *drr.front().expect("a backlogged key");
            let sim = keys.get_mut(&key).unwrap();
            drr.start_turn(&mut sim.credit, sim.weight);
            sim.backlog -= 1;
            drr.charge_front(&mut sim.credit, sim.backlog > 0);
            order.push(key);
        }
        order
    }

    /// Checks every window of `window` deliveries (sliding by `step`) and
    /// the whole run against the weighted shares.
    fn check_shares(
        order: &[u32],
        weights: &HashMap<u32, u32>,
        window: usize,
        window_tolerance: f64,
        total_tolerance: f64,
    ) {
        let total_weight: u32 = weights.values().sum();
        let share = |key: u32| f64::from(weights[&key]) / f64::from(total_weight);
        // Slide the window one delivery at a time, checking every 37th
        // position (so windows start mid-round too).
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for (i, k) in order.iter().enumerate() {
            *counts.entry(*k).or_default() += 1;
            if i >= window {
                *counts.get_mut(&order[i - window]).unwrap() -= 1;
            }
            let start = (i + 1).saturating_sub(window);
            if i + 1 < window || start % 37 != 0 {
                continue;
            }
            for &key in weights.keys() {
                let expected = share(key) * window as f64;
                let got = counts.get(&key).copied().unwrap_or(0) as f64;
                assert!(
                    (got - expected).abs() <= expected * window_tolerance,
                    "window at {start}: key {key} (weight {}) got {got}, expected {expected:.1}",
                    weights[&key]
                );
            }
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for k in order {
            *counts.entry(*k).or_default() += 1;
        }
        for &key in weights.keys() {
            let expected = share(key) * order.len() as f64;
            let got = counts[&key] as f64;
            assert!(
                (got - expected).abs() <= expected * total_tolerance,
                "whole run: key {key} got {got}, expected {expected:.1}"
            );
        }
    }

    #[test]
    fn weights_one_to_five_share_every_window_of_1500() {
        let weights: HashMap<u32, u32> = (1..=5).map(|k| (k, k)).collect();
        let mut drr = Drr::new(1);
        let mut keys = HashMap::new();
        for (&k, &w) in &weights {
            keys.insert(k, Sim { weight: w, credit: Credit::default(), backlog: 10_000 });
            drr.join(k);
        }
        let order = run(&mut keys, &mut drr, 15_000, |_, _, _| {});
        check_shares(&order, &weights, 1500, 0.02, 0.005);
    }

    #[test]
    fn an_emptied_key_leaves_and_rejoins_at_the_back() {
        let mut drr = Drr::new(1);
        let (mut a, mut b) = (Credit::default(), Credit::default());
        drr.join("a");
        drr.join("b");
        drr.start_turn(&mut a, 1);
        drr.charge_front(&mut a, false);
        assert_eq!(drr.front(), Some(&"b"));
        assert_eq!(drr.len(), 1);
        drr.join("a");
        drr.start_turn(&mut b, 2);
        drr.charge_front(&mut b, true);
        assert_eq!(drr.front(), Some(&"b"), "weight 2 keeps the turn for a second delivery");
        drr.charge_front(&mut b, true);
        assert_eq!(drr.front(), Some(&"a"));
    }

    #[test]
    fn a_round_is_one_turn_per_key() {
        let mut drr = Drr::new(1);
        let mut credits = [Credit::default(); 3];
        for k in 0..3 {
            drr.join(k);
        }
        for _ in 0..7 {
            let k = *drr.front().unwrap();
            drr.start_turn(&mut credits[k], 2);
            drr.charge_front(&mut credits[k], true);
        }
        // 7 deliveries of 2 per turn: turns of keys 0, 1, 2 (a round), then 0.
        assert_eq!(drr.rounds(), 1);
        for _ in 0..5 {
            let k = *drr.front().unwrap();
            drr.start_turn(&mut credits[k], 2);
            drr.charge_front(&mut credits[k], true);
        }
        assert_eq!(drr.rounds(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random weights, key counts, arrival order and refills: while every
        /// key is backlogged, each window of 100 rounds' worth of deliveries
        /// gives every key its weighted share within 2%, the whole run within
        /// 0.5%.
        #[test]
        fn backlogged_keys_get_their_weighted_share_in_every_window(
            weights in proptest::collection::vec(1u32..=10, 2..40),
            join_order in any::<u64>(),
            initial in proptest::collection::vec(1u64..300, 40),
            refill_seed in any::<u64>(),
        ) {
            let weights: HashMap<u32, u32> = weights.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
            let total_weight: u32 = weights.values().sum();
            let window = 100 * total_weight as usize;
            let deliveries = 4 * window;
            // Keys join in a random order with random initial backlogs; a
            // key that runs low gets more work before it empties, in random
            // amounts, as producers would send it.
            let mut ids: Vec<u32> = weights.keys().copied().collect();
            ids.sort_unstable();
            let n = ids.len();
            ids.rotate_left((join_order % n as u64) as usize);
            let mut drr = Drr::new(1);
            let mut keys = HashMap::new();
            for (i, &k) in ids.iter().enumerate() {
                keys.insert(k, Sim { weight: weights[&k], credit: Credit::default(), backlog: initial[i] + u64::from(weights[&k]) * 2 });
                drr.join(k);
            }
            let mut rng = refill_seed;
            let order = run(&mut keys, &mut drr, deliveries, |_, keys, _| {
                for sim in keys.values_mut() {
                    if sim.backlog <= u64::from(sim.weight) + 1 {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        sim.backlog += 1 + (rng >> 33) % 500;
                    }
                }
            });
            check_shares(&order, &weights, window, 0.02, 0.005);
        }
    }
}
