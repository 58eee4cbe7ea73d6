//! Workload 7: how queue depth affects memory and throughput, and how long
//! a broker with a deep queue takes to serve again after a crash.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fila_sdk::LeaseOptions;
use futures::StreamExt;

use crate::brokers::fila::{create_queue, Shape};
use crate::brokers::fila_server::FilaServer;
use crate::load::Consume;
use crate::measure::{Probe, Rate, Stat};
use crate::report::{thousands, Section, Unit};
use crate::suite::{Scale, Suite};

use super::fila_load::{fill, lifecycle};
use super::{record_all, Figures};

const QUEUE: &str = "deep";
/// Pause before reading an idle server's memory, so that start-up or a
/// fill has settled.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the first delivery after a restart may take.
const FIRST_DELIVERY_LIMIT: Duration = Duration::from_secs(120);

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn run(suite: &mut Suite, section: &mut Section) -> Result<()> {
    let scale = suite.scale.clone();
    section.method = "One server, one queue, one fairness key, 64-byte messages. The queue is filled to each depth \
         (4 producers, batches of 1,000), then measured idle (RSS after 1 s) and under the batched lifecycle of 2, \
         with producers keeping the depth. Restart: SIGKILL right after the deepest lifecycle run, start the \
         binary again, time until a call is answered and until a consumer gets its first delivery."
        .into();
    let mut server = FilaServer::start(&suite.fila_binary, &[], true).await?;
    tokio::time::sleep(SETTLE).await;
    section.add("idle, no queues", "RSS", Unit::Megabytes, "fila", Stat::once(megabytes(server.rss_bytes()?)));
    create_queue(&server.client().await?, QUEUE).await?;
    for &depth in &scale.depths {
        let result = at_depth(&server, &scale, depth).await;
        let failed = result.is_err();
        record_all(section, &mut suite.failures, &format!("{} queued", thousands(depth)), "fila", result);
        anyhow::ensure!(!failed, "stopped at depth {depth}");
    }
    let deepest = scale.depths.iter().max().copied().unwrap_or(0);
    let restarted = format!("restart with {} queued", thousands(deepest));
    let result = restart(&mut server).await;
    record_all(section, &mut suite.failures, &restarted, "fila", result);

    let idle = section.value("idle, no queues", "RSS", "fila");
    suite.target("RSS idle: < 50 MB", idle, Unit::Megabytes, |v| v < 50.0);
    let deep = format!("{} queued", thousands(deepest));
    let rss = ["RSS, idle", "RSS under load"].iter().filter_map(|m| section.value(&deep, m, "fila")).reduce(f64::max);
    suite.target(&format!("RSS with {deep}: < 256 MB"), rss, Unit::Megabytes, |v| v < 256.0);
    let serving = section.value(&restarted, "until the first delivery", "fila");
    suite.target(&format!("Serving again after a {restarted}: < 5 s"), serving, Unit::Seconds, |v| v < 5.0);
    Ok(())
}

async fn at_depth(server: &FilaServer, scale: &Scale, depth: u64) -> Result<Figures> {
    let queued = server.client().await?.get_queue(QUEUE).await.context("GetQueue")?.depth;
    if depth > queued {
        fill(server, QUEUE, &Shape::default(), None, depth - queued).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let idle = megabytes(server.rss_bytes()?);
    let consume = Consume { batch: scale.batch, ..Consume::default() };
    let load =
        lifecycle(server, QUEUE, scale, &Shape::default(), scale.lifecycle_produce(scale.batch), consume).await?;
    let counters = load.counters.clone();
    let windows = scale.plan.measure_and_stop(load, &mut (Rate::of(&counters.acked), Rss(server))).await?;
    Ok(vec![
        ("RSS, idle".into(), Unit::Megabytes, Stat::once(idle)),
        ("lifecycle throughput".into(), Unit::MsgPerSec, Stat::of(windows.iter().map(|w| w.0).collect())),
        ("RSS under load".into(), Unit::Megabytes, Stat::of(windows.iter().map(|w| w.1).collect())),
    ])
}

async fn restart(server: &mut FilaServer) -> Result<Figures> {
    server.kill()?;
    let answering = server.spawn().await?;
    let started = Instant::now();
    let client = server.client().await?;
    let mut deliveries = client.lease(QUEUE, LeaseOptions::default()).await.context("Lease after restart")?;
    tokio::time::timeout(FIRST_DELIVERY_LIMIT, deliveries.next())
        .await
        .context("no delivery after the restart")?
        .context("the Lease stream ended")?
        .context("Lease after restart")?;
    let delivering = answering + started.elapsed();
    drop(deliveries);
    tokio::time::sleep(SETTLE).await;
    Ok(vec![
        ("until a call is answered".into(), Unit::Seconds, Stat::once(answering.as_secs_f64())),
        ("until the first delivery".into(), Unit::Seconds, Stat::once(delivering.as_secs_f64())),
        ("RSS after restart".into(), Unit::Megabytes, Stat::once(megabytes(server.rss_bytes()?))),
    ])
}

/// The server's RSS at the end of each window, in MB.
struct Rss<'a>(&'a FilaServer);

impl Probe for Rss<'_> {
    type Output = f64;

    async fn begin(&mut self) -> Result<()> {
        Ok(())
    }

    async fn end(&mut self, _elapsed: Duration) -> Result<f64> {
        Ok(megabytes(self.0.rss_bytes()?))
    }
}
