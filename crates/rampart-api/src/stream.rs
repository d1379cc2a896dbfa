//! Server-sent events of a streamed `POST /v1/messages`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorBody;
use crate::messages::{ContentBlock, Message, StopReason};

/// Incremental change to a content block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    /// More text.
    TextDelta {
        /// The fragment.
        text: String,
    },
    /// A fragment of the tool input JSON.
    InputJsonDelta {
        /// The fragment (concatenate, parse after `content_block_stop`).
        partial_json: String,
    },
    /// More thinking.
    ThinkingDelta {
        /// The fragment.
        thinking: String,
    },
    /// The thinking block's signature.
    SignatureDelta {
        /// The signature.
        signature: String,
    },
    /// A citation for the text block.
    CitationsDelta {
        /// The citation object.
        citation: Value,
    },
    /// A delta type not modelled here, kept as raw JSON with its `type`.
    #[serde(untagged)]
    Other(Value),
}

/// `delta` of a `message_delta` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    /// Final stop reason.
    pub stop_reason: Option<StopReason>,
    /// Matched stop sequence.
    pub stop_sequence: Option<String>,
}

/// Cumulative usage in `message_delta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaUsage {
    /// Output tokens so far (cumulative).
    pub output_tokens: u64,
    /// Input tokens, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Cache writes, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Cache reads, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

/// One SSE event; the `event:` name equals the `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// First event: the message with empty content.
    MessageStart {
        /// The message shell.
        message: Message,
    },
    /// A block begins.
    ContentBlockStart {
        /// Position in the final content array.
        index: usize,
        /// The empty block.
        content_block: ContentBlock,
    },
    /// A block grows.
    ContentBlockDelta {
        /// Block position.
        index: usize,
        /// The change.
        delta: Delta,
    },
    /// A block ends.
    ContentBlockStop {
        /// Block position.
        index: usize,
    },
    /// Stop reason and cumulative usage.
    MessageDelta {
        /// Stop reason.
        delta: MessageDeltaBody,
        /// Cumulative usage.
        usage: DeltaUsage,
    },
    /// Last event.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// In-band failure after headers were sent.
    Error {
        /// The error.
        error: ErrorBody,
    },
}

impl StreamEvent {
    /// The SSE `event:` name.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Ping => "ping",
            Self::Error { .. } => "error",
        }
    }

    /// The event framed as SSE: `event: NAME\ndata: JSON\n\n`.
    #[must_use]
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        format!("event: {}\ndata: {}\n\n", self.name(), data)
    }
}

/// Raw JSON passthrough helper for events the types above do not model.
pub type RawEvent = Value;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn citation_and_unknown_deltas_parse() {
        let ev: StreamEvent = serde_json::from_value(json!({
            "type":"content_block_delta","index":0,
            "delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"x"}}
        }))
        .unwrap();
        assert!(matches!(
            ev,
            StreamEvent::ContentBlockDelta {
                delta: Delta::CitationsDelta { .. },
                ..
            }
        ));
        let later = json!({"type":"compaction_delta","content":"x"});
        let d: Delta = serde_json::from_value(later.clone()).unwrap();
        assert_eq!(d, Delta::Other(later));
    }
}
