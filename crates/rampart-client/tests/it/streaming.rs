//! Streaming against the simulator: the accumulated message equals the non-streamed one for every
//! kind of reply; mid-stream failures end the stream with the right error and no retry.

use std::time::Duration;

use futures_util::StreamExt;
use rampart_client::types::stream::{Delta, StreamEvent};
use rampart_client::types::{
    CacheControl, CacheTtl, ContentBlock, ContentBlockParam, Message, MessageCreateParams,
    MessageParam, ThinkingConfig, Tool, ToolChoice,
};
use rampart_client::{Client, Error};
use serde_json::json;

use crate::harness::{Sim, ask};

/// The replies worth comparing: text, a stop sequence, a max_tokens cut, thinking, a tool call
/// (input JSON in fragments), and prompt-cache usage.
pub fn cases() -> Vec<MessageCreateParams> {
    let tool = Tool::new(
        "lookup_order",
        json!({"type":"object","properties":{"order_id":{"type":"string"},"items":{"type":"array","items":{"type":"integer"}}},"required":["order_id","items"]}),
    );
    let cached = MessageCreateParams::new(
        crate::harness::MODEL,
        64,
        vec![MessageParam::user(vec![
            ContentBlockParam::text("Reference material. ".repeat(600))
                .with_cache_control(CacheControl::ephemeral()),
            ContentBlockParam::text("echo: cached"),
        ])],
    );
    vec![
        ask("tell me about lighthouses", 400),
        ask("say STOP now", 400).stop_sequences(["STOP"]),
        ask("a long story", 7),
        ask("echo: thinking first", 2048).thinking(ThinkingConfig::Adaptive { display: None }),
        ask("find it", 300)
            .tools([tool])
            .tool_choice(ToolChoice::Any {
                disable_parallel_tool_use: None,
            }),
        cached,
    ]
}

/// `streamed` with the message and tool-call ids of `created` (ids are drawn per request).
fn same_but_id(mut streamed: Message, created: &Message) -> Message {
    streamed.id.clone_from(&created.id);
    for (s, c) in streamed.content.iter_mut().zip(&created.content) {
        if let (ContentBlock::ToolUse { id, .. }, ContentBlock::ToolUse { id: cid, .. }) = (s, c) {
            id.clone_from(cid);
        }
    }
    streamed
}

/// Streams `params` and compares the accumulated message with `create`'s (after a first call,
/// so prompt-cache state is the same for both).
pub async fn assert_stream_equals_create(c: &Client, params: &MessageCreateParams) {
    c.messages().create(params).await.unwrap();
    let created = c.messages().create(params).await.unwrap().into_inner();
    let mut stream = c.messages().stream(params).await.unwrap();
    assert!(stream.request_id().unwrap().starts_with("req_"));
    let mut names = Vec::new();
    let mut text = String::new();
    while let Some(event) = stream.next_event().await {
        let event = event.unwrap();
        if let StreamEvent::ContentBlockDelta {
            delta: Delta::TextDelta { text: t },
            ..
        } = &event
        {
            text.push_str(t);
        }
        names.push(event.name());
    }
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(!names.contains(&"ping"), "pings are skipped");
    let streamed = stream.into_message().unwrap();
    assert_eq!(text, created.text());
    assert_eq!(
        same_but_id(streamed, &created),
        created,
        "params: {params:?}"
    );
}

/// Reads `stream` to its first error: how many events came before it, and the error.
async fn first_error(stream: &mut rampart_client::MessageStream) -> (usize, Error) {
    let mut seen = 0;
    loop {
        match stream
            .next_event()
            .await
            .expect("the stream ended without an error")
        {
            Ok(_) => seen += 1,
            Err(e) => return (seen, e),
        }
    }
}

#[tokio::test]
async fn the_accumulated_stream_equals_the_created_message() {
    let sim = Sim::start().await;
    let c = sim.client();
    for params in cases() {
        assert_stream_equals_create(&c, &params).await;
    }
}

#[tokio::test]
async fn a_streamed_cache_write_keeps_its_ttl_split() {
    let sim = Sim::start().await;
    let params = MessageCreateParams::new(
        crate::harness::MODEL,
        16,
        vec![MessageParam::user(vec![
            ContentBlockParam::text("Long context. ".repeat(900))
                .with_cache_control(CacheControl::with_ttl(CacheTtl::OneHour)),
            ContentBlockParam::text("echo: stored"),
        ])],
    );
    let msg = sim
        .client()
        .messages()
        .stream(&params)
        .await
        .unwrap()
        .final_message()
        .await
        .unwrap();
    let u = &msg.usage;
    assert!(u.cache_creation_input_tokens > 2048, "{u:?}");
    let split = u.cache_creation.unwrap();
    assert_eq!(
        (
            split.ephemeral_1h_input_tokens,
            split.ephemeral_5m_input_tokens
        ),
        (u.cache_creation_input_tokens, 0)
    );
}

#[tokio::test]
async fn paced_streams_arrive_as_many_deltas_and_work_as_a_futures_stream() {
    let sim = Sim::with(rampart_sim::SimConfig {
        tokens_per_sec: 2000.0,
        ..rampart_sim::SimConfig::default()
    })
    .await;
    let c = sim.client();
    let params = ask("tell me about rivers", 120);
    let created = c.messages().create(&params).await.unwrap().into_inner();
    let stream = c.messages().stream(&params).await.unwrap();
    let events: Vec<StreamEvent> = stream.map(|e| e.unwrap()).collect().await;
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ContentBlockDelta { .. }))
        .count();
    assert!(deltas > 5, "{deltas} deltas");
    let mut acc = rampart_client::MessageAccumulator::new();
    for e in &events {
        acc.push(e).unwrap();
    }
    assert_eq!(same_but_id(acc.into_message().unwrap(), &created), created);
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_it_as_overloaded_without_a_retry() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind":"error_event","after_events":3}))
        .await;
    let c = sim.client();
    let mut stream = c.messages().stream(&ask("hello there", 200)).await.unwrap();
    let (seen, err) = first_error(&mut stream).await;
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert_eq!(
        (err.status(), err.api_error().unwrap().message()),
        (None, "Overloaded")
    );
    assert!(err.request_id().unwrap().starts_with("req_"));
    assert!(seen >= 1, "events before the error are delivered");
    assert!(stream.next_event().await.is_none());
    assert!(stream.current_message().is_some());
    assert_eq!(sim.calls("messages").await, 1);
}

#[tokio::test]
async fn a_stream_cut_off_is_a_connection_error_and_not_retried() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind":"abort_stream","after_events":3}))
        .await;
    let c = sim.client();
    let err = c
        .messages()
        .stream(&ask("hello there", 200))
        .await
        .unwrap()
        .final_message()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Connection { .. } | Error::InvalidResponse { .. }
        ),
        "{err:?}"
    );
    assert_eq!(sim.calls("messages").await, 1);
}

#[tokio::test]
async fn a_stalled_stream_times_out_between_events() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind":"stall_stream","after_events":2,"delay_ms":10000}))
        .await;
    let c = sim.client().with_timeout(Duration::from_millis(1500));
    let mut stream = c.messages().stream(&ask("hello there", 200)).await.unwrap();
    let first = stream.next_event().await.unwrap().unwrap();
    assert_eq!(first.name(), "message_start");
    let (_, err) = first_error(&mut stream).await;
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(sim.calls("messages").await, 1);
}

#[tokio::test]
async fn a_stream_that_fails_before_it_starts_is_retried() {
    let sim = Sim::start().await;
    sim.fault(json!({"kind":"status","status":529,"count":2,"retry_after":0}))
        .await;
    let c = crate::harness::quick(&sim.url);
    let msg = c
        .messages()
        .stream(&ask("echo: third time lucky", 50))
        .await
        .unwrap()
        .final_message()
        .await
        .unwrap();
    assert_eq!(msg.text(), "third time lucky");
    assert_eq!(sim.calls("messages").await, 3);
}
