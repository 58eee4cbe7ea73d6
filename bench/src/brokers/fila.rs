//! Fila through its Rust SDK.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use fila_sdk::{Client, LeaseOptions, LeaseStream, NewMessage, QueueOptions};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::fila_server::FilaServer;
use super::{take_ready, Consumer, Delivered, Producer, System, SystemInfo};
use crate::process::first_line_of;

/// Fila as a side-by-side system. Every measurement gets a new server with
/// an empty database, so that compactions left over from the previous one
/// cannot slow it down.
pub struct FilaSystem {
    binary: PathBuf,
    args: Vec<&'static str>,
    telemetry: bool,
    server: Option<FilaServer>,
}

impl FilaSystem {
    pub fn new(binary: PathBuf) -> Self {
        FilaSystem { binary, args: Vec::new(), telemetry: true, server: None }
    }

    /// Extra server flags, such as `--sync-writes`.
    pub fn with_args(mut self, args: &[&'static str]) -> Self {
        self.args.extend(args);
        self
    }

    /// Runs the server with `--metrics-listen off`.
    pub fn without_telemetry(mut self) -> Self {
        self.telemetry = false;
        self
    }

    fn server(&self) -> Result<&FilaServer> {
        self.server.as_ref().context("no fila-server started")
    }

    pub fn info(binary: &std::path::Path) -> Result<SystemInfo> {
        Ok(SystemInfo {
            id: "fila".into(),
            name: "Fila".into(),
            version: first_line_of(binary.to_str().context("non-UTF-8 path")?, &["--version"])?,
            settings: vec![
                "fila-server defaults: RocksDB, WAL written before every answer (no fsync; --sync-writes is \
                 measured separately), group commit"
                    .into(),
                "queue defaults: visibility timeout 30 s, quantum 1; one fairness key unless stated".into(),
                "consumers: one Lease stream each, max_in_flight = prefetch; acks of everything received, in one \
                 Ack call"
                    .into(),
                "telemetry on (Prometheus endpoint), as by default".into(),
            ],
        })
    }
}

impl System for FilaSystem {
    fn id(&self) -> &'static str {
        "fila"
    }

    fn fresh_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.server = None; // kills the previous server and removes its data
            let server = FilaServer::start(&self.binary, &self.args, self.telemetry).await?;
            create_queue(&server.client().await?, queue).await?;
            self.server = Some(server);
            Ok(())
        }
        .boxed()
    }

    fn producer<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        async move {
            let client = self.server()?.client().await?;
            Ok(Box::new(FilaProducer::new(client, queue, Shape::default())) as Box<dyn Producer>)
        }
        .boxed()
    }

    fn consumer<'a>(&'a self, queue: &'a str, prefetch: usize) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            let client = self.server()?.client().await?;
            Ok(Box::new(FilaConsumer::open(client, queue, prefetch).await?) as Box<dyn Consumer>)
        }
        .boxed()
    }

    fn remove_queue<'a>(&'a mut self, _queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.server = None;
            Ok(())
        }
        .boxed()
    }
}

pub async fn create_queue(client: &Client, queue: &str) -> Result<()> {
    client.create_queue(queue, QueueOptions::default()).await.with_context(|| format!("creating queue {queue}"))?;
    Ok(())
}

/// What a producer puts around each payload: fairness keys (taken in turn;
/// repeat a key to give it a larger part of the traffic), throttle keys
/// and headers.
#[derive(Clone, Default)]
pub struct Shape {
    pub keys: Arc<[String]>,
    pub throttle_keys: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl Shape {
    /// `count` fairness keys `key-0` to `key-{count - 1}`, each once per
    /// cycle, in an order scattered over the key space (as tenants' traffic
    /// arrives): in numeric order, consecutive messages would go to
    /// neighbouring keys in storage, an order that flatters a sorted store.
    pub fn keys(count: usize) -> Self {
        let stride = scatter_stride(count);
        Shape { keys: (0..count).map(|i| format!("key-{}", i * stride % count)).collect(), ..Shape::default() }
    }
}

/// A step through `0..count` (taken modulo `count`) that visits every
/// index once and lands far from the previous one: a prime near
/// `count / φ` that does not divide `count`, hence coprime with it.
fn scatter_stride(count: usize) -> usize {
    if count <= 1 {
        return 1;
    }
    let is_prime = |n: usize| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
    let start = (count as f64 / 1.618) as usize;
    (start..).find(|&n| is_prime(n) && !count.is_multiple_of(n)).unwrap_or(1)
}

pub struct FilaProducer {
    client: Client,
    queue: String,
    shape: Shape,
    /// Position in `shape.keys`.
    next_key: usize,
}

impl FilaProducer {
    pub fn new(client: Client, queue: &str, shape: Shape) -> Self {
        FilaProducer { client, queue: queue.to_owned(), shape, next_key: 0 }
    }

    /// Starts at `offset` in the key list, so that producers sharing a
    /// shape do not all send to the same key at once.
    pub fn starting_at(mut self, offset: usize) -> Self {
        self.next_key = offset;
        self
    }

    fn message(&mut self, payload: &Bytes) -> NewMessage {
        let mut message = NewMessage::new(self.queue.clone(), payload.clone());
        if !self.shape.keys.is_empty() {
            message.fairness_key = self.shape.keys[self.next_key % self.shape.keys.len()].clone();
            self.next_key = self.next_key.wrapping_add(1);
        }
        message.throttle_keys.clone_from(&self.shape.throttle_keys);
        message.headers.extend(self.shape.headers.iter().cloned());
        message
    }
}

impl Producer for FilaProducer {
    fn send<'a>(&'a mut self, payloads: &'a [Bytes]) -> BoxFuture<'a, Result<()>> {
        async move {
            let batch = payloads.iter().map(|p| self.message(p)).collect();
            for result in self.client.enqueue_batch(batch).await.context("Enqueue")? {
                result.context("Enqueue refused a message")?;
            }
            Ok(())
        }
        .boxed()
    }
}

pub struct FilaConsumer {
    client: Client,
    stream: LeaseStream,
    tokens: Vec<String>,
}

impl FilaConsumer {
    pub async fn open(client: Client, queue: &str, prefetch: usize) -> Result<Self> {
        let options = LeaseOptions { max_in_flight: Some(prefetch as u32), visibility_timeout: None };
        let stream = client.lease(queue, options).await.with_context(|| format!("Lease on {queue}"))?;
        Ok(FilaConsumer { client, stream, tokens: Vec::new() })
    }
}

impl Consumer for FilaConsumer {
    fn receive<'a>(&'a mut self, max: usize, wait: Duration, out: &'a mut Vec<Delivered>) -> BoxFuture<'a, Result<()>> {
        async move {
            let tokens = &mut self.tokens;
            let mut stream = (&mut self.stream).map(|d| d.context("Lease stream"));
            take_ready(&mut stream, max, wait, |delivery| {
                tokens.push(delivery.lease_token);
                out.push(Delivered { payload: delivery.payload, key: delivery.fairness_key });
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let tokens = std::mem::take(&mut self.tokens);
            if tokens.is_empty() {
                return Ok(());
            }
            for result in self.client.ack_batch(tokens).await.context("Ack")? {
                result.context("Ack refused a token")?;
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_each_used_once_per_cycle_in_a_scattered_order() {
        for count in [0, 1, 2, 10, 100, 1_000, 100_000] {
            let shape = Shape::keys(count);
            let distinct: std::collections::HashSet<_> = shape.keys.iter().collect();
            assert_eq!(distinct.len(), count, "{count} keys");
            if count >= 100 {
                let neighbours = shape.keys.windows(2).filter(|w| {
                    let n = |k: &str| k["key-".len()..].parse::<i64>().unwrap();
                    (n(&w[0]) - n(&w[1])).abs() == 1
                });
                assert_eq!(neighbours.count(), 0, "{count} keys: consecutive messages to neighbouring keys");
            }
        }
    }
}
