//! Workload 6: what a realistic `on_enqueue` hook costs: lifecycle
//! throughput with and without it, and the hook's per-call time from the
//! server's own histogram (`fila_script_duration_seconds`).

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use fila_sdk::{QueueOptions, QueueScripts};

use crate::brokers::fila::Shape;
use crate::brokers::fila_server::FilaServer;
use crate::load::{Consume, Payload};
use crate::measure::{Probe, Rate, Stat};
use crate::report::{Section, Unit};
use crate::suite::Suite;

use super::fila_load::lifecycle;
use super::{record_all, Figures};

const QUEUE: &str = "orders";

/// The realistic hook that `server/benches/lua.rs` times in process: reads a header, decodes
/// the JSON payload, reads runtime configuration, returns a decision.
const ON_ENQUEUE: &str = include_str!("../../../server/benches/on_enqueue_realistic.lua");

const PAYLOAD: &[u8] =
    br#"{"order_id":"ord_8c1f2a","provider":"stripe","amount":4200,"currency":"EUR","items":[{"sku":"A1","qty":2}]}"#;

fn headers() -> Vec<(String, String)> {
    [("x-tenant", "acme"), ("x-priority", "high"), ("content-type", "application/json"), ("trace", "4bf92f35")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub async fn run(suite: &mut Suite, section: &mut Section) -> Result<()> {
    section.method = "Batched lifecycle (as in 2) with a 110-byte JSON payload and four headers. With the hook, the \
         realistic 10-line on_enqueue of server/benches/on_enqueue_realistic.lua (header, JSON decode, fila.get, decision with \
         fairness key, weight and two throttle keys); without it, producers set the same fairness key and \
         throttle keys themselves. Per-call times come from the server's fila.script.duration histogram, \
         interpolated within its buckets (…, 5, 7.5, 10, 12.5, 15, 20, 25, 50, … µs)."
        .into();
    let plain = measure(suite, false).await;
    record_all(section, &mut suite.failures, "without a hook", "fila", plain);
    let scripted = measure(suite, true).await;
    record_all(section, &mut suite.failures, "with on_enqueue", "fila", scripted);
    let plain = section.value("without a hook", "throughput", "fila");
    if let (Some(plain), Some(scripted)) = (plain, section.value("with on_enqueue", "throughput", "fila")) {
        let relative = Stat::once(scripted / plain * 100.0);
        section.add("with on_enqueue", "of the throughput without", Unit::Percent, "fila", relative);
    }
    let p99 = section.value("with on_enqueue", "on_enqueue per call p99", "fila");
    suite.target("Lua on_enqueue per call: p99 < 10 µs", p99, Unit::Micros, |v| v < 10.0);
    Ok(())
}

async fn measure(suite: &Suite, with_hook: bool) -> Result<Figures> {
    let scale = &suite.scale;
    let server = FilaServer::start(&suite.fila_binary, &[], true).await?;
    let client = server.client().await?;
    client.set_config("plan.acme", "pro").await.context("SetConfig")?;
    let (scripts, shape) = if with_hook {
        let scripts = QueueScripts { on_enqueue: Some(ON_ENQUEUE.into()), on_failure: None };
        (scripts, Shape { headers: headers(), ..Shape::default() })
    } else {
        let shape = Shape {
            keys: vec!["acme".to_owned()].into(),
            throttle_keys: vec!["tenant:acme".into(), "provider:stripe".into()],
            headers: headers(),
        };
        (QueueScripts::default(), shape)
    };
    client.create_queue_with_scripts(QUEUE, QueueOptions::default(), scripts).await.context("CreateQueue")?;
    let mut produce = scale.lifecycle_produce(scale.batch);
    produce.payload = Payload::Fixed(Bytes::from_static(PAYLOAD));
    let consume = Consume { batch: scale.batch, ..Consume::default() };
    let load = lifecycle(&server, QUEUE, scale, &shape, produce, consume).await?;
    let counters = load.counters.clone();
    let mut probe = (Rate::of(&counters.acked), ScriptTimes { server: &server, start: Vec::new() });
    let windows = scale.plan.measure_and_stop(load, &mut probe).await?;
    let mut figures = vec![("throughput".into(), Unit::MsgPerSec, Stat::of(windows.iter().map(|w| w.0).collect()))];
    if with_hook {
        for (name, q) in [("on_enqueue per call p50", 0.50), ("on_enqueue per call p99", 0.99)] {
            let values = windows.iter().map(|(_, buckets)| quantile(buckets, q) * 1e6).collect();
            figures.push((name.into(), Unit::Micros, Stat::of(values)));
        }
    }
    Ok(figures)
}

/// (upper bound in seconds, cumulative count) of the on_enqueue histogram.
type Buckets = Vec<(f64, f64)>;

/// Summed over the series (queues) that have one.
fn on_enqueue_buckets(metrics: &str) -> Buckets {
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("fila_script_duration_seconds_bucket{") && l.contains("\"on_enqueue\""))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, line.rsplit(' ').next()?.parse::<f64>().ok()?))
        });
    let mut buckets: Buckets = Vec::new();
    for (bound, count) in series {
        match buckets.iter_mut().find(|b| b.0 == bound) {
            Some(bucket) => bucket.1 += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within
/// the bucket it falls in (as Prometheus' histogram_quantile does).
fn quantile(buckets: &Buckets, q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else { return f64::NAN };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank && count > lower.1 {
            if bound.is_infinite() {
                return lower.0;
            }
            return lower.0 + (bound - lower.0) * (rank - lower.1) / (count - lower.1);
        }
        lower = (bound, count);
    }
    f64::NAN
}

/// The on_enqueue histogram's counts within a window.
struct ScriptTimes<'a> {
    server: &'a FilaServer,
    start: Buckets,
}

impl Probe for ScriptTimes<'_> {
    type Output = Buckets;

    async fn begin(&mut self) -> Result<()> {
        self.start = on_enqueue_buckets(&self.server.metrics().await?);
        Ok(())
    }

    async fn end(&mut self, _elapsed: Duration) -> Result<Buckets> {
        let now = on_enqueue_buckets(&self.server.metrics().await?);
        let before = |bound: f64| self.start.iter().find(|b| b.0 == bound).map_or(0.0, |b| b.1);
        Ok(now.into_iter().map(|(bound, count)| (bound, count - before(bound))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_interpolates_the_histogram() {
        let text = "# TYPE fila_script_duration_seconds histogram\n\
            fila_script_duration_seconds_bucket{fila_script_hook=\"on_enqueue\",le=\"0.000005\"} 50\n\
            fila_script_duration_seconds_bucket{fila_script_hook=\"on_enqueue\",le=\"0.00001\"} 90\n\
            fila_script_duration_seconds_bucket{fila_script_hook=\"on_enqueue\",le=\"+Inf\"} 100\n\
            fila_script_duration_seconds_bucket{fila_script_hook=\"on_failure\",le=\"+Inf\"} 7\n";
        let buckets = on_enqueue_buckets(text);
        assert_eq!(buckets.len(), 3);
        assert!((quantile(&buckets, 0.5) - 5e-6).abs() < 1e-12);
        assert!((quantile(&buckets, 0.7) - 7.5e-6).abs() < 1e-12);
        assert_eq!(quantile(&buckets, 0.99), 1e-5); // in +Inf: the last finite bound
    }
}
