//! Consumers: open Lease streams and their in-flight windows.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::Delivery;
use crate::domain::{BrokerError, QueueId};

pub type ConsumerId = u64;

pub const DEFAULT_WINDOW: u32 = 100;
pub const MAX_WINDOW: u32 = 10_000;

/// What a Lease stream receives.
#[derive(Debug)]
pub enum ConsumerEvent {
    Deliveries(Vec<Delivery>),
    /// The stream ends with this error (queue deleted, broker stopping).
    Closed(BrokerError),
}

pub struct Consumer {
    pub queue: QueueId,
    pub window: u32,
    pub in_flight: u32,
    /// The stream's own lease duration; `None` follows the queue's setting.
    pub visibility_timeout: Option<Duration>,
    pub events: UnboundedSender<ConsumerEvent>,
}

impl Consumer {
    pub fn has_room(&self) -> bool {
        self.in_flight < self.window
    }

    pub fn is_connected(&self) -> bool {
        !self.events.is_closed()
    }
}
