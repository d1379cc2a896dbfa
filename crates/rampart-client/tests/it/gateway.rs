//! Through the gateway, with the gateway's key: every endpoint, streaming accumulation, errors
//! and request ids.

use futures_util::TryStreamExt;
use rampart_client::types::CountTokensParams;
use rampart_client::{Error, ListParams};
use serde_json::json;

use crate::harness::{GATEWAY_KEY, Sim, ask, client, gateway, quick_with_key};

#[tokio::test]
async fn every_endpoint_works_through_the_gateway() {
    let sim = Sim::with(rampart_sim::SimConfig {
        batch_processing_ms: 200,
        ..rampart_sim::SimConfig::default()
    })
    .await;
    let gw = gateway(&sim.url).await;
    let c = client(&gw.url, GATEWAY_KEY);

    let msg = c
        .messages()
        .create(&ask("echo: via rampart", 32))
        .await
        .unwrap();
    assert_eq!(msg.text(), "via rampart");
    assert!(msg.request_id().unwrap().starts_with("req_"));

    for params in crate::streaming::cases() {
        crate::streaming::assert_stream_equals_create(&c, &params).await;
    }

    let counted = c
        .messages()
        .count_tokens(&CountTokensParams::from(&ask("how many tokens?", 1)))
        .await
        .unwrap();
    assert!(counted.input_tokens > 0);

    let models: Vec<String> = c
        .models()
        .list_all(ListParams::limit(4))
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(models.len(), rampart_sim::default_catalogue().len());
    assert_eq!(
        c.models().get("claude-sonnet-4-6").await.unwrap().id,
        "claude-sonnet-4-6"
    );

    let results = crate::batches::round_trip(&c).await;
    assert_eq!(results.len(), 3);
}

#[tokio::test]
async fn the_gateways_errors_keep_their_class_and_request_id() {
    let sim = Sim::start().await;
    let gw = gateway(&sim.url).await;
    let err = client(&gw.url, "rk-not-a-key")
        .messages()
        .create(&ask("hi", 8))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Authentication(_)), "{err:?}");
    assert!(err.request_id().is_some(), "{err:?}");
    assert_eq!(sim.calls("messages").await, 0);

    let c = client(&gw.url, GATEWAY_KEY);
    let err = c.models().get("claude-none-0").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    sim.fault(json!({"kind":"status","status":400,"message":"bad thing"}))
        .await;
    let err = c.messages().create(&ask("hi", 8)).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest(e) if e.message() == "bad thing"),
        "{err:?}"
    );
    assert_eq!(sim.calls("messages").await, 1);
}

#[tokio::test]
async fn retries_through_the_gateway_do_not_multiply() {
    // Two 529s upstream. Either the client retries (two retries, three calls), or the gateway
    // retries itself and the client gets the answer, or the gateway gives up and says
    // `x-should-retry: false` so the client does not add its own retries on top: never more
    // than three upstream calls.
    let sim = Sim::start().await;
    let gw = gateway(&sim.url).await;
    sim.fault(json!({"kind":"status","status":529,"count":2,"retry_after":0}))
        .await;
    let c = client(&gw.url, GATEWAY_KEY);
    match c.messages().create(&ask("echo: steady", 16)).await {
        Ok(msg) => {
            assert_eq!(msg.text(), "steady");
            assert_eq!(sim.calls("messages").await, 3);
        }
        Err(Error::Overloaded(e)) => {
            assert_eq!(e.headers()["x-should-retry"], "false", "{e}");
            assert!(sim.calls("messages").await <= 3);
        }
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_persistently_overloaded_upstream_is_one_error_and_at_most_three_upstream_calls() {
    // Whoever retries — the client (no gateway retries) or the gateway (then answering with
    // `x-should-retry: false`) — the upstream sees at most the three attempts of one policy.
    let sim = Sim::start().await;
    let gw = gateway(&sim.url).await;
    sim.fault(json!({"kind":"status","status":529,"count":50,"retry_after":0}))
        .await;
    let err = quick_with_key(&gw.url, GATEWAY_KEY)
        .messages()
        .create(&ask("hi", 8))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert!(err.request_id().is_some(), "{err:?}");
    let calls = sim.calls("messages").await;
    assert!((1..=3).contains(&calls), "{calls} upstream calls");
}
