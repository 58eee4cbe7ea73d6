//! `fila.v1.FilaService`: the hot path.

use std::pin::Pin;

use fila_proto::v1 as pb;
use fila_proto::v1::fila_service_server::FilaService;
use futures::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::{to_item_error, to_status};
use crate::broker::{Broker, ConsumerEvent, ExtendItem, NackItem};
use crate::domain::BrokerError;
use crate::telemetry::HotPathTelemetry;

pub struct HotPathApi {
    broker: Broker,
    telemetry: HotPathTelemetry,
}

impl HotPathApi {
    pub fn new(broker: Broker, telemetry: HotPathTelemetry) -> Self {
        HotPathApi { broker, telemetry }
    }

    /// The W3C trace context in a call's metadata.
    fn trace_context(&self, metadata: &MetadataMap) -> opentelemetry::Context {
        self.telemetry.tracing.extract(&MetadataExtractor(metadata))
    }
}

/// Reads trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The failure a span records, if the whole call failed.
fn span_error<T>(result: &Result<T, BrokerError>) -> Option<String> {
    result.as_ref().err().map(ToString::to_string)
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FilaService for HotPathApi {
    async fn enqueue(&self, request: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let parent = self.trace_context(request.metadata());
        let mut messages: Vec<_> = request.into_inner().messages.into_iter().map(convert::new_message).collect();
        let queue = messages.first().map(|m| m.queue.as_str()).filter(|q| messages.iter().all(|m| m.queue == *q));
        let span = self.telemetry.tracing.send(&parent, queue, messages.len());
        for message in &mut messages {
            span.propagate_into(&mut message.headers);
        }
        let results = self.broker.enqueue(messages).await;
        span.end(span_error(&results));
        let results = results.map_err(to_status)?;
        let results = results
            .into_iter()
            .map(|r| pb::EnqueueResult {
                result: Some(match r {
                    Ok(id) => pb::enqueue_result::Result::MessageId(id.to_string()),
                    Err(e) => pb::enqueue_result::Result::Error(to_item_error(&e)),
                }),
            })
            .collect();
        Ok(Response::new(pb::EnqueueResponse { results }))
    }

    type LeaseStream = LeaseStream;

    async fn lease(&self, request: Request<pb::LeaseRequest>) -> Result<Response<LeaseStream>, Status> {
        let consumer = self.trace_context(request.metadata());
        let req = request.into_inner();
        let subscription =
            self.broker.subscribe(&req.queue, req.max_in_flight, req.visibility_timeout_ms).await.map_err(to_status)?;
        let telemetry = self.telemetry.clone();
        // The subscription lives inside the stream: when the client goes
        // away tonic drops the stream, which unsubscribes the consumer.
        let stream = futures::stream::unfold(subscription, move |mut sub| {
            let (telemetry, consumer) = (telemetry.clone(), consumer.clone());
            async move {
                let item = match sub.recv().await? {
                    ConsumerEvent::Deliveries(deliveries) => deliveries
                        .into_iter()
                        .map(|d| {
                            let record = convert::record(d.record.clone())?;
                            telemetry.delivered(&consumer, &d.queue, &record, d.leased_at);
                            Ok(convert::delivery(&d, record))
                        })
                        .collect::<Result<Vec<_>, BrokerError>>()
                        .map(|deliveries| pb::LeaseResponse { deliveries })
                        .map_err(to_status),
                    ConsumerEvent::Closed(reason) => Err(to_status(reason)),
                };
                Some((item, sub))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let parent = self.trace_context(request.metadata());
        let tokens = request.into_inner().lease_tokens;
        let span = self.telemetry.tracing.settle(&parent, "ack", tokens.len());
        let results = self.broker.ack(tokens).await;
        span.end(span_error(&results));
        let results = results.map_err(to_status)?;
        let results = results.iter().map(|r| pb::AckResult { error: r.as_ref().err().map(to_item_error) }).collect();
        Ok(Response::new(pb::AckResponse { results }))
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<Response<pb::NackResponse>, Status> {
        let parent = self.trace_context(request.metadata());
        let items: Vec<_> =
            request.into_inner().items.into_iter().map(|i| NackItem { token: i.lease_token, error: i.error }).collect();
        let span = self.telemetry.tracing.settle(&parent, "nack", items.len());
        let results = self.broker.nack(items).await;
        span.end(span_error(&results));
        let results = results.map_err(to_status)?;
        let results = results.iter().map(|r| pb::NackResult { error: r.as_ref().err().map(to_item_error) }).collect();
        Ok(Response::new(pb::NackResponse { results }))
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let items = request
            .into_inner()
            .extensions
            .into_iter()
            .map(|e| ExtendItem { token: e.lease_token, visibility_timeout_ms: e.visibility_timeout_ms })
            .collect();
        let results = self.broker.extend(items).await.map_err(to_status)?;
        let results = results
            .into_iter()
            .map(|r| pb::ExtendLeaseResult {
                result: Some(match r {
                    Ok(deadline) => pb::extend_lease_result::Result::LeaseDeadline(convert::timestamp(deadline)),
                    Err(e) => pb::extend_lease_result::Result::Error(to_item_error(&e)),
                }),
            })
            .collect();
        Ok(Response::new(pb::ExtendLeaseResponse { results }))
    }
}
