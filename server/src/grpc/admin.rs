//! `fila.v1.FilaAdmin`: queue administration.

use fila_proto::v1 as pb;
use fila_proto::v1::fila_admin_server::FilaAdmin;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use crate::broker::{Broker, ExplainSubject, ScriptTest, TestedHook, WireSettingsUpdate};
use crate::domain::ValidationError;

pub struct AdminApi {
    broker: Broker,
}

impl AdminApi {
    pub fn new(broker: Broker) -> Self {
        AdminApi { broker }
    }
}

#[tonic::async_trait]
impl FilaAdmin for AdminApi {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let req = request.into_inner();
        let settings = req.settings.unwrap_or_default();
        let scripts = convert::script_sources(req.scripts.unwrap_or_default());
        let info = self
            .broker
            .create_queue(
                &req.name,
                settings.visibility_timeout_ms,
                settings.quantum,
                settings.max_attempts,
                settings.max_payload_bytes,
                scripts,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateQueueResponse { queue: Some(convert::queue_info(info)) }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let deleted_messages = self.broker.delete_queue(&request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(pb::DeleteQueueResponse { deleted_messages }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let req = request.into_inner();
        let after = page_after(req.page_token);
        let page = self.broker.list_queues(after, req.page_size).await.map_err(to_status)?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: page.queues.into_iter().map(convert::queue_info).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self.broker.queue_stats(&req.queue, req.max_keys).await.map_err(to_status)?;
        Ok(Response::new(convert::queue_stats(stats)))
    }

    async fn set_fairness_weight(
        &self,
        request: Request<pb::SetFairnessWeightRequest>,
    ) -> Result<Response<pb::SetFairnessWeightResponse>, Status> {
        let req = request.into_inner();
        let weight = Some(req.weight).filter(|&w| w > 0);
        self.broker.set_fairness_weight(&req.queue, &req.fairness_key, weight).await.map_err(to_status)?;
        Ok(Response::new(pb::SetFairnessWeightResponse {}))
    }

    async fn set_throttle(
        &self,
        request: Request<pb::SetThrottleRequest>,
    ) -> Result<Response<pb::SetThrottleResponse>, Status> {
        let req = request.into_inner();
        let info =
            self.broker.set_throttle(&req.throttle_key, req.rate_per_second, req.burst).await.map_err(to_status)?;
        Ok(Response::new(pb::SetThrottleResponse { throttle: Some(convert::throttle_info(info)) }))
    }

    async fn remove_throttle(
        &self,
        request: Request<pb::RemoveThrottleRequest>,
    ) -> Result<Response<pb::RemoveThrottleResponse>, Status> {
        self.broker.remove_throttle(&request.into_inner().throttle_key).await.map_err(to_status)?;
        Ok(Response::new(pb::RemoveThrottleResponse {}))
    }

    async fn list_throttles(
        &self,
        request: Request<pb::ListThrottlesRequest>,
    ) -> Result<Response<pb::ListThrottlesResponse>, Status> {
        let req = request.into_inner();
        let after = page_after(req.page_token);
        let page = self.broker.list_throttles(after, req.page_size).await.map_err(to_status)?;
        Ok(Response::new(pb::ListThrottlesResponse {
            throttles: page.throttles.into_iter().map(convert::throttle_info).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }

    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let req = request.into_inner();
        self.broker.set_config(&req.key, req.value).await.map_err(to_status)?;
        Ok(Response::new(pb::SetConfigResponse {}))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let value = self.broker.get_config(&request.into_inner().key).await.map_err(to_status)?;
        Ok(Response::new(pb::GetConfigResponse { value }))
    }

    async fn list_config(
        &self,
        request: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        let req = request.into_inner();
        let after = page_after(req.page_token);
        let page = self.broker.list_config(req.prefix, after, req.page_size).await.map_err(to_status)?;
        Ok(Response::new(pb::ListConfigResponse {
            entries: page.entries.into_iter().map(|(key, value)| pb::ConfigEntry { key, value }).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }

    async fn delete_config(
        &self,
        request: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        self.broker.delete_config(&request.into_inner().key).await.map_err(to_status)?;
        Ok(Response::new(pb::DeleteConfigResponse {}))
    }

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<Response<pb::RedriveResponse>, Status> {
        let req = request.into_inner();
        let moved = self.broker.redrive(&req.queue, req.max_messages).await.map_err(to_status)?;
        Ok(Response::new(pb::RedriveResponse { moved }))
    }

    async fn get_queue(&self, request: Request<pb::GetQueueRequest>) -> Result<Response<pb::GetQueueResponse>, Status> {
        let (info, scripts) = self.broker.get_queue(&request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(convert::queue_info(info)),
            scripts: Some(pb::QueueScripts {
                on_enqueue: scripts.sources.on_enqueue.unwrap_or_default(),
                on_failure: scripts.sources.on_failure.unwrap_or_default(),
            }),
            on_enqueue_stats: scripts.on_enqueue.map(convert::hook_stats),
            on_failure_stats: scripts.on_failure.map(convert::hook_stats),
        }))
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let req = request.into_inner();
        let update = WireSettingsUpdate {
            visibility_timeout_ms: req.visibility_timeout_ms,
            quantum: req.quantum,
            max_attempts: req.max_attempts,
            max_payload_bytes: req.max_payload_bytes,
            on_enqueue: req.on_enqueue_script,
            on_failure: req.on_failure_script,
        };
        let info = self.broker.update_queue(&req.name, update).await.map_err(to_status)?;
        Ok(Response::new(pb::UpdateQueueResponse { queue: Some(convert::queue_info(info)) }))
    }

    async fn peek(&self, request: Request<pb::PeekRequest>) -> Result<Response<pb::PeekResponse>, Status> {
        let req = request.into_inner();
        let key = Some(req.fairness_key).filter(|k| !k.is_empty());
        let peeked = self.broker.peek(&req.queue, key, req.limit).await.map_err(to_status)?;
        let messages = peeked
            .into_iter()
            .map(|m| convert::message(&m.queue, m.record, None))
            .collect::<Result<_, _>>()
            .map_err(to_status)?;
        Ok(Response::new(pb::PeekResponse { messages }))
    }

    async fn explain(&self, request: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainResponse>, Status> {
        let req = request.into_inner();
        let subject = match req.subject {
            Some(pb::explain_request::Subject::FairnessKey(key)) => ExplainSubject::FairnessKey(key),
            Some(pb::explain_request::Subject::MessageId(id)) => {
                ExplainSubject::Message(id.parse().map_err(|_| to_status(ValidationError::BadMessageId { id }.into()))?)
            }
            None => return Err(to_status(ValidationError::NothingToExplain.into())),
        };
        let explanation = self.broker.explain(&req.queue, subject).await.map_err(to_status)?;
        Ok(Response::new(convert::explanation(explanation)))
    }

    async fn test_script(
        &self,
        request: Request<pb::TestScriptRequest>,
    ) -> Result<Response<pb::TestScriptResponse>, Status> {
        let req = request.into_inner();
        let hook = match req.script {
            Some(pb::test_script_request::Script::OnEnqueue(source)) => TestedHook::OnEnqueue(source),
            Some(pb::test_script_request::Script::OnFailure(source)) => TestedHook::OnFailure(source),
            None => return Err(to_status(ValidationError::NoScriptToTest.into())),
        };
        let test = ScriptTest {
            hook,
            queue: req.queue,
            headers: req.headers,
            payload: req.payload.into(),
            attempts: req.attempts,
            error: req.error,
            config: req.config,
        };
        let outcome = self.broker.test_script(test).await.map_err(to_status)?;
        Ok(Response::new(pb::TestScriptResponse { outcome: Some(convert::script_test_outcome(outcome)) }))
    }

    async fn purge(&self, request: Request<pb::PurgeRequest>) -> Result<Response<pb::PurgeResponse>, Status> {
        let purged = self.broker.purge(&request.into_inner().queue).await.map_err(to_status)?;
        Ok(Response::new(pb::PurgeResponse { purged }))
    }

    async fn get_throttle(
        &self,
        request: Request<pb::GetThrottleRequest>,
    ) -> Result<Response<pb::GetThrottleResponse>, Status> {
        let info = self.broker.get_throttle(&request.into_inner().throttle_key).await.map_err(to_status)?;
        Ok(Response::new(pb::GetThrottleResponse { throttle: Some(convert::throttle_info(info)) }))
    }
}

/// A request's page token as "continue after this name" (empty = from the
/// start).
fn page_after(token: String) -> Option<String> {
    Some(token).filter(|t| !t.is_empty())
}
