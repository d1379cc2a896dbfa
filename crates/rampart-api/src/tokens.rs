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

/// Characters of text per token: the rule's divisor.
pub const CHARS_PER_TOKEN: u64 = 4;

/// Tokens of `chars` characters of text: `ceil(chars / 4)`. The one rule behind
/// [`text_tokens`] and every count of characters here, for callers that counted the characters
/// themselves (the gateway's estimate of the output a cut stream delivered).
#[must_use]
pub const fn chars_tokens(chars: u64) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN)
}

/// `ceil(chars / 4)`, counting Unicode scalar values.
#[must_use]
pub fn text_tokens(s: &str) -> u64 {
    chars_tokens(s.chars().count() as u64)
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
    chars_tokens(json_chars(v))
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

/// What the gateway needs of a request body before it is sent: its [`estimate_input_tokens`],
/// `max_tokens` (when a non-negative integer) and `model` (when a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEstimate<'a> {
    /// [`estimate_input_tokens`] of the body.
    pub input_tokens: u64,
    /// `max_tokens`, or 0 when absent or not a non-negative integer.
    pub max_tokens: u64,
    /// `model`, when it is a string.
    pub model: Option<std::borrow::Cow<'a, str>>,
}

/// [`estimate_input_tokens`], `max_tokens` and `model` of a JSON body, read in one borrowed pass
/// without building a [`Value`] (the same numbers as parsing into a `Value` first: objects with a
/// repeated key, where a `Value` keeps the last, are handed to that path). `None` when the body
/// is not JSON.
#[must_use]
pub fn estimate_request(body: &[u8]) -> Option<RequestEstimate<'_>> {
    // A body checked as UTF-8 once (one fast pass) is read as text: its strings are then not
    // checked again one by one. Anything else is read as bytes, as it always was.
    let read = match std::str::from_utf8(body) {
        Ok(text) => estimate_with(&mut serde_json::Deserializer::from_str(text)),
        Err(_) => estimate_with(&mut serde_json::Deserializer::from_slice(body)),
    };
    match read {
        Ok(e) => Some(e),
        Err(e) if e.to_string().starts_with(borrowed::REPEATED) => {
            estimate_request_from_value(body)
        }
        Err(_) => None,
    }
}

fn estimate_with<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> serde_json::Result<RequestEstimate<'de>> {
    use serde::de::DeserializeSeed;
    borrowed::Top
        .deserialize(&mut *de)
        .and_then(|e| de.end().map(|()| e))
}

/// `model`, `stream` and `max_tokens` of a body as written (JSON text, `null` included), read by
/// [`estimate_request_peeking`] for a caller that checks them itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawFields<'a> {
    /// `model`.
    pub model: Option<&'a serde_json::value::RawValue>,
    /// `stream`.
    pub stream: Option<&'a serde_json::value::RawValue>,
    /// `max_tokens`.
    pub max_tokens: Option<&'a serde_json::value::RawValue>,
}

/// [`estimate_request`] and the [`RawFields`] of a JSON object in one pass, for a caller that
/// needs both (a proxy that checks the body and then reserves for it).
///
/// `None` whenever the one pass cannot stand for the two separate reads, which the caller then
/// makes instead: the text is not one JSON object, `model`, `stream` or `max_tokens` is repeated
/// (a caller reading them with serde's derive refuses that), an object deeper down repeats a key
/// (the estimate takes the [`Value`] path), or it nests deeper than serde_json reads. Otherwise the
/// answer is exactly the separate reads' (a property test holds it so).
#[must_use]
pub fn estimate_request_peeking(text: &str) -> Option<(RequestEstimate<'_>, RawFields<'_>)> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let (mut estimate, raw) = borrowed::PeekTop
        .deserialize(&mut de)
        .and_then(|e| de.end().map(|()| e))
        .ok()?;
    // Read from the kept values by the same seeds as `estimate_request`'s.
    estimate.max_tokens = raw.max_tokens.map_or(Some(0), borrowed::max_tokens_of)?;
    estimate.model = raw.model.map_or(Some(None), borrowed::model_of)?;
    Some((estimate, raw))
}

/// The `max_tokens` a value asks for, as the API reads it (it validates leniently): an integer,
/// a number with no fraction (`4000.0`, `4e3`), or a string of either (`"4000"`); else 0 (a
/// value the API refuses, so nothing is generated). A reservation made from it then covers
/// every answer the upstream can give, whatever the number's spelling. Above `u64::MAX`:
/// `u64::MAX`.
#[must_use]
pub fn whole_tokens(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(whole_f64))
            .unwrap_or(0),
        Value::String(s) => whole_str(s),
        _ => 0,
    }
}

/// [`whole_tokens`] of the raw JSON text of a value.
#[must_use]
pub fn whole_tokens_raw(raw: &serde_json::value::RawValue) -> u64 {
    borrowed::max_tokens_of(raw).unwrap_or(0)
}

fn whole_f64(n: f64) -> u64 {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 {
        // `as` saturates: a whole number past u64::MAX reads as u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = n as u64;
        whole
    } else {
        0
    }
}

fn whole_str(s: &str) -> u64 {
    let s = s.trim();
    s.parse::<u64>()
        .ok()
        .or_else(|| s.parse::<f64>().ok().map(whole_f64))
        .unwrap_or(0)
}

/// [`estimate_request`] through a [`Value`] (the reference it is held equal to).
#[must_use]
pub fn estimate_request_from_value(body: &[u8]) -> Option<RequestEstimate<'_>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(RequestEstimate {
        input_tokens: estimate_input_tokens(&v),
        max_tokens: v.get("max_tokens").map_or(0, whole_tokens),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .map(|m| std::borrow::Cow::Owned(m.to_owned())),
    })
}

/// The one-pass estimate: every value is summarised bottom-up into the few numbers the rules
/// above read from it ([`Sum`]), so no tree is built and no string is copied.
mod borrowed {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{
        DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    use serde_json::value::RawValue;

    use super::{
        BLOCK_OVERHEAD, IMAGE_TOKENS, MESSAGE_OVERHEAD, PDF_TOKENS, RawFields, RequestEstimate,
        TOOL_OVERHEAD,
    };

    /// The error message prefix of an object with a repeated key (or a key-hash collision).
    pub(super) const REPEATED: &str = "rampart: repeated key";

    fn quarter(chars: u64) -> u64 {
        super::chars_tokens(chars)
    }

    /// The string values the rules compare `type` against.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Tag {
        Text,
        Image,
        Document,
        ToolUse,
        ToolResult,
        Thinking,
        RedactedThinking,
        Content,
        Other,
    }

    fn tag(s: &str) -> Tag {
        match s {
            "text" => Tag::Text,
            "image" => Tag::Image,
            "document" => Tag::Document,
            "tool_use" => Tag::ToolUse,
            "tool_result" => Tag::ToolResult,
            "thinking" => Tag::Thinking,
            "redacted_thinking" => Tag::RedactedThinking,
            "content" => Tag::Content,
            _ => Tag::Other,
        }
    }

    /// What an object is, read as a document `source`.
    #[derive(Debug, Clone, Copy, Default)]
    struct Source {
        ty: Option<Tag>,
        data: u64,
        content: u64,
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Null,
        /// A string: its characters and which `type` value it is.
        Str(u64, Tag),
        /// An array: the sum of `BLOCK_OVERHEAD + block_tokens` of its items.
        Arr(u64),
        /// An object: its `block_tokens`, its tokens as a message (`content`), as a source.
        Obj {
            block: u64,
            msg: u64,
            source: Source,
        },
        /// A boolean or a number.
        Scalar,
    }

    /// A value summarised: its `json_chars` and what the rules read of it.
    #[derive(Debug, Clone, Copy)]
    struct Sum {
        chars: u64,
        kind: Kind,
    }

    impl Sum {
        /// `nested_tokens` of the value.
        fn nested(&self) -> u64 {
            match self.kind {
                Kind::Str(c, _) => quarter(c),
                Kind::Arr(blocks) => blocks,
                Kind::Null => 0,
                _ => quarter(self.chars),
            }
        }

        /// `block_tokens` of the value.
        fn block(&self) -> u64 {
            match self.kind {
                Kind::Obj { block, .. } => block,
                _ => quarter(self.chars),
            }
        }

        /// The characters of the value when it is a string (else "": 0).
        fn str_chars(&self) -> u64 {
            match self.kind {
                Kind::Str(c, _) => c,
                _ => 0,
            }
        }

        fn scalar(chars: u64) -> Self {
            Self {
                chars,
                kind: Kind::Scalar,
            }
        }

        fn string(s: &str) -> Self {
            let c = s.chars().count() as u64;
            Self {
                chars: c + 2,
                kind: Kind::Str(c, tag(s)),
            }
        }
    }

    /// Any value, summarised.
    struct Any;

    impl<'de> DeserializeSeed<'de> for Any {
        type Value = Sum;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Sum, D::Error> {
            d.deserialize_any(self)
        }
    }

    fn number_chars(n: &serde_json::Number) -> u64 {
        super::digits(n)
    }

    impl<'de> Visitor<'de> for Any {
        type Value = Sum;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_unit<E: Error>(self) -> Result<Sum, E> {
            Ok(Sum {
                chars: 4,
                kind: Kind::Null,
            })
        }

        fn visit_bool<E: Error>(self, b: bool) -> Result<Sum, E> {
            Ok(Sum::scalar(if b { 4 } else { 5 }))
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<Sum, E> {
            Ok(Sum::scalar(number_chars(&n.into())))
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<Sum, E> {
            Ok(Sum::scalar(number_chars(&n.into())))
        }

        fn visit_f64<E: Error>(self, n: f64) -> Result<Sum, E> {
            // As a `Value`: a float that is not finite becomes null.
            Ok(serde_json::Number::from_f64(n).map_or(
                Sum {
                    chars: 4,
                    kind: Kind::Null,
                },
                |n| Sum::scalar(number_chars(&n)),
            ))
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<Sum, E> {
            Ok(Sum::string(s))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sum, A::Error> {
            let (mut chars, mut blocks) = (2, 0);
            while let Some(item) = seq.next_element_seed(Any)? {
                chars += item.chars + 1;
                blocks += BLOCK_OVERHEAD + item.block();
            }
            Ok(Sum {
                chars,
                kind: Kind::Arr(blocks),
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sum, A::Error> {
            let mut keys = Keys::default();
            let mut chars = 2;
            let (mut ty, mut text, mut name, mut thinking, mut data) = (None, 0, 0, 0, 0);
            let (mut input, mut content, mut source) = (None::<Sum>, None::<Sum>, None::<Sum>);
            while let Some(key) = map.next_key_seed(KeySeed)? {
                keys.insert::<A::Error>(key.hash)?;
                let v = map.next_value_seed(Any)?;
                if key.field != Field::CacheControl {
                    chars += key.chars + 4 + v.chars;
                }
                match key.field {
                    Field::Type => {
                        ty = match v.kind {
                            Kind::Str(_, t) => Some(t),
                            _ => None,
                        };
                    }
                    Field::Text => text = v.str_chars(),
                    Field::Name => name = v.str_chars(),
                    Field::Thinking => thinking = v.str_chars(),
                    Field::Data => data = v.str_chars(),
                    Field::Input => input = Some(v),
                    Field::Content => content = Some(v),
                    Field::Source => source = Some(v),
                    Field::CacheControl | Field::Other => {}
                }
            }
            let nested = content.map_or(0, |c| c.nested());
            let block = match ty {
                Some(Tag::Text) => quarter(text),
                Some(Tag::Image) => IMAGE_TOKENS,
                Some(Tag::Document) => match source.map(|s| s.kind) {
                    Some(Kind::Obj { source: s, .. }) => match s.ty {
                        Some(Tag::Text) => quarter(s.data),
                        Some(Tag::Content) => s.content,
                        _ => PDF_TOKENS,
                    },
                    _ => PDF_TOKENS,
                },
                Some(Tag::ToolUse) => quarter(name) + quarter(input.map_or(4, |i| i.chars)),
                Some(Tag::ToolResult) => nested,
                Some(Tag::Thinking) => quarter(thinking),
                Some(Tag::RedactedThinking) => quarter(data),
                _ => quarter(chars),
            };
            let msg = match content.map(|c| c.kind) {
                Some(Kind::Str(c, _)) => quarter(c),
                Some(Kind::Arr(blocks)) => blocks,
                _ => 0,
            };
            Ok(Sum {
                chars,
                kind: Kind::Obj {
                    block,
                    msg,
                    source: Source {
                        ty,
                        data,
                        content: nested,
                    },
                },
            })
        }
    }

    /// The keys the rules read.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Field {
        Type,
        Text,
        Name,
        Thinking,
        Data,
        Input,
        Content,
        Source,
        CacheControl,
        Other,
    }

    struct Key {
        field: Field,
        chars: u64,
        hash: u64,
    }

    struct KeySeed;

    impl<'de> DeserializeSeed<'de> for KeySeed {
        type Value = Key;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl Visitor<'_> for KeySeed {
        type Value = Key;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<Key, E> {
            let field = match s {
                "type" => Field::Type,
                "text" => Field::Text,
                "name" => Field::Name,
                "thinking" => Field::Thinking,
                "data" => Field::Data,
                "input" => Field::Input,
                "content" => Field::Content,
                "source" => Field::Source,
                "cache_control" => Field::CacheControl,
                _ => Field::Other,
            };
            // FNV-1a: a repeated key (or, rarely, two keys with one hash) sends the body to the
            // `Value` path, which keeps the last of repeated keys.
            let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            Ok(Key {
                field,
                chars: s.chars().count() as u64,
                hash,
            })
        }
    }

    /// The key hashes of one object: a few inline, more on the heap.
    #[derive(Default)]
    struct Keys {
        inline: [u64; 8],
        n: usize,
        more: Vec<u64>,
    }

    impl Keys {
        fn insert<E: Error>(&mut self, h: u64) -> Result<(), E> {
            let seen = &self.inline[..self.n.min(8)];
            if seen.contains(&h) || self.more.contains(&h) {
                return Err(E::custom(REPEATED));
            }
            if self.n < 8 {
                self.inline[self.n] = h;
                self.n += 1;
            } else {
                self.more.push(h);
            }
            Ok(())
        }
    }

    /// The body: only `tools`, `system`, `messages`, `max_tokens` and `model` are read (the last
    /// of a repeated one counts, as in a `Value`); anything else is only checked to be JSON.
    pub(super) struct Top;

    impl<'de> DeserializeSeed<'de> for Top {
        type Value = RequestEstimate<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    fn zero<'a>() -> RequestEstimate<'a> {
        RequestEstimate {
            input_tokens: 0,
            max_tokens: 0,
            model: None,
        }
    }

    /// Visitor methods that answer `$v` whatever the scalar.
    macro_rules! scalars_give {
        ($v:expr; $($f:ident($t:ty)),*) => {$(
            fn $f<E: Error>(self, _: $t) -> Result<Self::Value, E> {
                Ok($v)
            }
        )*};
    }

    impl<'de> Visitor<'de> for Top {
        type Value = RequestEstimate<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON body")
        }

        scalars_give!(zero(); visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_str(&str));

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(zero())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(zero())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut tools, mut system, mut messages) = (0, 0, 0);
            let mut out = zero();
            while let Some(key) = map.next_key_seed(TopKey)? {
                match key {
                    TopField::Tools => tools = map.next_value_seed(Tools)?,
                    TopField::System => system = system_tokens(map.next_value_seed(Any)?),
                    TopField::Messages => messages = map.next_value_seed(Messages)?,
                    TopField::MaxTokens => out.max_tokens = map.next_value_seed(MaxTokens)?,
                    TopField::Model => out.model = map.next_value_seed(Model)?,
                    TopField::Stream | TopField::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            out.input_tokens = tools + system + messages;
            Ok(out)
        }
    }

    /// [`MaxTokens`] of a value kept as written.
    pub(super) fn max_tokens_of(v: &RawValue) -> Option<u64> {
        MaxTokens
            .deserialize(&mut serde_json::Deserializer::from_str(v.get()))
            .ok()
    }

    /// [`Model`] of a value kept as written (borrowed from the body unless it had escapes).
    pub(super) fn model_of<'de>(v: &'de RawValue) -> Option<Option<Cow<'de, str>>> {
        Model
            .deserialize(&mut serde_json::Deserializer::from_str(v.get()))
            .ok()
    }

    /// What `system` counts: a string as one block, an array as its blocks.
    fn system_tokens(s: Sum) -> u64 {
        match s.kind {
            Kind::Str(c, _) => BLOCK_OVERHEAD + quarter(c),
            Kind::Arr(blocks) => blocks,
            _ => 0,
        }
    }

    /// [`Top`] for [`super::estimate_request_peeking`]: `model`, `stream` and `max_tokens` kept as
    /// written, each at most once; only an object.
    pub(super) struct PeekTop;

    impl<'de> DeserializeSeed<'de> for PeekTop {
        type Value = (RequestEstimate<'de>, RawFields<'de>);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for PeekTop {
        type Value = (RequestEstimate<'de>, RawFields<'de>);

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut tools, mut system, mut messages) = (0, 0, 0);
            let mut raw = RawFields::default();
            let once = |slot: &mut Option<&'de RawValue>, name: &'static str, map: &mut A| {
                if slot.is_some() {
                    return Err(A::Error::duplicate_field(name));
                }
                *slot = Some(map.next_value::<&'de RawValue>()?);
                Ok(())
            };
            while let Some(key) = map.next_key_seed(TopKey)? {
                match key {
                    TopField::Tools => tools = map.next_value_seed(Tools)?,
                    TopField::System => system = system_tokens(map.next_value_seed(Any)?),
                    TopField::Messages => messages = map.next_value_seed(Messages)?,
                    TopField::MaxTokens => once(&mut raw.max_tokens, "max_tokens", &mut map)?,
                    TopField::Model => once(&mut raw.model, "model", &mut map)?,
                    TopField::Stream => once(&mut raw.stream, "stream", &mut map)?,
                    TopField::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let mut out = zero();
            out.input_tokens = tools + system + messages;
            Ok((out, raw))
        }
    }

    enum TopField {
        Tools,
        System,
        Messages,
        MaxTokens,
        Model,
        /// Read by [`PeekTop`] only.
        Stream,
        Other,
    }

    struct TopKey;

    impl<'de> DeserializeSeed<'de> for TopKey {
        type Value = TopField;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TopField, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl Visitor<'_> for TopKey {
        type Value = TopField;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<TopField, E> {
            Ok(match s {
                "tools" => TopField::Tools,
                "system" => TopField::System,
                "messages" => TopField::Messages,
                "max_tokens" => TopField::MaxTokens,
                "model" => TopField::Model,
                "stream" => TopField::Stream,
                _ => TopField::Other,
            })
        }
    }

    /// `tools`: the sum of `tool_tokens` when an array, else 0.
    struct Tools;
    /// `messages`: the sum of `message_tokens` when an array, else 0.
    struct Messages;

    impl<'de> DeserializeSeed<'de> for Tools {
        type Value = u64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
            d.deserialize_any(Array(self))
        }
    }

    impl<'de> DeserializeSeed<'de> for Messages {
        type Value = u64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
            d.deserialize_any(Array(self))
        }
    }

    /// An array whose items count by `T`'s rule; anything else counts 0.
    struct Array<T>(T);

    trait Item {
        fn tokens(item: &Sum) -> u64;
    }

    impl Item for Tools {
        fn tokens(tool: &Sum) -> u64 {
            TOOL_OVERHEAD + quarter(tool.chars)
        }
    }

    impl Item for Messages {
        fn tokens(m: &Sum) -> u64 {
            MESSAGE_OVERHEAD
                + match m.kind {
                    Kind::Obj { msg, .. } => msg,
                    _ => 0,
                }
        }
    }

    impl<'de, T: Item> Visitor<'de> for Array<T> {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
            let mut sum = 0;
            while let Some(item) = seq.next_element_seed(Any)? {
                sum += T::tokens(&item);
            }
            Ok(sum)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
            // Not an array: counts 0 whatever it holds, so it is only checked to be JSON.
            IgnoredAny.visit_map(map).map(|_| 0)
        }

        scalars_give!(0; visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_str(&str));

        fn visit_unit<E: Error>(self) -> Result<u64, E> {
            Ok(0)
        }
    }

    /// `max_tokens` as [`super::whole_tokens`] reads it, else 0.
    struct MaxTokens;

    impl<'de> DeserializeSeed<'de> for MaxTokens {
        type Value = u64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for MaxTokens {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_f64<E: Error>(self, n: f64) -> Result<u64, E> {
            Ok(super::whole_f64(n))
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<u64, E> {
            Ok(super::whole_str(s))
        }

        scalars_give!(0; visit_bool(bool), visit_i64(i64));

        fn visit_unit<E: Error>(self) -> Result<u64, E> {
            Ok(0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u64, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| 0)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
            IgnoredAny.visit_map(map).map(|_| 0)
        }
    }

    /// `model`: a string, borrowed from the body unless it had escapes.
    struct Model;

    impl<'de> DeserializeSeed<'de> for Model {
        type Value = Option<Cow<'de, str>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Model {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_borrowed_str<E: Error>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(s)))
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(s.to_owned())))
        }

        scalars_give!(None; visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64));

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| None)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_map(map).map(|_| None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn borrowed_only(body: &str) -> Option<RequestEstimate<'_>> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_slice(body.as_bytes());
        let e = borrowed::Top.deserialize(&mut de).ok()?;
        de.end().ok().map(|()| e)
    }

    fn same(body: &str) {
        let fast = estimate_request(body.as_bytes());
        let slow = estimate_request_from_value(body.as_bytes());
        assert_eq!(fast, slow, "{body}");
    }

    #[test]
    fn max_tokens_counts_every_spelling_of_a_whole_number() {
        for (raw, n) in [
            ("4000", 4000),
            ("4000.0", 4000),
            ("4e3", 4000),
            ("\"4000\"", 4000),
            ("\" 4e3 \"", 4000),
            ("4000.5", 0),
            ("-1", 0),
            ("-1.0", 0),
            ("null", 0),
            ("true", 0),
            ("\"many\"", 0),
            ("1e30", u64::MAX),
        ] {
            let v: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(whole_tokens(&v), n, "{raw}");
            let raw_value: Box<serde_json::value::RawValue> = serde_json::from_str(raw).unwrap();
            assert_eq!(whole_tokens_raw(&raw_value), n, "{raw}");
            let body = format!(r#"{{"model":"m","max_tokens":{raw},"messages":[]}}"#);
            assert_eq!(
                estimate_request(body.as_bytes()).unwrap().max_tokens,
                n,
                "{body}"
            );
            same(&body);
        }
    }

    #[test]
    fn the_borrowed_pass_matches_the_value_path_on_odd_bodies() {
        for body in [
            r#"{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Summarise the benefits of a gateway."}]}"#,
            r#"{"model":"m\u0061","max_tokens":6.0,"messages":[{"role":"user","content":"a\u00e9\ud83d\ude00"}],"messages":[]}"#,
            r#"{"max_tokens":-1,"model":7,"system":"sys","tools":[{"name":"t","input_schema":{"type":"object","a":[1,2.5,-3,1e5,true,false,null]}}]}"#,
            r#"{"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}],"messages":[{"content":[{"type":"image"},{"type":"document","source":{"type":"text","data":"abcdefghi"}},{"type":"document","source":{"type":"content","content":[{"type":"text","text":"q"}]}},{"type":"document","source":"x"},{"type":"tool_use","name":"n"},{"type":"tool_use","name":"n","input":{"a":{"cache_control":1}}},{"type":"tool_result","content":"abc"},{"type":"tool_result"},{"type":"tool_result","content":5},{"type":"thinking","thinking":"hmm"},{"type":"redacted_thinking","data":"zz"},{"type":"other","x":1},{"type":7},"str",3,null]}]}"#,
            r#"{"messages":[{"content":[{"type":"text","text":"a","text":"bbbbbbbbb"}]}]}"#,
            r#"{"messages":[{"content":{"a":1}}, 5, null, {"content":null}], "tools": {"a":1}, "system": 5}"#,
            r#"{"messages":[{"content":[{"type":"text","te\u0078t":"abcdefgh", "cache_\u0063ontrol": 1}]}]}"#,
            r#"[1,2,{"messages":[]}]"#,
            r#""just a string""#,
            "null",
            "{}",
            "not json",
            r#"{"messages":[]} trailing"#,
            r#"{"messages":[{"content":"x"}]"#,
        ] {
            same(body);
        }
        assert_eq!(estimate_request(b"not json"), None);
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "type", "text", "name", "thinking", "data", "input", "content", "source",
                "cache_control", "role", "x", "t\u{e9}",
            ])
            .prop_map(str::to_owned),
            1 => "[a-z_]{0,6}",
        ]
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "text", "image", "document", "tool_use", "tool_result", "thinking",
                "redacted_thinking", "content", "user", "",
            ])
            .prop_map(str::to_owned),
            2 => "\\PC{0,12}",
            1 => "[\"\\\\\n\u{1F600}a]{0,5}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e20f64..1e20).prop_map(Value::from),
            string().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Serialised by hand so that objects may repeat a key.
    fn render(v: &Value, dup: bool, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    render(v, dup, out);
                }
                if dup && let Some((k, _)) = m.iter().next() {
                    out.push_str(&format!(",{}:\"dup\"", serde_json::to_string(k).unwrap()));
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render(v, dup, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_read_as_bytes_as_before() {
        // Text is read without checking strings again; bytes that are not UTF-8 take the byte
        // reader, which checks the strings it reads and skips the ones it ignores.
        let ignored_bad = b"{\"metadata\":\"\xff\",\"max_tokens\":5,\"model\":\"m\"}";
        let e = estimate_request(ignored_bad).expect("an ignored string is only skipped");
        assert_eq!((e.max_tokens, e.model.as_deref()), (5, Some("m")));
        assert_eq!(estimate_request(b"{\"model\":\"\xff\"}"), None);
        assert_eq!(
            estimate_request(b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_borrowed_pass_matches_the_value_path(
            tools in prop::option::of(value()),
            system in prop::option::of(value()),
            messages in prop::option::of(prop::collection::vec(value(), 0..4)),
            max_tokens in prop::option::of(value()),
            model in prop::option::of(value()),
            extra in prop::option::of(value()),
            dup in any::<bool>(),
        ) {
            let mut body = serde_json::Map::new();
            for (k, v) in [
                ("tools", tools),
                ("system", system),
                ("messages", messages.map(Value::Array)),
                ("max_tokens", max_tokens),
                ("model", model),
                ("metadata", extra),
            ] {
                if let Some(v) = v {
                    body.insert(k.to_owned(), v);
                }
            }
            let mut s = String::new();
            render(&Value::Object(body), dup, &mut s);
            let fast = estimate_request(s.as_bytes());
            let slow = estimate_request_from_value(s.as_bytes());
            prop_assert_eq!(&fast, &slow, "{}", s);
            if !dup {
                // Without repeated keys the borrowed pass answers on its own.
                prop_assert_eq!(borrowed_only(&s), slow, "{}", s);
            }
        }
    }
    /// How a caller reads the three fields without the one pass (serde's derive, as the gateway's
    /// request check does).
    #[derive(serde::Deserialize)]
    struct DerivedFields<'a> {
        #[serde(borrow, default)]
        model: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        stream: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        max_tokens: Option<&'a serde_json::value::RawValue>,
    }

    /// A kept value as the derive reads it: `null` is absent.
    fn text(v: Option<&serde_json::value::RawValue>) -> Option<&str> {
        v.map(|v| v.get()).filter(|t| *t != "null")
    }

    #[test]
    fn the_peeking_pass_refuses_what_the_two_reads_would_not_agree_on() {
        let once = r#"{"model":"claude-x","stream":true,"max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#;
        let (e, raw) = estimate_request_peeking(once).unwrap();
        assert_eq!(Some(e), estimate_request(once.as_bytes()));
        assert_eq!(
            (text(raw.model), text(raw.stream), text(raw.max_tokens)),
            (Some("\"claude-x\""), Some("true"), Some("7"))
        );
        for refused in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"stream":true,"stream":false}"#,
            r#"{"max_tokens":1,"max_tokens":null}"#,
            r#"{"messages":[{"role":"user","role":"user","content":"x"}]}"#,
            r#"[{"model":"a"}]"#,
            r#"{"model":"a"} x"#,
            r#"{"model":"a""#,
        ] {
            assert!(estimate_request_peeking(refused).is_none(), "{refused}");
        }
        let deep = format!(r#"{{"messages":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(estimate_request_peeking(&deep).is_none());
        // A repeated key the derive does not read is no reason to refuse.
        let other = r#"{"metadata":{},"metadata":{},"model":"m"}"#;
        assert_eq!(
            estimate_request_peeking(other).map(|(e, _)| e),
            estimate_request(other.as_bytes())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_peeking_pass_matches_the_two_reads(
            fields in prop::collection::vec(prop::option::of(value()), 7),
            messages in prop::option::of(prop::collection::vec(value(), 0..4)),
            rotate in 0usize..7,
            dup in any::<bool>(),
        ) {
            let names = ["tools", "system", "messages", "max_tokens", "model", "stream", "metadata"];
            let mut body = serde_json::Map::new();
            for i in 0..names.len() {
                let at = (i + rotate) % names.len();
                let v = if names[at] == "messages" {
                    messages.clone().map(Value::Array)
                } else {
                    fields[at].clone()
                };
                if let Some(v) = v {
                    body.insert(names[at].to_owned(), v);
                }
            }
            let mut s = String::new();
            render(&Value::Object(body), dup, &mut s);
            let derived = serde_json::from_str::<DerivedFields<'_>>(&s);
            match estimate_request_peeking(&s) {
                Some((e, raw)) => {
                    prop_assert_eq!(Some(e), estimate_request(s.as_bytes()), "{}", s);
                    let d = derived.expect("the derive reads what the one pass read");
                    prop_assert_eq!(text(raw.model), text(d.model), "{}", s);
                    prop_assert_eq!(text(raw.stream), text(d.stream), "{}", s);
                    prop_assert_eq!(text(raw.max_tokens), text(d.max_tokens), "{}", s);
                }
                // Only repeated keys send a caller back to the two reads.
                None => prop_assert!(dup, "{}", s),
            }
        }
    }
}
