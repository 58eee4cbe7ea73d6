//! `rpc.server.call.duration`: every gRPC call, by method and status, timed
//! from request to the end of the response (a Lease stream's whole life).
//!
//! A tower layer around all services, so no handler has to remember it.
//! The status is read where gRPC puts it: the response headers for an
//! immediate error, else the trailers at the end of the body; a body
//! dropped before its end (the client went away) counts as CANCELLED.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;
use prost::Message;
use tonic::Code;

/// Method label of calls to a method this server does not have, so
/// arbitrary request paths cannot create series.
const OTHER_METHOD: &str = "_OTHER";
const DURATION_BUCKETS: &[f64] =
    &[1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

#[derive(Clone)]
pub struct RpcMetricsLayer {
    duration: Histogram<f64>,
    /// `package.Service/Method` of every method served.
    methods: Arc<HashSet<Arc<str>>>,
}

impl RpcMetricsLayer {
    pub fn new(meter: &Meter) -> Self {
        let mut methods: HashSet<Arc<str>> = methods_of(fila_proto::FILE_DESCRIPTOR_SET).collect();
        for extra in [
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            methods.insert(Arc::from(extra));
        }
        RpcMetricsLayer {
            duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("gRPC calls served, by method and status; streams count when they end.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            methods: Arc::new(methods),
        }
    }

    fn method(&self, path: &str) -> Arc<str> {
        let name = path.strip_prefix('/').unwrap_or(path);
        self.methods.get(name).cloned().unwrap_or_else(|| Arc::from(OTHER_METHOD))
    }
}

/// Every `package.Service/Method` in an encoded descriptor set.
fn methods_of(descriptor_set: &[u8]) -> impl Iterator<Item = Arc<str>> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set).unwrap_or_default();
    set.file.into_iter().flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let prefix = format!("{package}.{}", service.name());
            service.method.into_iter().map(move |m| Arc::from(format!("{prefix}/{}", m.name())))
        })
    })
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TimedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call {
            method: self.layer.method(request.uri().path()),
            started: Instant::now(),
            duration: self.layer.duration.clone(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = status_in(response.headers());
            let (parts, body) = response.into_parts();
            let mut body = TimedBody { inner: body, call: Some(call) };
            if let Some(code) = status {
                body.finish(code);
            }
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

struct Call {
    method: Arc<str>,
    started: Instant,
    duration: Histogram<f64>,
}

impl Call {
    fn record(self, code: Code) {
        let attributes = [
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("rpc.method", self.method),
            KeyValue::new("rpc.response.status_code", code_name(code)),
        ];
        self.duration.record(self.started.elapsed().as_secs_f64(), &attributes);
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from(value))
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status is known.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for TimedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.record(Code::Cancelled);
            }
        }
    }
}

impl<B> TimedBody<B> {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.record(code);
        }
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    if let Some(call) = this.call.take() {
                        call.record(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.record(Code::Internal);
                }
            }
            // Ended without trailers: nothing went wrong on our side.
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.record(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The status names gRPC and OpenTelemetry use (`OK`, `NOT_FOUND`, ...).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_served_methods_and_folds_the_rest() {
        let layer = RpcMetricsLayer::new(&opentelemetry::metrics::MeterProvider::meter(
            &opentelemetry::metrics::NoopMeterProvider::new(),
            "test",
        ));
        assert_eq!(&*layer.method("/fila.v1.FilaService/Enqueue"), "fila.v1.FilaService/Enqueue");
        assert_eq!(&*layer.method("/fila.v1.FilaAdmin/CreateQueue"), "fila.v1.FilaAdmin/CreateQueue");
        assert_eq!(&*layer.method("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        assert_eq!(&*layer.method("/fila.v1.FilaService/NoSuchThing"), OTHER_METHOD);
        assert_eq!(&*layer.method("/anything"), OTHER_METHOD);
    }
}
