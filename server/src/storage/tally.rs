//! Per-lane tallies: how many messages each lane holds in `messages`, its
//! highest sequence, and the newest weight sent with one of its messages.
//!
//! Recovery reads these (one entry per lane) instead of scanning an index
//! entry per message, so restart time grows with the number of lanes, not
//! with queue depth. They are kept with a RocksDB merge operator: a commit
//! writes one small delta per lane it touched, never reading the old value.

use rocksdb::MergeOperands;

use crate::domain::{Lane, QueueId};
use crate::fast_map::FastMap;

pub const MERGE_OPERATOR: &str = "fila.lane_tally.v1";
const ENCODED_LEN: usize = 28;

/// One lane's tally, or a change to it (the same shape: deltas merge by
/// adding counts and keeping the newest sequence and weight).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages stored (a delta may be negative).
    pub count: i64,
    pub max_seq: u64,
    /// Sequence of the newest message that carried a weight, and that
    /// weight; (0, 0) for none.
    pub weight_seq: u64,
    pub weight: u32,
}

impl Tally {
    pub fn put(seq: u64, weight: u32) -> Self {
        let (weight_seq, weight) = if weight > 0 { (seq, weight) } else { (0, 0) };
        Tally { count: 1, max_seq: seq, weight_seq, weight }
    }

    pub fn delete() -> Self {
        Tally { count: -1, ..Tally::default() }
    }

    pub fn absorb(&mut self, other: &Tally) {
        self.count += other.count;
        self.max_seq = self.max_seq.max(other.max_seq);
        if other.weight_seq > self.weight_seq {
            self.weight_seq = other.weight_seq;
            self.weight = other.weight;
        }
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0..8].copy_from_slice(&self.count.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.weight_seq.to_be_bytes());
        out[24..28].copy_from_slice(&self.weight.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Tally {
            count: u64_at(0) as i64,
            max_seq: u64_at(8),
            weight_seq: u64_at(16),
            weight: u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes")),
        })
    }
}

/// The merge operator: folds deltas into the stored tally. A malformed
/// operand (never written by this code) is skipped rather than failing
/// every read of the key.
pub fn merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut tally = existing.and_then(Tally::decode).unwrap_or_default();
    for operand in operands {
        if let Some(delta) = Tally::decode(operand) {
            tally.absorb(&delta);
        }
    }
    Some(tally.encode().to_vec())
}

/// The deltas of one commit, one per lane touched.
#[derive(Default)]
pub struct Deltas {
    by_lane: FastMap<(QueueId, Lane), Tally>,
}

impl Deltas {
    pub fn add(&mut self, queue: QueueId, lane: &Lane, delta: Tally) {
        match self.by_lane.get_mut(&(queue, lane.clone())) {
            Some(tally) => tally.absorb(&delta),
            None => {
                self.by_lane.insert((queue, lane.clone()), delta);
            }
        }
    }

    /// Forgets the deltas of a queue being deleted (its tallies go with a
    /// range delete).
    pub fn drop_queue(&mut self, queue: QueueId) {
        self.by_lane.retain(|(q, _), _| *q != queue);
    }

    pub fn into_iter(self) -> impl Iterator<Item = ((QueueId, Lane), Tally)> {
        self.by_lane.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_and_keep_the_newest_weight() {
        let mut t = Tally::put(5, 3);
        t.absorb(&Tally::put(9, 0));
        t.absorb(&Tally::put(7, 4));
        t.absorb(&Tally::delete());
        assert_eq!(t, Tally { count: 2, max_seq: 9, weight_seq: 7, weight: 4 });
        assert_eq!(Tally::decode(&t.encode()), Some(t));
        let mut negative = Tally::delete();
        negative.absorb(&Tally::delete());
        assert_eq!(Tally::decode(&negative.encode()).unwrap().count, -2);
        assert_eq!(Tally::decode(b"short"), None);
    }
}
