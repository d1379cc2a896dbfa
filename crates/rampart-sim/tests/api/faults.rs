use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::{events, hello, spawn};

#[tokio::test]
async fn status_fault_answers_529_with_retry_after_then_clears() {
    let sim = spawn().await;
    let added = sim.fault(json!({"kind": "status", "count": 2})).await;
    assert_eq!(added["kind"], "status");
    assert_eq!(added["remaining"], 2);
    for _ in 0..2 {
        let r = sim
            .post("/v1/messages")
            .json(&hello("Hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 529);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!({"type": "overloaded_error", "message": "Overloaded"})
        );
        assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    }
    assert_eq!(sim.message(&hello("Hi")).await.0, 200);
}

#[tokio::test]
async fn faults_match_only_their_model_and_path() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "status", "status": 429, "retry_after": 7, "model": "claude-opus-5"}))
        .await;
    sim.fault(json!({"kind": "status", "status": 500, "path": "count_tokens"}))
        .await;
    assert_eq!(sim.message(&hello("Hi")).await.0, 200);
    let mut opus = hello("Hi");
    opus["model"] = json!("claude-opus-5");
    let r = sim.post("/v1/messages").json(&opus).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let r = sim
        .post("/v1/messages/count_tokens")
        .json(&hello("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(!r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    let remaining = sim.sim_get("/_sim/faults").await;
    assert_eq!(remaining, json!([]));
}

#[tokio::test]
async fn reset_fault_drops_the_connection_without_a_response() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "reset"})).await;
    let err = sim
        .post("/v1/messages")
        .json(&hello("Hi"))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.is_request() || err.is_connect() || err.to_string().contains("connection"),
        "{err:?}"
    );
    assert_eq!(sim.message(&hello("Hi")).await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn stall_headers_delays_the_response() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "stall_headers", "delay_ms": 5000}))
        .await;
    let started = Instant::now();
    assert_eq!(sim.message(&hello("Hi")).await.0, 200);
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn stall_stream_pauses_after_the_given_events() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "stall_stream", "delay_ms": 3000, "after_events": 3}))
        .await;
    let mut body = hello("Hi");
    body["stream"] = json!(true);
    let started = Instant::now();
    let r = sim.post("/v1/messages").json(&body).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(events(&text).last().unwrap().0, "message_stop");
}

#[tokio::test]
async fn error_event_ends_the_stream_with_an_overloaded_error() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "error_event", "after_events": 4}))
        .await;
    let text = sim.stream_text(&hello("Hi")).await;
    let evs = events(&text);
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[4].0, "error");
    assert_eq!(
        evs[4].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[tokio::test]
async fn error_event_on_a_json_request_answers_with_the_status() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "error_event", "error_type": "api_error", "message": "boom"}))
        .await;
    let (status, body) = sim.message(&hello("Hi")).await;
    assert_eq!(status, 500);
    assert_eq!(
        body["error"],
        json!({"type": "api_error", "message": "boom"})
    );
}

#[tokio::test(start_paused = true)]
async fn slow_fault_delays_every_event() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "slow", "delay_ms": 100})).await;
    let started = Instant::now();
    let text = sim.stream_text(&hello("Hi")).await;
    let n = events(&text).len() as u32;
    assert!(started.elapsed() >= Duration::from_millis(100) * n);
}

#[tokio::test]
async fn abort_stream_truncates_the_body() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "abort_stream", "after_events": 2}))
        .await;
    let mut body = hello("Hi");
    body["stream"] = json!(true);
    let r = sim.post("/v1/messages").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the client must see a body error");
    let text = String::from_utf8(got).unwrap();
    assert_eq!(events(&text).len(), 2);
}

#[tokio::test]
async fn faults_can_be_listed_and_cleared() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "status", "count": 3})).await;
    let listed = sim.sim_get("/_sim/faults").await;
    assert_eq!(listed[0]["remaining"], 3);
    let r = sim
        .client
        .delete(format!("{}/_sim/faults", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.sim_get("/_sim/faults").await, json!([]));
    let bad = sim
        .client
        .post(format!("{}/_sim/faults", sim.base))
        .json(&json!({"kind": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

async fn say_hi(sim: &crate::TestSim) -> reqwest::Response {
    sim.post("/v1/messages")
        .json(&hello("Hi"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn retry_after_ms_is_sent_when_asked() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "status", "status": 529, "retry_after_ms": 250}))
        .await;
    let r = say_hi(&sim).await;
    assert_eq!(r.status(), 529);
    assert_eq!(r.headers()["retry-after-ms"], "250");
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn exhausted_fault_answers_but_reports_the_request_limit_spent_until_its_reset() {
    let sim = spawn().await;
    sim.fault(json!({"kind": "exhausted", "retry_after": 30}))
        .await;
    let r = say_hi(&sim).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["anthropic-ratelimit-requests-remaining"], "0");
    let reset = r.headers()["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap()
        .to_owned();
    let reset = time::OffsetDateTime::parse(&reset, &time::format_description::well_known::Rfc3339)
        .unwrap();
    let secs = (reset - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((28..=30).contains(&secs), "{secs}");
    // Only the request family is exhausted; the next answer reports it replenished.
    assert_ne!(r.headers()["anthropic-ratelimit-tokens-remaining"], "0");
    let r = say_hi(&sim).await;
    assert_ne!(r.headers()["anthropic-ratelimit-requests-remaining"], "0");
}
