use std::collections::HashSet;
use std::time::{Duration, Instant};

use fila_testkit::TestServer;

use crate::{finish, wait_for_queue, Fila};

fn counts(fila: &Fila, queue: &str) -> (u64, u64) {
    let info = fila.inspect(queue);
    (info["depth"].as_u64().unwrap(), info["in_flight"].as_u64().unwrap())
}

#[tokio::test]
async fn ack_empties_the_queue() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "jobs"]);
    fila.json(&["enqueue", "jobs", "work", "--count", "30"]);
    assert_eq!(counts(&fila, "jobs"), (30, 0));

    let deliveries = fila.json_lines(&["lease", "jobs", "--ack", "--limit", "30"]);
    assert_eq!(deliveries.len(), 30);
    let ids: HashSet<&str> = deliveries.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 30);
    assert!(deliveries.iter().all(|d| d["payload"] == "work" && d["attempt"] == 1));
    assert_eq!(counts(&fila, "jobs"), (0, 0));
}

#[tokio::test]
async fn acks_as_it_goes_with_a_small_window() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "jobs"]);
    fila.json(&["enqueue", "jobs", "work", "--count", "25"]);
    let out = fila.ok(&["lease", "jobs", "--ack", "--max-in-flight", "4", "--limit", "25"]);
    assert_eq!(out.lines().count(), 25);
    assert_eq!(counts(&fila, "jobs"), (0, 0));
}

#[tokio::test]
async fn limit_leases_no_more_than_asked() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "jobs"]);
    fila.json(&["enqueue", "jobs", "work", "--count", "10"]);

    // Acked: three gone, and nothing else left leased to the closed stream.
    assert_eq!(fila.ok(&["lease", "jobs", "--ack", "--limit", "3"]).lines().count(), 3);
    assert_eq!(counts(&fila, "jobs"), (7, 0));

    // Not acked: exactly two stay leased until their visibility timeout.
    assert_eq!(fila.ok(&["lease", "jobs", "--limit", "2"]).lines().count(), 2);
    assert_eq!(counts(&fila, "jobs"), (7, 2));
}

#[tokio::test]
async fn nack_raises_the_attempt_count() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "flaky"]);
    let id = fila.ok(&["enqueue", "flaky", "try me"]);

    let first = fila.json(&["lease", "flaky", "--nack", "downstream timed out", "--limit", "1"]);
    assert_eq!((first["id"].as_str(), first["attempt"].as_u64()), (Some(id.trim()), Some(1)));
    assert_eq!(first["last_error"], "");
    // Retried after the default policy's backoff.
    let second = fila.json(&["lease", "flaky", "--nack", "again", "--limit", "1", "--idle-exit", "10s"]);
    assert_eq!((second["id"].as_str(), second["attempt"].as_u64()), (Some(id.trim()), Some(2)));
    assert_eq!(second["last_error"], "downstream timed out");
    let third = fila.json(&["lease", "flaky", "--ack", "--limit", "1", "--idle-exit", "10s"]);
    assert_eq!((third["attempt"].as_u64(), third["last_error"].as_str()), (Some(3), Some("again")));
    assert_eq!(counts(&fila, "flaky"), (0, 0));
}

#[tokio::test]
async fn idle_exit_stops_a_quiet_tail() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "quiet"]);
    let started = Instant::now();
    assert_eq!(fila.ok(&["lease", "quiet", "--idle-exit", "300ms"]), "");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn tails_messages_as_they_arrive() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "live"]);

    let tail = fila.command(&["lease", "live", "--ack", "--limit", "2"]).spawn().unwrap();
    // Enqueue only once the stream is open, so the deliveries reach a
    // running tail.
    wait_for_queue(&fila, "live", "a consumer", |q| q["consumers"] == 1);
    let first = fila.ok(&["enqueue", "live", "a\nb", "--fairness-key", "acme"]);
    let long = "x".repeat(500);
    let second = fila.ok(&["enqueue", "live", &long]);
    let run = finish(tail);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    // id, fairness key, attempt, size, payload with escapes, on one line.
    assert!(lines[0].starts_with(first.trim()), "{}", lines[0]);
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[1..], ["acme", "attempt", "1", "3", "B", "a\\nb"], "{}", lines[0]);
    // A long payload is cut, with its size shown.
    assert!(lines[1].starts_with(second.trim()) && lines[1].contains("default"), "{}", lines[1]);
    assert!(lines[1].contains("500 B") && lines[1].ends_with(&format!("{}…", "x".repeat(100))), "{}", lines[1]);
    assert_eq!(counts(&fila, "live"), (0, 0));
}

#[tokio::test]
async fn losing_the_broker_ends_the_tail() {
    let mut server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "q"]);
    let tail = fila.command(&["lease", "q"]).spawn().unwrap();
    wait_for_queue(&fila, "q", "a consumer", |q| q["consumers"] == 1);
    server.kill();
    let run = finish(tail);
    let message = run.failed(3);
    assert!(message.contains(&format!("the broker at {}", server.addr)), "{message}");
}
