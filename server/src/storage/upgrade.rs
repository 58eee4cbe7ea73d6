//! Bringing data directories written by older versions up to date, once,
//! when the store opens.
//!
//! - Before lane tallies existed, recovery counted messages from the
//!   message index; the tallies are built from it on the first start.
//! - Before the log existed, messages were kept in a `messages` family
//!   keyed by lane and sequence. Each lane's messages are moved into sealed
//!   chunks (see `lane_index.rs`), in batches that each move whole chunks
//!   atomically, so a move cut short by a crash resumes where it stopped.
//!   The old family is dropped at the end.

use rocksdb::{WriteBatch, WriteOptions, DB};

use super::keys;
use super::lane_index::CHUNK_LEN;
use super::rocks::{cf, io, CF_CHUNKS, CF_INDEX, CF_LANES, CF_META};
use super::tally::Tally;
use crate::domain::{Lane, QueueId, StorageError};
use crate::fast_map::FastMap;

/// The family of messages keyed by lane, before the log.
pub const CF_LANE_ORDERED_MESSAGES: &str = "messages";
/// Set once `lane_tallies` holds every lane.
pub(super) const LANES_TALLIED: &[u8] = b"lanes_tallied";
/// Messages moved per write batch.
const MOVE_BATCH: usize = 8192;

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Builds the lane tallies of a database written before they existed, from
/// the message index (one pass over every stored message).
pub fn tally_lanes_if_untallied(db: &DB) -> Result<(), StorageError> {
    if db.get_cf(cf(db, CF_META), LANES_TALLIED).map_err(io)?.is_some() {
        return Ok(());
    }
    let mut tallies: FastMap<(QueueId, Lane), Tally> = FastMap::default();
    let mut iter = db.raw_iterator_cf(cf(db, CF_INDEX));
    iter.seek_to_first();
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        let corrupt = || StorageError::Corrupt(format!("message index entry {key:?}"));
        let (queue, _) = keys::parse_index_key(key).ok_or_else(corrupt)?;
        let keys::IndexEntry { lane, seq, weight, due_ms } = keys::parse_index_value(value).ok_or_else(corrupt)?;
        if due_ms.is_none() {
            let (weight_seq, weight) = if weight > 0 { (seq, weight) } else { (0, 0) };
            let one = Tally { count: 1, max_seq: seq, weight_seq, weight, ..Tally::default() };
            tallies.entry((queue, lane)).or_default().absorb(&one);
        }
        iter.next();
    }
    iter.status().map_err(io)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf(db, CF_LANES), &[0u8; 8][..], &[0xffu8; 9][..]);
    for ((queue, lane), tally) in tallies {
        batch.put_cf(cf(db, CF_LANES), keys::lane_key(queue, &lane), tally.encode());
    }
    batch.put_cf(cf(db, CF_META), LANES_TALLIED, [1]);
    db.write_opt(batch, &synced()).map_err(io)
}

/// A lane's messages being gathered into one chunk.
struct Gathering {
    queue: QueueId,
    lane: Lane,
    /// The chunk's value so far.
    value: Vec<u8>,
    len: usize,
    last: u64,
}

impl Gathering {
    fn push(&mut self, seq: u64, stored: &[u8]) -> Result<(), StorageError> {
        let corrupt = || StorageError::Corrupt(format!("message {seq} of queue {}", self.queue));
        let (id, record) = keys::parse_log_value(stored).ok_or_else(corrupt)?;
        keys::push_chunk_message(&mut self.value, self.last, seq, id, record);
        self.len += 1;
        self.last = seq;
        Ok(())
    }

    /// Stores the chunk and raises the lane's floor past it.
    fn seal(self, db: &DB, batch: &mut WriteBatch) {
        if self.len == 0 {
            return;
        }
        let last = self.last;
        batch.put_cf(cf(db, CF_CHUNKS), keys::chunk_key(self.queue, &self.lane, last), self.value);
        let floor = Tally { floor: last + 1, ..Tally::default() };
        batch.merge_cf(cf(db, CF_LANES), keys::lane_key(self.queue, &self.lane), floor.encode());
    }
}

/// Moves every message of the lane-ordered family into sealed chunks, then
/// drops the family.
pub fn move_lane_ordered_messages_into_chunks(db: &mut DB) -> Result<(), StorageError> {
    let mut moved = 0u64;
    {
        let db = &*db;
        let old = cf(db, CF_LANE_ORDERED_MESSAGES);
        let mut batch = WriteBatch::default();
        let mut in_batch = 0;
        let mut gathering: Option<Gathering> = None;
        let mut iter = db.raw_iterator_cf(old);
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = || StorageError::Corrupt(format!("message {key:?}"));
            let (queue, lane, seq) = keys::parse_chunk_key(key).ok_or_else(corrupt)?;
            let same_chunk =
                gathering.as_ref().is_some_and(|g| g.queue == queue && g.lane == lane && g.len < CHUNK_LEN);
            if !same_chunk {
                if let Some(done) = gathering.take() {
                    done.seal(db, &mut batch);
                }
                if in_batch >= MOVE_BATCH {
                    db.write_opt(std::mem::take(&mut batch), &synced()).map_err(io)?;
                    in_batch = 0;
                }
                gathering = Some(Gathering { queue, lane, value: Vec::new(), len: 0, last: 0 });
            }
            gathering.as_mut().expect("set above").push(seq, value)?;
            batch.delete_cf(old, key);
            in_batch += 1;
            moved += 1;
            iter.next();
        }
        iter.status().map_err(io)?;
        if let Some(done) = gathering {
            done.seal(db, &mut batch);
        }
        db.write_opt(batch, &synced()).map_err(io)?;
    }
    db.drop_cf(CF_LANE_ORDERED_MESSAGES).map_err(io)?;
    if moved > 0 {
        tracing::info!(messages = moved, "moved stored messages into lane chunks (storage layout of this version)");
    }
    Ok(())
}
