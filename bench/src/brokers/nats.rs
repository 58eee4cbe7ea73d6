//! NATS JetStream (Debian's `nats-server`) through async-nats: a file-backed
//! work-queue stream per measurement, a durable pull consumer with explicit
//! acks, publishes confirmed by the server's publish acks.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{take_ready, Consumer, Delivered, Producer, System, SystemInfo};
use crate::process::{first_line_of, free_port, wait_until_serving, Process};

const BINARY: &str = "nats-server";
const CONSUMER: &str = "bench";
/// JetStream's per-consumer limit of unacknowledged messages; each
/// subscriber is bounded by its own pull batch (the prefetch) well below it.
const MAX_ACK_PENDING: i64 = 100_000;

/// Turns any async-nats error (their types vary by call) into anyhow.
fn nats<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> anyhow::Error {
    move |e| anyhow!("{what}: {e}")
}

pub struct NatsSystem {
    _process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsSystem {
    /// Starts `nats-server -js` on a free loopback port with a temporary
    /// store directory.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fila-bench-nats-").tempdir()?;
        let port = free_port()?;
        let mut command = std::process::Command::new(BINARY);
        command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(dir.path().join("store"));
        let mut process = Process::spawn(BINARY, command, &dir.path().join("nats.log"))
            .context("is nats-server installed? (apt-get install nats-server)")?;
        let url = format!("nats://127.0.0.1:{port}");
        // The server sets up JetStream before it accepts clients.
        wait_until_serving(&mut process, Duration::from_secs(30), || async {
            let client = async_nats::connect(url.as_str()).await.map_err(nats("connect"))?;
            client.flush().await.map_err(nats("flush"))
        })
        .await?;
        Ok(NatsSystem { _process: process, url, _dir: dir })
    }

    pub fn info() -> Result<SystemInfo> {
        Ok(SystemInfo {
            id: "nats".into(),
            name: "NATS JetStream".into(),
            version: first_line_of(BINARY, &["--version"])?,
            settings: vec![
                "nats-server -js, file store in a temporary directory, otherwise defaults (JetStream writes each \
                 message to its file before the publish ack and leaves fsync to the OS, like Fila's default)"
                    .into(),
                "stream: file storage, work-queue retention (a message is removed once acked), 1 replica".into(),
                format!(
                    "consumer: one durable pull consumer shared by all subscribers, explicit acks, max_ack_pending \
                     {MAX_ACK_PENDING}, ack wait 30 s; each subscriber pulls in batches of the prefetch"
                ),
                "producers: JetStream publish, each message confirmed by its publish ack; a batch is pipelined \
                 (all published, then all acks awaited); one connection per producer and per subscriber"
                    .into(),
                "acks: one +ACK per message (JetStream has no multiple-message ack for explicit acks)".into(),
            ],
        })
    }

    async fn context(&self) -> Result<jetstream::Context> {
        let client = async_nats::connect(self.url.as_str()).await.map_err(nats("connect"))?;
        Ok(jetstream::new(client))
    }
}

impl System for NatsSystem {
    fn id(&self) -> &'static str {
        "nats"
    }

    fn fresh_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let js = self.context().await?;
            let config = stream::Config {
                name: queue.to_owned(),
                subjects: vec![queue.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            };
            let stream = js.create_stream(config).await.map_err(nats("create stream"))?;
            let consumer = pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            };
            stream.create_consumer(consumer).await.map_err(nats("create consumer"))?;
            Ok(())
        }
        .boxed()
    }

    fn producer<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        async move {
            Ok(Box::new(NatsProducer { js: self.context().await?, subject: queue.to_owned() }) as Box<dyn Producer>)
        }
        .boxed()
    }

    fn consumer<'a>(&'a self, queue: &'a str, prefetch: usize) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            let js = self.context().await?;
            let stream = js.get_stream(queue).await.map_err(nats("get stream"))?;
            let consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(CONSUMER).await.map_err(nats("get consumer"))?;
            let messages = consumer.stream().max_messages_per_batch(prefetch).messages().await.map_err(nats("pull"))?;
            Ok(Box::new(NatsConsumer { messages, ackers: Vec::new() }) as Box<dyn Consumer>)
        }
        .boxed()
    }

    fn remove_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.context().await?.delete_stream(queue).await.map_err(nats("delete stream"))?;
            Ok(())
        }
        .boxed()
    }
}

struct NatsProducer {
    js: jetstream::Context,
    subject: String,
}

impl Producer for NatsProducer {
    fn send<'a>(&'a mut self, payloads: &'a [Bytes]) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut acks = Vec::with_capacity(payloads.len());
            for payload in payloads {
                acks.push(self.js.publish(self.subject.clone(), payload.clone()).await.map_err(nats("publish"))?);
            }
            for ack in acks {
                ack.await.map_err(nats("publish ack"))?;
            }
            Ok(())
        }
        .boxed()
    }
}

struct NatsConsumer {
    messages: pull::Stream,
    ackers: Vec<jetstream::message::Acker>,
}

impl Consumer for NatsConsumer {
    fn receive<'a>(&'a mut self, max: usize, wait: Duration, out: &'a mut Vec<Delivered>) -> BoxFuture<'a, Result<()>> {
        async move {
            let ackers = &mut self.ackers;
            let mut messages = (&mut self.messages).map(|m| m.map_err(nats("pull")));
            take_ready(&mut messages, max, wait, |message| {
                let (message, acker) = message.split();
                ackers.push(acker);
                out.push(Delivered { payload: message.payload, key: String::new() });
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            for acker in self.ackers.drain(..) {
                acker.ack().await.map_err(nats("ack"))?;
            }
            Ok(())
        }
        .boxed()
    }
}
