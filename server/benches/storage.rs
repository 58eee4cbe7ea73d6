//! What storage costs per message in the lifecycle's write pattern, at 1,
//! 1,000 and 100,000 lanes: one commit stores a batch of new messages spread
//! over the lanes in turn (lanes scattered over the key space) and deletes
//! as many acknowledged ones (the oldest), over a standing backlog, against
//! real RocksDB in a temporary directory.
//!
//!     cargo bench --profile dev -p fila-server --bench storage

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fila_server::domain::{Lane, MessageId, ThrottleSet};
use fila_server::storage::{Change, ChangeSet, LaneSlot, RocksStore, Store};

const LANE_COUNTS: [usize; 3] = [1, 1_000, 100_000];
/// Messages stored (and as many deleted) per commit.
const BATCH: usize = 500;
/// Messages queued before measuring; at least two per lane.
const BACKLOG: usize = 200_000;
const QUEUE: u64 = 1;

struct Lifecycle {
    store: RocksStore,
    lanes: Vec<Lane>,
    /// Each lane's handle in the store, as the scheduler keeps it.
    slots: Vec<LaneSlot>,
    record: Bytes,
    next_seq: u64,
    /// Stored messages, oldest first: lane, sequence, id.
    queued: VecDeque<(usize, u64, MessageId)>,
}

impl Lifecycle {
    fn new(dir: &std::path::Path, lanes: usize) -> Self {
        // Lane `i`'s name is a bijective scramble of `i`, so that the lanes
        // the commits take in turn are scattered over the key space, as
        // tenants' traffic is (in numeric order, tenant-12345 and
        // tenant-12346 are neighbours in storage too, and the inserts walk
        // the memtable in order).
        let name = |i: usize| format!("tenant-{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let lanes: Vec<Lane> = (0..lanes).map(|i| Lane::new(Arc::from(name(i)), ThrottleSet::default())).collect();
        let mut run = Lifecycle {
            store: RocksStore::open(dir, false).expect("open store"),
            slots: vec![LaneSlot::default(); lanes.len()],
            lanes,
            record: Bytes::from(vec![b'x'; 100]),
            next_seq: 0,
            queued: VecDeque::new(),
        };
        for _ in 0..BACKLOG.max(run.lanes.len() * 2) / BATCH {
            run.commit(BATCH, 0);
        }
        run
    }

    /// Stores `puts` new messages and deletes the `deletes` oldest, in one
    /// commit.
    fn commit(&mut self, puts: usize, deletes: usize) {
        let mut changes = ChangeSet { changes: Vec::with_capacity(puts + deletes), needs_sync: true };
        for _ in 0..puts {
            self.next_seq += 1;
            let lane = self.next_seq as usize % self.lanes.len();
            let id = MessageId::generate();
            if self.slots[lane] == LaneSlot::default() {
                self.slots[lane] = self.store.lane_slot(QUEUE, &self.lanes[lane]);
            }
            changes.push(Change::PutMessage {
                queue: QUEUE,
                lane: self.lanes[lane].clone(),
                slot: self.slots[lane],
                seq: self.next_seq,
                id,
                weight: 0,
                record: self.record.clone(),
            });
            self.queued.push_back((lane, self.next_seq, id));
        }
        for _ in 0..deletes {
            let (lane, seq, id) = self.queued.pop_front().expect("backlog");
            let (lane, slot) = (self.lanes[lane].clone(), self.slots[lane]);
            changes.push(Change::DeleteMessage { queue: QUEUE, lane, slot, seq, id });
        }
        self.store.commit(black_box(changes)).expect("commit");
    }
}

fn lifecycle_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle_commit");
    group.throughput(Throughput::Elements(BATCH as u64));
    for &lanes in &LANE_COUNTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut run = Lifecycle::new(dir.path(), lanes);
        group.bench_with_input(BenchmarkId::from_parameter(lanes), &lanes, |b, _| b.iter(|| run.commit(BATCH, BATCH)));
    }
    group.finish();
}

criterion_group!(benches, lifecycle_commit);
criterion_main!(benches);
