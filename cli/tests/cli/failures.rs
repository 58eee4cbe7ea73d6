//! Every failure: a documented exit status and one line on standard error.

use fila_testkit::TestServer;

use crate::{dead_addr, Fila};

#[tokio::test]
async fn unknown_and_duplicate_queues_are_refused() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    for args in [
        &["queue", "inspect", "orders"][..],
        &["queue", "delete", "orders"],
        &["enqueue", "orders", "x"],
        &["lease", "orders", "--limit", "1"],
    ] {
        let run = fila.run(args);
        assert_eq!(run.failed(1), "queue 'orders' does not exist", "fila {args:?}");
        assert_eq!(run.stdout, "", "fila {args:?}");
    }

    fila.ok(&["queue", "create", "orders"]);
    assert_eq!(fila.run(&["queue", "create", "orders"]).failed(1), "queue 'orders' already exists");
    let message = fila.run(&["queue", "create", "bad name!"]).failed(1).to_owned();
    assert!(message.starts_with("queue name 'bad name!' is invalid"), "{message}");
}

#[tokio::test]
async fn usage_errors_exit_2_before_contacting_the_broker() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);

    let run = fila.run(&["queue", "create", "q", "--visibility-timeout", "5x"]);
    let message = run.failed(2);
    assert!(message.starts_with("invalid value '5x' for '--visibility-timeout <DURATION>': unknown time unit"));
    assert!(message.ends_with("(see 'fila queue create --help')"), "{message}");
    let message = fila.run(&["lease", "q", "--idle-exit", "30"]).failed(2).to_owned();
    assert!(message.contains("time unit needed, for example 30sec or 30ms"), "{message}");
    let message = fila.run(&["queue", "create", "q", "--visibility-timeout", "0s"]).failed(2).to_owned();
    assert!(message.contains("must be at least 1ms"), "{message}");
    assert_eq!(
        fila.run(&["queue", "create"]).failed(2),
        "the following required arguments were not provided: <NAME> (see 'fila queue create --help')"
    );
    let message = fila.run(&["lease", "q", "--ack", "--nack", "why"]).failed(2).to_owned();
    assert!(message.starts_with("the argument '--ack' cannot be used with '--nack <REASON>'"), "{message}");
    let message = fila.run(&["enqueue", "q", "x", "--file", "f"]).failed(2).to_owned();
    assert!(message.contains("cannot be used with"), "{message}");
    let message = fila.run(&["enqueue", "q", "-H", "novalue", "x"]).failed(2).to_owned();
    assert!(message.contains("expected KEY=VALUE"), "{message}");
    let message = fila.run(&["enqueue", "q", "--file", "/nonexistent/payload"]).failed(2).to_owned();
    assert!(message.starts_with("cannot read the payload file /nonexistent/payload"), "{message}");
    // Nothing reached the broker.
    assert_eq!(fila.json(&["queue", "list"]), serde_json::json!([]));
}

#[tokio::test]
async fn an_unreachable_broker_exits_3() {
    let addr = dead_addr();
    let fila = Fila::at(addr.clone());
    for args in [
        &["queue", "list"][..],
        &["queue", "create", "q"],
        &["queue", "update", "q", "--quantum", "2"],
        &["enqueue", "q", "x"],
        &["lease", "q", "--limit", "1"],
        &["config", "list"],
        &["throttle", "set", "k", "--rate", "1"],
        &["weight", "clear", "q", "k"],
        &["redrive", "q"],
        &["peek", "q"],
        &["explain", "q", "--key", "k"],
        &["stats", "q"],
        &["stats", "q", "--watch"],
    ] {
        let run = fila.run(args);
        assert_eq!(run.failed(3), format!("cannot reach the broker at {addr} (is fila-server running?)"));
    }
    let message = Fila::at("http://bad host").run(&["queue", "list"]).failed(2).to_owned();
    assert!(message.starts_with("'http://bad host' is not a valid broker address"), "{message}");
}
