//! The lane index: which sequences of a queue's log belong to each lane.
//!
//! Messages are stored in the order they are stored (`message_log`, keyed
//! by queue and sequence), so a commit's puts land at the end of the log and
//! acknowledgements near its start, however many lanes the messages belong
//! to. A lane finds its messages through its index:
//!
//! - its newest sequences are *open*: held here, in memory, and persisted in
//!   the lane's tally (one merge per lane per commit, into an unsorted
//!   memtable, so nothing is inserted at a per-lane place in a sorted one);
//! - once [`CHUNK_LEN`] are open they are *sealed* into one `lane_chunks`
//!   entry, keyed by lane and last sequence: one sorted insert per
//!   [`CHUNK_LEN`] messages of a lane, and one seek per read of a backlog.
//!
//! A sealed chunk is deleted when its last live message is deleted. Its
//! live count is known from its sealing, or, for chunks found in storage
//! after a restart, from its first read, which checks every sequence in it.
//! Messages are only ever deleted after they were read or delivered, so no
//! delete misses a chunk whose count is known.

use std::collections::VecDeque;
use std::sync::Arc;

use super::journal;
use super::tally::Tally;

/// Sequences per sealed chunk: a lane's read-ahead reads about one chunk.
pub const CHUNK_LEN: usize = 32;

/// A sealed chunk whose live messages are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LiveChunk {
    first: u64,
    last: u64,
    live: u32,
}

/// The in-memory index of one lane, with everything of its tally.
#[derive(Debug)]
pub struct LaneIndex {
    /// The lane's key in `lane_tallies`.
    key: Arc<[u8]>,
    /// Messages of the lane in the log.
    count: i64,
    /// Highest sequence stored in the lane.
    max_seq: u64,
    /// Sequence and weight of the newest message sent with a weight.
    weight_seq: u64,
    weight: u32,
    /// Every sequence below this is in a sealed chunk or gone.
    floor: u64,
    /// Live sequences not in a sealed chunk, ascending.
    open: VecDeque<u64>,
    /// Sealed chunks with live messages whose count is known, ascending.
    chunks: VecDeque<LiveChunk>,
    /// The change to the lane's tally in this commit (kept allocated
    /// between commits).
    delta: Tally,
    /// Whether this commit has changed the lane.
    touched: bool,
    /// Whether the lane changed since the last checkpoint.
    dirty: bool,
}

impl LaneIndex {
    /// A lane with nothing stored yet; `key` is its `lane_tallies` key.
    pub fn new(key: Arc<[u8]>) -> Self {
        LaneIndex::recovered(key, &Tally::default())
    }

    /// A lane as its stored tally describes it.
    pub fn recovered(key: Arc<[u8]>, tally: &Tally) -> Self {
        LaneIndex {
            key,
            count: tally.count,
            max_seq: tally.max_seq.max(tally.open.last().copied().unwrap_or(0)),
            weight_seq: tally.weight_seq,
            weight: tally.weight,
            floor: tally.floor,
            open: tally.open.iter().copied().collect(),
            chunks: VecDeque::new(),
            delta: Tally::default(),
            touched: false,
            dirty: false,
        }
    }

    pub fn key(&self) -> &Arc<[u8]> {
        &self.key
    }

    /// The lane's whole tally, as a checkpoint stores it.
    pub fn tally(&self) -> Tally {
        Tally {
            count: self.count,
            max_seq: self.max_seq,
            weight_seq: self.weight_seq,
            weight: self.weight,
            floor: self.floor,
            open: self.open.iter().copied().collect(),
            closed: Vec::new(),
        }
    }

    fn delta(&mut self) -> &mut Tally {
        self.touched = true;
        &mut self.delta
    }

    /// Whether this commit has changed the lane yet.
    pub fn is_touched(&self) -> bool {
        self.touched
    }

    /// Notes that the lane changed since the last checkpoint; true the
    /// first time.
    pub fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// The lane's tally is stored as it is now.
    pub fn checkpointed(&mut self) {
        self.dirty = false;
    }

    /// Records a message stored in the log at `seq`, sent with `weight`
    /// (0 = none).
    /// (Sequences rise from commit to commit; within one they may come in
    /// any order.)
    pub fn add(&mut self, seq: u64, weight: u32) {
        self.count += 1;
        self.max_seq = self.max_seq.max(seq);
        if weight > 0 && seq > self.weight_seq {
            (self.weight_seq, self.weight) = (seq, weight);
        }
        let at = self.open.partition_point(|&s| s < seq);
        self.open.insert(at, seq);
        let delta = self.delta();
        delta.count += 1;
        delta.max_seq = delta.max_seq.max(seq);
        if weight > 0 && seq > delta.weight_seq {
            delta.weight_seq = seq;
            delta.weight = weight;
        }
        let at = delta.open.partition_point(|&s| s < seq);
        delta.open.insert(at, seq);
    }

    /// Records that the message at `seq` left the log. Returns the last
    /// sequence of a sealed chunk that no longer holds a live message, to be
    /// deleted in the same commit.
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        self.count -= 1;
        self.delta().count -= 1;
        if let Ok(i) = self.open.binary_search(&seq) {
            self.open.remove(i);
            let delta = &mut self.delta;
            match delta.open.binary_search(&seq) {
                // Opened in this commit: the tally never hears of it.
                Ok(j) => {
                    delta.open.remove(j);
                }
                // The front is covered by the floor, which rises to the new
                // front when the delta is taken.
                Err(_) if i == 0 => {}
                Err(_) => delta.closed.push(seq),
            }
            return None;
        }
        let i = self.chunks.partition_point(|c| c.last < seq);
        let chunk = self.chunks.get_mut(i).filter(|c| c.first <= seq)?;
        chunk.live -= 1;
        if chunk.live > 0 {
            return None;
        }
        let last = chunk.last;
        self.chunks.remove(i);
        Some(last)
    }

    /// Seals the open sequences into a chunk once there are [`CHUNK_LEN`]
    /// of them; returns the chunk's sequences, to be stored in the same
    /// commit.
    pub fn seal_if_full(&mut self) -> Option<Vec<u64>> {
        if self.open.len() < CHUNK_LEN {
            return None;
        }
        let seqs: Vec<u64> = self.open.drain(..).collect();
        let (first, last) = (seqs[0], *seqs.last().expect("a full chunk"));
        self.chunks.push_back(LiveChunk { first, last, live: seqs.len() as u32 });
        self.floor = self.floor.max(last + 1);
        let floor = self.floor;
        let delta = self.delta();
        delta.open.clear();
        delta.closed.clear();
        delta.floor = floor;
        Some(seqs)
    }

    /// Appends this commit's change to the lane's tally to a journal entry,
    /// with the floor raised past everything no longer open.
    pub fn finish_commit(&mut self, entry: &mut Vec<u8>) {
        if !self.touched {
            return;
        }
        self.floor = self.floor.max(self.open.front().copied().unwrap_or(self.max_seq + 1));
        self.delta.floor = self.floor;
        self.delta.closed.sort_unstable();
        journal::push_lane(entry, &self.key, &self.delta);
        let Tally { open, closed, .. } = &mut self.delta;
        let (mut open, mut closed) = (std::mem::take(open), std::mem::take(closed));
        open.clear();
        closed.clear();
        self.delta = Tally { open, closed, ..Tally::default() };
        self.touched = false;
    }

    /// Whether nothing of the lane is left to index.
    pub fn is_empty(&self) -> bool {
        self.count <= 0 && self.open.is_empty() && self.chunks.is_empty() && !self.touched
    }

    /// Whether a sealed chunk may hold a sequence above `after`.
    pub fn may_have_sealed_after(&self, after: u64) -> bool {
        after.saturating_add(1) < self.floor
    }

    /// Upper bound (exclusive) of the last sequences of sealed chunks.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Open sequences above `after`, ascending.
    pub fn open_after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        let start = self.open.partition_point(|&s| s <= after);
        self.open.range(start..).copied()
    }

    /// Whether the live count of the sealed chunk ending at `last` is known.
    pub fn is_counted(&self, last: u64) -> bool {
        let i = self.chunks.partition_point(|c| c.last < last);
        self.chunks.get(i).is_some_and(|c| c.last == last)
    }

    /// Records the live count of a sealed chunk read for the first time.
    pub fn count_chunk(&mut self, first: u64, last: u64, live: u32) {
        if live == 0 || self.is_counted(last) {
            return;
        }
        let i = self.chunks.partition_point(|c| c.last < last);
        self.chunks.insert(i, LiveChunk { first, last, live });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> LaneIndex {
        LaneIndex::new(Arc::from(&b"lane"[..]))
    }

    /// This commit's delta, as the journal carries it.
    fn take_delta(index: &mut LaneIndex) -> Option<Tally> {
        let mut entry = Vec::new();
        journal::start_entry(&mut entry, 0);
        index.finish_commit(&mut entry);
        journal::decode(&entry).unwrap().lanes.pop().map(|(_, delta)| delta)
    }

    fn stored(tally: &mut Tally, index: &mut LaneIndex) {
        if let Some(delta) = take_delta(index) {
            tally.absorb(&delta);
            tally.closed.clear();
        }
    }

    #[test]
    fn open_sequences_reach_the_tally_and_in_order_removals_move_the_floor() {
        let mut index = lane();
        let mut tally = Tally::default();
        for seq in [3, 5, 8] {
            index.add(seq, 0);
        }
        stored(&mut tally, &mut index);
        assert_eq!((tally.count, tally.open.as_slice(), tally.floor), (3, &[3, 5, 8][..], 3));
        assert_eq!(index.remove(3), None);
        stored(&mut tally, &mut index);
        assert_eq!((tally.count, tally.open.as_slice(), tally.floor), (2, &[5, 8][..], 5));
        // Out of order: the floor cannot pass 5, so the closing is recorded.
        assert_eq!(index.remove(8), None);
        let delta = take_delta(&mut index).unwrap();
        assert_eq!(delta.closed, vec![8]);
        tally.absorb(&delta);
        assert_eq!(tally.open, vec![5]);
        index.remove(5);
        stored(&mut tally, &mut index);
        assert_eq!((tally.count, tally.open.len(), tally.floor), (0, 0, 9));
        assert_eq!(index.tally(), Tally { max_seq: 8, floor: 9, ..Tally::default() });
        assert!(index.is_empty());
    }

    #[test]
    fn a_message_stored_and_removed_in_one_commit_never_reaches_the_tally() {
        let mut index = lane();
        index.add(4, 0);
        index.remove(4);
        let delta = take_delta(&mut index).unwrap();
        assert_eq!((delta.count, delta.open.len(), delta.closed.len(), delta.floor), (0, 0, 0, 5));
        assert_eq!(take_delta(&mut index), None, "nothing changed since");
    }

    #[test]
    fn full_chunks_are_sealed_and_deleted_with_their_last_live_message() {
        let mut index = lane();
        let seqs: Vec<u64> = (0..CHUNK_LEN as u64).map(|i| 10 + 2 * i).collect();
        for &seq in &seqs[..CHUNK_LEN - 1] {
            index.add(seq, 0);
            assert_eq!(index.seal_if_full(), None);
        }
        index.add(seqs[CHUNK_LEN - 1], 7);
        assert_eq!(index.seal_if_full(), Some(seqs.clone()));
        let delta = take_delta(&mut index).unwrap();
        let last = *seqs.last().unwrap();
        assert_eq!((delta.count, delta.open.len(), delta.floor), (CHUNK_LEN as i64, 0, last + 1));
        assert_eq!((delta.weight_seq, delta.weight), (last, 7));
        assert!(index.is_counted(last));
        assert!(index.may_have_sealed_after(seqs[5]));
        assert!(!index.may_have_sealed_after(last));
        for &seq in &seqs[..CHUNK_LEN - 1] {
            assert_eq!(index.remove(seq), None);
        }
        assert_eq!(index.remove(last), Some(last));
        assert!(!index.is_counted(last));
        take_delta(&mut index);
        assert!(index.is_empty());
    }

    #[test]
    fn a_recovered_chunk_is_counted_at_its_first_read() {
        let tally = Tally { count: 3, floor: 100, open: vec![120], ..Tally::default() };
        let mut index = LaneIndex::recovered(Arc::from(&b"lane"[..]), &tally);
        assert_eq!(index.open_after(0).collect::<Vec<_>>(), vec![120]);
        assert!(index.may_have_sealed_after(0));
        assert!(!index.is_counted(50));
        index.count_chunk(40, 50, 2);
        assert!(index.is_counted(50));
        assert_eq!(index.remove(40), None);
        assert_eq!(index.remove(50), Some(50));
        assert_eq!(index.remove(120), None);
        take_delta(&mut index);
        assert!(index.is_empty());
    }
}
