//! Byte layout of storage keys. Big-endian integers keep numeric order equal
//! to byte order, so RocksDB's sorted keys give the scheduler its order:
//!
//! - `message_log`: `queue(8) | seq(8)` → `id(16) | record`: every stored
//!   message of a queue in the order it was stored, so a commit's writes
//!   land at the end of the log and acknowledgements near its start,
//!   whatever lanes the messages belong to.
//! - `lane_chunks`: `queue(8) | lane | last_seq(8)` → the messages (ids
//!   and records) of a sealed chunk of the lane's index, where
//!   `lane = key_len(2) | fairness_key | count(1) | (len(2) | throttle_key)*`:
//!   a lane's chunks are one contiguous range in sequence order, so "the
//!   next messages of lane L" is one seek (see `lane_index.rs`).
//! - `message_index`: `queue(8) | message_id(16)` → `lane | seq(8) | weight(4)`:
//!   finds a message by id (stale-lease checks, peek/explain).
//! - `lane_tallies`: `queue(8) | lane` → message count, highest sequence,
//!   newest weight and open sequences of the lane, written by checkpoints
//!   (see `journal.rs`): what recovery reads, one entry per lane.
//! - `weights`: `queue(8) | key_len(2) | fairness_key` → `weight(4)`:
//!   operator overrides of fairness weights.
//! - `queues`: queue name → queue definition; `throttles`: throttle key →
//!   limit.
//!
//! Everything of one queue starts with its id, so deleting a queue is one
//! range delete per column family.

use std::sync::Arc;

use crate::domain::{Lane, MessageId, QueueId, ThrottleSet};

pub fn queue_prefix(queue: QueueId) -> [u8; 8] {
    queue.to_be_bytes()
}

/// The key range `[start, end)` that holds all entries of `queue`.
pub fn queue_range(queue: QueueId) -> ([u8; 8], [u8; 8]) {
    (queue_prefix(queue), queue_prefix(queue + 1))
}

/// `queue(8) | seq(8)`: a message in its queue's log.
pub fn log_key(queue: QueueId, seq: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&queue_prefix(queue));
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Appends `id(16) | record`, a message's log entry (and, before the log,
/// its entry in the lane-ordered `messages` family), to `out`.
pub fn push_log_value(out: &mut Vec<u8>, id: MessageId, record: &[u8]) {
    out.extend_from_slice(&id.to_bytes());
    out.extend_from_slice(record);
}

/// Parses a log entry into the message's id and record.
pub fn parse_log_value(value: &[u8]) -> Option<(MessageId, &[u8])> {
    Some((MessageId::from_slice(value.get(..16)?)?, &value[16..]))
}

/// A message as a sealed chunk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMessage<'a> {
    pub seq: u64,
    pub id: MessageId,
    pub record: &'a [u8],
}

/// Appends a message to a sealed chunk's value, which is, per message
/// (ascending): the gap from the previous sequence (the first: from 0) as a
/// varint, `id(16)`, the record's length as a varint, and the record.
pub fn push_chunk_message(out: &mut Vec<u8>, previous_seq: u64, seq: u64, id: MessageId, record: &[u8]) {
    prost::encoding::encode_varint(seq - previous_seq, out);
    out.extend_from_slice(&id.to_bytes());
    prost::encoding::encode_varint(record.len() as u64, out);
    out.extend_from_slice(record);
}

/// Parses a chunk value into its messages, ascending.
pub fn parse_chunk_value(bytes: &[u8]) -> Option<Vec<ChunkMessage<'_>>> {
    chunk_messages(bytes).collect()
}

/// A chunk value's messages, ascending, each parsed when it is reached
/// (`None` for a corrupt value, then nothing more): a read that wants the
/// next few messages of a large chunk stops there.
pub fn chunk_messages(bytes: &[u8]) -> ChunkMessages<'_> {
    ChunkMessages { bytes, seq: 0 }
}

/// A chunk value's messages from a position an earlier parse reached
/// ([`ChunkMessages::offset_in`], [`ChunkMessages::seq`]).
pub fn chunk_messages_from(bytes: &[u8], offset: usize, seq: u64) -> Option<ChunkMessages<'_>> {
    Some(ChunkMessages { bytes: bytes.get(offset..)?, seq })
}

pub struct ChunkMessages<'a> {
    bytes: &'a [u8],
    seq: u64,
}

impl<'a> ChunkMessages<'a> {
    /// Where the next message starts in `value`, the value being parsed.
    pub fn offset_in(&self, value: &[u8]) -> usize {
        value.len() - self.bytes.len()
    }

    /// The sequence of the last message parsed (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn parse_next(&mut self) -> Option<ChunkMessage<'a>> {
        let bytes = &mut self.bytes;
        self.seq = self.seq.checked_add(prost::encoding::decode_varint(bytes).ok()?)?;
        let id = MessageId::from_slice(bytes.get(..16)?)?;
        *bytes = &bytes[16..];
        let len = usize::try_from(prost::encoding::decode_varint(bytes).ok()?).ok()?;
        let record = bytes.get(..len)?;
        *bytes = &bytes[len..];
        Some(ChunkMessage { seq: self.seq, id, record })
    }
}

impl<'a> Iterator for ChunkMessages<'a> {
    type Item = Option<ChunkMessage<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let message = self.parse_next();
        if message.is_none() {
            self.bytes = &[];
        }
        Some(message)
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_lane(out: &mut Vec<u8>, lane: &Lane) {
    push_str(out, &lane.fairness_key);
    out.push(lane.throttle.keys().len() as u8);
    for key in lane.throttle.keys() {
        push_str(out, key);
    }
}

/// `queue(8) | lane | seq(8)`: a lane's sealed chunk ending at `seq`. (The
/// `messages` family of data directories written before the log existed
/// keyed each message so, by its own sequence.)
pub fn chunk_key(queue: QueueId, lane: &Lane, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    out.extend_from_slice(&queue_prefix(queue));
    encode_lane(&mut out, lane);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// Appends the index value, the message's location and the weight it was
/// sent with, to `out`: `lane | seq(8) | weight(4)`.
pub fn push_index_value(out: &mut Vec<u8>, lane: &Lane, seq: u64, weight: u32) {
    encode_lane(out, lane);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn lane(&mut self) -> Option<Lane> {
        let fairness_key = self.str()?;
        let count = self.take(1)?[0] as usize;
        let mut throttle = Vec::with_capacity(count);
        for _ in 0..count {
            throttle.push(self.str()?);
        }
        Some(Lane::new(Arc::from(fairness_key), ThrottleSet::new(&throttle)))
    }
}

/// Where the index says a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub lane: Lane,
    /// Sequence in the lane (0 while delayed).
    pub seq: u64,
    pub weight: u32,
    /// Set while the message waits in `delayed` until this time (Unix ms).
    pub due_ms: Option<u64>,
}

/// Appends the index value of a delayed message, its lane, weight and due
/// time, to `out`.
pub fn push_delayed_index_value(out: &mut Vec<u8>, lane: &Lane, weight: u32, due_ms: u64) {
    push_index_value(out, lane, 0, weight);
    out.extend_from_slice(&due_ms.to_be_bytes());
}

/// Parses an index value (ready or delayed).
pub fn parse_index_value(bytes: &[u8]) -> Option<IndexEntry> {
    let mut r = Reader(bytes);
    let lane = r.lane()?;
    let seq = r.u64()?;
    let weight = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let due_ms = if r.0.is_empty() { None } else { Some(r.u64()?) };
    r.0.is_empty().then_some(IndexEntry { lane, seq, weight, due_ms })
}

/// `due_ms(8) | queue(8) | message_id(16)`: delayed messages in due order
/// across all queues, so "what is due now" is a scan from the start.
pub fn delayed_key(due_ms: u64, queue: QueueId, id: MessageId) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&due_ms.to_be_bytes());
    out[8..16].copy_from_slice(&queue_prefix(queue));
    out[16..].copy_from_slice(&id.to_bytes());
    out
}

pub fn parse_delayed_key(key: &[u8]) -> Option<(u64, QueueId, MessageId)> {
    let mut r = Reader(key);
    let due = r.u64()?;
    let queue = r.u64()?;
    let id = MessageId::from_slice(r.take(16)?)?;
    r.0.is_empty().then_some((due, queue, id))
}

/// The value of a delayed message: `lane | weight(4) | record`.
pub fn delayed_value(lane: &Lane, weight: u32, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + record.len());
    encode_lane(&mut out, lane);
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// Parses a delayed value into lane, weight and the record bytes.
pub fn parse_delayed_value(bytes: &[u8]) -> Option<(Lane, u32, &[u8])> {
    let mut r = Reader(bytes);
    let lane = r.lane()?;
    let weight = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    Some((lane, weight, r.0))
}

/// `queue(8) | lane`: a lane's tally (see `tally.rs`).
pub fn lane_key(queue: QueueId, lane: &Lane) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&queue_prefix(queue));
    encode_lane(&mut out, lane);
    out
}

pub fn parse_lane_key(key: &[u8]) -> Option<(QueueId, Lane)> {
    let mut r = Reader(key);
    let queue = r.u64()?;
    let lane = r.lane()?;
    r.0.is_empty().then_some((queue, lane))
}

/// Parses a chunk key (or a key of the former `messages` family) into
/// queue, lane and sequence.
pub fn parse_chunk_key(key: &[u8]) -> Option<(QueueId, Lane, u64)> {
    let mut r = Reader(key);
    let queue = r.u64()?;
    let lane = r.lane()?;
    let seq = r.u64()?;
    r.0.is_empty().then_some((queue, lane, seq))
}

pub fn index_key(queue: QueueId, id: MessageId) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&queue_prefix(queue));
    out[8..].copy_from_slice(&id.to_bytes());
    out
}

pub fn parse_index_key(key: &[u8]) -> Option<(QueueId, MessageId)> {
    let queue = u64::from_be_bytes(key.get(0..8)?.try_into().ok()?);
    let id = MessageId::from_slice(key.get(8..24)?)?;
    (key.len() == 24).then_some((queue, id))
}

pub fn weight_key(queue: QueueId, fairness_key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + fairness_key.len());
    out.extend_from_slice(&queue_prefix(queue));
    push_str(&mut out, fairness_key);
    out
}

pub fn parse_weight_key(key: &[u8]) -> Option<(QueueId, &str)> {
    let mut r = Reader(key);
    let queue = r.u64()?;
    let fairness_key = r.str()?;
    r.0.is_empty().then_some((queue, fairness_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a `push_*` writer appends to an empty buffer.
    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    fn lane(key: &str, throttle: &[&str]) -> Lane {
        Lane::new(Arc::from(key), ThrottleSet::new(throttle))
    }

    #[test]
    fn chunk_and_index_keys_round_trip() {
        let l = lane("tenant-a", &["provider:stripe", "tenant:a"]);
        let key = chunk_key(3, &l, 42);
        assert_eq!(parse_chunk_key(&key), Some((3, l.clone(), 42)));
        assert_eq!(parse_chunk_key(&key[..key.len() - 1]), None);
        let entry = IndexEntry { lane: l.clone(), seq: 7, weight: 3, due_ms: None };
        assert_eq!(parse_index_value(&written(|out| push_index_value(out, &l, 7, 3))), Some(entry));
        let delayed = IndexEntry { lane: l.clone(), seq: 0, weight: 3, due_ms: Some(99) };
        let value = written(|out| push_delayed_index_value(out, &l, 3, 99));
        assert_eq!(parse_index_value(&value), Some(delayed));
        let id = MessageId::generate();
        assert_eq!(parse_delayed_key(&delayed_key(99, 3, id)), Some((99, 3, id)));
        let value = delayed_value(&l, 2, b"record");
        assert_eq!(parse_delayed_value(&value), Some((l, 2, &b"record"[..])));
    }

    #[test]
    fn chunks_of_one_lane_sort_by_sequence_and_stay_contiguous() {
        let mut keys = [
            chunk_key(1, &lane("b", &[]), 1),
            chunk_key(1, &lane("a", &[]), 300),
            chunk_key(1, &lane("a", &["x"]), 5),
            chunk_key(1, &lane("a", &[]), 2),
            chunk_key(1, &lane("ab", &[]), 1),
            chunk_key(2, &lane("a", &[]), 0),
            chunk_key(0, &lane("z", &[]), 9),
        ];
        keys.sort();
        let parsed: Vec<_> = keys
            .iter()
            .map(|k| {
                let (q, l, s) = parse_chunk_key(k).unwrap();
                (q, l.fairness_key.to_string(), l.throttle.keys().len(), s)
            })
            .collect();
        let expected = [
            (0, "z", 0, 9),
            (1, "a", 0, 2),
            (1, "a", 0, 300),
            (1, "a", 1, 5),
            (1, "b", 0, 1),
            (1, "ab", 0, 1),
            (2, "a", 0, 0),
        ];
        let expected: Vec<_> = expected.iter().map(|&(q, k, n, s)| (q, k.to_string(), n, s)).collect();
        assert_eq!(parsed, expected, "length prefixes keep lanes from interleaving");
    }

    #[test]
    fn the_log_sorts_by_queue_then_sequence() {
        let mut keys = [log_key(2, 1), log_key(1, 256), log_key(1, 255), log_key(1, 0)];
        keys.sort();
        assert_eq!(keys, [log_key(1, 0), log_key(1, 255), log_key(1, 256), log_key(2, 1)]);
        let (start, end) = queue_range(1);
        assert!(log_key(1, u64::MAX)[..] < end[..] && log_key(1, 0)[..] >= start[..]);
    }

    #[test]
    fn log_values_round_trip() {
        let id = MessageId::generate();
        let value = written(|out| push_log_value(out, id, b"record"));
        assert_eq!(parse_log_value(&value), Some((id, &b"record"[..])));
        let value = written(|out| push_log_value(out, id, b""));
        assert_eq!(parse_log_value(&value), Some((id, &b""[..])));
        assert_eq!(parse_log_value(&[0; 15]), None, "a cut id");
    }

    #[test]
    fn chunk_values_round_trip() {
        let ids: Vec<MessageId> = (0..3).map(|_| MessageId::generate()).collect();
        let messages = [(7, ids[0], &b"first"[..]), (9, ids[1], &b""[..]), (u64::MAX - 1, ids[2], &b"x"[..])];
        let mut value = Vec::new();
        let mut previous = 0;
        for &(seq, id, record) in &messages {
            push_chunk_message(&mut value, previous, seq, id, record);
            previous = seq;
        }
        let parsed = parse_chunk_value(&value).unwrap();
        let expected: Vec<ChunkMessage> =
            messages.iter().map(|&(seq, id, record)| ChunkMessage { seq, id, record }).collect();
        assert_eq!(parsed, expected);
        assert_eq!(parse_chunk_value(&[]), Some(Vec::new()));
        assert_eq!(parse_chunk_value(&value[..value.len() - 1]), None, "a cut record");
    }

    #[test]
    fn queue_range_covers_exactly_one_queue() {
        let (start, end) = queue_range(5);
        assert!(chunk_key(5, &lane("k", &[]), 0).as_slice() >= &start[..]);
        assert!(chunk_key(5, &lane(&"\u{ff}".repeat(100), &["x"]), u64::MAX).as_slice() < &end[..]);
        assert!(chunk_key(6, &lane("", &[]), 0).as_slice() >= &end[..]);
        assert!(index_key(5, MessageId(u128::MAX))[..] < end[..]);
        assert!(weight_key(5, &"\u{ff}".repeat(100)).as_slice() < &end[..]);
    }

    #[test]
    fn index_and_weight_keys_round_trip() {
        let id = MessageId::generate();
        assert_eq!(parse_index_key(&index_key(9, id)), Some((9, id)));
        assert_eq!(parse_weight_key(&weight_key(9, "tenant")), Some((9, "tenant")));
    }
}
