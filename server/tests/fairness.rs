//! Weighted fair scheduling through the real binary over gRPC.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::TestServer;
use fila_sdk::{Client, Code, Delivery, LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;
use rand::seq::SliceRandom;

const WAIT: Duration = Duration::from_secs(10);

/// Receives `n` deliveries in order, acknowledging them in batches so the
/// window keeps moving.
async fn receive(client: &Client, stream: &mut fila_sdk::LeaseStream, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    let mut unacked = Vec::new();
    while out.len() < n {
        let delivery = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} deliveries", out.len()))
            .expect("stream open")
            .expect("delivery");
        unacked.push(delivery.lease_token.clone());
        out.push(delivery);
        if unacked.len() >= 100 || out.len() == n {
            for result in client.ack_batch(std::mem::take(&mut unacked)).await.unwrap() {
                result.unwrap();
            }
        }
    }
    out
}

async fn enqueue_all(client: &Client, mut messages: Vec<NewMessage>) {
    while !messages.is_empty() {
        let rest = messages.split_off(messages.len().min(1000));
        for result in client.enqueue_batch(std::mem::replace(&mut messages, rest)).await.unwrap() {
            result.unwrap();
        }
    }
}

/// Asserts that in every window of `window` deliveries each key gets its
/// weighted share within `window_tolerance`, and within `total_tolerance`
/// over the whole sequence.
fn assert_shares(keys: &[String], weights: &HashMap<String, u32>, window: usize, window_tol: f64, total_tol: f64) {
    let total_weight: u32 = weights.values().sum();
    let expected = |key: &str, len: usize| f64::from(weights[key]) / f64::from(total_weight) * len as f64;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        *counts.entry(key).or_default() += 1;
        if i >= window {
            *counts.get_mut(keys[i - window].as_str()).unwrap() -= 1;
        }
        if i + 1 >= window {
            for key in weights.keys() {
                let want = expected(key, window);
                let got = counts.get(key.as_str()).copied().unwrap_or(0) as f64;
                assert!(
                    (got - want).abs() <= want * window_tol,
                    "window ending at {i}: key {key} got {got}, expected {want:.1}"
                );
            }
        }
    }
    for key in weights.keys() {
        let want = expected(key, keys.len());
        let got = keys.iter().filter(|k| *k == key).count() as f64;
        assert!((got - want).abs() <= want * total_tol, "whole run: key {key} got {got}, expected {want:.1}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_one_to_five_get_their_share_in_every_window_of_1500() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("fair", QueueOptions::default()).await.unwrap();
    let weights: HashMap<String, u32> = (1..=5).map(|w| (format!("tenant-{w}"), w)).collect();
    // Every key stays backlogged for the 4,500 deliveries measured; arrival
    // order is shuffled across keys.
    let mut arrivals: Vec<(&String, u32)> =
        weights.iter().flat_map(|(key, &w)| std::iter::repeat_n((key, w), 700 * w as usize)).collect();
    arrivals.shuffle(&mut rand::rng());
    // Payloads number each key's messages in arrival order.
    let mut numbered: HashMap<&String, u64> = HashMap::new();
    let messages = arrivals
        .into_iter()
        .map(|(key, w)| {
            let n = numbered.entry(key).or_default();
            *n += 1;
            NewMessage::new("fair", n.to_string()).fairness_key(key).weight(w)
        })
        .collect();
    enqueue_all(&client, messages).await;

    let mut stream =
        client.lease("fair", LeaseOptions { max_in_flight: Some(500), visibility_timeout: None }).await.unwrap();
    let deliveries = receive(&client, &mut stream, 4500).await;
    let keys: Vec<String> = deliveries.iter().map(|d| d.fairness_key.clone()).collect();
    assert_shares(&keys, &weights, 1500, 0.02, 0.005);

    // FIFO within a key.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for d in &deliveries {
        let n: u64 = String::from_utf8_lossy(&d.payload).parse().unwrap();
        let previous = last.insert(&d.fairness_key, n).unwrap_or(0);
        assert_eq!(n, previous + 1, "key {} delivered out of order", d.fairness_key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_weight_override_changes_the_share_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let messages: Vec<NewMessage> =
        (0..3000).map(|i| NewMessage::new("q", "x").fairness_key(if i % 2 == 0 { "a" } else { "b" })).collect();
    enqueue_all(&client, messages).await;
    client.set_fairness_weight("q", "b", Some(3)).await.unwrap();
    server.restart().await;
    let client = server.client().await;

    let stats = client.queue_stats("q", None).await.unwrap();
    let b = stats.keys.iter().find(|k| k.fairness_key == "b").unwrap();
    assert_eq!((b.weight, b.weight_overridden), (3, true));
    let mut stream =
        client.lease("q", LeaseOptions { max_in_flight: Some(100), visibility_timeout: None }).await.unwrap();
    let keys: Vec<String> = receive(&client, &mut stream, 800).await.into_iter().map(|d| d.fairness_key).collect();
    let weights: HashMap<String, u32> = [("a".to_string(), 1), ("b".to_string(), 3)].into();
    assert_shares(&keys, &weights, 400, 0.02, 0.005);

    // The recent delivery rate reflects the 1:3 split.
    let stats = client.queue_stats("q", None).await.unwrap();
    let rate = |key: &str| stats.keys.iter().find(|k| k.fairness_key == key).unwrap().delivery_rate;
    assert!(rate("a") > 0.0 && (2.5..3.5).contains(&(rate("b") / rate("a"))), "{} vs {}", rate("a"), rate("b"));

    // Removing the override restores message weights (none were sent: 1).
    client.set_fairness_weight("q", "b", None).await.unwrap();
    let stats = client.queue_stats("q", None).await.unwrap();
    let b = stats.keys.iter().find(|k| k.fairness_key == "b").unwrap();
    assert_eq!((b.weight, b.weight_overridden), (1, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_weighted_message_sets_the_key_weight() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(NewMessage::new("q", "1").fairness_key("k").weight(4)).await.unwrap();
    client.enqueue(NewMessage::new("q", "2").fairness_key("k")).await.unwrap();
    let weight = |stats: fila_sdk::QueueStats| stats.keys[0].weight;
    assert_eq!(weight(client.queue_stats("q", None).await.unwrap()), 4, "an unweighted message keeps the weight");
    client.enqueue(NewMessage::new("q", "3").fairness_key("k").weight(2)).await.unwrap();
    assert_eq!(weight(client.queue_stats("q", None).await.unwrap()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_quantum_serves_keys_in_longer_runs() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions { quantum: Some(10), ..Default::default() }).await.unwrap();
    let info = client.list_queues().await.unwrap().remove(0);
    assert_eq!(info.quantum, 10);
    let messages: Vec<NewMessage> =
        (0..100).map(|i| NewMessage::new("q", "x").fairness_key(if i < 50 { "a" } else { "b" })).collect();
    enqueue_all(&client, messages).await;
    let mut stream =
        client.lease("q", LeaseOptions { max_in_flight: Some(100), visibility_timeout: None }).await.unwrap();
    let keys: Vec<String> = receive(&client, &mut stream, 40).await.into_iter().map(|d| d.fairness_key).collect();
    let runs: Vec<&[String]> = keys.chunk_by(|a, b| a == b).collect();
    assert_eq!(runs.len(), 4, "runs of 10: {keys:?}");
    assert!(runs.iter().all(|r| r.len() == 10));

    let err =
        client.create_queue("bad", QueueOptions { quantum: Some(20_000), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_active_keys_are_each_served() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("many", QueueOptions::default()).await.unwrap();
    const KEYS: usize = 100_000;
    let messages = (0..KEYS).map(|i| NewMessage::new("many", "x").fairness_key(format!("tenant-{i}"))).collect();
    enqueue_all(&client, messages).await;
    let stats = client.queue_stats("many", Some(5)).await.unwrap();
    assert_eq!((stats.active_keys, stats.keys.len(), stats.queue.depth), (KEYS as u64, 5, KEYS as u64));

    let mut stream =
        client.lease("many", LeaseOptions { max_in_flight: Some(2000), visibility_timeout: None }).await.unwrap();
    let keys: HashSet<String> = receive(&client, &mut stream, KEYS).await.into_iter().map(|d| d.fairness_key).collect();
    assert_eq!(keys.len(), KEYS, "every key delivered exactly once");
    let stats = client.queue_stats("many", None).await.unwrap();
    assert_eq!((stats.active_keys, stats.tracked_keys), (0, 0), "idle keys are forgotten");
}

/// With no memory for buffers every message is read from storage on its
/// own, and kept there as it is stored: slower, but nothing is lost,
/// reordered or served unfairly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_buffer_memory_keys_are_served_in_turn_and_in_order() {
    let server = TestServer::start_with(&["--message-buffer-bytes", "0"]).await;
    let client = server.client().await;
    client.create_queue("tight", QueueOptions::default()).await.unwrap();
    const KEYS: usize = 3;
    const PER_KEY: usize = 200;
    let messages = (0..KEYS * PER_KEY)
        .map(|i| NewMessage::new("tight", format!("{}", i / KEYS)).fairness_key(format!("k{}", i % KEYS)));
    enqueue_all(&client, messages.collect()).await;
    let mut stream =
        client.lease("tight", LeaseOptions { max_in_flight: Some(100), visibility_timeout: None }).await.unwrap();
    let deliveries = receive(&client, &mut stream, KEYS * PER_KEY).await;
    let mut next: HashMap<String, usize> = HashMap::new();
    for (i, d) in deliveries.iter().enumerate() {
        let n: usize = std::str::from_utf8(&d.payload).unwrap().parse().unwrap();
        let expected = next.entry(d.fairness_key.clone()).or_default();
        assert_eq!(n, *expected, "key {} out of order at delivery {i}", d.fairness_key);
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == PER_KEY), "every message delivered once: {next:?}");
    let first: HashSet<&str> = deliveries[..KEYS].iter().map(|d| d.fairness_key.as_str()).collect();
    assert_eq!(first.len(), KEYS, "keys take turns");
    assert_eq!(client.queue_stats("tight", None).await.unwrap().queue.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_and_stats_requests_are_checked() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = client.set_fairness_weight("nope", "k", Some(2)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let err = client.set_fairness_weight("q", "k", Some(2_000_000)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err = client.set_fairness_weight("q", "", Some(2)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err = client.queue_stats("nope", None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("queue 'nope' does not exist"), "{err}");
}
