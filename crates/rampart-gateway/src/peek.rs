//! One-pass request inspection: validate the body is a UTF-8 JSON object and borrow the few fields
//! the proxy needs, skipping the rest without building a tree.
//!
//! Batch creation bodies get a second pass only for keys with model scopes
//! ([`first_refused_batch_model`]): it borrows each `requests[i].custom_id` and
//! `requests[i].params.model` and skips everything else (the prompts).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ProxyError;

mod plain;

/// The fields of a Messages request the hot path reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens`, when it is a whole number above 0 (as [`rampart_api::tokens::whole_tokens`]
    /// reads it).
    pub max_tokens: Option<u64>,
    /// Where the `model` value (the JSON string, quotes included) sits in the body, for routing
    /// to rewrite it in place.
    pub model_span: Option<std::ops::Range<usize>>,
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
    Ok(peeked(text, f.model, f.stream, f.max_tokens))
}

/// [`Peeked`] from the three values as written in `text` (`null` reads as absent).
fn peeked(
    text: &str,
    model_raw: Option<&RawValue>,
    stream: Option<&RawValue>,
    max_tokens: Option<&RawValue>,
) -> Peeked {
    let model = model_raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    // The raw value borrows from `text`: its offset is the distance between the two.
    let model_span = model_raw.filter(|_| model.is_some()).map(|raw| {
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        start..start + raw.get().len()
    });
    Peeked {
        model,
        model_span,
        stream: stream.is_some_and(|raw| raw.get() == "true"),
        max_tokens: asked(max_tokens.map_or(0, rampart_api::tokens::whole_tokens_raw)),
    }
}

/// [`Peeked::max_tokens`] from the whole number read (0 when absent or not one): 0 asks for
/// nothing the API generates, so it reads as absent. Both body readers go through here.
fn asked(max_tokens: u64) -> Option<u64> {
    Some(max_tokens).filter(|&n| n > 0)
}

/// [`peek`] and the body's token estimate for a reservation ([`Estimate`]), in one pass over the
/// body when that pass can stand for the two reads: a plain chat turn is read by hand
/// ([`plain`]), any other body by serde
/// ([`rampart_api::tokens::estimate_request_peeking`]); when neither pass can, [`peek`] alone (the
/// estimate is then made when it is needed, as without this).
///
/// # Errors
/// As [`peek`].
pub fn peek_estimating(body: &[u8]) -> Result<(Peeked, Option<Estimate>), ProxyError> {
    let Ok(text) = std::str::from_utf8(body) else {
        return peek(body).map(|p| (p, None));
    };
    if let Some((peeked, estimate)) = plain::read(text) {
        return Ok((peeked, Some(estimate)));
    }
    peek_estimating_generally(text)
}

/// [`peek_estimating`] of any UTF-8 body, by serde.
fn peek_estimating_generally(text: &str) -> Result<(Peeked, Option<Estimate>), ProxyError> {
    if text.trim_start().starts_with('{')
        && let Some((e, raw)) = rampart_api::tokens::estimate_request_peeking(text)
    {
        let estimate = Estimate {
            input_tokens: e.input_tokens,
            max_tokens: e.max_tokens,
        };
        return Ok((
            peeked(text, raw.model, raw.stream, raw.max_tokens),
            Some(estimate),
        ));
    }
    peek(text.as_bytes()).map(|p| (p, None))
}

/// What a Messages body reserves before pricing: the shared input-token estimate and
/// `max_tokens` (0 when absent or not a non-negative integer), as
/// [`rampart_api::tokens::estimate_request`] reads them. Its model is [`Peeked::model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// `max_tokens`, or 0.
    pub max_tokens: u64,
}

/// A batch request a key may not run: its `custom_id` and its model, both cut short for display
/// (`(none)` when absent or not a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBatchItem {
    /// `requests[i].custom_id`, at most 64 characters.
    pub custom_id: String,
    /// `requests[i].params.model`, at most 100 characters.
    pub model: String,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    requests: Option<Vec<BatchItem<'a>>>,
}

#[derive(Deserialize)]
struct BatchItem<'a> {
    #[serde(borrow, default)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<BatchParams<'a>>,
}

#[derive(Deserialize)]
struct BatchParams<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// The first item of a batch creation body whose `params.model` `allowed` refuses; an item with
/// no model (or one that is not a string) is refused too, since its model cannot be checked.
/// `body` must already have passed [`peek`]. A body without `requests` has nothing to run and is
/// left for the upstream to reject.
///
/// # Errors
/// [`ProxyError::InvalidRequest`] when `requests` is not an array of objects with object
/// `params`, or a field appears twice (what would be checked must be what runs).
pub fn first_refused_batch_model(
    body: &[u8],
    allowed: impl Fn(&str) -> bool,
) -> Result<Option<RefusedBatchItem>, ProxyError> {
    let parsed: BatchBody<'_> = serde_json::from_slice(body).map_err(|_| {
        ProxyError::InvalidRequest(
            "requests: must be an array of objects, each with a params object and a model"
                .to_owned(),
        )
    })?;
    for item in parsed.requests.unwrap_or_default() {
        let model = item.params.and_then(|p| p.model).and_then(json_str);
        if model.as_deref().is_some_and(&allowed) {
            continue;
        }
        return Ok(Some(RefusedBatchItem {
            custom_id: shown(item.custom_id.and_then(json_str), 64),
            model: shown(model, 100),
        }));
    }
    Ok(None)
}

/// A JSON string's value, borrowed when it has no escapes; `None` for any other JSON value.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<&str>(raw.get())
        .map(Cow::Borrowed)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(Cow::Owned))
        .ok()
}

fn shown(value: Option<Cow<'_, str>>, max_chars: usize) -> String {
    value.map_or_else(
        || "(none)".to_owned(),
        |v| v.chars().take(max_chars).collect(),
    )
}

/// Validate that `body` is well-formed UTF-8 JSON of any shape.
///
/// # Errors
/// As [`peek`].
pub fn validate(body: &[u8]) -> Result<(), ProxyError> {
    peek(body).map(|_| ())
}

fn position(e: &serde_json::Error) -> String {
    // The class and position only: serde_json's own messages may echo the input back. A field
    // given twice is named, as its name is one of the fields read here, never the client's text.
    let duplicate = (e.classify() == serde_json::error::Category::Data)
        .then(|| e.to_string())
        .and_then(|m| {
            let name = m.strip_prefix("duplicate field `")?.split('`').next()?;
            Some(format!("duplicate field `{name}`"))
        });
    format!(
        "{} at line {} column {}",
        duplicate.as_deref().unwrap_or(match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected value",
            serde_json::error::Category::Io => "read error",
        }),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `peek_estimating` answers what `peek` and the separate estimate answer, in one pass or not.
    fn same_as_two_reads(body: &[u8]) {
        let shown = String::from_utf8_lossy(body);
        let (one, estimate) = match peek_estimating(body) {
            Ok(v) => v,
            Err(e) => {
                assert_eq!(Err(e), peek(body), "{shown}");
                return;
            }
        };
        assert_eq!(Ok(&one), peek(body).as_ref(), "{shown}");
        if let Some(e) = estimate {
            let two = rampart_api::tokens::estimate_request(body).expect("an estimate");
            assert_eq!(
                (e.input_tokens, e.max_tokens),
                (two.input_tokens, two.max_tokens)
            );
            assert_eq!(one.model.as_deref(), two.model.as_deref(), "{shown}");
        }
    }

    #[test]
    fn peek_estimating_answers_as_the_two_reads() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Summarise it."}]}"#,
            br#"  {"model":"claude\u002dx","max_tokens":null,"stream":"true","system":"be brief","messages":[]}"#,
            br#"{"model":null,"stream":false,"max_tokens":-1,"tools":[{"name":"t","input_schema":{"type":"object"}}]}"#,
            br#"{"model":5,"max_tokens":1e3}"#,
            br#"{"model":"a","model":"b"}"#,
            br#"{"stream":true,"stream":true}"#,
            br#"{"messages":[{"role":"user","role":"user","content":"x"}],"model":"m"}"#,
            br#"{"metadata":1,"metadata":2,"model":"m","max_tokens":3}"#,
            b"{\"model\":\"\xff\"}",
            br#"[{"model":"a"}]"#,
            br#""model""#,
            br#"{"model":"a"} trailing"#,
            br#"{"model":"a","#,
            b"",
        ];
        for body in bodies {
            same_as_two_reads(body);
        }
        let deep = format!(
            r#"{{"model":"m","messages":{}{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        same_as_two_reads(deep.as_bytes());
        let (p, e) = peek_estimating(bodies[0]).unwrap();
        assert_eq!(
            (p.model.as_deref(), p.stream, p.max_tokens),
            (Some("claude-sonnet-4-6"), true, Some(64))
        );
        assert_eq!(e.map(|e| e.max_tokens), Some(64), "read in one pass");
        assert!(
            peek_estimating(bodies[4]).is_err(),
            "a repeated model is refused"
        );
    }

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
    fn the_model_span_covers_the_raw_string_for_rewriting() {
        let body = br#"{ "max_tokens": 5, "model" : "claude\u002dx" , "messages": []}"#;
        let p = peek(body).unwrap();
        let span = p.model_span.unwrap();
        assert_eq!(&body[span], br#""claude\u002dx""#);
        assert_eq!(peek(br#"{"model":5}"#).unwrap().model_span, None);
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

    fn haiku(m: &str) -> bool {
        m.starts_with("claude-haiku-")
    }

    #[test]
    fn batch_items_are_checked_in_order_and_the_first_refused_is_named() {
        let body = br#"{"requests":[
            {"custom_id":"a","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user","content":"secret prompt"}]}},
            {"params":{"messages":[],"model":"claude-opus-5"},"custom_id":"b"},
            {"custom_id":"c","params":{"model":"claude-opus-4"}}
        ],"other":{"x":[1,2]}}"#;
        let refused = first_refused_batch_model(body, haiku).unwrap().unwrap();
        assert_eq!(
            refused,
            RefusedBatchItem {
                custom_id: "b".into(),
                model: "claude-opus-5".into()
            }
        );
        let allowed = br#"{"requests":[{"custom_id":"a","params":{"model":"claude-haiku-4-5"}}]}"#;
        assert_eq!(first_refused_batch_model(allowed, haiku).unwrap(), None);
        assert_eq!(first_refused_batch_model(b"{}", haiku).unwrap(), None);
    }

    #[test]
    fn batch_items_without_a_checkable_model_are_refused() {
        for body in [
            &br#"{"requests":[{"custom_id":"x","params":{}}]}"#[..],
            br#"{"requests":[{"custom_id":"x","params":{"model":7}}]}"#,
            br#"{"requests":[{"custom_id":"x"}]}"#,
        ] {
            let refused = first_refused_batch_model(body, |_| true).unwrap().unwrap();
            assert_eq!(
                (refused.custom_id.as_str(), refused.model.as_str()),
                ("x", "(none)")
            );
        }
        let escaped = br#"{"requests":[{"params":{"model":"claude-opus"}}]}"#;
        let refused = first_refused_batch_model(escaped, haiku).unwrap().unwrap();
        assert_eq!(
            (refused.custom_id.as_str(), refused.model.as_str()),
            ("(none)", "claude-opus")
        );
        let long = format!(
            r#"{{"requests":[{{"custom_id":"{}","params":{{"model":"{}"}}}}]}}"#,
            "c".repeat(500),
            "m".repeat(500)
        );
        let refused = first_refused_batch_model(long.as_bytes(), haiku)
            .unwrap()
            .unwrap();
        assert_eq!((refused.custom_id.len(), refused.model.len()), (64, 100));
    }

    #[test]
    fn a_field_given_twice_is_named() {
        let body = br#"{"model":"m","max_tokens":1,"messages":[],"max_tokens":9}"#;
        for got in [peek(body).err(), peek_estimating(body).err()] {
            let Some(ProxyError::MalformedJson(m)) = got else {
                panic!("{got:?}");
            };
            assert!(
                m.starts_with("duplicate field `max_tokens` at line 1"),
                "{m}"
            );
        }
    }

    #[test]
    fn malformed_batches_and_duplicate_fields_are_invalid_requests() {
        for body in [
            &br#"{"requests":{"custom_id":"x"}}"#[..],
            br#"{"requests":["x"]}"#,
            br#"{"requests":[{"params":"claude-haiku-4-5"}]}"#,
            br#"{"requests":[{"params":{"model":"claude-haiku-4-5","model":"claude-opus-5"}}]}"#,
            br#"{"requests":[],"requests":[{"params":{"model":"claude-opus-5"}}]}"#,
        ] {
            assert!(
                matches!(
                    first_refused_batch_model(body, haiku),
                    Err(ProxyError::InvalidRequest(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn batch_checks_never_panic(s in "\\PC{0,64}") {
            let _ = first_refused_batch_model(s.as_bytes(), haiku);
        }

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
