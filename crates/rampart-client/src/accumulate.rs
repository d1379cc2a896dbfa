//! Builds the final [`Message`] from stream events, as the official SDKs do: `message_start`
//! gives the shell, `content_block_start` appends a block at its index, deltas grow it (text,
//! thinking, the signature, tool input JSON — parsed when the block stops), `message_delta` sets
//! the stop reason and the usage (its counts are cumulative: they replace, and the optional ones
//! keep the `message_start` value when absent), `message_stop` completes it.
//!
//! The event order is checked: a block out of order, a delta that does not fit its block or tool
//! input that is not JSON is an [`Error::InvalidResponse`], never a silently wrong message.

use rampart_api::stream::{Delta, StreamEvent};
use rampart_api::{ContentBlock, Message};
use serde_json::Value;

use crate::error::Error;

/// Folds stream events into a [`Message`].
///
/// ```
/// use rampart_client::MessageAccumulator;
/// use rampart_client::types::stream::StreamEvent;
///
/// let events = [
///     r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-6","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
///     r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
///     r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
///     r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", world"}}"#,
///     r#"{"type":"content_block_stop","index":0}"#,
///     r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
///     r#"{"type":"message_stop"}"#,
/// ];
/// let mut acc = MessageAccumulator::new();
/// for e in events {
///     acc.push(&serde_json::from_str::<StreamEvent>(e)?)?;
/// }
/// let message = acc.into_message()?;
/// assert_eq!(message.text(), "Hello, world");
/// assert_eq!((message.usage.input_tokens, message.usage.output_tokens), (9, 4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MessageAccumulator {
    message: Option<Message>,
    /// Tool input JSON collected per block index (tool_use and raw blocks that get input deltas).
    input_json: Vec<Option<String>>,
    complete: bool,
}

impl MessageAccumulator {
    /// An empty accumulator.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event.
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] when the event does not fit what came before.
    pub fn push(&mut self, event: &StreamEvent) -> Result<(), Error> {
        if let StreamEvent::MessageStart { message } = event {
            if self.message.is_some() {
                return Err(bad("a second message_start"));
            }
            self.input_json = vec![None; message.content.len()];
            self.message = Some(message.clone());
            return Ok(());
        }
        if matches!(event, StreamEvent::Ping | StreamEvent::Error { .. }) {
            return Ok(());
        }
        let Some(message) = self.message.as_mut() else {
            return Err(bad(format!("{} before message_start", event.name())));
        };
        if self.complete {
            return Err(bad(format!("{} after message_stop", event.name())));
        }
        match event {
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                if *index != message.content.len() {
                    return Err(bad(format!(
                        "content_block_start for index {index}, expected {}",
                        message.content.len()
                    )));
                }
                message.content.push(content_block.clone());
                self.input_json.push(None);
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let block = message
                    .content
                    .get_mut(*index)
                    .ok_or_else(|| bad(format!("content_block_delta for unknown index {index}")))?;
                apply_delta(block, delta, &mut self.input_json[*index], *index)?;
            }
            StreamEvent::ContentBlockStop { index } => {
                let block = message
                    .content
                    .get_mut(*index)
                    .ok_or_else(|| bad(format!("content_block_stop for unknown index {index}")))?;
                if let Some(json) = self.input_json[*index].take() {
                    set_input(block, &json, *index)?;
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                message.stop_reason = delta.stop_reason;
                message.stop_sequence.clone_from(&delta.stop_sequence);
                let u = &mut message.usage;
                u.output_tokens = usage.output_tokens;
                if let Some(n) = usage.input_tokens {
                    u.input_tokens = n;
                }
                if let Some(n) = usage.cache_creation_input_tokens {
                    u.cache_creation_input_tokens = n;
                }
                if let Some(n) = usage.cache_read_input_tokens {
                    u.cache_read_input_tokens = n;
                }
            }
            StreamEvent::MessageStop => self.complete = true,
            StreamEvent::MessageStart { .. } | StreamEvent::Ping | StreamEvent::Error { .. } => {}
        }
        Ok(())
    }

    /// The message so far (tool inputs are filled in when their block stops).
    #[must_use]
    pub const fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// Whether `message_stop` has been seen.
    #[must_use]
    pub const fn is_complete(&self) -> bool {
        self.complete
    }

    /// The finished message.
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] when the stream did not reach `message_stop`.
    pub fn into_message(self) -> Result<Message, Error> {
        match self.message {
            Some(m) if self.complete => Ok(m),
            Some(_) => Err(bad("the stream ended before message_stop")),
            None => Err(bad("the stream ended before message_start")),
        }
    }
}

fn apply_delta(
    block: &mut ContentBlock,
    delta: &Delta,
    json: &mut Option<String>,
    index: usize,
) -> Result<(), Error> {
    match (block, delta) {
        (ContentBlock::Text { text }, Delta::TextDelta { text: more }) => text.push_str(more),
        (ContentBlock::Thinking { thinking, .. }, Delta::ThinkingDelta { thinking: more }) => {
            thinking.push_str(more);
        }
        (ContentBlock::Thinking { signature, .. }, Delta::SignatureDelta { signature: s }) => {
            signature.clone_from(s);
        }
        (
            ContentBlock::ToolUse { .. } | ContentBlock::Other(_),
            Delta::InputJsonDelta { partial_json },
        ) => {
            json.get_or_insert_with(String::new).push_str(partial_json);
        }
        // Citations are not modelled on response text blocks yet; unknown deltas and deltas of
        // unknown blocks are skipped, as the SDKs skip what they do not know.
        (ContentBlock::Text { .. }, Delta::CitationsDelta { .. })
        | (_, Delta::Other(_))
        | (ContentBlock::Other(_), _) => {}
        (block, delta) => {
            return Err(bad(format!(
                "{} for a {} block at index {index}",
                delta_name(delta),
                block_name(block)
            )));
        }
    }
    Ok(())
}

/// Sets a block's `input` from its collected JSON (an empty buffer keeps the start's `{}`).
fn set_input(block: &mut ContentBlock, json: &str, index: usize) -> Result<(), Error> {
    if json.trim().is_empty() {
        return Ok(());
    }
    let value: Value = serde_json::from_str(json).map_err(|e| {
        bad(format!(
            "tool input of the block at index {index} is not JSON: {e}"
        ))
    })?;
    match block {
        ContentBlock::ToolUse { input, .. } => *input = value,
        ContentBlock::Other(Value::Object(raw)) => {
            raw.insert("input".to_owned(), value);
        }
        _ => {}
    }
    Ok(())
}

const fn delta_name(d: &Delta) -> &'static str {
    match d {
        Delta::TextDelta { .. } => "text_delta",
        Delta::InputJsonDelta { .. } => "input_json_delta",
        Delta::ThinkingDelta { .. } => "thinking_delta",
        Delta::SignatureDelta { .. } => "signature_delta",
        Delta::CitationsDelta { .. } => "citations_delta",
        Delta::Other(_) => "unknown delta",
    }
}

const fn block_name(b: &ContentBlock) -> &'static str {
    match b {
        ContentBlock::Text { .. } => "text",
        ContentBlock::Thinking { .. } => "thinking",
        ContentBlock::RedactedThinking { .. } => "redacted_thinking",
        ContentBlock::ToolUse { .. } => "tool_use",
        ContentBlock::Other(_) => "unknown",
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::InvalidResponse {
        message: message.into(),
        request_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> StreamEvent {
        serde_json::from_value(v).unwrap()
    }

    fn start() -> StreamEvent {
        ev(
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":5,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":5,"ephemeral_1h_input_tokens":0}}}}),
        )
    }

    fn run(events: Vec<StreamEvent>) -> Result<Message, Error> {
        let mut acc = MessageAccumulator::new();
        for e in &events {
            acc.push(e)?;
        }
        acc.into_message()
    }

    #[test]
    fn thinking_tool_use_and_cumulative_usage() {
        let m = run(vec![
            start(),
            ev(json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}})),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me "}})),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"think."}})),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}})),
            ev(json!({"type":"content_block_stop","index":0})),
            ev(json!({"type":"ping"})),
            ev(json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}})),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}})),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Par"}})),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\"}"}})),
            ev(json!({"type":"content_block_stop","index":1})),
            ev(json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":20}})),
            ev(json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":25,"input_tokens":11}})),
            ev(json!({"type":"message_stop"})),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&m.content).unwrap(),
            json!([{"type":"thinking","thinking":"Let me think.","signature":"c2ln"},
                   {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}])
        );
        assert_eq!(m.stop_reason, Some(rampart_api::StopReason::ToolUse));
        let u = &m.usage;
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens
            ),
            (11, 25, 5, 3)
        );
        assert_eq!(u.cache_creation.unwrap().ephemeral_5m_input_tokens, 5);
    }

    #[test]
    fn a_tool_call_with_no_input_deltas_keeps_the_empty_object() {
        let m = run(vec![
            start(),
            ev(json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}})),
            ev(json!({"type":"content_block_stop","index":0})),
            ev(json!({"type":"message_stop"})),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&m.content[0]).unwrap()["input"],
            json!({})
        );
    }

    #[test]
    fn server_tool_blocks_collect_their_input_as_raw_json() {
        let m = run(vec![
            start(),
            ev(json!({"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}})),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"rust\"}"}})),
            ev(json!({"type":"content_block_stop","index":0})),
            ev(json!({"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}})),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"citations_delta","citation":{"type":"web_search_result_location"}}})),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"ok"}})),
            ev(json!({"type":"content_block_stop","index":1})),
            ev(json!({"type":"message_stop"})),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&m.content[0]).unwrap(),
            json!({"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"rust"}})
        );
        assert_eq!(m.text(), "ok");
    }

    #[test]
    fn broken_sequences_are_errors_not_wrong_messages() {
        let block0 = ev(
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        );
        let cases: Vec<(Vec<StreamEvent>, &str)> = vec![
            (
                vec![ev(json!({"type":"message_stop"}))],
                "message_stop before message_start",
            ),
            (vec![start(), start()], "a second message_start"),
            (
                vec![
                    start(),
                    ev(
                        json!({"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}),
                    ),
                ],
                "content_block_start for index 1, expected 0",
            ),
            (
                vec![
                    start(),
                    ev(
                        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}),
                    ),
                ],
                "content_block_delta for unknown index 0",
            ),
            (
                vec![
                    start(),
                    block0.clone(),
                    ev(
                        json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}),
                    ),
                ],
                "input_json_delta for a text block at index 0",
            ),
            (
                vec![
                    start(),
                    ev(
                        json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
                    ),
                    ev(
                        json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}),
                    ),
                    ev(json!({"type":"content_block_stop","index":0})),
                ],
                "tool input of the block at index 0 is not JSON",
            ),
            (
                vec![start(), block0.clone()],
                "the stream ended before message_stop",
            ),
            (
                vec![start(), ev(json!({"type":"message_stop"})), block0],
                "content_block_start after message_stop",
            ),
            (vec![], "the stream ended before message_start"),
        ];
        for (events, want) in cases {
            let err = run(events).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want}"
            );
        }
    }
}
