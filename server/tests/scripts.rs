//! Lua queue scripts through the real binary over gRPC, hostile ones
//! included.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_delivery, next_delivery, TestServer};
use fila_sdk::proto::test_script_response::Outcome;
use fila_sdk::{Client, Code, LeaseOptions, NewMessage, QueueOptions, QueueScripts, ScriptTest};

const WAIT: Duration = Duration::from_secs(5);

const ROUTING: &str = r#"
wants_payload = true
function on_enqueue(msg)
  local order = fila.json_decode(msg.payload)
  local tier = fila.get("tier." .. order.tenant) or "free"
  local weight = 1
  if tier == "gold" then weight = 5 end
  return {
    fairness_key = order.tenant,
    weight = weight,
    throttle_keys = { "provider:" .. msg.headers["provider"] },
  }
end
"#;

fn on_enqueue(source: &str) -> QueueScripts {
    QueueScripts { on_enqueue: Some(source.to_owned()), on_failure: None }
}

async fn test(client: &Client, script: ScriptTest) -> Outcome {
    client.test_script(script).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_enqueue_assigns_keys_from_headers_payload_and_runtime_config() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue_with_scripts("orders", QueueOptions::default(), on_enqueue(ROUTING)).await.unwrap();
    let order =
        |tenant: &str| NewMessage::new("orders", format!(r#"{{"tenant":"{tenant}"}}"#)).header("provider", "stripe");

    client.enqueue(order("acme")).await.unwrap();
    client.set_config("tier.acme", "gold").await.unwrap();
    client.enqueue(order("acme")).await.unwrap();

    let mut stream = client.lease("orders", LeaseOptions::default()).await.unwrap();
    let first = next_delivery(&mut stream, WAIT).await;
    assert_eq!((first.fairness_key.as_str(), first.weight), ("acme", 1));
    assert_eq!(first.throttle_keys, ["provider:stripe"]);
    let second = next_delivery(&mut stream, WAIT).await;
    assert_eq!(second.weight, 5, "fila.get saw the config change without a restart");

    let (_, stats, _) = client.queue_scripts("orders").await.unwrap();
    let stats = stats.expect("on_enqueue stats");
    assert_eq!((stats.calls, stats.errors, stats.breaker.as_str()), (2, 0, "closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scripts_are_refused_with_lua_s_message_and_create_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let syntax = "function on_enqueue(msg)\n  return {\n    fairness_key = = 1\n  }\nend";
    let err = client.create_queue_with_scripts("q", QueueOptions::default(), on_enqueue(syntax)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains(":3:"), "names the line: {err}");
    let err = client.create_queue_with_scripts("q", QueueOptions::default(), on_enqueue("x = 1")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("on_enqueue"), "{err}");
    assert!(client.list_queues().await.unwrap().is_empty(), "nothing was created");

    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let err = client.update_queue_scripts("q", Some(syntax), None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let (scripts, _, _) = client.queue_scripts("q").await.unwrap();
    assert_eq!(scripts, QueueScripts::default(), "a refused update changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_replaced_at_runtime_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(NewMessage::new("q", "before").fairness_key("p")).await.unwrap();
    let pin = r#"function on_enqueue(msg) return { fairness_key = "pinned" } end"#;
    client.update_queue_scripts("q", Some(pin), None).await.unwrap();
    client.enqueue(NewMessage::new("q", "after").fairness_key("p")).await.unwrap();
    server.restart().await;
    let client = server.client().await;
    client.enqueue(NewMessage::new("q", "restarted").fairness_key("p")).await.unwrap();

    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut stream, WAIT).await;
        keys.push((String::from_utf8(d.payload.to_vec()).unwrap(), d.fairness_key));
    }
    keys.sort();
    assert_eq!(
        keys,
        [("after".into(), "pinned".into()), ("before".into(), "p".into()), ("restarted".into(), "pinned".into())],
        "the new script applies to later messages only, and persists"
    );
    client.update_queue_scripts("q", Some(""), None).await.unwrap();
    assert_eq!(client.queue_scripts("q").await.unwrap().0, QueueScripts::default(), "an empty script removes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_script_is_stopped_its_breaker_opens_and_no_message_is_lost() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let spin = "function on_enqueue(msg) while true do end end";
    client.create_queue_with_scripts("q", QueueOptions::default(), on_enqueue(spin)).await.unwrap();
    let started = Instant::now();
    for i in 0..5 {
        client.enqueue(NewMessage::new("q", format!("{i}")).fairness_key("tenant").throttle_key("t")).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "each call was cut off at its budget: {:?}", started.elapsed());
    let (_, stats, _) = client.queue_scripts("q").await.unwrap();
    let stats = stats.unwrap();
    assert_eq!(stats.timeouts, 3, "three timeouts open the breaker: {stats:?}");
    assert_eq!((stats.skipped, stats.breaker.as_str()), (2, "open"));

    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    for _ in 0..5 {
        let d = next_delivery(&mut stream, WAIT).await;
        assert_eq!(d.fairness_key, "default", "safe defaults apply");
        assert!(d.throttle_keys.is_empty());
        client.ack(&d.lease_token).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_chooses_delayed_retry_or_dead_letter() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let policy = r#"
function on_failure(msg, attempts, error)
  if attempts >= 2 then return { action = "dlq" } end
  return { action = "retry", delay_ms = 700 }
end"#;
    let scripts = QueueScripts { on_enqueue: None, on_failure: Some(policy.into()) };
    client.create_queue_with_scripts("q", QueueOptions::default(), scripts).await.unwrap();
    client.enqueue(NewMessage::new("q", "x")).await.unwrap();
    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    // Timed from before the call: the server starts the delay when it takes
    // the nack, which may be a fraction of a millisecond before the reply lands.
    let nacked = Instant::now();
    client.nack(&d.lease_token, "first").await.unwrap();
    let d = next_delivery(&mut stream, WAIT).await;
    assert!(nacked.elapsed() >= Duration::from_millis(700), "retried after {:?}", nacked.elapsed());
    client.nack(&d.lease_token, "second").await.unwrap();
    assert_no_delivery(&mut stream, Duration::from_millis(300)).await;
    let mut dead = client.lease("q.dlq", LeaseOptions::default()).await.unwrap();
    let d = next_delivery(&mut dead, WAIT).await;
    assert_eq!((d.attempt, d.last_error.as_str()), (3, "second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_blocks_every_escape() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for escape in [
        r#"io.open("/etc/passwd")"#,
        r#"os.execute("true")"#,
        r#"require("socket")"#,
        r#"load("return 1")()"#,
        r#"loadstring("return 1")()"#,
        r#"dofile("/etc/passwd")"#,
        r#"debug.getinfo(1)"#,
        r#"string.dump(on_enqueue)"#,
        r#"package.loadlib("libc.so.6", "system")"#,
        r#"collectgarbage("count")"#,
    ] {
        let source = format!("function on_enqueue(msg) {escape} return {{}} end");
        let outcome = test(&client, ScriptTest { on_enqueue: Some(source), ..Default::default() }).await;
        let Outcome::Error(error) = outcome else { panic!("{escape} was not blocked: {outcome:?}") };
        assert!(error.message.contains("on_enqueue"), "{escape}: {}", error.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_can_be_tried_against_a_sample_without_a_queue() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let sample = ScriptTest {
        on_enqueue: Some(ROUTING.into()),
        queue: "orders".into(),
        headers: [("provider".to_string(), "adyen".to_string())].into(),
        payload: r#"{"tenant":"globex"}"#.into(),
        config: [("tier.globex".to_string(), "gold".to_string())].into(),
        ..Default::default()
    };
    let Outcome::Enqueue(decision) = test(&client, sample).await else { panic!("expected a decision") };
    assert_eq!(decision.fairness_key.as_deref(), Some("globex"));
    assert_eq!(decision.weight, Some(5));
    assert_eq!(decision.throttle_keys, ["provider:adyen"]);

    let memory_bomb =
        "function on_enqueue(msg) local t = {} while true do t[#t+1] = string.rep('x', 100000) .. #t end end";
    let Outcome::Error(error) =
        test(&client, ScriptTest { on_enqueue: Some(memory_bomb.into()), ..Default::default() }).await
    else {
        panic!("the memory bomb was not stopped")
    };
    assert!(error.message.contains("memory"), "{}", error.message);

    let failure = ScriptTest {
        on_failure: Some("function on_failure(msg, attempts, err) return nil end".into()),
        attempts: 3,
        ..Default::default()
    };
    let Outcome::Failure(decision) = test(&client, failure).await else { panic!("expected a decision") };
    assert_eq!(decision.action, "default");
    assert!(client.list_queues().await.unwrap().is_empty(), "trying a script creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_queue_s_script_cannot_touch_another_s() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let writer = r#"function on_enqueue(msg) shared = "leaked"; string.upper = nil; return {} end"#;
    let reader = r#"function on_enqueue(msg)
  return { fairness_key = (shared or "clean") .. "-" .. string.upper("ok") }
end"#;
    client.create_queue_with_scripts("a", QueueOptions::default(), on_enqueue(writer)).await.unwrap();
    client.create_queue_with_scripts("b", QueueOptions::default(), on_enqueue(reader)).await.unwrap();
    client.enqueue(NewMessage::new("a", "x")).await.unwrap();
    client.enqueue(NewMessage::new("b", "x")).await.unwrap();
    let mut stream = client.lease("b", LeaseOptions::default()).await.unwrap();
    assert_eq!(next_delivery(&mut stream, WAIT).await.fairness_key, "clean-OK");
}
