//! Spans for the hot path, and W3C trace context carried in messages.
//!
//! A producer's trace context (gRPC metadata `traceparent`/`tracestate`)
//! is stored in each message's headers under the same names, so the
//! consumer that receives the message can link its span to the producer's.
//! With tracing on, the broker's own `send` span sits between them; with it
//! off, the producer's context is copied as is. A message that already
//! carries a `traceparent` header (set by the producer per message) keeps
//! it.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use super::metrics::{FAIRNESS_KEY, QUEUE};

/// The header (and metadata key) holding W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

fn system() -> KeyValue {
    KeyValue::new("messaging.system", "fila")
}

/// Creates spans when an OTLP endpoint is configured; otherwise only
/// propagates the callers' context.
#[derive(Clone, Default)]
pub struct Tracing {
    tracer: Option<SdkTracer>,
}

/// A span in progress (or, with tracing off, just the caller's context).
pub struct ActiveSpan {
    cx: Context,
}

impl Tracing {
    pub fn new(tracer: Option<SdkTracer>) -> Self {
        Tracing { tracer }
    }

    /// Whether spans are recorded (an OTLP endpoint is configured).
    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// The W3C trace context a caller sent (empty if none).
    pub fn extract(&self, carrier: &dyn Extractor) -> Context {
        TraceContextPropagator::new().extract(carrier)
    }

    /// Starts the span of one Enqueue call. `queue` is set when every
    /// message goes to the same queue.
    pub fn send(&self, parent: &Context, queue: Option<&str>, messages: usize) -> ActiveSpan {
        let Some(tracer) = &self.tracer else { return ActiveSpan { cx: parent.clone() } };
        let mut attributes = vec![
            system(),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.batch.message_count", messages as i64),
        ];
        let name = match queue {
            Some(queue) => {
                attributes.push(KeyValue::new(QUEUE, queue.to_owned()));
                format!("send {queue}")
            }
            None => "send".to_owned(),
        };
        let span = tracer.span_builder(name).with_kind(SpanKind::Producer).with_attributes(attributes);
        ActiveSpan { cx: parent.with_span(span.start_with_context(tracer, parent)) }
    }

    /// Starts the span of one Ack or Nack call (`operation` is `ack` or
    /// `nack`).
    pub fn settle(&self, parent: &Context, operation: &'static str, messages: usize) -> ActiveSpan {
        let Some(tracer) = &self.tracer else { return ActiveSpan { cx: parent.clone() } };
        let span = tracer
            .span_builder(operation)
            .with_kind(SpanKind::Server)
            .with_attributes([
                system(),
                KeyValue::new("messaging.operation.type", "settle"),
                KeyValue::new("messaging.operation.name", operation),
                KeyValue::new("messaging.batch.message_count", messages as i64),
            ])
            .start_with_context(tracer, parent);
        ActiveSpan { cx: parent.with_span(span) }
    }

    /// Records the delivery of one message to a consumer: a span under the
    /// consumer's Lease call, linked to the producer's context carried in
    /// the message.
    pub fn deliver(
        &self,
        consumer: &Context,
        queue: &str,
        message_id: &str,
        fairness_key: &str,
        headers: &HashMap<String, String>,
    ) {
        let Some(tracer) = &self.tracer else { return };
        let producer = self.extract(headers);
        let producer = producer.span().span_context().clone();
        let links = if producer.is_valid() { vec![Link::with_context(producer)] } else { Vec::new() };
        tracer
            .span_builder(format!("deliver {queue}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                system(),
                KeyValue::new("messaging.operation.type", "receive"),
                KeyValue::new(QUEUE, queue.to_owned()),
                KeyValue::new("messaging.message.id", message_id.to_owned()),
                KeyValue::new(FAIRNESS_KEY, fairness_key.to_owned()),
            ])
            .with_links(links)
            .start_with_context(tracer, consumer)
            .end();
    }
}

impl ActiveSpan {
    /// Writes this span's context (or the caller's) into a message's
    /// headers, unless the message carries its own.
    pub fn propagate_into(&self, headers: &mut HashMap<String, String>) {
        if !headers.contains_key(TRACEPARENT) {
            TraceContextPropagator::new().inject_context(&self.cx, headers);
        }
    }

    /// Ends the span; `error` marks it failed.
    pub fn end(self, error: Option<String>) {
        let span = self.cx.span();
        if let Some(message) = error {
            span.set_status(Status::error(message));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn carrier() -> HashMap<String, String> {
        HashMap::from([(TRACEPARENT.to_owned(), PARENT.to_owned())])
    }

    #[test]
    fn without_tracing_the_callers_context_is_copied_into_messages() {
        let tracing = Tracing::default();
        let parent = tracing.extract(&carrier());
        let span = tracing.send(&parent, Some("q"), 2);
        let mut headers = HashMap::new();
        span.propagate_into(&mut headers);
        assert_eq!(headers.get(TRACEPARENT).map(String::as_str), Some(PARENT));

        let mut own = HashMap::from([(TRACEPARENT.to_owned(), "00-mine".to_owned())]);
        span.propagate_into(&mut own);
        assert_eq!(own[TRACEPARENT], "00-mine", "a message's own context wins");
        span.end(None);
    }

    #[test]
    fn without_any_context_nothing_is_added() {
        let tracing = Tracing::default();
        let span = tracing.send(&Context::new(), None, 1);
        let mut headers = HashMap::new();
        span.propagate_into(&mut headers);
        assert!(headers.is_empty());
    }
}
