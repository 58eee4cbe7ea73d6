//! Byte layout of storage keys. Big-endian integers keep numeric order equal
//! to byte order, so RocksDB's sorted keys give the scheduler its order:
//!
//! - `messages`: `queue(8) | key_len(2) | fairness_key | seq(8)` → `id(16) | record`: the ready
//!   messages of one fairness key are one contiguous range in arrival order,
//!   so "next messages of key K" is a single seek.
//! - `message_index`: `queue(8) | message_id(16)` → `key_len(2) | fairness_key | seq(8)`:
//!   finds a message by id (stale-lease checks, later peek/explain).
//! - `queues`: queue name → queue definition.
//!
//! Everything of one queue starts with its id, so deleting a queue is one
//! range delete per column family.

use crate::domain::{MessageId, QueueId};

pub fn queue_prefix(queue: QueueId) -> [u8; 8] {
    queue.to_be_bytes()
}

/// The key range `[start, end)` that holds all entries of `queue`.
pub fn queue_range(queue: QueueId) -> ([u8; 8], [u8; 8]) {
    (queue_prefix(queue), queue_prefix(queue + 1))
}

/// `key_len(2) | fairness_key | seq(8)`: the message key without its queue.
pub fn fairness_location(fairness_key: &str, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + fairness_key.len() + 8);
    out.extend_from_slice(&(fairness_key.len() as u16).to_be_bytes());
    out.extend_from_slice(fairness_key.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

pub fn message_key(queue: QueueId, fairness_key: &str, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 2 + fairness_key.len() + 8);
    out.extend_from_slice(&queue_prefix(queue));
    out.extend_from_slice(&fairness_location(fairness_key, seq));
    out
}

/// Parses a `fairness_location` back into its fairness key and sequence.
pub fn parse_fairness_location(bytes: &[u8]) -> Option<(&str, u64)> {
    let len = u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    let seq_bytes: [u8; 8] = bytes.get(2 + len..)?.try_into().ok()?;
    Some((key, u64::from_be_bytes(seq_bytes)))
}

/// Parses a message key into queue, fairness key and sequence.
pub fn parse_message_key(key: &[u8]) -> Option<(QueueId, &str, u64)> {
    let queue = u64::from_be_bytes(key.get(0..8)?.try_into().ok()?);
    let (fairness_key, seq) = parse_fairness_location(&key[8..])?;
    Some((queue, fairness_key, seq))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_round_trip() {
        let key = message_key(3, "tenant-a", 42);
        assert_eq!(parse_message_key(&key), Some((3, "tenant-a", 42)));
        assert_eq!(parse_message_key(&key[..key.len() - 1]), None);
    }

    #[test]
    fn messages_of_one_key_sort_by_sequence_and_stay_contiguous() {
        let mut keys = [
            message_key(1, "b", 1),
            message_key(1, "a", 300),
            message_key(1, "a", 2),
            message_key(1, "ab", 1),
            message_key(2, "a", 0),
            message_key(0, "z", 9),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_message_key(k).unwrap()).collect();
        assert_eq!(
            parsed,
            vec![(0, "z", 9), (1, "a", 2), (1, "a", 300), (1, "b", 1), (1, "ab", 1), (2, "a", 0)],
            "length prefix keeps key 'a' from interleaving with 'ab'"
        );
    }

    #[test]
    fn queue_range_covers_exactly_one_queue() {
        let (start, end) = queue_range(5);
        assert!(message_key(5, "k", 0).as_slice() >= &start[..]);
        assert!(message_key(5, &"\u{ff}".repeat(100), u64::MAX).as_slice() < &end[..]);
        assert!(message_key(6, "", 0).as_slice() >= &end[..]);
        assert!(index_key(5, MessageId(u128::MAX))[..] < end[..]);
    }

    #[test]
    fn index_keys_round_trip() {
        let id = MessageId::generate();
        assert_eq!(parse_index_key(&index_key(9, id)), Some((9, id)));
    }
}
