//! End-to-end delivery throughput through the real server with fair
//! scheduling over 1, 1,000 and 100,000 fairness keys.
//!
//!     cargo bench --profile dev -p fila-server --bench fairness_e2e
//!
//! For each key count: enqueue N messages (default 200,000; set
//! FILA_BENCH_MESSAGES) from 4 producers in batches of 1,000, then drain
//! them with 2 consumers (window 2,000, acks in batches of 500). Prints
//! messages per second for both phases. The server is the `fila-server`
//! binary of this build, on loopback, with a fresh data directory.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fila_sdk::{Client, LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_fila-server"))
            .args(["--listen", &addr, "--data-dir", dir.path().to_str().unwrap(), "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if let Ok(client) = Client::connect(addr.clone()).await {
                if client.list_queues().await.is_ok() {
                    return Server { child, addr, _dir: dir };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fila-server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

async fn consume(addr: String, queue: String, count: usize) {
    let client = Client::connect(addr).await.unwrap();
    let options = LeaseOptions { max_in_flight: Some(2000), visibility_timeout: None };
    let mut stream = client.lease(&queue, options).await.unwrap();
    let mut tokens = Vec::with_capacity(500);
    let mut received = 0;
    while received < count {
        let delivery = stream.next().await.unwrap().unwrap();
        tokens.push(delivery.lease_token);
        received += 1;
        if tokens.len() == 500 || received == count {
            client.ack_batch(std::mem::take(&mut tokens)).await.unwrap();
        }
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    let messages: usize = std::env::var("FILA_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let server = Server::start().await;
    let admin = Client::connect(server.addr.clone()).await.unwrap();
    println!("| fairness keys | messages | enqueue msg/s | lease+ack msg/s |");
    println!("| ---: | ---: | ---: | ---: |");
    for keys in [1, 1_000, 100_000] {
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
        let consumers: Vec<_> = (0..2)
            .map(|c| {
                let share = messages / 2 + if c == 0 { messages % 2 } else { 0 };
                tokio::spawn(consume(server.addr.clone(), queue.clone(), share))
            })
            .collect();
        for c in consumers {
            c.await.unwrap();
        }
        let drain_rate = messages as f64 / started.elapsed().as_secs_f64();
        println!("| {keys} | {messages} | {enqueue_rate:.0} | {drain_rate:.0} |");
        admin.delete_queue(&queue).await.unwrap();
    }
}
