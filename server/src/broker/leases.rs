//! Leases in flight: who holds which message until when.
//!
//! Memory grows with leases in flight, never with queue depth. Deadlines are
//! kept in an ordered map (not a heap) so an ack removes its timer at once
//! instead of leaving it behind until it would have fired.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::consumers::ConsumerId;
use super::ended_leases::{EndedLeases, Ending};
use super::key_table::KeyId;
use crate::domain::{Lane, LeaseToken, MessageId};
use crate::fast_map::FastMap;
use crate::storage::LaneSlot;

#[derive(Debug, Clone)]
pub struct Lease {
    pub token: LeaseToken,
    /// The message's fairness key in its queue's key table.
    pub key: KeyId,
    pub lane: Lane,
    /// The lane's handle in the store, for the change that ends the lease.
    pub slot: LaneSlot,
    pub seq: u64,
    pub record: Bytes,
    pub consumer: ConsumerId,
    pub deadline: Instant,
    pub granted_for: Duration,
}

/// The stored message a lease is granted for.
pub struct Leased {
    pub key: KeyId,
    pub lane: Lane,
    pub slot: LaneSlot,
    pub seq: u64,
    pub record: Bytes,
}

/// What a token refers to right now.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenState {
    /// The token's lease is live.
    Current,
    /// The message is leased under another token.
    Superseded,
    /// This token acked the message recently.
    AckedByThisToken,
    /// This token's lease ended recently without an ack (nack, expiry).
    Failed,
    /// Nothing is known in memory; storage must tell.
    Unknown,
}

pub struct LeaseTable {
    by_message: FastMap<MessageId, Lease>,
    deadlines: BTreeMap<(Instant, u64), MessageId>,
    ended: EndedLeases,
    next_lease: u64,
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseTable {
    pub fn new() -> Self {
        // Lease ids start at the wall-clock nanosecond count so that tokens
        // from before a restart can never match a lease granted after it.
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        LeaseTable {
            by_message: FastMap::default(),
            deadlines: BTreeMap::new(),
            ended: EndedLeases::default(),
            next_lease: seed,
        }
    }

    /// Starts a lease; returns its token.
    pub fn grant(
        &mut self,
        queue: u64,
        message: MessageId,
        leased: Leased,
        consumer: ConsumerId,
        granted_for: Duration,
        now: Instant,
    ) -> &Lease {
        self.next_lease += 1;
        let token = LeaseToken { queue, message, lease: self.next_lease };
        let deadline = now + granted_for;
        self.deadlines.insert((deadline, token.lease), message);
        let Leased { key, lane, slot, seq, record } = leased;
        let lease = Lease { token, key, lane, slot, seq, record, consumer, deadline, granted_for };
        self.by_message.insert(message, lease);
        &self.by_message[&message]
    }

    /// The live lease of a message, if any.
    pub fn get(&self, message: MessageId) -> Option<&Lease> {
        self.by_message.get(&message)
    }

    pub fn state_of(&self, token: &LeaseToken) -> TokenState {
        if let Some(lease) = self.by_message.get(&token.message) {
            return if lease.token == *token { TokenState::Current } else { TokenState::Superseded };
        }
        match self.ended.ending(token.lease, token.message) {
            Some(Ending::Acked) => TokenState::AckedByThisToken,
            Some(Ending::Failed) => TokenState::Failed,
            None => TokenState::Unknown,
        }
    }

    /// Ends a lease: acked, or failed (nack, expiry, or taken back before
    /// it was delivered). Its token is remembered with how it ended.
    pub fn end(&mut self, message: MessageId, ending: Ending) -> Option<Lease> {
        let lease = self.forget(message)?;
        self.ended.record(lease.token.lease, message, ending);
        Some(lease)
    }

    /// Drops a lease without remembering its token (its queue is deleted).
    fn forget(&mut self, message: MessageId) -> Option<Lease> {
        let lease = self.by_message.remove(&message)?;
        self.deadlines.remove(&(lease.deadline, lease.token.lease));
        Some(lease)
    }

    /// Moves a live lease's deadline to `now + timeout` (or its original
    /// timeout); returns the new deadline.
    pub fn extend(&mut self, token: &LeaseToken, timeout: Option<Duration>, now: Instant) -> Option<Instant> {
        let lease = self.by_message.get_mut(&token.message).filter(|l| l.token == *token)?;
        self.deadlines.remove(&(lease.deadline, lease.token.lease));
        lease.deadline = now + timeout.unwrap_or(lease.granted_for);
        self.deadlines.insert((lease.deadline, lease.token.lease), token.message);
        Some(lease.deadline)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((deadline, _), _)| *deadline)
    }

    /// Removes and returns one lease whose deadline has passed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Lease> {
        let (&(deadline, _), &message) = self.deadlines.first_key_value()?;
        if deadline > now {
            return None;
        }
        self.end(message, Ending::Failed)
    }

    /// Removes every lease of a queue.
    pub fn remove_queue(&mut self, queue: u64) -> Vec<Lease> {
        let ids: Vec<MessageId> =
            self.by_message.values().filter(|l| l.token.queue == queue).map(|l| l.token.message).collect();
        ids.into_iter().filter_map(|id| self.forget(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(table: &mut LeaseTable, id: MessageId, ms: u64, now: Instant) -> LeaseToken {
        let (key, _, _) = super::super::key_table::KeyTable::<()>::default().entry(&"k".into());
        let leased = Leased {
            key,
            lane: Lane::new("k".into(), Default::default()),
            slot: LaneSlot::default(),
            seq: 1,
            record: Bytes::new(),
        };
        table.grant(1, id, leased, 7, Duration::from_millis(ms), now).token
    }

    #[test]
    fn expires_in_deadline_order_and_only_when_due() {
        let mut t = LeaseTable::new();
        let now = Instant::now();
        let (a, b) = (MessageId(1), MessageId(2));
        grant(&mut t, a, 200, now);
        grant(&mut t, b, 100, now);
        assert!(t.pop_expired(now + Duration::from_millis(99)).is_none());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(100)));
        let due = now + Duration::from_millis(250);
        assert_eq!(t.pop_expired(due).unwrap().token.message, b);
        assert_eq!(t.pop_expired(due).unwrap().token.message, a);
        assert!(t.pop_expired(due).is_none() && t.next_deadline().is_none());
    }

    #[test]
    fn extension_moves_the_deadline_and_drops_the_old_timer() {
        let mut t = LeaseTable::new();
        let now = Instant::now();
        let token = grant(&mut t, MessageId(1), 100, now);
        let later = now + Duration::from_millis(50);
        assert_eq!(t.extend(&token, Some(Duration::from_millis(500)), later), Some(later + Duration::from_millis(500)));
        assert!(t.pop_expired(now + Duration::from_millis(200)).is_none());
        assert_eq!(t.next_deadline(), Some(later + Duration::from_millis(500)));
        // Without a timeout the lease gets its original one again.
        assert_eq!(t.extend(&token, None, later), Some(later + Duration::from_millis(100)));
    }

    #[test]
    fn tells_current_superseded_acked_and_failed_tokens_apart() {
        let mut t = LeaseTable::new();
        let now = Instant::now();
        let first = grant(&mut t, MessageId(1), 100, now);
        assert_eq!(t.state_of(&first), TokenState::Current);
        t.pop_expired(now + Duration::from_millis(100)).expect("due");
        assert_eq!(t.state_of(&first), TokenState::Failed);
        let second = grant(&mut t, MessageId(1), 100, now);
        assert_ne!(first.lease, second.lease);
        assert_eq!(t.state_of(&first), TokenState::Superseded);
        assert!(t.extend(&first, None, now).is_none(), "a stale token cannot extend");
        t.end(MessageId(1), Ending::Acked);
        assert_eq!(t.state_of(&second), TokenState::AckedByThisToken);
        assert_eq!(t.state_of(&first), TokenState::Failed, "the message is gone; the first lease failed");
        // A lease of a deleted queue is forgotten, not remembered as ended.
        let third = grant(&mut t, MessageId(2), 100, now);
        assert_eq!(t.remove_queue(1).len(), 1);
        assert_eq!(t.state_of(&third), TokenState::Unknown);
    }
}
