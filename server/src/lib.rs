//! Fila: a message broker in which fair scheduling and per-key throttling
//! are decided by the broker at dequeue time.
//!
//! Layers, from the inside out: `domain` (vocabulary and errors), `storage`
//! (RocksDB behind a trait), `broker` (the single-threaded scheduler),
//! `grpc` (thin transport adapters) and `server` (wiring); `telemetry`
//! turns what the broker reports into OpenTelemetry metrics and traces.

pub mod broker;
pub mod config;
pub mod domain;
mod fast_map;
pub mod grpc;
pub mod scripting;
pub mod server;
pub mod storage;
pub mod telemetry;

/// mimalloc instead of glibc's malloc, for the broker and everything built
/// on this crate (its tests and benches measure what the binary runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
