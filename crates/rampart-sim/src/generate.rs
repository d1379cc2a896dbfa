//! Deterministic replies: the text, thinking and tool calls a request gets, derived from a hash of
//! the request (rules in the crate docs).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::canon::{finish, hash_value};
use crate::ids::splitmix64;
use crate::tokens::text_tokens;
use crate::validate::{Params, Thinking, ToolChoice, is_custom_tool};

const WORDS: [&str; 96] = [
    "the", "a", "system", "request", "model", "answer", "quickly", "simple", "data", "value",
    "stream", "token", "cache", "river", "mountain", "light", "signal", "gateway", "careful",
    "clear", "bright", "quiet", "network", "message", "response", "small", "large", "steady",
    "early", "late", "and", "but", "with", "without", "under", "over", "between", "across",
    "through", "around", "is", "was", "will", "can", "should", "might", "seems", "becomes",
    "remains", "follows", "every", "some", "many", "few", "each", "other", "second", "first",
    "final", "next", "garden", "window", "engine", "harbor", "forest", "lantern", "paper",
    "silver", "winter", "summer", "reads", "writes", "builds", "checks", "returns", "holds",
    "moves", "turns", "keeps", "finds", "of", "to", "in", "on", "for", "from", "by", "as", "at",
    "it", "calm", "swift", "plain", "gentle", "honest", "useful",
];

/// A small deterministic generator (splitmix64 stream).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded from 8 bytes.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }

    /// A value in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Text as a sequence of pieces; each piece is one output token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pieces {
    text: String,
    ends: Vec<usize>,
}

impl Pieces {
    fn push(&mut self, piece: &str) {
        self.text.push_str(piece);
        self.ends.push(self.text.len());
    }

    /// Splits `s` into pieces at whitespace (whitespace stays in front of the following word).
    pub(crate) fn from_text(s: &str) -> Self {
        let mut p = Self::default();
        let mut start = 0;
        let mut prev_ws = true;
        for (i, c) in s.char_indices() {
            let ws = c.is_whitespace();
            if ws && !prev_ws && i > start {
                p.push(&s[start..i]);
                start = i;
            }
            prev_ws = ws;
        }
        if start < s.len() {
            p.push(&s[start..]);
        }
        p
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Number of pieces (= tokens).
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Pieces in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = self.text.get(start..end).unwrap_or("");
            start = end;
            s
        })
    }

    /// Keeps the first `n` pieces.
    fn truncate(&mut self, n: usize) {
        if n < self.ends.len() {
            let end = if n == 0 { 0 } else { self.ends[n - 1] };
            self.text.truncate(end);
            self.ends.truncate(n);
        }
    }

    /// Cuts the text at byte `at` (a char boundary); returns the number of pieces kept.
    fn cut_at(&mut self, at: usize) -> usize {
        let whole = self.ends.iter().take_while(|&&e| e <= at).count();
        let prev_end = if whole == 0 { 0 } else { self.ends[whole - 1] };
        self.text.truncate(at);
        self.ends.truncate(whole);
        if at > prev_end {
            self.ends.push(at);
        }
        self.ends.len()
    }
}

fn sentence_text(rng: &mut Rng, n: u64, inject_at: u64, inject: &[String]) -> Pieces {
    let mut out = Pieces::default();
    let mut since_start = 0u64;
    let mut sentence_len = rng.range(6, 14);
    let mut word = String::with_capacity(16);
    for i in 0..n {
        if i == inject_at {
            for extra in inject {
                out.push(&format!(" {extra}"));
            }
        }
        word.clear();
        let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
        if i > 0 {
            word.push(' ');
        }
        if since_start == 0 {
            let mut chars = w.chars();
            if let Some(c) = chars.next() {
                word.extend(c.to_uppercase());
                word.push_str(chars.as_str());
            }
        } else {
            word.push_str(w);
        }
        since_start += 1;
        if since_start == sentence_len || i + 1 == n {
            word.push('.');
            since_start = 0;
            sentence_len = rng.range(6, 14);
        } else if rng.next_u64().is_multiple_of(11) {
            word.push(',');
        }
        out.push(&word);
    }
    if inject_at >= n {
        for extra in inject {
            out.push(&format!(" {extra}"));
        }
    }
    out
}

/// One generated content block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Block {
    /// Thinking: pieces (empty when display is omitted), signature, and token count.
    Thinking {
        /// Streamed as `thinking_delta`s.
        text: Pieces,
        /// Sent in one `signature_delta`.
        signature: String,
        /// Output tokens it costs.
        tokens: u64,
    },
    /// Text.
    Text(Pieces),
    /// A tool call.
    ToolUse {
        /// `toolu_01…`.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        input: Value,
        /// Compact JSON of `input`.
        json: String,
    },
}

/// The whole generated reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// Blocks in order.
    pub blocks: Vec<Block>,
    /// Why it stopped.
    pub stop_reason: rampart_api::StopReason,
    /// The matching stop sequence.
    pub stop_sequence: Option<String>,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Hash of the request parts that decide the reply: model, system, messages, tools, tool_choice
/// and thinking. `max_tokens`, `stream`, `stop_sequences`, sampling and metadata are left out, so
/// a capped or streamed reply is a prefix of the uncapped one.
pub(crate) fn request_seed(p: &Params<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(p.model.as_bytes());
    h.update(b"\0");
    for part in [p.system, p.tool_choice_raw, p.thinking_raw] {
        match part {
            Some(v) => hash_value(&mut h, v, false),
            None => h.update(b"-"),
        }
    }
    h.update(b"M");
    for m in p.messages {
        hash_value(&mut h, m, false);
    }
    h.update(b"T");
    for t in p.tools {
        hash_value(&mut h, t, false);
    }
    finish(h)
}

/// The text of the last `user` message (string content, or its text blocks joined by `\n`), and
/// whether that message contains a `tool_result` block.
pub(crate) fn last_user_text<'a>(messages: &'a [Value]) -> (std::borrow::Cow<'a, str>, bool) {
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return (std::borrow::Cow::Borrowed(""), false);
    };
    match last.get("content") {
        Some(Value::String(s)) => (std::borrow::Cow::Borrowed(s.as_str()), false),
        Some(Value::Array(blocks)) => {
            let mut has_result = false;
            let mut texts = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.extend(b.get("text").and_then(Value::as_str)),
                    Some("tool_result") => has_result = true,
                    _ => {}
                }
            }
            let text = if texts.len() == 1 {
                std::borrow::Cow::Borrowed(texts[0])
            } else {
                std::borrow::Cow::Owned(texts.join("\n"))
            };
            (text, has_result)
        }
        _ => (std::borrow::Cow::Borrowed(""), false),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// Whether `name` occurs in `text` as a whole word (case-sensitive; `_` and `-` are word chars).
pub(crate) fn contains_word(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// Which tool to call, per the rule in the crate docs.
fn choose_tool<'a>(
    p: &Params<'a>,
    user_text: &str,
    has_tool_result: bool,
) -> Option<&'a Map<String, Value>> {
    let tools = p.tools.iter().filter_map(Value::as_object);
    let named = |t: &&Map<String, Value>| {
        t.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| contains_word(user_text, n))
    };
    match p.tool_choice {
        ToolChoice::None => None,
        ToolChoice::Tool(name) => tools
            .clone()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name)),
        ToolChoice::Any => tools.clone().find(named).or_else(|| tools.clone().next()),
        ToolChoice::Auto if has_tool_result => None,
        ToolChoice::Auto => tools.clone().find(named),
    }
}

const MAX_DEPTH: usize = 8;

/// A value satisfying `schema`: required properties only, type-appropriate placeholders.
pub(crate) fn value_for_schema(schema: &Value, name: &str, depth: usize) -> Value {
    let Some(s) = schema.as_object() else {
        return Value::String(format!("example {name}"));
    };
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(first) = ["anyOf", "oneOf", "allOf"]
        .iter()
        .find_map(|k| s.get(*k).and_then(Value::as_array).and_then(|v| v.first()))
    {
        return value_for_schema(first, name, depth + 1);
    }
    if let Some(d) = s.get("default") {
        return d.clone();
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "string",
    };
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    match ty {
        "object" if depth < MAX_DEPTH => {
            let props = s.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for key in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(key) = key.as_str() else { continue };
                let sub = props.and_then(|p| p.get(key)).unwrap_or(&Value::Null);
                out.insert(key.to_owned(), value_for_schema(sub, key, depth + 1));
            }
            Value::Object(out)
        }
        "object" => json!({}),
        "array" if depth < MAX_DEPTH => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 16);
            let item = s.get("items").unwrap_or(&Value::Null);
            Value::Array(
                (0..n)
                    .map(|_| value_for_schema(item, name, depth + 1))
                    .collect(),
            )
        }
        "array" => json!([]),
        "integer" => {
            let mut v = num("minimum")
                .map(f64::ceil)
                .or_else(|| num("exclusiveMinimum").map(|m| m.floor() + 1.0))
                .unwrap_or(1.0);
            if let Some(max) = num("maximum") {
                v = v.min(max.floor());
            }
            json!(v as i64)
        }
        "number" => {
            let lo = num("minimum").unwrap_or(f64::MIN);
            let hi = num("maximum").unwrap_or(f64::MAX);
            json!(1.5_f64.clamp(lo.min(hi), hi.max(lo)))
        }
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => {
            let mut text = format!("example {name}");
            let min = s
                .get("minLength")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(4096) as usize;
            while text.chars().count() < min {
                text.push('x');
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                text = text.chars().take(max as usize).collect();
            }
            Value::String(text)
        }
    }
}

/// The word after the first `say ` in `text`, without surrounding punctuation.
fn say_word(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("say ")?;
    let word = rest.split_whitespace().next()?;
    let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '_' && c != '-');
    (!word.is_empty()).then_some(word)
}

fn signature(seed: &[u8; 32], thinking: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"signature");
    h.update(seed);
    h.update(thinking.as_bytes());
    let first = finish(h);
    let mut h = Sha256::new();
    h.update(first);
    let mut bytes = Vec::with_capacity(66);
    bytes.extend_from_slice(&[0x12, 0x40]);
    bytes.extend_from_slice(&first);
    bytes.extend_from_slice(&finish(h));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn seed_u64(seed: &[u8; 32], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&seed[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Generates the reply for a validated request.
pub(crate) fn reply(p: &Params<'_>, seed: &[u8; 32]) -> Reply {
    let (user_text, has_tool_result) = last_user_text(p.messages);
    let mut budget = p.max_tokens;
    let mut blocks = Vec::with_capacity(2);
    let mut output_tokens = 0;

    if let Thinking::On {
        budget: thinking_budget,
        omitted,
    } = p.thinking
    {
        let mut rng = Rng::new(seed_u64(seed, 8));
        let wanted = rng.range(15, 60);
        let n = wanted.min(thinking_budget.unwrap_or(u64::MAX)).min(budget);
        if n > 0 {
            let text = sentence_text(&mut rng, n, u64::MAX, &[]);
            let sig = signature(seed, text.text());
            budget -= n;
            output_tokens += n;
            blocks.push(Block::Thinking {
                text: if omitted { Pieces::default() } else { text },
                signature: sig,
                tokens: n,
            });
        }
    }

    let forced = matches!(p.tool_choice, ToolChoice::Any | ToolChoice::Tool(_));
    let echo = user_text
        .find("echo: ")
        .map(|i| &user_text[i + "echo: ".len()..]);
    let tool = if forced || echo.is_none() {
        choose_tool(p, &user_text, has_tool_result)
    } else {
        None
    };

    if let Some(tool) = tool {
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("tool");
        let input = if is_custom_tool(tool) {
            value_for_schema(tool.get("input_schema").unwrap_or(&Value::Null), name, 0)
        } else {
            json!({})
        };
        let json = serde_json::to_string(&input).unwrap_or_else(|_| "{}".to_owned());
        let tokens = text_tokens(&json).max(1);
        if tokens <= budget {
            output_tokens += tokens;
            blocks.push(Block::ToolUse {
                id: crate::ids::tool_use_id(),
                name: name.to_owned(),
                input,
                json,
            });
            return Reply {
                blocks,
                stop_reason: rampart_api::StopReason::ToolUse,
                stop_sequence: None,
                output_tokens,
            };
        }
        return Reply {
            blocks,
            stop_reason: rampart_api::StopReason::MaxTokens,
            stop_sequence: None,
            output_tokens,
        };
    }

    let mut text = match echo {
        Some(rest) => Pieces::from_text(rest),
        None => {
            let mut rng = Rng::new(seed_u64(seed, 0));
            let n = rng.range(20, 120);
            let mut inject: Vec<String> = Vec::new();
            if let Some(w) = say_word(&user_text) {
                inject.push(w.to_owned());
            }
            for s in &p.stop_sequences {
                if !s.is_empty() && user_text.contains(*s) && !inject.iter().any(|i| i == s) {
                    inject.push((*s).to_owned());
                }
            }
            let at = rng.range(2, (n / 3).max(2));
            sentence_text(&mut rng, n, at, &inject)
        }
    };
    let stop_at = p
        .stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.text().find(*s).map(|i| (i, *s)))
        .min_by_key(|(i, s)| (*i, std::cmp::Reverse(s.len())));
    let mut stop_reason = rampart_api::StopReason::EndTurn;
    let mut stop_sequence = None;
    if let Some((at, seq)) = stop_at {
        let mut cut = text.clone();
        let kept = cut.cut_at(at) as u64;
        if kept <= budget {
            text = cut;
            stop_reason = rampart_api::StopReason::StopSequence;
            stop_sequence = Some(seq.to_owned());
        }
    }
    if text.len() as u64 > budget {
        text.truncate(budget as usize);
        stop_reason = rampart_api::StopReason::MaxTokens;
        stop_sequence = None;
    }
    if p.max_tokens == 0 {
        stop_reason = rampart_api::StopReason::MaxTokens;
    }
    output_tokens += text.len() as u64;
    if !text.text().is_empty() {
        blocks.push(Block::Text(text));
    }
    Reply {
        blocks,
        stop_reason,
        stop_sequence,
        output_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Endpoint, message_params};
    use rampart_api::StopReason;

    fn generated(body: &Value) -> Reply {
        let p = message_params(body, Endpoint::Create).unwrap();
        reply(&p, &request_seed(&p))
    }

    fn text_of(r: &Reply) -> String {
        r.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.text().to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn same_request_gives_same_text_and_different_requests_differ() {
        let a = json!({"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "Hi"}]});
        let b = json!({"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "Hello"}]});
        assert_eq!(text_of(&generated(&a)), text_of(&generated(&a)));
        assert_ne!(text_of(&generated(&a)), text_of(&generated(&b)));
        let r = generated(&a);
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert!((20..=120).contains(&r.output_tokens), "{}", r.output_tokens);
    }

    #[test]
    fn max_tokens_caps_the_text_to_a_prefix() {
        let full = json!({"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "Hi"}]});
        let capped =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]});
        let r = generated(&capped);
        assert_eq!(r.stop_reason, StopReason::MaxTokens);
        assert_eq!(r.output_tokens, 5);
        assert!(text_of(&generated(&full)).starts_with(&text_of(&r)));
    }

    #[test]
    fn say_word_with_matching_stop_sequence_stops_there() {
        let body = json!({"model": "m", "max_tokens": 500, "stop_sequences": ["BANANA"],
            "messages": [{"role": "user", "content": "please say BANANA now"}]});
        let r = generated(&body);
        assert_eq!(r.stop_reason, StopReason::StopSequence);
        assert_eq!(r.stop_sequence.as_deref(), Some("BANANA"));
        assert!(!text_of(&r).contains("BANANA"));
    }

    #[test]
    fn echo_replies_exactly_the_rest() {
        let body = json!({"model": "m", "max_tokens": 500,
            "messages": [{"role": "user", "content": "echo: Hello,  world!\nbye"}]});
        let r = generated(&body);
        assert_eq!(text_of(&r), "Hello,  world!\nbye");
        assert_eq!(r.output_tokens, 3);
    }

    #[test]
    fn pieces_split_keeps_all_text() {
        let p = Pieces::from_text("  a b\n\nc ");
        assert_eq!(p.iter().collect::<String>(), "  a b\n\nc ");
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn auto_tool_choice_needs_the_exact_tool_name_as_a_word() {
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 3},
                "unit": {"enum": ["c", "f"]}, "tags": {"type": "array", "items": {"type": "string"}},
                "exact": {"type": "boolean"}, "opt": {"type": "number"}},
            "required": ["city", "days", "unit", "tags", "exact"]}}]);
        let ask = |text: &str| {
            json!({"model": "m", "max_tokens": 500, "tools": tools,
                "messages": [{"role": "user", "content": text}]})
        };
        assert_eq!(
            generated(&ask("what is the weather")).stop_reason,
            StopReason::EndTurn
        );
        assert_eq!(
            generated(&ask("call get_weathers")).stop_reason,
            StopReason::EndTurn
        );
        let r = generated(&ask("call get_weather please"));
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        let Block::ToolUse {
            input, name, id, ..
        } = &r.blocks[0]
        else {
            panic!()
        };
        assert_eq!(name, "get_weather");
        assert!(id.starts_with("toolu_01"));
        assert_eq!(
            input,
            &json!({"city": "example city", "days": 3, "unit": "c", "tags": ["example tags"], "exact": true})
        );
    }

    #[test]
    fn auto_never_calls_a_tool_after_a_tool_result() {
        let body = json!({"model": "m", "max_tokens": 500,
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "run Bash"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                                              {"type": "text", "text": "Bash again"}]}]});
        assert_eq!(generated(&body).stop_reason, StopReason::EndTurn);
    }

    #[test]
    fn any_calls_the_first_tool_and_tool_calls_the_named_one() {
        let tools = json!([{"name": "a", "input_schema": {"type": "object"}},
                           {"name": "b", "input_schema": {"type": "object"}}]);
        let with = |choice: Value| {
            json!({"model": "m", "max_tokens": 500, "tools": tools, "tool_choice": choice,
                "messages": [{"role": "user", "content": "hello"}]})
        };
        let name = |r: &Reply| match &r.blocks[0] {
            Block::ToolUse { name, .. } => name.clone(),
            _ => String::new(),
        };
        assert_eq!(name(&generated(&with(json!({"type": "any"})))), "a");
        assert_eq!(
            name(&generated(&with(json!({"type": "tool", "name": "b"})))),
            "b"
        );
        assert_eq!(
            generated(&with(json!({"type": "none"}))).stop_reason,
            StopReason::EndTurn
        );
    }

    #[test]
    fn thinking_comes_first_with_a_signature() {
        let body = json!({"model": "m", "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "think"}]});
        let r = generated(&body);
        let Block::Thinking {
            text,
            signature,
            tokens,
        } = &r.blocks[0]
        else {
            panic!()
        };
        assert!(!text.text().is_empty());
        assert!(signature.len() > 40);
        assert_eq!(*tokens as usize, text.len());
        assert!(matches!(r.blocks[1], Block::Text(_)));
    }
}
