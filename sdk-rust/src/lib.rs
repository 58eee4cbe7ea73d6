//! Rust client for the [Fila](https://example.invalid/fila) message broker.
//!
//! ```no_run
//! use futures::StreamExt;
//! # async fn demo() -> Result<(), fila_sdk::Error> {
//! let client = fila_sdk::Client::connect("http://127.0.0.1:5555").await?;
//! client.create_queue("orders", Default::default()).await?;
//! client.enqueue(fila_sdk::NewMessage::new("orders", "hello").fairness_key("tenant-a")).await?;
//! let mut deliveries = client.lease("orders", Default::default()).await?;
//! while let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     println!("{:?}", delivery.payload);
//!     client.ack(&delivery.lease_token).await?;
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;
mod types;

pub use client::{Client, LeaseStream};
pub use error::{Error, ItemError};
/// Explain states.
pub use fila_proto::v1::ExplainState;
pub use types::{
    Delivery, ExplainSubject, Explanation, KeyStats, LeaseOptions, Message, NewMessage, QueueInfo, QueueOptions,
    QueueScripts, QueueStats, ScriptTest, ThrottleInfo,
};

/// The generated wire types, for anything the idiomatic API does not cover.
pub use fila_proto::v1 as proto;
/// gRPC status codes, as used by [`Error`] and [`ItemError`].
pub use tonic::Code;
