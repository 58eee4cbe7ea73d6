//! The tally journal: one entry per commit holding the change to the tally
//! of every lane the commit touched, under a rising key, so a commit writes
//! one entry at the end of the journal however many lanes it touches
//! (a merge per lane into `lane_tallies` made the flushes sort and merge
//! about one operand per message with many active lanes).
//!
//! Past [`CHECKPOINT_BYTES`] of entries the store checkpoints: it writes
//! the whole tally of every lane changed since the last checkpoint into
//! `lane_tallies`, in key order, and deletes the journal entries they
//! hold, in one batch, written on a thread of its own while commits go on
//! (see `checkpoint_writer.rs`). Recovery reads the tallies, replays the
//! journal over them, and checkpoints at once.
//!
//! An entry is varints: the highest sequence stored so far (0 if the
//! commit stored none), then per lane its number and its delta: count
//! (zigzag), highest sequence, weight sequence, weight, floor, then the
//! opened and the closed sequences (a count, then the first and the gaps to
//! each next one). Lanes are numbered from 0 in the order the journal first
//! mentions them after a checkpoint (so a journal whose checkpoint had not
//! landed holds a numbering per checkpoint since the last one that did,
//! each starting at 0), and only that first mention carries
//! the lane's `lane_tallies` key (a lane's number, twice plus one, then
//! the key's length and bytes; later ones, twice the number): with many
//! active lanes the keys were two thirds of the journal, and the journal's
//! bytes set how often a checkpoint writes every changed lane's tally.
//! Entries of this form are under keys with the top bit set; entries of
//! the form before, which named every lane by its key, are still read.

use std::sync::Arc;

use prost::encoding::{decode_varint, encode_varint};

use super::tally::Tally;

/// Journal bytes between checkpoints: what recovery replays at most.
pub const CHECKPOINT_BYTES: usize = 16 * 1024 * 1024;

/// The top bit of the keys of entries whose lanes are numbered.
const NUMBERED: u64 = 1 << 63;

/// The journal entry of the `n`th commit since the last checkpoint.
pub fn key(n: u64) -> [u8; 8] {
    (NUMBERED | n).to_be_bytes()
}

/// From the first to past the last key of any journal entry, of either form.
pub const ALL_KEYS: ([u8; 8], [u8; 8]) = ([0; 8], [0xff; 8]);

/// Whether the entry under `key` numbers its lanes (or, in the form before,
/// names each by its key).
pub fn numbers_lanes(key: &[u8]) -> bool {
    key.first().is_some_and(|byte| byte & 0x80 != 0)
}

/// Starts an entry.
pub fn start_entry(out: &mut Vec<u8>, seq_high: u64) {
    encode_varint(seq_high, out);
}

/// Appends one lane's delta to an entry: the lane by its number, and by its
/// `lane_tallies` key too the first time after a checkpoint.
pub fn push_lane(out: &mut Vec<u8>, number: u64, first_key: Option<&[u8]>, delta: &Tally) {
    encode_varint(number << 1 | u64::from(first_key.is_some()), out);
    if let Some(key) = first_key {
        encode_varint(key.len() as u64, out);
        out.extend_from_slice(key);
    }
    push_delta(out, delta);
}

/// Appends one lane's delta in the form before lanes were numbered (its
/// key every time), for tests of how such entries are read.
#[cfg(test)]
pub fn push_named_lane(out: &mut Vec<u8>, key: &[u8], delta: &Tally) {
    encode_varint(key.len() as u64, out);
    out.extend_from_slice(key);
    push_delta(out, delta);
}

fn push_delta(out: &mut Vec<u8>, delta: &Tally) {
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

/// Decodes an entry; `names` holds the keys of the lanes numbered by the
/// entries before it (since the last checkpoint), and gains those this one
/// numbers. An entry whose lanes are numbered afresh (the first after a
/// checkpoint, its first lane numbered 0) starts `names` over. `numbered`
/// says which form the entry has (see [`numbers_lanes`]).
pub fn decode(mut bytes: &[u8], numbered: bool, names: &mut Vec<Vec<u8>>) -> Option<Entry> {
    let buf = &mut bytes;
    let mut entry = Entry { seq_high: decode_varint(buf).ok()?, lanes: Vec::new() };
    while !buf.is_empty() {
        let key = if numbered {
            let tag = decode_varint(buf).ok()?;
            let number = usize::try_from(tag >> 1).ok()?;
            if tag & 1 == 1 {
                // A lane numbered 0 starts the numbering after a checkpoint
                // whose tallies had not landed (see `checkpoint_writer.rs`).
                if number == 0 {
                    names.clear();
                }
                // Numbers are given in order: the next is the count so far.
                if number != names.len() {
                    return None;
                }
                names.push(decode_key(buf)?);
            }
            names.get(number)?.clone()
        } else {
            decode_key(buf)?
        };
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

fn decode_key(buf: &mut &[u8]) -> Option<Vec<u8>> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    let key = buf.get(..len)?.to_vec();
    *buf = &buf[len..];
    Some(key)
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
    /// Lanes numbered since the last checkpoint: the next lane's number.
    pub numbered: u64,
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
            numbered: 0,
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

    /// Starts over after a checkpoint: no lane changed or numbered since.
    /// The entries' keys go on rising: until the checkpoint lands, the
    /// entries before it are still there.
    pub fn checkpointed(&mut self) {
        self.numbered = 0;
        self.bytes = 0;
        self.emptied.clear();
        self.logged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_naming_each_lane_once() {
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
        let mut first = Vec::new();
        start_entry(&mut first, 1_000);
        push_lane(&mut first, 0, Some(b"lane-a"), &a);
        push_lane(&mut first, 1, Some(b""), &b);
        let mut second = Vec::new();
        start_entry(&mut second, 0);
        push_lane(&mut second, 1, None, &a);
        push_lane(&mut second, 2, Some(b"lane-c"), &b);
        push_lane(&mut second, 0, None, &b);

        let mut names = Vec::new();
        assert_eq!(
            decode(&first, true, &mut names),
            Some(Entry { seq_high: 1_000, lanes: vec![(b"lane-a".to_vec(), a.clone()), (Vec::new(), b.clone())] })
        );
        assert_eq!(
            decode(&second, true, &mut names),
            Some(Entry {
                seq_high: 0,
                lanes: vec![(Vec::new(), a), (b"lane-c".to_vec(), b.clone()), (b"lane-a".to_vec(), b)]
            })
        );
        assert_eq!(decode(&second[..second.len() - 1], true, &mut names.clone()), None, "a cut entry");
        assert_eq!(decode(&second, true, &mut Vec::new()), None, "lane 1 was never named");
        let mut skipping = Vec::new();
        start_entry(&mut skipping, 0);
        push_lane(&mut skipping, 1, Some(b"lane-b"), &Tally::default());
        assert_eq!(decode(&skipping, true, &mut Vec::new()), None, "lane 0 was never named");
    }

    #[test]
    fn a_numbering_from_0_again_starts_over_after_a_checkpoint_that_had_not_landed() {
        let delta = Tally { count: 1, ..Tally::default() };
        let entry = |lanes: &[(u64, Option<&[u8]>)]| {
            let mut entry = Vec::new();
            start_entry(&mut entry, 0);
            for &(number, key) in lanes {
                push_lane(&mut entry, number, key, &delta);
            }
            entry
        };
        let mut names = Vec::new();
        let before = entry(&[(0, Some(b"lane-a")), (1, Some(b"lane-b"))]);
        let after = entry(&[(0, Some(b"lane-b")), (0, None), (1, Some(b"lane-c"))]);
        decode(&before, true, &mut names).unwrap();
        let lanes: Vec<Vec<u8>> = decode(&after, true, &mut names).unwrap().lanes.into_iter().map(|(k, _)| k).collect();
        assert_eq!(lanes, [&b"lane-b"[..], b"lane-b", b"lane-c"]);
        assert_eq!(names, [&b"lane-b"[..], b"lane-c"]);
    }

    #[test]
    fn entries_of_the_form_before_are_read() {
        let delta = Tally { count: 1, max_seq: 7, open: vec![7], ..Tally::default() };
        let mut entry = Vec::new();
        start_entry(&mut entry, 7);
        for key in [&b"lane-a"[..], b"lane-b"] {
            push_named_lane(&mut entry, key, &delta);
        }
        let expected =
            Entry { seq_high: 7, lanes: vec![(b"lane-a".to_vec(), delta.clone()), (b"lane-b".to_vec(), delta)] };
        assert_eq!(decode(&entry, false, &mut Vec::new()), Some(expected));
        assert!(!numbers_lanes(&0u64.to_be_bytes()) && numbers_lanes(&key(0)));
    }
}
