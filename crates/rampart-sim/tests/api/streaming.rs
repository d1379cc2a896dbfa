use serde_json::{Value, json};

use crate::{events, hello, spawn, spawn_with, text_of};

fn names(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn text_stream_follows_the_api_event_order_and_matches_the_json_reply() {
    let sim = spawn().await;
    let mut body = hello("Stream me");
    body["stream"] = json!(true);
    let r = sim.post("/v1/messages").json(&body).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let text = r.text().await.unwrap();
    let evs = events(&text);
    for (name, data) in &evs {
        assert_eq!(data["type"], name.as_str());
    }
    let n = names(&evs);
    assert_eq!(&n[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        &n[n.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        n[3..n.len() - 3]
            .iter()
            .all(|e| *e == "content_block_delta")
    );
    let start = &evs[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        evs[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let streamed: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    body["stream"] = json!(false);
    let (_, m) = sim.message(&body).await;
    assert_eq!(streamed, text_of(&m));
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], m["usage"]["output_tokens"]);
    assert_eq!(delta["usage"]["input_tokens"], m["usage"]["input_tokens"]);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(delta["usage"]["cache_creation_input_tokens"], 0);
}

#[tokio::test]
async fn thinking_streams_deltas_then_one_signature_before_its_stop() {
    let sim = spawn().await;
    let body = json!({"model": "claude-opus-4-6", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "Think first"}]});
    let evs = events(&sim.stream_text(&body).await);
    assert_eq!(
        evs[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    let block0: Vec<&Value> = evs
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == 0)
        .map(|(_, d)| &d["delta"])
        .collect();
    let (last, rest) = block0.split_last().unwrap();
    assert_eq!(last["type"], "signature_delta");
    assert!(!rest.is_empty() && rest.iter().all(|d| d["type"] == "thinking_delta"));
    let sig_pos = evs
        .iter()
        .position(|(_, d)| d["delta"]["type"] == "signature_delta")
        .unwrap();
    assert_eq!(evs[sig_pos + 1].0, "content_block_stop");
    assert_eq!(evs[sig_pos + 1].1["index"], 0);
    assert_eq!(evs[sig_pos + 2].1["content_block"]["type"], "text");
    let (_, m) = sim.message(&body).await;
    assert_eq!(m["content"][0]["signature"], last["signature"]);
    let thinking: String = rest
        .iter()
        .map(|d| d["thinking"].as_str().unwrap())
        .collect();
    assert_eq!(m["content"][0]["thinking"], thinking.as_str());
}

#[tokio::test]
async fn tool_use_streams_input_json_fragments_starting_empty() {
    let sim = spawn().await;
    let body = json!({"model": "claude-opus-4-6", "max_tokens": 400, "tool_choice": {"type": "any"},
        "tools": [{"name": "search", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}],
        "messages": [{"role": "user", "content": "hello"}]});
    let evs = events(&sim.stream_text(&body).await);
    let start = &evs[1].1["content_block"];
    assert_eq!(start["type"], "tool_use");
    assert_eq!(start["input"], json!({}));
    let parts: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert_eq!(parts[0], "");
    let input: Value = serde_json::from_str(&parts.concat()).unwrap();
    assert_eq!(input, json!({"query": "example query"}));
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test(start_paused = true)]
async fn tokens_per_sec_paces_the_stream() {
    let sim = spawn_with(rampart_sim::SimConfig {
        tokens_per_sec: 10.0,
        ..Default::default()
    })
    .await;
    let mut body = hello("echo: one two three four five six seven eight nine ten");
    body["stream"] = json!(true);
    let started = tokio::time::Instant::now();
    let r = sim.post("/v1/messages").json(&body).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("message_stop"));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(1000),
        "{elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(1500),
        "{elapsed:?}"
    );
}
