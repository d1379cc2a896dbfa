//! Test strategies for JSON text of a chosen shape: objects of some of the given members, in any
//! order, written in any of JSON's whitespace styles, so that a hand-written reader is held to
//! serde on the texts real clients and upstreams write (and on the ones they could).

use proptest::prelude::*;

/// The JSON text of an object of `members` (key, value as JSON text) in this order, in whitespace
/// style `style` (compact, as SDKs write it, spaced, over lines, with tabs), with its first member
/// written again at the end when `repeat_first`.
pub(crate) fn object_text(
    members: &[(String, String)],
    style: usize,
    repeat_first: bool,
) -> String {
    let (colon, comma, open, close) = [
        (":", ",", "{", "}"),
        (": ", ", ", "{", "}"),
        (" : ", " , ", "{ ", " }"),
        (":\n", ",\r\n  ", "{\n  ", "\n}"),
        ("\t:", "\t,", "{\t", "\t}"),
    ][style % 5];
    let mut parts: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}{colon}{v}", serde_json::to_string(k).unwrap()))
        .collect();
    if repeat_first && let Some(first) = parts.first().cloned() {
        parts.push(first);
    }
    format!("{open}{}{close}", parts.join(comma))
}

/// An object of some of `members` (each kept with probability `keep`), shuffled, in any
/// whitespace style, its first member repeated with probability `repeat`.
pub(crate) fn object(
    members: Vec<(&'static str, BoxedStrategy<String>)>,
    keep: f64,
    repeat: f64,
) -> BoxedStrategy<String> {
    let n = members.len();
    let (keys, values): (Vec<_>, Vec<_>) = members.into_iter().unzip();
    (
        values,
        proptest::collection::vec(prop::bool::weighted(keep), n),
    )
        .prop_map(move |(values, kept)| {
            keys.iter()
                .zip(values)
                .zip(kept)
                .filter(|(_, kept)| *kept)
                .map(|((k, v), _)| ((*k).to_owned(), v))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
        .prop_flat_map(move |m| (Just(m), 0usize..5, prop::bool::weighted(repeat)))
        .prop_map(|(m, style, repeat_first)| object_text(&m, style, repeat_first))
        .boxed()
}
