//! The simulator's prompt accounting: the shared estimator ([`rampart_api::tokens`]) split into
//! prefix units for prompt caching (see the crate docs for the rule).

use serde_json::Value;

pub use rampart_api::tokens::estimate_input_tokens;
pub(crate) use rampart_api::tokens::{
    BLOCK_OVERHEAD, MESSAGE_OVERHEAD, block_tokens, text_tokens, tool_tokens,
};

use crate::error::ApiError;
use crate::validate::Params;

/// A prompt-cache TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// `5m` (default).
    FiveMinutes,
    /// `1h`.
    OneHour,
}

impl Ttl {
    /// The lifetime of an entry.
    pub(crate) const fn duration(self) -> std::time::Duration {
        match self {
            Self::FiveMinutes => std::time::Duration::from_secs(300),
            Self::OneHour => std::time::Duration::from_secs(3600),
        }
    }
}

/// One piece of the cacheable prefix, in order tools → system → messages.
#[derive(Debug, Clone)]
pub(crate) struct Unit<'a> {
    /// Its tokens (message overhead is counted on a message's first unit).
    pub tokens: u64,
    /// Separates sections and messages in the prefix hash.
    pub tag: &'static [u8],
    /// The JSON hashed for this unit.
    pub value: &'a Value,
    /// Breakpoint TTL when this unit carries `cache_control`.
    pub ttl: Option<Ttl>,
    /// Whether the automatic (top-level) breakpoint may land here.
    pub cacheable: bool,
}

/// The prompt split into units, with the total input tokens.
#[derive(Debug, Clone)]
pub(crate) struct Prompt<'a> {
    /// Units in prefix order.
    pub units: Vec<Unit<'a>>,
    /// Sum of unit tokens; equals [`estimate_input_tokens`] of the body.
    pub total: u64,
    /// Whether any breakpoint is set.
    pub has_breakpoints: bool,
}

fn ttl_of(v: &Value, path: &dyn Fn() -> String) -> Result<Option<Ttl>, ApiError> {
    let Some(cc) = v.get("cache_control").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    parse_cache_control(cc, path)
}

fn parse_cache_control(cc: &Value, path: &dyn Fn() -> String) -> Result<Option<Ttl>, ApiError> {
    if cc.get("type").and_then(Value::as_str) != Some("ephemeral") {
        return Err(ApiError::invalid(format!(
            "{}.cache_control.type: Input should be 'ephemeral'",
            path()
        )));
    }
    match cc.get("ttl") {
        None | Some(Value::Null) => Ok(Some(Ttl::FiveMinutes)),
        Some(Value::String(s)) if s == "5m" => Ok(Some(Ttl::FiveMinutes)),
        Some(Value::String(s)) if s == "1h" => Ok(Some(Ttl::OneHour)),
        Some(_) => Err(ApiError::invalid(format!(
            "{}.cache_control.ttl: Input should be '5m' or '1h'",
            path()
        ))),
    }
}

/// Splits a validated request into prefix units and checks its `cache_control` breakpoints
/// (at most 4 including the automatic one; every `1h` before any `5m`).
///
/// # Errors
/// 400 for a bad `cache_control`, more than four breakpoints or a `1h` breakpoint after a `5m` one.
pub(crate) fn prompt<'a>(p: &Params<'a>) -> Result<Prompt<'a>, ApiError> {
    let mut units = Vec::with_capacity(p.tools.len() + p.messages.len() * 2 + 2);
    let mut explicit = 0usize;
    for (i, tool) in p.tools.iter().enumerate() {
        let ttl = ttl_of(tool, &|| format!("tools.{i}"))?;
        explicit += usize::from(ttl.is_some());
        units.push(Unit {
            tokens: tool_tokens(tool),
            tag: b"T",
            value: tool,
            ttl,
            cacheable: true,
        });
    }
    match p.system {
        Some(Value::Array(blocks)) => {
            for (j, b) in blocks.iter().enumerate() {
                let ttl = ttl_of(b, &|| format!("system.{j}"))?;
                explicit += usize::from(ttl.is_some());
                let tokens = BLOCK_OVERHEAD + block_tokens(b);
                units.push(Unit {
                    tokens,
                    tag: b"S",
                    value: b,
                    ttl,
                    cacheable: true,
                });
            }
        }
        Some(s @ Value::String(text)) => {
            let tokens = BLOCK_OVERHEAD + text_tokens(text);
            units.push(Unit {
                tokens,
                tag: b"S",
                value: s,
                ttl: None,
                cacheable: true,
            });
        }
        _ => {}
    }
    for (i, m) in p.messages.iter().enumerate() {
        let tag: &'static [u8] = match m.get("role").and_then(Value::as_str) {
            Some("assistant") => b"A",
            _ => b"U",
        };
        match m.get("content") {
            Some(Value::Array(blocks)) if !blocks.is_empty() => {
                for (j, b) in blocks.iter().enumerate() {
                    let ttl = ttl_of(b, &|| format!("messages.{i}.content.{j}"))?;
                    explicit += usize::from(ttl.is_some());
                    let kind = b.get("type").and_then(Value::as_str);
                    let cacheable = !matches!(kind, Some("thinking" | "redacted_thinking"));
                    let first = j == 0;
                    units.push(Unit {
                        tokens: BLOCK_OVERHEAD
                            + block_tokens(b)
                            + if first { MESSAGE_OVERHEAD } else { 0 },
                        tag: if first { tag } else { b"+" },
                        value: b,
                        ttl: ttl.filter(|_| cacheable),
                        cacheable,
                    });
                }
            }
            Some(content @ Value::String(s)) => units.push(Unit {
                tokens: MESSAGE_OVERHEAD + text_tokens(s),
                tag,
                value: content,
                ttl: None,
                cacheable: true,
            }),
            other => units.push(Unit {
                tokens: MESSAGE_OVERHEAD,
                tag,
                value: other.unwrap_or(&Value::Null),
                ttl: None,
                cacheable: false,
            }),
        }
    }
    let mut total_breakpoints = explicit;
    if let Some(cc) = p.auto_cache {
        let ttl = parse_cache_control(cc, &|| String::new())
            .map_err(|e| ApiError::invalid(e.message.trim_start_matches('.').to_owned()))?;
        total_breakpoints += 1;
        if let Some(unit) = units.iter_mut().rev().find(|u| u.cacheable)
            && unit.ttl.is_none()
        {
            unit.ttl = ttl;
        }
    }
    if total_breakpoints > 4 {
        return Err(ApiError::invalid(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {total_breakpoints}."
        )));
    }
    let mut seen_5m = false;
    for u in &units {
        match u.ttl {
            Some(Ttl::FiveMinutes) => seen_5m = true,
            Some(Ttl::OneHour) if seen_5m => {
                return Err(ApiError::invalid(
                    "cache_control: a breakpoint with ttl='1h' must not come after a breakpoint with ttl='5m'",
                ));
            }
            _ => {}
        }
    }
    let total = units.iter().map(|u| u.tokens).sum();
    let has_breakpoints = units.iter().any(|u| u.ttl.is_some());
    Ok(Prompt {
        units,
        total,
        has_breakpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Endpoint, message_params};
    use rampart_api::tokens::IMAGE_TOKENS;
    use serde_json::json;

    #[test]
    fn text_costs_a_quarter_token_per_character_rounded_up() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("ééé"), 1);
    }

    #[test]
    fn estimate_matches_the_prompt_units() {
        let body = json!({
            "model": "m", "max_tokens": 5,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}},
                                              {"type": "text", "text": "what is it?"}]}
            ]
        });
        let p = message_params(&body, Endpoint::Create).unwrap();
        let prompt = prompt(&p).unwrap();
        assert_eq!(prompt.total, estimate_input_tokens(&body));
        // 4 + ceil(11/4)=3 for the first message.
        assert_eq!(prompt.units[2].tokens, 7);
        assert_eq!(
            prompt.units[4].tokens,
            MESSAGE_OVERHEAD + BLOCK_OVERHEAD + IMAGE_TOKENS
        );
    }

    #[test]
    fn five_breakpoints_are_rejected_with_the_api_message() {
        let block = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
        let body = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [block, block, block, block, block]}]});
        let p = message_params(&body, Endpoint::Create).unwrap();
        let err = prompt(&p).unwrap_err();
        assert_eq!(
            err.message,
            "A maximum of 4 blocks with cache_control may be provided. Found 5."
        );
    }

    #[test]
    fn automatic_cache_control_uses_a_slot() {
        let block = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
        let body = json!({"model": "m", "max_tokens": 5, "cache_control": {"type": "ephemeral"},
            "messages": [{"role": "user", "content": [block, block, block, block, {"type": "text", "text": "y"}]}]});
        let p = message_params(&body, Endpoint::Create).unwrap();
        assert!(prompt(&p).unwrap_err().message.ends_with("Found 5."));
    }

    #[test]
    fn one_hour_breakpoint_after_five_minute_one_is_rejected() {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]});
        let p = message_params(&body, Endpoint::Create).unwrap();
        assert_eq!(prompt(&p).unwrap_err().status, 400);
    }
}
