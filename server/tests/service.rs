//! Serving concerns: health, reflection, graceful shutdown, restarts.

mod common;

use std::time::Duration;

use common::{next_delivery, TestServer};
use fila_sdk::{LeaseOptions, NewMessage, QueueOptions};
use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const WAIT: Duration = Duration::from_secs(5);

async fn channel(server: &TestServer) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checking_and_reflection_are_served() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "fila.v1.FilaService", "fila.v1.FilaAdmin"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"fila.v1.FilaService".to_string()), "{names:?}");
    assert!(names.contains(&"fila.v1.FilaAdmin".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_everything() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch = (0..100).map(|i| NewMessage::new("q", format!("m{i}"))).collect();
    client.enqueue_batch(batch).await.unwrap();
    // An open stream must not keep the server from stopping.
    let mut stream =
        client.lease("q", LeaseOptions { max_in_flight: Some(1), visibility_timeout: None }).await.unwrap();
    next_delivery(&mut stream, WAIT).await;

    let status = server.terminate();
    assert!(status.success(), "clean exit, got {status}");
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "the stream ended: {end:?}");

    server.spawn().await;
    let client = server.client().await;
    let queues = client.list_queues().await.unwrap();
    assert_eq!(queues[0].depth, 100, "the leased message is ready again after the restart");
    let mut stream =
        client.lease("q", LeaseOptions { max_in_flight: Some(200), visibility_timeout: None }).await.unwrap();
    for _ in 0..100 {
        let d = next_delivery(&mut stream, WAIT).await;
        assert_eq!(d.attempt, 1, "a lease cut short by a restart is not a failed attempt");
        client.ack(&d.lease_token).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_in_flight_at_a_crash_become_deliverable_and_old_tokens_go_stale() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let id = client.enqueue(NewMessage::new("q", "x").fairness_key("k")).await.unwrap();
    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let before = next_delivery(&mut stream, WAIT).await;
    drop(stream);

    server.restart().await;
    let client = server.client().await;
    let err = client.ack(&before.lease_token).await.unwrap_err();
    assert_eq!(err.code(), Some(fila_sdk::Code::FailedPrecondition), "{err}");
    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    let after = next_delivery(&mut stream, WAIT).await;
    assert_eq!((after.id.as_str(), after.fairness_key.as_str()), (id.as_str(), "k"));
    client.ack(&after.lease_token).await.unwrap();

    server.restart().await;
    let client = server.client().await;
    assert_eq!(client.list_queues().await.unwrap()[0].depth, 0, "acked messages stay gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_mode_serves_the_same_lifecycle() {
    let mut server = TestServer::start_with(&["--sync-writes"]).await;
    let client = server.client().await;
    client.create_queue("q", QueueOptions::default()).await.unwrap();
    let batch = (0..50).map(|i| NewMessage::new("q", format!("m{i}"))).collect();
    client.enqueue_batch(batch).await.unwrap();
    server.restart().await;
    let client = server.client().await;
    let mut stream = client.lease("q", LeaseOptions::default()).await.unwrap();
    for _ in 0..50 {
        let d = next_delivery(&mut stream, WAIT).await;
        client.ack(&d.lease_token).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fila.toml");
    std::fs::write(&file, "max_batch = \"lots\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fila-server"))
        .args(["--config", file.to_str().unwrap(), "--data-dir", dir.path().join("data").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fila.toml is invalid") && stderr.contains("max_batch"), "{stderr}");
}

#[test]
fn a_taken_port_fails_the_start_once_before_the_data_directory_is_touched() {
    for flag in ["--listen", "--metrics-listen"] {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (taken_addr, free_addr) = (taken.local_addr().unwrap().to_string(), free.local_addr().unwrap().to_string());
        drop(free);
        let other = if flag == "--listen" { "--metrics-listen" } else { "--listen" };
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let output = std::process::Command::new(common::server_binary())
            .args([flag, &taken_addr, other, &free_addr, "--data-dir", data_dir.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag}: {stderr}");
        assert_eq!(stderr.matches(&format!("on {taken_addr}: Address already in use")).count(), 1, "{flag}: {stderr}");
        assert!(!stderr.contains('\x1b'), "{flag}: colours in a log that is not a terminal: {stderr}");
        assert!(!data_dir.exists(), "{flag}: the data directory was created");
    }
}
