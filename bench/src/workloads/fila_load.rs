//! Load on a Fila queue with shaped messages (fairness keys, throttle keys,
//! headers), for the workloads that measure Fila alone.

use anyhow::Result;
use bytes::Bytes;

use crate::brokers::fila::{FilaConsumer, FilaProducer, Shape};
use crate::brokers::fila_server::FilaServer;
use crate::load::{Consume, Load, Payload, Produce};
use crate::suite::Scale;

/// Producers and batch size that fill a queue quickly.
const FILL_PRODUCERS: u64 = 4;
const FILL_BATCH: usize = 1000;
/// However large the fill, it must finish within this.
const FILL_LIMIT: std::time::Duration = std::time::Duration::from_secs(900);

/// Queues `count` messages shaped by `shape` as fast as the broker takes
/// them, 64 bytes or `payload`.
pub async fn fill(server: &FilaServer, queue: &str, shape: &Shape, payload: Option<Bytes>, count: u64) -> Result<()> {
    let mut load = Load::new();
    let payload = payload.map_or_else(|| Payload::fixed(64), Payload::Fixed);
    for p in 0..FILL_PRODUCERS {
        let share = count * (p + 1) / FILL_PRODUCERS - count * p / FILL_PRODUCERS;
        let spec =
            Produce { batch: FILL_BATCH, payload: payload.clone(), max_backlog: None, rate: None, limit: Some(share) };
        load.add_producer(Box::new(producer(server, queue, shape, p as usize, FILL_PRODUCERS as usize).await?), spec);
    }
    let filled = load.run_until(FILL_LIMIT, |c| c.sent.load(std::sync::atomic::Ordering::Relaxed) >= count).await;
    let stopped = load.stop().await;
    filled?;
    stopped
}

/// The scale's consumers and producers (shaped by `shape`) on `queue`.
pub async fn lifecycle(
    server: &FilaServer,
    queue: &str,
    scale: &Scale,
    shape: &Shape,
    produce: Produce,
    consume: Consume,
) -> Result<Load> {
    let mut load = Load::new();
    for _ in 0..scale.consumers {
        load.add_consumer(
            Box::new(FilaConsumer::open(server.client().await?, queue, scale.prefetch).await?),
            consume.clone(),
        );
    }
    for p in 0..scale.producers {
        load.add_producer(Box::new(producer(server, queue, shape, p, scale.producers).await?), produce.clone());
    }
    Ok(load)
}

/// Producer `index` of `of` starts at its own part of the key list, so
/// that producers do not send to the same keys at the same time.
async fn producer(server: &FilaServer, queue: &str, shape: &Shape, index: usize, of: usize) -> Result<FilaProducer> {
    let offset = shape.keys.len() * index / of;
    Ok(FilaProducer::new(server.client().await?, queue, shape.clone()).starting_at(offset))
}
