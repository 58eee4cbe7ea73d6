//! The systems under test, behind one small interface so that the enqueue,
//! lifecycle and latency workloads run unchanged against Fila and its peers.
//!
//! Batching is expressed the same way for all of them: a producer's `send`
//! gets a batch and returns once the broker has confirmed every message of
//! it (one call for Fila, pipelined publishes then their confirmations for
//! the peers); a consumer's `ack` settles everything received so far (one
//! call where the protocol can batch acknowledgements).

pub mod fila;
pub mod fila_server;
pub mod nats;
pub mod rabbitmq;

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::future::BoxFuture;

/// One delivered message.
pub struct Delivered {
    pub payload: Bytes,
    /// Fila's fairness key; empty for the peers.
    pub key: String,
}

pub trait Producer: Send {
    /// Sends the batch and waits until the broker has confirmed all of it.
    fn send<'a>(&'a mut self, payloads: &'a [Bytes]) -> BoxFuture<'a, Result<()>>;
}

pub trait Consumer: Send {
    /// Waits up to `wait` for a delivery, then also takes those that have
    /// already arrived, up to `max` in all; appends them to `out`.
    fn receive<'a>(&'a mut self, max: usize, wait: Duration, out: &'a mut Vec<Delivered>) -> BoxFuture<'a, Result<()>>;

    /// Acknowledges everything received and not yet acknowledged.
    fn ack(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// A running broker the side-by-side workloads can use.
pub trait System: Send {
    /// Short identifier, used in results.json: `fila`, `nats`, `rabbitmq`.
    fn id(&self) -> &'static str;

    /// Prepares an empty queue for one measurement.
    fn fresh_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>>;

    fn producer<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Box<dyn Producer>>>;

    /// A consumer that holds at most `prefetch` unacknowledged deliveries.
    fn consumer<'a>(&'a self, queue: &'a str, prefetch: usize) -> BoxFuture<'a, Result<Box<dyn Consumer>>>;

    /// Removes the queue and its messages.
    fn remove_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// What the report says about a system: its version and every setting that
/// matters for the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub settings: Vec<String>,
}

/// The display name of a system id.
pub fn display_name(id: &str) -> &str {
    match id {
        "fila" => "Fila",
        "nats" => "NATS JetStream",
        "rabbitmq" => "RabbitMQ",
        other => other,
    }
}

/// Takes the first item of `stream` within `wait`, then the items already
/// ready without waiting, up to `max` in all. Shared by the consumers,
/// which all receive from a stream that their client fills in the
/// background.
pub async fn take_ready<S, T>(stream: &mut S, max: usize, wait: Duration, mut take: impl FnMut(T)) -> Result<usize>
where
    S: futures::Stream<Item = Result<T>> + Unpin,
{
    use futures::{FutureExt, StreamExt};
    let first = match tokio::time::timeout(wait, stream.next()).await {
        Err(_) => return Ok(0),
        Ok(None) => anyhow::bail!("the delivery stream ended"),
        Ok(Some(item)) => item?,
    };
    take(first);
    let mut taken = 1;
    while taken < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => {
                take(item?);
                taken += 1;
            }
            Some(None) => anyhow::bail!("the delivery stream ended"),
            None => break,
        }
    }
    Ok(taken)
}
