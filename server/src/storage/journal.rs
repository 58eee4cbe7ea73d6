//! The tally journal: one entry per commit holding the change to the tally
//! of every lane the commit touched, under a rising key, so a commit writes
//! one entry at the end of the journal however many lanes it touches
//! (a merge per lane into `lane_tallies` made the flushes sort and merge
//! about one operand per message with many active lanes).
//!
//! Past [`CHECKPOINT_BYTES`] of entries the store checkpoints: it writes
//! the whole tally of every lane changed since the last checkpoint into
//! `lane_tallies`, in key order, and deletes the journal, in one batch.
//! Recovery reads the tallies, replays the journal over them, and
//! checkpoints at once.
//!
//! An entry is varints: the highest sequence stored so far (0 if the
//! commit stored none), then per lane its `lane_tallies` key (length and
//! bytes), and its delta: count (zigzag), highest sequence, weight
//! sequence, weight, floor, then the opened and the closed sequences (a
//! count, then the first and the gaps to each next one).

use std::sync::Arc;

use prost::encoding::{decode_varint, encode_varint};

use super::tally::Tally;

/// Journal bytes between checkpoints: what recovery replays at most.
pub const CHECKPOINT_BYTES: usize = 16 * 1024 * 1024;

/// `n(8)`: the journal entry of the `n`th commit since the last checkpoint.
pub fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Starts an entry.
pub fn start_entry(out: &mut Vec<u8>, seq_high: u64) {
    encode_varint(seq_high, out);
}

/// Appends one lane's delta to an entry.
pub fn push_lane(out: &mut Vec<u8>, key: &[u8], delta: &Tally) {
    encode_varint(key.len() as u64, out);
    out.extend_from_slice(key);
    encode_varint(((delta.count << 1) ^ (delta.count >> 63)) as u64, out);
    for value in [delta.max_seq, delta.weight_seq, u64::from(delta.weight), delta.floor] {
        encode_varint(value, out);
    }
    push_seqs(out, &delta.open);
    push_seqs(out, &delta.closed);
}

/// Ascending sequences: a count, the first, then the gaps.
fn push_seqs(out: &mut Vec<u8>, seqs: &[u64]) {
    encode_varint(seqs.len() as u64, out);
    let mut previous = 0;
    for &seq in seqs {
        encode_varint(seq - previous, out);
        previous = seq;
    }
}

/// A decoded entry.
#[derive(Debug, Default, PartialEq)]
pub struct Entry {
    pub seq_high: u64,
    /// Each lane's `lane_tallies` key and delta.
    pub lanes: Vec<(Vec<u8>, Tally)>,
}

pub fn decode(mut bytes: &[u8]) -> Option<Entry> {
    let buf = &mut bytes;
    let mut entry = Entry { seq_high: decode_varint(buf).ok()?, lanes: Vec::new() };
    while !buf.is_empty() {
        let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
        let key = buf.get(..len)?.to_vec();
        *buf = &buf[len..];
        let zigzag = decode_varint(buf).ok()?;
        let mut tally = Tally { count: ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64), ..Tally::default() };
        tally.max_seq = decode_varint(buf).ok()?;
        tally.weight_seq = decode_varint(buf).ok()?;
        tally.weight = u32::try_from(decode_varint(buf).ok()?).ok()?;
        tally.floor = decode_varint(buf).ok()?;
        tally.open = decode_seqs(buf)?;
        tally.closed = decode_seqs(buf)?;
        entry.lanes.push((key, tally));
    }
    Some(entry)
}

fn decode_seqs(buf: &mut &[u8]) -> Option<Vec<u64>> {
    let count = decode_varint(buf).ok()?;
    let mut seqs = Vec::with_capacity(count.min(1024) as usize);
    let mut previous = 0u64;
    for _ in 0..count {
        previous = previous.checked_add(decode_varint(buf).ok()?)?;
        seqs.push(previous);
    }
    Some(seqs)
}

/// What the store remembers between checkpoints.
pub struct Journal {
    /// Key of the next entry.
    pub next: u64,
    /// Bytes of entries since the last checkpoint.
    pub bytes: usize,
    /// The `lane_tallies` keys of lanes emptied (and forgotten) since the
    /// last checkpoint; a key may appear twice. (Lanes that are still there
    /// know themselves whether they changed.)
    pub emptied: Vec<Arc<[u8]>>,
    /// Checkpoint past this many bytes of entries.
    pub checkpoint_bytes: usize,
    /// A checkpoint seals a lane whose oldest open message is this many
    /// sequences old (see `log_gc.rs`).
    pub max_open_age: u64,
    /// Bytes put to the log since its horizon last rose.
    pub logged: usize,
    /// Between checkpoints, the horizon rises past this many bytes of log.
    pub horizon_every_bytes: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            next: 0,
            bytes: 0,
            emptied: Vec::new(),
            checkpoint_bytes: CHECKPOINT_BYTES,
            max_open_age: super::log_gc::MAX_OPEN_AGE,
            logged: 0,
            horizon_every_bytes: super::log_gc::HORIZON_EVERY_BYTES,
        }
    }
}

impl Journal {
    pub fn due(&self) -> bool {
        self.bytes >= self.checkpoint_bytes
    }

    /// Starts over after a checkpoint: no entries, no lane changed since.
    pub fn checkpointed(&mut self) {
        self.next = 0;
        self.bytes = 0;
        self.emptied.clear();
        self.logged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let a = Tally {
            count: -3,
            max_seq: 90,
            weight_seq: 80,
            weight: 4,
            floor: 70,
            open: vec![71, 75, 90],
            closed: vec![72],
        };
        let b = Tally { count: 2, floor: 5, ..Tally::default() };
        let mut out = Vec::new();
        start_entry(&mut out, 1_000);
        push_lane(&mut out, b"lane-a", &a);
        push_lane(&mut out, b"", &b);
        let entry = decode(&out).unwrap();
        assert_eq!(entry, Entry { seq_high: 1_000, lanes: vec![(b"lane-a".to_vec(), a), (Vec::new(), b)] });
        assert_eq!(decode(&out[..out.len() - 1]), None, "a cut entry");
    }
}
