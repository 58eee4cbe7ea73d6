//! Workload 2: lifecycle throughput. Producers enqueue while consumers
//! receive and acknowledge; messages fully processed (acknowledged) per
//! second.

use anyhow::Result;

use crate::brokers::System;
use crate::load::{Consume, Load, Produce};
use crate::measure::{Plan, Rate, Stat};
use crate::report::{thousands, Section, Unit};
use crate::suite::{Scale, Suite};

use super::{batching_label, on_fresh_queue, record, QUEUE};

pub async fn run(suite: &mut Suite, section: &mut Section) -> Result<()> {
    let scale = suite.scale.clone();
    section.method = format!(
        "{} producers and {} consumers, 64-byte payloads; producers stay at most {} messages ahead of the \
         consumers (a steady state, not a growing backlog); acknowledged messages per second. Consumers hold up \
         to {} unacknowledged deliveries (Fila max_in_flight, JetStream pull batch, RabbitMQ prefetch). Batched: \
         {} messages per enqueue call and acks of up to {} deliveries at once; unbatched: one message per call and \
         one ack per delivery.",
        scale.producers,
        scale.consumers,
        thousands(scale.max_backlog),
        thousands(scale.prefetch as u64),
        scale.batch,
        scale.batch
    );
    for batch in [scale.batch, 1] {
        let case = case_label(&scale, batch);
        for system in suite.systems.iter_mut() {
            let result = lifecycle_case(system.as_mut(), &scale, batch).await;
            if let (Ok(stat), true) = (&result, batch > 1) {
                suite.peaks.insert(system.id().to_owned(), stat.median);
            }
            record(section, &mut suite.failures, &case, "throughput", Unit::MsgPerSec, system.id(), result);
        }
    }
    let batched = case_label(&scale, scale.batch);
    let fila = section.value(&batched, "throughput", "fila");
    suite.target("Lifecycle, batched: ≥ 100,000 msg/s", fila, Unit::MsgPerSec, |v| v >= 100_000.0);
    if let Some(nats) = section.value(&batched, "throughput", "nats") {
        let target = format!("Lifecycle, batched: ≥ NATS JetStream's {} msg/s", thousands(nats as u64));
        suite.target(&target, fila, Unit::MsgPerSec, |v| v >= nats);
    }
    Ok(())
}

fn case_label(scale: &Scale, batch: usize) -> String {
    format!("{} producers, {} consumers · {}", scale.producers, scale.consumers, batching_label(batch))
}

/// Lifecycle throughput against a fresh queue of `system`, `batch` messages
/// per call.
pub async fn lifecycle_case(system: &mut dyn System, scale: &Scale, batch: usize) -> Result<Stat> {
    on_fresh_queue(system, async |system| {
        let mut load = Load::new();
        let consume = Consume { batch, ..Consume::default() };
        let clients = (scale.producers, scale.consumers);
        add_clients(system, &mut load, scale, clients, scale.lifecycle_produce(batch), consume).await?;
        acked_rate(&scale.plan, load).await
    })
    .await
}

/// Adds `consumers` consumers (with the scale's prefetch), then `producers`
/// producers, on `QUEUE` of `system`.
pub async fn add_clients(
    system: &dyn System,
    load: &mut Load,
    scale: &Scale,
    (producers, consumers): (usize, usize),
    produce: Produce,
    consume: Consume,
) -> Result<()> {
    for _ in 0..consumers {
        load.add_consumer(system.consumer(QUEUE, scale.prefetch).await?, consume.clone());
    }
    for _ in 0..producers {
        load.add_producer(system.producer(QUEUE).await?, produce.clone());
    }
    Ok(())
}

/// Acknowledged messages per second; stops the load.
pub async fn acked_rate(plan: &Plan, load: Load) -> Result<Stat> {
    let counters = load.counters.clone();
    Ok(Stat::of(plan.measure_and_stop(load, &mut Rate::of(&counters.acked)).await?))
}
