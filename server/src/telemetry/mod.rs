//! Telemetry: OpenTelemetry metrics (scraped by Prometheus and/or pushed
//! over OTLP) and traces (OTLP). Logs are `tracing`, set up in `main`.

mod metrics;
mod prometheus;
mod series;
mod traces;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Meter, MeterProvider, NoopMeterProvider};
use opentelemetry::trace::TracerProvider;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

pub use self::metrics::{DeliveryMetrics, MetricsObserver};
pub use self::prometheus::serve as serve_prometheus;
pub use self::series::OVERFLOW_LABEL;
pub use self::traces::{ActiveSpan, Tracing, TRACEPARENT};
use crate::broker::observer::{NoObserver, Observer};
use crate::domain::message::MessageRecord;

const SERVICE_NAME: &str = "fila-server";
const SCOPE: &str = "fila";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where the Prometheus endpoint listens; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector endpoint (e.g. `http://localhost:4317`) for
    /// metrics and traces; `None` = no export.
    pub otlp_endpoint: Option<String>,
    pub otlp_metrics_interval: Duration,
    /// Most labelled series per fairness-key (and per throttle-key) metric.
    pub max_key_series: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// The configured providers, and handles for the parts of the server that
/// record telemetry.
pub struct Telemetry {
    meters: Option<SdkMeterProvider>,
    tracers: Option<SdkTracerProvider>,
    registry: Option<::prometheus::Registry>,
    meter: Meter,
    max_key_series: usize,
    pub tracing: Tracing,
}

impl Telemetry {
    /// Sets up the exporters. Call inside the Tokio runtime (the OTLP
    /// exporters run on it).
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
        let failed = |e: &dyn std::fmt::Display| TelemetryError {
            endpoint: config.otlp_endpoint.clone().unwrap_or_default(),
            message: e.to_string(),
        };
        let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());
        let mut metrics_on = false;
        let registry = match config.metrics_listen {
            Some(_) => {
                let registry = ::prometheus::Registry::new();
                let exporter =
                    opentelemetry_prometheus::exporter().with_registry(registry.clone()).build().map_err(|e| {
                        TelemetryError { endpoint: "the Prometheus registry".into(), message: e.to_string() }
                    })?;
                meters = meters.with_reader(exporter);
                metrics_on = true;
                Some(registry)
            }
            None => None,
        };
        let mut tracers = None;
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| failed(&e))?;
            meters = meters
                .with_reader(PeriodicReader::builder(exporter).with_interval(config.otlp_metrics_interval).build());
            metrics_on = true;
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| failed(&e))?;
            tracers = Some(SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(spans).build());
        }
        let meters = metrics_on.then(|| meters.build());
        let meter = match &meters {
            Some(provider) => provider.meter(SCOPE),
            None => NoopMeterProvider::new().meter(SCOPE),
        };
        let tracing = Tracing::new(tracers.as_ref().map(|p| p.tracer(SCOPE)));
        Ok(Telemetry { meters, tracers, registry, meter, max_key_series: config.max_key_series, tracing })
    }

    /// What the scheduler reports to: the metrics, or nowhere when they are
    /// off (then it skips the work of counting). Fails only if the metrics
    /// thread cannot be started.
    pub fn observer(&self) -> Result<Box<dyn Observer>, String> {
        Ok(match self.meters {
            Some(_) => Box::new(MetricsObserver::new(&self.meter, self.max_key_series)?),
            None => Box::new(NoObserver),
        })
    }

    /// Instruments for the gRPC layer (no-ops when metrics are off).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The registry the Prometheus endpoint serves, if it is on.
    pub fn prometheus_registry(&self) -> Option<::prometheus::Registry> {
        self.registry.clone()
    }

    /// Exports what is still buffered and stops the exporters.
    pub fn shutdown(self) {
        if let Some(tracers) = self.tracers {
            if let Err(error) = tracers.shutdown() {
                tracing::warn!(%error, "could not flush traces at shutdown");
            }
        }
        if let Some(meters) = self.meters {
            if let Err(error) = meters.shutdown() {
                tracing::warn!(%error, "could not flush metrics at shutdown");
            }
        }
    }
}

/// What the hot-path gRPC adapter records: spans and delivery latency.
#[derive(Clone)]
pub struct HotPathTelemetry {
    pub tracing: Tracing,
    deliveries: DeliveryMetrics,
}

impl HotPathTelemetry {
    /// A message is on its way to a consumer whose Lease call carried
    /// `consumer` as trace context.
    pub fn delivered(&self, consumer: &Context, queue: &Arc<str>, record: &MessageRecord, leased_at: SystemTime) {
        self.deliveries.delivered(queue, leased_at.duration_since(record.ready_at()).unwrap_or_default());
        if self.tracing.is_on() {
            let id = record.message_id().map(|id| id.to_string()).unwrap_or_default();
            self.tracing.deliver(consumer, queue, &id, &record.fairness_key, &record.headers);
        }
    }
}

impl Telemetry {
    pub fn hot_path(&self) -> HotPathTelemetry {
        HotPathTelemetry { tracing: self.tracing.clone(), deliveries: DeliveryMetrics::new(&self.meter) }
    }
}
