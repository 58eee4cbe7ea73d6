//! Writes of one column family gathered and added to a commit's batch in
//! key order. RocksDB's memtable skip list starts each insert from where
//! the previous one went, so a commit's log puts, gathered lane by lane,
//! go in as one run at the log's end instead of hopping between lanes.

use std::ops::Range;

use rocksdb::{ColumnFamily, WriteBatch};

/// A buffer kept between commits is given back above this size, so one
/// commit of large messages does not hold its memory for good.
const KEPT_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Puts and deletes of one family, kept in the order they came until added.
/// Values are written end to end into one buffer, which a commit reuses
/// from the last: an allocation per value cost a cold block of memory per
/// message, and a message writes one or two (its index entry, its log
/// entry).
pub struct KeyOrdered<K> {
    writes: Vec<(K, Option<Range<usize>>)>,
    values: Vec<u8>,
    /// The values' buffer is given back past this size.
    kept_bytes: usize,
}

impl<K> Default for KeyOrdered<K> {
    fn default() -> Self {
        KeyOrdered::keeping(KEPT_VALUE_BYTES)
    }
}

impl<K> KeyOrdered<K> {
    /// Writes whose values' buffer is kept up to `kept_bytes` from one use
    /// to the next.
    pub fn keeping(kept_bytes: usize) -> Self {
        KeyOrdered { writes: Vec::new(), values: Vec::new(), kept_bytes }
    }
}

impl<K: AsRef<[u8]> + Ord> KeyOrdered<K> {
    pub fn put(&mut self, key: K, value: &[u8]) {
        self.put_with(key, |out| out.extend_from_slice(value));
    }

    /// Puts the value `write` appends to the buffer it is given.
    pub fn put_with(&mut self, key: K, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.values.len();
        write(&mut self.values);
        self.writes.push((key, Some(start..self.values.len())));
    }

    pub fn delete(&mut self, key: K) {
        self.writes.push((key, None));
    }

    /// Adds the writes to `batch` in key order; writes of the same key keep
    /// their order, so the last one still wins. Leaves this empty, for the
    /// next commit.
    pub fn add_to(&mut self, batch: &mut WriteBatch, family: &ColumnFamily) {
        self.writes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in self.writes.drain(..) {
            match value {
                Some(range) => batch.put_cf(family, key, &self.values[range]),
                None => batch.delete_cf(family, key),
            }
        }
        self.values.clear();
        if self.values.capacity() > self.kept_bytes {
            self.values = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(db: &rocksdb::DB, family: &ColumnFamily) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.iterator_cf(family, rocksdb::IteratorMode::Start)
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn the_last_write_of_a_key_wins_and_keys_go_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["f"]).unwrap();
        let family = db.cf_handle("f").unwrap();
        let mut writes = KeyOrdered::default();
        writes.put(*b"b", b"1");
        writes.delete(*b"b");
        writes.delete(*b"a");
        writes.put_with(*b"a", |out| out.push(b'2'));
        writes.put(*b"c", b"3");
        let mut batch = WriteBatch::default();
        writes.add_to(&mut batch, family);
        db.write(batch).unwrap();
        assert_eq!(stored(&db, family), vec![(b"a".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
        assert!(writes.values.capacity() > 0, "the buffer is kept for the next commit");

        // The next commit reuses the buffer: nothing of the last one comes
        // back, and a buffer grown past the limit is given back.
        let large = vec![7u8; KEPT_VALUE_BYTES + 1];
        writes.put(*b"d", &large);
        writes.put(*b"a", b"4");
        let mut batch = WriteBatch::default();
        writes.add_to(&mut batch, family);
        db.write(batch).unwrap();
        let expected = vec![(b"a".to_vec(), b"4".to_vec()), (b"c".to_vec(), b"3".to_vec()), (b"d".to_vec(), large)];
        assert_eq!(stored(&db, family), expected);
        assert_eq!(writes.values.capacity(), 0);
    }
}
