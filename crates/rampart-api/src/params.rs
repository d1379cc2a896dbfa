//! The request side of `POST /v1/messages` and `POST /v1/messages/count_tokens`: typed parameters,
//! input messages and their content blocks, tools, tool choice, thinking and prompt caching.
//!
//! Every optional field is left out of the JSON when unset, so a serialised value is exactly what
//! the official SDKs send. Fields the API adds later can be passed through `extra` (flattened into
//! the body) until they are modelled here.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person (or program) asking.
    User,
    /// The model.
    Assistant,
}

/// `cache_control` TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CacheTtl {
    /// Five minutes (the default), refreshed free on every hit.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// One hour; every 1h breakpoint must come before any 5m one.
    #[serde(rename = "1h")]
    OneHour,
}

/// The only `cache_control` type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheControlType {
    /// `"ephemeral"`.
    #[default]
    Ephemeral,
}

/// A prompt-cache breakpoint: `{"type":"ephemeral","ttl"?:"5m"|"1h"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheControl {
    /// Always `ephemeral`.
    #[serde(rename = "type")]
    pub kind: CacheControlType,
    /// TTL; the API's default is 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<CacheTtl>,
}

impl CacheControl {
    /// An ephemeral breakpoint with the default TTL (5 minutes).
    #[must_use]
    pub const fn ephemeral() -> Self {
        Self {
            kind: CacheControlType::Ephemeral,
            ttl: None,
        }
    }

    /// An ephemeral breakpoint with `ttl`.
    #[must_use]
    pub const fn with_ttl(ttl: CacheTtl) -> Self {
        Self {
            kind: CacheControlType::Ephemeral,
            ttl: Some(ttl),
        }
    }
}

/// Media types accepted for images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageMediaType {
    /// `image/jpeg`.
    #[serde(rename = "image/jpeg")]
    Jpeg,
    /// `image/png`.
    #[serde(rename = "image/png")]
    Png,
    /// `image/gif`.
    #[serde(rename = "image/gif")]
    Gif,
    /// `image/webp`.
    #[serde(rename = "image/webp")]
    Webp,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes, base64-encoded.
    Base64 {
        /// The image format.
        media_type: ImageMediaType,
        /// Base64 of the image bytes.
        data: String,
    },
    /// An image the API fetches.
    Url {
        /// Its URL.
        url: String,
    },
}

/// Where a document comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DocumentSource {
    /// A base64 PDF (`media_type` `application/pdf`).
    Base64 {
        /// `application/pdf`.
        media_type: String,
        /// Base64 of the PDF.
        data: String,
    },
    /// Plain text (`media_type` `text/plain`).
    Text {
        /// `text/plain`.
        media_type: String,
        /// The text.
        data: String,
    },
    /// The document given as content blocks (or a string).
    Content {
        /// The content.
        content: MessageContent,
    },
    /// A PDF the API fetches.
    Url {
        /// Its URL.
        url: String,
    },
}

impl DocumentSource {
    /// A base64-encoded PDF.
    #[must_use]
    pub fn pdf_base64(data: impl Into<String>) -> Self {
        Self::Base64 {
            media_type: "application/pdf".to_owned(),
            data: data.into(),
        }
    }

    /// A plain-text document.
    #[must_use]
    pub fn plain_text(data: impl Into<String>) -> Self {
        Self::Text {
            media_type: "text/plain".to_owned(),
            data: data.into(),
        }
    }
}

/// `citations` setting of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitationsConfig {
    /// Whether the model may cite this document.
    pub enabled: bool,
}

/// One content block of an input message.
///
/// Block types this enum does not model (server-tool results, search results, later additions)
/// can be sent as [`ContentBlockParam::Other`] with their JSON as the API documents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlockParam {
    /// Text.
    Text {
        /// The text (must not be empty when it carries `cache_control`).
        text: String,
        /// Prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
        /// Citations of an assistant turn, sent back as received.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        citations: Option<Vec<Value>>,
    },
    /// An image (user turns).
    Image {
        /// Where it comes from.
        source: ImageSource,
        /// Prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// A document: PDF, plain text or content blocks (user turns).
    Document {
        /// Where it comes from.
        source: DocumentSource,
        /// A title for the model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Context about the document, not cited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
        /// Whether citations are enabled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        citations: Option<CitationsConfig>,
        /// Prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// A tool call the model made (assistant turns), sent back in a conversation.
    ToolUse {
        /// The `toolu_...` id.
        id: String,
        /// Tool name.
        name: String,
        /// The arguments (a JSON object).
        input: Value,
        /// Prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// The result of a tool call (user turns).
    ToolResult {
        /// The `tool_use` block's id.
        tool_use_id: String,
        /// What the tool returned: a string or text/image/document blocks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<MessageContent>,
        /// Whether the tool failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        /// Prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// A thinking block, sent back unchanged and in its original place.
    Thinking {
        /// The thinking text.
        thinking: String,
        /// Its signature.
        signature: String,
    },
    /// A redacted thinking block, sent back unchanged.
    RedactedThinking {
        /// Opaque payload.
        data: String,
    },
    /// Any other block, as raw JSON with its `type`.
    #[serde(untagged)]
    Other(Value),
}

impl ContentBlockParam {
    /// A text block.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            cache_control: None,
            citations: None,
        }
    }

    /// A base64 image block.
    #[must_use]
    pub fn image_base64(media_type: ImageMediaType, data: impl Into<String>) -> Self {
        Self::Image {
            source: ImageSource::Base64 {
                media_type,
                data: data.into(),
            },
            cache_control: None,
        }
    }

    /// A document block from `source`.
    #[must_use]
    pub const fn document(source: DocumentSource) -> Self {
        Self::Document {
            source,
            title: None,
            context: None,
            citations: None,
            cache_control: None,
        }
    }

    /// A successful tool result with text content.
    #[must_use]
    pub fn tool_result(tool_use_id: impl Into<String>, content: impl Into<MessageContent>) -> Self {
        Self::ToolResult {
            tool_use_id: tool_use_id.into(),
            content: Some(content.into()),
            is_error: None,
            cache_control: None,
        }
    }

    /// This block with a cache breakpoint (no-op on thinking blocks and raw blocks, which cannot
    /// carry one through this helper).
    #[must_use]
    pub fn with_cache_control(mut self, cc: CacheControl) -> Self {
        match &mut self {
            Self::Text { cache_control, .. }
            | Self::Image { cache_control, .. }
            | Self::Document { cache_control, .. }
            | Self::ToolUse { cache_control, .. }
            | Self::ToolResult { cache_control, .. } => *cache_control = Some(cc),
            Self::Thinking { .. } | Self::RedactedThinking { .. } | Self::Other(_) => {}
        }
        self
    }
}

/// Content of a message or tool result: a string (shorthand for one text block) or blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// One text block.
    Text(String),
    /// Blocks.
    Blocks(Vec<ContentBlockParam>),
}

impl From<&str> for MessageContent {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for MessageContent {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<Vec<ContentBlockParam>> for MessageContent {
    fn from(blocks: Vec<ContentBlockParam>) -> Self {
        Self::Blocks(blocks)
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageParam {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub content: MessageContent,
}

impl MessageParam {
    /// A user turn.
    #[must_use]
    pub fn user(content: impl Into<MessageContent>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant turn (a prefill when it is the last one).
    #[must_use]
    pub fn assistant(content: impl Into<MessageContent>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

impl From<&crate::messages::Message> for MessageParam {
    /// The assistant turn to send back: every response block as its input form (thinking blocks
    /// unchanged, as the API requires).
    fn from(m: &crate::messages::Message) -> Self {
        use crate::messages::ContentBlock as B;
        let blocks = m
            .content
            .iter()
            .map(|b| match b {
                B::Text { text } => ContentBlockParam::text(text.clone()),
                B::Thinking {
                    thinking,
                    signature,
                } => ContentBlockParam::Thinking {
                    thinking: thinking.clone(),
                    signature: signature.clone(),
                },
                B::RedactedThinking { data } => {
                    ContentBlockParam::RedactedThinking { data: data.clone() }
                }
                B::ToolUse { id, name, input } => ContentBlockParam::ToolUse {
                    id: id.clone(),
                    name: name.clone(),
                    input: input.clone(),
                    cache_control: None,
                },
                B::Other(raw) => ContentBlockParam::Other(raw.clone()),
            })
            .collect();
        Self::assistant(MessageContent::Blocks(blocks))
    }
}

/// A text block of the system prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "text")]
pub struct SystemBlock {
    /// The text.
    pub text: String,
    /// Prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

/// The system prompt: a string, or text blocks (which may carry cache breakpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    /// Plain text.
    Text(String),
    /// Text blocks.
    Blocks(Vec<SystemBlock>),
}

impl From<&str> for SystemPrompt {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for SystemPrompt {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

/// A custom tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Name the model uses to call it.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema (`type: object`) of its input.
    pub input_schema: Value,
    /// Prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
    /// Strict schema adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl Tool {
    /// A tool named `name` whose input follows `input_schema`.
    #[must_use]
    pub fn new(name: impl Into<String>, input_schema: Value) -> Self {
        Self {
            name: name.into(),
            description: None,
            input_schema,
            cache_control: None,
            strict: None,
        }
    }

    /// This tool with a description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// An entry of `tools`: a custom tool, or a server tool (`web_search_20250305`, …) as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolDefinition {
    /// A custom tool.
    Custom(Tool),
    /// A dated server tool, e.g. `{"type":"web_search_20250305","name":"web_search"}`.
    Server(Value),
}

impl From<Tool> for ToolDefinition {
    fn from(t: Tool) -> Self {
        Self::Custom(t)
    }
}

/// How the model may use tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (the default).
    Auto {
        /// At most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// The model must call some tool.
    Any {
        /// At most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// The model must call this tool.
    Tool {
        /// The tool.
        name: String,
        /// At most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// No tool calls.
    None,
}

/// Whether thinking text is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingDisplay {
    /// Summarised thinking (the default).
    Summarized,
    /// Empty thinking text, signature only.
    Omitted,
}

/// Extended thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingConfig {
    /// A fixed budget: at least 1024 and below `max_tokens`.
    Enabled {
        /// Tokens the model may think with.
        budget_tokens: u64,
        /// What is returned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display: Option<ThinkingDisplay>,
    },
    /// No thinking.
    Disabled,
    /// The model decides how much to think.
    Adaptive {
        /// What is returned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display: Option<ThinkingDisplay>,
    },
}

/// Request metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// An opaque end-user id (a uuid or hash, never personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Capacity tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    /// Priority capacity when available (the default).
    Auto,
    /// Standard capacity only.
    StandardOnly,
}

/// The body of `POST /v1/messages` (without `stream`, which the client sets per call) and of
/// each batch item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageCreateParams {
    /// Model id or alias.
    pub model: String,
    /// Upper bound on output tokens.
    pub max_tokens: u64,
    /// The conversation, oldest first.
    pub messages: Vec<MessageParam>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemPrompt>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDefinition>>,
    /// How it may call them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Strings that end generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Request metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Extended thinking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingConfig>,
    /// Sampling temperature, 0.0–1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Capacity tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<ServiceTier>,
    /// Automatic caching: a breakpoint on the last cacheable block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
    /// Fields not modelled above (e.g. `output_config`, `container`), flattened into the body.
    /// Must not repeat a modelled field or `stream`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessageCreateParams {
    /// Parameters with only the required fields set.
    #[must_use]
    pub fn new(model: impl Into<String>, max_tokens: u64, messages: Vec<MessageParam>) -> Self {
        Self {
            model: model.into(),
            max_tokens,
            messages,
            system: None,
            tools: None,
            tool_choice: None,
            stop_sequences: None,
            metadata: None,
            thinking: None,
            temperature: None,
            top_p: None,
            top_k: None,
            service_tier: None,
            cache_control: None,
            extra: Map::new(),
        }
    }

    /// With a system prompt.
    #[must_use]
    pub fn system(mut self, system: impl Into<SystemPrompt>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// With tools.
    #[must_use]
    pub fn tools(mut self, tools: impl IntoIterator<Item = impl Into<ToolDefinition>>) -> Self {
        self.tools = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// With a tool choice.
    #[must_use]
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// With stop sequences.
    #[must_use]
    pub fn stop_sequences(mut self, stops: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.stop_sequences = Some(stops.into_iter().map(Into::into).collect());
        self
    }

    /// With extended thinking.
    #[must_use]
    pub const fn thinking(mut self, thinking: ThinkingConfig) -> Self {
        self.thinking = Some(thinking);
        self
    }

    /// With an end-user id in `metadata`.
    #[must_use]
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.metadata = Some(Metadata {
            user_id: Some(user_id.into()),
        });
        self
    }

    /// With a sampling temperature.
    #[must_use]
    pub const fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }
}

/// The body of `POST /v1/messages/count_tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountTokensParams {
    /// Model id or alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<MessageParam>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemPrompt>,
    /// Tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDefinition>>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Extended thinking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingConfig>,
    /// Automatic caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
    /// Fields not modelled above, flattened into the body.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl From<&MessageCreateParams> for CountTokensParams {
    /// The part of a Messages request that counts toward its input.
    fn from(p: &MessageCreateParams) -> Self {
        Self {
            model: p.model.clone(),
            messages: p.messages.clone(),
            system: p.system.clone(),
            tools: p.tools.clone(),
            tool_choice: p.tool_choice.clone(),
            thinking: p.thinking,
            cache_control: p.cache_control,
            extra: Map::new(),
        }
    }
}

/// Response of `count_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageTokensCount {
    /// Input tokens of messages, system and tools together.
    pub input_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_params_serialise_only_the_required_fields() {
        let p = MessageCreateParams::new("claude-sonnet-4-6", 64, vec![MessageParam::user("Hi")]);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]})
        );
    }

    #[test]
    fn every_block_type_serialises_as_the_api_documents_it() {
        let blocks = vec![
            ContentBlockParam::text("look")
                .with_cache_control(CacheControl::with_ttl(CacheTtl::OneHour)),
            ContentBlockParam::image_base64(ImageMediaType::Png, "iVBOR"),
            ContentBlockParam::Document {
                source: DocumentSource::pdf_base64("JVBER"),
                title: Some("t".into()),
                context: None,
                citations: Some(CitationsConfig { enabled: true }),
                cache_control: None,
            },
            ContentBlockParam::document(DocumentSource::plain_text("plain")),
            ContentBlockParam::tool_result("toolu_1", "42"),
            ContentBlockParam::ToolResult {
                tool_use_id: "toolu_2".into(),
                content: Some(MessageContent::Blocks(vec![ContentBlockParam::text("x")])),
                is_error: Some(true),
                cache_control: None,
            },
        ];
        let v = serde_json::to_value(MessageParam::user(blocks)).unwrap();
        assert_eq!(
            v,
            json!({"role":"user","content":[
                {"type":"text","text":"look","cache_control":{"type":"ephemeral","ttl":"1h"}},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},
                {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBER"},"title":"t","citations":{"enabled":true}},
                {"type":"document","source":{"type":"text","media_type":"text/plain","data":"plain"}},
                {"type":"tool_result","tool_use_id":"toolu_1","content":"42"},
                {"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"x"}],"is_error":true}
            ]})
        );
    }

    #[test]
    fn tools_choice_thinking_system_and_extra_fields_round_trip() {
        let mut p = MessageCreateParams::new("m", 2048, vec![MessageParam::user("weather?")])
            .system(SystemPrompt::Blocks(vec![SystemBlock {
                text: "be brief".into(),
                cache_control: Some(CacheControl::ephemeral()),
            }]))
            .tools([ToolDefinition::Custom(
                Tool::new("get_weather", json!({"type":"object","properties":{}}))
                    .description("Weather"),
            )])
            .tool_choice(ToolChoice::Tool {
                name: "get_weather".into(),
                disable_parallel_tool_use: Some(true),
            })
            .thinking(ThinkingConfig::Enabled {
                budget_tokens: 1024,
                display: Some(ThinkingDisplay::Omitted),
            })
            .stop_sequences(["END"])
            .user_id("u-1")
            .temperature(0.5);
        p.extra
            .insert("output_config".into(), json!({"effort": "low"}));
        p.tools.as_mut().unwrap().push(ToolDefinition::Server(
            json!({"type":"web_search_20250305","name":"web_search"}),
        ));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v["system"][0],
            json!({"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}})
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type":"tool","name":"get_weather","disable_parallel_tool_use":true})
        );
        assert_eq!(
            v["thinking"],
            json!({"type":"enabled","budget_tokens":1024,"display":"omitted"})
        );
        assert_eq!(v["metadata"], json!({"user_id":"u-1"}));
        assert_eq!(v["output_config"], json!({"effort":"low"}));
        assert_eq!(v["tools"][1]["type"], "web_search_20250305");
        let back: MessageCreateParams = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn unknown_blocks_pass_through_as_raw_json() {
        let raw = json!({"type":"search_result","source":"s","title":"t","content":[]});
        let b: ContentBlockParam = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(b, ContentBlockParam::Other(raw.clone()));
        assert_eq!(serde_json::to_value(&b).unwrap(), raw);
    }

    #[test]
    fn a_response_becomes_the_assistant_turn_with_thinking_unchanged() {
        let m: crate::messages::Message = serde_json::from_value(json!({
            "id":"msg_1","type":"message","role":"assistant","model":"m",
            "content":[{"type":"thinking","thinking":"hmm","signature":"sig"},
                       {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":1,"output_tokens":2}
        }))
        .unwrap();
        let turn = MessageParam::from(&m);
        assert_eq!(
            serde_json::to_value(turn).unwrap(),
            json!({"role":"assistant","content":[
                {"type":"thinking","thinking":"hmm","signature":"sig"},
                {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}
            ]})
        );
    }

    #[test]
    fn count_tokens_params_drop_generation_settings() {
        let p = MessageCreateParams::new("m", 10, vec![MessageParam::user("x")]).temperature(1.0);
        let c = CountTokensParams::from(&p);
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            json!({"model":"m","messages":[{"role":"user","content":"x"}]})
        );
    }
}
