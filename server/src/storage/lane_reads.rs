//! Reading one lane's messages in order: the sequences of its sealed chunks
//! (from `lane_chunks`), then its open ones (in memory), each message
//! fetched from the log in batches.

use rocksdb::{ReadOptions, DB};

use super::keys;
use super::lane_index::LaneIndex;
use super::rocks::{cf, io, CF_CHUNKS, CF_LOG};
use crate::domain::{Lane, QueueId, StorageError};

/// Which of a lane's messages to visit: sequences in `(after, before)`,
/// about `want` of them (how many are fetched at a time).
pub struct Span {
    pub after: u64,
    pub before: u64,
    pub want: usize,
}

/// Calls `found` with each message of the lane in `span`, in sequence
/// order, until it returns false.
pub fn for_each_message(
    db: &DB,
    queue: QueueId,
    lane: &Lane,
    index: &mut LaneIndex,
    span: Span,
    mut found: impl FnMut(u64, &[u8]) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    let within = |seq: u64| seq > span.after && seq < span.before;
    if index.may_have_sealed_after(span.after) {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::chunk_key(queue, lane, span.after + 1));
        opts.set_iterate_upper_bound(keys::chunk_key(queue, lane, index.floor()));
        let mut chunks = db.raw_iterator_cf_opt(cf(db, CF_CHUNKS), opts);
        chunks.seek_to_first();
        while let (Some(key), Some(value)) = (chunks.key(), chunks.value()) {
            let corrupt = || StorageError::Corrupt(format!("lane chunk {key:?}"));
            let (_, _, last) = keys::parse_chunk_key(key).ok_or_else(corrupt)?;
            let seqs = keys::parse_chunk_value(value).ok_or_else(corrupt)?;
            let first = *seqs.first().ok_or_else(corrupt)?;
            if index.is_counted(last) {
                let wanted: Vec<u64> = seqs.into_iter().filter(|&s| within(s)).collect();
                if !visit(db, queue, &wanted, span.want, &mut found)? {
                    return Ok(());
                }
            } else {
                // Found in storage after a restart and read for the first
                // time: every sequence in it is checked, so that its live
                // count is known before any of its messages is deleted.
                let (mut live, mut going) = (0, true);
                fetch_each(db, queue, &seqs, |seq, value| {
                    let Some(value) = value else { return Ok(true) };
                    live += 1;
                    if going && within(seq) {
                        going = found(seq, value)?;
                    }
                    Ok(true)
                })?;
                index.count_chunk(first, last, live);
                if live == 0 {
                    db.delete_cf(cf(db, CF_CHUNKS), key).map_err(io)?;
                }
                if !going {
                    return Ok(());
                }
            }
            if last >= span.before {
                return Ok(());
            }
            chunks.next();
        }
        chunks.status().map_err(io)?;
    }
    let open: Vec<u64> = index.open_after(span.after).take_while(|&s| s < span.before).collect();
    visit(db, queue, &open, span.want, &mut found)?;
    Ok(())
}

/// Fetches the messages at `seqs`, `batch` at a time, and passes those
/// still in the log to `found`; false once `found` asked to stop.
fn visit(
    db: &DB,
    queue: QueueId,
    seqs: &[u64],
    batch: usize,
    found: &mut impl FnMut(u64, &[u8]) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    for part in seqs.chunks(batch.max(1)) {
        let mut going = true;
        fetch_each(db, queue, part, |seq, value| {
            if let Some(value) = value {
                going = found(seq, value)?;
            }
            Ok(going)
        })?;
        if !going {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Calls `each` with every one of `seqs` (ascending) and its log entry, if
/// there is one, until it returns false. Sequences close together (one
/// lane's backlog) are read with one scan of the log; scattered ones (a
/// lane among many) with one batched point lookup.
fn fetch_each(
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
