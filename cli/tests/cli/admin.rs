//! config, throttle, weight and redrive.

use fila_testkit::TestServer;
use serde_json::json;

use crate::{wait_for_queue, Fila};

#[tokio::test]
async fn config_set_get_list_delete() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    assert_eq!(fila.ok(&["config", "set", "tenant.acme.tier", "gold"]), "set 'tenant.acme.tier'\n");
    fila.ok(&["config", "set", "tenant.zeta.tier", "silver"]);
    fila.ok(&["config", "set", "other", "x y"]);
    assert_eq!(fila.ok(&["config", "get", "tenant.acme.tier"]), "gold\n");
    assert_eq!(fila.json(&["config", "get", "other"]), json!({ "key": "other", "value": "x y" }));

    let table = fila.ok(&["config", "list", "tenant."]);
    assert_eq!(table, "KEY               VALUE\ntenant.acme.tier  gold\ntenant.zeta.tier  silver\n");
    let all = fila.json(&["config", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[0], json!({ "key": "other", "value": "x y" }));
    assert_eq!(fila.ok(&["config", "list", "nothing."]), "no configuration entries starting with 'nothing.'\n");

    assert_eq!(fila.ok(&["config", "delete", "other"]), "deleted 'other'\n");
    assert_eq!(fila.run(&["config", "get", "other"]).failed(1), "configuration key 'other' is not set");
    assert_eq!(fila.run(&["config", "delete", "other"]).failed(1), "configuration key 'other' is not set");
    let run = fila.run(&["config", "get", "other", "-o", "json"]);
    assert_eq!((run.failed(1), run.stdout.as_str()), ("configuration key 'other' is not set", ""));
}

#[tokio::test]
async fn throttle_set_list_delete() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    assert_eq!(fila.ok(&["throttle", "list"]), "no throttles\n");
    assert_eq!(
        fila.ok(&["throttle", "set", "provider:smtp", "--rate", "0.5", "--burst", "5"]),
        "throttle 'provider:smtp' set to 0.5/s (burst 5)\n"
    );
    let set = fila.json(&["throttle", "set", "p2", "--rate", "100"]);
    assert_eq!(
        (set["key"].as_str(), set["rate_per_second"].as_f64(), set["burst"].as_f64()),
        (Some("p2"), Some(100.0), Some(100.0))
    );

    let table = fila.ok(&["throttle", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "KEY             RATE  BURST  TOKENS  BLOCKED", "{table}");
    assert_eq!(lines[1], "p2             100/s    100     100        0", "{table}");
    assert_eq!(lines[2], "provider:smtp  0.5/s      5       5        0", "{table}");

    // A throttle with no tokens holds a message back, and says so.
    fila.ok(&["throttle", "set", "slow", "--rate", "0.01", "--burst", "1"]);
    fila.ok(&["queue", "create", "q"]);
    fila.json(&["enqueue", "q", "x", "--throttle-key", "slow", "--count", "2"]);
    assert_eq!(fila.json_lines(&["lease", "q", "--ack", "--limit", "1"]).len(), 1);
    let slow =
        fila.json(&["throttle", "list"]).as_array().unwrap().iter().find(|t| t["key"] == "slow").cloned().unwrap();
    assert!(slow["tokens"].as_f64().unwrap() < 1.0, "{slow}");

    let one = fila.json(&["throttle", "get", "provider:smtp"]);
    assert_eq!((one["rate_per_second"].as_f64(), one["burst"].as_f64()), (Some(0.5), Some(5.0)));
    assert_eq!(fila.run(&["throttle", "get", "nope"]).failed(1), "throttle key 'nope' has no rate set");

    assert_eq!(fila.ok(&["throttle", "delete", "p2"]), "removed the limit of throttle 'p2'\n");
    assert_eq!(fila.run(&["throttle", "delete", "p2"]).failed(1), "throttle key 'p2' has no rate set");
    let keys: Vec<String> =
        fila.json(&["throttle", "list"]).as_array().unwrap().iter().map(|t| t["key"].to_string()).collect();
    assert_eq!(keys, ["\"provider:smtp\"", "\"slow\""]);
}

#[tokio::test]
async fn throttle_values_are_checked_before_the_broker() {
    let fila = Fila::at(crate::dead_addr());
    for (args, expected) in [
        (&["throttle", "set", "k", "--rate", "0"][..], "must be more than 0"),
        (&["throttle", "set", "k", "--rate", "fast"], "expected deliveries per second"),
        (&["throttle", "set", "k", "--rate", "1", "--burst", "0.5"], "must be at least 1"),
        (&["throttle", "set", "k"], "--rate <PER_SECOND>"),
    ] {
        let message = fila.run(args).failed(2).to_owned();
        assert!(message.contains(expected), "fila {args:?}: {message}");
    }
}

#[tokio::test]
async fn weight_overrides_show_in_stats() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "orders"]);
    fila.ok(&["enqueue", "orders", "x", "--fairness-key", "acme"]);
    assert_eq!(
        fila.ok(&["weight", "set", "orders", "acme", "5"]),
        "fairness key 'acme' of queue 'orders' now has weight 5\n"
    );
    let key = &fila.json(&["stats", "orders"])["keys"][0];
    assert_eq!((key["weight"].as_u64(), key["weight_overridden"].as_bool()), (Some(5), Some(true)));
    let human = fila.ok(&["stats", "orders"]);
    assert!(human.contains("* weight set by an operator"), "{human}");

    let cleared = fila.json(&["weight", "clear", "orders", "acme"]);
    assert_eq!(cleared, json!({ "queue": "orders", "fairness_key": "acme", "weight": null }));
    let key = &fila.json(&["stats", "orders"])["keys"][0];
    assert_eq!((key["weight"].as_u64(), key["weight_overridden"].as_bool()), (Some(1), Some(false)));

    assert_eq!(fila.run(&["weight", "set", "nope", "acme", "2"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["weight", "set", "orders", "acme", "0"]).failed(2).to_owned();
    assert!(message.contains("0 is not in 1..=1000000"), "{message}");
}

#[tokio::test]
async fn redrive_moves_dead_letters_back() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "jobs", "--max-attempts", "1"]);
    fila.json(&["enqueue", "jobs", "x", "--count", "3"]);
    fila.ok(&["lease", "jobs", "--nack", "broken", "--limit", "3"]);
    wait_for_queue(&fila, "jobs.dlq", "three dead letters", |q| q["depth"] == 3);
    assert_eq!(fila.json(&["stats", "jobs"])["dead_letters"], 3);

    assert_eq!(fila.ok(&["redrive", "jobs", "--max", "1"]), "moved 1 message from 'jobs.dlq' back to 'jobs'\n");
    assert_eq!(fila.json(&["redrive", "jobs"]), json!({ "queue": "jobs", "moved": 2 }));
    assert_eq!(fila.inspect("jobs")["depth"], 3);
    assert_eq!(fila.inspect("jobs.dlq")["depth"], 0);
    let peeked = fila.json_lines(&["peek", "jobs"]);
    assert!(peeked.iter().all(|m| m["attempt"] == 1), "{peeked:?}");

    assert_eq!(fila.run(&["redrive", "nope"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["redrive", "jobs", "--max", "0"]).failed(2).to_owned();
    assert!(message.starts_with("invalid value '0' for '--max <N>'"), "{message}");
}
