//! Per-lane tallies: what recovery reads about each lane, one entry per lane
//! whatever the depth. A tally holds how many messages the lane holds, its
//! highest sequence, the newest weight sent with one of its
//! messages, and the lane's *open* sequences: those not yet written into a
//! sealed chunk of the lane index (see `lane_index.rs`).
//!
//! A commit's deltas (messages added and removed, sequences opened and
//! closed) go into the journal and a checkpoint writes whole tallies (see
//! `journal.rs`). Deltas compose, and `lane_tallies` keeps a merge operator
//! for the deltas that versions before the journal merged per commit and
//! for the raised floors that the upgrade from the lane-ordered layout
//! merges (see `upgrade.rs`).

use rocksdb::MergeOperands;

pub const MERGE_OPERATOR: &str = "fila.lane_tally.v1";
/// Length of a tally written before open sequences existed (28 raw bytes).
const V1_LEN: usize = 28;
/// First byte of a tally in the current encoding. A first-version tally
/// starts with the high byte of a count, 0x00 or 0xff.
const V2_TAG: u8 = 2;

/// One lane's tally, or a change to it (the same shape).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Tally {
    /// Messages stored (a delta may be negative).
    #[prost(sint64, tag = "1")]
    pub count: i64,
    #[prost(uint64, tag = "2")]
    pub max_seq: u64,
    /// Sequence of the newest message that carried a weight, and that
    /// weight; (0, 0) for none.
    #[prost(uint64, tag = "3")]
    pub weight_seq: u64,
    #[prost(uint32, tag = "4")]
    pub weight: u32,
    /// No open sequence is below this one: everything older is in a sealed
    /// chunk or gone. Only ever rises.
    #[prost(uint64, tag = "5")]
    pub floor: u64,
    /// Sequences opened (stored and not in a sealed chunk), ascending.
    #[prost(uint64, repeated, tag = "6")]
    pub open: Vec<u64>,
    /// Sequences closed out of order (above the floor) whose opening is in
    /// an older value; only a delta carries these.
    #[prost(uint64, repeated, tag = "7")]
    pub closed: Vec<u64>,
}

impl Tally {
    /// What a lane's stored tally is after `newer` (a later delta).
    pub fn absorb(&mut self, newer: &Tally) {
        self.count += newer.count;
        self.max_seq = self.max_seq.max(newer.max_seq);
        if newer.weight_seq > self.weight_seq {
            self.weight_seq = newer.weight_seq;
            self.weight = newer.weight;
        }
        self.floor = self.floor.max(newer.floor);
        // A sequence is opened once and closed at most once, after.
        let mut reopened = Vec::new();
        for &seq in &newer.closed {
            match self.open.binary_search(&seq) {
                Ok(i) => {
                    self.open.remove(i);
                }
                Err(_) => reopened.push(seq),
            }
        }
        self.closed.extend(reopened);
        self.open.extend_from_slice(&newer.open);
        let floor = self.floor;
        self.open.retain(|&s| s >= floor);
        self.closed.retain(|&s| s >= floor);
        self.closed.sort_unstable();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + prost::Message::encoded_len(self));
        out.push(V2_TAG);
        prost::Message::encode(self, &mut out).expect("a Vec grows as needed");
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.first() {
            Some(&V2_TAG) => prost::Message::decode(&bytes[1..]).ok(),
            _ if bytes.len() == V1_LEN => {
                let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
                Some(Tally {
                    count: u64_at(0) as i64,
                    max_seq: u64_at(8),
                    weight_seq: u64_at(16),
                    weight: u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes")),
                    ..Tally::default()
                })
            }
            _ => None,
        }
    }
}

fn fold(existing: Option<&[u8]>, operands: &MergeOperands) -> Tally {
    let mut tally = existing.and_then(Tally::decode).unwrap_or_default();
    // A malformed operand (never written by this code) is skipped rather
    // than failing every read of the key.
    for delta in operands.into_iter().filter_map(Tally::decode) {
        tally.absorb(&delta);
    }
    tally
}

/// Full merge: the stored value with every delta applied. Closings that
/// found nothing to close refer to nothing older, and are dropped.
pub fn full_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut tally = fold(existing, operands);
    tally.closed.clear();
    Some(tally.encode())
}

/// Partial merge: deltas folded into one, keeping the closings of
/// sequences opened in older values.
pub fn partial_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    Some(fold(existing, operands).encode())
}
