//! The fair-scheduling demo of the README, with `fila` alone.

use fila_testkit::TestServer;

use crate::Fila;

#[tokio::test]
async fn a_quiet_tenant_is_not_starved_by_a_noisy_one() {
    let server = TestServer::start().await;
    let fila = Fila::of(&server);
    fila.ok(&["queue", "create", "demo"]);
    // The noisy tenant enqueues first and sends 100 times more.
    let noisy = fila.json(&["enqueue", "demo", "noisy work", "--fairness-key", "noisy", "--count", "2000"]);
    assert_eq!(noisy["ids"].as_array().unwrap().len(), 2000);
    fila.json(&["enqueue", "demo", "quiet work", "--fairness-key", "quiet", "--count", "20"]);

    let deliveries = fila.json_lines(&["lease", "demo", "--limit", "40", "--ack"]);
    assert_eq!(deliveries.len(), 40);
    let quiet = deliveries.iter().filter(|d| d["fairness_key"] == "quiet").count();
    assert_eq!(quiet, 20, "every quiet message within the first 40 deliveries");

    let stats = fila.json(&["stats", "demo"]);
    assert_eq!(stats["depth"], 1980);
    assert_eq!(stats["keys"][0]["fairness_key"], "noisy");
    assert_eq!(stats["active_keys"], 1);
    // The broker's recent delivery rate saw the 20 noisy deliveries.
    assert!(stats["keys"][0]["delivery_rate"].as_f64().unwrap() > 0.0, "{stats}");
}
