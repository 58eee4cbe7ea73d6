//! Crash recovery: the server is killed with SIGKILL at random moments while
//! producers and consumers run; nothing answered is ever lost.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use fila_sdk::{LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;
use rand::Rng;

#[derive(Default)]
struct Ledger {
    /// Ids whose enqueue was answered.
    enqueued: Mutex<HashSet<String>>,
    /// Messages sent in enqueue calls that were never answered, over all rounds.
    enqueues_unanswered: AtomicU64,
    /// Ids whose ack was answered with success.
    acked: Mutex<HashSet<String>>,
    /// Ids whose ack was sent but not answered.
    acks_unanswered: Mutex<HashSet<String>>,
}

const MAX_BATCHES_PER_ROUND: u64 = 1000;

async fn produce(client: fila_sdk::Client, ledger: Arc<Ledger>, stop: Arc<AtomicBool>, producer: usize) {
    let mut n = 0u64;
    // Bounded so the drain below stays quick; the kill lands mid-load anyway.
    while !stop.load(Ordering::Relaxed) && n < MAX_BATCHES_PER_ROUND {
        let batch: Vec<_> = (0..20)
            .map(|i| NewMessage::new("crash", format!("p{producer}-{n}-{i}")).fairness_key(format!("k{}", i % 3)))
            .collect();
        n += 1;
        ledger.enqueues_unanswered.fetch_add(20, Ordering::SeqCst);
        match client.enqueue_batch(batch).await {
            Ok(results) => {
                let mut enqueued = ledger.enqueued.lock().unwrap();
                for r in results {
                    enqueued.insert(r.expect("valid message accepted"));
                }
                ledger.enqueues_unanswered.fetch_sub(20, Ordering::SeqCst);
            }
            Err(_) => return,
        }
    }
}

async fn consume(client: fila_sdk::Client, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let opts = LeaseOptions { max_in_flight: Some(50), visibility_timeout: Some(Duration::from_secs(2)) };
    let Ok(mut stream) = client.lease("crash", opts).await else { return };
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await else {
            continue;
        };
        ledger.acks_unanswered.lock().unwrap().insert(delivery.id.clone());
        match client.ack(&delivery.lease_token).await {
            Ok(()) => {
                ledger.acks_unanswered.lock().unwrap().remove(&delivery.id);
                ledger.acked.lock().unwrap().insert(delivery.id);
            }
            // Stale after a restart (lease lost) or the server is gone.
            Err(e) if e.code() == Some(fila_sdk::Code::FailedPrecondition) => {
                ledger.acks_unanswered.lock().unwrap().remove(&delivery.id);
            }
            Err(_) => return,
        }
    }
}

async fn depth(server: &TestServer) -> u64 {
    let queues = server.client().await.list_queues().await.unwrap();
    queues.into_iter().find(|q| q.name == "crash").unwrap().depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_enqueues_survive_repeated_sigkill() {
    let mut server = TestServer::start().await;
    server.client().await.create_queue("crash", QueueOptions::default()).await.unwrap();
    let ledger = Arc::new(Ledger::default());
    let mut rng = rand::rng();
    let mut maybe_acked = HashSet::new();

    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..2 {
            tasks.push(tokio::spawn(produce(server.client().await, ledger.clone(), stop.clone(), round * 10 + p)));
        }
        tasks.push(tokio::spawn(consume(server.client().await, ledger.clone(), stop.clone())));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        server.spawn().await;

        let enqueued = ledger.enqueued.lock().unwrap().clone();
        let acked = ledger.acked.lock().unwrap().clone();
        // Acks sent but not answered may or may not have landed.
        maybe_acked.extend(ledger.acks_unanswered.lock().unwrap().drain());
        // Unanswered enqueues may have landed; they stay in the queue across rounds.
        let unanswered = ledger.enqueues_unanswered.load(Ordering::SeqCst);
        let min = enqueued.iter().filter(|id| !acked.contains(*id) && !maybe_acked.contains(*id)).count() as u64;
        let max = enqueued.iter().filter(|id| !acked.contains(*id)).count() as u64 + unanswered;
        let actual = depth(&server).await;
        assert!(
            (min..=max).contains(&actual),
            "round {round}: depth {actual} outside [{min}, {max}] ({} enqueued, {} acked)",
            enqueued.len(),
            acked.len()
        );
    }
    assert!(ledger.enqueued.lock().unwrap().len() > 100, "the test produced real load");

    // Drain: every answered enqueue that was not acked must be delivered.
    let client = server.client().await;
    let mut stream =
        client.lease("crash", LeaseOptions { max_in_flight: Some(500), visibility_timeout: None }).await.unwrap();
    let mut drained = HashSet::new();
    loop {
        let mut tokens = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            let delivery = delivery.unwrap();
            tokens.push(delivery.lease_token);
            drained.insert(delivery.id);
            if tokens.len() == 500 {
                break;
            }
        }
        if tokens.is_empty() {
            let left = depth(&server).await;
            assert_eq!(left, 0, "drain stalled with depth {left}");
            break;
        }
        for result in client.ack_batch(tokens).await.unwrap() {
            result.unwrap();
        }
    }
    let enqueued = ledger.enqueued.lock().unwrap().clone();
    let acked = ledger.acked.lock().unwrap().clone();
    let missing: Vec<_> = enqueued
        .iter()
        .filter(|id| !acked.contains(*id) && !maybe_acked.contains(*id) && !drained.contains(*id))
        .collect();
    assert!(missing.is_empty(), "{} answered enqueues were lost, e.g. {:?}", missing.len(), missing.first());
    let resurrected: Vec<_> = drained.intersection(&acked).collect();
    assert!(resurrected.is_empty(), "{} messages came back after a successful ack", resurrected.len());
}
