//! Failure policy, delays, dead-letter queues and redrive through the real
//! binary over gRPC.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_delivery, next_delivery, wait_until, TestServer};
use fila_sdk::{Client, Code, LeaseOptions, NewMessage, QueueOptions};

const WAIT: Duration = Duration::from_secs(5);

fn window(n: u32) -> LeaseOptions {
    LeaseOptions { max_in_flight: Some(n), visibility_timeout: None }
}

async fn info(client: &Client, name: &str) -> fila_sdk::QueueInfo {
    client.list_queues().await.unwrap().into_iter().find(|q| q.name == name).expect("queue listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_enqueue_is_not_delivered_early_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let sent = Instant::now();
    client.enqueue(NewMessage::new("q", "later").delay(Duration::from_millis(1500))).await.unwrap();
    client.enqueue(NewMessage::new("q", "now")).await.unwrap();
    let q = info(&client, "q").await;
    assert_eq!((q.depth, q.delayed), (2, 1));

    server.restart().await;
    let client = server.client().await;
    let mut stream = client.lease("q", window(10)).await.unwrap();
    assert_eq!(&next_delivery(&mut stream, WAIT).await.payload[..], b"now");
    let later = next_delivery(&mut stream, WAIT).await;
    assert_eq!(&later.payload[..], b"later");
    assert!(sent.elapsed() >= Duration::from_millis(1500), "delivered after {:?}", sent.elapsed());
    assert_eq!(info(&client, "q").await.delayed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_back_off_then_go_to_the_dead_letter_queue_with_their_history() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("jobs", QueueOptions { max_attempts: Some(3), ..Default::default() }).await.unwrap();
    assert_eq!(info(&client, "jobs").await.max_attempts, 3);
    client.enqueue(NewMessage::new("jobs", "poison").header("k", "v").fairness_key("tenant")).await.unwrap();

    let mut stream = client.lease("jobs", window(10)).await.unwrap();
    let mut nacked_at = None;
    for attempt in 1..=3 {
        let d = next_delivery(&mut stream, WAIT).await;
        assert_eq!(d.attempt, attempt);
        if let Some(at) = nacked_at {
            let waited: Duration = Instant::now() - at;
            let backoff = Duration::from_millis(100 << (attempt - 2));
            // The broker starts the backoff just before answering the nack.
            let slack = Duration::from_millis(5);
            assert!(
                waited + slack >= backoff,
                "attempt {attempt} came after {waited:?}, before its backoff {backoff:?}"
            );
        }
        client.nack(&d.lease_token, &format!("failure {attempt}")).await.unwrap();
        nacked_at = Some(Instant::now());
    }
    assert_no_delivery(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(info(&client, "jobs").await.depth, 0);
    assert_eq!(client.queue_stats("jobs", None).await.unwrap().dead_lettered, 1);

    let mut dead = client.lease("jobs.dlq", window(10)).await.unwrap();
    let d = next_delivery(&mut dead, WAIT).await;
    assert_eq!(&d.payload[..], b"poison");
    assert_eq!(d.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(d.fairness_key, "tenant");
    assert_eq!(d.attempt, 4, "three failed attempts are kept");
    assert_eq!(d.last_error, "failure 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_with_attempts_reset() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_queue(
            "jobs",
            QueueOptions {
                max_attempts: Some(1),
                visibility_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let batch = (0..5).map(|i| NewMessage::new("jobs", format!("m{i}")).throttle_key("provider:x")).collect();
    client.enqueue_batch(batch).await.unwrap();
    // Leases expire unacknowledged: one failed attempt each, so all five go
    // to the dead-letter queue.
    let mut stream = client.lease("jobs", window(10)).await.unwrap();
    for _ in 0..5 {
        next_delivery(&mut stream, WAIT).await;
    }
    drop(stream);
    wait_until(WAIT, "the messages reach the dead-letter queue", || async {
        info(&client, "jobs.dlq").await.depth >= 5
    })
    .await;
    assert_eq!(info(&client, "jobs").await.depth, 0);

    assert_eq!(client.redrive("jobs", Some(2)).await.unwrap(), 2);
    server.restart().await;
    let client = server.client().await;
    assert_eq!((info(&client, "jobs").await.depth, info(&client, "jobs.dlq").await.depth), (2, 3));
    assert_eq!(client.redrive("jobs", None).await.unwrap(), 3);
    assert_eq!(client.redrive("jobs", None).await.unwrap(), 0);

    let mut stream = client.lease("jobs", window(10)).await.unwrap();
    let mut payloads = Vec::new();
    for _ in 0..5 {
        let d = next_delivery(&mut stream, WAIT).await;
        assert_eq!(d.attempt, 1, "attempts are reset");
        assert_eq!(d.throttle_keys, ["provider:x"], "the original lane is restored");
        payloads.push(String::from_utf8(d.payload.to_vec()).unwrap());
        client.ack(&d.lease_token).await.unwrap();
    }
    payloads.sort();
    assert_eq!(payloads, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(info(&client, "jobs.dlq").await.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_queues_come_and_go_with_their_queue() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("orders", QueueOptions::default()).await.unwrap();
    assert!(client.list_queues().await.unwrap().iter().any(|q| q.name == "orders.dlq"));
    client.delete_queue("orders").await.unwrap();
    assert!(client.list_queues().await.unwrap().is_empty());
    let err = client.redrive("orders", None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let err = client.enqueue(NewMessage::new("q", "x").delay(Duration::from_secs(31 * 24 * 3600))).await.unwrap_err();
    assert!(matches!(err.code(), Some(Code::InvalidArgument | Code::NotFound)), "{err}");
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let err = client.enqueue(NewMessage::new("q", "x").delay(Duration::from_secs(31 * 24 * 3600))).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err =
        client.create_queue("m", QueueOptions { max_attempts: Some(5000), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_redrive_neither_loses_nor_duplicates_a_message() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("jobs", QueueOptions::default()).await.unwrap();
    const N: usize = 30_000;
    // Dead letters are enqueued straight into the dead-letter queue.
    for chunk in 0..N / 1000 {
        let batch = (0..1000).map(|i| NewMessage::new("jobs.dlq", format!("{}", chunk * 1000 + i))).collect();
        for result in client.enqueue_batch(batch).await.unwrap() {
            result.unwrap();
        }
    }
    let redrive = {
        let client = server.client().await;
        tokio::spawn(async move { client.redrive("jobs", None).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.kill();
    let _ = redrive.await.unwrap();
    server.spawn().await;
    let client = server.client().await;
    let (moved, left) = (info(&client, "jobs").await.depth, info(&client, "jobs.dlq").await.depth);
    assert_eq!(moved + left, N as u64, "moved {moved}, left {left}");

    // Every message is in exactly one of the two queues.
    let mut seen = std::collections::HashSet::new();
    for queue in ["jobs", "jobs.dlq"] {
        let mut stream = client.lease(queue, window(2000)).await.unwrap();
        let expected = info(&client, queue).await.depth;
        let mut tokens = Vec::new();
        for _ in 0..expected {
            let d = next_delivery(&mut stream, WAIT).await;
            assert!(seen.insert(d.payload.clone()), "duplicate {:?}", d.payload);
            tokens.push(d.lease_token);
            if tokens.len() == 500 {
                client.ack_batch(std::mem::take(&mut tokens)).await.unwrap();
            }
        }
        if !tokens.is_empty() {
            client.ack_batch(tokens).await.unwrap();
        }
    }
    assert_eq!(seen.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_ready_and_delayed_messages_but_not_leased_ones() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch = (0..20).map(|i| NewMessage::new("q", format!("{i}")).fairness_key(format!("k{}", i % 3))).collect();
    client.enqueue_batch(batch).await.unwrap();
    client.enqueue(NewMessage::new("q", "later").delay(Duration::from_secs(60))).await.unwrap();
    let mut stream = client.lease("q", window(1)).await.unwrap();
    let leased = next_delivery(&mut stream, WAIT).await;

    assert_eq!(client.purge("q").await.unwrap(), 20, "19 ready and 1 delayed");
    let q = info(&client, "q").await;
    assert_eq!((q.depth, q.in_flight, q.delayed), (1, 1, 0));
    client.ack(&leased.lease_token).await.unwrap();
    assert_no_delivery(&mut stream, Duration::from_millis(200)).await;
    server.restart().await;
    let client = server.client().await;
    assert_eq!(info(&client, "q").await.depth, 0, "the purge is durable");
    let err = client.purge("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
}
