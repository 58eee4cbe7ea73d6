//! Wires storage, broker and gRPC together and runs until a signal.

use std::error::Error;

use fila_proto::v1::fila_admin_server::FilaAdminServer;
use fila_proto::v1::fila_service_server::FilaServiceServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::broker::{Broker, BrokerOptions};
use crate::config::ServerConfig;
use crate::domain::BrokerError;
use crate::grpc::{AdminApi, HotPathApi, RpcMetricsLayer};
use crate::storage::RocksStore;
use crate::telemetry::Telemetry;

/// Why the server stopped serving.
enum Stop {
    Signal,
    BrokerFailed(Option<BrokerError>),
}

/// Runs the broker until SIGINT/SIGTERM, then shuts down gracefully: stops
/// accepting, ends delivery streams, finishes in-flight calls, flushes and
/// closes the database.
pub async fn run(config: ServerConfig) -> Result<(), Box<dyn Error>> {
    // Listen first: a port that is taken fails the start before the data
    // directory is touched or the scheduler runs.
    let listener =
        TcpListener::bind(config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let listen = listener.local_addr()?;
    let metrics_listener = match config.telemetry.metrics_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?)
        }
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir.display()))?;
    let store = RocksStore::open(&config.data_dir, config.sync_writes)
        .map_err(|e| format!("cannot open data directory {}: {e}", config.data_dir.display()))?;
    let telemetry = Telemetry::start(&config.telemetry)?;
    let (broker, stopped) = Broker::start(
        store,
        BrokerOptions {
            limits: config.limits,
            script_limits: config.script_limits,
            message_buffer_bytes: config.message_buffer_bytes,
        },
        telemetry.observer()?,
    )?;

    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // Deliveries are small writes that must not wait for Nagle.
            let _ = stream.set_nodelay(true);
        })
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FilaServiceServer<HotPathApi>>().await;
    health.set_serving::<FilaAdminServer<AdminApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fila_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (metrics_stop, metrics_stopped) = oneshot::channel::<()>();
    let metrics_server = match (metrics_listener, telemetry.prometheus_registry()) {
        (Some(listener), Some(registry)) => {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            Some(tokio::spawn(crate::telemetry::serve_prometheus(listener, registry, async {
                let _ = metrics_stopped.await;
            })))
        }
        _ => None,
    };

    let (stop_tx, stop_rx) = oneshot::channel();
    let shutdown = {
        let broker = broker.clone();
        let health = health.clone();
        async move {
            let stop = tokio::select! {
                () = termination_signal() => Stop::Signal,
                outcome = stopped => Stop::BrokerFailed(outcome.ok().flatten()),
            };
            tracing::info!("shutting down: no new connections, ending delivery streams");
            health.set_not_serving::<FilaServiceServer<HotPathApi>>().await;
            broker.close_streams().await;
            let _ = stop_tx.send(stop);
        }
    };

    let max = config.max_request_bytes;
    tracing::info!(%listen, data_dir = %config.data_dir.display(), sync_writes = config.sync_writes, "fila-server is serving");
    tonic::transport::Server::builder()
        .layer(RpcMetricsLayer::new(telemetry.meter()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            FilaServiceServer::new(HotPathApi::new(broker.clone(), telemetry.hot_path()))
                .max_decoding_message_size(max),
        )
        .add_service(FilaAdminServer::new(AdminApi::new(broker.clone())).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = metrics_stop.send(());
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    // Flushing exporters blocks; keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;

    match stop_rx.await {
        Ok(Stop::BrokerFailed(error)) => {
            Err(error.map_or_else(|| "the scheduler stopped unexpectedly".to_string(), |e| e.to_string()).into())
        }
        _ => {
            broker.shutdown().await?;
            tracing::info!("fila-server stopped cleanly");
            Ok(())
        }
    }
}

async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
