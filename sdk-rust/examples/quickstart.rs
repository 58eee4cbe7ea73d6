//! Creates a queue, enqueues messages for two tenants, consumes and acks
//! them. Run a broker first (`cargo run --release -p fila-server`), then:
//!
//!     cargo run -p fila-sdk --example quickstart [ADDR]

use std::time::Duration;

use fila_sdk::{Client, Code, LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), fila_sdk::Error> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:5555".into());
    let client = Client::connect(addr).await?;

    match client.create_queue("quickstart", QueueOptions::default()).await {
        Err(e) if e.code() == Some(Code::AlreadyExists) => {}
        other => drop(other?),
    }

    let batch = (0..6)
        .map(|i| {
            let tenant = if i % 3 == 0 { "acme" } else { "globex" };
            NewMessage::new("quickstart", format!("job {i}")).fairness_key(tenant).header("kind", "demo")
        })
        .collect();
    for result in client.enqueue_batch(batch).await? {
        println!("enqueued {}", result?);
    }

    let options = LeaseOptions { max_in_flight: Some(10), visibility_timeout: Some(Duration::from_secs(30)) };
    let mut deliveries = client.lease("quickstart", options).await?;
    for _ in 0..6 {
        let Some(delivery) = deliveries.next().await else { break };
        let delivery = delivery?;
        println!(
            "got {} from {} (attempt {}): {}",
            delivery.id,
            delivery.fairness_key,
            delivery.attempt,
            String::from_utf8_lossy(&delivery.payload)
        );
        client.ack(&delivery.lease_token).await?;
    }
    Ok(())
}
