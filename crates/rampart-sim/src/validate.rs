//! Request validation, as the API does it: credentials, `anthropic-version`, and the body of
//! `POST /v1/messages` / `count_tokens` (also used for each batch item).
//!
//! Unknown body fields are ignored. Messages follow the API's pydantic style: `"<path>: <problem>"`.

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::error::{ApiError, bad_field, required};

/// Known `anthropic-version` values. `2026-10-21` is what the current SDKs (Python 2.14, the
/// TypeScript SDK of the same date) send.
pub(crate) const VERSIONS: [&str; 3] = [rampart_api::ANTHROPIC_VERSION, "2023-01-01", "2026-10-21"];

/// Whether the simulator accepts an `anthropic-version`: a known value, or any well-formed
/// `YYYY-MM-DD` from 2026 on (versions newer SDKs may send).
pub(crate) fn version_accepted(v: &str) -> bool {
    if VERSIONS.contains(&v) {
        return true;
    }
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        let part = v.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse::<u32>().ok())
            .flatten()
    };
    matches!(
        (num(0..4), num(5..7), num(8..10)),
        (Some(2026..), Some(1..=12), Some(1..=31))
    )
}

/// The presented credential: `x-api-key`, else `Authorization: Bearer <token>`.
pub(crate) fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok())
        && !key.is_empty()
    {
        return Some(key);
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the credential against the configured key (any non-empty key when none is configured).
///
/// # Errors
/// 401 `x-api-key header is required` when absent, `invalid x-api-key` when wrong.
pub(crate) fn check_auth<'h>(
    headers: &'h HeaderMap,
    expected: Option<&str>,
) -> Result<&'h str, ApiError> {
    let Some(presented) = credential(headers) else {
        return Err(ApiError::auth("x-api-key header is required"));
    };
    match expected {
        Some(key) if key != presented => Err(ApiError::auth("invalid x-api-key")),
        _ => Ok(presented),
    }
}

/// Checks `anthropic-version` (a repeated header is joined with `", "` and so rejected).
///
/// # Errors
/// 400 when missing or not a known version.
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all("anthropic-version").iter();
    let Some(first) = values.next() else {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    };
    let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for more in values {
        joined.push_str(", ");
        joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    if version_accepted(&joined) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "anthropic-version: \"{joined}\" is not a valid version"
        )))
    }
}

/// The message shown for malformed JSON, in the API's wording.
pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of data",
        serde_json::error::Category::Syntax => "unexpected character",
        serde_json::error::Category::Data => "invalid value",
        serde_json::error::Category::Io => "could not read body",
    };
    let col = e.column();
    ApiError::invalid(format!(
        "The request body is not valid JSON: {what}: line {} column {col} (char {})",
        e.line(),
        col.saturating_sub(1)
    ))
}

/// Which endpoint the body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/messages` (and batch items): `max_tokens` required.
    Create,
    /// `POST /v1/messages/count_tokens`: no `max_tokens`.
    CountTokens,
}

/// `tool_choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    /// Call a tool only when asked by name (see the crate docs).
    Auto,
    /// Must call some tool.
    Any,
    /// Must call this tool.
    Tool(&'a str),
    /// No tool calls.
    None,
}

/// `thinking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Thinking {
    /// No thinking block.
    Off,
    /// A thinking block first.
    On {
        /// `budget_tokens` for `enabled`; `None` for `adaptive`.
        budget: Option<u64>,
        /// `display: "omitted"`: empty thinking text, signature only.
        omitted: bool,
    },
}

/// A validated messages request, borrowing from the parsed body.
#[derive(Debug, Clone)]
pub(crate) struct Params<'a> {
    /// `model` as sent.
    pub model: &'a str,
    /// `max_tokens` (0 for count_tokens).
    pub max_tokens: u64,
    /// `messages`.
    pub messages: &'a [Value],
    /// `system`, if present and not null.
    pub system: Option<&'a Value>,
    /// `tools` (empty when absent).
    pub tools: &'a [Value],
    /// `tool_choice` (default auto).
    pub tool_choice: ToolChoice<'a>,
    /// The raw `tool_choice` value (hashed into the reply seed).
    pub tool_choice_raw: Option<&'a Value>,
    /// `thinking`.
    pub thinking: Thinking,
    /// The raw `thinking` value (hashed into the reply seed).
    pub thinking_raw: Option<&'a Value>,
    /// `stop_sequences`.
    pub stop_sequences: Vec<&'a str>,
    /// `stream`.
    pub stream: bool,
    /// Top-level `cache_control` (automatic breakpoint).
    pub auto_cache: Option<&'a Value>,
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Reads a non-negative integer (pydantic also accepts integral floats).
fn non_negative_int(v: &Value, field: &str) -> Result<u64, ApiError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    if v.as_i64().is_some() {
        return Err(bad_field(
            field,
            "Input should be greater than or equal to 0",
        ));
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => Ok(f as u64),
        Some(f) if f < 0.0 => Err(bad_field(
            field,
            "Input should be greater than or equal to 0",
        )),
        _ => Err(bad_field(field, "Input should be a valid integer")),
    }
}

/// Validates a messages body.
///
/// # Errors
/// 400 `invalid_request_error` naming the first bad field.
pub(crate) fn message_params(body: &Value, endpoint: Endpoint) -> Result<Params<'_>, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            "Input should be a valid dictionary or object to extract fields from",
        ));
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(required("model")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(bad_field(
                "model",
                "String should have at least 1 character",
            ));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad_field("model", "Input should be a valid string")),
    };
    let max_tokens = match (endpoint, present(obj, "max_tokens")) {
        (Endpoint::Create, None) => return Err(required("max_tokens")),
        (Endpoint::Create, Some(v)) => non_negative_int(v, "max_tokens")?,
        (Endpoint::CountTokens, _) => 0,
    };
    let messages = match present(obj, "messages") {
        None => return Err(required("messages")),
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(bad_field("messages", "Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(bad_field("messages", "at least one message is required"));
    }
    for (i, m) in messages.iter().enumerate() {
        check_message(m, i, i + 1 == messages.len())?;
    }
    let system = present(obj, "system");
    if let Some(system) = system {
        check_system(system)?;
    }
    let tools = match present(obj, "tools") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(bad_field("tools", "Input should be a valid list")),
    };
    check_tools(tools)?;
    let tool_choice_raw = present(obj, "tool_choice");
    let tool_choice =
        tool_choice_raw.map_or(Ok(ToolChoice::Auto), |v| check_tool_choice(v, tools))?;
    let thinking_raw = present(obj, "thinking");
    let thinking = match thinking_raw {
        None => Thinking::Off,
        Some(v) => check_thinking(v, endpoint, max_tokens)?,
    };
    let stop_sequences = match present(obj, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().ok_or_else(|| {
                    bad_field(
                        &format!("stop_sequences.{i}"),
                        "Input should be a valid string",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_field("stop_sequences", "Input should be a valid list")),
    };
    let stream = match present(obj, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_field("stream", "Input should be a valid boolean")),
    };
    if let Some(t) = present(obj, "temperature") {
        match t.as_f64() {
            None => return Err(bad_field("temperature", "Input should be a valid number")),
            Some(x) if x < 0.0 => {
                return Err(bad_field(
                    "temperature",
                    "Input should be greater than or equal to 0",
                ));
            }
            Some(x) if x > 1.0 => {
                return Err(bad_field(
                    "temperature",
                    "Input should be less than or equal to 1",
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(m) = present(obj, "metadata") {
        let Some(m) = m.as_object() else {
            return Err(bad_field("metadata", "Input should be a valid dictionary"));
        };
        if present(m, "user_id").is_some_and(|u| !u.is_string()) {
            return Err(bad_field(
                "metadata.user_id",
                "Input should be a valid string",
            ));
        }
    }
    Ok(Params {
        model,
        max_tokens,
        messages,
        system,
        tools,
        tool_choice,
        tool_choice_raw,
        thinking,
        thinking_raw,
        stop_sequences,
        stream,
        auto_cache: present(obj, "cache_control"),
    })
}

const NON_EMPTY: &str = "messages: all messages must have non-empty content except for the optional final assistant message";

fn check_message(m: &Value, i: usize, last: bool) -> Result<(), ApiError> {
    let Some(m) = m.as_object() else {
        return Err(bad_field(
            &format!("messages.{i}"),
            "Input should be a valid dictionary",
        ));
    };
    let role = match present(m, "role") {
        None => return Err(required(&format!("messages.{i}.role"))),
        Some(r) => r.as_str(),
    };
    // `system` turns (mid-conversation system blocks) arrived in the 2026 API; Claude Code sends one.
    let assistant = match role {
        Some("user" | "system") => false,
        Some("assistant") => true,
        _ => {
            return Err(bad_field(
                &format!("messages.{i}.role"),
                "Input should be 'user', 'assistant' or 'system'",
            ));
        }
    };
    let may_be_empty = last && assistant;
    match present(m, "content") {
        None => Err(required(&format!("messages.{i}.content"))),
        Some(Value::String(s)) if s.is_empty() && !may_be_empty => {
            Err(ApiError::invalid(NON_EMPTY))
        }
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            if blocks.is_empty() && !may_be_empty {
                return Err(ApiError::invalid(NON_EMPTY));
            }
            for (j, b) in blocks.iter().enumerate() {
                check_block(b, &format!("messages.{i}.content.{j}"))?;
            }
            Ok(())
        }
        Some(_) => Err(bad_field(
            &format!("messages.{i}.content"),
            "Input should be a valid list",
        )),
    }
}

fn check_block(b: &Value, path: &str) -> Result<(), ApiError> {
    let Some(b) = b.as_object() else {
        return Err(bad_field(path, "Input should be a valid dictionary"));
    };
    match b.get("type").and_then(Value::as_str) {
        None => Err(required(&format!("{path}.type"))),
        Some("text") => match b.get("text") {
            Some(Value::String(s)) if s.is_empty() => Err(ApiError::invalid(
                "messages: text content blocks must be non-empty",
            )),
            Some(Value::String(_)) => Ok(()),
            None | Some(Value::Null) => Err(required(&format!("{path}.text"))),
            Some(_) => Err(bad_field(
                &format!("{path}.text"),
                "Input should be a valid string",
            )),
        },
        Some("tool_use") => {
            if !b.get("name").is_some_and(Value::is_string) {
                return Err(required(&format!("{path}.name")));
            }
            if !b.get("id").is_some_and(Value::is_string) {
                return Err(required(&format!("{path}.id")));
            }
            Ok(())
        }
        Some("tool_result") => {
            if b.get("tool_use_id").is_some_and(Value::is_string) {
                Ok(())
            } else {
                Err(required(&format!("{path}.tool_use_id")))
            }
        }
        Some(_) => Ok(()),
    }
}

fn check_system(system: &Value) -> Result<(), ApiError> {
    match system {
        Value::String(_) => Ok(()),
        Value::Array(blocks) => {
            for (j, b) in blocks.iter().enumerate() {
                let Some(obj) = b.as_object() else {
                    return Err(bad_field(
                        &format!("system.{j}"),
                        "Input should be a valid dictionary",
                    ));
                };
                if obj.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad_field(
                        &format!("system.{j}.type"),
                        "Input should be 'text'",
                    ));
                }
                if !obj.get("text").is_some_and(Value::is_string) {
                    return Err(required(&format!("system.{j}.text")));
                }
            }
            Ok(())
        }
        _ => Err(bad_field("system", "Input should be a valid list")),
    }
}

/// Whether a tool definition is a custom (client) tool, which needs an `input_schema`.
pub(crate) fn is_custom_tool(tool: &Map<String, Value>) -> bool {
    matches!(
        tool.get("type").and_then(Value::as_str),
        None | Some("custom")
    )
}

fn check_tools(tools: &[Value]) -> Result<(), ApiError> {
    for (i, t) in tools.iter().enumerate() {
        let Some(obj) = t.as_object() else {
            return Err(bad_field(
                &format!("tools.{i}"),
                "Input should be a valid dictionary",
            ));
        };
        let Some(name) = obj.get("name").and_then(Value::as_str) else {
            return Err(required(&format!("tools.{i}.name")));
        };
        if is_custom_tool(obj) && !obj.get("input_schema").is_some_and(Value::is_object) {
            return Err(required(&format!("tools.{i}.input_schema")));
        }
        let dup = tools[..i]
            .iter()
            .any(|u| u.get("name").and_then(Value::as_str) == Some(name));
        if dup {
            return Err(bad_field("tools", "Tool names must be unique."));
        }
    }
    Ok(())
}

fn check_tool_choice<'a>(v: &'a Value, tools: &[Value]) -> Result<ToolChoice<'a>, ApiError> {
    let choice = match v.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Any,
        Some("none") => ToolChoice::None,
        Some("tool") => match v.get("name").and_then(Value::as_str) {
            Some(name) => ToolChoice::Tool(name),
            None => return Err(required("tool_choice.tool.name")),
        },
        _ => {
            return Err(bad_field(
                "tool_choice.type",
                "Input should be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    };
    if matches!(choice, ToolChoice::Any | ToolChoice::Tool(_)) && tools.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice may only be specified while providing tools.",
        ));
    }
    if let ToolChoice::Tool(name) = choice
        && !tools
            .iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(name))
    {
        return Err(ApiError::invalid(format!(
            "tool_choice: Tool '{name}' not found in provided tools"
        )));
    }
    Ok(choice)
}

fn check_thinking(v: &Value, endpoint: Endpoint, max_tokens: u64) -> Result<Thinking, ApiError> {
    let omitted = v.get("display").and_then(Value::as_str) == Some("omitted");
    match v.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(Thinking::Off),
        Some("adaptive") => Ok(Thinking::On {
            budget: None,
            omitted,
        }),
        Some("enabled") => {
            let field = "thinking.enabled.budget_tokens";
            let Some(raw) = v.get("budget_tokens").filter(|b| !b.is_null()) else {
                return Err(required(field));
            };
            let budget = non_negative_int(raw, field)?;
            if budget < 1024 {
                return Err(bad_field(
                    field,
                    "Input should be greater than or equal to 1024",
                ));
            }
            if endpoint == Endpoint::Create && budget >= max_tokens {
                return Err(ApiError::invalid(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
                ));
            }
            Ok(Thinking::On {
                budget: Some(budget),
                omitted,
            })
        }
        _ => Err(bad_field(
            "thinking.type",
            "Input should be 'enabled', 'disabled' or 'adaptive'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_newer_dated_versions_are_accepted() {
        for ok in ["2023-06-01", "2023-01-01", "2026-10-21", "2027-03-05"] {
            assert!(version_accepted(ok), "{ok}");
        }
        for bad in [
            "2099-1-01",
            "2024-01-01",
            "2023-06-01, 2023-06-01",
            "latest",
            "2026-13-01",
            "",
        ] {
            assert!(!version_accepted(bad), "{bad}");
        }
    }
}
