//! The response side of `POST /v1/messages`: [`Message`], its content blocks and [`Usage`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Natural end of the turn.
    EndTurn,
    /// `max_tokens` reached.
    MaxTokens,
    /// One of `stop_sequences` was generated.
    StopSequence,
    /// The model wants to call a tool.
    ToolUse,
    /// A long-running server tool turn was paused.
    PauseTurn,
    /// The model refused.
    Refusal,
    /// The context window is full.
    ModelContextWindowExceeded,
}

/// Split of cache-creation tokens by TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCreation {
    /// Tokens written with the 5-minute TTL.
    #[serde(default)]
    pub ephemeral_5m_input_tokens: u64,
    /// Tokens written with the 1-hour TTL.
    #[serde(default)]
    pub ephemeral_1h_input_tokens: u64,
}

/// Token usage of one request. Total input = `input_tokens` + cache creation + cache read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens after the last cache breakpoint.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Cache writes split by TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<CacheCreation>,
    /// `standard`, `priority` or `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
}

/// One content block of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Generated text.
    Text {
        /// The text.
        text: String,
    },
    /// Extended thinking.
    Thinking {
        /// The (summarised) reasoning.
        thinking: String,
        /// Opaque signature to send back unchanged.
        signature: String,
    },
    /// Redacted thinking.
    RedactedThinking {
        /// Opaque payload.
        data: String,
    },
    /// A tool call.
    ToolUse {
        /// `toolu_...` id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments matching the tool's input schema.
        input: Value,
    },
    /// A block type not modelled here (server-tool blocks, later additions), kept as raw JSON
    /// with its `type`, so a response that carries one still parses.
    #[serde(untagged)]
    Other(Value),
}

/// A complete, non-streamed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `msg_...` id.
    pub id: String,
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `"assistant"`.
    pub role: String,
    /// Generated blocks.
    pub content: Vec<ContentBlock>,
    /// The model that served the request.
    pub model: String,
    /// Why generation stopped (null only inside `message_start`).
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that matched, if any.
    pub stop_sequence: Option<String>,
    /// Token usage.
    pub usage: Usage,
}

impl Message {
    /// The text of every `text` block, concatenated in order.
    #[must_use]
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_content_blocks_are_kept_as_raw_json() {
        let raw = json!({"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"q"}});
        let block: ContentBlock = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(block, ContentBlock::Other(raw.clone()));
        assert_eq!(serde_json::to_value(&block).unwrap(), raw);
        let text: ContentBlock =
            serde_json::from_value(json!({"type":"text","text":"hi"})).unwrap();
        assert_eq!(text, ContentBlock::Text { text: "hi".into() });
    }

    #[test]
    fn text_joins_the_text_blocks_only() {
        let m: Message = serde_json::from_value(json!({
            "id":"msg_1","type":"message","role":"assistant","model":"m",
            "content":[{"type":"text","text":"a"},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"b"}],
            "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}
        }))
        .unwrap();
        assert_eq!(m.text(), "ab");
    }
}
