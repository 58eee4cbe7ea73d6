//! In-memory state of one queue: its fairness keys, the rotation of keys
//! with ready messages, and the consumers waiting for work.
//!
//! Messages themselves stay in storage. Per fairness key the scheduler keeps
//! counters, a cursor (the highest sequence already taken from storage) and
//! a small read-ahead buffer, so memory grows with active keys and leases,
//! not with queue depth.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::consumers::ConsumerId;
use crate::storage::{QueueDef, StoredMessage};

#[derive(Debug, Default)]
pub struct KeyState {
    /// Ready messages (buffered or still only in storage).
    pub pending: u64,
    /// Messages of this key currently leased.
    pub leased: u64,
    /// Highest sequence read from storage. Ready messages in storage all have
    /// a higher sequence: retried messages are re-sequenced at the tail.
    pub cursor: u64,
    /// Messages read ahead of delivery, in order.
    pub buffer: VecDeque<StoredMessage>,
}

pub struct QueueState {
    pub def: QueueDef,
    pub name: Arc<str>,
    /// Keys with ready or leased messages. A key with neither has no entry:
    /// with nothing of it in storage, its cursor no longer matters.
    pub keys: HashMap<Arc<str>, KeyState>,
    /// Keys with ready messages, in service order (round robin).
    pub rotation: VecDeque<Arc<str>>,
    /// Consumers with room in their window, in service order.
    pub waiting_consumers: VecDeque<ConsumerId>,
    pub consumers: u32,
    pub pending: u64,
    pub in_flight: u64,
}

impl QueueState {
    pub fn new(def: QueueDef) -> Self {
        QueueState {
            name: Arc::from(def.name.as_str()),
            def,
            keys: HashMap::new(),
            rotation: VecDeque::new(),
            waiting_consumers: VecDeque::new(),
            consumers: 0,
            pending: 0,
            in_flight: 0,
        }
    }

    /// Interns a fairness key, so leases and the rotation share one copy.
    pub fn intern_key(&mut self, key: &str) -> Arc<str> {
        match self.keys.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k: Arc<str> = Arc::from(key);
                self.keys.insert(Arc::clone(&k), KeyState::default());
                k
            }
        }
    }

    /// Records `count` new ready messages of a key (committed to storage
    /// before they are read).
    pub fn add_ready(&mut self, key: &Arc<str>, count: u64) {
        let state = self.keys.entry(Arc::clone(key)).or_default();
        if state.pending == 0 && count > 0 {
            self.rotation.push_back(Arc::clone(key));
        }
        state.pending += count;
        self.pending += count;
    }

    /// Records that a lease of `key` ended; forgets the key once nothing of
    /// it is left.
    pub fn lease_ended(&mut self, key: &str) {
        self.in_flight -= 1;
        if let Some(state) = self.keys.get_mut(key) {
            state.leased -= 1;
            if state.leased == 0 && state.pending == 0 {
                self.keys.remove(key);
            }
        }
    }

    pub fn depth(&self) -> u64 {
        self.pending + self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::QueueSettings;

    fn queue() -> QueueState {
        QueueState::new(QueueDef { id: 1, name: "q".into(), settings: QueueSettings::default() })
    }

    #[test]
    fn a_key_joins_the_rotation_once_when_it_gets_work() {
        let mut q = queue();
        let a = q.intern_key("a");
        q.add_ready(&a, 2);
        q.add_ready(&a, 1);
        assert_eq!(q.rotation.len(), 1);
        assert_eq!((q.pending, q.keys["a"].pending), (3, 3));
    }

    #[test]
    fn a_key_is_forgotten_when_nothing_of_it_remains() {
        let mut q = queue();
        let a = q.intern_key("a");
        q.add_ready(&a, 1);
        let state = q.keys.get_mut("a").unwrap();
        state.pending -= 1;
        state.leased += 1;
        q.pending -= 1;
        q.in_flight += 1;
        q.rotation.pop_front();
        q.lease_ended("a");
        assert!(q.keys.is_empty());
        assert_eq!(q.depth(), 0);
    }
}
