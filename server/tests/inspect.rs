//! Operator views through the real binary over gRPC: get and update a
//! queue, peek, explain.

mod common;

use std::time::Duration;

use common::{next_delivery, TestServer};
use fila_sdk::{Code, ExplainState, ExplainSubject, LeaseOptions, NewMessage, QueueOptions};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_settings_change_at_runtime_and_persist() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let updated = client
        .update_queue("q", QueueOptions { quantum: Some(5), max_attempts: Some(2), ..Default::default() })
        .await
        .unwrap();
    assert_eq!((updated.quantum, updated.max_attempts, updated.visibility_timeout), (5, 2, Duration::from_secs(30)));
    server.restart().await;
    let client = server.client().await;
    let q = client.get_queue("q").await.unwrap();
    assert_eq!((q.quantum, q.max_attempts), (5, 2));
    let err = client.get_queue("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let err = client.update_queue("q", QueueOptions { quantum: Some(0), ..Default::default() }).await;
    assert!(err.is_ok(), "0 is not 'unset' here but the minimum, 1");
    let err =
        client.update_queue("q", QueueOptions { max_attempts: Some(5000), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_ready_messages_without_leasing_them() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch =
        (0..6).map(|i| NewMessage::new("q", format!("{i}")).fairness_key(if i % 2 == 0 { "a" } else { "b" })).collect();
    client.enqueue_batch(batch).await.unwrap();
    let mut stream =
        client.lease("q", LeaseOptions { max_in_flight: Some(1), visibility_timeout: None }).await.unwrap();
    let leased = next_delivery(&mut stream, WAIT).await;
    assert_eq!(&leased.payload[..], b"0");

    let a: Vec<String> = client
        .peek("q", Some("a"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(a, ["2", "4"], "the leased message is not shown; order is delivery order");
    let all = client.peek("q", None, 3).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(client.get_queue("q").await.unwrap().in_flight, 1, "peeking leased nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why_a_key_or_message_waits() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.set_throttle("provider:slow", 0.01, Some(1.0)).await.unwrap();
    let ids: Vec<String> = client
        .enqueue_batch(
            (0..3)
                .map(|i| NewMessage::new("q", format!("{i}")).fairness_key("acme").throttle_key("provider:slow"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let e = client.explain("q", ExplainSubject::FairnessKey("acme")).await.unwrap();
    assert_eq!(e.state, ExplainState::NoConsumer, "{}", e.reason);
    assert_eq!(e.pending, 3);

    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let first = next_delivery(&mut stream, WAIT).await;
    assert_eq!(first.id, ids[0]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = client.explain("q", ExplainSubject::FairnessKey("acme")).await.unwrap();
    assert_eq!(e.state, ExplainState::Throttled, "{}", e.reason);
    assert_eq!(e.throttle_key.as_deref(), Some("provider:slow"));
    assert!(e.tokens < 1.0 && e.next_token_in > Duration::from_secs(1), "{e:?}");
    assert!(e.reason.contains("waiting on throttle key 'provider:slow'"), "{}", e.reason);

    let e = client.explain("q", ExplainSubject::Message(&ids[0])).await.unwrap();
    assert_eq!(e.state, ExplainState::Leased, "{}", e.reason);
    assert!(e.until.is_some());
    let e = client.explain("q", ExplainSubject::Message(&ids[2])).await.unwrap();
    assert_eq!(e.state, ExplainState::Throttled, "{}", e.reason);
    assert_eq!(e.ahead, 1, "one ready message of its key is ahead");

    client.ack(&first.lease_token).await.unwrap();
    let e = client.explain("q", ExplainSubject::Message(&ids[0])).await.unwrap();
    assert_eq!(e.state, ExplainState::NotFound, "{}", e.reason);
    let e = client.explain("q", ExplainSubject::FairnessKey("nobody")).await.unwrap();
    assert_eq!(e.state, ExplainState::NotFound, "{}", e.reason);
    let err = client.explain("q", ExplainSubject::Message("not-a-uuid")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_finds_delayed_and_dead_lettered_messages() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions { max_attempts: Some(1), ..Default::default() }).await.unwrap();
    let delayed = client.enqueue(NewMessage::new("q", "later").delay(Duration::from_secs(60))).await.unwrap();
    let e = client.explain("q", ExplainSubject::Message(&delayed)).await.unwrap();
    assert_eq!(e.state, ExplainState::Delayed, "{}", e.reason);

    let doomed = client.enqueue(NewMessage::new("q", "bad")).await.unwrap();
    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    client.nack(&d.lease_token, "boom").await.unwrap();
    let e = client.explain("q", ExplainSubject::Message(&doomed)).await.unwrap();
    assert_eq!(e.state, ExplainState::DeadLettered, "{}", e.reason);

    let e = client.explain("q", ExplainSubject::FairnessKey("default")).await.unwrap();
    assert_eq!(e.state, ExplainState::NotFound, "nothing ready: {}", e.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_may_accept_smaller_payloads_than_the_server() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("small", QueueOptions { max_payload_bytes: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(client.get_queue("small").await.unwrap().max_payload_bytes, 10);
    let results = client
        .enqueue_batch(vec![NewMessage::new("small", "0123456789"), NewMessage::new("small", "0123456789x")])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("queue 'small' accepts at most 10 bytes"), "{}", err.message);
    assert_eq!(client.get_queue("small").await.unwrap().depth, 1, "the refused message wrote nothing");

    client.update_queue("small", QueueOptions { max_payload_bytes: Some(0), ..Default::default() }).await.unwrap();
    client.enqueue(NewMessage::new("small", "0123456789x")).await.unwrap();
}
