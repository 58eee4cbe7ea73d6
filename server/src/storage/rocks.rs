//! RocksDB implementation of [`Store`].

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, MemtableFactory, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::keys;
use super::tally::{self, Deltas, Tally};
use super::{Change, ChangeSet, DueMessage, QueueDef, Recovered, RecoveredLane, Store, StoredMessage};
use crate::domain::{Lane, MessageId, QueueId, QueueSettings, ScriptSources, StorageError, ThrottleLimit};

const CF_QUEUES: &str = "queues";
const CF_MESSAGES: &str = "messages";
const CF_INDEX: &str = "message_index";
const CF_META: &str = "meta";
const CF_THROTTLES: &str = "throttles";
const CF_WEIGHTS: &str = "weights";
const CF_CONFIG: &str = "config";
const CF_DELAYED: &str = "delayed";
const CF_LANES: &str = "lane_tallies";
const NEXT_QUEUE_ID: &[u8] = b"next_queue_id";
const MAX_TOTAL_WAL_BYTES: u64 = 128 * 1024 * 1024;
/// All memtables together; past it RocksDB flushes the largest.
const MEMTABLE_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Uncompressed blocks read from tables, for every column family.
const BLOCK_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Set once `lane_tallies` holds every lane (databases from before it
/// existed are tallied from the index on their first start).
const LANES_TALLIED: &[u8] = b"lanes_tallied";

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

pub struct RocksStore {
    db: Arc<DB>,
    sync_writes: bool,
}

fn io(e: rocksdb::Error) -> StorageError {
    StorageError::Io(e.into_string())
}

impl RocksStore {
    /// Opens (creating if needed) the database in `dir`. With `sync_writes`,
    /// commits that ask for it are fsynced before they return.
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
        // The scheduler thread is the only writer: the single-writer insert
        // path needs no atomic operations.
        opts.set_allow_concurrent_memtable_write(false);
        // Memory that does not grow with depth: all memtables together, and
        // one block cache shared by every family (by default each family
        // gets a cache of its own).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        let family = || {
            let mut options = Options::default();
            options.set_block_based_table_factory(&table);
            options
        };
        let mut messages = family();
        messages.set_compression_type(DBCompressionType::Lz4);
        messages.set_write_buffer_size(32 * 1024 * 1024);
        // The default skip list, one sorted list across all lanes. A hash of
        // per-lane skip lists (RocksDB's HashSkipList) made inserts cheaper,
        // but every flush then sorted the buckets into one list, which cost
        // more: with 1,000 active lanes the lifecycle ran at 64k msg/s with
        // it and 78k without (means of three alternated runs each).
        let mut lanes = family();
        lanes.set_merge_operator_associative(tally::MERGE_OPERATOR, tally::merge);
        // Tallies take a merge per lane touched by every commit and are read
        // only at recovery: an unsorted memtable makes each merge an append
        // (a sorted one searched the whole table per merge, a fifth of the
        // scheduler's time with 1,000 active lanes); the sort happens on flush.
        lanes.set_memtable_factory(MemtableFactory::Vector);
        lanes.set_write_buffer_size(16 * 1024 * 1024);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_QUEUES, family()),
            ColumnFamilyDescriptor::new(CF_MESSAGES, messages),
            ColumnFamilyDescriptor::new(CF_INDEX, family()),
            ColumnFamilyDescriptor::new(CF_META, family()),
            ColumnFamilyDescriptor::new(CF_THROTTLES, family()),
            ColumnFamilyDescriptor::new(CF_WEIGHTS, family()),
            ColumnFamilyDescriptor::new(CF_CONFIG, family()),
            ColumnFamilyDescriptor::new(CF_DELAYED, family()),
            ColumnFamilyDescriptor::new(CF_LANES, lanes),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io)?;
        Ok(RocksStore { db: Arc::new(db), sync_writes })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family is created at open")
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

    /// The stored messages of every lane, from the lane tallies: one entry
    /// per lane, whatever the depth. Tallies that dropped to zero are
    /// deleted on the way.
    fn recover_lanes(&self) -> Result<(Vec<RecoveredLane>, u64), StorageError> {
        if self.db.get_cf(self.cf(CF_META), LANES_TALLIED).map_err(io)?.is_none() {
            self.tally_lanes_from_index()?;
        }
        let mut lanes = Vec::new();
        let mut empty = WriteBatch::default();
        let mut max_seq = 0;
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_LANES));
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = || StorageError::Corrupt(format!("lane tally {key:?}"));
            let (queue, lane) = keys::parse_lane_key(key).ok_or_else(corrupt)?;
            let tally = Tally::decode(value).ok_or_else(corrupt)?;
            max_seq = max_seq.max(tally.max_seq);
            if tally.count > 0 {
                let latest_weight = (tally.weight_seq > 0).then_some((tally.weight_seq, tally.weight));
                lanes.push(RecoveredLane { queue, lane, pending: tally.count as u64, latest_weight });
            } else {
                empty.delete_cf(self.cf(CF_LANES), key);
            }
            iter.next();
        }
        iter.status().map_err(io)?;
        if !empty.is_empty() {
            self.db.write(empty).map_err(io)?;
        }
        Ok((lanes, max_seq))
    }

    /// Builds the lane tallies of a database written before they existed,
    /// from the message index (one pass over every stored message).
    fn tally_lanes_from_index(&self) -> Result<(), StorageError> {
        let mut deltas = Deltas::default();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_INDEX));
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = || StorageError::Corrupt(format!("message index entry {key:?}"));
            let (queue, _) = keys::parse_index_key(key).ok_or_else(corrupt)?;
            let keys::IndexEntry { lane, seq, weight, due_ms } = keys::parse_index_value(value).ok_or_else(corrupt)?;
            if due_ms.is_none() {
                deltas.add(queue, &lane, Tally::put(seq, weight));
            }
            iter.next();
        }
        iter.status().map_err(io)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LANES), &[0u8; 8][..], &[0xffu8; 9][..]);
        for ((queue, lane), tally) in deltas.into_iter() {
            batch.put_cf(self.cf(CF_LANES), keys::lane_key(queue, &lane), tally.encode());
        }
        batch.put_cf(self.cf(CF_META), LANES_TALLIED, [1]);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(io)
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
}

impl Store for RocksStore {
    fn recover(&self) -> Result<Recovered, StorageError> {
        let queues = self.recover_queues()?;
        let (lanes, max_seq) = self.recover_lanes()?;
        let delayed = self.recover_delayed()?;
        let stored_next = self
            .db
            .get_cf(self.cf(CF_META), NEXT_QUEUE_ID)
            .map_err(io)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
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

    fn commit(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let mut deltas = Deltas::default();
        for change in &changes.changes {
            match change {
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
                    let (start, end) = keys::queue_range(*id);
                    batch.delete_cf(self.cf(CF_QUEUES), name.as_bytes());
                    batch.delete_range_cf(self.cf(CF_MESSAGES), start, end);
                    batch.delete_range_cf(self.cf(CF_INDEX), start, end);
                    batch.delete_range_cf(self.cf(CF_WEIGHTS), start, end);
                    batch.delete_range_cf(self.cf(CF_LANES), start, end);
                    deltas.drop_queue(*id);
                }
                Change::SetNextQueueId(next) => batch.put_cf(self.cf(CF_META), NEXT_QUEUE_ID, next.to_be_bytes()),
                Change::PutMessage { queue, lane, seq, id, weight, record } => {
                    let mut value = Vec::with_capacity(16 + record.len());
                    value.extend_from_slice(&id.to_bytes());
                    value.extend_from_slice(record);
                    batch.put_cf(self.cf(CF_MESSAGES), keys::message_key(*queue, lane, *seq), value);
                    batch.put_cf(
                        self.cf(CF_INDEX),
                        keys::index_key(*queue, *id),
                        keys::index_value(lane, *seq, *weight),
                    );
                    deltas.add(*queue, lane, Tally::put(*seq, *weight));
                }
                Change::DeleteMessage { queue, lane, seq, id } => {
                    batch.delete_cf(self.cf(CF_MESSAGES), keys::message_key(*queue, lane, *seq));
                    batch.delete_cf(self.cf(CF_INDEX), keys::index_key(*queue, *id));
                    deltas.add(*queue, lane, Tally::delete());
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
                    let index = keys::delayed_index_value(lane, *weight, *due_ms);
                    batch.put_cf(self.cf(CF_INDEX), keys::index_key(*queue, *id), index);
                }
                Change::DeleteDelayed { queue, id, due_ms } => {
                    batch.delete_cf(self.cf(CF_DELAYED), keys::delayed_key(*due_ms, *queue, *id))
                }
                Change::DiscardDelayed { queue, id, due_ms } => {
                    batch.delete_cf(self.cf(CF_DELAYED), keys::delayed_key(*due_ms, *queue, *id));
                    batch.delete_cf(self.cf(CF_INDEX), keys::index_key(*queue, *id));
                }
            }
        }
        for ((queue, lane), delta) in deltas.into_iter() {
            batch.merge_cf(self.cf(CF_LANES), keys::lane_key(queue, &lane), delta.encode());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes && changes.needs_sync);
        self.db.write_opt(batch, &opts).map_err(io)
    }

    fn read_ready(
        &self,
        queue: QueueId,
        lane: &Lane,
        after_seq: u64,
        limit: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError> {
        let Some(first) = after_seq.checked_add(1) else { return Ok(()) };
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::message_key(queue, lane, first));
        opts.set_iterate_upper_bound(keys::message_key(queue, lane, u64::MAX));
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_MESSAGES), opts);
        iter.seek_to_first();
        let mut taken = 0;
        while taken < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            let corrupt = || StorageError::Corrupt(format!("message {key:?}"));
            let (_, _, seq) = keys::parse_message_key(key).ok_or_else(corrupt)?;
            let id = value.get(..16).and_then(MessageId::from_slice).ok_or_else(corrupt)?;
            out.push(StoredMessage { seq, id, record: bytes::Bytes::copy_from_slice(&value[16..]) });
            taken += 1;
            iter.next();
        }
        iter.status().map_err(io)
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
        let Some(first) = after_seq.checked_add(1) else { return Ok(0) };
        if first >= before_seq {
            return Ok(0);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::message_key(queue, lane, first));
        opts.set_iterate_upper_bound(keys::message_key(queue, lane, before_seq));
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_MESSAGES), opts);
        iter.seek_to_first();
        let mut count = 0;
        while iter.valid() && count < cap {
            count += 1;
            iter.next();
        }
        iter.status().map_err(io)?;
        Ok(count)
    }

    fn reclaim_queue_space(&self, queue: QueueId) {
        let db = Arc::clone(&self.db);
        std::thread::Builder::new()
            .name("fila-reclaim".into())
            .spawn(move || {
                let (start, end) = keys::queue_range(queue);
                for cf in [CF_MESSAGES, CF_INDEX] {
                    if let Some(handle) = db.cf_handle(cf) {
                        db.compact_range_cf(handle, Some(&start[..]), Some(&end[..]));
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::warn!(error = %e, "could not start space reclamation"));
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(io)
    }
}

#[cfg(test)]
mod tests {
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
            seq,
            id,
            weight: 0,
            record: Bytes::from(format!("{key}-{seq}")),
        };
        (change, id)
    }

    fn commit(store: &RocksStore, changes: Vec<Change>) {
        store.commit(&ChangeSet { changes, needs_sync: true }).unwrap();
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
        commit(&store, vec![Change::DeleteMessage { queue: 1, lane: lane("a"), seq: 7, id }]);
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
        commit(
            &store,
            vec![
                Change::DeleteMessage { queue: 1, lane: lane("a"), seq: 1, id: a1_id },
                put(1, "a", 5).0,
                Change::DeleteMessage { queue: 1, lane: lane("b"), seq: 2, id: b2_id },
            ],
        );
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 3)]);
        assert_eq!(rec.max_seq, 5);
        let tallies = store.db.iterator_cf(store.cf(CF_LANES), rocksdb::IteratorMode::Start).count();
        assert_eq!(tallies, 1, "the emptied lane's tally was removed at recovery");
    }

    #[test]
    fn a_database_without_tallies_is_tallied_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        commit(&store, vec![put(1, "a", 1).0, put(1, "a", 2).0, put(2, "b", 3).0]);
        // As written by a version before tallies existed.
        store.db.delete_cf(store.cf(CF_META), LANES_TALLIED).unwrap();
        let mut wipe = WriteBatch::default();
        wipe.delete_range_cf(store.cf(CF_LANES), &[0u8; 8][..], &[0xffu8; 9][..]);
        store.db.write(wipe).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(pending_by_key(&rec), vec![(1, "a".into(), 2), (2, "b".into(), 1)]);
        assert_eq!(rec.max_seq, 3);
        assert!(store.db.get_cf(store.cf(CF_META), LANES_TALLIED).unwrap().is_some());
    }
}
