//! The SDKs' retry policy against the simulator's fault injection, with the calls that arrived
//! counted by the simulator. (The exact backoff schedule is checked on paused time in the crate's
//! unit tests.)

use std::time::Duration;

use rampart_client::types::{CountTokensParams, Message};
use rampart_client::{Client, Error, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Sim, ask, quick};

/// A fresh simulator with `fault` queued and one `create` of `text` through `client` (a quick
/// client by default): the outcome, the `messages` calls that arrived, and the simulator.
async fn create_after(
    fault: Value,
    text: &str,
    client: impl FnOnce(Client) -> Client,
) -> (Result<Response<Message>, Error>, u64, Sim) {
    let sim = Sim::start().await;
    sim.fault(fault).await;
    let outcome = client(quick(&sim.url))
        .messages()
        .create(&ask(text, 20))
        .await;
    let calls = sim.calls("messages").await;
    (outcome, calls, sim)
}

fn same(c: Client) -> Client {
    c
}

#[tokio::test]
async fn two_529s_then_success_is_three_calls_and_one_answer() {
    let fault = json!({"kind":"status","status":529,"count":2,"retry_after":0});
    let (msg, calls, sim) = create_after(fault, "echo: ok", same).await;
    assert_eq!((msg.unwrap().text(), calls), ("ok".into(), 3));
    let log = sim.requests(3).await;
    let counts: Vec<&str> = log
        .iter()
        .map(|r| r["headers"]["x-stainless-retry-count"].as_str().unwrap())
        .collect();
    assert_eq!(counts, ["0", "1", "2"]);
    for r in &log {
        assert_eq!(r["headers"]["x-stainless-timeout"], "600");
        assert_eq!(r["headers"]["anthropic-version"], "2023-06-01");
    }
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let started = Instant::now();
    let fault = json!({"kind":"status","status":429,"retry_after":1});
    let (msg, calls, _sim) = create_after(fault, "echo: later", same).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before retry-after"
    );
    assert_eq!((msg.unwrap().text(), calls), ("later".into(), 2));
}

#[tokio::test]
async fn after_three_500s_the_last_error_comes_back_with_its_request_id() {
    let fault = json!({"kind":"status","status":500,"count":5});
    let (outcome, calls, _sim) = create_after(fault, "hi", same).await;
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::InternalServer(_)), "{err:?}");
    assert_eq!((err.status(), calls), (Some(500), 3));
    assert_eq!(err.api_error().unwrap().error_type(), "api_error");
    assert!(err.request_id().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn client_errors_are_one_call() {
    for (status, class) in [
        (400, "BadRequest"),
        (403, "PermissionDenied"),
        (413, "RequestTooLarge"),
    ] {
        let fault = json!({"kind":"status","status":status,"count":3});
        let (outcome, calls, _sim) = create_after(fault, "hi", same).await;
        let err = outcome.unwrap_err();
        assert!(format!("{err:?}").starts_with(class), "{err:?}");
        assert_eq!(calls, 1, "{status}");
    }
}

#[tokio::test]
async fn a_reset_connection_is_retried() {
    let (msg, calls, sim) = create_after(json!({"kind":"reset"}), "echo: reconnected", same).await;
    assert_eq!((msg.unwrap().text(), calls), ("reconnected".into(), 2));

    sim.fault(json!({"kind":"reset","count":3})).await;
    let err = quick(&sim.url)
        .messages()
        .create(&ask("hi", 20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert_eq!(sim.calls("messages").await, 2 + 3);
}

#[tokio::test]
async fn a_json_body_cut_off_mid_way_is_retried() {
    let (msg, calls, _sim) =
        create_after(json!({"kind":"abort_stream"}), "echo: whole", same).await;
    assert_eq!((msg.unwrap().text(), calls), ("whole".into(), 2));
}

/// A timeout far below the simulator's stalls (10 s) and far above its normal answers, even on a
/// loaded machine.
fn short_timeout(c: Client) -> Client {
    c.with_timeout(Duration::from_millis(1500))
}

#[tokio::test]
async fn a_stalled_response_times_out_and_is_retried() {
    let fault = json!({"kind":"stall_headers","delay_ms":10000});
    let (msg, calls, sim) = create_after(fault, "echo: fast now", short_timeout).await;
    assert_eq!((msg.unwrap().text(), calls), ("fast now".into(), 2));
    let log = sim.requests(1).await;
    assert_eq!(log[0]["headers"]["x-stainless-timeout"], "1.5");

    sim.fault(json!({"kind":"stall_headers","delay_ms":10000,"count":3}))
        .await;
    let err = short_timeout(quick(&sim.url))
        .messages()
        .create(&ask("hi", 20))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(sim.calls("messages").await, 2 + 3);
}

#[tokio::test]
async fn a_slow_body_times_out_within_the_attempt() {
    let fault = json!({"kind":"slow","delay_ms":10000});
    let (msg, calls, _sim) = create_after(fault, "echo: second try", short_timeout).await;
    assert_eq!((msg.unwrap().text(), calls), ("second try".into(), 2));
}

#[tokio::test]
async fn max_retries_zero_makes_one_call() {
    let fault = json!({"kind":"status","status":529,"retry_after":0});
    let (outcome, calls, _sim) = create_after(fault, "hi", |c| c.with_max_retries(0)).await;
    assert!(matches!(outcome, Err(Error::Overloaded(_))), "{outcome:?}");
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn every_endpoint_retries_the_same_way() {
    let sim = Sim::start().await;
    let c = quick(&sim.url);
    sim.fault(json!({"kind":"status","status":503,"path":"count_tokens"}))
        .await;
    let counted = c
        .messages()
        .count_tokens(&CountTokensParams::from(&ask("hi", 1)))
        .await
        .unwrap();
    assert!(counted.input_tokens > 0);
    assert_eq!(sim.calls("count_tokens").await, 2);
    sim.fault(json!({"kind":"status","status":529,"count":2,"path":"models","retry_after":0}))
        .await;
    c.models().get("claude-sonnet-4-6").await.unwrap();
    assert_eq!(sim.calls("models").await, 3);
    sim.fault(json!({"kind":"reset","path":"batches"})).await;
    c.batches()
        .list(&rampart_client::ListParams::default())
        .await
        .unwrap();
    assert_eq!(sim.calls("batches").await, 2);
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error_after_the_retries() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = quick(&format!("http://{addr}"))
        .messages()
        .create(&ask("hi", 20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connection { message, .. } if message.contains("onnect")),
        "{err:?}"
    );
}
