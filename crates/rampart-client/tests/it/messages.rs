//! `create` and `count_tokens` against the simulator: typed requests with every block type, typed
//! responses, request ids, and the SDK error classes.

use rampart_client::Error;
use rampart_client::types::{
    CacheControl, ContentBlock, ContentBlockParam, CountTokensParams, DocumentSource,
    ImageMediaType, MessageParam, StopReason, SystemBlock, SystemPrompt, ThinkingConfig, Tool,
    ToolChoice,
};
use serde_json::json;

use crate::harness::{MODEL, Sim, ask, client};

#[tokio::test]
async fn creates_a_message_and_exposes_its_request_id() {
    let sim = Sim::start().await;
    let msg = sim
        .client()
        .messages()
        .create(&ask("echo: hello from rust", 64).system("You are terse."))
        .await
        .unwrap();
    assert_eq!(msg.text(), "hello from rust");
    assert_eq!(
        (msg.kind.as_str(), msg.role.as_str(), msg.model.as_str()),
        ("message", "assistant", MODEL)
    );
    assert_eq!(msg.stop_reason, Some(StopReason::EndTurn));
    assert!(msg.id.starts_with("msg_"));
    assert!(msg.usage.input_tokens > 0 && msg.usage.output_tokens > 0);
    assert!(msg.request_id().unwrap().starts_with("req_"));
    assert_eq!(msg.status(), 200);
    assert!(
        msg.headers()
            .contains_key("anthropic-ratelimit-requests-remaining")
    );
}

#[tokio::test]
async fn stop_sequences_and_max_tokens_end_generation() {
    let sim = Sim::start().await;
    let c = sim.client();
    let stopped = c
        .messages()
        .create(
            &ask("say BANANA please", 200)
                .stop_sequences(["BANANA"])
                .user_id("user-7f3a"),
        )
        .await
        .unwrap();
    assert_eq!(stopped.stop_reason, Some(StopReason::StopSequence));
    assert_eq!(stopped.stop_sequence.as_deref(), Some("BANANA"));
    assert!(!stopped.text().contains("BANANA"));
    let capped = c
        .messages()
        .create(&ask("tell me a story", 3))
        .await
        .unwrap();
    assert_eq!(
        (capped.stop_reason, capped.usage.output_tokens),
        (Some(StopReason::MaxTokens), 3)
    );
}

#[tokio::test]
async fn tools_give_a_typed_tool_use_block_and_the_result_goes_back() {
    let sim = Sim::start().await;
    let c = sim.client();
    let weather = Tool::new(
        "get_weather",
        json!({"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}},"required":["city","unit"]}),
    )
    .description("Current weather in a city");
    let first = ask("What is the weather? use get_weather", 200)
        .tools([weather.clone()])
        .tool_choice(ToolChoice::Auto {
            disable_parallel_tool_use: Some(true),
        });
    let reply = c.messages().create(&first).await.unwrap();
    assert_eq!(reply.stop_reason, Some(StopReason::ToolUse));
    let ContentBlock::ToolUse { id, name, input } = &reply.content[0] else {
        panic!("expected a tool call, got {:?}", reply.content);
    };
    assert_eq!(name, "get_weather");
    assert_eq!(input, &json!({"city":"example city","unit":"c"}));
    let mut follow_up = first.clone();
    follow_up.messages.push(MessageParam::from(&*reply));
    follow_up
        .messages
        .push(MessageParam::user(vec![ContentBlockParam::tool_result(
            id.clone(),
            "18 degrees",
        )]));
    let answer = c.messages().create(&follow_up).await.unwrap();
    assert_eq!(answer.stop_reason, Some(StopReason::EndTurn));
    assert!(!answer.text().is_empty());
}

#[tokio::test]
async fn thinking_blocks_come_first_with_a_signature() {
    let sim = Sim::start().await;
    let params = ask("think about it", 4096).thinking(ThinkingConfig::Enabled {
        budget_tokens: 1024,
        display: None,
    });
    let msg = sim.client().messages().create(&params).await.unwrap();
    let ContentBlock::Thinking {
        thinking,
        signature,
    } = &msg.content[0]
    else {
        panic!("expected thinking first: {:?}", msg.content);
    };
    assert!(!thinking.is_empty() && !signature.is_empty());
    assert!(matches!(msg.content[1], ContentBlock::Text { .. }));
}

#[tokio::test]
async fn images_documents_and_cache_breakpoints_are_accepted_and_counted() {
    let sim = Sim::start().await;
    let c = sim.client();
    let long_system = "You answer questions about the attached files. ".repeat(400);
    let mut params = ask("unused", 32);
    params.system = Some(SystemPrompt::Blocks(vec![SystemBlock {
        text: long_system,
        cache_control: Some(CacheControl::ephemeral()),
    }]));
    params.messages = vec![MessageParam::user(vec![
        ContentBlockParam::image_base64(ImageMediaType::Png, "iVBORw0KGgo="),
        ContentBlockParam::document(DocumentSource::pdf_base64("JVBERi0xLjQK")),
        ContentBlockParam::document(DocumentSource::plain_text("Plain notes.")),
        ContentBlockParam::text("echo: files read"),
    ])];
    let first = c.messages().create(&params).await.unwrap();
    assert_eq!(first.text(), "files read");
    assert!(first.usage.input_tokens > 1600 + 3000, "{:?}", first.usage);
    let written = first.usage.cache_creation_input_tokens;
    assert!(written > 0, "{:?}", first.usage);
    assert_eq!(
        first
            .usage
            .cache_creation
            .unwrap()
            .ephemeral_5m_input_tokens,
        written
    );
    let second = c.messages().create(&params).await.unwrap();
    assert_eq!(second.usage.cache_read_input_tokens, written);

    let counted = c
        .messages()
        .count_tokens(&CountTokensParams::from(&params))
        .await
        .unwrap();
    let u = &second.usage;
    assert_eq!(
        counted.input_tokens,
        u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens
    );
    assert!(counted.request_id().is_some());
}

#[tokio::test]
async fn api_errors_have_the_sdk_classes_and_request_ids() {
    let sim = Sim::with(rampart_sim::SimConfig {
        api_key: Some("sk-ant-right".into()),
        ..rampart_sim::SimConfig::default()
    })
    .await;
    let wrong = client(&sim.url, "sk-ant-wrong");
    let err = wrong.messages().create(&ask("hi", 8)).await.unwrap_err();
    let Error::Authentication(e) = &err else {
        panic!("expected Authentication, got {err:?}");
    };
    assert_eq!(
        (e.status(), e.error_type(), e.message()),
        (Some(401), "authentication_error", "invalid x-api-key")
    );
    assert!(err.request_id().unwrap().starts_with("req_"));
    assert!(!err.to_string().contains("sk-ant-wrong"));

    let right = client(&sim.url, "sk-ant-right");
    let err = right
        .messages()
        .create(&ask("hi", 8).clone_with_model("claude-nonexistent-9"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let mut empty = ask("hi", 8);
    empty.messages.clear();
    let err = right.messages().create(&empty).await.unwrap_err();
    assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
    assert_eq!(
        sim.calls("messages").await,
        3,
        "client errors are not retried"
    );
}

#[tokio::test]
async fn misuse_is_refused_before_anything_is_sent() {
    let sim = Sim::start().await;
    let c = sim.client();
    let err = c.messages().create(&ask("hi", 64_000)).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("streaming is required")),
        "{err:?}"
    );
    // With an explicit timeout the caller has chosen; the request goes.
    let long = c
        .with_timeout(std::time::Duration::from_secs(30))
        .messages()
        .create(&ask("echo: ok", 64_000))
        .await
        .unwrap();
    assert_eq!(long.text(), "ok");
    let mut sneaky = ask("hi", 8);
    sneaky.extra.insert("stream".into(), true.into());
    assert!(matches!(
        c.messages().create(&sneaky).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(sim.calls("messages").await, 1);
}

/// Test-only: the same request for another model.
trait WithModel {
    fn clone_with_model(&self, model: &str) -> Self;
}

impl WithModel for rampart_client::types::MessageCreateParams {
    fn clone_with_model(&self, model: &str) -> Self {
        let mut p = self.clone();
        p.model = model.to_owned();
        p
    }
}
