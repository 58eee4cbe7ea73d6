//! Lease tokens: what a consumer passes back to Ack, Nack and ExtendLease.
//!
//! A token names the queue, the message and the individual lease, so the
//! broker can tell "this lease ended" (FAILED_PRECONDITION) from "no such
//! message" (NOT_FOUND). Clients must treat tokens as opaque strings.

use std::fmt;
use std::str::FromStr;

use super::error::LeaseError;
use super::message::MessageId;
use super::queue::QueueId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    pub queue: QueueId,
    pub message: MessageId,
    /// Unique per lease across broker restarts (see `broker::leases`).
    pub lease: u64,
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:032x}.{:x}", self.queue, self.message.0, self.lease)
    }
}

impl FromStr for LeaseToken {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, LeaseError> {
        let malformed = || LeaseError::MalformedToken(s.chars().take(100).collect());
        let mut parts = s.split('.');
        let (Some(queue), Some(message), Some(lease), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        if message.len() != 32 {
            return Err(malformed());
        }
        Ok(LeaseToken {
            queue: u64::from_str_radix(queue, 16).map_err(|_| malformed())?,
            message: MessageId(u128::from_str_radix(message, 16).map_err(|_| malformed())?),
            lease: u64::from_str_radix(lease, 16).map_err(|_| malformed())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = LeaseToken { queue: 7, message: MessageId::generate(), lease: u64::MAX };
        assert_eq!(t.to_string().parse::<LeaseToken>(), Ok(t));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "a.b.c", "1.2", "1.00000000000000000000000000000001.3.4", "zz.00000000000000000000000000000001.1"]
        {
            assert!(matches!(s.parse::<LeaseToken>(), Err(LeaseError::MalformedToken(_))), "{s}");
        }
    }
}
