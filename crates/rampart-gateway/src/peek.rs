//! One-pass request inspection: validate the body is a UTF-8 JSON object and borrow the few fields
//! the proxy needs, skipping the rest without building a tree.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// The fields of a Messages request the hot path reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens`, when it is a non-negative integer.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
}

/// Validate `body` and read `model`, `stream` and `max_tokens`. Fields of the wrong type are left
/// for the upstream to reject, as it would without Rampart.
///
/// # Errors
/// [`ProxyError::InvalidUtf8`], [`ProxyError::MalformedJson`] or [`ProxyError::NotAnObject`].
pub fn peek(body: &[u8]) -> Result<Peeked, ProxyError> {
    let text = std::str::from_utf8(body).map_err(|_| ProxyError::InvalidUtf8)?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(ProxyError::NotAnObject),
            Err(e) => Err(ProxyError::MalformedJson(position(&e))),
        };
    }
    let f: Fields<'_> =
        serde_json::from_str(text).map_err(|e| ProxyError::MalformedJson(position(&e)))?;
    Ok(Peeked {
        model: f
            .model
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
        stream: f.stream.is_some_and(|raw| raw.get() == "true"),
        max_tokens: f.max_tokens.and_then(|raw| raw.get().parse::<u64>().ok()),
    })
}

/// Validate that `body` is well-formed UTF-8 JSON of any shape.
///
/// # Errors
/// As [`peek`].
pub fn validate(body: &[u8]) -> Result<(), ProxyError> {
    peek(body).map(|_| ())
}

fn position(e: &serde_json::Error) -> String {
    // serde_json's messages name the class and position only (no input echoed back).
    format!(
        "{} at line {} column {}",
        match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected value",
            serde_json::error::Category::Io => "read error",
        },
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_model_stream_and_max_tokens_and_skips_the_rest() {
        let p = peek(br#"{"tools":[{"name":"x","input_schema":{"type":"object"}}],"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[]}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(p.stream);
        assert_eq!(p.max_tokens, Some(1024));
    }

    #[test]
    fn escaped_model_strings_are_decoded() {
        let p = peek(br#"{"model":"claude\u002dx"}"#).unwrap();
        assert_eq!(p.model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn wrong_types_are_left_for_upstream() {
        let p = peek(br#"{"model":5,"stream":"yes","max_tokens":-1}"#).unwrap();
        assert_eq!(p, Peeked::default());
    }

    #[test]
    fn rejects_malformed_json_invalid_utf8_and_non_objects() {
        assert!(matches!(
            peek(b"{\"model\":"),
            Err(ProxyError::MalformedJson(_))
        ));
        assert!(matches!(peek(b"{} x"), Err(ProxyError::MalformedJson(_))));
        assert!(matches!(
            peek(b"{\"a\":\"\xff\"}"),
            Err(ProxyError::InvalidUtf8)
        ));
        assert_eq!(peek(b"[1,2]"), Err(ProxyError::NotAnObject));
        assert!(matches!(peek(b""), Err(ProxyError::MalformedJson(_))));
        assert!(matches!(
            peek(br#"{"a":1,}"#),
            Err(ProxyError::MalformedJson(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = peek(&bytes);
        }

        #[test]
        fn agrees_with_a_full_parse_on_validity(s in "\\PC{0,64}") {
            let full = serde_json::from_str::<serde_json::Value>(&s);
            let ours = peek(s.as_bytes());
            match full {
                Ok(serde_json::Value::Object(_)) => prop_assert!(ours.is_ok()),
                _ => prop_assert!(ours.is_err()),
            }
        }
    }
}
