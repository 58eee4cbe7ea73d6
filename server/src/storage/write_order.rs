//! Writes of one column family gathered and added to a commit's batch in
//! key order. RocksDB's memtable skip list starts each insert from where
//! the previous one went, so a commit's log puts, gathered lane by lane,
//! go in as one run at the log's end instead of hopping between lanes.

use rocksdb::{ColumnFamily, WriteBatch};

/// Puts and deletes of one family, kept in the order they came until added.
#[derive(Default)]
pub struct KeyOrdered<K> {
    writes: Vec<(K, Option<Vec<u8>>)>,
}

impl<K: AsRef<[u8]> + Ord> KeyOrdered<K> {
    pub fn put(&mut self, key: K, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: K) {
        self.writes.push((key, None));
    }

    /// Adds the writes to `batch` in key order; writes of the same key keep
    /// their order, so the last one still wins.
    pub fn add_to(&mut self, batch: &mut WriteBatch, family: &ColumnFamily) {
        self.writes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in self.writes.drain(..) {
            match value {
                Some(value) => batch.put_cf(family, key, value),
                None => batch.delete_cf(family, key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_write_of_a_key_wins_and_keys_go_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["f"]).unwrap();
        let family = db.cf_handle("f").unwrap();
        let mut writes = KeyOrdered::default();
        writes.put(*b"b", b"1".to_vec());
        writes.delete(*b"b");
        writes.delete(*b"a");
        writes.put(*b"a", b"2".to_vec());
        writes.put(*b"c", b"3".to_vec());
        let mut batch = WriteBatch::default();
        writes.add_to(&mut batch, family);
        db.write(batch).unwrap();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = db
            .iterator_cf(family, rocksdb::IteratorMode::Start)
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(stored, vec![(b"a".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
    }
}
