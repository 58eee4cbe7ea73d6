//! peek, explain and stats (once and --watch).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use fila_testkit::TestServer;
use serde_json::Value;

use crate::Fila;

#[tokio::test]
async fn peek_lists_ready_messages_without_leasing() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    assert_eq!(fila.ok(&["peek", "orders"]), "no ready messages in 'orders'\n");
    let first = fila.ok(&["enqueue", "orders", "line one\nline two", "--fairness-key", "acme", "-H", "a=b"]);
    fila.json(&["enqueue", "orders", "x", "--fairness-key", "zeta", "--count", "3"]);
    fila.ok(&["enqueue", "orders", "later", "--delay", "1h"]);

    let table = fila.ok(&["peek", "orders"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "4 ready messages (not the delayed one): {table}");
    assert!(lines[0].starts_with("ID ") && lines[0].ends_with("PAYLOAD"), "{table}");
    let acme = lines.iter().find(|l| l.starts_with(first.trim())).expect("the first message");
    assert!(acme.contains(" acme ") && acme.ends_with("line one\\nline two"), "{acme}");
    assert!(acme.contains(" 0s ") || acme.contains(" 1s "), "age: {acme}");

    let only_zeta = fila.json_lines(&["peek", "orders", "--key", "zeta", "--limit", "2"]);
    assert_eq!(only_zeta.len(), 2);
    assert!(only_zeta.iter().all(|m| m["fairness_key"] == "zeta" && m["attempt"] == 1 && m["payload"] == "x"));
    let acme = &fila.json_lines(&["peek", "orders", "--key", "acme"])[0];
    assert_eq!((acme["headers"]["a"].as_str(), acme["payload_size"].as_u64()), (Some("b"), Some(17)));
    // Nothing was leased.
    assert_eq!(fila.inspect("orders")["in_flight"], 0);

    assert_eq!(fila.run(&["peek", "nope"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["peek", "orders", "--limit", "0"]).failed(2).to_owned();
    assert!(message.contains("0 is not in 1..=1000"), "{message}");
}

#[tokio::test]
async fn explain_says_why_in_one_sentence() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    fila.json(&["enqueue", "orders", "x", "--fairness-key", "zeta", "--count", "2"]);

    let human = fila.ok(&["explain", "orders", "--key", "zeta"]);
    let (sentence, fields) = human.split_once("\n\n").expect("the sentence, a blank line, the fields");
    assert!(sentence.contains("no consumer"), "{human}");
    assert!(fields.starts_with("state         no consumer\nready in key  2\n"), "{human}");
    let json = fila.json(&["explain", "orders", "--key", "zeta"]);
    assert_eq!((json["state"].as_str(), json["pending"].as_u64()), (Some("no_consumer"), Some(2)));
    assert_eq!(json["reason"].as_str(), Some(sentence));

    let id = fila.ok(&["enqueue", "orders", "later", "--delay", "1h"]);
    let json = fila.json(&["explain", "orders", "--message", id.trim()]);
    assert_eq!(json["state"], "delayed", "{json}");
    assert!(json["until"].as_str().is_some(), "{json}");
    let human = fila.ok(&["explain", "orders", "--message", id.trim()]);
    assert!(human.contains("\nstate         delayed\n") && human.contains("\nuntil "), "{human}");

    let json = fila.json(&["explain", "orders", "--key", "nobody"]);
    assert_eq!(json["state"], "not_found");

    assert_eq!(fila.run(&["explain", "nope", "--key", "k"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["explain", "orders"]).failed(2).to_owned();
    assert!(message.contains("--key <KEY>|--message <ID>"), "{message}");
}

#[tokio::test]
async fn stats_show_counters_keys_and_throttles() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    fila.ok(&["throttle", "set", "provider:smtp", "--rate", "2"]);
    fila.json(&["enqueue", "orders", "x", "--fairness-key", "big", "--count", "5"]);
    fila.json(&["enqueue", "orders", "x", "--fairness-key", "small", "--count", "2"]);
    fila.json(&["enqueue", "orders", "x", "--fairness-key", "tiny"]);
    fila.ok(&["enqueue", "orders", "x", "--fairness-key", "tiny", "--delay", "1h"]);

    let stats = fila.json(&["stats", "orders", "--keys", "2"]);
    assert_eq!((stats["depth"].as_u64(), stats["delayed"].as_u64()), (Some(9), Some(1)));
    assert_eq!((stats["dead_letters"].as_u64(), stats["consumers"].as_u64()), (Some(0), Some(0)));
    assert_eq!(stats["active_keys"], 3);
    let keys: Vec<(&str, u64)> = stats["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["fairness_key"].as_str().unwrap(), k["pending"].as_u64().unwrap()))
        .collect();
    assert_eq!(keys, [("big", 5), ("small", 2)]);
    assert_eq!(stats["throttles"][0]["key"], "provider:smtp");

    let human = fila.ok(&["stats", "orders", "--keys", "2"]);
    assert!(human.starts_with("queue         orders\ndepth         9\n"), "{human}");
    assert!(human.contains("\ndead letters  0 (in orders.dlq)\n"), "{human}");
    assert!(human.contains("\nKEY    PENDING  LEASED  WEIGHT  DEFICIT  THROTTLED  RATE\nbig          5"), "{human}");
    assert!(human.contains("(the 2 busiest of 3 keys)"), "{human}");
    assert!(human.contains("no          0/s\n"), "nothing delivered yet: {human}");
    assert!(human.contains("\nprovider:smtp   2/s      2"), "{human}");

    // A dead-letter queue has no dead-letter queue of its own.
    assert_eq!(fila.json(&["stats", "orders.dlq"])["dead_letters"], Value::Null);
    assert_eq!(fila.run(&["stats", "nope"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["stats", "orders", "--interval", "1s"]).failed(2).to_owned();
    assert!(message.contains("--watch"), "{message}");
}

#[tokio::test]
async fn watch_prints_a_snapshot_per_interval() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    let mut child = fila.command(&["stats", "orders", "--watch", "--interval", "100ms", "-o", "json"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next()["depth"], 0);
    fila.ok(&["enqueue", "orders", "x"]);
    let started = Instant::now();
    while next()["depth"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "the new message never showed");
    }
    assert_eq!(child.try_wait().unwrap(), None, "still watching");
    // Ctrl-C ends it with the documented status.
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));

    // Human mode clears the screen before each snapshot.
    let mut child = fila.command(&["stats", "orders", "--watch", "--interval", "100ms"]).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while text.matches("\x1b[2J\x1b[H").count() < 2 {
        out.read_line(&mut text).unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.starts_with("\x1b[2J\x1b[Hqueue         orders\ndepth         1\n"), "{text:?}");
    assert!(text.contains("Ctrl-C to stop"), "{text:?}");
}
