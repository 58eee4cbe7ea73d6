//! Workload 3: end-to-end latency, from the producer's send to the delivery
//! reaching a consumer that is already waiting, at light load and at half
//! of the system's own peak lifecycle throughput.

use std::sync::Arc;

use anyhow::Result;

use crate::brokers::System;
use crate::load::{Consume, Load, Payload, Produce};
use crate::measure::{Latency, Percentiles, Samples, Stat, PERCENTILES};
use crate::report::{Section, Unit};
use crate::suite::{Scale, Suite};

use super::lifecycle::{add_clients, lifecycle_case};
use super::{on_fresh_queue, record_all, Figures};

pub async fn run(suite: &mut Suite, section: &mut Section) -> Result<()> {
    let scale = suite.scale.clone();
    section.method = format!(
        "Each payload carries its send time; the consumer takes the difference on receipt (same process, same \
         clock), before acknowledging. Light load: one producer, {} messages per second, one message per call, \
         one consumer. Half of peak: {} producers sending batches of {} at half the system's batched lifecycle \
         throughput of this run (its own peak), {} consumers; the time counts from the start of the batch's \
         enqueue call.",
        scale.light_rate, scale.producers, scale.batch, scale.consumers
    );
    let light = format!("light load ({} msg/s, unbatched)", scale.light_rate);
    for system in suite.systems.iter_mut() {
        let result = latency_case(system.as_mut(), &scale, 1, 1, 1, scale.light_rate).await;
        record_all(section, &mut suite.failures, &light, system.id(), result.map(percentile_rows));
    }
    let p50 = section.value(&light, "p50", "fila");
    suite.target("Latency to a waiting consumer, light load: p50 < 0.3 ms", p50, Unit::Millis, |v| v < 0.3);
    let p99 = section.value(&light, "p99", "fila");
    suite.target("Latency to a waiting consumer, light load: p99 < 1 ms", p99, Unit::Millis, |v| v < 1.0);
    let half = "50% of peak throughput (batched)";
    for system in suite.systems.iter_mut() {
        let result = async {
            let peak = match suite.peaks.get(system.id()) {
                Some(peak) => *peak,
                None => lifecycle_case(system.as_mut(), &scale, scale.batch).await?.median,
            };
            let rate = peak / 2.0;
            let (p, c, b) = (scale.producers, scale.consumers, scale.batch);
            let mut rows = percentile_rows(latency_case(system.as_mut(), &scale, p, c, b, rate).await?);
            rows.push(("offered load".into(), Unit::MsgPerSec, Stat::once(rate)));
            Ok(rows)
        }
        .await;
        record_all(section, &mut suite.failures, half, system.id(), result);
    }
    Ok(())
}

fn percentile_rows(runs: Vec<Percentiles>) -> Figures {
    PERCENTILES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), Unit::Millis, Stat::of(runs.iter().map(|p| p.0[i]).collect())))
        .collect()
}

/// Latency percentiles of each window with `producers` producers sending
/// `batch` messages per call at `rate` messages per second in all.
async fn latency_case(
    system: &mut dyn System,
    scale: &Scale,
    producers: usize,
    consumers: usize,
    batch: usize,
    rate: f64,
) -> Result<Vec<Percentiles>> {
    on_fresh_queue(system, async |system| {
        let samples = Arc::new(Samples::default());
        let mut load = Load::new();
        let consume = Consume { batch: scale.batch, latency: Some(samples.clone()), per_key: None };
        let per_producer = rate / producers as f64;
        let produce =
            Produce { batch, payload: Payload::Stamped(64), max_backlog: None, rate: Some(per_producer), limit: None };
        add_clients(system, &mut load, scale, (producers, consumers), produce, consume).await?;
        scale.plan.measure_and_stop(load, &mut Latency(&samples)).await
    })
    .await
}
