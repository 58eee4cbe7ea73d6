//! End-to-end delivery throughput through the real server with fair
//! scheduling over 1, 1,000 and 100,000 fairness keys.
//!
//!     cargo bench --profile dev -p fila-server --bench fairness_e2e
//!
//! For each key count: enqueue N messages (default 200,000; set
//! FILA_BENCH_MESSAGES; key counts with FILA_BENCH_KEYS=1,1000; fsync with
//! FILA_BENCH_SYNC=1; telemetry off with FILA_BENCH_TELEMETRY=off) from 4 producers in batches of 1,000, then drain
//! them with 2 consumers (window 2,000, acks in batches of 500). Prints
//! messages per second for both phases. The server is the `fila-server`
//! binary of this build, on loopback, with a fresh data directory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fila_sdk::{Client, LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;

async fn produce(addr: String, queue: String, keys: usize, from: usize, to: usize) {
    let client = Client::connect(addr).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let mut i = from;
    while i < to {
        let end = (i + 1000).min(to);
        let batch = (i..end)
            .map(|n| NewMessage::new(queue.as_str(), payload.clone()).fairness_key(format!("tenant-{}", n % keys)))
            .collect();
        for result in client.enqueue_batch(batch).await.unwrap() {
            result.unwrap();
        }
        i = end;
    }
}

/// Leases and acks until `received` (shared by all consumers) reaches
/// `total`.
async fn consume(addr: String, queue: String, received: Arc<AtomicUsize>, total: usize) {
    let client = Client::connect(addr).await.unwrap();
    let options = LeaseOptions { max_in_flight: Some(2000), visibility_timeout: None };
    let mut stream = client.lease(&queue, options).await.unwrap();
    let mut tokens = Vec::with_capacity(500);
    while received.load(Ordering::Relaxed) < total {
        match tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
            Ok(delivery) => {
                tokens.push(delivery.unwrap().unwrap().lease_token);
                received.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => continue,
        }
        if tokens.len() == 500 {
            client.ack_batch(std::mem::take(&mut tokens)).await.unwrap();
        }
    }
    if !tokens.is_empty() {
        client.ack_batch(tokens).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    let messages: usize = std::env::var("FILA_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    // The `fila-server` binary of this build, on loopback, fresh data dir.
    // FILA_BENCH_SYNC=1 runs the broker with --sync-writes (fsync per group commit).
    // FILA_BENCH_TELEMETRY=off turns the metrics endpoint off, to measure
    // what telemetry costs.
    let mut args = Vec::new();
    if std::env::var("FILA_BENCH_SYNC").is_ok_and(|v| v == "1") {
        args.push("--sync-writes");
    }
    if std::env::var("FILA_BENCH_TELEMETRY").is_ok_and(|v| v == "off") {
        args.extend(["--metrics-listen", "off"]);
    }
    let server = fila_testkit::TestServer::start_with(&args).await;
    let admin = Client::connect(server.addr.clone()).await.unwrap();
    println!("| fairness keys | messages | enqueue msg/s | lease+ack msg/s |");
    println!("| ---: | ---: | ---: | ---: |");
    let key_counts: Vec<usize> = std::env::var("FILA_BENCH_KEYS")
        .ok()
        .map(|v| v.split(',').map(|k| k.trim().parse().expect("FILA_BENCH_KEYS: comma-separated numbers")).collect())
        .unwrap_or_else(|| vec![1, 1_000, 100_000]);
    for keys in key_counts {
        let queue = format!("bench-{keys}");
        admin.create_queue(&queue, QueueOptions::default()).await.unwrap();
        let started = Instant::now();
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let (from, to) = (messages * p / 4, messages * (p + 1) / 4);
                tokio::spawn(produce(server.addr.clone(), queue.clone(), keys, from, to))
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let enqueue_rate = messages as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        let received = Arc::new(AtomicUsize::new(0));
        let consumers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(consume(server.addr.clone(), queue.clone(), received.clone(), messages)))
            .collect();
        for c in consumers {
            c.await.unwrap();
        }
        let drain_rate = messages as f64 / started.elapsed().as_secs_f64();
        let left = admin.list_queues().await.unwrap().into_iter().find(|q| q.name == queue).unwrap().depth;
        assert_eq!(left, 0, "every message was acknowledged");
        println!("| {keys} | {messages} | {enqueue_rate:.0} | {drain_rate:.0} |");
        admin.delete_queue(&queue).await.unwrap();
    }
}
