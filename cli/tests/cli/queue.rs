use fila_testkit::TestServer;
use serde_json::Value;

use crate::Fila;

fn names(queues: &Value) -> Vec<&str> {
    queues.as_array().expect("an array").iter().map(|q| q["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn create_list_inspect_delete() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);

    assert_eq!(
        fila.ok(&["queue", "create", "orders", "--visibility-timeout", "1m 30s", "--max-attempts", "3"]),
        "created queue 'orders' (visibility timeout 1m 30s, quantum 1, max attempts 3)\n"
    );
    let created = fila.json(&["queue", "create", "emails", "--visibility-timeout", "500ms", "--quantum", "4"]);
    assert_eq!(created["name"], "emails");
    assert_eq!(created["visibility_timeout_ms"], 500);
    assert_eq!(created["quantum"], 4);
    let small = fila.json(&["queue", "update", "emails", "--max-payload-bytes", "4"]);
    assert_eq!(small["max_payload_bytes"], 4);
    let refused = fila.run(&["enqueue", "emails", "12345"]).failed(1).to_owned();
    assert!(refused.contains("queue 'emails' accepts at most 4 bytes"), "{refused}");
    fila.ok(&["queue", "update", "emails", "--max-payload-bytes", "0"]);

    // Human list: a header and one aligned row per queue, dead-letter
    // queues included.
    let table = fila.ok(&["queue", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("NAME ") && lines[0].ends_with("VISIBILITY TIMEOUT"), "{table}");
    let orders = lines.iter().find(|l| l.starts_with("orders ")).expect("orders row");
    assert!(orders.ends_with("1m 30s"), "{table}");
    let depth_end = lines[0].find("DEPTH").unwrap() + "DEPTH".len();
    for line in &lines[1..] {
        assert_eq!(&line[depth_end - 1..depth_end], "0", "depth column aligned: {table}");
    }

    let queues = fila.json(&["queue", "list"]);
    assert_eq!(names(&queues), ["emails", "emails.dlq", "orders", "orders.dlq"]);

    let orders = fila.inspect("orders");
    assert_eq!(orders["visibility_timeout_ms"], 90_000);
    assert_eq!(orders["max_attempts"], 3);
    assert_eq!((orders["depth"].as_u64(), orders["in_flight"].as_u64()), (Some(0), Some(0)));
    let human = fila.ok(&["queue", "inspect", "orders"]);
    assert!(human.contains("\nvisibility timeout  1m 30s\n"), "{human}");
    assert!(human.starts_with("name                orders\ndepth               0\n"), "{human}");

    fila.ok(&["enqueue", "orders", "a"]);
    fila.ok(&["enqueue", "orders", "b"]);
    assert_eq!(fila.ok(&["queue", "delete", "orders"]), "deleted queue 'orders' and its 2 messages\n");
    let deleted = fila.json(&["queue", "delete", "emails"]);
    assert_eq!((deleted["name"].as_str(), deleted["deleted_messages"].as_u64()), (Some("emails"), Some(0)));
    assert_eq!(fila.json(&["queue", "list"]), Value::Array(vec![]));
    assert_eq!(fila.ok(&["queue", "list"]), "no queues\n");
}

#[tokio::test]
async fn list_follows_every_page() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // 80 queues and their 80 dead-letter queues: more than one page of 100.
    for i in 0..80 {
        client.create_queue(&format!("q{i:03}"), Default::default()).await.unwrap();
    }
    let fila = Fila::of(&server);
    let queues = fila.json(&["queue", "list"]);
    let names = names(&queues);
    assert_eq!(names.len(), 160);
    assert!(names.contains(&"q000") && names.contains(&"q079.dlq"));
    assert_eq!(fila.ok(&["queue", "list"]).lines().count(), 161);
}

#[tokio::test]
async fn addr_and_output_come_from_the_environment() {
    let server = TestServer::start().await;
    let run = crate::finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_fila"))
            .args(["queue", "create", "from-env"])
            .env("FILA_ADDR", format!("http://{}", server.addr))
            .env("FILA_OUTPUT", "json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let created: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(created["name"], "from-env");
}

#[tokio::test]
async fn purge_needs_yes_without_a_terminal() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    fila.json(&["enqueue", "orders", "x", "--count", "5"]);
    fila.ok(&["enqueue", "orders", "later", "--delay", "1h"]);
    fila.ok(&["lease", "orders", "--limit", "2"]);

    let message = fila.run(&["queue", "purge", "orders"]).failed(2).to_owned();
    assert!(message.contains("add --yes"), "{message}");
    assert_eq!(fila.inspect("orders")["depth"], 6);

    // Ready and delayed messages go; the two leased ones stay.
    assert_eq!(fila.ok(&["queue", "purge", "orders", "--yes"]), "purged 4 messages from 'orders'\n");
    let info = fila.inspect("orders");
    assert_eq!((info["depth"].as_u64(), info["in_flight"].as_u64()), (Some(2), Some(2)));
    let purged = fila.json(&["queue", "purge", "orders", "-y"]);
    assert_eq!((purged["name"].as_str(), purged["purged_messages"].as_u64()), (Some("orders"), Some(0)));

    assert_eq!(fila.run(&["queue", "purge", "nope", "--yes"]).failed(1), "queue 'nope' does not exist");
    assert_eq!(fila.run(&["queue", "purge", "nope"]).failed(1), "queue 'nope' does not exist");
}
