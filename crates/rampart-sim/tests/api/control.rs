use serde_json::json;

use crate::{hello, spawn};

#[tokio::test]
async fn counters_count_every_api_request_including_failures() {
    let sim = spawn().await;
    sim.message(&hello("Hi")).await;
    let mut opus = hello("Hi");
    opus["model"] = json!("claude-opus-5");
    opus["max_tokens"] = json!("bad");
    sim.message(&opus).await;
    sim.post("/v1/messages/count_tokens")
        .json(&hello("x"))
        .send()
        .await
        .unwrap();
    sim.get("/v1/models").send().await.unwrap();
    sim.get("/v1/messages/batches").send().await.unwrap();
    sim.client
        .post(format!("{}/v1/messages", sim.base))
        .json(&hello("no key"))
        .send()
        .await
        .unwrap();
    let c = sim.sim_get("/_sim/counters").await;
    assert_eq!(c["total"], 6);
    assert_eq!(
        c["routes"],
        json!({"messages": 3, "count_tokens": 1, "models": 1, "batches": 1})
    );
    assert_eq!(c["models"]["claude-sonnet-4-5"], 3);
    assert_eq!(c["models"]["claude-opus-5"], 1);
    let r = sim
        .client
        .post(format!("{}/_sim/reset", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.sim_get("/_sim/counters").await["total"], 0);
}

#[tokio::test]
async fn the_request_log_shows_what_arrived() {
    let sim = spawn().await;
    sim.get("/v1/models?limit=3&after_id=x")
        .header("x-request-id", "abc")
        .send()
        .await
        .unwrap();
    sim.message(&hello("Hi")).await;
    let log = sim.sim_get("/_sim/requests?limit=1").await;
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["path"], "/v1/messages");
    assert_eq!(log[0]["model"], "claude-sonnet-4-5");
    let log = sim.sim_get("/_sim/requests").await;
    assert_eq!(log[0]["method"], "GET");
    assert_eq!(log[0]["query"], "limit=3&after_id=x");
    assert_eq!(log[0]["headers"]["x-request-id"], "abc");
    assert_eq!(log[0]["headers"]["x-api-key"], "sk-test");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_requests() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_sim::serve(
        listener,
        rampart_sim::SimConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let fault = json!({"kind": "stall_headers", "delay_ms": 300});
    client
        .post(format!("{base}/_sim/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01")
                .json(&hello("Hi"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    server.await.unwrap().unwrap();
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn odd_bodies_always_get_a_json_answer() {
    let sim = spawn().await;
    let bodies = [
        json!(null),
        json!([1, 2]),
        json!("text"),
        json!({"model": 5}),
        json!({"model": "claude-opus-5", "max_tokens": 1e30, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image"}]}],
            "tools": [{"name": "x", "input_schema": {"type": "object", "required": ["a", 5], "properties": {"a": {"type": ["null", "array"], "minItems": 99999}}}}],
            "tool_choice": {"type": "any"}}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "system": 7}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": "lots"}}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "cache_control": {"type": "persistent"}}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "stop_sequences": ["", "x"]}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "assistant", "content": ""}]}),
        json!({"model": "claude-opus-5", "max_tokens": 10, "messages": [{"role": "user", "content": "é echo: ü say"}], "stop_sequences": ["ü"]}),
    ];
    for body in bodies {
        for path in [
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/messages/batches",
        ] {
            let r = sim.post(path).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let answer: serde_json::Value = r.json().await.unwrap();
            assert!(
                status == 200 || answer["type"] == "error",
                "{path} {body} -> {status} {answer}"
            );
        }
    }
}
