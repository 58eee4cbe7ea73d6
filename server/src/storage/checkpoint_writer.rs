//! Writes a checkpoint's tallies on a thread of its own.
//!
//! A checkpoint visits every lane changed since the last one and encodes
//! its whole tally: that part stays on the scheduler thread, which owns the
//! lanes. Sorting the tallies, adding them to a batch with the deletion of
//! the journal they replace, and writing that batch took more than half of
//! a checkpoint's time with 100,000 changed lanes (about 45 of 85 ms),
//! during which every consumer and producer waited. This thread does it
//! instead, while the scheduler goes on.
//!
//! Until the batch lands, recovery still finds the tallies before it and
//! every journal entry since them, those written after the checkpoint
//! included: the journal's keys keep rising across checkpoints, and the
//! first entry after one numbers its lanes afresh, which its decoding
//! notices (see `journal.rs`). So nothing depends on when it lands, only
//! on its landing whole. One is written at a time: a checkpoint due while
//! the last is still being written waits for it.

use std::sync::Arc;
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, DB};

use super::journal;
use super::rocks::{cf, io, CF_JOURNAL, CF_LANES, CF_META, SEQ_HIGH};
use super::write_order::KeyOrdered;
use crate::domain::StorageError;

/// What a checkpoint writes: the whole tally of every lane changed since
/// the last one (or its deletion, for lanes emptied since), the deletion
/// of every journal entry below `journal_end`, whose changes the tallies
/// hold, and the highest sequence stored.
pub struct CheckpointBatch {
    pub tallies: Tallies,
    pub journal_end: u64,
    pub seq_high: u64,
}

/// The tallies' buffer is kept for the next checkpoint up to this size
/// (about 300,000 changed lanes' tallies): with 100,000 changed lanes,
/// faulting a new one in was half of the scheduler thread's part of a
/// checkpoint.
const KEPT_TALLY_BYTES: usize = 32 * 1024 * 1024;

/// Tallies gathered for a checkpoint.
pub type Tallies = KeyOrdered<Arc<[u8]>>;

impl CheckpointBatch {
    /// Writes the batch; returns the tallies' buffer, emptied, to reuse.
    fn write(mut self, db: &DB) -> Result<Tallies, StorageError> {
        let mut batch = WriteBatch::default();
        self.tallies.add_to(&mut batch, cf(db, CF_LANES));
        let (first, _) = journal::ALL_KEYS;
        batch.delete_range_cf(cf(db, CF_JOURNAL), first, journal::key(self.journal_end));
        batch.put_cf(cf(db, CF_META), SEQ_HIGH, self.seq_high.to_be_bytes());
        db.write(batch).map_err(io)?;
        Ok(self.tallies)
    }
}

#[derive(Default)]
pub struct CheckpointWriter {
    writing: Option<JoinHandle<Result<Tallies, StorageError>>>,
    /// The last checkpoint's tallies' buffer, emptied.
    spare: Option<Tallies>,
    /// Why a checkpoint failed to land, once one has. Every later commit
    /// fails with it: the lanes it held count as checkpointed, so the next
    /// checkpoint would delete journal entries whose changes no stored
    /// tally holds. A restart recovers from the journal, which still has
    /// them all.
    failed: Option<StorageError>,
    /// What tests make of every batch.
    #[cfg(test)]
    pub outcome: TestOutcome,
}

/// What becomes of a checkpoint's batch in a test.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestOutcome {
    #[default]
    Written,
    /// Dropped, as a crash would before it landed.
    Lost,
    /// Not written, and the writer fails, as on a failed write.
    Failed,
}

impl CheckpointWriter {
    /// Starts writing `batch` once the last checkpoint has landed.
    pub fn start(&mut self, db: &Arc<DB>, batch: CheckpointBatch) -> Result<(), StorageError> {
        self.wait()?;
        #[cfg(test)]
        match self.outcome {
            TestOutcome::Written => {}
            TestOutcome::Lost => return Ok(()),
            TestOutcome::Failed => {
                self.writing = Some(std::thread::spawn(|| Err(StorageError::Io("the disk is full".into()))));
                return Ok(());
            }
        }
        let db = Arc::clone(db);
        let handle = std::thread::Builder::new()
            .name("fila-checkpoint".into())
            .spawn(move || batch.write(&db))
            .map_err(|e| StorageError::Io(format!("could not start a checkpoint writer: {e}")))?;
        self.writing = Some(handle);
        Ok(())
    }

    /// Waits until the checkpoint being written, if any, has landed; fails
    /// if it or an earlier one failed.
    pub fn wait(&mut self) -> Result<(), StorageError> {
        if let Some(writing) = self.writing.take() {
            match writing.join().unwrap_or_else(|_| Err(StorageError::Io("the writer panicked".into()))) {
                Ok(tallies) => self.spare = Some(tallies),
                Err(e) => {
                    tracing::error!(error = %e, "a checkpoint failed; commits fail until a restart recovers from the journal");
                    self.failed =
                        Some(StorageError::Io(format!("a checkpoint failed ({e}); restart the broker to recover")));
                }
            }
        }
        self.check()
    }

    /// An empty buffer for the next checkpoint's tallies: the last one's,
    /// once it has landed.
    pub fn tallies(&mut self) -> Tallies {
        self.spare.take().unwrap_or_else(|| Tallies::keeping(KEPT_TALLY_BYTES))
    }

    /// Fails if a checkpoint has failed, without waiting for one.
    pub fn check(&self) -> Result<(), StorageError> {
        self.failed.clone().map_or(Ok(()), Err)
    }
}
