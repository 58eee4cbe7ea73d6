//! Lua scripts: queue create/update/inspect with scripts, and lua test.

use std::path::PathBuf;

use fila_testkit::TestServer;
use serde_json::json;

use crate::Fila;

const ROUTE: &str = "-- route by tenant\nfunction on_enqueue(msg)\n  local tier = fila.get('tier.' .. (msg.headers.tenant or ''))\n  return { fairness_key = msg.headers.tenant or 'anon', weight = tier == 'gold' and 3 or 1 }\nend\n";
const RETRY: &str = "function on_failure(msg, attempts, err)\n  if attempts < 3 then return { action = 'retry', delay_ms = 1500 } end\n  return { action = 'dlq' }\nend\n";
/// A syntax error on line 3.
const BROKEN: &str = "function on_enqueue(msg)\n  local x =\n  return {}\nend\n";
/// Fails when it runs, on line 2.
const RAISES: &str = "function on_enqueue(msg)\n  error('no tenant')\nend\n";

fn script(dir: &tempfile::TempDir, name: &str, source: &str) -> String {
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, source).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn queues_get_scripts_and_show_their_counters() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    let dir = tempfile::tempdir().unwrap();
    let (route, retry, broken) =
        (script(&dir, "route.lua", ROUTE), script(&dir, "retry.lua", RETRY), script(&dir, "broken.lua", BROKEN));

    assert_eq!(
        fila.ok(&["queue", "create", "orders", "--on-enqueue", &route, "--quantum", "2"]),
        "created queue 'orders' (visibility timeout 30s, quantum 2, max attempts 10, with an on_enqueue script)\n"
    );
    fila.ok(&["enqueue", "orders", "x", "-H", "tenant=acme"]);
    assert_eq!(fila.json_lines(&["peek", "orders"])[0]["fairness_key"], "acme");

    let human = fila.ok(&["queue", "inspect", "orders"]);
    let summary = format!("\non_enqueue          5 lines, {} B: -- route by tenant\n", ROUTE.len());
    assert!(human.contains(&summary), "{human}");
    assert!(human.contains("\n                    1 calls, 0 errors, 0 bad returns"), "{human}");
    assert!(human.contains("breaker closed\non_failure          none\n"), "{human}");
    let inspected = fila.inspect("orders");
    assert_eq!(inspected["scripts"], json!({ "on_enqueue": ROUTE, "on_failure": null }));
    assert_eq!(inspected["hooks"]["on_enqueue"]["calls"], 1);
    assert_eq!(inspected["hooks"]["on_failure"], json!(null));
    assert_eq!(inspected["quantum"], 2);

    // A syntax error is refused with Lua's line number, and nothing changes.
    let message = fila.run(&["queue", "create", "bad", "--on-enqueue", &broken]).failed(1).to_owned();
    assert!(message.contains(":3:"), "line number: {message}");
    assert_eq!(fila.run(&["queue", "inspect", "bad"]).failed(1), "queue 'bad' does not exist");
    let message = fila.run(&["queue", "update", "orders", "--on-enqueue", &broken]).failed(1).to_owned();
    assert!(message.contains(":3:"), "line number: {message}");
    assert_eq!(fila.inspect("orders")["scripts"]["on_enqueue"], ROUTE);

    assert_eq!(
        fila.ok(&["queue", "update", "orders", "--on-failure", &retry, "--remove-on-enqueue", "--max-attempts", "4"]),
        "updated queue 'orders': max attempts 4, on_enqueue script removed, on_failure script replaced\n"
    );
    let inspected = fila.inspect("orders");
    assert_eq!(inspected["scripts"], json!({ "on_enqueue": null, "on_failure": RETRY }));
    assert_eq!((inspected["max_attempts"].as_u64(), inspected["quantum"].as_u64()), (Some(4), Some(2)));
    let updated = fila.json(&["queue", "update", "orders", "--visibility-timeout", "5m", "--quantum", "7"]);
    assert_eq!((updated["visibility_timeout_ms"].as_u64(), updated["quantum"].as_u64()), (Some(300_000), Some(7)));

    assert_eq!(fila.run(&["queue", "update", "nope", "--quantum", "2"]).failed(1), "queue 'nope' does not exist");
    let message = fila.run(&["queue", "update", "orders"]).failed(2).to_owned();
    assert!(message.contains("--quantum <N>") && message.contains("fila queue update --help"), "{message}");
    let message =
        fila.run(&["queue", "update", "orders", "--on-enqueue", &route, "--remove-on-enqueue"]).failed(2).to_owned();
    assert!(message.contains("cannot be used with"), "{message}");
    let message = fila.run(&["queue", "create", "q2", "--on-failure", "/nonexistent.lua"]).failed(2).to_owned();
    assert!(message.starts_with("cannot read the script file /nonexistent.lua"), "{message}");
}

#[tokio::test]
async fn lua_test_prints_decisions() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    let dir = tempfile::tempdir().unwrap();
    let (route, retry) = (script(&dir, "route.lua", ROUTE), script(&dir, "retry.lua", RETRY));

    assert_eq!(
        fila.ok(&["lua", "test", "--on-enqueue", &route, "-H", "tenant=acme", "--config", "tier.acme=gold"]),
        "on_enqueue decided:\n  fairness key   acme\n  weight         3\n  throttle keys  (unchanged: the producer's)\n"
    );
    let json = fila.json(&["lua", "test", "--on-enqueue", &route, "-H", "tenant=acme"]);
    assert_eq!(
        json,
        json!({ "hook": "on_enqueue", "decision": { "fairness_key": "acme", "weight": 1, "throttle_keys": null } })
    );

    assert_eq!(
        fila.ok(&["lua", "test", "--on-failure", &retry, "--attempts", "2", "--error", "timeout"]),
        "on_failure decided: retry after 1s 500ms\n"
    );
    let json = fila.json(&["lua", "test", "--on-failure", &retry, "--attempts", "3"]);
    assert_eq!(json, json!({ "hook": "on_failure", "decision": { "action": "dlq", "delay_ms": null } }));
}

#[tokio::test]
async fn lua_test_failures_exit_non_zero_with_the_line() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    let dir = tempfile::tempdir().unwrap();
    let (broken, raises) = (script(&dir, "broken.lua", BROKEN), script(&dir, "raises.lua", RAISES));

    let run = fila.run(&["lua", "test", "--on-enqueue", &broken]);
    let message = run.failed(1).to_owned();
    assert!(message.starts_with(&format!("{broken}: ")), "{message}");
    assert!(message.contains(":3:"), "line number: {message}");
    assert_eq!(run.stdout, "");

    let message = fila.run(&["lua", "test", "--on-enqueue", &raises, "-o", "json"]).failed(1).to_owned();
    assert!(message.contains(":2:") && message.contains("no tenant"), "{message}");

    // A script for the other hook lacks the function asked for.
    let message = fila.run(&["lua", "test", "--on-failure", &raises]).failed(1).to_owned();
    assert!(message.contains("on_failure"), "{message}");

    for (args, expected) in [
        (&["lua", "test"][..], "--on-enqueue <FILE>|--on-failure <FILE>"),
        (&["lua", "test", "--on-enqueue", "/nonexistent.lua"], "cannot read the script file /nonexistent.lua"),
        (&["lua", "test", "--on-enqueue", &raises, "--config", "novalue"], "expected KEY=VALUE"),
        (&["lua", "test", "--on-enqueue", &raises, "--attempts", "0"], "0 is not in 1.."),
        (&["lua", "test", "--on-enqueue", &raises, "--payload", "a", "--payload-file", "f"], "cannot be used with"),
    ] {
        let message = fila.run(args).failed(2).to_owned();
        assert!(message.contains(expected), "fila {args:?}: {message}");
    }
}
