//! RabbitMQ (Debian's `rabbitmq-server`) through lapin: a quorum queue per
//! measurement, persistent messages, publisher confirms, manual acks with a
//! prefetch limit.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{take_ready, Consumer, Delivered, Producer, System, SystemInfo};
use crate::process::{first_line_of, free_port, wait_until_serving, Process};

/// The start script itself: it runs the Erlang VM as its child and stops it
/// properly on SIGTERM. (`/usr/sbin/rabbitmq-server` would switch to the
/// `rabbitmq` user and use the system's directories.)
const START_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// A connection attempt that takes longer is abandoned.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// AMQP delivery mode 2: persistent (written to disk before it is confirmed).
const PERSISTENT: u8 = 2;

pub struct RabbitMqSystem {
    process: Option<Process>,
    uri: String,
    epmd_port: u16,
    _dir: tempfile::TempDir,
}

impl RabbitMqSystem {
    /// Starts a RabbitMQ node of its own (own node name, ports, Erlang port
    /// mapper, data and log directories, no plugins), so that an installed
    /// system service cannot interfere.
    pub async fn start() -> Result<Self> {
        anyhow::ensure!(
            Path::new(START_SCRIPT).exists(),
            "{START_SCRIPT} is missing: is rabbitmq-server installed? (apt-get install rabbitmq-server)"
        );
        let dir = tempfile::Builder::new().prefix("fila-bench-rabbitmq-").tempdir()?;
        let (port, dist_port, epmd_port) = (free_port()?, free_port()?, free_port()?);
        let d = dir.path();
        std::fs::write(d.join("enabled_plugins"), "[].\n")?;
        std::fs::write(d.join("rabbitmq.conf"), format!("listeners.tcp.default = 127.0.0.1:{port}\n"))?;
        let mut command = std::process::Command::new(START_SCRIPT);
        command
            .current_dir(d)
            .env("HOME", d) // the Erlang cookie goes here
            .env("RABBITMQ_CONF_ENV_FILE", d.join("none")) // ignore /etc/rabbitmq/rabbitmq-env.conf
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_NODENAME", format!("fila-bench-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"));
        let process = Process::spawn("rabbitmq-server", command, &d.join("rabbitmq.log"))?.stop_gracefully();
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        // Owned by `system` from here on, so that a failed or interrupted
        // start also stops the node and its port mapper.
        let mut system = RabbitMqSystem { process: Some(process), uri: uri.clone(), epmd_port, _dir: dir };
        let process = system.process.as_mut().expect("just set");
        wait_until_serving(process, Duration::from_secs(60), || connect(&uri)).await?;
        Ok(system)
    }

    pub fn info() -> Result<SystemInfo> {
        let version = |package| first_line_of("dpkg-query", &["-W", "-f", "${Version}", package]);
        Ok(SystemInfo {
            id: "rabbitmq".into(),
            name: "RabbitMQ".into(),
            version: format!("{} (Erlang/OTP {})", version("rabbitmq-server")?, version("erlang-base")?),
            settings: vec![
                "rabbitmq-server defaults (no plugins), own node on loopback with temporary data".into(),
                "queue: quorum queue (x-queue-type quorum), RabbitMQ's recommended durable type; on one node it \
                 has no replicas. In a trial on this machine it was also faster than a durable classic queue \
                 (batched lifecycle 24,400 vs 20,500 msg/s)"
                    .into(),
                "messages: persistent (delivery mode 2); a quorum queue confirms once the message is in its \
                 write-ahead log and fsynced (batched), which is what Fila does only with --sync-writes"
                    .into(),
                "producers: publisher confirms; a batch is pipelined (all published, then all confirms awaited); \
                 one connection and channel per producer"
                    .into(),
                "consumers: basic.consume with manual acks and basic.qos prefetch = the prefetch; acks of \
                 everything received in one basic.ack with multiple=true"
                    .into(),
            ],
        })
    }

    async fn channel(&self) -> Result<Channel> {
        connect(&self.uri).await?.create_channel().await.context("opening an AMQP channel")
    }
}

impl Drop for RabbitMqSystem {
    fn drop(&mut self) {
        drop(self.process.take());
        // The node started a port mapper daemon of its own; stop it too.
        let _ = std::process::Command::new("epmd").args(["-port", &self.epmd_port.to_string(), "-kill"]).output();
    }
}

async fn connect(uri: &str) -> Result<Connection> {
    let connecting = Connection::connect(uri, ConnectionProperties::default());
    tokio::time::timeout(CONNECT_LIMIT, connecting)
        .await
        .context("connecting to RabbitMQ: no answer")?
        .context("connecting to RabbitMQ")
}

impl System for RabbitMqSystem {
    fn id(&self) -> &'static str {
        "rabbitmq"
    }

    fn fresh_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            let mut arguments = FieldTable::default();
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            self.channel().await?.queue_declare(queue.into(), options, arguments).await?;
            Ok(())
        }
        .boxed()
    }

    fn producer<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        async move {
            let channel = self.channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(Box::new(RabbitMqProducer { channel, queue: queue.to_owned() }) as Box<dyn Producer>)
        }
        .boxed()
    }

    fn consumer<'a>(&'a self, queue: &'a str, prefetch: usize) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            let channel = self.channel().await?;
            let prefetch = u16::try_from(prefetch).context("RabbitMQ's prefetch is at most 65,535")?;
            channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let deliveries = channel
                .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await?;
            Ok(Box::new(RabbitMqConsumer { channel, deliveries, last_tag: None }) as Box<dyn Consumer>)
        }
        .boxed()
    }

    fn remove_queue<'a>(&'a mut self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.channel().await?.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
            Ok(())
        }
        .boxed()
    }
}

struct RabbitMqProducer {
    channel: Channel,
    queue: String,
}

impl Producer for RabbitMqProducer {
    fn send<'a>(&'a mut self, payloads: &'a [Bytes]) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut confirms = Vec::with_capacity(payloads.len());
            for payload in payloads {
                let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
                let confirm = self
                    .channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        payload,
                        properties,
                    )
                    .await
                    .context("basic.publish")?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                anyhow::ensure!(confirm.await.context("publisher confirm")?.is_ack(), "RabbitMQ nacked a publish");
            }
            Ok(())
        }
        .boxed()
    }
}

struct RabbitMqConsumer {
    channel: Channel,
    deliveries: lapin::Consumer,
    /// The newest delivery not yet acknowledged.
    last_tag: Option<u64>,
}

impl Consumer for RabbitMqConsumer {
    fn receive<'a>(&'a mut self, max: usize, wait: Duration, out: &'a mut Vec<Delivered>) -> BoxFuture<'a, Result<()>> {
        async move {
            let last_tag = &mut self.last_tag;
            let mut deliveries = (&mut self.deliveries).map(|d| d.context("AMQP delivery"));
            take_ready(&mut deliveries, max, wait, |delivery| {
                *last_tag = Some(delivery.delivery_tag);
                out.push(Delivered { payload: Bytes::from(delivery.data), key: String::new() });
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            if let Some(tag) = self.last_tag.take() {
                // `multiple`: this and every earlier delivery of the channel.
                let options = BasicAckOptions { multiple: true };
                self.channel.basic_ack(tag, options).await.context("basic.ack")?;
            }
            Ok(())
        }
        .boxed()
    }
}
