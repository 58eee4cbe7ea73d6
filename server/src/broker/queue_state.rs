//! In-memory state of one queue: its fairness keys and their lanes, the DRR
//! rotation of keys with deliverable messages, and the consumers waiting for
//! work.
//!
//! Messages themselves stay in storage. Per lane the scheduler keeps
//! counters, a cursor (the highest sequence already taken from storage) and
//! a small read-ahead buffer, so memory grows with active keys and leases,
//! not with queue depth.

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use super::consumers::ConsumerId;
use super::drr::{Credit, Drr};
use super::key_table::{KeyId, KeyTable};
use super::observer::QueueCounters;
use super::rate::DecayingRate;
use crate::domain::Lane;
use crate::fast_map::FastMap;
use crate::scripting::QueueScripts;
use crate::storage::{LaneSlot, QueueDef, StoredMessage};

#[derive(Debug)]
pub struct LaneState {
    pub lane: Lane,
    /// Ready messages (buffered or still only in storage).
    pub pending: u64,
    /// Messages of this lane currently leased.
    pub leased: u64,
    /// Highest sequence read from storage. Ready messages in storage all have
    /// a higher sequence: retried messages are re-sequenced at the tail.
    pub cursor: u64,
    /// Messages read ahead of delivery, in order.
    pub buffer: VecDeque<StoredMessage>,
    /// The lane's handle in the store, once a message of this lane state
    /// has been stored (the default until then).
    pub slot: LaneSlot,
}

#[derive(Debug)]
pub struct KeyState {
    pub pending: u64,
    pub leased: u64,
    /// Weight of the newest message that set one; 1 until one does.
    pub message_weight: u32,
    pub credit: Credit,
    pub delivery_rate: DecayingRate,
    /// Deliveries since the last metrics snapshot (counted only while
    /// metrics are on).
    pub unreported_deliveries: u64,
    /// While every ready message of the key waits for a throttle, the key is
    /// out of the rotation and parked under this ticket until a refill.
    pub parked: Option<u64>,
    /// Usually one lane (all messages with the same throttle keys), held
    /// inline: among many keys, a lane behind a pointer was one more cold
    /// cache line at a message's arrival, its delivery and its lease's end.
    pub lanes: SmallVec<[LaneState; 1]>,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            pending: 0,
            leased: 0,
            message_weight: 1,
            credit: Credit::default(),
            delivery_rate: DecayingRate::default(),
            unreported_deliveries: 0,
            parked: None,
            lanes: SmallVec::new(),
        }
    }
}

impl LaneState {
    /// The sequence after which this lane's ready messages start: before the
    /// read-ahead buffer if it holds any (leased messages come before it),
    /// else the cursor.
    pub fn ready_after(&self) -> u64 {
        self.buffer.front().map_or(self.cursor, |m| m.seq - 1)
    }

    /// Appends a just-stored ready message (already counted by
    /// [`QueueState::add_ready`]) to the buffer if the buffer holds every
    /// other ready message of the lane, i.e. the message is exactly what
    /// the next read from storage would return, and holds fewer than
    /// `max_buffered`. Returns whether it was buffered.
    pub fn buffer_if_caught_up(&mut self, message: StoredMessage, max_buffered: u64) -> bool {
        let buffered = self.buffer.len() as u64;
        if buffered + 1 != self.pending || buffered >= max_buffered || message.seq <= self.cursor {
            return false;
        }
        self.cursor = message.seq;
        self.buffer.push_back(message);
        true
    }
}

impl KeyState {
    /// Whether the key is (or should be) in the rotation.
    fn deliverable(&self) -> bool {
        self.pending > 0 && self.parked.is_none()
    }

    /// Whether nothing of the key is left: no ready and no leased messages.
    fn is_idle(&self) -> bool {
        self.pending == 0 && self.leased == 0
    }

    /// Where the key's state for `lane` (its throttle keys) is, if it has one.
    fn lane_position(&self, lane: &Lane) -> Option<usize> {
        self.lanes.iter().position(|l| l.lane.throttle == lane.throttle)
    }
}

pub struct QueueState {
    pub def: QueueDef,
    /// The queue's compiled scripts, if it has any.
    pub scripts: Option<QueueScripts>,
    pub name: Arc<str>,
    /// Keys with ready or leased messages. A key with neither has no entry:
    /// with nothing of it in storage, its cursors no longer matter.
    pub keys: KeyTable<KeyState>,
    /// Keys with deliverable messages, in DRR service order.
    pub drr: Drr<KeyId>,
    /// Operator overrides of key weights; they win over message weights.
    pub weight_overrides: FastMap<Arc<str>, u32>,
    /// Consumers with room in their window, in service order.
    pub waiting_consumers: VecDeque<ConsumerId>,
    pub consumers: u32,
    pub pending: u64,
    pub in_flight: u64,
    /// Messages waiting out a delay in storage (not in any lane yet).
    pub delayed: u64,
    pub counters: QueueCounters,
    /// Unreported deliveries of keys forgotten since the last metrics
    /// snapshot.
    pub retired_deliveries: Vec<(Arc<str>, u64)>,
}

impl QueueState {
    pub fn new(def: QueueDef) -> Self {
        QueueState {
            name: Arc::from(def.name.as_str()),
            drr: Drr::new(def.settings.quantum),
            scripts: None,
            def,
            keys: KeyTable::default(),
            weight_overrides: FastMap::default(),
            waiting_consumers: VecDeque::new(),
            consumers: 0,
            pending: 0,
            in_flight: 0,
            delayed: 0,
            counters: QueueCounters::default(),
            retired_deliveries: Vec::new(),
        }
    }

    /// The weight DRR uses for `key`.
    pub fn weight_of(&self, key: &str, state: &KeyState) -> u32 {
        effective_weight(&self.weight_overrides, key, state)
    }

    /// Records `count` new ready messages of a lane (committed to storage
    /// before they are read). `weight` is the weight they were sent with, if
    /// any. Returns the lane's state, whose lane has the interned keys: a
    /// map keyed by lanes compares interned keys by address (`Arc`'s
    /// equality tries that first) instead of reading the stored key, which
    /// among many keys is a cold cache line.
    pub fn add_ready(&mut self, lane: &Lane, count: u64, weight: Option<u32>) -> &mut LaneState {
        let (id, key, state) = self.keys.entry(&lane.fairness_key);
        let was_in_rotation = state.deliverable();
        let at = match state.lane_position(lane) {
            Some(at) => {
                state.lanes[at].pending += count;
                at
            }
            None => {
                state.lanes.push(LaneState {
                    lane: Lane::new(Arc::clone(key), lane.throttle.clone()),
                    pending: count,
                    leased: 0,
                    cursor: 0,
                    buffer: VecDeque::new(),
                    slot: LaneSlot::default(),
                });
                state.lanes.len() - 1
            }
        };
        if let Some(w) = weight {
            state.message_weight = w;
        }
        state.pending += count;
        self.pending += count;
        // New work may not be throttled: a parked key gets another look.
        state.parked = None;
        if !was_in_rotation && state.deliverable() {
            self.drr.join(id);
        }
        &mut state.lanes[at]
    }

    /// Puts a parked key back into the rotation if its ticket is current.
    pub fn unpark(&mut self, key: &str, ticket: u64) -> bool {
        let Some(id) = self.keys.id_of(key) else { return false };
        let (_, state) = self.keys.by_id_mut(id).expect("just found");
        if state.parked != Some(ticket) {
            return false;
        }
        state.parked = None;
        if state.pending > 0 {
            self.drr.join(id);
        }
        true
    }

    /// Records that a lease of `lane` (of the key `key`) ended; forgets the
    /// lane and the key once nothing of them is left.
    pub fn lease_ended(&mut self, key: KeyId, lane: &Lane) {
        self.in_flight -= 1;
        let Some((_, state)) = self.keys.by_id_mut(key) else { return };
        state.leased -= 1;
        if let Some(i) = state.lane_position(lane) {
            let l = &mut state.lanes[i];
            l.leased -= 1;
            if l.leased == 0 && l.pending == 0 {
                state.lanes.swap_remove(i);
            }
        }
        self.forget_if_idle(key);
    }

    /// Drops a key with no ready and no leased messages.
    pub fn forget_if_idle(&mut self, key: KeyId) {
        if !self.keys.by_id(key).is_some_and(|(_, state)| state.is_idle()) {
            return;
        }
        let (name, state) = self.keys.remove(key).expect("found above");
        if state.unreported_deliveries > 0 {
            self.retired_deliveries.push((name, state.unreported_deliveries));
        }
    }

    pub fn depth(&self) -> u64 {
        self.pending + self.in_flight + self.delayed
    }
}

/// Memory a buffered message is charged: its record, and its place in a
/// buffer with the record's allocation.
pub fn buffered_size(message: &StoredMessage) -> usize {
    message.record.len() + std::mem::size_of::<StoredMessage>() + 16
}

/// A key's weight: an operator override wins over message weights. (A free
/// function so the dispatcher can call it while it holds the key's state.)
pub fn effective_weight(overrides: &FastMap<Arc<str>, u32>, key: &str, state: &KeyState) -> u32 {
    // Without overrides, the key's name is not hashed: among many keys,
    // reading it is a cold cache line at every turn.
    if overrides.is_empty() {
        return state.message_weight;
    }
    overrides.get(key).copied().unwrap_or(state.message_weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{QueueSettings, ThrottleSet};

    fn queue() -> QueueState {
        QueueState::new(QueueDef {
            id: 1,
            name: "q".into(),
            settings: QueueSettings::default(),
            scripts: Default::default(),
        })
    }

    fn lane(key: &str, throttle: &[&str]) -> Lane {
        Lane::new(Arc::from(key), ThrottleSet::new(throttle))
    }

    #[test]
    fn a_key_joins_the_rotation_once_when_it_gets_work() {
        let mut q = queue();
        q.add_ready(&lane("a", &[]), 2, None);
        q.add_ready(&lane("a", &["x"]), 1, Some(3));
        assert_eq!(q.drr.len(), 1);
        assert_eq!((q.pending, q.keys["a"].pending, q.keys["a"].lanes.len()), (3, 3, 2));
        assert_eq!(q.weight_of("a", &q.keys["a"]), 3);
        q.weight_overrides.insert("a".into(), 7);
        assert_eq!(q.weight_of("a", &q.keys["a"]), 7);
    }

    #[test]
    fn the_lane_returned_for_new_work_holds_the_queues_own_keys() {
        let mut q = queue();
        let first = q.add_ready(&lane("a", &["x"]), 1, None).lane.clone();
        let again = q.add_ready(&lane("a", &["x"]), 1, None).lane.clone();
        let (interned, _) = q.keys.get_key_value("a").unwrap();
        assert!(Arc::ptr_eq(&first.fairness_key, interned) && Arc::ptr_eq(&again.fairness_key, interned));
        assert_eq!(again.throttle.keys().as_ptr(), q.keys["a"].lanes[0].lane.throttle.keys().as_ptr());
        assert_eq!(again, lane("a", &["x"]));
    }

    #[test]
    fn a_key_is_forgotten_when_nothing_of_it_remains() {
        let mut q = queue();
        let l = lane("a", &[]);
        q.add_ready(&l, 1, None);
        let state = q.keys.get_mut("a").unwrap();
        state.pending -= 1;
        state.leased += 1;
        state.lanes[0].pending -= 1;
        state.lanes[0].leased += 1;
        q.pending -= 1;
        q.in_flight += 1;
        q.drr.leave_front(&mut state.credit);
        q.lease_ended(q.keys.id_of("a").unwrap(), &l);
        assert!(q.keys.is_empty());
        assert_eq!(q.depth(), 0);
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage { seq, id: crate::domain::MessageId::generate(), record: "r".into() }
    }

    #[test]
    fn a_stored_message_is_buffered_only_when_the_lane_is_caught_up() {
        let mut q = queue();
        let l = lane("a", &[]);
        assert!(q.add_ready(&l, 1, None).buffer_if_caught_up(stored(1), 8), "an empty lane is caught up");
        assert!(q.add_ready(&l, 1, None).buffer_if_caught_up(stored(2), 8));
        assert_eq!(q.keys["a"].lanes[0].cursor, 2);
        // A message counted but left in storage: later ones must wait for
        // the read, or they would overtake it.
        q.add_ready(&l, 1, None);
        assert!(!q.add_ready(&l, 1, None).buffer_if_caught_up(stored(4), 8));
        assert_eq!(q.keys["a"].lanes[0].buffer.len(), 2);
    }

    #[test]
    fn a_lane_keeps_at_most_its_share_of_stored_messages_in_memory() {
        let mut q = queue();
        let l = lane("a", &[]);
        for seq in 1..=3 {
            assert_eq!(q.add_ready(&l, 1, None).buffer_if_caught_up(stored(seq), 2), seq <= 2);
        }
        let lane = &q.keys["a"].lanes[0];
        assert_eq!((lane.buffer.len(), lane.cursor, lane.pending), (2, 2, 3));
        // The third is read from storage after the cursor, in order.
        assert!(!q.add_ready(&l, 1, None).buffer_if_caught_up(stored(4), 2));
    }

    #[test]
    fn new_work_unparks_a_key() {
        let mut q = queue();
        q.add_ready(&lane("a", &["x"]), 1, None);
        let state = q.keys.get_mut("a").unwrap();
        q.drr.leave_front(&mut state.credit);
        state.parked = Some(9);
        assert!(q.drr.is_empty());
        q.add_ready(&lane("a", &[]), 1, None);
        assert_eq!(q.drr.len(), 1);
        assert!(!q.unpark("a", 9), "the old ticket is stale");
        assert_eq!(q.drr.len(), 1);
    }
}
