use serde_json::Value;

use crate::spawn;

#[tokio::test]
async fn models_list_pages_newest_first() {
    let sim = spawn().await;
    let (_, all) = sim.get_json("/v1/models?limit=1000").await;
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "claude-opus-5-5");
    assert_eq!(all["has_more"], false);
    let (_, first) = sim.get_json("/v1/models").await;
    assert_eq!(first["data"].as_array().unwrap().len(), ids.len().min(20));
    let (_, page) = sim.get_json("/v1/models?limit=2").await;
    assert_eq!(page["has_more"], true);
    assert_eq!(page["last_id"], ids[1]);
    let (_, next) = sim
        .get_json(&format!("/v1/models?limit=2&after_id={}", ids[1]))
        .await;
    assert_eq!(next["first_id"], ids[2]);
    assert_eq!(next["data"][0]["type"], "model");
    let r = sim.get("/v1/models?limit=0").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_model_resolves_by_alias_and_unknown_ones_are_404() {
    let sim = spawn().await;
    let (_, m) = sim.get_json("/v1/models/claude-haiku-4-5").await;
    assert_eq!(m["id"], "claude-haiku-4-5-20251001");
    assert_eq!(m["display_name"], "Claude Haiku 4.5");
    let r = sim.get("/v1/models/claude-nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found_error");
    assert_eq!(body["error"]["message"], "model: claude-nope");
}
