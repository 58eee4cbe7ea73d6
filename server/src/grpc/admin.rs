//! `fila.v1.FilaAdmin`: queue administration.

use fila_proto::v1 as pb;
use fila_proto::v1::fila_admin_server::FilaAdmin;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use crate::broker::Broker;

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
        let visibility_timeout_ms = req.settings.map_or(0, |s| s.visibility_timeout_ms);
        let info = self.broker.create_queue(&req.name, visibility_timeout_ms).await.map_err(to_status)?;
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
        let after = Some(req.page_token).filter(|t| !t.is_empty());
        let page = self.broker.list_queues(after, req.page_size).await.map_err(to_status)?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: page.queues.into_iter().map(convert::queue_info).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }
}
