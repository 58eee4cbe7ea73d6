//! A stored message record read in place, for a queue's `on_enqueue` hook:
//! the headers, payload and placement (fairness key, weight, throttle keys)
//! borrowed from the record's bytes, and the record with a new placement,
//! made by copying every other field as it is.
//!
//! Decoding the record into a [`MessageRecord`] and encoding it again after
//! the hook (a map and two strings per header, then all of it written out)
//! took about a fifth of the scheduler thread's time in the Lua workload of
//! fila-bench; a message whose hook runs is read and rewritten on that
//! thread, so this work is on the broker's critical path.
//!
//! [`MessageRecord`]: super::message::MessageRecord

use bytes::Bytes;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, skip_field, DecodeContext, WireType};

// The tags of `MessageRecord`'s fields read or replaced here (the tests
// check them against prost's encoding of `MessageRecord`).
const HEADERS: u32 = 2;
const PAYLOAD: u32 = 3;
const FAIRNESS_KEY: u32 = 4;
const WEIGHT: u32 = 5;
const THROTTLE_KEYS: u32 = 6;
// In a header (a map entry), its name and value.
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;

/// What an `on_enqueue` hook reads of a record. Fields absent from the
/// record have their protobuf defaults (empty, 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// In the record's order; of repeated names the last counts, as when
    /// the record is decoded.
    pub headers: Vec<(&'a str, &'a str)>,
    pub payload: &'a [u8],
    pub fairness_key: &'a str,
    pub weight: u32,
    pub throttle_keys: Vec<&'a str>,
}

impl<'a> RecordView<'a> {
    /// `None` if `record` is not a well-formed record (truncated, a field
    /// of the wrong type, text that is not UTF-8).
    pub fn parse(record: &'a [u8]) -> Option<RecordView<'a>> {
        let mut view =
            RecordView { headers: Vec::new(), payload: &[], fairness_key: "", weight: 0, throttle_keys: Vec::new() };
        for field in Fields(record) {
            let field = field?;
            match (field.tag, field.value) {
                (HEADERS, Value::Delimited(entry)) => view.headers.push(header(entry)?),
                (PAYLOAD, Value::Delimited(payload)) => view.payload = payload,
                (FAIRNESS_KEY, Value::Delimited(key)) => view.fairness_key = text(key)?,
                // As prost reads a uint32: the low 32 bits.
                (WEIGHT, Value::Varint(weight)) => view.weight = weight as u32,
                (THROTTLE_KEYS, Value::Delimited(key)) => view.throttle_keys.push(text(key)?),
                (HEADERS | PAYLOAD | FAIRNESS_KEY | WEIGHT | THROTTLE_KEYS, _) => return None,
                _ => {}
            }
        }
        Some(view)
    }
}

/// `record` with its placement replaced by the one given: every other field
/// is copied unchanged, the new placement written after them (protobuf
/// fields may come in any order). `None` if `record` is not well-formed.
pub fn with_placement<K: AsRef<str>>(
    record: &[u8],
    fairness_key: &str,
    weight: u32,
    throttle_keys: &[K],
) -> Option<Bytes> {
    let placement = fairness_key.len() + throttle_keys.iter().map(|k| k.as_ref().len() + 4).sum::<usize>() + 16;
    let mut out = Vec::with_capacity(record.len() + placement);
    for field in Fields(record) {
        let field = field?;
        if !matches!(field.tag, FAIRNESS_KEY | WEIGHT | THROTTLE_KEYS) {
            out.extend_from_slice(field.raw);
        }
    }
    // Defaults are left out, as prost leaves them out.
    if !fairness_key.is_empty() {
        put_text(FAIRNESS_KEY, fairness_key, &mut out);
    }
    if weight != 0 {
        encode_key(WEIGHT, WireType::Varint, &mut out);
        encode_varint(u64::from(weight), &mut out);
    }
    for key in throttle_keys {
        put_text(THROTTLE_KEYS, key.as_ref(), &mut out);
    }
    Some(Bytes::from(out))
}

fn put_text(tag: u32, text: &str, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// A map entry's name and value.
fn header(entry: &[u8]) -> Option<(&str, &str)> {
    let (mut name, mut value) = ("", "");
    for field in Fields(entry) {
        match field? {
            Field { tag: ENTRY_KEY, value: Value::Delimited(bytes), .. } => name = text(bytes)?,
            Field { tag: ENTRY_VALUE, value: Value::Delimited(bytes), .. } => value = text(bytes)?,
            Field { tag: ENTRY_KEY | ENTRY_VALUE, .. } => return None,
            _ => {}
        }
    }
    Some((name, value))
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// One field of a message: its tag, its value and all its bytes (key
/// included).
struct Field<'a> {
    tag: u32,
    value: Value<'a>,
    raw: &'a [u8],
}

enum Value<'a> {
    Varint(u64),
    Delimited(&'a [u8]),
    /// A fixed-size field or a group: not used by a record.
    Other,
}

/// The fields of a message in order; after a malformed one, `Some(None)`
/// and then nothing.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<Field<'a>>;

    fn next(&mut self) -> Option<Option<Field<'a>>> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0;
        let mut rest = self.0;
        let field = (|| {
            let (tag, wire_type) = decode_key(&mut rest).ok()?;
            let value = match wire_type {
                WireType::Varint => Value::Varint(decode_varint(&mut rest).ok()?),
                WireType::LengthDelimited => {
                    let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                    let (bytes, after) = rest.split_at_checked(len)?;
                    rest = after;
                    Value::Delimited(bytes)
                }
                other => {
                    skip_field(other, tag, &mut rest, DecodeContext::default()).ok()?;
                    Value::Other
                }
            };
            Some(Field { tag, value, raw: &start[..start.len() - rest.len()] })
        })();
        self.0 = if field.is_some() { rest } else { &[] };
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::domain::message::MessageRecord;

    fn record() -> impl Strategy<Value = MessageRecord> {
        let text = || "[a-zé\u{1F600}]{0,6}";
        (
            prop::collection::hash_map(text(), text(), 0..4),
            prop::collection::vec(any::<u8>(), 0..40),
            text(),
            any::<u32>(),
            prop::collection::vec(text(), 0..3),
            (any::<u64>(), any::<u32>(), text(), any::<u64>()),
        )
            .prop_map(
                |(headers, payload, fairness_key, weight, throttle_keys, (enqueued, failures, error, ready))| {
                    MessageRecord {
                        id: vec![7; 16],
                        headers,
                        payload: payload.into(),
                        fairness_key,
                        weight,
                        throttle_keys,
                        enqueued_at_ms: enqueued,
                        failures,
                        last_error: error,
                        ready_at_us: ready,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn reads_what_prost_decodes(record in record()) {
            let bytes = record.encode_to_vec();
            let view = RecordView::parse(&bytes).expect("well-formed");
            let headers: HashMap<String, String> =
                view.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(headers, record.headers.clone());
            prop_assert_eq!(view.payload, &record.payload[..]);
            prop_assert_eq!(view.fairness_key, record.fairness_key.as_str());
            prop_assert_eq!(view.weight, record.weight);
            prop_assert_eq!(view.throttle_keys, record.throttle_keys.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn replaces_the_placement_and_keeps_the_rest(
            record in record(),
            key in "[a-z]{0,5}",
            weight in any::<u32>(),
            keys in prop::collection::vec("[a-z]{1,5}", 0..3),
        ) {
            let bytes = with_placement(&record.encode_to_vec(), &key, weight, &keys).expect("well-formed");
            let expected = MessageRecord { fairness_key: key, weight, throttle_keys: keys, ..record };
            prop_assert_eq!(MessageRecord::decode(bytes).expect("decodes"), expected);
        }

        #[test]
        fn malformed_records_are_refused_not_misread(record in record(), cut in any::<prop::sample::Index>()) {
            let bytes = record.encode_to_vec();
            let truncated = &bytes[..cut.index(bytes.len().max(1)).min(bytes.len())];
            // A prefix is either refused or still a record prost reads the same way.
            if let Some(view) = RecordView::parse(truncated) {
                let decoded = MessageRecord::decode(truncated).expect("prost reads what the view reads");
                prop_assert_eq!(view.payload, &decoded.payload[..]);
                prop_assert_eq!(view.fairness_key, decoded.fairness_key.as_str());
            }
        }
    }

    #[test]
    fn refuses_text_that_is_not_utf8() {
        let mut bytes = Vec::new();
        put_text(FAIRNESS_KEY, "ab", &mut bytes);
        *bytes.last_mut().unwrap() = 0xff;
        assert_eq!(RecordView::parse(&bytes), None);
        assert_eq!(with_placement::<&str>(&[0x0a, 0x05, 1], "k", 1, &[]), None, "a field longer than the record");
    }
}
