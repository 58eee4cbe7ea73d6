//! The lane index: where each lane's messages are.
//!
//! Every message gets a sequence as it is stored, whatever its lane, and a
//! lane's messages are in one of two places:
//!
//! - its newest are *open*: in the message log (`message_log`, keyed by
//!   queue and sequence, so a commit's puts land at the log's end however
//!   many lanes they belong to). Their sequences are held here, with their
//!   records while memory allows, and in the lane's tally;
//! - once [`CHUNK_LEN`] are open, or records of [`CHUNK_BYTES`], they are
//!   *sealed*: copied, records and all, into one `lane_chunks` entry keyed
//!   by lane and last sequence. A lane with a backlog reads its next
//!   messages with one lookup, and a commit storing that many messages of
//!   one lane (or one large message) writes them straight into a chunk,
//!   never into the log.
//!
//! Nothing is deleted from the log message by message: an entry below the
//! lowest open sequence of all lanes is dead (acknowledged, or sealed) and
//! compactions drop it (see `log_gc.rs`). A sealed chunk is deleted with its
//! last live message. Its live count is known from its sealing, or, for a
//! chunk found in storage after a restart, from its first read, which
//! checks every message in it against the message index (messages are only
//! deleted after they were read or delivered, so no delete misses a chunk
//! whose count is known).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::journal;
use super::keys;
use super::tally::Tally;
use crate::domain::{Lane, MessageId, QueueId};
use crate::fast_map::FastMap;

/// Messages per sealed chunk: a lane's read-ahead reads about one chunk.
pub const CHUNK_LEN: usize = 32;
/// Records per sealed chunk, in bytes: large messages are sealed sooner,
/// so that they are written once, into their chunk, not also to the log.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// An open message of a lane.
#[derive(Debug, Clone)]
pub struct OpenMessage {
    pub seq: u64,
    /// Length of its record (0 for one recovered from a tally).
    pub len: usize,
    /// Its id and record, while they are held in memory.
    pub body: Option<(MessageId, Bytes)>,
    /// Whether its log entry is written: not yet for a message stored in
    /// the current commit, which, if sealed before the commit ends, never
    /// goes to the log.
    pub logged: bool,
}

impl OpenMessage {
    fn body_size(&self) -> usize {
        self.body.as_ref().map_or(0, |(_, record)| record.len() + 16)
    }
}

/// A sealed chunk whose live messages are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveChunk {
    first: u64,
    last: u64,
    live: u32,
    /// Messages deleted from it since it was counted, ascending.
    gone: Vec<u64>,
}

/// The in-memory index of one lane, with everything of its tally.
#[derive(Debug)]
pub struct LaneIndex {
    /// The lane's key in `lane_tallies`.
    key: Arc<[u8]>,
    /// Live messages of the lane, open or sealed.
    count: i64,
    /// Highest sequence stored in the lane.
    max_seq: u64,
    /// Sequence and weight of the newest message sent with a weight.
    weight_seq: u64,
    weight: u32,
    /// Every sequence below this is in a sealed chunk or gone.
    floor: u64,
    /// Live messages not in a sealed chunk, ascending.
    open: VecDeque<OpenMessage>,
    /// Bytes of the records held in `open`.
    body_bytes: usize,
    /// Bytes of the records of `open`, held or not.
    open_bytes: usize,
    /// Sealed chunks with live messages whose count is known, ascending.
    chunks: VecDeque<LiveChunk>,
    /// Sealed chunks ending below this may be in storage without a count
    /// here: those sealed before the last start, until a read counts them.
    uncounted_below: u64,
    /// The change to the lane's tally in this commit (kept allocated
    /// between commits).
    delta: Tally,
    /// Whether this commit has changed the lane.
    touched: bool,
    /// Whether the lane changed since the last checkpoint.
    dirty: bool,
    /// The lane's number in the journal since the last checkpoint, once
    /// the journal has named it (see `journal.rs`).
    journal_number: Option<u64>,
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
            // Every open message is at or above the floor; recovery raises it
            // to the oldest, as every commit does (see `oldest_open_bound`).
            floor: tally.floor.max(tally.open.first().copied().unwrap_or(0)),
            open: tally.open.iter().map(|&seq| OpenMessage { seq, len: 0, body: None, logged: true }).collect(),
            body_bytes: 0,
            open_bytes: 0,
            chunks: VecDeque::new(),
            uncounted_below: tally.floor,
            delta: Tally::default(),
            touched: false,
            dirty: false,
            journal_number: None,
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
            open: self.open.iter().map(|m| m.seq).collect(),
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

    /// Notes that the lane changed since the last checkpoint.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether the lane changed since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The lane's tally is stored as it is now, and the journal starts
    /// over.
    pub fn checkpointed(&mut self) {
        self.dirty = false;
        self.journal_number = None;
    }

    /// Records a message stored at `seq`, sent with `weight` (0 = none).
    /// It is open, and not yet in the log (see [`LaneIndex::log_new`]).
    /// (Sequences rise from commit to commit; within one they may come in
    /// any order.)
    pub fn add(&mut self, seq: u64, weight: u32, id: MessageId, record: Bytes) {
        self.count += 1;
        self.max_seq = self.max_seq.max(seq);
        if weight > 0 && seq > self.weight_seq {
            (self.weight_seq, self.weight) = (seq, weight);
        }
        let message = OpenMessage { seq, len: record.len(), body: Some((id, record)), logged: false };
        self.body_bytes += message.body_size();
        self.open_bytes += message.len;
        insert_sorted(&mut self.open, message);
        let delta = self.delta();
        delta.count += 1;
        delta.max_seq = delta.max_seq.max(seq);
        if weight > 0 && seq > delta.weight_seq {
            delta.weight_seq = seq;
            delta.weight = weight;
        }
        insert_ascending(&mut delta.open, seq);
    }

    /// Records that the message at `seq` left the lane. Returns the last
    /// sequence of a sealed chunk that no longer holds a live message, to be
    /// deleted in the same commit.
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        self.count -= 1;
        self.delta().count -= 1;
        if let Some(i) = self.open_position(seq) {
            let gone = self.open.remove(i).expect("found above");
            self.body_bytes -= gone.body_size();
            self.open_bytes -= gone.len;
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
        let i = self.chunk_from(seq);
        let chunk = self.chunks.get_mut(i).filter(|c| c.first <= seq)?;
        chunk.live -= 1;
        if chunk.live > 0 {
            // Acknowledgements come mostly in order.
            insert_ascending(&mut chunk.gone, seq);
            return None;
        }
        let last = chunk.last;
        self.chunks.remove(i);
        Some(last)
    }

    /// Where `seq` is among the open messages, if it is one. Open messages
    /// are all at or above the floor, so a delivered backlog is
    /// acknowledged from its chunks without searching them; acks come
    /// mostly in order, so the front is tried first.
    fn open_position(&self, seq: u64) -> Option<usize> {
        if seq < self.floor {
            return None;
        }
        match self.open.front() {
            Some(front) if front.seq == seq => Some(0),
            _ => self.open.binary_search_by_key(&seq, |m| m.seq).ok(),
        }
    }

    /// Seals the open messages into a chunk once there are [`CHUNK_LEN`]
    /// of them or [`CHUNK_BYTES`] of records; returns them, to be stored as
    /// one chunk in this commit.
    pub fn seal_if_full(&mut self) -> Option<Vec<OpenMessage>> {
        if self.open.len() < CHUNK_LEN && self.open_bytes < CHUNK_BYTES {
            return None;
        }
        self.seal()
    }

    /// Seals every open message into a chunk (none if there are none).
    pub fn seal(&mut self) -> Option<Vec<OpenMessage>> {
        let (first, last) = (self.open.front()?.seq, self.open.back()?.seq);
        let sealed: Vec<OpenMessage> = self.open.drain(..).collect();
        self.body_bytes = 0;
        self.open_bytes = 0;
        self.chunks.push_back(LiveChunk { first, last, live: sealed.len() as u32, gone: Vec::new() });
        self.floor = self.floor.max(last + 1);
        let floor = self.floor;
        let delta = self.delta();
        delta.open.clear();
        delta.closed.clear();
        delta.floor = floor;
        Some(sealed)
    }

    /// Calls `put` with every open message not yet in the log (all stored
    /// in this commit, with their records), and counts it as logged.
    pub fn log_new(&mut self, mut put: impl FnMut(u64, MessageId, &Bytes)) {
        // This commit's open messages are the newest of the lane, as many as
        // the tally's change opens. Looking at none older spares a cache
        // miss per lane and commit: among many lanes, the lane's previous
        // message was last touched many commits ago (finding it, the first
        // one logged, was 3 % of samples with 1,000 active keys).
        let opened = self.delta.open.len();
        for message in self.open.iter_mut().rev().take(opened).filter(|m| !m.logged) {
            let (id, record) = message.body.as_ref().expect("messages of this commit have their records");
            put(message.seq, *id, record);
            message.logged = true;
        }
    }

    /// Drops the records held for open messages (they stay in the log).
    pub fn drop_records(&mut self) {
        for message in &mut self.open {
            message.body = None;
        }
        self.body_bytes = 0;
    }

    /// Bytes of records held for open messages.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// The lowest open sequence: no open message is older.
    fn oldest_open(&self) -> Option<u64> {
        self.open.front().map(|m| m.seq)
    }

    /// The lowest open sequence or lower, read from the lane alone, not
    /// from its messages (which, among many lanes, are cold): the floor, if
    /// a message is open. Every open message is at or above the floor, and
    /// each commit (and recovery) raises the floor to the oldest of them,
    /// so between commits the two are equal.
    pub fn oldest_open_bound(&self) -> Option<u64> {
        (!self.open.is_empty()).then_some(self.floor)
    }

    /// Appends this commit's change to the lane's tally to a journal entry,
    /// with the floor raised past everything no longer open. A lane the
    /// journal has not named since the last checkpoint takes the next
    /// number, `journal_numbered`, which rises.
    pub fn finish_commit(&mut self, entry: &mut Vec<u8>, journal_numbered: &mut u64) {
        if !self.touched {
            return;
        }
        self.raise_floor();
        self.delta.floor = self.floor;
        self.delta.closed.sort_unstable();
        let (number, first_key) = match self.journal_number {
            Some(number) => (number, None),
            None => {
                let number = *journal_numbered;
                *journal_numbered += 1;
                self.journal_number = Some(number);
                (number, Some(&*self.key))
            }
        };
        journal::push_lane(entry, number, first_key, &self.delta);
        self.clear_delta();
    }

    fn raise_floor(&mut self) {
        self.floor = self.floor.max(self.oldest_open().unwrap_or(self.max_seq + 1));
    }

    fn clear_delta(&mut self) {
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

    /// Open messages above `after`, ascending.
    pub fn open_after(&self, after: u64) -> impl Iterator<Item = &OpenMessage> + '_ {
        let start = self.open.partition_point(|m| m.seq <= after);
        self.open.range(start..)
    }

    /// Where the counted chunks holding sequences above `after` start
    /// (see [`LaneIndex::counted_last`]), if every sealed chunk that may
    /// hold one is counted, so that each can be read by its key.
    pub fn counted_from(&self, after: u64) -> Option<usize> {
        let next = after.saturating_add(1);
        (next >= self.uncounted_below).then(|| self.chunk_from(next))
    }

    /// The last sequence of the counted chunk at `position`, if there is one.
    pub fn counted_last(&self, position: usize) -> Option<u64> {
        self.chunks.get(position).map(|c| c.last)
    }

    /// Whether the live count of the sealed chunk ending at `last` is known.
    pub fn is_counted(&self, last: u64) -> bool {
        self.counted(last).is_some()
    }

    fn counted(&self, last: u64) -> Option<&LiveChunk> {
        let i = self.chunk_from(last);
        self.chunks.get(i).filter(|c| c.last == last)
    }

    /// The messages deleted from the counted chunk ending at `last` since
    /// it was counted (a chunk's value keeps them until it is deleted).
    pub fn gone_from(&self, last: u64) -> &[u64] {
        self.counted(last).map_or(&[], |c| &c.gone)
    }

    /// The position of the first counted chunk ending at or after `seq`.
    /// A lane's reads and acknowledgements move through its chunks oldest
    /// first, so the front is tried before a binary search: among many
    /// lanes each probe of the search is a cold cache line (with 1,000
    /// keys and 1,000 messages queued per key, the search was 6 % of the
    /// scheduler thread's samples in the suite's fairness workload).
    fn chunk_from(&self, seq: u64) -> usize {
        match self.chunks.front() {
            Some(front) if front.last >= seq => 0,
            _ => self.chunks.partition_point(|c| c.last < seq),
        }
    }

    /// Records the live count of a sealed chunk read for the first time.
    pub fn count_chunk(&mut self, first: u64, last: u64, live: u32) {
        let i = self.chunk_from(last);
        if live == 0 || self.chunks.get(i).is_some_and(|c| c.last == last) {
            return;
        }
        self.chunks.insert(i, LiveChunk { first, last, live, gone: Vec::new() });
    }
}

/// Keeps `open` ascending; messages usually come in order, at the back.
fn insert_sorted(open: &mut VecDeque<OpenMessage>, message: OpenMessage) {
    match open.back() {
        Some(last) if last.seq > message.seq => {
            let at = open.partition_point(|m| m.seq < message.seq);
            open.insert(at, message);
        }
        _ => open.push_back(message),
    }
}

/// Keeps `list` ascending. Sequences usually come in order, so the back is
/// tried before a search, whose probes among many lanes are cold.
fn insert_ascending(list: &mut Vec<u64>, seq: u64) {
    match list.last() {
        Some(&last) if last > seq => {
            let at = list.partition_point(|&s| s < seq);
            list.insert(at, seq);
        }
        _ => list.push(seq),
    }
}

/// A lane's index and where it belongs.
#[derive(Debug)]
pub struct Slot {
    pub queue: QueueId,
    pub lane: Lane,
    pub index: LaneIndex,
}

/// Handle of a lane's slot, valid until the lane is forgotten.
pub type SlotId = usize;

/// A lane's slot as the store hands it out (`Store::lane_slot`), for the
/// scheduler to pass back with the lane's changes: a commit then reaches
/// the lane's index without looking its name up, which among many lanes
/// is two cold cache lines per change. It goes stale when the lane is
/// forgotten and its slot reused (the slot's generation moves on); a stale
/// or default one is looked up by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneSlot {
    id: u32,
    /// 0 for none: generations start at 1.
    generation: u32,
}

/// The index of every lane with something stored, in slots: a commit looks
/// a lane up once per change and reaches it by handle afterwards.
#[derive(Debug, Default)]
pub struct LaneIndexes {
    ids: FastMap<QueueId, FastMap<Lane, SlotId>>,
    slots: Vec<Option<Slot>>,
    /// Each slot's [`LaneIndex::oldest_open_bound`] as of the end of the
    /// last commit that changed it (`u64::MAX`: none, or a free slot), side
    /// by side, so that the log's horizon is the minimum of one dense array:
    /// 8 bytes a lane instead of a visit to each lane's slot, a few hundred
    /// bytes apart (with 1,000,000 lanes, 8 MB read every 4 MiB of log
    /// instead of hundreds).
    open_bounds: Vec<u64>,
    /// Each slot's generation, moved on when its lane is forgotten, so that
    /// a [`LaneSlot`] handed out for it goes stale.
    generations: Vec<u32>,
    free: Vec<SlotId>,
    /// Bytes of records held for open messages by lanes not being changed
    /// (a commit takes a lane's share out while it changes the lane).
    pub records_bytes: usize,
}

impl LaneIndexes {
    /// The slot of a lane, made (empty) if the lane has none.
    pub fn slot_of(&mut self, queue: QueueId, lane: &Lane) -> SlotId {
        let lanes = self.ids.entry(queue).or_default();
        if let Some(&id) = lanes.get(lane) {
            return id;
        }
        let index = LaneIndex::new(Arc::from(keys::lane_key(queue, lane)));
        let slot = Some(Slot { queue, lane: lane.clone(), index });
        // A new lane has nothing open (its bound is left as a free slot's).
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                self.open_bounds.push(u64::MAX);
                self.generations.push(1);
                self.slots.len() - 1
            }
        };
        lanes.insert(lane.clone(), id);
        id
    }

    /// The handle of a lane's slot, made (empty) if the lane has none.
    pub fn lane_slot(&mut self, queue: QueueId, lane: &Lane) -> LaneSlot {
        let id = self.slot_of(queue, lane);
        LaneSlot { id: id as u32, generation: self.generations[id] }
    }

    /// The slot of a lane: the one `slot` names if it is still the lane's,
    /// else the one found (or made) by name.
    pub fn resolve(&mut self, slot: LaneSlot, queue: QueueId, lane: &Lane) -> SlotId {
        let id = slot.id as usize;
        if self.generations.get(id) == Some(&slot.generation) {
            debug_assert!(
                self.slots[id].as_ref().is_some_and(|s| s.queue == queue && s.lane == *lane),
                "a lane slot passed with another lane"
            );
            return id;
        }
        self.slot_of(queue, lane)
    }

    /// Adds a lane as recovered from its tally.
    pub fn insert(&mut self, queue: QueueId, lane: Lane, index: LaneIndex) {
        let id = self.slot_of(queue, &lane);
        self.slot_mut(id).index = index;
        self.committed(id);
    }

    /// Takes note of a lane's state at the end of a commit that changed it,
    /// of a checkpoint that sealed it or of its recovery: what
    /// [`LaneIndexes::oldest_open`] reads.
    pub fn committed(&mut self, id: SlotId) {
        self.open_bounds[id] = self.slot_mut(id).index.oldest_open_bound().unwrap_or(u64::MAX);
    }

    pub fn slot_mut(&mut self, id: SlotId) -> &mut Slot {
        self.slots[id].as_mut().expect("a live slot")
    }

    pub fn get_mut(&mut self, queue: QueueId, lane: &Lane) -> Option<&mut LaneIndex> {
        let id = *self.ids.get(&queue)?.get(lane)?;
        Some(&mut self.slot_mut(id).index)
    }

    /// Starts loading what a checkpoint reads of the lane in slot `id`
    /// beyond the slot itself, if the slot is live: its open sequences and
    /// its key.
    pub fn prefetch(&self, id: SlotId) {
        if let Some(Some(slot)) = self.slots.get(id) {
            let (front, back) = slot.index.open.as_slices();
            crate::prefetch::prefetch(front);
            crate::prefetch::prefetch(back);
            crate::prefetch::prefetch(&slot.index.key[..]);
        }
    }

    /// How many slots there are, live or free: every handle is below.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slot `id`, unless it is free.
    pub fn live_slot_mut(&mut self, id: SlotId) -> Option<&mut Slot> {
        self.slots.get_mut(id)?.as_mut()
    }

    /// The oldest open message of every lane, or lower (see
    /// [`LaneIndex::oldest_open_bound`]), as of the lanes' last commits.
    pub fn oldest_open(&self) -> Option<u64> {
        let oldest = self.open_bounds.iter().copied().min().filter(|&bound| bound != u64::MAX);
        // Every test that reaches the horizon checks that no change to a
        // lane went unnoted: a bound too high would let the log lose open
        // messages.
        #[cfg(test)]
        assert_eq!(
            oldest,
            self.slots.iter().flatten().filter_map(|slot| slot.index.oldest_open_bound()).min(),
            "a lane changed without LaneIndexes::committed"
        );
        oldest
    }

    /// Queues that have or had lanes since they were last forgotten.
    pub fn queues(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.ids.keys().copied()
    }

    /// Forgets a lane; its handle may be given to another lane.
    pub fn forget(&mut self, id: SlotId) {
        if let Some(slot) = self.slots[id].take() {
            if let Some(lanes) = self.ids.get_mut(&slot.queue) {
                lanes.remove(&slot.lane);
            }
            self.free_slot(id);
        }
    }

    fn free_slot(&mut self, id: SlotId) {
        self.open_bounds[id] = u64::MAX;
        // Past u32::MAX it wraps to 1, not to 0 (no slot).
        self.generations[id] = self.generations[id].checked_add(1).unwrap_or(1);
        self.free.push(id);
    }

    /// Forgets every lane of a queue.
    pub fn forget_queue(&mut self, queue: QueueId) {
        for id in self.ids.remove(&queue).into_iter().flat_map(|lanes| lanes.into_values()) {
            if let Some(slot) = self.slots[id].take() {
                self.records_bytes = self.records_bytes.saturating_sub(slot.index.body_bytes());
            }
            self.free_slot(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> LaneIndex {
        LaneIndex::new(Arc::from(&b"lane"[..]))
    }

    /// A lane holding sequences 1 to `last`, sealed three at a time.
    fn sealed_by_threes(last: u64) -> LaneIndex {
        let mut index = lane();
        for seq in 1..=last {
            add(&mut index, seq, 0);
            if seq % 3 == 0 {
                index.seal().unwrap();
            }
        }
        index
    }

    fn add(index: &mut LaneIndex, seq: u64, weight: u32) {
        index.add(seq, weight, MessageId(u128::from(seq)), Bytes::from(format!("m{seq}")));
    }

    /// This commit's delta, as the journal carries it.
    fn take_delta(index: &mut LaneIndex) -> Option<Tally> {
        let mut entry = Vec::new();
        journal::start_entry(&mut entry, 0);
        // Named in every entry, so that each decodes on its own.
        index.journal_number = None;
        index.finish_commit(&mut entry, &mut 0);
        journal::decode(&entry, true, &mut Vec::new()).unwrap().lanes.pop().map(|(_, delta)| delta)
    }

    fn stored(tally: &mut Tally, index: &mut LaneIndex) {
        if let Some(delta) = take_delta(index) {
            tally.absorb(&delta);
            tally.closed.clear();
        }
    }

    /// The bound the log's horizon is computed from equals the oldest open
    /// message after every commit, and after recovery.
    #[test]
    fn the_oldest_open_bound_is_exact_between_commits() {
        let mut index = lane();
        let check = |index: &LaneIndex| assert_eq!(index.oldest_open_bound(), index.oldest_open());
        for seq in [3, 5, 8] {
            add(&mut index, seq, 0);
        }
        take_delta(&mut index);
        check(&index);
        for (removed, added) in [(3, Some(9)), (8, None), (5, None), (9, None)] {
            index.remove(removed);
            if let Some(seq) = added {
                add(&mut index, seq, 0);
            }
            take_delta(&mut index);
            check(&index);
        }
        add(&mut index, 12, 0);
        take_delta(&mut index);
        check(&index);
        let recovered = LaneIndex::recovered(
            Arc::from(&b"lane"[..]),
            &Tally { floor: 100, open: vec![120], count: 1, ..Tally::default() },
        );
        check(&recovered);
    }

    #[test]
    fn open_sequences_reach_the_tally_and_in_order_removals_move_the_floor() {
        let mut index = lane();
        let mut tally = Tally::default();
        for seq in [3, 5, 8] {
            add(&mut index, seq, 0);
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
    fn messages_of_this_commit_are_logged_once_and_their_records_can_be_dropped() {
        let mut index = lane();
        add(&mut index, 1, 0);
        add(&mut index, 2, 0);
        let mut logged = Vec::new();
        index.log_new(|seq, _, record| logged.push((seq, record.clone())));
        assert_eq!(logged, vec![(2, Bytes::from("m2")), (1, Bytes::from("m1"))]);
        add(&mut index, 3, 0);
        logged.clear();
        index.log_new(|seq, _, _| logged.push((seq, Bytes::new())));
        assert_eq!(logged.len(), 1, "only the new one");
        assert_eq!(index.body_bytes(), 3 * (2 + 16));
        index.drop_records();
        assert_eq!(index.body_bytes(), 0);
        assert!(index.open_after(0).all(|m| m.body.is_none() && m.logged));
        assert_eq!(index.oldest_open(), Some(1));
    }

    #[test]
    fn a_message_stored_and_removed_in_one_commit_never_reaches_the_tally() {
        let mut index = lane();
        add(&mut index, 4, 0);
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
            add(&mut index, seq, 0);
            assert!(index.seal_if_full().is_none());
        }
        add(&mut index, seqs[CHUNK_LEN - 1], 7);
        let sealed = index.seal_if_full().unwrap();
        assert_eq!(sealed.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
        assert!(sealed.iter().all(|m| !m.logged && m.body.is_some()), "sealed in the commit that stored them");
        assert_eq!(index.body_bytes(), 0);
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
    fn removals_find_their_chunk_whichever_chunk_they_hit_first() {
        // Three sealed chunks of three messages each: 1-3, 4-6, 7-9.
        let mut index = sealed_by_threes(9);
        take_delta(&mut index);
        assert!([3, 6, 9].iter().all(|&last| index.is_counted(last)));
        assert_eq!(index.remove(8), None, "a later chunk first");
        assert_eq!(index.gone_from(9), &[8]);
        assert_eq!(index.remove(2), None);
        assert_eq!(index.remove(5), None);
        assert_eq!((index.gone_from(3), index.gone_from(6)), (&[2][..], &[5][..]));
        assert_eq!(index.remove(7), None);
        assert_eq!(index.remove(9), Some(9), "the last chunk is emptied before the front one");
        assert_eq!(index.remove(10), None, "never stored");
        for seq in [1, 3] {
            index.remove(seq);
        }
        assert!(!index.is_counted(3));
        assert!(index.is_counted(6));
        assert_eq!(index.remove(4), None);
        assert_eq!(index.gone_from(6), &[4, 5], "kept in order whatever the order of removals");
        assert_eq!(index.remove(6), Some(6));
        take_delta(&mut index);
        assert!(index.is_empty());
    }

    #[test]
    fn chunks_are_read_by_key_once_none_may_be_uncounted() {
        // Sealed since start: every chunk is counted.
        let index = sealed_by_threes(6);
        let from = index.counted_from(0).expect("all counted");
        assert_eq!((index.counted_last(from), index.counted_last(from + 1)), (Some(3), Some(6)));
        assert_eq!(index.counted_from(3).and_then(|p| index.counted_last(p)), Some(6));
        assert_eq!(index.counted_from(6).and_then(|p| index.counted_last(p)), None);
        // Recovered with chunks below sequence 100 that only storage knows:
        // they are scanned (and counted) until reads have passed them.
        let tally = Tally { count: 5, floor: 100, open: vec![120], ..Tally::default() };
        let recovered = LaneIndex::recovered(Arc::from(&b"lane"[..]), &tally);
        assert_eq!(recovered.counted_from(0), None);
        assert_eq!(recovered.counted_from(98), None);
        assert!(recovered.counted_from(99).is_some());
    }

    #[test]
    fn a_large_message_is_sealed_at_once() {
        let mut index = lane();
        add(&mut index, 1, 0);
        assert!(index.seal_if_full().is_none());
        index.add(2, 0, MessageId(2), Bytes::from(vec![0u8; CHUNK_BYTES]));
        let sealed = index.seal_if_full().expect("a chunk's worth of bytes");
        assert_eq!(sealed.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(index.seal_if_full().is_none(), "nothing left open");
    }

    #[test]
    fn a_lane_slot_reaches_its_lane_until_the_lane_is_forgotten() {
        let named = |key: &str| Lane::new(Arc::from(key), Default::default());
        let mut indexes = LaneIndexes::default();
        let a = indexes.lane_slot(1, &named("a"));
        let id = indexes.resolve(a, 1, &named("a"));
        assert_eq!(indexes.lane_slot(1, &named("a")), a, "one slot per lane");
        assert_eq!(indexes.resolve(LaneSlot::default(), 1, &named("a")), id, "the default goes by name");
        indexes.forget(id);
        let b = indexes.lane_slot(1, &named("b"));
        let b_id = indexes.resolve(b, 1, &named("b"));
        assert_eq!(b_id, id, "the freed slot is reused");
        assert_ne!(b, a, "under another generation");
        // A's stale handle finds (here: makes) a's own slot, not b's.
        let a_again = indexes.resolve(a, 1, &named("a"));
        assert_ne!(a_again, b_id);
        assert_eq!(indexes.slot_mut(a_again).lane, named("a"));
        indexes.forget_queue(1);
        assert_ne!(indexes.lane_slot(1, &named("b")), b, "forgetting a queue ages its slots too");
    }

    #[test]
    fn a_recovered_chunk_is_counted_at_its_first_read() {
        let tally = Tally { count: 3, floor: 100, open: vec![120], ..Tally::default() };
        let mut index = LaneIndex::recovered(Arc::from(&b"lane"[..]), &tally);
        assert_eq!(
            index.open_after(0).map(|m| (m.seq, m.logged, m.body.is_some())).collect::<Vec<_>>(),
            vec![(120, true, false)]
        );
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
