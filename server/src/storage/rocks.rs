//! RocksDB implementation of [`Store`].

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::keys;
use super::{Change, ChangeSet, QueueDef, Recovered, RecoveredKey, Store, StoredMessage};
use crate::domain::{MessageId, QueueId, QueueSettings, StorageError};

const CF_QUEUES: &str = "queues";
const CF_MESSAGES: &str = "messages";
const CF_INDEX: &str = "message_index";
const CF_META: &str = "meta";
const NEXT_QUEUE_ID: &[u8] = b"next_queue_id";

/// Queue definition as stored in the `queues` column family.
#[derive(Clone, PartialEq, prost::Message)]
struct QueueRecord {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(uint64, tag = "3")]
    visibility_timeout_ms: u64,
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
        let mut messages = Options::default();
        messages.set_compression_type(DBCompressionType::Lz4);
        messages.set_write_buffer_size(64 * 1024 * 1024);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_QUEUES, Options::default()),
            ColumnFamilyDescriptor::new(CF_MESSAGES, messages),
            ColumnFamilyDescriptor::new(CF_INDEX, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
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
            queues.push(QueueDef {
                id: rec.id,
                name: rec.name,
                settings: QueueSettings {
                    visibility_timeout: std::time::Duration::from_millis(rec.visibility_timeout_ms),
                },
            });
        }
        Ok(queues)
    }

    /// Counts stored messages per fairness key from the compact index rather
    /// than the message bodies.
    fn recover_keys(&self) -> Result<(Vec<RecoveredKey>, u64), StorageError> {
        let mut keys: Vec<RecoveredKey> = Vec::new();
        let mut positions = std::collections::HashMap::<(QueueId, String), usize>::new();
        let mut max_seq = 0;
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_INDEX));
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = || StorageError::Corrupt(format!("message index entry {key:?}"));
            let (queue, _) = keys::parse_index_key(key).ok_or_else(corrupt)?;
            let (fairness_key, seq) = keys::parse_fairness_location(value).ok_or_else(corrupt)?;
            max_seq = max_seq.max(seq);
            let slot = *positions.entry((queue, fairness_key.to_owned())).or_insert_with(|| {
                keys.push(RecoveredKey { queue, fairness_key: fairness_key.to_owned(), pending: 0 });
                keys.len() - 1
            });
            keys[slot].pending += 1;
            iter.next();
        }
        iter.status().map_err(io)?;
        Ok((keys, max_seq))
    }
}

impl Store for RocksStore {
    fn recover(&self) -> Result<Recovered, StorageError> {
        let queues = self.recover_queues()?;
        let (keys, max_seq) = self.recover_keys()?;
        let stored_next = self
            .db
            .get_cf(self.cf(CF_META), NEXT_QUEUE_ID)
            .map_err(io)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
        let next_queue_id = queues.iter().map(|q| q.id + 1).fold(stored_next, u64::max);
        Ok(Recovered { queues, keys, max_seq, next_queue_id })
    }

    fn commit(&self, changes: &ChangeSet) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for change in &changes.changes {
            match change {
                Change::PutQueue(def) => {
                    let rec = QueueRecord {
                        id: def.id,
                        name: def.name.clone(),
                        visibility_timeout_ms: def.settings.visibility_timeout.as_millis() as u64,
                    };
                    batch.put_cf(self.cf(CF_QUEUES), def.name.as_bytes(), prost::Message::encode_to_vec(&rec));
                }
                Change::DeleteQueue { id, name } => {
                    let (start, end) = keys::queue_range(*id);
                    batch.delete_cf(self.cf(CF_QUEUES), name.as_bytes());
                    batch.delete_range_cf(self.cf(CF_MESSAGES), start, end);
                    batch.delete_range_cf(self.cf(CF_INDEX), start, end);
                }
                Change::SetNextQueueId(next) => batch.put_cf(self.cf(CF_META), NEXT_QUEUE_ID, next.to_be_bytes()),
                Change::PutMessage { queue, fairness_key, seq, id, record } => {
                    let mut value = Vec::with_capacity(16 + record.len());
                    value.extend_from_slice(&id.to_bytes());
                    value.extend_from_slice(record);
                    batch.put_cf(self.cf(CF_MESSAGES), keys::message_key(*queue, fairness_key, *seq), value);
                    batch.put_cf(
                        self.cf(CF_INDEX),
                        keys::index_key(*queue, *id),
                        keys::fairness_location(fairness_key, *seq),
                    );
                }
                Change::DeleteMessage { queue, fairness_key, seq, id } => {
                    batch.delete_cf(self.cf(CF_MESSAGES), keys::message_key(*queue, fairness_key, *seq));
                    batch.delete_cf(self.cf(CF_INDEX), keys::index_key(*queue, *id));
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes && changes.needs_sync);
        self.db.write_opt(batch, &opts).map_err(io)
    }

    fn read_ready(
        &self,
        queue: QueueId,
        fairness_key: &str,
        after_seq: u64,
        limit: usize,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError> {
        let Some(first) = after_seq.checked_add(1) else { return Ok(()) };
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::message_key(queue, fairness_key, first));
        opts.set_iterate_upper_bound(keys::message_key(queue, fairness_key, u64::MAX));
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

    fn contains_message(&self, queue: QueueId, id: MessageId) -> Result<bool, StorageError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_INDEX), keys::index_key(queue, id)).map_err(io)?.is_some())
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
    use bytes::Bytes;

    fn put(queue: QueueId, key: &str, seq: u64) -> (Change, MessageId) {
        let id = MessageId::generate();
        let change = Change::PutMessage {
            queue,
            fairness_key: key.into(),
            seq,
            id,
            record: Bytes::from(format!("{key}-{seq}")),
        };
        (change, id)
    }

    fn commit(store: &RocksStore, changes: Vec<Change>) {
        store.commit(&ChangeSet { changes, needs_sync: true }).unwrap();
    }

    #[test]
    fn reads_one_key_in_order_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        let changes = [(1, "a", 5), (1, "a", 2), (1, "b", 3), (1, "a", 9), (2, "a", 4)]
            .into_iter()
            .map(|(q, k, s)| put(q, k, s).0)
            .collect();
        commit(&store, changes);
        let mut out = Vec::new();
        store.read_ready(1, "a", 0, 10, &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 5, 9]);
        out.clear();
        store.read_ready(1, "a", 2, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].record, Bytes::from("a-5"));
        assert_eq!(out[0].seq, 5);
    }

    #[test]
    fn recovers_queues_counts_and_sequence_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (msg, id) = put(1, "a", 7);
        {
            let store = RocksStore::open(dir.path(), true).unwrap();
            let def = QueueDef { id: 1, name: "q".into(), settings: QueueSettings::default() };
            commit(
                &store,
                vec![Change::PutQueue(def), Change::SetNextQueueId(2), msg, put(1, "a", 3).0, put(1, "b", 4).0],
            );
        }
        let store = RocksStore::open(dir.path(), true).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(rec.queues.len(), 1);
        assert_eq!(rec.queues[0].name, "q");
        assert_eq!(rec.next_queue_id, 2);
        assert_eq!(rec.max_seq, 7);
        let mut keys = rec.keys.clone();
        keys.sort_by(|a, b| a.fairness_key.cmp(&b.fairness_key));
        assert_eq!(
            keys.iter().map(|k| (k.fairness_key.as_str(), k.pending)).collect::<Vec<_>>(),
            vec![("a", 2), ("b", 1)]
        );
        assert!(store.contains_message(1, id).unwrap());
        commit(&store, vec![Change::DeleteMessage { queue: 1, fairness_key: "a".into(), seq: 7, id }]);
        assert!(!store.contains_message(1, id).unwrap());
    }

    #[test]
    fn deleting_a_queue_removes_only_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), false).unwrap();
        commit(&store, vec![put(1, "a", 1).0, put(2, "a", 2).0]);
        commit(&store, vec![Change::DeleteQueue { id: 1, name: "one".into() }]);
        let rec = store.recover().unwrap();
        assert_eq!(rec.keys, vec![RecoveredKey { queue: 2, fairness_key: "a".into(), pending: 1 }]);
    }
}
