//! How recent leases ended, so that a token whose lease is gone gets the
//! right answer without a storage read: a repeated ack of the same token
//! succeeds, a token whose lease ended otherwise (nack, expiry) is refused
//! as ended.
//!
//! A ring indexed by lease id, not a map by message id. Lease ids are handed
//! out in order and leases mostly end in about that order, so each
//! acknowledgement writes next to the one before; a hash map by message id
//! put each ack and each eviction at a random place of a 3 MB table, two
//! cache misses apiece once many active keys crowd the cache.

use crate::domain::MessageId;

/// How many of the latest lease ids the ring covers (a power of two).
pub const ENDED_LEASES_REMEMBERED: usize = 65_536;

const ACKED: u64 = 1;
const FAILED: u64 = 2;

/// How a remembered lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Acked,
    /// Nacked, expired, or taken back before it was delivered.
    Failed,
}

pub struct EndedLeases {
    /// Slot `lease % ENDED_LEASES_REMEMBERED`: `[lease id, message id (high,
    /// low), ACKED or FAILED]`. Plain zeroed words, so the ring is allocated
    /// zeroed and an idle broker's memory holds only the pages it has used.
    slots: Vec<[u64; 4]>,
}

impl Default for EndedLeases {
    fn default() -> Self {
        EndedLeases { slots: vec![[0; 4]; ENDED_LEASES_REMEMBERED] }
    }
}

impl EndedLeases {
    fn slot(lease: u64) -> usize {
        (lease % ENDED_LEASES_REMEMBERED as u64) as usize
    }

    /// Notes that `lease` (of `message`) ended. A slot holding a newer lease
    /// is kept: a lease that outlived the ring's span is forgotten instead.
    pub fn record(&mut self, lease: u64, message: MessageId, ending: Ending) {
        let slot = &mut self.slots[Self::slot(lease)];
        if slot[0] > lease {
            return;
        }
        let outcome = match ending {
            Ending::Acked => ACKED,
            Ending::Failed => FAILED,
        };
        *slot = [lease, (message.0 >> 64) as u64, message.0 as u64, outcome];
    }

    /// How `lease` of `message` ended, if it is still remembered.
    pub fn ending(&self, lease: u64, message: MessageId) -> Option<Ending> {
        let slot = &self.slots[Self::slot(lease)];
        if slot[0] != lease || slot[1] != (message.0 >> 64) as u64 || slot[2] != message.0 as u64 {
            return None;
        }
        match slot[3] {
            ACKED => Some(Ending::Acked),
            FAILED => Some(Ending::Failed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 1_800_000_000_000_000_000;

    #[test]
    fn remembers_how_each_lease_ended() {
        let mut ended = EndedLeases::default();
        ended.record(SEED + 1, MessageId(10), Ending::Acked);
        ended.record(SEED + 2, MessageId(11), Ending::Failed);
        assert_eq!(ended.ending(SEED + 1, MessageId(10)), Some(Ending::Acked));
        assert_eq!(ended.ending(SEED + 2, MessageId(11)), Some(Ending::Failed));
        // The same lease id with another message, or another lease id.
        assert_eq!(ended.ending(SEED + 1, MessageId(11)), None);
        assert_eq!(ended.ending(SEED + 3, MessageId(10)), None);
        // A failed lease that is acked later (an unsent delivery taken back
        // and its token never seen) reads as the newest record.
        ended.record(SEED + 2, MessageId(11), Ending::Acked);
        assert_eq!(ended.ending(SEED + 2, MessageId(11)), Some(Ending::Acked));
    }

    #[test]
    fn forgets_leases_beyond_the_span_and_keeps_newer_ones() {
        let mut ended = EndedLeases::default();
        let span = ENDED_LEASES_REMEMBERED as u64;
        ended.record(SEED, MessageId(1), Ending::Acked);
        ended.record(SEED + span, MessageId(2), Ending::Acked);
        assert_eq!(ended.ending(SEED, MessageId(1)), None, "its slot went to a lease one span newer");
        assert_eq!(ended.ending(SEED + span, MessageId(2)), Some(Ending::Acked));
        // A lease older than the slot's ends late: the newer one stays.
        ended.record(SEED, MessageId(1), Ending::Acked);
        assert_eq!(ended.ending(SEED + span, MessageId(2)), Some(Ending::Acked));
        assert_eq!(ended.ending(SEED, MessageId(1)), None);
    }
}
