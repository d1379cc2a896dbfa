//! Batch creation with model-scoped keys: every item's model must be allowed.

use std::sync::Arc;

use rampart_gateway::Gateway;
use rampart_gateway::keydir::KeyDirectory;
use serde_json::json;

use crate::harness::{TestStore, hasher, message, serve, settings, sim};

fn batch(items: &[(&str, &str)]) -> serde_json::Value {
    json!({
        "requests": items
            .iter()
            .map(|(id, model)| json!({"custom_id": id, "params": message(model)}))
            .collect::<Vec<_>>()
    })
}

#[tokio::test]
async fn a_scoped_keys_batch_with_an_out_of_scope_item_is_refused_naming_it() {
    let db = TestStore::new().await;
    let team = db.team("t").await;
    let (scoped, _) = db.key(&team, &["claude-haiku-*"]).await;
    let (open, _) = db.key(&team, &[]).await;
    let dir = Arc::new(KeyDirectory::new(hasher()));
    dir.refresh(&db).await.unwrap();
    let upstream = sim(None).await;
    let gw = serve(Gateway::new(settings(&upstream.url, Some("sk-ant-up")), dir).unwrap()).await;

    let mixed = batch(&[("first", "claude-haiku-4-5"), ("second", "claude-opus-4-1")]);
    let (status, body) = gw.post("/v1/messages/batches", &scoped, &mixed).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("second") && message.contains("claude-opus-4-1"),
        "{message}"
    );
    assert!(!message.contains("echo: hi"), "never the prompt");

    let (status, body) = gw
        .post(
            "/v1/messages/batches",
            &scoped,
            &batch(&[("a", "claude-haiku-4-5")]),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (200, Some("message_batch")),
        "{body}"
    );
    let (status, _) = gw.post("/v1/messages/batches", &open, &mixed).await;
    assert_eq!(status, 200, "a key without model scopes is not checked");
    let malformed = json!({"requests": {"a": 1}});
    let (status, body) = gw.post("/v1/messages/batches", &scoped, &malformed).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let ours = body["error"]["message"].as_str().unwrap().to_owned();
    // Without model scopes the items are not read at all: the upstream judges the body.
    let (_, body) = gw.post("/v1/messages/batches", &open, &malformed).await;
    assert_ne!(body["error"]["message"].as_str(), Some(ours.as_str()));
    gw.stop().await;
}
