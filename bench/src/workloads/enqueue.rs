//! Workload 1: enqueue throughput (no consumers) by payload size, number of
//! producers and batching.

use anyhow::Result;

use crate::brokers::System;
use crate::load::{Load, Payload, Produce};
use crate::measure::{Plan, Rate, Stat};
use crate::report::{Section, Unit};
use crate::suite::{size_label, Suite};

use super::{batching_label, on_fresh_queue, record, QUEUE};

pub async fn run(suite: &mut Suite, section: &mut Section) -> Result<()> {
    section.method = format!(
        "Producers send as fast as the broker confirms, nobody consumes; confirmed messages per second. Batched: \
         {} messages per call (Fila: one Enqueue call; peers: {} publishes pipelined, then their confirmations \
         awaited); unbatched: one message per call, awaited before the next.",
        suite.scale.batch, suite.scale.batch
    );
    let scale = suite.scale.clone();
    for &size in &scale.payload_sizes {
        for producers in [1, scale.producers] {
            for batch in [scale.batch, 1] {
                let case = case_label(size, producers, batch);
                for system in suite.systems.iter_mut() {
                    let result = enqueue_case(system.as_mut(), &scale.plan, producers, batch, size).await;
                    record(section, &mut suite.failures, &case, "throughput", Unit::MsgPerSec, system.id(), result);
                }
            }
        }
    }
    let best = [1, scale.producers]
        .iter()
        .filter_map(|&producers| section.value(&case_label(64, producers, scale.batch), "throughput", "fila"))
        .reduce(f64::max);
    suite.target("Enqueue, batched, 64 B: ≥ 200,000 msg/s", best, Unit::MsgPerSec, |v| v >= 200_000.0);
    Ok(())
}

fn case_label(size: usize, producers: usize, batch: usize) -> String {
    let plural = if producers == 1 { "" } else { "s" };
    format!("{} · {producers} producer{plural} · {}", size_label(size), batching_label(batch))
}

/// Enqueue throughput of `producers` producers sending `batch` messages of
/// `size` bytes per call into a fresh queue.
pub async fn enqueue_case(
    system: &mut dyn System,
    plan: &Plan,
    producers: usize,
    batch: usize,
    size: usize,
) -> Result<Stat> {
    on_fresh_queue(system, async |system| {
        let mut load = Load::new();
        let spec = Produce { batch, payload: Payload::fixed(size), max_backlog: None, rate: None, limit: None };
        for _ in 0..producers {
            load.add_producer(system.producer(QUEUE).await?, spec.clone());
        }
        let counters = load.counters.clone();
        Ok(Stat::of(plan.measure_and_stop(load, &mut Rate::of(&counters.sent)).await?))
    })
    .await
}
