//! The broker core: one scheduler thread owns all queue state, without
//! locks. Callers (the gRPC handlers) talk to it through [`Broker`], a cheap
//! handle that sends commands over a channel and awaits the answers.
//!
//! The scheduler works in rounds: it takes every command that has arrived,
//! applies them to its state, writes all their storage changes in one atomic
//! batch (group commit), then answers the callers and pushes deliveries.
//! Nothing is answered or delivered before it is durable.

mod consumers;
mod leases;
mod queue_state;
mod scheduler;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

pub use consumers::{ConsumerEvent, ConsumerId, DEFAULT_WINDOW, MAX_WINDOW};
pub use leases::RECENT_ACKS_REMEMBERED;

use crate::domain::queue::visibility_timeout_from_ms;
use crate::domain::{
    BrokerError, LeaseToken, Limits, MessageId, NewMessage, QueueName, QueueSettings, ValidationError,
};
use crate::storage::Store;
use scheduler::{Command, Scheduler};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A message leased to a consumer, as pushed on its stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<str>,
    /// The stored message (`domain::message::MessageRecord`, encoded);
    /// decoding is left to the transport thread.
    pub record: Bytes,
    pub token: LeaseToken,
    pub leased_at: SystemTime,
    pub deadline: SystemTime,
}

/// A queue with its live counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub settings: QueueSettings,
    pub depth: u64,
    pub in_flight: u64,
    pub consumers: u32,
}

/// One page of queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePage {
    pub queues: Vec<QueueInfo>,
    /// Name of the last queue returned, when more may follow.
    pub next_after: Option<String>,
}

/// An open Lease stream. Dropping it unsubscribes the consumer; its leases
/// stay until their visibility timeout.
pub struct Subscription {
    pub events: tokio_mpsc::UnboundedReceiver<ConsumerEvent>,
    id: ConsumerId,
    commands: mpsc::Sender<Command>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe { consumer: self.id });
    }
}

/// A nack of one delivery.
#[derive(Debug, Clone)]
pub struct NackItem {
    pub token: String,
    pub error: String,
}

/// An extension of one lease.
#[derive(Debug, Clone)]
pub struct ExtendItem {
    pub token: String,
    /// 0 = the timeout the lease was granted with.
    pub visibility_timeout_ms: u64,
}

/// Broker-wide options.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerOptions {
    pub limits: Limits,
}

/// Handle to the scheduler thread. Clones share the same scheduler.
#[derive(Clone)]
pub struct Broker {
    commands: mpsc::Sender<Command>,
    options: BrokerOptions,
}

/// Fires once when the scheduler thread stops; carries the storage error
/// that stopped it, if any.
pub type StopSignal = oneshot::Receiver<Option<BrokerError>>;

impl Broker {
    /// Recovers state from `store` and starts the scheduler thread.
    pub fn start<S: Store>(store: S, options: BrokerOptions) -> Result<(Broker, StopSignal), BrokerError> {
        let (commands, inbox) = mpsc::channel();
        let scheduler = Scheduler::recover(store)?;
        let (stopped_tx, stopped_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("fila-scheduler".into())
            .spawn(move || {
                let outcome = scheduler.run(inbox);
                let _ = stopped_tx.send(outcome.err());
            })
            .map_err(|e| {
                BrokerError::Storage(crate::domain::StorageError::Io(format!("cannot start scheduler: {e}")))
            })?;
        Ok((Broker { commands, options }, stopped_rx))
    }

    pub fn limits(&self) -> &Limits {
        &self.options.limits
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)
    }

    /// Enqueues a batch; answers per message, in order.
    pub async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Result<MessageId, BrokerError>>, BrokerError> {
        self.options.limits.check_batch(messages.len())?;
        let now = SystemTime::now();
        let items = messages
            .into_iter()
            .map(|m| -> Result<scheduler::PreparedMessage, BrokerError> {
                let m = m.validate(&self.options.limits)?;
                let queue = QueueName::parse(&m.queue)?;
                let id = MessageId::generate();
                let fairness_key = m.fairness_key.clone();
                let record = m.into_record(id, now).encode_bytes();
                Ok(scheduler::PreparedMessage { queue, fairness_key, id, record })
            })
            .collect();
        self.ask(|reply| Command::Enqueue { items, reply }).await
    }

    /// Opens a delivery stream on `queue`.
    pub async fn subscribe(
        &self,
        queue: &str,
        max_in_flight: u32,
        visibility_timeout_ms: u64,
    ) -> Result<Subscription, BrokerError> {
        let queue = QueueName::parse(queue)?;
        let window = match max_in_flight {
            0 => DEFAULT_WINDOW,
            1..=MAX_WINDOW => max_in_flight,
            _ => {
                return Err(ValidationError::WindowOutOfRange {
                    value: max_in_flight,
                    max: MAX_WINDOW,
                    default: DEFAULT_WINDOW,
                }
                .into())
            }
        };
        let visibility_timeout = match visibility_timeout_ms {
            0 => None,
            ms => Some(visibility_timeout_from_ms("visibility_timeout_ms", ms, Duration::ZERO)?),
        };
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        let id = self
            .ask(|reply| Command::Subscribe { queue, window, visibility_timeout, events: events_tx, reply })
            .await??;
        Ok(Subscription { events, id, commands: self.commands.clone() })
    }

    /// Acknowledges deliveries; answers per token, in order.
    pub async fn ack(&self, tokens: Vec<String>) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        self.options.limits.check_batch(tokens.len())?;
        let tokens = tokens.iter().map(|t| Ok(t.parse::<LeaseToken>()?)).collect();
        self.ask(|reply| Command::Ack { tokens, reply }).await
    }

    /// Reports failed deliveries; answers per item, in order.
    pub async fn nack(&self, items: Vec<NackItem>) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        use crate::domain::limits::MAX_NACK_ERROR_BYTES;
        self.options.limits.check_batch(items.len())?;
        let items = items
            .into_iter()
            .map(|item| {
                let token = item.token.parse::<LeaseToken>()?;
                if item.error.len() > MAX_NACK_ERROR_BYTES {
                    return Err(
                        ValidationError::NackErrorTooLong { len: item.error.len(), max: MAX_NACK_ERROR_BYTES }.into()
                    );
                }
                Ok((token, item.error))
            })
            .collect();
        self.ask(|reply| Command::Nack { items, reply }).await
    }

    /// Extends leases; answers per item with the new deadline.
    pub async fn extend(&self, items: Vec<ExtendItem>) -> Result<Vec<Result<SystemTime, BrokerError>>, BrokerError> {
        self.options.limits.check_batch(items.len())?;
        let items = items
            .into_iter()
            .map(|item| {
                let token = item.token.parse::<LeaseToken>()?;
                let timeout = match item.visibility_timeout_ms {
                    0 => None,
                    ms => Some(visibility_timeout_from_ms("visibility_timeout_ms", ms, Duration::ZERO)?),
                };
                Ok((token, timeout))
            })
            .collect();
        self.ask(|reply| Command::Extend { items, reply }).await
    }

    pub async fn create_queue(&self, name: &str, visibility_timeout_ms: u64) -> Result<QueueInfo, BrokerError> {
        let name = QueueName::parse_for_create(name)?;
        let settings = QueueSettings {
            visibility_timeout: visibility_timeout_from_ms(
                "visibility_timeout_ms",
                visibility_timeout_ms,
                crate::domain::queue::DEFAULT_VISIBILITY_TIMEOUT,
            )?,
        };
        self.ask(|reply| Command::CreateQueue { name, settings, reply }).await?
    }

    /// Deletes a queue and its messages; returns how many messages went.
    pub async fn delete_queue(&self, name: &str) -> Result<u64, BrokerError> {
        let name = QueueName::parse(name)?;
        self.ask(|reply| Command::DeleteQueue { name, reply }).await?
    }

    /// Lists queues in name order, starting after `after`.
    pub async fn list_queues(&self, after: Option<String>, page_size: u32) -> Result<QueuePage, BrokerError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            1..=MAX_PAGE_SIZE => page_size,
            _ => return Err(ValidationError::PageSizeOutOfRange { value: page_size, max: MAX_PAGE_SIZE }.into()),
        } as usize;
        if let Some(token) = &after {
            QueueName::parse(token).map_err(|_| ValidationError::BadPageToken { token: token.clone() })?;
        }
        self.ask(|reply| Command::ListQueues { after, limit, reply }).await
    }

    /// Ends every delivery stream and refuses new ones: the first step of a
    /// graceful shutdown, so the transport can drain.
    pub async fn close_streams(&self) {
        let _ = self.ask(|reply| Command::CloseStreams { reply }).await;
    }

    /// Finishes pending work, makes it durable and stops the scheduler.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.ask(|reply| Command::Shutdown { reply }).await?
    }
}
