//! The Prometheus scrape endpoint: `GET /metrics` on its own port, in the
//! Prometheus text format.

use std::future::Future;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

/// Serves `registry` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                // Collecting runs the instruments' callbacks: off the async
                // workers.
                let body = tokio::task::spawn_blocking(move || render(&registry)).await.unwrap_or_default();
                ([(CONTENT_TYPE, TextEncoder::new().format_type().to_owned())], body)
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

fn render(registry: &prometheus::Registry) -> String {
    let mut text = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut text) {
        tracing::warn!(%error, "cannot encode metrics for Prometheus");
    }
    String::from_utf8(text).unwrap_or_default()
}
