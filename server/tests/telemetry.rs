//! Telemetry through the real binary: the Prometheus endpoint's output,
//! the cap on per-key series, and OTLP export of metrics and spans to a
//! receiver run by the test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{next_delivery, TestServer};
use fila_proto::v1 as pb;
use fila_sdk::{LeaseOptions, NewMessage, QueueOptions, QueueScripts};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
/// Longer than the scheduler's snapshot interval (1 s).
const SNAPSHOT_WAIT: Duration = Duration::from_millis(1300);

fn window(n: u32) -> LeaseOptions {
    LeaseOptions { max_in_flight: Some(n), visibility_timeout: None }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (what a scraper reads).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("malformed line: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("malformed value in: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("malformed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("malformed label in: {line}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

async fn scrape(server: &TestServer) -> Vec<Sample> {
    let addr = server.metrics_addr.as_ref().expect("metrics on");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    parse_exposition(body)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "expected one {name} with {labels:?}, found {found:?}");
    found[0].value
}

const Q: &str = "messaging_destination_name";

#[tokio::test]
async fn prometheus_endpoint_reports_the_broker() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let script = r#"
        function on_enqueue(msg)
          if msg.headers["boom"] then error("boom") end
          return { fairness_key = msg.headers["tenant"], throttle_keys = { "api" } }
        end
    "#;
    let scripts = QueueScripts { on_enqueue: Some(script.into()), on_failure: None };
    client.create_queue_with_scripts("jobs", QueueOptions::default(), scripts).await.unwrap();
    client.set_throttle("api", 1000.0, Some(1000.0)).await.unwrap();
    let mut batch: Vec<NewMessage> = Vec::new();
    for i in 0..20 {
        batch.push(NewMessage::new("jobs", "x").header("tenant", if i % 2 == 0 { "a" } else { "b" }));
    }
    batch.push(NewMessage::new("jobs", "x").header("boom", "1"));
    for result in client.enqueue_batch(batch).await.unwrap() {
        result.unwrap();
    }
    client.enqueue(NewMessage::new("jobs", "later").delay(Duration::from_secs(60))).await.unwrap();
    assert!(client.get_queue("missing").await.is_err());
    // Three backlogged keys of weight 1: each is owed a third.
    tokio::time::sleep(SNAPSHOT_WAIT).await;
    let m = scrape(&server).await;
    for k in ["a", "b", "default"] {
        let labels = [(Q, "jobs"), ("fila_fairness_key", k)];
        assert!((value(&m, "fila_fairness_share_fair_ratio", &labels) - 1.0 / 3.0).abs() < 1e-9);
    }

    let mut stream = client.lease("jobs", window(100)).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..21 {
        deliveries.push(next_delivery(&mut stream, WAIT).await);
    }
    // Nack the message whose script failed (key "default"), keep one
    // leased, ack the rest.
    let failed = deliveries.iter().position(|d| d.fairness_key == "default").expect("the boom message");
    client.nack(&deliveries.remove(failed).lease_token, "failed").await.unwrap();
    let tokens = deliveries.split_off(1).into_iter().map(|d| d.lease_token).collect();
    client.ack_batch(tokens).await.unwrap();
    next_delivery(&mut stream, WAIT).await;
    tokio::time::sleep(SNAPSHOT_WAIT).await;

    let m = scrape(&server).await;
    let jobs = [(Q, "jobs")];
    assert_eq!(value(&m, "fila_messages_enqueued_total", &jobs), 22.0);
    assert_eq!(value(&m, "fila_messages_acked_total", &jobs), 19.0);
    assert_eq!(value(&m, "fila_messages_nacked_total", &jobs), 1.0);
    // The nacked message comes back after its backoff (100 ms) and is
    // delivered again: 22 deliveries in all.
    assert_eq!(value(&m, "fila_messages_leased_total", &jobs), 22.0);
    assert_eq!(value(&m, "fila_messages_expired_total", &jobs), 0.0);
    assert_eq!(value(&m, "fila_queue_delayed", &jobs), 1.0);
    assert_eq!(value(&m, "fila_queue_in_flight", &jobs), 2.0);
    assert_eq!(value(&m, "fila_queue_ready", &jobs), 0.0);
    assert_eq!(value(&m, "fila_queue_consumers", &jobs), 1.0);
    assert_eq!(value(&m, "fila_queue_dead_letter_depth", &jobs), 0.0);
    let key = |k: &'static str| [(Q, "jobs"), ("fila_fairness_key", k)];
    assert_eq!(value(&m, "fila_fairness_deliveries_total", &key("a")), 10.0);
    assert_eq!(value(&m, "fila_fairness_deliveries_total", &key("b")), 10.0);
    assert_eq!(value(&m, "fila_fairness_deliveries_total", &key("default")), 2.0, "the failing script's default key");
    assert!(value(&m, "fila_drr_rounds_total", &jobs) >= 10.0);
    let api = [("fila_throttle_key", "api")];
    assert_eq!(value(&m, "fila_throttle_passes_total", &api), 20.0);
    assert_eq!(value(&m, "fila_throttle_blocks_total", &api), 0.0);
    assert!(value(&m, "fila_throttle_tokens", &api) > 900.0);
    let hook = [(Q, "jobs"), ("fila_script_hook", "on_enqueue")];
    assert_eq!(value(&m, "fila_script_duration_seconds_count", &hook), 22.0);
    let failed = [(Q, "jobs"), ("fila_script_hook", "on_enqueue"), ("error_type", "error")];
    assert_eq!(value(&m, "fila_script_failures_total", &failed), 1.0);
    assert_eq!(value(&m, "fila_script_breaker_state", &hook), 0.0);
    assert_eq!(value(&m, "fila_delivery_latency_seconds_count", &jobs), 22.0);
    assert!(value(&m, "fila_storage_commit_duration_seconds_count", &[]) >= 3.0);
    let enqueue = [("rpc_method", "fila.v1.FilaService/Enqueue"), ("rpc_response_status_code", "OK")];
    assert_eq!(value(&m, "rpc_server_call_duration_seconds_count", &enqueue), 2.0);
    let missing = [("rpc_method", "fila.v1.FilaAdmin/GetQueue"), ("rpc_response_status_code", "NOT_FOUND")];
    assert_eq!(value(&m, "rpc_server_call_duration_seconds_count", &missing), 1.0);
    // Histogram buckets are cumulative and end with +Inf = count.
    let inf = [(Q, "jobs"), ("le", "+Inf")];
    assert_eq!(value(&m, "fila_delivery_latency_seconds_bucket", &inf), 22.0);

    // Every series the Grafana dashboard queries exists.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/fila-dashboard.json"))
            .expect("the dashboard is in the repository");
    let label_names: std::collections::HashSet<&String> = m.iter().flat_map(|s| s.labels.keys()).collect();
    for name in metric_names_in(&dashboard).iter().filter(|n| !label_names.contains(n)) {
        assert!(m.iter().any(|s| &s.name == name), "the dashboard queries {name}, which the broker does not export");
    }
}

/// Metric and label names (`fila_...`, `rpc_...`) mentioned in a text.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["fila_", "rpc_"] {
        for (start, _) in text.match_indices(prefix) {
            if text[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    assert!(names.len() > 10, "found metric names: {names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_closed_stream_never_sent_are_counted_as_returned() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let options = QueueOptions { visibility_timeout: Some(Duration::from_secs(600)), ..Default::default() };
    client.create_queue("jobs", options).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 512 * 1024]);
    let messages = (0..30).map(|_| NewMessage::new("jobs", payload.clone())).collect();
    drop(common::stalled_reader(&client, "jobs", messages, 30).await);
    // Only returned deliveries can come back before their 10-minute leases end.
    let mut second = client.lease("jobs", window(30)).await.unwrap();
    let returned = common::deliveries_until_idle(&mut second, Duration::from_secs(2)).await.len();
    assert!(returned > 0);
    tokio::time::sleep(SNAPSHOT_WAIT).await;
    let m = scrape(&server).await;
    assert_eq!(value(&m, "fila_messages_returned_total", &[(Q, "jobs")]), returned as f64);
    assert_eq!(value(&m, "fila_messages_leased_total", &[(Q, "jobs")]), (30 + returned) as f64);
}

#[tokio::test]
async fn per_key_series_are_capped_and_the_rest_is_summed() {
    let server = TestServer::start_with(&["--metrics-max-keys", "5"]).await;
    let client = server.client().await;
    client.create_queue("wide", QueueOptions::default()).await.unwrap();
    let batch = (0..50).map(|i| NewMessage::new("wide", "x").fairness_key(format!("tenant-{i}"))).collect();
    for result in client.enqueue_batch(batch).await.unwrap() {
        result.unwrap();
    }
    let mut stream = client.lease("wide", window(100)).await.unwrap();
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(next_delivery(&mut stream, WAIT).await.lease_token);
    }
    client.ack_batch(tokens).await.unwrap();
    tokio::time::sleep(SNAPSHOT_WAIT).await;

    let m = scrape(&server).await;
    let series: Vec<&Sample> = m
        .iter()
        .filter(|s| s.name == "fila_fairness_deliveries_total" && s.labels.get(Q).map(String::as_str) == Some("wide"))
        .collect();
    assert_eq!(series.len(), 6, "5 keys of their own and one overflow series: {series:?}");
    let overflow = value(&m, "fila_fairness_deliveries_total", &[(Q, "wide"), ("fila_fairness_key", "_other")]);
    assert_eq!(overflow, 45.0);
    assert_eq!(series.iter().map(|s| s.value).sum::<f64>(), 50.0, "nothing is lost by folding");
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let server = TestServer::start_with(&["--metrics-listen", "off"]).await;
    assert!(server.metrics_addr.is_none());
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    client.enqueue(NewMessage::new("q", "x")).await.unwrap();
}

/// What the test's OTLP receiver got.
#[derive(Default)]
struct Received {
    metrics: Vec<ExportMetricsServiceRequest>,
    spans: Vec<Span>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().spans.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = self.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(receiver.clone()))
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }

    fn metric_names(&self) -> Vec<String> {
        let received = self.0.lock().unwrap();
        let scopes = received.metrics.iter().flat_map(|r| &r.resource_metrics).flat_map(|r| &r.scope_metrics);
        scopes.flat_map(|s| &s.metrics).map(|m| m.name.clone()).collect()
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().spans.clone()
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    })
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn otlp_export_carries_metrics_and_linked_spans() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let server = TestServer::start_with(&["--otlp-endpoint", &endpoint, "--otlp-metrics-interval-ms", "300"]).await;
    let client = server.client().await;
    client.create_queue("traced", QueueOptions::default()).await.unwrap();

    // A producer in trace PRODUCER_TRACE enqueues; its context goes in the
    // gRPC metadata as W3C traceparent.
    let mut raw = pb::fila_service_client::FilaServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let mut request = tonic::Request::new(pb::EnqueueRequest {
        messages: vec![pb::EnqueueMessage { queue: "traced".into(), payload: "x".into(), ..Default::default() }],
    });
    let traceparent = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    raw.enqueue(request).await.unwrap();

    let mut stream = client.lease("traced", window(10)).await.unwrap();
    let delivery = next_delivery(&mut stream, WAIT).await;
    // The message carries the broker's send span's context, in the
    // producer's trace.
    let carried = delivery.headers.get("traceparent").expect("trace context in the message").clone();
    let parts: Vec<&str> = carried.split('-').collect();
    assert_eq!((parts[0], parts[1]), ("00", PRODUCER_TRACE), "{carried}");
    assert_ne!(parts[2], PRODUCER_SPAN, "the broker's own span sits between producer and consumer");
    client.ack(&delivery.lease_token).await.unwrap();

    let spans = eventually("send, deliver and ack spans", || {
        let spans = receiver.spans();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        (names.contains(&"send traced") && names.contains(&"deliver traced") && names.contains(&"ack")).then_some(spans)
    })
    .await;
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let send = by_name["send traced"];
    assert_eq!(hex(&send.trace_id), PRODUCER_TRACE);
    assert_eq!(hex(&send.parent_span_id), PRODUCER_SPAN);
    assert_eq!(hex(&send.span_id), parts[2]);
    assert_eq!(attribute(&send.attributes, "messaging.system").as_deref(), Some("fila"));
    assert_eq!(attribute(&send.attributes, "messaging.destination.name").as_deref(), Some("traced"));
    assert_eq!(attribute(&send.attributes, "messaging.batch.message_count").as_deref(), Some("1"));
    let deliver = by_name["deliver traced"];
    assert_eq!(attribute(&deliver.attributes, "messaging.message.id").as_deref(), Some(delivery.id.as_str()));
    assert_eq!(deliver.links.len(), 1, "linked to the producer side");
    assert_eq!(hex(&deliver.links[0].trace_id), PRODUCER_TRACE);
    assert_eq!(hex(&deliver.links[0].span_id), parts[2]);
    assert_eq!(attribute(&by_name["ack"].attributes, "messaging.operation.type").as_deref(), Some("settle"));

    let names = eventually("exported metrics", || {
        let names = receiver.metric_names();
        names.iter().any(|n| n == "fila.messages.acked").then_some(names)
    })
    .await;
    for expected in [
        "fila.messages.enqueued",
        "fila.messages.leased",
        "fila.queue.ready",
        "fila.fairness.deliveries",
        "fila.delivery.latency",
        "fila.storage.commit.duration",
        "rpc.server.call.duration",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} not exported; got {names:?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
