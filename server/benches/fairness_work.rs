//! The broker's own work per message in a steady lifecycle with 1, 1,000
//! and 100,000 active fairness keys: in process (no gRPC), over real
//! RocksDB in a temporary directory, with a standing backlog of 200,000
//! messages spread over the keys in a scattered order (as workload 4 of the
//! benchmark suite does).
//!
//!     cargo bench --profile dev -p fila-server --bench fairness_work
//!
//! Each round enqueues a batch of 500 messages and acknowledges 500
//! deliveries, one call at a time, so the broker does the same rounds
//! whatever else the machine is doing. It prints, per key count, the
//! lifecycle's throughput and the CPU time per message of the scheduler
//! thread and of the whole process (RocksDB's flushes and compactions
//! included). On a shared machine the CPU times vary far less than
//! throughput does; for counts that do not vary at all, run one key count
//! under callgrind and subtract a run without lifecycle rounds:
//!
//!     FILA_WORK_KEYS=1000 FILA_WORK_ROUNDS=400 valgrind --tool=callgrind <bench binary>
//!     FILA_WORK_KEYS=1000 FILA_WORK_ROUNDS=0 valgrind --tool=callgrind <bench binary>
//!
//! Set FILA_WORK_KEYS (comma-separated), FILA_WORK_BACKLOG and
//! FILA_WORK_ROUNDS to change the shape. With FILA_WORK_SCRIPT=lua, the
//! queue runs the realistic `on_enqueue` hook of `on_enqueue_realistic.lua`
//! (the benchmark suite's Lua workload) on messages with its 110-byte JSON
//! payload and four headers, the hook choosing the fairness key from a
//! header the keys are spread over; the figures then include the hook.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fila_server::broker::observer::NoObserver;
use fila_server::broker::{Broker, BrokerOptions, ConsumerEvent, Subscription};
use fila_server::domain::message::NewMessage;
use fila_server::domain::ScriptSources;
use fila_server::storage::RocksStore;

const QUEUE: &str = "work";
const BATCH: usize = 500;
const WINDOW: u32 = 1_000;

const ON_ENQUEUE: &str = include_str!("on_enqueue_realistic.lua");
const JSON_PAYLOAD: &[u8] =
    br#"{"order_id":"ord_8c1f2a","provider":"stripe","amount":4200,"currency":"EUR","items":[{"sku":"A1","qty":2}]}"#;

/// What the messages look like: plain (the fairness key set by the
/// producer), or for the realistic hook (which reads the key from a header).
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Plain,
    Scripted,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .map(|v| v.split(',').map(|n| n.trim().parse().expect("a number")).collect())
        .unwrap_or_else(|_| default.to_vec())
}

/// Keys in a scattered order: `key-{i * stride % count}`, with a stride
/// near count/φ that shares no factor with the count, so every key comes
/// once per `count` messages and neighbours in the order are far apart in
/// storage.
struct Keys {
    count: usize,
    stride: usize,
    next: usize,
}

impl Keys {
    fn new(count: usize) -> Self {
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let mut stride = ((count as f64 / 1.618_034) as usize).max(1);
        while count > 1 && gcd(stride, count) != 1 {
            stride += 1;
        }
        Keys { count, stride, next: 0 }
    }

    fn batch(&mut self, size: usize, shape: Shape) -> Vec<NewMessage> {
        (0..size)
            .map(|_| {
                let key = format!("key-{}", self.next * self.stride % self.count);
                self.next += 1;
                match shape {
                    Shape::Plain => NewMessage {
                        queue: QUEUE.into(),
                        payload: Bytes::from_static(&[b'x'; 64]),
                        fairness_key: key,
                        ..NewMessage::default()
                    },
                    Shape::Scripted => NewMessage {
                        queue: QUEUE.into(),
                        payload: Bytes::from_static(JSON_PAYLOAD),
                        headers: HashMap::from([
                            ("x-tenant".to_owned(), key),
                            ("x-priority".to_owned(), "high".to_owned()),
                            ("content-type".to_owned(), "application/json".to_owned()),
                            ("trace".to_owned(), "4bf92f35".to_owned()),
                        ]),
                        ..NewMessage::default()
                    },
                }
            })
            .collect()
    }
}

/// CPU time so far of this process and of its scheduler thread.
fn cpu_times() -> (Duration, Duration) {
    let ticks = |stat: &str| -> u64 {
        // Fields after the command name (which ends with ')'): utime and
        // stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let tick = Duration::from_secs(1) / 100;
    let process = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let mut scheduler = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "fila-scheduler") {
            scheduler += ticks(&std::fs::read_to_string(path.join("stat")).unwrap());
        }
    }
    (tick * process as u32, tick * scheduler as u32)
}

async fn deliveries(stream: &mut Subscription, want: usize, tokens: &mut Vec<String>) {
    while tokens.len() < want {
        match stream.recv().await.expect("the broker is running") {
            ConsumerEvent::Deliveries(batch) => tokens.extend(batch.into_iter().map(|d| d.token.to_string())),
            ConsumerEvent::Closed(error) => panic!("stream closed: {error}"),
        }
    }
}

async fn run(keys: usize, backlog: usize, rounds: usize, shape: Shape) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RocksStore::open(dir.path(), false).expect("open store");
    let (broker, _stopped) = Broker::start(store, BrokerOptions::default(), Box::new(NoObserver)).expect("start");
    let scripts = match shape {
        Shape::Plain => ScriptSources::default(),
        Shape::Scripted => ScriptSources { on_enqueue: Some(ON_ENQUEUE.to_owned()), on_failure: None },
    };
    broker.create_queue(QUEUE, 0, 0, 0, 0, scripts).await.expect("create queue");
    let mut order = Keys::new(keys);
    for _ in 0..backlog.max(keys * 2).div_ceil(1_000) {
        broker.enqueue(order.batch(1_000, shape)).await.expect("enqueue");
    }
    let mut stream = broker.subscribe(QUEUE, WINDOW, 0).await.expect("subscribe");
    let mut tokens = Vec::new();
    let (cpu_before, scheduler_before) = cpu_times();
    let started = Instant::now();
    for _ in 0..rounds {
        broker.enqueue(order.batch(BATCH, shape)).await.expect("enqueue");
        deliveries(&mut stream, BATCH, &mut tokens).await;
        let acked: Vec<String> = tokens.drain(..BATCH).collect();
        for result in broker.ack(acked).await.expect("ack") {
            result.expect("acked");
        }
    }
    let elapsed = started.elapsed();
    let (cpu_after, scheduler_after) = cpu_times();
    let messages = (rounds * BATCH) as f64;
    if rounds > 0 {
        let per_message = |d: Duration| d.as_secs_f64() * 1e6 / messages;
        println!(
            "{keys:>7} keys: {:>9.0} msg/s, CPU per message {:5.2} us (scheduler thread {:5.2} us)",
            messages / elapsed.as_secs_f64(),
            per_message(cpu_after - cpu_before),
            per_message(scheduler_after - scheduler_before),
        );
    }
    drop(stream);
    broker.shutdown().await.expect("shutdown");
}

fn main() {
    let keys = env_list("FILA_WORK_KEYS", &[1, 1_000, 100_000]);
    let backlog = env_list("FILA_WORK_BACKLOG", &[200_000])[0];
    let rounds = env_list("FILA_WORK_ROUNDS", &[1_000])[0];
    let shape = match std::env::var("FILA_WORK_SCRIPT").as_deref() {
        Err(_) => Shape::Plain,
        Ok("lua") => Shape::Scripted,
        Ok(other) => panic!("FILA_WORK_SCRIPT={other}: the only script is \"lua\""),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let hook = if shape == Shape::Scripted { ", with the realistic on_enqueue hook" } else { "" };
    println!("lifecycle after a backlog of {backlog} messages, {rounds} rounds of {BATCH}{hook}:");
    for k in keys {
        runtime.block_on(run(k, backlog, rounds, shape));
    }
}
