use std::time::Duration;

use serde_json::{Value, json};

use crate::{TestSim, spawn};

async fn create(sim: &TestSim, requests: Value) -> Value {
    let r = sim
        .post("/v1/messages/batches")
        .json(&json!({"requests": requests}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn item(id: &str, model: &str) -> Value {
    json!({"custom_id": id, "params": {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}})
}

#[tokio::test(start_paused = true)]
async fn a_batch_processes_then_serves_jsonl_results() {
    let sim = spawn().await;
    let bad_params =
        json!({"custom_id": "bad", "params": {"model": "claude-opus-5", "messages": []}});
    let batch = create(
        &sim,
        json!([
            item("ok", "claude-opus-5"),
            bad_params,
            item("nomodel", "claude-nope")
        ]),
    )
    .await;
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_01"));
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["request_counts"]["processing"], 3);
    assert!(batch["results_url"].is_null());
    assert!(batch["ended_at"].is_null());
    let r = sim
        .get(&format!("/v1/messages/batches/{id}/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    tokio::time::advance(Duration::from_millis(2001)).await;
    let (_, ended) = sim.get_json(&format!("/v1/messages/batches/{id}")).await;
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 1, "errored": 2, "canceled": 0, "expired": 0})
    );
    let url = ended["results_url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("{}/v1/messages/batches/{id}/results", sim.base)
    );
    let r = sim
        .client
        .get(url)
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-jsonl");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let by_id = |id: &str| lines.iter().find(|l| l["custom_id"] == id).unwrap()["result"].clone();
    let ok = by_id("ok");
    assert_eq!(ok["type"], "succeeded");
    assert_eq!(ok["message"]["usage"]["service_tier"], "batch");
    let bad = by_id("bad");
    assert_eq!(bad["type"], "errored");
    assert_eq!(bad["error"]["type"], "error");
    assert_eq!(bad["error"]["error"]["type"], "invalid_request_error");
    assert_eq!(
        by_id("nomodel")["error"]["error"],
        json!({"type": "not_found_error", "message": "model: claude-nope"})
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_makes_remaining_items_canceled_and_delete_needs_an_ended_batch() {
    let sim = spawn().await;
    let batch = create(
        &sim,
        json!([item("a", "claude-opus-5"), item("b", "claude-opus-5")]),
    )
    .await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let r = sim
        .delete(&format!("/v1/messages/batches/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = sim
        .post(&format!("/v1/messages/batches/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let canceling: Value = r.json().await.unwrap();
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    tokio::time::advance(Duration::from_millis(300)).await;
    let (_, ended) = sim.get_json(&format!("/v1/messages/batches/{id}")).await;
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(ended["request_counts"]["canceled"], 2);
    let text = sim
        .get(&format!("/v1/messages/batches/{id}/results"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .all(|l| l.contains(r#""result":{"type":"canceled"}"#)),
        "{text}"
    );
    let r = sim
        .delete(&format!("/v1/messages/batches/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted: Value = r.json().await.unwrap();
    assert_eq!(deleted, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, body) = sim.get_json(&format!("/v1/messages/batches/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn batches_list_newest_first_with_cursors() {
    let sim = spawn().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create(&sim, json!([item(&format!("r{i}"), "claude-opus-5")])).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (_, page) = sim.get_json("/v1/messages/batches?limit=2").await;
    assert_eq!(page["data"][0]["id"], ids[2].as_str());
    assert_eq!(page["first_id"], ids[2].as_str());
    assert_eq!(page["last_id"], ids[1].as_str());
    assert_eq!(page["has_more"], true);
    let (_, next) = sim
        .get_json(&format!("/v1/messages/batches?limit=2&after_id={}", ids[1]))
        .await;
    assert_eq!(next["data"].as_array().unwrap().len(), 1);
    assert_eq!(next["data"][0]["id"], ids[0].as_str());
    assert_eq!(next["has_more"], false);
    let (_, back) = sim
        .get_json(&format!(
            "/v1/messages/batches?limit=2&before_id={}",
            ids[0]
        ))
        .await;
    assert_eq!(back["first_id"], ids[2].as_str());
}

#[tokio::test]
async fn batch_creation_validates_the_envelope() {
    let sim = spawn().await;
    for (body, message) in [
        (json!({}), "requests: Field required"),
        (json!({"requests": []}), "at least 1 item"),
        (
            json!({"requests": [{"custom_id": "a b", "params": {}}]}),
            "should match pattern",
        ),
        (
            json!({"requests": [item("x", "claude-opus-5"), item("x", "claude-opus-5")]}),
            "'x' is repeated",
        ),
        (
            json!({"requests": [1]}),
            "requests.0: Input should be a valid dictionary",
        ),
        (
            json!({"requests": [{"params": {}}]}),
            "requests.0.custom_id: Field required",
        ),
        (
            json!({"requests": [{"custom_id": 7, "params": {}}]}),
            "requests.0.custom_id: Input should be a valid string",
        ),
        (
            json!({"requests": [{"custom_id": "a"}]}),
            "requests.0.params: Field required",
        ),
        (
            json!({"requests": [{"custom_id": "a", "params": [1]}]}),
            "requests.0.params: Input should be a valid dictionary",
        ),
    ] {
        let r = sim
            .post("/v1/messages/batches")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error: Value = r.json().await.unwrap();
        let got = error["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{body}: {got}");
    }
}
