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
