use std::collections::HashSet;

use fila_testkit::TestServer;

use crate::Fila;

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

#[tokio::test]
async fn argument_payload_with_metadata() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);

    let args = [
        "enqueue",
        "orders",
        "{\"order\": 42}",
        "-H",
        "content-type=application/json",
        "--header",
        "trace=a=b",
        "--fairness-key",
        "acme",
        "--weight",
        "3",
        "--throttle-key",
        "provider:stripe",
        "--throttle-key",
        "tenant:acme",
    ];
    let id = fila.ok(&args);
    let id = id.strip_suffix('\n').unwrap();
    assert!(is_uuid(id), "one id: {id:?}");

    let delivery = fila.json(&["lease", "orders", "--limit", "1", "--ack"]);
    assert_eq!(delivery["id"], id);
    assert_eq!(delivery["queue"], "orders");
    assert_eq!(delivery["payload"], "{\"order\": 42}");
    assert_eq!(delivery["payload_size"], 13);
    assert!(delivery.get("payload_base64").is_none());
    assert_eq!(delivery["headers"]["content-type"], "application/json");
    assert_eq!(delivery["headers"]["trace"], "a=b");
    assert_eq!(delivery["fairness_key"], "acme");
    assert_eq!(delivery["weight"], 3);
    assert_eq!(delivery["throttle_keys"], serde_json::json!(["provider:stripe", "tenant:acme"]));
    assert_eq!(delivery["attempt"], 1);
}

#[tokio::test]
async fn payload_from_stdin_and_files() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "q"]);

    let run = fila.run_with_stdin(&["enqueue", "q"], b"from stdin\nsecond line\n");
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("payload.bin");
    std::fs::write(&binary, [0xff, 0x00, 0x01]).unwrap();
    fila.ok(&["enqueue", "q", "--file", binary.to_str().unwrap()]);
    let run = fila.run_with_stdin(&["enqueue", "q", "--file", "-"], b"dash");
    assert_eq!(run.code, 0, "{run:?}");

    let deliveries = fila.json_lines(&["lease", "q", "--limit", "3", "--ack"]);
    assert_eq!(deliveries[0]["payload"], "from stdin\nsecond line\n");
    assert_eq!(deliveries[1]["payload"], "\u{fffd}\u{0}\u{1}");
    assert_eq!(deliveries[1]["payload_base64"], "/wAB");
    assert_eq!(deliveries[1]["payload_size"], 3);
    assert_eq!(deliveries[2]["payload"], "dash");
}

#[tokio::test]
async fn count_sends_copies_in_batches() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "load"]);

    // 2,500 copies in batches of 1,000: three calls.
    let run = fila.run(&["enqueue", "load", "x", "--count", "2500"]);
    assert_eq!(run.code, 0, "{run:?}");
    let ids: HashSet<&str> = run.stdout.lines().collect();
    assert_eq!(ids.len(), 2500);
    assert!(ids.iter().all(|id| is_uuid(id)));
    assert!(run.stderr.starts_with("enqueued 2500 messages to 'load' in "), "summary: {run:?}");
    assert_eq!(fila.inspect("load")["depth"], 2500);

    // Small batches, JSON: one document with every id.
    let sent = fila.json(&["enqueue", "load", "y", "--count", "7", "--batch-size", "2"]);
    assert_eq!(sent["queue"], "load");
    assert_eq!(sent["ids"].as_array().unwrap().len(), 7);
    assert_eq!(fila.inspect("load")["depth"], 2507);
}

#[tokio::test]
async fn delay_holds_the_message_back() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "later"]);
    fila.ok(&["enqueue", "later", "soon", "--delay", "1h"]);
    let info = fila.inspect("later");
    assert_eq!((info["depth"].as_u64(), info["delayed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(fila.ok(&["lease", "later", "--idle-exit", "300ms"]), "");
}

#[tokio::test]
async fn refused_messages_report_the_broker_s_reason() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    assert_eq!(fila.run(&["enqueue", "nope", "x"]).failed(1), "queue 'nope' does not exist");

    fila.ok(&["queue", "create", "q"]);
    // Empty standard input: an empty payload, which the broker refuses.
    let message = fila.run(&["enqueue", "q"]).failed(1).to_owned();
    assert!(message.contains("payload is empty"), "{message}");

    let message = fila.run(&["enqueue", "nope", "x", "--count", "3"]).failed(1).to_owned();
    assert_eq!(message, "queue 'nope' does not exist (0 of 3 messages enqueued)");
}

#[tokio::test]
async fn a_closed_output_stops_quietly() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "q"]);
    // 5,000 ids are far more than a pipe holds: the reader going away makes
    // a write fail, as with `fila enqueue ... | head -1`.
    let mut child = fila.command(&["enqueue", "q", "x", "--count", "5000"]).spawn().unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""));
}
