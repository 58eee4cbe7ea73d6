//! Throttling at dequeue time through the real binary over gRPC.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_delivery, next_delivery, TestServer};
use fila_sdk::{Client, Code, LeaseOptions, NewMessage, QueueOptions};

const WAIT: Duration = Duration::from_secs(5);

fn window(n: u32) -> LeaseOptions {
    LeaseOptions { max_in_flight: Some(n), visibility_timeout: None }
}

async fn enqueue_many(client: &Client, messages: Vec<NewMessage>) {
    for chunk in messages.chunks(1000) {
        for result in client.enqueue_batch(chunk.to_vec()).await.unwrap() {
            result.unwrap();
        }
    }
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ten_seconds_a_throttled_key_delivers_its_rate_plus_at_most_its_burst() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let (rate, burst) = (20.0, 5.0);
    client.set_throttle("provider:slow", rate, Some(burst)).await.unwrap();
    let throttled = (0..400).map(|_| NewMessage::new("q", "t").fairness_key("a").throttle_key("provider:slow"));
    // Another tenant's unthrottled work flows at full speed meanwhile.
    let free = (0..2000).map(|_| NewMessage::new("q", "f").fairness_key("b"));
    enqueue_many(&client, throttled.chain(free).collect()).await;

    let mut stream = client.lease("q", window(1000)).await.unwrap();
    let started = Instant::now();
    let (mut throttled, mut free, mut free_done_at) = (0u32, 0u32, None);
    while started.elapsed() < Duration::from_secs(10) {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        let Ok(Some(delivery)) = tokio::time::timeout(left, futures::StreamExt::next(&mut stream)).await else {
            break;
        };
        let delivery = delivery.unwrap();
        if delivery.fairness_key == "a" {
            throttled += 1;
        } else {
            free += 1;
            if free == 2000 {
                free_done_at = Some(started.elapsed());
            }
        }
        client.ack(&delivery.lease_token).await.unwrap();
    }
    let max = (rate * 10.0 + burst) as u32;
    assert!(throttled <= max, "{throttled} deliveries exceed rate × 10 s + burst = {max}");
    assert!(throttled >= max - 10, "{throttled} deliveries: the throttle let far less through than its rate");
    let free_done_at = free_done_at.expect("all unthrottled messages delivered");
    assert!(free_done_at < Duration::from_secs(5), "unthrottled work was held back: done after {free_done_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_lane_does_not_hold_back_the_same_tenants_other_work() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.set_throttle("provider:slow", 0.01, Some(1.0)).await.unwrap();
    // Tenant A: three messages for the throttled provider, then three for
    // an unthrottled one.
    let mut batch: Vec<NewMessage> = (0..3)
        .map(|i| NewMessage::new("q", format!("slow-{i}")).fairness_key("A").throttle_key("provider:slow"))
        .collect();
    batch.extend(
        (0..3).map(|i| NewMessage::new("q", format!("fast-{i}")).fairness_key("A").throttle_key("provider:fast")),
    );
    enqueue_many(&client, batch).await;

    let mut stream = client.lease("q", window(10)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8(next_delivery(&mut stream, WAIT).await.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["slow-0", "fast-0", "fast-1", "fast-2"], "the burst token first, then the unthrottled lane");
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;

    let stats = client.queue_stats("q", None).await.unwrap();
    assert_eq!(stats.keys[0].pending, 2);
    assert!(stats.keys[0].throttled, "{:?}", stats.keys[0]);
    let throttle = client.list_throttles().await.unwrap().remove(0);
    assert_eq!(throttle.key, "provider:slow");
    assert!(throttle.blocked_count > 0 && throttle.tokens < 1.0, "{throttle:?}");

    // Removing the limit releases the waiting messages at once.
    client.remove_throttle("provider:slow").await.unwrap();
    let d = next_delivery(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(&d.payload[..], b"slow-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lanes_of_one_key_are_delivered_in_arrival_order_while_tokens_last() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.set_throttle("provider:x", 1000.0, Some(100.0)).await.unwrap();
    client.set_throttle("provider:y", 1000.0, Some(100.0)).await.unwrap();
    // One tenant's messages over three lanes (no throttle key, x, y), in
    // an order that is none of the lanes' own order.
    let lanes = [None, Some("provider:x"), Some("provider:y"), Some("provider:x"), None, Some("provider:y")];
    let messages: Vec<NewMessage> = (0..24)
        .map(|i| {
            let message = NewMessage::new("q", format!("m{i}")).fairness_key("A");
            match lanes[(i * 5 + i / 6) % lanes.len()] {
                Some(throttle) => message.throttle_key(throttle),
                None => message,
            }
        })
        .collect();
    enqueue_many(&client, messages).await;

    let mut stream = client.lease("q", window(30)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..24 {
        got.push(String::from_utf8(next_delivery(&mut stream, WAIT).await.payload.to_vec()).unwrap());
    }
    let sent: Vec<String> = (0..24).map(|i| format!("m{i}")).collect();
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_when_a_token_arrives_without_busy_waiting() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.set_throttle("k", 5.0, Some(1.0)).await.unwrap();
    enqueue_many(&client, (0..6).map(|_| NewMessage::new("q", "x").throttle_key("k")).collect()).await;
    let mut stream = client.lease("q", window(10)).await.unwrap();
    next_delivery(&mut stream, WAIT).await;
    let mut last = Instant::now();
    for _ in 0..5 {
        next_delivery(&mut stream, WAIT).await;
        let gap = last.elapsed();
        last = Instant::now();
        // One token every 200 ms; delivery follows its arrival closely.
        assert!(gap >= Duration::from_millis(150) && gap <= Duration::from_millis(300), "gap {gap:?}");
    }

    // Everything left is throttled (and there is nothing left): the broker
    // sleeps rather than spinning.
    client.set_throttle("k", 0.01, Some(1.0)).await.unwrap();
    enqueue_many(&client, (0..100).map(|_| NewMessage::new("q", "x").throttle_key("k")).collect()).await;
    assert_no_delivery(&mut stream, Duration::from_millis(100)).await;
    let before = cpu_ticks(server.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(server.pid()) - before;
    assert!(used <= 10, "the broker used {used} ticks of CPU in 1 s while everything was throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_of_deliveries_a_closed_stream_never_sent_are_given_back() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    // 30 tokens, and no refill to speak of during the test.
    client.set_throttle("provider:slow", 0.001, Some(30.0)).await.unwrap();
    // A reader that stops reading: most of these 512 KiB deliveries stay
    // queued in the broker. They take every token, and another tenant's
    // message then parks its key until a refill about 1,000 s away.
    let payload = bytes::Bytes::from(vec![b'x'; 512 * 1024]);
    let mut messages: Vec<NewMessage> = (0..30)
        .map(|_| NewMessage::new("q", payload.clone()).fairness_key("a").throttle_key("provider:slow"))
        .collect();
    messages.push(NewMessage::new("q", "b").fairness_key("b").throttle_key("provider:slow"));
    let stalled = common::stalled_reader(&client, "q", messages, 30).await;
    drop(stalled);

    // What was never sent gave its token back, and the parked key woke.
    let mut second = client.lease("q", window(31)).await.unwrap();
    let deliveries = common::deliveries_until_idle(&mut second, Duration::from_secs(2)).await;
    let delivered = deliveries.len();
    let parked_key_delivered = deliveries.iter().any(|d| d.fairness_key == "b");
    assert!(delivered >= 20, "only {delivered} deliveries after the stream closed");
    assert!(parked_key_delivered, "the key parked for a refill was not woken by the returned tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_needs_a_token_from_every_throttle_key() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.set_throttle("provider:stripe", 0.001, Some(100.0)).await.unwrap();
    client.set_throttle("tenant:acme", 0.01, Some(2.0)).await.unwrap();
    let both = |i: u32| {
        NewMessage::new("q", format!("{i}"))
            .fairness_key("acme")
            .throttle_key("provider:stripe")
            .throttle_key("tenant:acme")
    };
    enqueue_many(&client, (0..5).map(both).collect()).await;
    let mut stream = client.lease("q", window(10)).await.unwrap();
    next_delivery(&mut stream, WAIT).await;
    next_delivery(&mut stream, WAIT).await;
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    let throttles = client.list_throttles().await.unwrap();
    let stripe = throttles.iter().find(|t| t.key == "provider:stripe").unwrap();
    assert!(stripe.tokens < 98.1 && stripe.tokens >= 98.0, "the provider bucket paid for both: {stripe:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_at_runtime_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let info = client.set_throttle("k", 0.5, None).await.unwrap();
    assert_eq!((info.rate_per_second, info.burst, info.tokens), (0.5, 1.0, 1.0));
    client.set_throttle("k", 0.01, Some(1.0)).await.unwrap();
    server.restart().await;
    let client = server.client().await;
    let listed = client.list_throttles().await.unwrap();
    assert_eq!(listed.len(), 1);
    let one = client.get_throttle("k").await.unwrap().expect("the limit survived");
    assert_eq!((one.rate_per_second, one.burst), (0.01, 1.0));
    assert_eq!(client.get_throttle("other").await.unwrap(), None);
    assert_eq!((listed[0].key.as_str(), listed[0].rate_per_second, listed[0].burst), ("k", 0.01, 1.0));

    enqueue_many(&client, (0..3).map(|_| NewMessage::new("q", "x").throttle_key("k")).collect()).await;
    let mut stream = client.lease("q", window(10)).await.unwrap();
    next_delivery(&mut stream, WAIT).await;
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    // Raising the rate takes effect without a restart.
    client.set_throttle("k", 1000.0, None).await.unwrap();
    next_delivery(&mut stream, Duration::from_millis(500)).await;
    next_delivery(&mut stream, Duration::from_millis(500)).await;

    client.remove_throttle("k").await.unwrap();
    let err = client.remove_throttle("k").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    server.restart().await;
    assert!(server.client().await.list_throttles().await.unwrap().is_empty(), "the removal is durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_refused_with_a_clear_message() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (rate, burst) in [(0.0, None), (-1.0, None), (f64::NAN, None), (1.0, Some(0.5))] {
        let err = client.set_throttle("k", rate, burst).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{rate} {burst:?}: {err}");
    }
    let err = client.set_throttle("", 1.0, None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(client.list_throttles().await.unwrap().is_empty(), "nothing was stored");
}
