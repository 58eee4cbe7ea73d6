//! Dispatch: handing ready messages to consumers in fair order.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Scheduler, MAX_FRAME_BYTES, MAX_FRAME_DELIVERIES, READ_AHEAD};
use crate::broker::consumers::{Consumer, ConsumerEvent, ConsumerId};
use crate::broker::leases::Leased;
use crate::broker::queue_state::{buffered_size, effective_weight, KeyState, LaneState};
use crate::broker::throttle::Throttles;
use crate::broker::Delivery;
use crate::domain::{QueueId, StorageError};
use crate::storage::{Store, StoredMessage};

impl<S: Store> Scheduler<S> {
    /// Hands ready messages to consumers with room: keys in DRR order,
    /// within a key the oldest message whose throttle keys all have a token,
    /// consumers in turn.
    pub(super) fn dispatch(&mut self, queue_id: QueueId, now: Instant, wall: SystemTime) -> Result<(), StorageError> {
        let count_keys = self.next_snapshot.is_some();
        let Scheduler {
            queues,
            consumers,
            leases,
            store,
            buffered_bytes,
            buffer_budget,
            throttles,
            parked,
            next_ticket,
            ..
        } = self;
        let Some(queue) = queues.get_mut(&queue_id) else { return Ok(()) };
        let mut frames: Vec<(ConsumerId, Vec<Delivery>, usize)> = Vec::new();
        while let Some(&key_id) = queue.drr.front() {
            let Some(&consumer_id) = queue.waiting_consumers.front() else { break };
            let consumer = match consumers.get_mut(&consumer_id) {
                Some(c) if c.is_connected() && c.has_room() => c,
                _ => {
                    queue.waiting_consumers.pop_front();
                    continue;
                }
            };
            // By id: among many keys, a lookup by name would read the name
            // and the map's control bytes, two more cold cache lines.
            let (key, key_state) = queue.keys.by_id_mut(key_id).expect("keys in the rotation have state");
            let weight = effective_weight(&queue.weight_overrides, key, key_state);
            queue.drr.start_turn(&mut key_state.credit, weight);
            let mut miscounted = 0;
            let buffers = Buffers { bytes: buffered_bytes, budget: *buffer_budget };
            let pick = pick_lane(queue_id, key_state, &*store, throttles, buffers, now, &mut miscounted)?;
            if miscounted > 0 {
                tracing::warn!(queue = %queue.name, key = %key, miscounted,
                    "storage holds fewer ready messages than counted; correcting the count");
                queue.pending -= miscounted;
            }
            let lane_index = match pick {
                Pick::Lane(i) => i,
                Pick::Throttled(wait) => {
                    let key = Arc::clone(key);
                    queue.drr.leave_front(&mut key_state.credit);
                    let ticket = *next_ticket;
                    *next_ticket += 1;
                    key_state.parked = Some(ticket);
                    parked.insert((now + wait, ticket), (queue_id, key));
                    continue;
                }
                Pick::Nothing => {
                    queue.drr.leave_front(&mut key_state.credit);
                    queue.forget_if_idle(key_id);
                    continue;
                }
            };
            let lane = &mut key_state.lanes[lane_index];
            throttles.take(lane.lane.throttle.keys());
            let message = lane.buffer.pop_front().expect("picked lanes have a buffered head");
            *buffered_bytes -= buffered_size(&message);
            lane.pending -= 1;
            lane.leased += 1;
            let (lane_id, slot) = (lane.lane.clone(), lane.slot);
            key_state.pending -= 1;
            key_state.leased += 1;
            key_state.delivery_rate.record(now);
            queue.pending -= 1;
            queue.in_flight += 1;
            queue.counters.leased += 1;
            if count_keys {
                key_state.unreported_deliveries += 1;
            }
            queue.drr.charge_front(&mut key_state.credit, key_state.pending > 0);
            let timeout = consumer.visibility_timeout.unwrap_or(queue.def.settings.visibility_timeout);
            let leased = Leased { key: key_id, lane: lane_id, slot, seq: message.seq, record: message.record };
            let lease = leases.grant(queue_id, message.id, leased, consumer_id, timeout, now);
            let delivery = Delivery {
                queue: Arc::clone(&queue.name),
                record: lease.record.clone(),
                token: lease.token,
                leased_at: wall,
                deadline: wall + timeout,
            };
            consumer.in_flight += 1;
            queue.waiting_consumers.pop_front();
            if consumer.has_room() {
                queue.waiting_consumers.push_back(consumer_id);
            }
            let slot = match frames.iter().position(|(c, _, _)| *c == consumer_id) {
                Some(slot) => slot,
                None => {
                    frames.push((consumer_id, Vec::new(), 0));
                    frames.len() - 1
                }
            };
            let frame = &mut frames[slot];
            frame.2 += delivery.record.len();
            frame.1.push(delivery);
            if frame.1.len() >= MAX_FRAME_DELIVERIES || frame.2 >= MAX_FRAME_BYTES {
                let (_, deliveries, _) = frames.swap_remove(slot);
                send_frame(consumer, deliveries);
            }
        }
        for (consumer_id, deliveries, _) in frames {
            if let Some(consumer) = consumers.get(&consumer_id) {
                send_frame(consumer, deliveries);
            }
        }
        Ok(())
    }
}

/// The memory held by read-ahead buffers, and its budget.
struct Buffers<'a> {
    bytes: &'a mut usize,
    budget: usize,
}

/// What a key can deliver now.
enum Pick {
    /// The lane (index) with the oldest message whose throttles allow it.
    Lane(usize),
    /// Every ready message waits for a throttle; the earliest can go after
    /// this long.
    Throttled(Duration),
    /// Nothing is ready after all: storage held fewer messages than counted.
    Nothing,
}

/// Chooses the lane a key delivers from: lanes are merged by arrival order,
/// skipping lanes whose throttle keys lack a token. Reads ahead from storage
/// for lanes whose buffer is empty. Lanes with fewer stored messages than
/// counted are corrected, adding the difference to `miscounted`.
fn pick_lane<S: Store>(
    queue_id: QueueId,
    key: &mut KeyState,
    store: &S,
    throttles: &mut Throttles,
    buffers: Buffers<'_>,
    now: Instant,
    miscounted: &mut u64,
) -> Result<Pick, StorageError> {
    let mut any_head = false;
    for lane in key.lanes.iter_mut() {
        if lane.pending == 0 {
            continue;
        }
        if lane.buffer.is_empty() {
            let want = if *buffers.bytes < buffers.budget { lane.pending.min(READ_AHEAD) } else { 1 };
            let mut read: Vec<StoredMessage> = Vec::with_capacity(want as usize);
            store.read_ready(queue_id, &lane.lane, lane.cursor, want as usize, &mut read)?;
            *buffers.bytes += read.iter().map(buffered_size).sum::<usize>();
            if let Some(last) = read.last() {
                lane.cursor = last.seq;
            }
            lane.buffer.extend(read);
        }
        if lane.buffer.is_empty() {
            *miscounted += lane.pending;
            key.pending -= lane.pending;
            lane.pending = 0;
        } else {
            any_head = true;
        }
    }
    if !any_head {
        key.lanes.retain(|l| l.pending > 0 || l.leased > 0);
        return Ok(Pick::Nothing);
    }
    // Lanes by their heads' age, oldest first: usually there is one lane,
    // and a few at most, so each next one is found by a scan (sequences are
    // unique), with nothing allocated per delivery.
    let mut wait: Option<Duration> = None;
    let mut after = None;
    while let Some((seq, i)) = oldest_head_after(&key.lanes, after) {
        match throttles.check(key.lanes[i].lane.throttle.keys(), now) {
            Ok(()) => return Ok(Pick::Lane(i)),
            Err(w) => wait = Some(wait.map_or(w, |v| v.min(w))),
        }
        after = Some(seq);
    }
    Ok(Pick::Throttled(wait.expect("some lane had a head")))
}

/// The lane whose buffered head is the oldest after sequence `after` (of
/// all, without it), with that head's sequence.
fn oldest_head_after(lanes: &[LaneState], after: Option<u64>) -> Option<(u64, usize)> {
    lanes
        .iter()
        .enumerate()
        .filter_map(|(i, lane)| Some((lane.buffer.front()?.seq, i)))
        .filter(|&(seq, _)| after.is_none_or(|after| seq > after))
        .min()
}

/// Pushes deliveries to a stream. If the stream closed in the meantime its
/// leases simply run out, as for any consumer that disconnects.
fn send_frame(consumer: &Consumer, deliveries: Vec<Delivery>) {
    let _ = consumer.events.send(ConsumerEvent::Deliveries(deliveries));
}
