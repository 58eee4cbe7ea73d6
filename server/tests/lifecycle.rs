//! The message lifecycle through the real binary over gRPC.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::{assert_no_delivery, deliveries_until_idle, next_delivery, stalled_reader, TestServer};
use fila_sdk::{Code, LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(5);

fn lease_opts(max_in_flight: u32) -> LeaseOptions {
    LeaseOptions { max_in_flight: Some(max_in_flight), visibility_timeout: None }
}

fn visibility(ms: u64) -> QueueOptions {
    QueueOptions { visibility_timeout: Some(Duration::from_millis(ms)), ..Default::default() }
}

async fn depth(client: &fila_sdk::Client, queue: &str) -> (u64, u64) {
    let q = client.list_queues().await.unwrap().into_iter().find(|q| q.name == queue).expect("queue listed");
    (q.depth, q.in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_lease_ack_carries_the_whole_envelope() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("orders", QueueOptions::default()).await.unwrap();
    let before = SystemTime::now();
    let id = client
        .enqueue(
            NewMessage::new("orders", "hello")
                .header("trace", "abc")
                .fairness_key("tenant-a")
                .weight(3)
                .throttle_key("provider:stripe")
                .throttle_key("tenant:a"),
        )
        .await
        .unwrap();
    assert_eq!(depth(&client, "orders").await, (1, 0));

    let mut stream = client.lease("orders", lease_opts(10)).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    assert_eq!(d.id, id);
    assert_eq!(d.queue, "orders");
    assert_eq!(&d.payload[..], b"hello");
    assert_eq!(d.headers.get("trace").map(String::as_str), Some("abc"));
    assert_eq!(d.fairness_key, "tenant-a");
    assert_eq!(d.weight, 3);
    assert_eq!(d.throttle_keys, vec!["provider:stripe", "tenant:a"]);
    assert_eq!(d.attempt, 1);
    assert!(d.enqueued_at >= before - Duration::from_secs(1) && d.enqueued_at <= d.leased_at + Duration::from_secs(1));
    let lease = d.lease_deadline.duration_since(d.leased_at).unwrap();
    assert!(lease >= Duration::from_secs(29) && lease <= Duration::from_secs(31), "default visibility 30 s: {lease:?}");
    assert_eq!(depth(&client, "orders").await, (1, 1));

    client.ack(&d.lease_token).await.unwrap();
    client.ack(&d.lease_token).await.expect("a repeated ack of the same token succeeds");
    assert_eq!(depth(&client, "orders").await, (0, 0));
    assert_no_delivery(&mut stream, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_defaults_apply_when_metadata_is_unset() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut stream = client.lease("q", lease_opts(1)).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    assert_eq!((d.fairness_key.as_str(), d.weight, d.throttle_keys.len()), ("default", 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_per_item_and_rejected_items_write_nothing() {
    let server = TestServer::start_with(&["--max-payload-bytes", "16"]).await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let results = client
        .enqueue_batch(vec![
            NewMessage::new("q", "one"),
            NewMessage::new("missing", "x"),
            NewMessage::new("q", ""),
            NewMessage::new("q", vec![b'x'; 17]),
            NewMessage::new("bad name", "x"),
            NewMessage::new("q", "x").weight(2_000_000),
            NewMessage::new("q", "two"),
        ])
        .await
        .unwrap();
    let codes: Vec<Option<Code>> = results.iter().map(|r| r.as_ref().err().map(|e| e.code)).collect();
    assert_eq!(
        codes,
        vec![
            None,
            Some(Code::NotFound),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            None
        ]
    );
    let not_found = results[1].as_ref().unwrap_err();
    assert_eq!(not_found.message, "queue 'missing' does not exist");
    assert!(results[3].as_ref().unwrap_err().message.contains("17 bytes; the maximum is 16"));
    assert_eq!(depth(&client, "q").await, (2, 0), "only the two good messages were stored");

    let mut stream = client.lease("q", lease_opts(10)).await.unwrap();
    let got: Vec<_> = vec![next_delivery(&mut stream, WAIT).await, next_delivery(&mut stream, WAIT).await];
    assert_eq!(got.iter().map(|d| &d.payload[..]).collect::<Vec<_>>(), vec![&b"one"[..], &b"two"[..]]);
    assert_eq!(Some(&got[0].id), results[0].as_ref().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_empty_batches_are_refused_whole() {
    let server = TestServer::start_with(&["--max-batch", "3"]).await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let four = (0..4).map(|i| NewMessage::new("q", format!("m{i}"))).collect();
    let err = client.enqueue_batch(four).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("batch has 4 items; the maximum is 3"), "{err}");
    let err = client.enqueue_batch(vec![]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    let err = client.ack_batch(vec!["a".into(); 4]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(depth(&client, "q").await, (0, 0));
    // The broker keeps serving.
    client.enqueue(("q", "fine")).await.unwrap();
    assert_eq!(depth(&client, "q").await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_administration_errors_are_clear() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let cases = [
        (
            client.create_queue("q", QueueOptions::default()).await.unwrap_err(),
            Code::AlreadyExists,
            "queue 'q' already exists",
        ),
        (
            client.create_queue("", QueueOptions::default()).await.unwrap_err(),
            Code::InvalidArgument,
            "must not be empty",
        ),
        (client.create_queue("a/b", QueueOptions::default()).await.unwrap_err(), Code::InvalidArgument, "is invalid"),
        (client.create_queue("q.dlq", QueueOptions::default()).await.unwrap_err(), Code::InvalidArgument, "reserved"),
        (client.create_queue("v", visibility(43_200_001)).await.unwrap_err(), Code::InvalidArgument, "out of range"),
        (client.delete_queue("nope").await.unwrap_err(), Code::NotFound, "queue 'nope' does not exist"),
    ];
    for (err, code, text) in cases {
        assert_eq!(err.code(), Some(code), "{err}");
        assert!(err.to_string().contains(text), "{err} should mention {text}");
    }
    let err = client.lease("nope", lease_opts(1)).await.err().expect("unknown queue");
    assert_eq!(err.code(), Some(Code::NotFound));
    let err = client.lease("q", lease_opts(10_001)).await.err().expect("window too large");
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    let names: Vec<String> = client.list_queues().await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["q", "q.dlq"], "failed calls created nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_pages_in_name_order() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let names: Vec<String> = (0..125).map(|i| format!("q{i:03}")).collect();
    for name in names.iter().rev() {
        client.create_queue(name, QueueOptions::default()).await.unwrap();
    }
    // Each queue comes with its dead-letter queue: 250 queues, three pages.
    let expected: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("{n}.dlq")]).collect();
    let listed: Vec<String> = client.list_queues().await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(listed, expected, "three pages, in order, nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_bounds_unacknowledged_deliveries() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch = (0..10).map(|i| NewMessage::new("q", format!("m{i}"))).collect();
    client.enqueue_batch(batch).await.unwrap();
    let mut stream = client.lease("q", lease_opts(3)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_delivery(&mut stream, WAIT).await);
    }
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    client.ack(&held[0].lease_token).await.unwrap();
    held.push(next_delivery(&mut stream, WAIT).await);
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    client.nack(&held[1].lease_token, "boom").await.unwrap();
    next_delivery(&mut stream, WAIT).await;
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    assert_eq!(depth(&client, "q").await, (9, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_a_queue_and_each_message_goes_to_one_of_them() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        let mut stream = client.lease("q", lease_opts(5)).await.unwrap();
        consumers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await {
                let delivery = delivery.unwrap();
                seen.push(delivery.id.clone());
                client.ack(&delivery.lease_token).await.unwrap();
            }
            seen
        }));
    }
    let mut sent = HashSet::new();
    for chunk in 0..10 {
        let batch =
            (0..30).map(|i| NewMessage::new("q", format!("{chunk}-{i}")).fairness_key(format!("k{}", i % 4))).collect();
        for r in client.enqueue_batch(batch).await.unwrap() {
            sent.insert(r.unwrap());
        }
    }
    let mut received = Vec::new();
    for consumer in consumers {
        let seen = consumer.await.unwrap();
        assert!(!seen.is_empty(), "every consumer got work");
        received.extend(seen);
    }
    let unique: HashSet<_> = received.iter().cloned().collect();
    assert_eq!(unique.len(), received.len(), "no message delivered twice");
    assert_eq!(unique, sent);
    assert_eq!(depth(&client, "q").await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_redelivered_and_its_token_goes_stale() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", visibility(300)).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut stream = client.lease("q", lease_opts(10)).await.unwrap();
    let first = next_delivery(&mut stream, WAIT).await;
    assert_eq!(first.attempt, 1);
    let second = next_delivery(&mut stream, WAIT).await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, 2, "an expired lease counts as a failed attempt");
    assert!(second.leased_at.duration_since(first.leased_at).unwrap() >= Duration::from_millis(290));

    for stale in [client.ack(&first.lease_token).await, client.nack(&first.lease_token, "late").await] {
        assert_eq!(stale.unwrap_err().code(), Some(Code::FailedPrecondition));
    }
    let err = client.extend_lease(&first.lease_token, None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert_eq!(depth(&client, "q").await, (1, 1), "the stale ack did not touch the newer delivery");
    client.ack(&second.lease_token).await.unwrap();
    let err = client.ack(&first.lease_token).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "acked through another token");
    assert_eq!(depth(&client, "q").await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_a_lease_postpones_redelivery() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", visibility(400)).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut stream = client.lease("q", lease_opts(10)).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = client.extend_lease(&d.lease_token, Some(Duration::from_millis(1500))).await.unwrap();
    assert!(deadline > d.lease_deadline + Duration::from_millis(1000));
    assert_no_delivery(&mut stream, Duration::from_millis(800)).await;
    // With no timeout given, the lease gets its original timeout again.
    client.extend_lease(&d.lease_token, None).await.unwrap();
    let again = next_delivery(&mut stream, WAIT).await;
    assert_eq!((again.id, again.attempt), (d.id, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_request_may_override_the_visibility_timeout() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let opts = LeaseOptions { max_in_flight: Some(5), visibility_timeout: Some(Duration::from_millis(250)) };
    let mut stream = client.lease("q", opts).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    let lease = d.lease_deadline.duration_since(d.leased_at).unwrap();
    assert_eq!(lease, Duration::from_millis(250));
    assert_eq!(next_delivery(&mut stream, WAIT).await.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_makes_the_message_ready_again_with_one_more_attempt() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut stream = client.lease("q", lease_opts(10)).await.unwrap();
    let first = next_delivery(&mut stream, WAIT).await;
    client.nack(&first.lease_token, "downstream said no").await.unwrap();
    let second = next_delivery(&mut stream, WAIT).await;
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    client.nack(&second.lease_token, "again").await.unwrap();
    let third = next_delivery(&mut stream, WAIT).await;
    assert_eq!(third.attempt, 3);
    let err = client.nack(&second.lease_token, "stale").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    client.ack(&third.lease_token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_tokens_are_told_apart() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut stream = client.lease("q", lease_opts(1)).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;

    let results = client
        .ack_batch(vec![
            "garbage".into(),
            // Well-formed, for a message that never existed.
            "1.0000000000000000000000000000abcd.1".into(),
            d.lease_token.clone(),
        ])
        .await
        .unwrap();
    let codes: Vec<_> = results.iter().map(|r| r.as_ref().err().map(|e| e.code)).collect();
    assert_eq!(codes, vec![Some(Code::InvalidArgument), Some(Code::NotFound), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_one_fairness_key_arrive_in_order_and_keys_take_turns() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..6 {
        batch.push(NewMessage::new("q", format!("a{i}")).fairness_key("a"));
    }
    for i in 0..2 {
        batch.push(NewMessage::new("q", format!("b{i}")).fairness_key("b"));
    }
    client.enqueue_batch(batch).await.unwrap();
    let mut stream = client.lease("q", lease_opts(100)).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..8 {
        order.push(String::from_utf8(next_delivery(&mut stream, WAIT).await.payload.to_vec()).unwrap());
    }
    let a: Vec<_> = order.iter().filter(|p| p.starts_with('a')).cloned().collect();
    assert_eq!(a, vec!["a0", "a1", "a2", "a3", "a4", "a5"], "FIFO within a key");
    let b_positions: Vec<_> = order.iter().enumerate().filter(|(_, p)| p.starts_with('b')).map(|(i, _)| i).collect();
    assert_eq!(b_positions, vec![1, 3], "key b is served in turn, not after all of a: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_ends_its_streams_and_removes_its_messages() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch = (0..5).map(|i| NewMessage::new("q", format!("m{i}"))).collect();
    client.enqueue_batch(batch).await.unwrap();
    let mut stream = client.lease("q", lease_opts(2)).await.unwrap();
    let held = next_delivery(&mut stream, WAIT).await;
    next_delivery(&mut stream, WAIT).await;
    assert_eq!(client.delete_queue("q").await.unwrap(), 5);
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end.expect("stream ends with a status").unwrap_err().code(), Some(Code::NotFound));
    assert_eq!(client.ack(&held.lease_token).await.unwrap_err().code(), Some(Code::NotFound));

    client.create_queue("q", QueueOptions::default()).await.unwrap();
    assert_eq!(depth(&client, "q").await, (0, 0), "a new queue of the same name starts empty");
    let mut stream = client.lease("q", lease_opts(2)).await.unwrap();
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_consumer_keeps_its_leases_until_they_time_out() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", visibility(600)).await.unwrap();
    client.enqueue(("q", "x")).await.unwrap();
    let mut first = client.lease("q", lease_opts(1)).await.unwrap();
    let d = next_delivery(&mut first, WAIT).await;
    drop(first);
    let mut second = client.lease("q", lease_opts(1)).await.unwrap();
    assert_no_delivery(&mut second, Duration::from_millis(300)).await;
    let again = next_delivery(&mut second, WAIT).await;
    assert_eq!((again.id, again.attempt), (d.id, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_closed_stream_was_never_sent_is_ready_again_at_once() {
    // A consumer that stops reading: most of these 512 KiB deliveries stay
    // queued in the broker when it goes away.
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", visibility(600_000)).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 512 * 1024]);
    let messages = (0..30).map(|_| NewMessage::new("q", payload.clone())).collect();
    let stalled = stalled_reader(&client, "q", messages, 30).await;
    drop(stalled);

    // Long before their 10-minute leases would run out, as first attempts.
    let mut second = client.lease("q", lease_opts(30)).await.unwrap();
    let returned = deliveries_until_idle(&mut second, Duration::from_secs(2)).await;
    assert!(returned.iter().all(|d| d.attempt == 1));
    assert!(returned.len() >= 20, "only {} of 30 came back", returned.len());
    assert_eq!(depth(&client, "q").await, (30, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_stays_prompt_under_continuous_load() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", visibility(300)).await.unwrap();
    client.enqueue(NewMessage::new("q", "victim").fairness_key("victim")).await.unwrap();
    let mut holder = client.lease("q", lease_opts(1)).await.unwrap();
    let victim = next_delivery(&mut holder, WAIT).await;

    // Producers and a consumer keep the broker busy while the lease runs out.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = (0..50).map(|i| NewMessage::new("q", format!("load{i}")).fairness_key("load")).collect();
                client.enqueue_batch(batch).await.unwrap();
            }
        })
    };
    let mut worker = client.lease("q", lease_opts(50)).await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let d = next_delivery(&mut worker, WAIT).await;
            if d.id == victim.id {
                return d;
            }
            client.ack(&d.lease_token).await.unwrap();
        }
    })
    .await
    .expect("the expired message came back while the broker was busy");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();
    assert_eq!(found.attempt, 2);
    let late = found.leased_at.duration_since(victim.lease_deadline).unwrap_or_default();
    assert!(late < Duration::from_secs(2), "redelivered {late:?} after the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_stream_pushes_messages_enqueued_after_it_opened() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let mut stream = client.lease("q", lease_opts(10)).await.unwrap();
    assert_no_delivery(&mut stream, Duration::from_millis(100)).await;
    let id = client.enqueue(("q", "late")).await.unwrap();
    assert_eq!(next_delivery(&mut stream, WAIT).await.id, id);
}
