//! `fila.v1.FilaService`: the hot path.

use std::pin::Pin;

use fila_proto::v1 as pb;
use fila_proto::v1::fila_service_server::FilaService;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::{to_item_error, to_status};
use crate::broker::{Broker, ConsumerEvent, ExtendItem, NackItem};

pub struct HotPathApi {
    broker: Broker,
}

impl HotPathApi {
    pub fn new(broker: Broker) -> Self {
        HotPathApi { broker }
    }
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FilaService for HotPathApi {
    async fn enqueue(&self, request: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let messages = request.into_inner().messages.into_iter().map(convert::new_message).collect();
        let results = self.broker.enqueue(messages).await.map_err(to_status)?;
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
        let req = request.into_inner();
        let subscription =
            self.broker.subscribe(&req.queue, req.max_in_flight, req.visibility_timeout_ms).await.map_err(to_status)?;
        // The subscription lives inside the stream: when the client goes
        // away tonic drops the stream, which unsubscribes the consumer.
        let stream = futures::stream::unfold(subscription, |mut sub| async move {
            let item = match sub.events.recv().await? {
                ConsumerEvent::Deliveries(deliveries) => deliveries
                    .into_iter()
                    .map(convert::delivery)
                    .collect::<Result<Vec<_>, _>>()
                    .map(|deliveries| pb::LeaseResponse { deliveries })
                    .map_err(to_status),
                ConsumerEvent::Closed(reason) => Err(to_status(reason)),
            };
            Some((item, sub))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let results = self.broker.ack(request.into_inner().lease_tokens).await.map_err(to_status)?;
        let results = results.iter().map(|r| pb::AckResult { error: r.as_ref().err().map(to_item_error) }).collect();
        Ok(Response::new(pb::AckResponse { results }))
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<Response<pb::NackResponse>, Status> {
        let items =
            request.into_inner().items.into_iter().map(|i| NackItem { token: i.lease_token, error: i.error }).collect();
        let results = self.broker.nack(items).await.map_err(to_status)?;
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
