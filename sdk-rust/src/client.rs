use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use fila_proto::v1 as pb;
use fila_proto::v1::fila_admin_client::FilaAdminClient;
use fila_proto::v1::fila_service_client::FilaServiceClient;
use futures::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::{Error, ItemError};
use crate::types::{
    system_time, Delivery, ExplainSubject, Explanation, LeaseOptions, Message, NewMessage, QueueInfo, QueueOptions,
    QueueScripts, QueueStats, ScriptTest, ThrottleInfo,
};

/// Frames may carry several large messages.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// A stream of deliveries, flattened from the broker's frames.
pub type LeaseStream = Pin<Box<dyn Stream<Item = Result<Delivery, Error>> + Send>>;

/// A connection to a broker. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    service: FilaServiceClient<Channel>,
    admin: FilaAdminClient<Channel>,
}

fn single<T>(mut results: Vec<T>) -> Result<T, Error> {
    match (results.pop(), results.is_empty()) {
        (Some(only), true) => Ok(only),
        _ => Err(Error::Protocol("expected exactly one result".into())),
    }
}

fn item_result(error: Option<pb::ItemError>) -> Result<(), ItemError> {
    error.map_or(Ok(()), |e| Err(ItemError::from_proto(e)))
}

impl Client {
    /// Connects to a broker, for example `http://127.0.0.1:5555` (the scheme
    /// may be left out).
    pub async fn connect(addr: impl Into<String>) -> Result<Self, Error> {
        let mut addr = addr.into();
        if !addr.contains("://") {
            addr = format!("http://{addr}");
        }
        let channel = Endpoint::from_shared(addr)?.tcp_nodelay(true).connect().await?;
        Ok(Client {
            service: FilaServiceClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            admin: FilaAdminClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
        })
    }

    /// Enqueues one message; returns its id.
    pub async fn enqueue(&self, message: impl Into<NewMessage>) -> Result<String, Error> {
        Ok(single(self.enqueue_batch(vec![message.into()]).await?)??)
    }

    /// Enqueues many messages in one call; answers per message, in order.
    pub async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Result<Vec<Result<String, ItemError>>, Error> {
        let request = pb::EnqueueRequest { messages: messages.into_iter().map(NewMessage::into_proto).collect() };
        let response = self.service.clone().enqueue(request).await?.into_inner();
        response
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::enqueue_result::Result::MessageId(id)) => Ok(Ok(id)),
                Some(pb::enqueue_result::Result::Error(e)) => Ok(Err(ItemError::from_proto(e))),
                None => Err(Error::Protocol("enqueue result without outcome".into())),
            })
            .collect()
    }

    /// Opens a delivery stream. The broker pushes messages as they become
    /// ready, at most `max_in_flight` unacknowledged at once.
    pub async fn lease(&self, queue: &str, options: LeaseOptions) -> Result<LeaseStream, Error> {
        let request = pb::LeaseRequest {
            queue: queue.to_owned(),
            max_in_flight: options.max_in_flight.unwrap_or(0),
            visibility_timeout_ms: options.visibility_timeout.map_or(0, |d| d.as_millis() as u64),
        };
        let frames = self.service.clone().lease(request).await?.into_inner();
        let deliveries = futures::stream::unfold((frames, VecDeque::new()), |(mut frames, mut buffered)| async move {
            loop {
                if let Some(delivery) = buffered.pop_front() {
                    return Some((Ok(Delivery::from_proto(delivery)), (frames, buffered)));
                }
                match frames.message().await {
                    Ok(Some(frame)) => buffered.extend(frame.deliveries),
                    Ok(None) => return None,
                    Err(status) => return Some((Err(Error::Status(status)), (frames, buffered))),
                }
            }
        });
        Ok(Box::pin(deliveries))
    }

    /// Acknowledges one delivery.
    pub async fn ack(&self, lease_token: &str) -> Result<(), Error> {
        Ok(single(self.ack_batch(vec![lease_token.to_owned()]).await?)??)
    }

    /// Acknowledges many deliveries; answers per token, in order.
    pub async fn ack_batch(&self, lease_tokens: Vec<String>) -> Result<Vec<Result<(), ItemError>>, Error> {
        let response = self.service.clone().ack(pb::AckRequest { lease_tokens }).await?.into_inner();
        Ok(response.results.into_iter().map(|r| item_result(r.error)).collect())
    }

    /// Reports one failed delivery; the message becomes ready again.
    pub async fn nack(&self, lease_token: &str, error: &str) -> Result<(), Error> {
        Ok(single(self.nack_batch(vec![(lease_token.to_owned(), error.to_owned())]).await?)??)
    }

    /// Reports many failed deliveries as `(lease_token, error)` pairs.
    pub async fn nack_batch(&self, items: Vec<(String, String)>) -> Result<Vec<Result<(), ItemError>>, Error> {
        let items = items.into_iter().map(|(lease_token, error)| pb::NackItem { lease_token, error }).collect();
        let response = self.service.clone().nack(pb::NackRequest { items }).await?.into_inner();
        Ok(response.results.into_iter().map(|r| item_result(r.error)).collect())
    }

    /// Extends a lease to `timeout` from now (`None`: the timeout it was
    /// granted with); returns the new deadline.
    pub async fn extend_lease(&self, lease_token: &str, timeout: Option<Duration>) -> Result<SystemTime, Error> {
        let extension = pb::LeaseExtension {
            lease_token: lease_token.to_owned(),
            visibility_timeout_ms: timeout.map_or(0, |d| d.as_millis() as u64),
        };
        let response =
            self.service.clone().extend_lease(pb::ExtendLeaseRequest { extensions: vec![extension] }).await?;
        match single(response.into_inner().results)?.result {
            Some(pb::extend_lease_result::Result::LeaseDeadline(t)) => Ok(system_time(Some(t))),
            Some(pb::extend_lease_result::Result::Error(e)) => Err(ItemError::from_proto(e).into()),
            None => Err(Error::Protocol("extend result without outcome".into())),
        }
    }

    pub async fn create_queue(&self, name: &str, options: QueueOptions) -> Result<QueueInfo, Error> {
        self.create_queue_with_scripts(name, options, QueueScripts::default()).await
    }

    /// Deletes a queue and its messages; returns how many messages went.
    pub async fn delete_queue(&self, name: &str) -> Result<u64, Error> {
        let request = pb::DeleteQueueRequest { name: name.to_owned() };
        Ok(self.admin.clone().delete_queue(request).await?.into_inner().deleted_messages)
    }

    /// Lists all queues, following pages.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        collect_pages(|page_token| async move {
            let request = pb::ListQueuesRequest { page_size: 0, page_token };
            let page = self.admin.clone().list_queues(request).await?.into_inner();
            Ok((page.queues.into_iter().map(QueueInfo::from).collect(), page.next_page_token))
        })
        .await
    }

    /// A queue's counters and up to `max_keys` of its busiest fairness keys
    /// (`None`: the broker default, 100).
    pub async fn queue_stats(&self, queue: &str, max_keys: Option<u32>) -> Result<QueueStats, Error> {
        let request = pb::GetQueueStatsRequest { queue: queue.to_owned(), max_keys: max_keys.unwrap_or(0) };
        Ok(self.admin.clone().get_queue_stats(request).await?.into_inner().into())
    }

    /// Overrides a fairness key's weight; `None` removes the override.
    pub async fn set_fairness_weight(&self, queue: &str, fairness_key: &str, weight: Option<u32>) -> Result<(), Error> {
        let request = pb::SetFairnessWeightRequest {
            queue: queue.to_owned(),
            fairness_key: fairness_key.to_owned(),
            weight: weight.unwrap_or(0),
        };
        self.admin.clone().set_fairness_weight(request).await?;
        Ok(())
    }

    /// Sets a throttle key's rate (per second, fractional allowed) and burst
    /// (`None`: one second's worth, at least 1).
    pub async fn set_throttle(
        &self,
        key: &str,
        rate_per_second: f64,
        burst: Option<f64>,
    ) -> Result<ThrottleInfo, Error> {
        let request =
            pb::SetThrottleRequest { throttle_key: key.to_owned(), rate_per_second, burst: burst.unwrap_or(0.0) };
        let response = self.admin.clone().set_throttle(request).await?.into_inner();
        response.throttle.map(ThrottleInfo::from).ok_or_else(|| Error::Protocol("no throttle in answer".into()))
    }

    /// One throttle key's limit and live bucket; `None` if it has no limit.
    pub async fn get_throttle(&self, key: &str) -> Result<Option<ThrottleInfo>, Error> {
        let response = self.admin.clone().get_throttle(pb::GetThrottleRequest { throttle_key: key.to_owned() }).await;
        Ok(found(response)?.and_then(|r| r.into_inner().throttle.map(ThrottleInfo::from)))
    }

    /// Removes a throttle key's limit.
    pub async fn remove_throttle(&self, key: &str) -> Result<(), Error> {
        self.admin.clone().remove_throttle(pb::RemoveThrottleRequest { throttle_key: key.to_owned() }).await?;
        Ok(())
    }

    /// Lists all throttle keys with limits, following pages.
    pub async fn list_throttles(&self) -> Result<Vec<ThrottleInfo>, Error> {
        collect_pages(|page_token| async move {
            let request = pb::ListThrottlesRequest { page_size: 0, page_token };
            let page = self.admin.clone().list_throttles(request).await?.into_inner();
            Ok((page.throttles.into_iter().map(ThrottleInfo::from).collect(), page.next_page_token))
        })
        .await
    }

    /// Creates a queue with Lua scripts; a script that does not compile or
    /// lacks its hook function is refused (INVALID_ARGUMENT, Lua's message).
    pub async fn create_queue_with_scripts(
        &self,
        name: &str,
        options: QueueOptions,
        scripts: QueueScripts,
    ) -> Result<QueueInfo, Error> {
        let request = pb::CreateQueueRequest {
            name: name.to_owned(),
            settings: Some(pb::QueueSettings {
                visibility_timeout_ms: options.visibility_timeout.map_or(0, |d| d.as_millis() as u64),
                quantum: options.quantum.unwrap_or(0),
                max_attempts: options.max_attempts.unwrap_or(0),
                max_payload_bytes: options.max_payload_bytes.unwrap_or(0),
            }),
            scripts: Some(pb::QueueScripts {
                on_enqueue: scripts.on_enqueue.unwrap_or_default(),
                on_failure: scripts.on_failure.unwrap_or_default(),
            }),
        };
        let response = self.admin.clone().create_queue(request).await?.into_inner();
        response.queue.map(QueueInfo::from).ok_or_else(|| Error::Protocol("no queue in answer".into()))
    }

    /// Replaces a queue's scripts at runtime: `Some(source)` replaces,
    /// `Some("")` removes, `None` keeps.
    pub async fn update_queue_scripts(
        &self,
        name: &str,
        on_enqueue: Option<&str>,
        on_failure: Option<&str>,
    ) -> Result<QueueInfo, Error> {
        let request = pb::UpdateQueueRequest {
            name: name.to_owned(),
            on_enqueue_script: on_enqueue.map(str::to_owned),
            on_failure_script: on_failure.map(str::to_owned),
            ..Default::default()
        };
        let response = self.admin.clone().update_queue(request).await?.into_inner();
        response.queue.map(QueueInfo::from).ok_or_else(|| Error::Protocol("no queue in answer".into()))
    }

    /// A queue's scripts and the live counters of its hooks.
    pub async fn queue_scripts(
        &self,
        name: &str,
    ) -> Result<(QueueScripts, Option<pb::HookStats>, Option<pb::HookStats>), Error> {
        let response = self.admin.clone().get_queue(pb::GetQueueRequest { name: name.to_owned() }).await?.into_inner();
        let sources = response.scripts.unwrap_or_default();
        let scripts = QueueScripts {
            on_enqueue: Some(sources.on_enqueue).filter(|s| !s.is_empty()),
            on_failure: Some(sources.on_failure).filter(|s| !s.is_empty()),
        };
        Ok((scripts, response.on_enqueue_stats, response.on_failure_stats))
    }

    /// Runs a script once against a sample message, without a queue.
    pub async fn test_script(&self, test: ScriptTest) -> Result<pb::test_script_response::Outcome, Error> {
        use pb::test_script_request::Script;
        let script = match (test.on_enqueue, test.on_failure) {
            (Some(source), _) => Script::OnEnqueue(source),
            (None, Some(source)) => Script::OnFailure(source),
            (None, None) => return Err(Error::Protocol("give an on_enqueue or on_failure script to test".into())),
        };
        let request = pb::TestScriptRequest {
            script: Some(script),
            queue: test.queue,
            headers: test.headers,
            payload: test.payload.to_vec(),
            attempts: test.attempts,
            error: test.error,
            config: test.config,
        };
        let response = self.admin.clone().test_script(request).await?.into_inner();
        response.outcome.ok_or_else(|| Error::Protocol("no outcome in answer".into()))
    }

    /// One queue and its counters.
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        let response = self.admin.clone().get_queue(pb::GetQueueRequest { name: name.to_owned() }).await?.into_inner();
        response.queue.map(QueueInfo::from).ok_or_else(|| Error::Protocol("no queue in answer".into()))
    }

    /// Changes queue settings at runtime; `None` fields stay as they are.
    pub async fn update_queue(&self, name: &str, options: QueueOptions) -> Result<QueueInfo, Error> {
        let request = pb::UpdateQueueRequest {
            name: name.to_owned(),
            visibility_timeout_ms: options.visibility_timeout.map(|d| d.as_millis() as u64),
            quantum: options.quantum,
            max_attempts: options.max_attempts,
            max_payload_bytes: options.max_payload_bytes,
            on_enqueue_script: None,
            on_failure_script: None,
        };
        let response = self.admin.clone().update_queue(request).await?.into_inner();
        response.queue.map(QueueInfo::from).ok_or_else(|| Error::Protocol("no queue in answer".into()))
    }

    /// Up to `limit` ready messages of a queue (optionally one fairness key),
    /// without leasing them.
    pub async fn peek(&self, queue: &str, fairness_key: Option<&str>, limit: u32) -> Result<Vec<Message>, Error> {
        let request = pb::PeekRequest {
            queue: queue.to_owned(),
            fairness_key: fairness_key.unwrap_or_default().to_owned(),
            limit,
        };
        let response = self.admin.clone().peek(request).await?.into_inner();
        Ok(response.messages.into_iter().map(Message::from_proto).collect())
    }

    /// Why a fairness key or message is not being delivered right now.
    pub async fn explain(&self, queue: &str, subject: ExplainSubject<'_>) -> Result<Explanation, Error> {
        let subject = match subject {
            ExplainSubject::FairnessKey(k) => pb::explain_request::Subject::FairnessKey(k.to_owned()),
            ExplainSubject::Message(id) => pb::explain_request::Subject::MessageId(id.to_owned()),
        };
        let request = pb::ExplainRequest { queue: queue.to_owned(), subject: Some(subject) };
        Ok(Explanation::from_proto(self.admin.clone().explain(request).await?.into_inner()))
    }

    /// Moves up to `max_messages` (`None`: all) dead-lettered messages of
    /// `queue` back to it, with attempt counts reset; returns how many moved.
    pub async fn redrive(&self, queue: &str, max_messages: Option<u64>) -> Result<u64, Error> {
        let request = pb::RedriveRequest { queue: queue.to_owned(), max_messages: max_messages.unwrap_or(0) };
        Ok(self.admin.clone().redrive(request).await?.into_inner().moved)
    }

    /// Deletes every ready and delayed message of a queue (leased ones stay
    /// until acked or expired); returns how many went.
    pub async fn purge(&self, queue: &str) -> Result<u64, Error> {
        Ok(self.admin.clone().purge(pb::PurgeRequest { queue: queue.to_owned() }).await?.into_inner().purged)
    }

    /// Sets a runtime configuration value (read by scripts with `fila.get`).
    pub async fn set_config(&self, key: &str, value: &str) -> Result<(), Error> {
        let request = pb::SetConfigRequest { key: key.to_owned(), value: value.to_owned() };
        self.admin.clone().set_config(request).await?;
        Ok(())
    }

    /// Reads a configuration value; `None` if the key is not set.
    pub async fn get_config(&self, key: &str) -> Result<Option<String>, Error> {
        let response = self.admin.clone().get_config(pb::GetConfigRequest { key: key.to_owned() }).await;
        Ok(found(response)?.map(|r| r.into_inner().value))
    }

    /// Lists configuration entries whose key starts with `prefix`, following
    /// pages.
    pub async fn list_config(&self, prefix: &str) -> Result<Vec<(String, String)>, Error> {
        collect_pages(|page_token| async move {
            let request = pb::ListConfigRequest { prefix: prefix.to_owned(), page_size: 0, page_token };
            let page = self.admin.clone().list_config(request).await?.into_inner();
            Ok((page.entries.into_iter().map(|e| (e.key, e.value)).collect(), page.next_page_token))
        })
        .await
    }

    /// Deletes a configuration value.
    pub async fn delete_config(&self, key: &str) -> Result<(), Error> {
        self.admin.clone().delete_config(pb::DeleteConfigRequest { key: key.to_owned() }).await?;
        Ok(())
    }
}

/// A lookup's answer, with NOT_FOUND as `None`.
fn found<T>(response: Result<T, tonic::Status>) -> Result<Option<T>, Error> {
    match response {
        Ok(value) => Ok(Some(value)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// Fetches pages until the broker returns no next-page token.
async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Error>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Error>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = fetch(page_token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        page_token = next;
    }
}
