//! Runtime configuration through the real binary over gRPC.

mod common;

use common::TestServer;
use fila_sdk::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_set_read_listed_by_prefix_and_deleted() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.set_config("tenant.acme.tier", "gold").await.unwrap();
    client.set_config("tenant.beta.tier", "free").await.unwrap();
    client.set_config("tenant.acme.limit", "50").await.unwrap();
    client.set_config("other", "x").await.unwrap();
    client.set_config("tenant.acme.tier", "platinum").await.unwrap();

    assert_eq!(client.get_config("tenant.acme.tier").await.unwrap().as_deref(), Some("platinum"));
    assert_eq!(client.get_config("missing").await.unwrap(), None);
    let acme = client.list_config("tenant.acme.").await.unwrap();
    assert_eq!(acme, vec![("tenant.acme.limit".into(), "50".into()), ("tenant.acme.tier".into(), "platinum".into())]);
    assert_eq!(client.list_config("").await.unwrap().len(), 4);

    client.delete_config("other").await.unwrap();
    let err = client.delete_config("other").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("configuration key 'other' is not set"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_pages_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..250 {
        client.set_config(&format!("k.{i:03}"), &i.to_string()).await.unwrap();
    }
    server.restart().await;
    let client = server.client().await;
    let all = client.list_config("k.").await.unwrap();
    assert_eq!(all.len(), 250, "three pages of 100 followed");
    assert_eq!(all[249], ("k.249".to_string(), "249".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_requests_are_refused_and_write_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = client.set_config("", "v").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let err = client.set_config("k", &"v".repeat(64 * 1024 + 1)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(client.list_config("").await.unwrap().is_empty());
}
