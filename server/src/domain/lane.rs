//! Lanes: the unit of FIFO order inside a queue.
//!
//! A lane holds the messages of one fairness key that carry the same set of
//! throttle keys. Messages of a lane are delivered in arrival order; lanes of
//! one fairness key are merged by arrival order, except that a lane whose
//! throttle keys have no tokens is skipped, so a throttled provider never
//! holds back the same tenant's work for an unthrottled one.

use std::sync::Arc;

/// The throttle keys of a message, sorted and without duplicates, so every
/// message with the same keys lands in the same lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ThrottleSet(Arc<[Arc<str>]>);

impl ThrottleSet {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        let mut keys: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_ref())).collect();
        keys.sort();
        keys.dedup();
        ThrottleSet(keys.into())
    }

    pub fn keys(&self) -> &[Arc<str>] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Identifies a lane within a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    pub fairness_key: Arc<str>,
    pub throttle: ThrottleSet,
}

impl Lane {
    pub fn new(fairness_key: Arc<str>, throttle: ThrottleSet) -> Self {
        Lane { fairness_key, throttle }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_sets_ignore_order_and_duplicates() {
        assert_eq!(ThrottleSet::new(&["b", "a", "b"]), ThrottleSet::new(&["a", "b"]));
        assert_eq!(ThrottleSet::new(&["a", "b"]).keys().len(), 2);
        assert!(ThrottleSet::new::<&str>(&[]).is_empty());
    }
}
