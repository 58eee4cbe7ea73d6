//! RocksDB implementation of [`Store`].

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DataBlockIndexType, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::checkpoint_writer::{CheckpointBatch, CheckpointWriter};
use super::journal::{self, Journal};
use super::keys;
use super::lane_index::{LaneIndex, LaneIndexes, LaneSlot, OpenMessage, Slot, SlotId};
use super::lane_reads;
use super::log_gc::Horizon;
use super::tally::{self, Tally};
use super::upgrade;
use super::write_order::KeyOrdered;
use super::{Change, ChangeSet, DueMessage, QueueDef, Recovered, RecoveredLane, Store, StoredMessage};
use crate::domain::{Lane, MessageId, QueueId, QueueSettings, ScriptSources, StorageError, ThrottleLimit};
use crate::fast_map::FastMap;

pub(super) const CF_QUEUES: &str = "queues";
pub(super) const CF_LOG: &str = "message_log";
pub(super) const CF_CHUNKS: &str = "lane_chunks";
pub(super) const CF_INDEX: &str = "message_index";
pub(super) const CF_META: &str = "meta";
const CF_THROTTLES: &str = "throttles";
const CF_WEIGHTS: &str = "weights";
const CF_CONFIG: &str = "config";
const CF_DELAYED: &str = "delayed";
pub(super) const CF_LANES: &str = "lane_tallies";
pub(super) const CF_JOURNAL: &str = "lane_journal";
const NEXT_QUEUE_ID: &[u8] = b"next_queue_id";
/// The highest sequence ever stored, so none is used twice even when every
/// message of the log has gone.
pub(super) const SEQ_HIGH: &[u8] = b"seq_high";
/// RocksDB's option string for the index's insert hints, one per queue.
const INDEX_INSERT_HINT: &str = "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8";
const MAX_TOTAL_WAL_BYTES: u64 = 128 * 1024 * 1024;
/// All memtables together; past it RocksDB flushes the largest.
const MEMTABLE_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Uncompressed blocks read from tables, for every column family.
const BLOCK_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Records of open messages held in memory, all lanes together, so that
/// sealing them and reading them need not read the log.
const OPEN_RECORDS_BYTES: usize = 32 * 1024 * 1024;

/// Queue definition as stored in the `queues` column family.
#[derive(Clone, PartialEq, prost::Message)]
struct QueueRecord {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(uint64, tag = "3")]
    visibility_timeout_ms: u64,
    /// 0 in records written before quanta existed: the default.
    #[prost(uint32, tag = "4")]
    quantum: u32,
    /// 0 in records written before it existed: the default.
    #[prost(uint32, tag = "5")]
    max_attempts: u32,
    #[prost(uint64, tag = "8")]
    max_payload_bytes: u64,
    #[prost(string, optional, tag = "6")]
    on_enqueue_script: Option<String>,
    #[prost(string, optional, tag = "7")]
    on_failure_script: Option<String>,
}

/// A throttle limit as stored in the `throttles` column family.
#[derive(Clone, PartialEq, prost::Message)]
struct ThrottleRecord {
    #[prost(double, tag = "1")]
    rate_per_second: f64,
    #[prost(double, tag = "2")]
    burst: f64,
}

/// The store. Only the scheduler thread uses it, so the lane index, which
/// reads update too (a chunk's live count is learnt when it is first read),
/// sits in a `RefCell`.
pub struct RocksStore {
    db: Arc<DB>,
    sync_writes: bool,
    lanes: RefCell<LaneIndexes>,
    journal: RefCell<Journal>,
    /// A commit's log and index writes, gathered in key order; kept from
    /// one commit to the next so their buffers stay allocated (and warm).
    writes: RefCell<CommitWrites>,
    seq_high: Cell<u64>,
    horizon: Horizon,
    /// Where the last read of a sealed chunk stopped.
    chunk_resume: Cell<Option<lane_reads::ChunkResume>>,
    checkpoints: RefCell<CheckpointWriter>,
}

impl Drop for RocksStore {
    /// A checkpoint being written lands before the database closes.
    fn drop(&mut self) {
        if let Err(e) = self.checkpoints.get_mut().wait() {
            tracing::warn!(error = %e, "closing the store after a failed checkpoint");
        }
    }
}

#[derive(Default)]
struct CommitWrites {
    log: KeyOrdered<[u8; 16]>,
    index: KeyOrdered<[u8; 24]>,
}

pub(super) fn io(e: rocksdb::Error) -> StorageError {
    StorageError::Io(e.into_string())
}

pub(super) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).expect("column family is created at open")
}

impl RocksStore {
    /// Opens (creating if needed) the database in `dir`, bringing a data
    /// directory written by an older version up to date. With
    /// `sync_writes`, commits that ask for it are fsynced before they
    /// return.
    pub fn open(dir: &Path, sync_writes: bool) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get() as i32));
        opts.set_max_background_jobs(2);
        // One WAL serves every column family, and a log file is kept until
        // every family with data in it has flushed. Families that change
        // rarely (queues, tallies) would pin all of it: the WAL would grow
        // with everything ever written, and a restart would replay it all.
        // Past this size RocksDB flushes the families holding the oldest log.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // The scheduler thread is the only writer but for a checkpoint's
        // batch every few seconds: the single-writer insert path needs no
        // atomic operations (the leader of a group of writes inserts them
        // all).
        opts.set_allow_concurrent_memtable_write(false);
        // Memory that does not grow with depth: all memtables together, and
        // one block cache shared by every family (by default each family
        // gets a cache of its own).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let family = || {
            let mut options = Options::default();
            options.set_block_based_table_factory(&table);
            options
        };
        // The families a lane reads by point lookups (the log, the chunks):
        // with many active lanes every memtable and table file holds
        // entries of every lane, so bloom filters let a lookup skip those
        // that do not hold its key. The memtable's filter takes 1 % of the
        // memtable: about 13 bits per entry of a small message (well under
        // 1 % false positives), and small enough for the core's own cache.
        // At 5 % (1.6 MiB) each put into the log missed the cache: 4 % more
        // of the scheduler thread's time per message with 1,000 active keys
        // (benches/fairness_work.rs, five alternated pairs).
        let looked_up = |table: &mut BlockBasedOptions| {
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut options = Options::default();
            options.set_block_based_table_factory(table);
            options.set_memtable_prefix_bloom_ratio(0.01);
            options.set_memtable_whole_key_filtering(true);
            options.set_compression_type(DBCompressionType::Lz4);
            options.set_write_buffer_size(32 * 1024 * 1024);
            options
        };
        // The log: appended at its end, deleted from near its start, so the
        // default skip list inserts next to its previous insert. Each of its
        // memtables and table files spans from the oldest messages, whose
        // deletions it holds, to the newest; a hash index in each block
        // finds a key without a binary search.
        let mut log_table = BlockBasedOptions::default();
        log_table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
        log_table.set_data_block_hash_ratio(0.75);
        let mut log = looked_up(&mut log_table);
        let horizon = Horizon::default();
        log.set_compaction_filter_factory(horizon.filter_factory());
        // Sealed chunks hold records too, as large values; a lane's next
        // chunk is read by its key (`lane_reads.rs`).
        let chunks = looked_up(&mut BlockBasedOptions::default());
        // Tallies are written by checkpoints (see `journal.rs`); versions
        // before the journal merged a delta per lane per commit, and those
        // merges may still be stored.
        let mut lanes = family();
        lanes.set_merge_operator(tally::MERGE_OPERATOR, tally::full_merge, tally::partial_merge);
        lanes.set_write_buffer_size(8 * 1024 * 1024);
        // The index: an ack deletes the entry its message's enqueue put,
        // and while the backlog fits in the memtable that put is still
        // there, between this delete and the next. Past the put, the skip
        // list's remembered insert position no longer brackets the key and
        // every delete searched the list from the top. With a hint per
        // queue (the keys' first 8 bytes) RocksDB moves the remembered
        // position on a level or two instead: about 3,000 fewer
        // instructions per lifecycle message on the scheduler thread, a
        // seventh of them (docs/benchmarks.md). rust-rocksdb has no setter
        // for it, so it goes through RocksDB's option parser.
        let index = family().get_options_from_string(INDEX_INSERT_HINT).map_err(io)?;
        let mut journal = family();
        journal.set_write_buffer_size(16 * 1024 * 1024);
        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_QUEUES, family()),
            ColumnFamilyDescriptor::new(CF_LOG, log),
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunks),
            ColumnFamilyDescriptor::new(CF_INDEX, index),
            ColumnFamilyDescriptor::new(CF_META, family()),
            ColumnFamilyDescriptor::new(CF_THROTTLES, family()),
            ColumnFamilyDescriptor::new(CF_WEIGHTS, family()),
            ColumnFamilyDescriptor::new(CF_CONFIG, family()),
            ColumnFamilyDescriptor::new(CF_DELAYED, family()),
            ColumnFamilyDescriptor::new(CF_LANES, lanes),
            ColumnFamilyDescriptor::new(CF_JOURNAL, journal),
        ];
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let lane_ordered = existing.iter().any(|name| name == upgrade::CF_LANE_ORDERED_MESSAGES);
        if lane_ordered {
            cfs.push(ColumnFamilyDescriptor::new(upgrade::CF_LANE_ORDERED_MESSAGES, family()));
        }
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io)?;
        upgrade::tally_lanes_if_untallied(&db)?;
        if lane_ordered {
            upgrade::move_lane_ordered_messages_into_chunks(&mut db)?;
        }
        Ok(RocksStore {
            db: Arc::new(db),
            sync_writes,
            lanes: RefCell::new(LaneIndexes::default()),
            journal: RefCell::new(Journal::default()),
            writes: RefCell::new(CommitWrites::default()),
            seq_high: Cell::new(0),
            horizon,
            chunk_resume: Cell::new(None),
            checkpoints: RefCell::new(CheckpointWriter::default()),
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        cf(&self.db, name)
    }

    fn recover_queues(&self) -> Result<Vec<QueueDef>, StorageError> {
        let mut queues = Vec::new();
        for entry in self.db.iterator_cf(self.cf(CF_QUEUES), rocksdb::IteratorMode::Start) {
            let (_, value) = entry.map_err(io)?;
            let rec: QueueRecord =
                prost::Message::decode(&*value).map_err(|e| StorageError::Corrupt(format!("queue definition: {e}")))?;
            let scripts = ScriptSources { on_enqueue: rec.on_enqueue_script, on_failure: rec.on_failure_script };
            queues.push(QueueDef {
                id: rec.id,
                name: rec.name,
                settings: QueueSettings {
                    visibility_timeout: std::time::Duration::from_millis(rec.visibility_timeout_ms),
                    max_attempts: crate::domain::queue::max_attempts_from_wire(rec.max_attempts)
                        .unwrap_or(crate::domain::queue::DEFAULT_MAX_ATTEMPTS),
                    max_payload_bytes: rec.max_payload_bytes,
                    quantum: crate::domain::queue::quantum_from_wire(rec.quantum)
                        .unwrap_or(crate::domain::queue::DEFAULT_QUANTUM),
                },
                scripts,
            });
        }
        Ok(queues)
    }

    /// The stored messages of every lane, from the lane tallies and the
    /// journal: one entry per lane, whatever the depth; they also rebuild
    /// the lane index. Ends with a checkpoint, so the journal starts empty.
    fn recover_lanes(&self) -> Result<(Vec<RecoveredLane>, u64), StorageError> {
        let mut tallies: FastMap<Vec<u8>, Tally> = FastMap::default();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_LANES));
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let tally = Tally::decode(value).ok_or_else(|| StorageError::Corrupt(format!("lane tally {key:?}")))?;
            tallies.insert(key.to_vec(), tally);
            iter.next();
        }
        iter.status().map_err(io)?;
        // Every lane the journal names is written by the checkpoint below,
        // and so is every emptied lane, which it deletes.
        let mut rewrite: Vec<Vec<u8>> = tallies.iter().filter(|(_, t)| t.count <= 0).map(|(k, _)| k.clone()).collect();
        let mut seq_high = self.meta_u64(SEQ_HIGH)?.unwrap_or(0);
        let mut journal_len = 0;
        let mut names = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_JOURNAL));
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let entry = journal::decode(value, journal::numbers_lanes(key), &mut names)
                .ok_or_else(|| StorageError::Corrupt(format!("journal entry {key:?}")))?;
            seq_high = seq_high.max(entry.seq_high);
            for (lane_key, delta) in entry.lanes {
                tallies.entry(lane_key.clone()).or_default().absorb(&delta);
                rewrite.push(lane_key);
            }
            journal_len += 1;
            iter.next();
        }
        iter.status().map_err(io)?;
        let mut lanes = Vec::new();
        let mut indexes = LaneIndexes::default();
        let mut max_seq = seq_high;
        for (key, tally) in &mut tallies {
            let corrupt = || StorageError::Corrupt(format!("lane tally {key:?}"));
            let (queue, lane) = keys::parse_lane_key(key).ok_or_else(corrupt)?;
            tally.closed.clear();
            max_seq = max_seq.max(tally.max_seq);
            if tally.count > 0 {
                let latest_weight = (tally.weight_seq > 0).then_some((tally.weight_seq, tally.weight));
                let index = LaneIndex::recovered(Arc::from(key.as_slice()), tally);
                indexes.insert(queue, lane.clone(), index);
                lanes.push(RecoveredLane { queue, lane, pending: tally.count as u64, latest_weight });
            }
        }
        rewrite.sort_unstable();
        rewrite.dedup();
        let mut batch = WriteBatch::default();
        for key in rewrite {
            match tallies.get(&key).filter(|t| t.count > 0) {
                Some(tally) => batch.put_cf(self.cf(CF_LANES), &key, tally.encode()),
                None => batch.delete_cf(self.cf(CF_LANES), &key),
            }
        }
        if journal_len > 0 {
            let (first, past_last) = journal::ALL_KEYS;
            batch.delete_range_cf(self.cf(CF_JOURNAL), first, past_last);
            batch.put_cf(self.cf(CF_META), SEQ_HIGH, max_seq.to_be_bytes());
        }
        if !batch.is_empty() {
            self.db.write(batch).map_err(io)?;
        }
        // Log entries older than every open message are dead.
        self.horizon.raise(indexes.oldest_open().unwrap_or(max_seq + 1));
        *self.lanes.borrow_mut() = indexes;
        // The batch above deleted every entry, so the keys start over too.
        let mut journal = self.journal.borrow_mut();
        journal.checkpointed();
        journal.next = 0;
        Ok((lanes, max_seq))
    }

    /// Adds a sealed chunk to `batch`: the sealed messages, with the records
    /// of those not held in memory read from the log.
    fn write_chunk(
        &self,
        batch: &mut WriteBatch,
        queue: QueueId,
        lane: &Lane,
        sealed: &[OpenMessage],
    ) -> Result<(), StorageError> {
        let mut value = Vec::with_capacity(sealed.iter().map(|m| m.body.as_ref().map_or(64, |b| b.1.len() + 24)).sum());
        let mut previous = 0;
        lane_reads::open_records(&self.db, queue, sealed, |seq, id, record| {
            keys::push_chunk_message(&mut value, previous, seq, id, record);
            previous = seq;
            Ok(true)
        })?;
        let last = sealed.last().map_or(0, |m| m.seq);
        batch.put_cf(self.cf(CF_CHUNKS), keys::chunk_key(queue, lane, last), value);
        Ok(())
    }

    /// Checkpoints: the whole tally of every lane changed since the last
    /// checkpoint (and the deletion of those of lanes emptied since), and
    /// the deletion of the journal entries they hold, in one batch, which
    /// a thread of its own writes (`checkpoint_writer.rs`); with `wait`,
    /// this returns once it has landed. Lanes whose oldest open message
    /// has grown too old are sealed first, and the log's horizon rises to
    /// the oldest open message left. One pass over the lanes in slot order:
    /// looking each changed lane up by name cost a microsecond per lane in
    /// cache misses, 0.1 s a checkpoint with 100,000 active lanes.
    fn checkpoint(&self, indexes: &mut LaneIndexes, journal: &mut Journal, wait: bool) -> Result<(), StorageError> {
        let mut checkpoints = self.checkpoints.borrow_mut();
        // This one deletes the journal up to its own entries: the last one
        // must have landed.
        checkpoints.wait()?;
        let seq_high = self.seq_high.get();
        let mut horizon = seq_high + 1;
        let mut released = 0;
        // In key order, which RocksDB's memtable takes three times as fast as
        // the lanes' order (20 against 67 ms for 100,000 lanes). Deletes come
        // first: a lane emptied and stored again since has its put after.
        let mut tallies = checkpoints.tallies();
        for key in journal.emptied.drain(..) {
            tallies.delete(key);
        }
        // Sealing is a commit of its own: the chunks, and the lanes' changes
        // in a journal entry, written before the tallies that hold them may
        // land.
        let mut seals = WriteBatch::default();
        let mut seal_entry = Vec::new();
        let mut sealed_lanes = Vec::new();
        for id in 0..indexes.slot_count() {
            // The lanes a few slots on load while this one is visited.
            indexes.prefetch(id + 4);
            let Some(Slot { queue, lane, index }) = indexes.live_slot_mut(id) else { continue };
            if let Some(oldest) = index.oldest_open_bound() {
                if oldest.saturating_add(journal.max_open_age) >= seq_high {
                    horizon = horizon.min(oldest);
                } else {
                    released += index.body_bytes();
                    let sealed = index.seal().expect("the lane has open messages");
                    self.write_chunk(&mut seals, *queue, lane, &sealed)?;
                    if seal_entry.is_empty() {
                        journal::start_entry(&mut seal_entry, 0);
                    }
                    index.finish_commit(&mut seal_entry, &mut journal.numbered);
                    index.mark_dirty();
                    sealed_lanes.push(id);
                }
            }
            if index.is_dirty() {
                index.checkpointed();
                tallies.put(Arc::clone(index.key()), &index.tally().encode());
            }
        }
        for id in sealed_lanes {
            indexes.committed(id);
        }
        indexes.records_bytes = indexes.records_bytes.saturating_sub(released);
        if !seal_entry.is_empty() {
            seals.put_cf(self.cf(CF_JOURNAL), journal::key(journal.next), seal_entry);
            journal.next += 1;
        }
        self.drop_log_below(&mut seals, indexes, horizon);
        if !seals.is_empty() {
            // Once the horizon rises, compactions drop the log entries of
            // what was sealed: the seals must outlast a crash first.
            let mut opts = WriteOptions::default();
            opts.set_sync(self.sync_writes);
            self.db.write_opt(seals, &opts).map_err(io)?;
        }
        self.horizon.raise(horizon);
        let batch = CheckpointBatch { tallies, journal_end: journal.next, seq_high };
        journal.checkpointed();
        checkpoints.start(&self.db, batch)?;
        if wait {
            checkpoints.wait()?;
        }
        Ok(())
    }

    /// Deletes the log's entries below a new horizon, in the batch that
    /// makes them dead or a later one. Compactions would drop them anyway
    /// (see `log_gc.rs`), but a range delete also lets the next flush leave
    /// out those still in the memtable instead of writing them out only for
    /// a compaction to drop them. Every message put later has a higher
    /// sequence. The caller raises the horizon once the batch is written.
    fn drop_log_below(&self, batch: &mut WriteBatch, indexes: &LaneIndexes, horizon: u64) {
        let below = self.horizon.get();
        if horizon > below {
            for queue in indexes.queues() {
                batch.delete_range_cf(self.cf(CF_LOG), keys::log_key(queue, below), keys::log_key(queue, horizon));
            }
        }
    }

    /// Delayed messages per queue.
    fn recover_delayed(&self) -> Result<Vec<(QueueId, u64)>, StorageError> {
        let mut delayed = std::collections::BTreeMap::<QueueId, u64>::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_DELAYED));
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let (_, queue, _) =
                keys::parse_delayed_key(key).ok_or_else(|| StorageError::Corrupt(format!("delayed entry {key:?}")))?;
            *delayed.entry(queue).or_default() += 1;
            iter.next();
        }
        iter.status().map_err(io)?;
        Ok(delayed.into_iter().collect())
    }

    fn first_due(&self) -> Result<Option<u64>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_DELAYED));
        iter.seek_to_first();
        let first = iter.key().and_then(keys::parse_delayed_key).map(|(due, _, _)| due);
        iter.status().map_err(io)?;
        Ok(first)
    }

    fn recover_throttles(&self) -> Result<Vec<(String, ThrottleLimit)>, StorageError> {
        let mut out = Vec::new();
        for entry in self.db.iterator_cf(self.cf(CF_THROTTLES), rocksdb::IteratorMode::Start) {
            let (key, value) = entry.map_err(io)?;
            let corrupt = || StorageError::Corrupt(format!("throttle {key:?}"));
            let rec: ThrottleRecord = prost::Message::decode(&*value).map_err(|_| corrupt())?;
            let limit = ThrottleLimit::new(rec.rate_per_second, rec.burst).map_err(|_| corrupt())?;
            out.push((String::from_utf8(key.to_vec()).map_err(|_| corrupt())?, limit));
        }
        Ok(out)
    }

    fn recover_config(&self) -> Result<Vec<(String, String)>, StorageError> {
        let mut out = Vec::new();
        for entry in self.db.iterator_cf(self.cf(CF_CONFIG), rocksdb::IteratorMode::Start) {
            let (key, value) = entry.map_err(io)?;
            let corrupt = || StorageError::Corrupt(format!("configuration entry {key:?}"));
            let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
            let value = String::from_utf8(value.to_vec()).map_err(|_| corrupt())?;
            out.push((key, value));
        }
        Ok(out)
    }

    fn recover_weights(&self) -> Result<Vec<(QueueId, String, u32)>, StorageError> {
        let mut out = Vec::new();
        for entry in self.db.iterator_cf(self.cf(CF_WEIGHTS), rocksdb::IteratorMode::Start) {
            let (key, value) = entry.map_err(io)?;
            let corrupt = || StorageError::Corrupt(format!("weight override {key:?}"));
            let (queue, fairness_key) = keys::parse_weight_key(&key).ok_or_else(corrupt)?;
            let weight = u32::from_be_bytes((*value).try_into().map_err(|_| corrupt())?);
            out.push((queue, fairness_key.to_owned(), weight));
        }
        Ok(out)
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        let value = self.db.get_cf(self.cf(CF_META), key).map_err(io)?;
        Ok(value.and_then(|v| v.try_into().ok().map(u64::from_be_bytes)))
    }
}

/// The slot of `lane`, noted in `touched` the first time a commit changes
/// it; its records held in memory are left out of the total until the
/// commit ends.
fn touch(indexes: &mut LaneIndexes, touched: &mut Vec<SlotId>, queue: QueueId, lane: &Lane, slot: LaneSlot) -> SlotId {
    let id = indexes.resolve(slot, queue, lane);
    let index = &indexes.slot_mut(id).index;
    if !index.is_touched() {
        let held = index.body_bytes();
        indexes.records_bytes = indexes.records_bytes.saturating_sub(held);
        touched.push(id);
    }
    id
}

impl Store for RocksStore {
    fn recover(&self) -> Result<Recovered, StorageError> {
        let queues = self.recover_queues()?;
        let (lanes, max_seq) = self.recover_lanes()?;
        self.seq_high.set(max_seq);
        let delayed = self.recover_delayed()?;
        let stored_next = self.meta_u64(NEXT_QUEUE_ID)?.unwrap_or(1);
        let next_queue_id = queues.iter().map(|q| q.id + 1).fold(stored_next, u64::max);
        Ok(Recovered {
            queues,
            lanes,
            max_seq,
            next_queue_id,
            throttles: self.recover_throttles()?,
            weights: self.recover_weights()?,
            config: self.recover_config()?,
            delayed,
            next_due_ms: self.first_due()?,
        })
    }

    fn commit(&self, changes: ChangeSet) -> Result<(), StorageError> {
        self.checkpoints.borrow().check()?;
        let ChangeSet { changes, needs_sync } = changes;
        let mut batch = WriteBatch::default();
        // Taken out for the commit and given back at its end: a commit that
        // fails part way leaves none of its writes behind for the next.
        let mut writes = self.writes.take();
        let CommitWrites { log, index: index_writes } = &mut writes;
        let mut indexes = self.lanes.borrow_mut();
        // Lanes this commit changed, each once.
        let mut touched: Vec<SlotId> = Vec::new();
        let mut seq_high = self.seq_high.get();
        // A deleted queue's tallies go with a range delete; a checkpoint
        // right after makes sure no journal entry brings them back.
        let mut queue_deleted = false;
        let mut logged = 0;
        // Each change is dropped as soon as it is applied, while what it
        // points to (its lane's key, its record) is still in cache.
        for change in changes {
            match &change {
                Change::PutQueue(def) => {
                    let rec = QueueRecord {
                        id: def.id,
                        name: def.name.clone(),
                        visibility_timeout_ms: def.settings.visibility_timeout.as_millis() as u64,
                        quantum: def.settings.quantum,
                        max_attempts: def.settings.max_attempts,
                        max_payload_bytes: def.settings.max_payload_bytes,
                        on_enqueue_script: def.scripts.on_enqueue.clone(),
                        on_failure_script: def.scripts.on_failure.clone(),
                    };
                    batch.put_cf(self.cf(CF_QUEUES), def.name.as_bytes(), prost::Message::encode_to_vec(&rec));
                }
                Change::DeleteQueue { id, name } => {
                    // Writes gathered so far go first, so the range deletes
                    // cover them.
                    index_writes.add_to(&mut batch, self.cf(CF_INDEX));
                    let (start, end) = keys::queue_range(*id);
                    batch.delete_cf(self.cf(CF_QUEUES), name.as_bytes());
                    for family in [CF_LOG, CF_CHUNKS, CF_INDEX, CF_WEIGHTS, CF_LANES] {
                        batch.delete_range_cf(self.cf(family), start, end);
                    }
                    touched.retain(|&slot| {
                        let Slot { queue, index, .. } = indexes.slot_mut(slot);
                        let other = *queue != *id;
                        if !other {
                            // Counted again, so that forgetting takes it out.
                            let bytes = index.body_bytes();
                            indexes.records_bytes += bytes;
                        }
                        other
                    });
                    indexes.forget_queue(*id);
                    queue_deleted = true;
                }
                Change::SetNextQueueId(next) => batch.put_cf(self.cf(CF_META), NEXT_QUEUE_ID, next.to_be_bytes()),
                Change::PutMessage { queue, lane, slot, seq, id, weight, record } => {
                    // Into the log or a chunk when the commit ends.
                    index_writes
                        .put_with(keys::index_key(*queue, *id), |out| keys::push_index_value(out, lane, *seq, *weight));
                    let slot = touch(&mut indexes, &mut touched, *queue, lane, *slot);
                    indexes.slot_mut(slot).index.add(*seq, *weight, *id, record.clone());
                    seq_high = seq_high.max(*seq);
                }
                Change::DeleteMessage { queue, lane, slot, seq, id } => {
                    // Its log entry, if it has one, is left to compactions.
                    index_writes.delete(keys::index_key(*queue, *id));
                    let slot = touch(&mut indexes, &mut touched, *queue, lane, *slot);
                    if let Some(last) = indexes.slot_mut(slot).index.remove(*seq) {
                        batch.delete_cf(self.cf(CF_CHUNKS), keys::chunk_key(*queue, lane, last));
                    }
                }
                Change::PutThrottle { key, limit } => {
                    let rec = ThrottleRecord { rate_per_second: limit.rate_per_second, burst: limit.burst };
                    batch.put_cf(self.cf(CF_THROTTLES), key.as_bytes(), prost::Message::encode_to_vec(&rec));
                }
                Change::DeleteThrottle { key } => batch.delete_cf(self.cf(CF_THROTTLES), key.as_bytes()),
                Change::PutWeight { queue, fairness_key, weight } => {
                    batch.put_cf(self.cf(CF_WEIGHTS), keys::weight_key(*queue, fairness_key), weight.to_be_bytes())
                }
                Change::DeleteWeight { queue, fairness_key } => {
                    batch.delete_cf(self.cf(CF_WEIGHTS), keys::weight_key(*queue, fairness_key))
                }
                Change::PutConfig { key, value } => batch.put_cf(self.cf(CF_CONFIG), key.as_bytes(), value.as_bytes()),
                Change::DeleteConfig { key } => batch.delete_cf(self.cf(CF_CONFIG), key.as_bytes()),
                Change::PutDelayed { queue, lane, id, weight, due_ms, record } => {
                    let key = keys::delayed_key(*due_ms, *queue, *id);
                    batch.put_cf(self.cf(CF_DELAYED), key, keys::delayed_value(lane, *weight, record));
                    index_writes.put_with(keys::index_key(*queue, *id), |out| {
                        keys::push_delayed_index_value(out, lane, *weight, *due_ms)
                    });
                }
                Change::DeleteDelayed { queue, id, due_ms } => {
                    batch.delete_cf(self.cf(CF_DELAYED), keys::delayed_key(*due_ms, *queue, *id))
                }
                Change::DiscardDelayed { queue, id, due_ms } => {
                    batch.delete_cf(self.cf(CF_DELAYED), keys::delayed_key(*due_ms, *queue, *id));
                    index_writes.delete(keys::index_key(*queue, *id));
                }
            }
        }
        index_writes.add_to(&mut batch, self.cf(CF_INDEX));
        let mut journal = self.journal.borrow_mut();
        let stored_more = seq_high > self.seq_high.get();
        if stored_more {
            self.seq_high.set(seq_high);
        }
        if stored_more || !touched.is_empty() {
            let mut entry = Vec::with_capacity(64 * touched.len() + 8);
            journal::start_entry(&mut entry, if stored_more { seq_high } else { 0 });
            for id in touched {
                let held_elsewhere = indexes.records_bytes;
                let Slot { queue, lane, index } = indexes.slot_mut(id);
                if let Some(sealed) = index.seal_if_full() {
                    self.write_chunk(&mut batch, *queue, lane, &sealed)?;
                }
                index.log_new(|seq, id, record| {
                    // Its key, the message's id and its record.
                    logged += 16 + 16 + record.len();
                    log.put_with(keys::log_key(*queue, seq), |out| keys::push_log_value(out, id, record));
                });
                if held_elsewhere + index.body_bytes() > OPEN_RECORDS_BYTES {
                    index.drop_records();
                }
                let held = index.body_bytes();
                index.finish_commit(&mut entry, &mut journal.numbered);
                index.mark_dirty();
                if index.is_empty() {
                    journal.emptied.push(Arc::clone(index.key()));
                    indexes.forget(id);
                } else {
                    indexes.committed(id);
                }
                indexes.records_bytes += held;
            }
            journal.bytes += entry.len();
            batch.put_cf(self.cf(CF_JOURNAL), journal::key(journal.next), entry);
            journal.next += 1;
        }
        log.add_to(&mut batch, self.cf(CF_LOG));
        self.writes.replace(writes);
        // Between checkpoints the horizon rises every few MiB of log, so
        // most dead entries never leave the memtable.
        journal.logged += logged;
        let horizon = (journal.logged >= journal.horizon_every_bytes).then(|| {
            journal.logged = 0;
            let horizon = indexes.oldest_open().unwrap_or(self.seq_high.get() + 1);
            self.drop_log_below(&mut batch, &indexes, horizon);
            horizon
        });
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes && needs_sync);
        self.db.write_opt(batch, &opts).map_err(io)?;
        if let Some(horizon) = horizon {
            self.horizon.raise(horizon);
        }
        if journal.due() || queue_deleted {
            self.checkpoint(&mut indexes, &mut journal, queue_deleted)?;
        }
        Ok(())
    }

    fn lane_slot(&self, queue: QueueId, lane: &Lane) -> LaneSlot {
        self.lanes.borrow_mut().lane_slot(queue, lane)
    }

    fn read_ready(
        &self,
        queue: QueueId,
        lane: &Lane,
        after_seq: u64,
        limit: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError> {
        let mut indexes = self.lanes.borrow_mut();
        let Some(index) = indexes.get_mut(queue, lane) else { return Ok(()) };
        let mut taken = 0;
        let span = lane_reads::Span { after: after_seq, before: u64::MAX, want: limit };
        lane_reads::for_each_message(&self.db, queue, lane, index, span, &self.chunk_resume, |seq, id, record| {
            out.push(StoredMessage { seq, id, record: bytes::Bytes::copy_from_slice(record) });
            taken += 1;
            Ok(taken < limit)
        })
    }

    fn read_due(&self, now_ms: u64, limit: usize, out: &mut Vec<DueMessage>) -> Result<Option<u64>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_DELAYED));
        iter.seek_to_first();
        let mut next = None;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = || StorageError::Corrupt(format!("delayed message {key:?}"));
            let (due_ms, queue, id) = keys::parse_delayed_key(key).ok_or_else(corrupt)?;
            if due_ms > now_ms || out.len() >= limit {
                next = Some(due_ms);
                break;
            }
            let (lane, weight, record) = keys::parse_delayed_value(value).ok_or_else(corrupt)?;
            let record = bytes::Bytes::copy_from_slice(record);
            out.push(DueMessage { due_ms, queue, id, lane, weight, record });
            iter.next();
        }
        iter.status().map_err(io)?;
        Ok(next)
    }

    fn contains_message(&self, queue: QueueId, id: MessageId) -> Result<bool, StorageError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_INDEX), keys::index_key(queue, id)).map_err(io)?.is_some())
    }

    fn delayed_of_queue(
        &self,
        queue: QueueId,
        limit: usize,
        out: &mut Vec<(MessageId, u64)>,
    ) -> Result<(), StorageError> {
        let (start, end) = keys::queue_range(queue);
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(start.to_vec());
        opts.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_INDEX), opts);
        iter.seek_to_first();
        while out.len() < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            let corrupt = || StorageError::Corrupt(format!("message index entry {key:?}"));
            let (_, id) = keys::parse_index_key(key).ok_or_else(corrupt)?;
            if let Some(due_ms) = keys::parse_index_value(value).ok_or_else(corrupt)?.due_ms {
                out.push((id, due_ms));
            }
            iter.next();
        }
        iter.status().map_err(io)
    }

    fn locate(&self, queue: QueueId, id: MessageId) -> Result<Option<keys::IndexEntry>, StorageError> {
        let Some(value) = self.db.get_pinned_cf(self.cf(CF_INDEX), keys::index_key(queue, id)).map_err(io)? else {
            return Ok(None);
        };
        let entry = keys::parse_index_value(&value)
            .ok_or_else(|| StorageError::Corrupt(format!("message index entry of {id}")))?;
        Ok(Some(entry))
    }

    fn count_between(
        &self,
        queue: QueueId,
        lane: &Lane,
        after_seq: u64,
        before_seq: u64,
        cap: u64,
    ) -> Result<u64, StorageError> {
        let mut indexes = self.lanes.borrow_mut();
        let Some(index) = indexes.get_mut(queue, lane) else { return Ok(0) };
        let mut count = 0;
        let span = lane_reads::Span { after: after_seq, before: before_seq, want: cap.min(4096) as usize };
        lane_reads::for_each_message(&self.db, queue, lane, index, span, &self.chunk_resume, |_, _, _| {
            count += 1;
            Ok(count < cap)
        })?;
        Ok(count)
    }

    fn reclaim_queue_space(&self, queue: QueueId) {
        let db = Arc::clone(&self.db);
        std::thread::Builder::new()
            .name("fila-reclaim".into())
            .spawn(move || {
                let (start, end) = keys::queue_range(queue);
                for family in [CF_LOG, CF_CHUNKS, CF_INDEX] {
                    if let Some(handle) = db.cf_handle(family) {
                        db.compact_range_cf(handle, Some(&start[..]), Some(&end[..]));
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::warn!(error = %e, "could not start space reclamation"));
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.checkpoints.borrow_mut().wait()?;
        self.db.flush_wal(true).map_err(io)
    }
}
#[cfg(test)]
mod tests {
    use super::super::checkpoint_writer::TestOutcome;
    use super::super::lane_index::CHUNK_LEN;
    use super::*;
    use crate::domain::ThrottleSet;
    use bytes::Bytes;

    fn lane(key: &str) -> Lane {
        Lane::new(key.into(), ThrottleSet::default())
    }

    fn put(queue: QueueId, key: &str, seq: u64) -> (Change, MessageId) {
        let id = MessageId::generate();
        let change = Change::PutMessage {
            queue,
            lane: lane(key),
            slot: LaneSlot::default(),
            seq,
            id,
            weight: 0,
            record: Bytes::from(format!("{key}-{seq}")),
        };
        (change, id)
    }

    fn commit(store: &RocksStore, changes: Vec<Change>) {
        store.commit(ChangeSet { changes, needs_sync: true }).unwrap();
    }

    #[test]
    fn reads_one_lane_in_order_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        let mut changes: Vec<Change> = [(1, "a", 5), (1, "a", 2), (1, "b", 3), (1, "a", 9), (2, "a", 4)]
            .into_iter()
            .map(|(q, k, s)| put(q, k, s).0)
            .collect();
        let throttled = Lane::new("a".into(), ThrottleSet::new(&["x"]));
        changes.push(Change::PutMessage {
            queue: 1,
            lane: throttled.clone(),
            slot: LaneSlot::default(),
            seq: 3,
            id: MessageId::generate(),
            weight: 0,
            record: Bytes::from("ax-3"),
        });
        commit(&store, changes);
        let mut out = Vec::new();
        store.read_ready(1, &lane("a"), 0, 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 5, 9]);
        out.clear();
        store.read_ready(1, &lane("a"), 2, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].record, Bytes::from("a-5"));
        assert_eq!(out[0].seq, 5);
        out.clear();
        store.read_ready(1, &throttled, 0, 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn recovers_queues_lanes_limits_and_sequence_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (msg, id) = put(1, "a", 7);
        {
            let store = RocksStore::open(dir.path(), true).unwrap();
            let def = QueueDef {
                id: 1,
                name: "q".into(),
                settings: QueueSettings::default(),
                scripts: ScriptSources { on_enqueue: Some("function on_enqueue(m) end".into()), on_failure: None },
            };
            let weighted = Change::PutMessage {
                queue: 1,
                lane: lane("b"),
                slot: LaneSlot::default(),
                seq: 4,
                id: MessageId::generate(),
                weight: 3,
                record: Bytes::from("b"),
            };
            commit(
                &store,
                vec![
                    Change::PutQueue(def),
                    Change::SetNextQueueId(2),
                    msg,
                    put(1, "a", 3).0,
                    weighted,
                    Change::PutThrottle { key: "p".into(), limit: ThrottleLimit::new(2.5, 4.0).unwrap() },
                    Change::PutWeight { queue: 1, fairness_key: "a".into(), weight: 9 },
                    Change::PutConfig { key: "tenant.acme".into(), value: "gold".into() },
                ],
            );
        }
        let store = RocksStore::open(dir.path(), true).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(rec.queues.len(), 1);
        assert_eq!(rec.queues[0].name, "q");
        assert_eq!(rec.queues[0].scripts.on_enqueue.as_deref(), Some("function on_enqueue(m) end"));
        assert_eq!(rec.next_queue_id, 2);
        assert_eq!(rec.max_seq, 7);
        let mut lanes = rec.lanes.clone();
        lanes.sort_by(|a, b| a.lane.fairness_key.cmp(&b.lane.fairness_key));
        assert_eq!(
            lanes.iter().map(|l| (&*l.lane.fairness_key, l.pending, l.latest_weight)).collect::<Vec<_>>(),
            vec![("a", 2, None), ("b", 1, Some((4, 3)))]
        );
        assert_eq!(rec.throttles, vec![("p".to_string(), ThrottleLimit::new(2.5, 4.0).unwrap())]);
        assert_eq!(rec.weights, vec![(1, "a".to_string(), 9)]);
        assert_eq!(rec.config, vec![("tenant.acme".to_string(), "gold".to_string())]);
        assert!(store.contains_message(1, id).unwrap());
        commit(&store, vec![delete(1, "a", 7, id)]);
        assert!(!store.contains_message(1, id).unwrap());
    }

    #[test]
    fn deleting_a_queue_removes_only_its_messages_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        commit(
            &store,
            vec![
                put(1, "a", 1).0,
                put(2, "a", 2).0,
                Change::PutWeight { queue: 1, fairness_key: "a".into(), weight: 2 },
                Change::PutWeight { queue: 2, fairness_key: "a".into(), weight: 5 },
            ],
        );
        commit(&store, vec![Change::DeleteQueue { id: 1, name: "one".into() }]);
        let rec = store.recover().unwrap();
        assert_eq!(rec.lanes, vec![RecoveredLane { queue: 2, lane: lane("a"), pending: 1, latest_weight: None }]);
        assert_eq!(rec.weights, vec![(2, "a".to_string(), 5)]);
    }

    fn pending_by_key(rec: &Recovered) -> Vec<(QueueId, String, u64)> {
        let mut lanes: Vec<_> =
            rec.lanes.iter().map(|l| (l.queue, l.lane.fairness_key.to_string(), l.pending)).collect();
        lanes.sort();
        lanes
    }

    #[test]
    fn lane_tallies_follow_puts_and_deletes_and_emptied_lanes_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        let (a1, a1_id) = put(1, "a", 1);
        let (b2, b2_id) = put(1, "b", 2);
        commit(&store, vec![a1, b2, put(1, "a", 3).0, put(1, "a", 4).0]);
        // Delete and re-put in one batch (a retry moving to the tail).
        commit(&store, vec![delete(1, "a", 1, a1_id), put(1, "a", 5).0, delete(1, "b", 2, b2_id)]);
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 3)]);
        assert_eq!(rec.max_seq, 5);
        let tallies = store.db.iterator_cf(store.cf(CF_LANES), rocksdb::IteratorMode::Start).count();
        assert_eq!(tallies, 1, "the emptied lane's tally was removed at recovery");
    }

    fn read_all(store: &RocksStore, queue: QueueId, key: &str) -> Vec<u64> {
        let mut out = Vec::new();
        store.read_ready(queue, &lane(key), 0, usize::MAX, &mut out).unwrap();
        out.iter().map(|m| m.seq).collect()
    }

    fn entries(store: &RocksStore, family: &str) -> usize {
        store.db.iterator_cf(store.cf(family), rocksdb::IteratorMode::Start).count()
    }

    /// Log entries left once compactions have dropped the dead ones.
    fn compacted_log_entries(store: &RocksStore) -> usize {
        store.db.compact_range_cf(store.cf(CF_LOG), None::<&[u8]>, None::<&[u8]>);
        entries(store, CF_LOG)
    }

    fn delete(queue: QueueId, key: &str, seq: u64, id: MessageId) -> Change {
        Change::DeleteMessage { queue, lane: lane(key), slot: LaneSlot::default(), seq, id }
    }

    #[test]
    fn a_journal_of_the_form_before_numbered_lanes_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (first, first_id) = put(1, "a", 1);
        {
            let store = RocksStore::open(dir.path(), false).unwrap();
            store.recover().unwrap();
            commit(&store, vec![first, put(1, "a", 2).0, put(1, "b", 3).0]);
            commit(&store, vec![put(1, "a", 4).0, put(1, "b", 5).0]);
            commit(&store, vec![delete(1, "a", 1, first_id)]);
            // Rewrite the journal as a version before numbered lanes wrote it.
            let family = store.cf(CF_JOURNAL);
            let entries: Vec<_> =
                store.db.iterator_cf(family, rocksdb::IteratorMode::Start).map(Result::unwrap).collect();
            assert_eq!(entries.len(), 3);
            let mut names = Vec::new();
            let mut batch = WriteBatch::default();
            for (n, (key, value)) in entries.iter().enumerate() {
                assert!(journal::numbers_lanes(key));
                let entry = journal::decode(value, true, &mut names).unwrap();
                let mut old = Vec::new();
                journal::start_entry(&mut old, entry.seq_high);
                for (lane_key, delta) in &entry.lanes {
                    journal::push_named_lane(&mut old, lane_key, delta);
                }
                batch.delete_cf(family, key);
                batch.put_cf(family, (n as u64).to_be_bytes(), old);
            }
            store.db.write(batch).unwrap();
        }
        let store = RocksStore::open(dir.path(), false).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".to_string(), 2), (1, "b".to_string(), 2)]);
        assert_eq!(rec.max_seq, 5);
        let mut out = Vec::new();
        store.read_ready(1, &lane("a"), 0, 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 4]);
        let journal = store.db.iterator_cf(store.cf(CF_JOURNAL), rocksdb::IteratorMode::Start).count();
        assert_eq!(journal, 0, "recovery ends with a checkpoint");
    }

    #[test]
    fn a_large_chunk_is_read_on_from_where_the_last_read_stopped_and_from_anywhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        // One commit of 200 messages of one lane: one chunk.
        let (changes, ids): (Vec<_>, Vec<_>) = (1..=200).map(|seq| put(1, "a", seq)).unzip();
        commit(&store, changes);
        assert_eq!(entries(&store, CF_CHUNKS), 1);
        let read = |after: u64, limit: usize| {
            let mut out = Vec::new();
            store.read_ready(1, &lane("a"), after, limit, &mut out).unwrap();
            out.iter().map(|m| m.seq).collect::<Vec<_>>()
        };
        // In steps, each going on from the last.
        let mut cursor = 0;
        for _ in 0..6 {
            let got = read(cursor, 32);
            assert_eq!(got, (cursor + 1..=cursor + 32).collect::<Vec<_>>());
            cursor += 32;
        }
        // Back before where the last read stopped, and past it.
        assert_eq!(read(10, 3), vec![11, 12, 13]);
        assert_eq!(read(150, 2), vec![151, 152]);
        assert_eq!(read(100, 2), vec![101, 102]);
        // Messages deleted since are left out on the way.
        commit(&store, vec![delete(1, "a", 104, ids[103]), delete(1, "a", 105, ids[104])]);
        assert_eq!(read(102, 3), vec![103, 106, 107]);
        assert_eq!(read(107, 1), vec![108]);
        assert_eq!(read(195, 32), (196..=200).collect::<Vec<_>>());
    }

    #[test]
    fn a_lane_reads_its_sealed_chunks_then_its_open_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        let mut stored = Vec::new();
        let mut seq = 0;
        // Lane a interleaved with lane b in the log; one large commit and
        // many small ones, so chunks of several sizes are sealed.
        for batch in [40, 1, 1, 30, 1, 10] {
            let mut changes = Vec::new();
            for _ in 0..batch {
                seq += 1;
                let (change, id) = put(1, "a", seq);
                changes.push(change);
                stored.push((seq, id));
                seq += 1;
                changes.push(put(1, "b", seq).0);
            }
            commit(&store, changes);
        }
        assert!(entries(&store, CF_CHUNKS) >= 2, "sealed chunks");
        let all: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(read_all(&store, 1, "a"), all);
        let mut out = Vec::new();
        store.read_ready(1, &lane("a"), all[35], 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), all[36..46]);
        assert_eq!(out[0].record, Bytes::from(format!("a-{}", all[36])));
        assert_eq!(store.count_between(1, &lane("a"), all[9], all[20], 100).unwrap(), 10);
        // Acknowledged out of order, then all: every chunk goes with its
        // last live message.
        let (middle, rest): (Vec<_>, Vec<_>) = stored.iter().partition(|(s, _)| s % 3 == 0);
        commit(&store, middle.iter().map(|&&(s, id)| delete(1, "a", s, id)).collect());
        let left: Vec<u64> = rest.iter().map(|(s, _)| *s).collect();
        assert_eq!(read_all(&store, 1, "a"), left);
        commit(&store, rest.iter().map(|&&(s, id)| delete(1, "a", s, id)).collect());
        assert_eq!(read_all(&store, 1, "a"), Vec::<u64>::new());
        let b_chunks = read_all(&store, 1, "b").len() / CHUNK_LEN;
        assert!(entries(&store, CF_CHUNKS) <= b_chunks, "lane a's chunks are gone");
    }

    #[test]
    fn after_a_restart_chunks_are_counted_when_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = Vec::new();
        {
            let store = RocksStore::open(dir.path(), false).unwrap();
            for seq in 1..=100 {
                let (change, id) = put(1, "a", seq);
                commit(&store, vec![change]);
                stored.push((seq, id));
            }
            // Acknowledged out of order before the crash.
            commit(&store, stored.iter().filter(|(s, _)| s % 10 == 5).map(|&(s, id)| delete(1, "a", s, id)).collect());
        }
        let store = RocksStore::open(dir.path(), false).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 90)]);
        let left: Vec<(u64, MessageId)> = stored.into_iter().filter(|(s, _)| s % 10 != 5).collect();
        assert_eq!(read_all(&store, 1, "a"), left.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        commit(&store, left.iter().map(|&(s, id)| delete(1, "a", s, id)).collect());
        assert_eq!(entries(&store, CF_CHUNKS), 0);
        let rec = store.recover().unwrap();
        assert!(rec.lanes.is_empty());
        assert_eq!(compacted_log_entries(&store), 0, "nothing open: every log entry is dead");
    }

    #[test]
    fn after_a_checkpoint_fails_no_commit_is_taken_and_a_restart_recovers_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        store.recover().unwrap();
        store.journal.borrow_mut().checkpoint_bytes = 1;
        store.checkpoints.borrow_mut().outcome = TestOutcome::Failed;
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            vec![put(1, "a", seq).0, put(1, "b", seq + 100).0]
        };
        // The first checkpoint starts (and fails); the commit that would
        // start the next finds out, after its own write.
        commit(&store, next());
        let error = store.commit(ChangeSet { changes: next(), needs_sync: true }).unwrap_err();
        assert!(error.to_string().contains("restart"), "{error}");
        // Nothing more is written.
        let refused = store.commit(ChangeSet { changes: next(), needs_sync: true }).unwrap_err();
        assert_eq!(refused, error);
        drop(store);
        let store = RocksStore::open(dir.path(), false).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(pending_by_key(&recovered), vec![(1, "a".to_string(), 2), (1, "b".to_string(), 2)]);
        assert_eq!(read_all(&store, 1, "a"), vec![1, 2]);
    }

    #[test]
    fn sequences_are_not_reused_when_the_log_empties() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), false).unwrap();
            let (change, id) = put(1, "a", 41);
            commit(&store, vec![change]);
            commit(&store, vec![delete(1, "a", 41, id)]);
        }
        let store = RocksStore::open(dir.path(), false).unwrap();
        assert_eq!(store.recover().unwrap().max_seq, 41);
    }

    #[test]
    fn the_index_inserts_with_a_hint_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        let _store = RocksStore::open(dir.path(), false).unwrap();
        // RocksDB writes the options in force to an OPTIONS file; the
        // newest holds one section per column family.
        let newest = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .max()
            .expect("an OPTIONS file");
        let options = std::fs::read_to_string(newest).unwrap();
        let section = |family: &str| {
            let start = options.find(&format!("[CFOptions \"{family}\"]")).expect("a section per family");
            let rest = &options[start + 1..];
            rest[..rest.find("\n[CFOptions").unwrap_or(rest.len())].to_owned()
        };
        assert!(section(CF_INDEX).contains(INDEX_INSERT_HINT));
        // Only the index: elsewhere inserts append or land anywhere.
        assert!(!section(CF_LOG).contains(INDEX_INSERT_HINT));
    }

    /// Writes messages the way versions before the log did: one entry per
    /// message in `messages`, keyed by lane.
    fn write_lane_ordered(dir: &std::path::Path, messages: &[(QueueId, &str, u64)]) {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let names = [upgrade::CF_LANE_ORDERED_MESSAGES, CF_INDEX, CF_LANES, CF_META];
        let db = DB::open_cf(&opts, dir, names).unwrap();
        let mut tallies: FastMap<(QueueId, &str), (i64, u64)> = FastMap::default();
        for &(queue, key, seq) in messages {
            let id = MessageId::generate();
            let mut value = id.to_bytes().to_vec();
            value.extend_from_slice(format!("{key}-{seq}").as_bytes());
            let family = db.cf_handle(upgrade::CF_LANE_ORDERED_MESSAGES).unwrap();
            db.put_cf(family, keys::chunk_key(queue, &lane(key), seq), value).unwrap();
            let mut index = Vec::new();
            keys::push_index_value(&mut index, &lane(key), seq, 0);
            db.put_cf(db.cf_handle(CF_INDEX).unwrap(), keys::index_key(queue, id), index).unwrap();
            let tally = tallies.entry((queue, key)).or_default();
            *tally = (tally.0 + 1, tally.1.max(seq));
        }
        // First-version tallies: count, highest sequence, weight sequence
        // and weight, 28 raw bytes.
        for ((queue, key), (count, max_seq)) in tallies {
            let mut value = count.to_be_bytes().to_vec();
            value.extend_from_slice(&max_seq.to_be_bytes());
            value.extend_from_slice(&[0; 12]);
            db.put_cf(db.cf_handle(CF_LANES).unwrap(), keys::lane_key(queue, &lane(key)), value).unwrap();
        }
        db.put_cf(db.cf_handle(CF_META).unwrap(), upgrade::LANES_TALLIED, [1]).unwrap();
    }

    #[test]
    fn messages_stored_by_lane_by_an_older_version_move_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut messages: Vec<(QueueId, &str, u64)> = (1..=75).map(|seq| (1, "a", seq * 2)).collect();
        messages.extend([(1, "b", 3), (1, "b", 5), (2, "a", 7)]);
        write_lane_ordered(dir.path(), &messages);
        let store = RocksStore::open(dir.path(), false).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 75), (1, "b".into(), 2), (2, "a".into(), 1)]);
        assert_eq!(rec.max_seq, 150);
        assert_eq!(read_all(&store, 1, "a"), (1..=75).map(|s| s * 2).collect::<Vec<_>>());
        assert_eq!(read_all(&store, 1, "b"), vec![3, 5]);
        let mut out = Vec::new();
        store.read_ready(2, &lane("a"), 0, 10, &mut out).unwrap();
        assert_eq!(out[0].record, Bytes::from("a-7"));
        drop(store);
        let families = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!families.iter().any(|f| f == upgrade::CF_LANE_ORDERED_MESSAGES), "{families:?}");
    }

    #[test]
    fn messages_stored_by_lane_before_tallies_existed_move_too() {
        let dir = tempfile::tempdir().unwrap();
        write_lane_ordered(dir.path(), &[(1, "a", 1), (1, "a", 2)]);
        {
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [upgrade::CF_LANE_ORDERED_MESSAGES, CF_INDEX, CF_LANES, CF_META],
            )
            .unwrap();
            db.delete_cf(db.cf_handle(CF_META).unwrap(), upgrade::LANES_TALLIED).unwrap();
            db.delete_range_cf(db.cf_handle(CF_LANES).unwrap(), &[0u8; 8][..], &[0xffu8; 9][..]).unwrap();
        }
        let store = RocksStore::open(dir.path(), false).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 2)]);
        assert_eq!(read_all(&store, 1, "a"), vec![1, 2]);
    }

    mod model {
        //! The store against a model of what each lane holds, through random
        //! stores, reads, out-of-order deletes and restarts.
        use std::collections::{BTreeMap, HashSet};

        use proptest::prelude::*;

        use super::*;

        const KEYS: [&str; 3] = ["a", "b", "c"];

        #[derive(Debug, Clone)]
        enum Op {
            /// One commit storing `count` messages in lane `lane`.
            Put {
                lane: usize,
                count: usize,
                gap: u64,
            },
            /// Reads the lane from a message on (the scheduler reads before
            /// it deletes).
            Read {
                lane: usize,
                from: usize,
                limit: usize,
            },
            /// Compacts the log, which drops the entries below the horizon.
            Compact,
            /// One commit deleting `count` read messages of the lane (and, to
            /// retry them, storing them again under new sequences).
            Delete {
                lane: usize,
                pick: usize,
                count: usize,
                retry: bool,
            },
            Restart,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..3usize, 1..80usize, 0..3u64).prop_map(|(lane, count, gap)| Op::Put { lane, count, gap }),
                3 => (0..3usize, 0..100usize, 1..100usize).prop_map(|(lane, from, limit)| Op::Read { lane, from, limit }),
                3 => (0..3usize, any::<usize>(), 1..40usize, any::<bool>())
                    .prop_map(|(lane, pick, count, retry)| Op::Delete { lane, pick, count, retry }),
                1 => Just(Op::Restart),
                1 => Just(Op::Compact),
            ]
        }

        struct Run {
            dir: tempfile::TempDir,
            store: Option<RocksStore>,
            lanes: [BTreeMap<u64, MessageId>; 3],
            read: HashSet<u64>,
            next_seq: u64,
            last_seq: u64,
        }

        impl Run {
            fn store(&self) -> &RocksStore {
                self.store.as_ref().unwrap()
            }

            fn restart(&mut self) {
                let settings = {
                    let journal = self.store().journal.borrow();
                    (journal.checkpoint_bytes, journal.max_open_age, journal.horizon_every_bytes)
                };
                let outcome = self.store().checkpoints.borrow().outcome;
                self.store = None;
                self.store = Some(RocksStore::open(self.dir.path(), false).unwrap());
                let mut journal = self.store().journal.borrow_mut();
                (journal.checkpoint_bytes, journal.max_open_age, journal.horizon_every_bytes) = settings;
                drop(journal);
                self.store().checkpoints.borrow_mut().outcome = outcome;
                let rec = self.store().recover().unwrap();
                let expected: Vec<(QueueId, String, u64)> = KEYS
                    .iter()
                    .zip(&self.lanes)
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(k, l)| (1, k.to_string(), l.len() as u64))
                    .collect();
                assert_eq!(pending_by_key(&rec), expected);
                assert!(rec.max_seq >= self.last_seq);
                self.read.clear();
            }

            fn read(&mut self, lane: usize, from: usize, limit: usize) {
                let seqs: Vec<u64> = self.lanes[lane].keys().copied().collect();
                let after = if from == 0 || seqs.is_empty() { 0 } else { seqs[(from - 1) % seqs.len()] };
                let mut out = Vec::new();
                self.store().read_ready(1, &lane_of(lane), after, limit, &mut out).unwrap();
                let expected: Vec<u64> = seqs.iter().copied().filter(|&s| s > after).take(limit).collect();
                assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), expected);
                for m in &out {
                    assert_eq!(Some(&m.id), self.lanes[lane].get(&m.seq));
                }
                // The scheduler deletes only messages it has read (or
                // stored) since it started.
                self.read.extend(expected);
            }
        }

        fn lane_of(i: usize) -> Lane {
            lane(KEYS[i])
        }

        /// With `lose_checkpoints`, no checkpoint's batch lands, as if the
        /// broker crashed before each did: recovery replays every entry
        /// since the start, each checkpoint's numbering in turn.
        fn run(
            ops: Vec<Op>,
            checkpoint_bytes: usize,
            max_open_age: u64,
            horizon_every_bytes: usize,
            lose_checkpoints: bool,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Some(RocksStore::open(dir.path(), false).unwrap());
            let mut journal = store.as_ref().unwrap().journal.borrow_mut();
            (journal.checkpoint_bytes, journal.max_open_age, journal.horizon_every_bytes) =
                (checkpoint_bytes, max_open_age, horizon_every_bytes);
            drop(journal);
            if lose_checkpoints {
                store.as_ref().unwrap().checkpoints.borrow_mut().outcome = TestOutcome::Lost;
            }
            let mut run = Run { dir, store, lanes: Default::default(), read: HashSet::new(), next_seq: 1, last_seq: 0 };
            run.store().recover().unwrap();
            for op in ops {
                match op {
                    Op::Put { lane, count, gap } => {
                        let mut changes = Vec::new();
                        for _ in 0..count {
                            let (change, id) = put(1, KEYS[lane], run.next_seq);
                            run.lanes[lane].insert(run.next_seq, id);
                            run.last_seq = run.next_seq;
                            run.next_seq += 1 + gap;
                            changes.push(change);
                        }
                        run.read.extend(changes.iter().filter_map(|c| match c {
                            Change::PutMessage { seq, .. } => Some(*seq),
                            _ => None,
                        }));
                        commit(run.store(), changes);
                    }
                    Op::Read { lane, from, limit } => run.read(lane, from, limit),
                    Op::Delete { lane, pick, count, retry } => {
                        let readable: Vec<u64> =
                            run.lanes[lane].keys().copied().filter(|s| run.read.contains(s)).collect();
                        let mut changes = Vec::new();
                        for i in 0..count.min(readable.len()) {
                            let seq = readable[(pick.wrapping_add(i * 7)) % readable.len()];
                            let Some(id) = run.lanes[lane].remove(&seq) else { continue };
                            changes.push(delete(1, KEYS[lane], seq, id));
                            if retry {
                                let again = run.next_seq;
                                run.next_seq += 1;
                                run.last_seq = again;
                                let record = Bytes::from(format!("{}-{again}", KEYS[lane]));
                                let lane_of = lane_of(lane);
                                changes.push(Change::PutMessage {
                                    queue: 1,
                                    lane: lane_of,
                                    slot: LaneSlot::default(),
                                    seq: again,
                                    id,
                                    weight: 0,
                                    record,
                                });
                                run.lanes[lane].insert(again, id);
                                run.read.insert(again);
                            }
                        }
                        commit(run.store(), changes);
                    }
                    Op::Compact => {
                        let store = run.store();
                        store.db.compact_range_cf(store.cf(CF_LOG), None::<&[u8]>, None::<&[u8]>);
                    }
                    Op::Restart => run.restart(),
                }
            }
            // Everything read and deleted: nothing of the lanes is left.
            for (lane, key) in KEYS.iter().enumerate() {
                run.read(lane, 0, usize::MAX);
                let all: Vec<Change> =
                    std::mem::take(&mut run.lanes[lane]).into_iter().map(|(seq, id)| delete(1, key, seq, id)).collect();
                commit(run.store(), all);
            }
            assert_eq!(entries(run.store(), CF_CHUNKS), 0, "every chunk went with its last message");
            run.restart();
            assert_eq!(compacted_log_entries(run.store()), 0, "nothing open: every log entry is dead");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            #[test]
            fn the_store_keeps_what_each_lane_holds(
                ops in proptest::collection::vec(op(), 1..40),
                checkpoint_bytes in prop_oneof![Just(journal::CHECKPOINT_BYTES), 1..2_000usize],
                max_open_age in prop_oneof![Just(crate::storage::log_gc::MAX_OPEN_AGE), 1..200u64],
                horizon_every_bytes in prop_oneof![Just(crate::storage::log_gc::HORIZON_EVERY_BYTES), 1..2_000usize],
                lose_checkpoints in any::<bool>(),
            ) {
                run(ops, checkpoint_bytes, max_open_age, horizon_every_bytes, lose_checkpoints);
            }
        }
    }
}
