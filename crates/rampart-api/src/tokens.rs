//! The deterministic input-token estimator shared by the simulator (its `usage` and
//! `count_tokens`) and the gateway (what a request reserves against input-token limits and
//! budgets before the upstream reports real usage).
//!
//! The rule: text costs `ceil(chars / 4)`; each message +4, each content or system block +3; each
//! tool 8 + `ceil(JSON chars / 4)`; an image 1600, a PDF or URL document 3000.

use serde_json::Value;

/// Fixed cost of each message (role and turn markers).
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Fixed cost of each content block and each system block.
pub const BLOCK_OVERHEAD: u64 = 3;
/// Fixed cost of each tool definition.
pub const TOOL_OVERHEAD: u64 = 8;
/// Cost of any image.
pub const IMAGE_TOKENS: u64 = 1600;
/// Cost of a PDF or URL document.
pub const PDF_TOKENS: u64 = 3000;

/// `ceil(chars / 4)`, counting Unicode scalar values.
#[must_use]
pub fn text_tokens(s: &str) -> u64 {
    (s.chars().count() as u64).div_ceil(4)
}

/// Characters of the value's compact JSON form, leaving out `cache_control` keys.
#[must_use]
pub fn json_chars(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => digits(n),
        Value::String(s) => s.chars().count() as u64 + 2,
        Value::Array(items) => 2 + items.iter().map(|i| json_chars(i) + 1).sum::<u64>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .filter(|(k, _)| k.as_str() != "cache_control")
                .map(|(k, v)| k.chars().count() as u64 + 4 + json_chars(v))
                .sum::<u64>()
        }
    }
}

fn digits(n: &serde_json::Number) -> u64 {
    struct Count(u64);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len() as u64;
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = std::fmt::write(&mut c, format_args!("{n}"));
    c.0
}

fn json_tokens(v: &Value) -> u64 {
    json_chars(v).div_ceil(4)
}

/// Tokens of one tool definition.
#[must_use]
pub fn tool_tokens(tool: &Value) -> u64 {
    TOOL_OVERHEAD + json_tokens(tool)
}

fn nested_tokens(content: &Value) -> u64 {
    match content {
        Value::String(s) => text_tokens(s),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| BLOCK_OVERHEAD + block_tokens(b))
            .sum(),
        Value::Null => 0,
        other => json_tokens(other),
    }
}

/// Tokens of one content block, without [`BLOCK_OVERHEAD`].
#[must_use]
pub fn block_tokens(b: &Value) -> u64 {
    let str_of = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
    match b.get("type").and_then(Value::as_str) {
        Some("text") => text_tokens(str_of("text")),
        Some("image") => IMAGE_TOKENS,
        Some("document") => {
            let source = b.get("source");
            match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
                Some("text") => text_tokens(
                    source
                        .and_then(|s| s.get("data"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                ),
                Some("content") => nested_tokens(
                    source
                        .and_then(|s| s.get("content"))
                        .unwrap_or(&Value::Null),
                ),
                _ => PDF_TOKENS,
            }
        }
        Some("tool_use") => {
            text_tokens(str_of("name")) + json_tokens(b.get("input").unwrap_or(&Value::Null))
        }
        Some("tool_result") => nested_tokens(b.get("content").unwrap_or(&Value::Null)),
        Some("thinking") => text_tokens(str_of("thinking")),
        Some("redacted_thinking") => text_tokens(str_of("data")),
        _ => json_tokens(b),
    }
}

fn system_block_tokens(system: &Value) -> u64 {
    match system {
        Value::String(s) => BLOCK_OVERHEAD + text_tokens(s),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| BLOCK_OVERHEAD + block_tokens(b))
            .sum(),
        _ => 0,
    }
}

fn message_tokens(m: &Value) -> u64 {
    MESSAGE_OVERHEAD
        + match m.get("content") {
            Some(Value::String(s)) => text_tokens(s),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .map(|b| BLOCK_OVERHEAD + block_tokens(b))
                .sum(),
            _ => 0,
        }
}

/// Estimates the input tokens of a messages or count_tokens body (tools, system and messages).
///
/// Never fails: missing or odd fields count as zero. The same number is reported as the total input
/// (`input_tokens` + cache reads + cache writes) by `POST /v1/messages` and as `input_tokens` by
/// `count_tokens`.
#[must_use]
pub fn estimate_input_tokens(body: &Value) -> u64 {
    let tools: u64 = body
        .get("tools")
        .and_then(Value::as_array)
        .map_or(0, |t| t.iter().map(tool_tokens).sum());
    let system = body.get("system").map_or(0, system_block_tokens);
    let messages: u64 = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| m.iter().map(message_tokens).sum());
    tools + system + messages
}
