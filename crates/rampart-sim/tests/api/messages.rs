use serde_json::json;

use crate::{hello, spawn, spawn_with, text_of};

#[tokio::test]
async fn json_reply_has_the_api_shape_and_headers() {
    let sim = spawn().await;
    let r = sim
        .post("/v1/messages")
        .json(&hello("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h["request-id"].to_str().unwrap().starts_with("req_011C"));
    assert!(h.contains_key("anthropic-organization-id"));
    for family in ["requests", "tokens", "input-tokens", "output-tokens"] {
        for part in ["limit", "remaining", "reset"] {
            assert!(
                h.contains_key(format!("anthropic-ratelimit-{family}-{part}").as_str()),
                "{family}-{part}"
            );
        }
    }
    let reset = h["anthropic-ratelimit-requests-reset"].to_str().unwrap();
    assert!(reset.ends_with('Z') && reset.contains('T'), "{reset}");
    let m: serde_json::Value = r.json().await.unwrap();
    assert!(m["id"].as_str().unwrap().starts_with("msg_01"));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["stop_sequence"].is_null());
    let u = &m["usage"];
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(
        u["cache_creation"],
        json!({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0})
    );
    assert_eq!(u["service_tier"], "standard");
    assert_eq!(u["input_tokens"], 4 + 1);
    let words = text_of(&m).split_whitespace().count() as u64;
    assert_eq!(u["output_tokens"].as_u64().unwrap(), words);
}

#[tokio::test]
async fn the_same_request_gets_the_same_text() {
    let sim = spawn().await;
    let (_, a) = sim.message(&hello("Tell me a story")).await;
    let (_, b) = sim.message(&hello("Tell me a story")).await;
    let (_, c) = sim.message(&hello("Tell me another story")).await;
    assert_eq!(text_of(&a), text_of(&b));
    assert_ne!(a["id"], b["id"]);
    assert_ne!(text_of(&a), text_of(&c));
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_with_stop_reason_max_tokens() {
    let sim = spawn().await;
    let mut body = hello("Hi");
    body["max_tokens"] = json!(3);
    let (_, m) = sim.message(&body).await;
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 3);
    body["max_tokens"] = json!(0);
    let (status, m) = sim.message(&body).await;
    assert_eq!(status, 200);
    assert_eq!(m["content"], json!([]));
    assert_eq!(m["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn stop_sequences_named_by_the_user_stop_the_reply() {
    let sim = spawn().await;
    let mut body = hello("Please say PINEAPPLE when done");
    body["stop_sequences"] = json!(["PINEAPPLE"]);
    let (_, m) = sim.message(&body).await;
    assert_eq!(m["stop_reason"], "stop_sequence");
    assert_eq!(m["stop_sequence"], "PINEAPPLE");
    assert!(!text_of(&m).contains("PINEAPPLE"));
}

#[tokio::test]
async fn echo_returns_the_rest_of_the_text_exactly() {
    let sim = spawn().await;
    let (_, m) = sim.message(&hello("echo: exactly this, please")).await;
    assert_eq!(text_of(&m), "exactly this, please");
}

#[tokio::test]
async fn tool_use_satisfies_the_schema_required_fields() {
    let sim = spawn().await;
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 500,
        "tools": [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "integer"}, "mode": {"type": "string", "enum": ["fast", "slow"]},
                           "filters": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}},
            "required": ["q", "n", "mode", "filters"]}}],
        "messages": [{"role": "user", "content": "Use lookup to find it"}]});
    let (_, m) = sim.message(&body).await;
    assert_eq!(m["stop_reason"], "tool_use");
    let call = &m["content"][0];
    assert_eq!(call["type"], "tool_use");
    assert!(call["id"].as_str().unwrap().starts_with("toolu_01"));
    assert_eq!(call["name"], "lookup");
    assert!(call["input"]["q"].is_string());
    assert!(call["input"]["n"].is_i64());
    assert_eq!(call["input"]["mode"], "fast");
    assert_eq!(call["input"]["filters"]["on"], true);
}

#[tokio::test]
async fn unknown_body_fields_and_beta_headers_are_accepted() {
    let sim = spawn().await;
    let mut body = hello("Hi");
    body["some_future_field"] = json!({"x": 1});
    let r = sim
        .post("/v1/messages")
        .header(
            "anthropic-beta",
            "extended-cache-ttl-2025-04-11,context-1m-2025-08-07",
        )
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn expect_error(
    sim: &crate::TestSim,
    req: reqwest::RequestBuilder,
    status: u16,
    kind: &str,
    message: &str,
) {
    let _ = sim;
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{message}");
    let rid = r.headers()["request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], kind);
    assert_eq!(body["error"]["message"], message);
    assert_eq!(body["request_id"], rid.as_str());
}

#[tokio::test]
async fn missing_credentials_and_versions_are_rejected_like_the_api() {
    let sim = spawn().await;
    let url = format!("{}/v1/messages", sim.base);
    let no_key = sim
        .client
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&hello("Hi"));
    expect_error(
        &sim,
        no_key,
        401,
        "authentication_error",
        "x-api-key header is required",
    )
    .await;
    let no_version = sim
        .client
        .post(&url)
        .header("x-api-key", "k")
        .json(&hello("Hi"));
    expect_error(
        &sim,
        no_version,
        400,
        "invalid_request_error",
        "anthropic-version: header is required",
    )
    .await;
    let bad_version = sim
        .client
        .post(&url)
        .header("x-api-key", "k")
        .header("anthropic-version", "2022-01-01")
        .json(&hello("Hi"));
    expect_error(
        &sim,
        bad_version,
        400,
        "invalid_request_error",
        "anthropic-version: \"2022-01-01\" is not a valid version",
    )
    .await;
    let doubled = sim
        .post("/v1/messages")
        .header("anthropic-version", "2023-06-01")
        .json(&hello("Hi"));
    expect_error(
        &sim,
        doubled,
        400,
        "invalid_request_error",
        "anthropic-version: \"2023-06-01, 2023-06-01\" is not a valid version",
    )
    .await;
}

#[tokio::test]
async fn a_configured_key_rejects_others_and_accepts_bearer() {
    let sim = spawn_with(rampart_sim::SimConfig {
        api_key: Some("sk-right".into()),
        ..Default::default()
    })
    .await;
    let url = format!("{}/v1/messages", sim.base);
    let wrong = sim.post("/v1/messages").json(&hello("Hi"));
    expect_error(
        &sim,
        wrong,
        401,
        "authentication_error",
        "invalid x-api-key",
    )
    .await;
    let bearer = sim
        .client
        .post(&url)
        .header("authorization", "Bearer sk-right")
        .header("anthropic-version", "2023-06-01")
        .json(&hello("Hi"));
    assert_eq!(bearer.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn invalid_bodies_get_400_with_the_field_named() {
    let sim = spawn().await;
    let cc = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
    let cases = [
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model: Field required",
        ),
        (
            json!({"model": "claude-opus-5", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Field required",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Input should be greater than or equal to 0",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Input should be a valid integer",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5}),
            "messages: Field required",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5, "messages": []}),
            "messages: at least one message is required",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}),
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}),
            "messages.0.content: Input should be a valid list",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            "messages.0.content.0.type: Field required",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5000, "thinking": {"type": "enabled", "budget_tokens": 1000},
            "messages": [{"role": "user", "content": "x"}]}),
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            json!({"model": "claude-opus-5", "max_tokens": 5, "messages": [{"role": "user", "content": [cc, cc, cc, cc, cc]}]}),
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
    ];
    for (body, message) in cases {
        let req = sim.post("/v1/messages").json(&body);
        expect_error(&sim, req, 400, "invalid_request_error", message).await;
    }
    let over = json!({"model": "claude-opus-5", "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = sim.message(&over).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`max_tokens` must be greater than `thinking.budget_tokens`")
    );
}

#[tokio::test]
async fn malformed_json_unknown_models_and_routes_get_envelopes() {
    let sim = spawn().await;
    let r = sim
        .post("/v1/messages")
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The request body is not valid JSON")
    );
    let mut nope = hello("Hi");
    nope["model"] = json!("claude-nope");
    let req = sim.post("/v1/messages").json(&nope);
    expect_error(&sim, req, 404, "not_found_error", "model: claude-nope").await;
    let req = sim.get("/v1/nothing/here");
    expect_error(&sim, req, 404, "not_found_error", "Not Found").await;
}

#[tokio::test]
async fn count_tokens_matches_the_total_input_of_a_message() {
    let sim = spawn().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "system": "Be brief.",
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "How many tokens is this?"}]});
    let r = sim
        .post("/v1/messages/count_tokens")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counted: serde_json::Value = r.json().await.unwrap();
    let (_, m) = sim.message(&body).await;
    assert_eq!(counted["input_tokens"], m["usage"]["input_tokens"]);
    assert_eq!(
        counted["input_tokens"].as_u64(),
        Some(rampart_sim::estimate_input_tokens(&body))
    );
}
