use serde_json::{Value, json};

use crate::spawn;

fn cached_body(question: &str, ttl: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 20,
        "system": [{"type": "text", "text": "rule ".repeat(1000), "cache_control": {"type": "ephemeral", "ttl": ttl}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "context ".repeat(600), "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": question}]}]})
}

#[tokio::test]
async fn prompt_cache_writes_then_reads_per_key() {
    let sim = spawn().await;
    let body = cached_body("first?", "1h");
    let (_, a) = sim.message(&body).await;
    let u = &a["usage"];
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], 1253);
    assert_eq!(
        u["cache_creation"]["ephemeral_5m_input_tokens"],
        4 + 3 + 1200
    );
    assert_eq!(u["cache_creation_input_tokens"], 1253 + 1207);
    assert_eq!(u["input_tokens"], 3 + 2);
    let (_, b) = sim.message(&cached_body("second?", "1h")).await;
    assert_eq!(b["usage"]["cache_read_input_tokens"], 1253 + 1207);
    assert_eq!(b["usage"]["cache_creation_input_tokens"], 0);
    // Another key is another organisation.
    let r = sim
        .client
        .post(format!("{}/v1/messages", sim.base))
        .header("x-api-key", "sk-other")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["usage"]["cache_read_input_tokens"], 0);
    // The stream reports the same split in message_start and message_delta.
    let evs = crate::events(&sim.stream_text(&body).await);
    assert_eq!(
        evs[0].1["message"]["usage"]["cache_read_input_tokens"],
        1253 + 1207
    );
    assert_eq!(
        evs[evs.len() - 2].1["usage"]["cache_read_input_tokens"],
        1253 + 1207
    );
}

#[tokio::test]
async fn a_one_hour_breakpoint_after_a_five_minute_one_is_rejected() {
    let sim = spawn().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 20,
        "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]});
    let (status, e) = sim.message(&body).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
}
