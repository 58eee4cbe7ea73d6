//! Reading one lane's messages in order: those of its sealed chunks (from
//! `lane_chunks`, a chunk per lookup), then its open ones (held in memory,
//! or fetched from the log).

use std::borrow::Borrow;
use std::cell::Cell;

use rocksdb::{ReadOptions, DB};

use super::keys::{self, ChunkMessage};
use super::lane_index::{LaneIndex, OpenMessage};
use super::rocks::{cf, io, CF_CHUNKS, CF_INDEX, CF_LOG};
use crate::domain::{Lane, MessageId, QueueId, StorageError};

/// Which of a lane's messages to visit: sequences in `(after, before)`,
/// about `want` of them (how many open ones are fetched at a time).
pub struct Span {
    pub after: u64,
    pub before: u64,
    pub want: usize,
}

impl Span {
    fn holds(&self, seq: u64) -> bool {
        seq > self.after && seq < self.before
    }
}

/// Where the last read of a sealed chunk stopped: the chunk, named by its
/// last sequence (no other chunk has it, as sequences are never reused),
/// the offset of its next message and the sequence before it. A lane's
/// reads go through a chunk in order, so the next read of a chunk of
/// hundreds starts there, not at the chunk's start. A chunk's value does
/// not change once it is counted (only an uncounted one is rewritten).
#[derive(Debug, Clone, Copy)]
pub struct ChunkResume {
    chunk_last: u64,
    offset: usize,
    seq: u64,
}

/// Calls `found` with each message of the lane in `span` (sequence, id and
/// record), in sequence order, until it returns false. `resume` is the
/// store's note of where the last chunk read stopped.
pub fn for_each_message(
    db: &DB,
    queue: QueueId,
    lane: &Lane,
    index: &mut LaneIndex,
    span: Span,
    resume: &Cell<Option<ChunkResume>>,
    mut found: impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    if index.may_have_sealed_after(span.after) {
        let read = match index.counted_from(span.after) {
            Some(position) => read_counted_chunks(db, queue, lane, index, position, &span, resume, &mut found)?,
            None => scan_chunks(db, queue, lane, index, &span, resume, &mut found)?,
        };
        if read == ChunksRead::Stopped {
            return Ok(());
        }
    }
    let open: Vec<_> = index.open_after(span.after).take_while(|m| m.seq < span.before).collect();
    for part in open.chunks(span.want.max(1)) {
        if !open_records(db, queue, part, &mut found)? {
            break;
        }
    }
    Ok(())
}

/// Whether a read went through the lane's sealed chunks in its span, on to
/// its open messages, or stopped.
#[derive(PartialEq, Eq)]
enum ChunksRead {
    Through,
    Stopped,
}

/// Reads counted chunks from `position` on, each by its key: a point
/// lookup, which bloom filters steer to the one table file holding the
/// chunk, where an iterator's seek would read a block of every file and
/// memtable (with many active lanes, every one of them holds chunks of
/// every lane).
#[allow(clippy::too_many_arguments)]
fn read_counted_chunks(
    db: &DB,
    queue: QueueId,
    lane: &Lane,
    index: &LaneIndex,
    mut position: usize,
    span: &Span,
    resume: &Cell<Option<ChunkResume>>,
    found: &mut impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<ChunksRead, StorageError> {
    while let Some(last) = index.counted_last(position) {
        let key = keys::chunk_key(queue, lane, last);
        let value = db.get_pinned_cf(cf(db, CF_CHUNKS), &key).map_err(io)?;
        let value = value.ok_or_else(|| StorageError::Corrupt(format!("lane chunk {key:?} is counted but missing")))?;
        if !visit_counted_chunk(&key, last, &value, index, span, resume, found)? || last >= span.before {
            return Ok(ChunksRead::Stopped);
        }
        position += 1;
    }
    Ok(ChunksRead::Through)
}

/// Reads the lane's chunks in its span with an iterator, counting those
/// found in storage without a count (sealed before the last start).
fn scan_chunks(
    db: &DB,
    queue: QueueId,
    lane: &Lane,
    index: &mut LaneIndex,
    span: &Span,
    resume: &Cell<Option<ChunkResume>>,
    found: &mut impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<ChunksRead, StorageError> {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::chunk_key(queue, lane, span.after + 1));
    opts.set_iterate_upper_bound(keys::chunk_key(queue, lane, index.floor()));
    let mut chunks = db.raw_iterator_cf_opt(cf(db, CF_CHUNKS), opts);
    chunks.seek_to_first();
    while let (Some(key), Some(value)) = (chunks.key(), chunks.value()) {
        let corrupt = || StorageError::Corrupt(format!("lane chunk {key:?}"));
        let (_, _, last) = keys::parse_chunk_key(key).ok_or_else(corrupt)?;
        let going = if index.is_counted(last) {
            visit_counted_chunk(key, last, value, index, span, resume, found)?
        } else {
            let mut messages = keys::parse_chunk_value(value).ok_or_else(corrupt)?;
            count_live(db, queue, (key, last), &mut messages, index)?;
            visit_chunk(messages.into_iter().map(Ok), index.gone_from(last), span, found)?
        };
        if !going || last >= span.before {
            return Ok(ChunksRead::Stopped);
        }
        chunks.next();
    }
    chunks.status().map_err(io)?;
    Ok(ChunksRead::Through)
}

/// Visits a counted chunk's live messages in `span`, starting where the
/// lane's last read stopped if it stopped in this chunk: a chunk sealed by
/// one large commit holds hundreds of messages, and a read of the next few
/// parses only up to them. Returns whether it went on to the chunk's end.
fn visit_counted_chunk(
    key: &[u8],
    last: u64,
    value: &[u8],
    index: &LaneIndex,
    span: &Span,
    resume: &Cell<Option<ChunkResume>>,
    found: &mut impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    let corrupt = || StorageError::Corrupt(format!("lane chunk {key:?}"));
    let resumed = resume.get().filter(|r| r.chunk_last == last && r.seq <= span.after);
    let mut messages = match resumed {
        Some(r) => keys::chunk_messages_from(value, r.offset, r.seq).ok_or_else(corrupt)?,
        None => keys::chunk_messages(value),
    };
    let parsed = messages.by_ref().map(|m| m.ok_or_else(corrupt));
    let going = visit_chunk(parsed, index.gone_from(last), span, found)?;
    let (offset, seq) = (messages.offset_in(value), messages.seq());
    resume.set(Some(ChunkResume { chunk_last: last, offset, seq }));
    Ok(going)
}

/// Calls `found` with each live message of a chunk in `span`, until it
/// returns false; returns whether it went on to the chunk's end.
fn visit_chunk<'a>(
    messages: impl Iterator<Item = Result<ChunkMessage<'a>, StorageError>>,
    gone: &[u64],
    span: &Span,
    found: &mut impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    for message in messages {
        let message = message?;
        if message.seq >= span.before {
            return Ok(false);
        }
        let live = gone.binary_search(&message.seq).is_err();
        if span.holds(message.seq) && live && !found(message.seq, message.id, message.record)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Calls `each` with every one of a lane's open messages (ascending): its
/// sequence, id and record, held in memory or read from the log, until it
/// returns false. Returns whether it went through all of them.
pub fn open_records<M: Borrow<OpenMessage>>(
    db: &DB,
    queue: QueueId,
    messages: &[M],
    mut each: impl FnMut(u64, MessageId, &[u8]) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    let unheld: Vec<u64> = messages.iter().map(Borrow::borrow).filter(|m| m.body.is_none()).map(|m| m.seq).collect();
    let mut fetched = Vec::with_capacity(unheld.len());
    fetch_each(db, queue, &unheld, |seq, value| {
        let value = value.ok_or_else(|| StorageError::Corrupt(format!("open message {seq} is not in the log")))?;
        fetched.push(value.to_vec());
        Ok(true)
    })?;
    let mut fetched = fetched.iter();
    for message in messages.iter().map(Borrow::borrow) {
        let going = match &message.body {
            Some((id, record)) => each(message.seq, *id, record)?,
            None => {
                let value = fetched.next().expect("fetched above");
                let corrupt = || StorageError::Corrupt(format!("log entry {} of queue {queue}", message.seq));
                let (id, record) = keys::parse_log_value(value).ok_or_else(corrupt)?;
                each(message.seq, id, record)?
            }
        };
        if !going {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Learns the live count of a chunk found in storage after a restart: a
/// message is live while the index has it there. Dead ones (acknowledged
/// before the restart) are taken out of `messages`, and out of the stored
/// chunk too, or the chunk is deleted if none is live. The chunk keeps its
/// key, which names the last sequence it was sealed with.
fn count_live(
    db: &DB,
    queue: QueueId,
    (chunk_key, last): (&[u8], u64),
    messages: &mut Vec<ChunkMessage<'_>>,
    index: &mut LaneIndex,
) -> Result<(), StorageError> {
    let Some(first) = messages.first().map(|m| m.seq) else {
        return db.delete_cf(cf(db, CF_CHUNKS), chunk_key).map_err(io);
    };
    let index_keys: Vec<[u8; 24]> = messages.iter().map(|m| keys::index_key(queue, m.id)).collect();
    let entries = db.batched_multi_get_cf(cf(db, CF_INDEX), index_keys.iter(), false);
    let mut live = Vec::with_capacity(messages.len());
    for (message, entry) in messages.drain(..).zip(entries) {
        // The index points at where the message is now: a message retried
        // before the restart is stored again under another sequence.
        let at = entry.map_err(io)?.and_then(|value| keys::parse_index_value(&value));
        if at.is_some_and(|at| at.seq == message.seq && at.due_ms.is_none()) {
            live.push(message);
        }
    }
    *messages = live;
    index.count_chunk(first, last, messages.len() as u32);
    if messages.is_empty() {
        return db.delete_cf(cf(db, CF_CHUNKS), chunk_key).map_err(io);
    }
    if messages.len() < index_keys.len() {
        let mut value = Vec::new();
        let mut previous = 0;
        for m in messages.iter() {
            keys::push_chunk_message(&mut value, previous, m.seq, m.id, m.record);
            previous = m.seq;
        }
        db.put_cf(cf(db, CF_CHUNKS), chunk_key, value).map_err(io)?;
    }
    Ok(())
}

/// Calls `each` with every one of `seqs` (ascending) and its log entry, if
/// there is one, until it returns false. Sequences close together (one
/// lane's backlog) are read with one scan of the log; scattered ones (a
/// lane among many) with one batched point lookup.
pub fn fetch_each(
    db: &DB,
    queue: QueueId,
    seqs: &[u64],
    mut each: impl FnMut(u64, Option<&[u8]>) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else { return Ok(()) };
    if last - first >= 2 * seqs.len() as u64 {
        let keys: Vec<[u8; 16]> = seqs.iter().map(|&seq| keys::log_key(queue, seq)).collect();
        let values = db.batched_multi_get_cf(cf(db, CF_LOG), keys.iter(), true);
        for (&seq, value) in seqs.iter().zip(values) {
            if !each(seq, value.map_err(io)?.as_deref())? {
                break;
            }
        }
        return Ok(());
    }
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::log_key(queue, first).to_vec());
    opts.set_iterate_upper_bound(keys::log_key(queue, last + 1).to_vec());
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_LOG), opts);
    iter.seek_to_first();
    for &wanted in seqs {
        loop {
            let corrupt = |key: &[u8]| StorageError::Corrupt(format!("log key {key:?}"));
            let stored = match (iter.key(), iter.value()) {
                (Some(key), Some(value)) => {
                    let seq = key.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                    Some((seq.ok_or_else(|| corrupt(key))?, value))
                }
                _ => None,
            };
            match stored {
                // Another lane's message between two of this one's.
                Some((seq, _)) if seq < wanted => iter.next(),
                Some((seq, value)) if seq == wanted => {
                    if !each(wanted, Some(value))? {
                        return Ok(());
                    }
                    iter.next();
                    break;
                }
                _ => {
                    if !each(wanted, None)? {
                        return Ok(());
                    }
                    break;
                }
            }
        }
    }
    iter.status().map_err(io)
}
