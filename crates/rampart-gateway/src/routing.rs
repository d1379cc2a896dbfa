//! Model routing: aliases, fallback chains and the `auto` model.
//!
//! - **Aliases** (`[routing.aliases]`, e.g. `fast = "claude-haiku-4-5"`): a request for the alias
//!   is sent as the model it names. A key's model scope is checked against that model.
//! - **Fallbacks** (`[routing.fallbacks]`, e.g. `"claude-opus-4-6" = ["claude-sonnet-4-6"]`): when
//!   a model is overloaded or no target can take it (every breaker open, or every target cooling
//!   down for longer than the retry-after cap), the request moves on to the next model of its
//!   chain (models the caller's key may not use are skipped). The response's `model` field and
//!   the `x-rampart-served-model` header name the model that answered; `x-rampart-fallback` says
//!   why it changed.
//! - **`auto`** (`[routing.auto]`): a request for the `auto` model is sent to a Haiku, Sonnet or
//!   Opus class model chosen by rules (see [`AutoRules::decide`]): input size (from a
//!   `count_tokens` pre-flight to the upstream, cached, or a local estimate), tools, images or
//!   documents in the request, `max_tokens`, and an optional hint header. The decision and its
//!   reason are returned in `x-rampart-route` and logged (`rampart::routing`).
//!
//! The body is parsed into a tree only for `auto` requests; aliases and fallbacks rewrite the
//! `model` value in place ([`splice_model`]).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::HeaderName;
use serde_json::{Map, Value};

use crate::auth::Scopes;

/// A model class `auto` chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Simple work.
    Haiku,
    /// Complex work.
    Sonnet,
    /// The hardest work.
    Opus,
}

impl Tier {
    /// The configuration and header name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Haiku => "haiku",
            Self::Sonnet => "sonnet",
            Self::Opus => "opus",
        }
    }

    /// Parse a hint value (`haiku`, `sonnet`, `opus`; case-insensitive).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "haiku" => Some(Self::Haiku),
            "sonnet" => Some(Self::Sonnet),
            "opus" => Some(Self::Opus),
            _ => None,
        }
    }

    const ALL: [Self; 3] = [Self::Haiku, Self::Sonnet, Self::Opus];
}

/// Where `auto` takes the input size from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// The upstream's `count_tokens` (free, but a round trip), cached; the local estimate when
    /// it fails.
    Upstream,
    /// [`estimate_tokens`], no round trip.
    Estimate,
}

/// The `auto` rules. A threshold of 0 switches its rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRules {
    /// The model name that asks for automatic routing. Default `auto`.
    pub name: String,
    /// The model of each tier (haiku, sonnet, opus).
    pub models: [String; 3],
    /// Input-size source.
    pub token_source: TokenSource,
    /// Input tokens from which at least Sonnet is used.
    pub sonnet_input_tokens: u64,
    /// Input tokens from which Opus is used.
    pub opus_input_tokens: u64,
    /// `max_tokens` from which at least Sonnet is used.
    pub sonnet_max_tokens: u64,
    /// `max_tokens` from which Opus is used.
    pub opus_max_tokens: u64,
    /// The least tier for requests with tools.
    pub tools: Tier,
    /// The least tier for requests with images.
    pub images: Tier,
    /// The least tier for requests with documents.
    pub documents: Tier,
    /// The header a client may name a tier in.
    pub hint_header: HeaderName,
}

impl AutoRules {
    /// The model of `tier`.
    #[must_use]
    pub fn model(&self, tier: Tier) -> &str {
        &self.models[tier as usize]
    }

    /// Choose a tier, most demanding rule first: a hint decides alone; otherwise the highest
    /// tier any rule asks for, with every rule that asked for it as the reason. `tokens` is the
    /// input size and where it came from, when known.
    #[must_use]
    pub fn decide(
        &self,
        features: &Features,
        max_tokens: Option<u64>,
        tokens: Option<(u64, &str)>,
        hint: Option<Tier>,
    ) -> Decision {
        if let Some(tier) = hint {
            return Decision {
                tier,
                reason: format!("hint {}", tier.as_str()),
            };
        }
        let mut asks: Vec<(Tier, String)> = Vec::new();
        let threshold = |value: u64, sonnet: u64, opus: u64| {
            if opus > 0 && value >= opus {
                Some((Tier::Opus, opus))
            } else if sonnet > 0 && value >= sonnet {
                Some((Tier::Sonnet, sonnet))
            } else {
                None
            }
        };
        if let Some((n, source)) = tokens
            && let Some((tier, at)) = threshold(n, self.sonnet_input_tokens, self.opus_input_tokens)
        {
            asks.push((tier, format!("input_tokens {n} >= {at} ({source})")));
        }
        if let Some(m) = max_tokens
            && let Some((tier, at)) = threshold(m, self.sonnet_max_tokens, self.opus_max_tokens)
        {
            asks.push((tier, format!("max_tokens {m} >= {at}")));
        }
        for (present, tier, what) in [
            (features.tools, self.tools, "tools"),
            (features.images, self.images, "images"),
            (features.documents, self.documents, "documents"),
        ] {
            if present && tier > Tier::Haiku {
                asks.push((tier, what.to_owned()));
            }
        }
        let tier = asks.iter().map(|(t, _)| *t).max().unwrap_or(Tier::Haiku);
        let reasons: Vec<&str> = asks
            .iter()
            .filter(|(t, _)| *t == tier)
            .map(|(_, r)| r.as_str())
            .collect();
        let reason = if reasons.is_empty() {
            match tokens {
                Some((n, source)) => format!("input_tokens {n} ({source}), no rule matched"),
                None => "no rule matched".to_owned(),
            }
        } else {
            reasons.join(", ")
        };
        Decision { tier, reason }
    }

    /// Whether the input size could still change a decision already at `tier`.
    #[must_use]
    pub fn needs_tokens(&self, tier: Tier) -> bool {
        let raises = |t| match t {
            Tier::Opus => self.opus_input_tokens > 0,
            Tier::Sonnet => self.sonnet_input_tokens > 0 || self.opus_input_tokens > 0,
            Tier::Haiku => false,
        };
        match tier {
            Tier::Haiku => raises(Tier::Sonnet),
            Tier::Sonnet => raises(Tier::Opus),
            Tier::Opus => false,
        }
    }
}

/// What `auto` chose and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The tier.
    pub tier: Tier,
    /// Why (ASCII, header-safe).
    pub reason: String,
}

/// Validated routing configuration.
#[derive(Debug, Clone, Default)]
pub struct RoutingSettings {
    /// Alias → model.
    pub aliases: HashMap<String, String>,
    /// Model → models to fall back to, in order.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// The `auto` model, when configured.
    pub auto: Option<AutoRules>,
}

impl RoutingSettings {
    /// Whether any routing is configured (when not, model names pass through untouched).
    #[must_use]
    pub fn is_active(&self) -> bool {
        !self.aliases.is_empty() || !self.fallbacks.is_empty() || self.auto.is_some()
    }

    /// The model a key's model scope is checked against before routing: an alias's model, the
    /// name itself otherwise, and nothing for `auto` (its choice is checked once made).
    #[must_use]
    pub fn scope_model<'a>(&'a self, requested: &'a str) -> Option<&'a str> {
        if self.auto.as_ref().is_some_and(|a| a.name == requested) {
            return None;
        }
        Some(
            self.aliases
                .get(requested)
                .map_or(requested, String::as_str),
        )
    }

    /// Each name routing serves as other models, with those models: an alias and its model,
    /// the `auto` model and its tiers' models (for [`PriceTable::with_routing_names`]).
    ///
    /// [`PriceTable::with_routing_names`]: rampart_ledger::pricing::PriceTable::with_routing_names
    pub fn served_as(&self) -> impl Iterator<Item = (&str, &[String])> {
        let aliases = self
            .aliases
            .iter()
            .map(|(alias, model)| (alias.as_str(), std::slice::from_ref(model)));
        let auto = self
            .auto
            .iter()
            .map(|a| (a.name.as_str(), a.models.as_slice()));
        aliases.chain(auto)
    }

    /// The models to try for `model` (itself first), skipping fallbacks `scopes` refuses.
    #[must_use]
    pub fn chain(&self, model: &str, scopes: Option<&Scopes>) -> Vec<String> {
        let mut chain = vec![model.to_owned()];
        if let Some(next) = self.fallbacks.get(model) {
            chain.extend(
                next.iter()
                    .filter(|m| scopes.is_none_or(|s| s.allows_model(m)))
                    .filter(|m| m.as_str() != model)
                    .cloned(),
            );
        }
        chain
    }
}

/// What a request holds that `auto` cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// A non-empty `tools` array.
    pub tools: bool,
    /// An `image` block anywhere in `messages` (tool results included).
    pub images: bool,
    /// A `document` block anywhere in `messages`.
    pub documents: bool,
}

/// Find tools, images and documents in a Messages request.
#[must_use]
pub fn features(body: &Map<String, Value>) -> Features {
    let mut f = Features {
        tools: body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        ..Features::default()
    };
    fn walk(v: &Value, f: &mut Features) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| walk(i, f)),
            Value::Object(o) => {
                match o.get("type").and_then(Value::as_str) {
                    Some("image") => f.images = true,
                    Some("document") => f.documents = true,
                    _ => {}
                }
                if let Some(c) = o.get("content") {
                    walk(c, f);
                }
            }
            _ => {}
        }
    }
    if let Some(messages) = body.get("messages") {
        walk(messages, &mut f);
    }
    f
}

/// A local input-token estimate: a quarter token per character of text (system, messages, tool
/// definitions and tool inputs), 4 per message, 1,600 per image and 3,000 per non-text document.
/// Base64 payloads are not counted as text.
#[must_use]
pub fn estimate_tokens(body: &Map<String, Value>) -> u64 {
    fn walk(v: &Value, chars: &mut u64, fixed: &mut u64) {
        match v {
            Value::String(s) => *chars += s.chars().count() as u64,
            Value::Array(items) => items.iter().for_each(|i| walk(i, chars, fixed)),
            Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                Some("image") => *fixed += 1_600,
                Some("document") => {
                    let source = o.get("source");
                    let text = source
                        .filter(|s| s.get("type").and_then(Value::as_str) == Some("text"))
                        .and_then(|s| s.get("data"));
                    match text {
                        Some(t) => walk(t, chars, fixed),
                        None => *fixed += 3_000,
                    }
                }
                _ => o
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "type" | "role" | "cache_control" | "id")
                    })
                    .for_each(|(_, v)| walk(v, chars, fixed)),
            },
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
    let (mut chars, mut fixed) = (0, 0);
    for key in ["system", "messages", "tools"] {
        if let Some(v) = body.get(key) {
            walk(v, &mut chars, &mut fixed);
        }
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    chars.div_ceil(4) + fixed + 4 * messages
}

/// The `count_tokens` request for a Messages request: the fields that endpoint accepts, with
/// `model`.
#[must_use]
pub fn count_tokens_body(body: &Map<String, Value>, model: &str) -> Bytes {
    const KEEP: [&str; 7] = [
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
    ];
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::String(model.to_owned()));
    for key in KEEP {
        if let Some(v) = body.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    Bytes::from(serde_json::to_vec(&Value::Object(out)).unwrap_or_default())
}

/// `body` with the `model` value at `span` replaced by `model` (a JSON string).
#[must_use]
pub fn splice_model(body: &[u8], span: &Range<usize>, model: &str) -> Bytes {
    let quoted = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned());
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    Bytes::from(out)
}

/// Recent `count_tokens` answers by request digest: bounded, oldest evicted first, each kept for
/// a while (counts do not change for the same input).
#[derive(Debug)]
pub struct TokenCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
    ttl_ms: u64,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<[u8; 32], (u64, u64)>,
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    /// A cache of at most `capacity` entries, each kept `ttl_ms`.
    #[must_use]
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity: capacity.max(1),
            ttl_ms,
        }
    }

    /// The digest a request is cached under.
    #[must_use]
    pub fn digest(count_body: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(count_body).into()
    }

    /// The cached count, if fresh at `now_ms`.
    #[must_use]
    pub fn get(&self, key: &[u8; 32], now_ms: u64) -> Option<u64> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .map
            .get(key)
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(n, _)| *n)
    }

    /// Remember `tokens` for `key` from `now_ms`.
    pub fn put(&self, key: [u8; 32], tokens: u64, now_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let expires = now_ms.saturating_add(self.ttl_ms);
        if inner.map.insert(key, (tokens, expires)).is_none() {
            inner.order.push_back(key);
        }
        while inner.map.len() > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
        }
    }
}

/// The tier closest to `wanted` among those `allowed`, preferring the lower one on a tie (a key
/// limited to cheaper models gets the best of those).
#[must_use]
pub fn nearest_allowed(wanted: Tier, allowed: impl Fn(Tier) -> bool) -> Option<Tier> {
    let mut best: Option<Tier> = None;
    for t in Tier::ALL {
        if !allowed(t) {
            continue;
        }
        let d = (t as i32 - wanted as i32).abs();
        let better = best.is_none_or(|b| {
            let db = (b as i32 - wanted as i32).abs();
            d < db || (d == db && t < b)
        });
        if better {
            best = Some(t);
        }
    }
    best
}

/// `auto` rules for tests: Sonnet from 1,000 input tokens or 4,096 `max_tokens` or tools or
/// images, Opus from 10,000 input tokens or 32,000 `max_tokens` or documents.
#[cfg(test)]
pub(crate) fn test_rules() -> AutoRules {
    AutoRules {
        name: "auto".into(),
        models: [
            "claude-haiku-4-5".into(),
            "claude-sonnet-4-6".into(),
            "claude-opus-4-6".into(),
        ],
        token_source: TokenSource::Estimate,
        sonnet_input_tokens: 1_000,
        opus_input_tokens: 10_000,
        sonnet_max_tokens: 4_096,
        opus_max_tokens: 32_000,
        tools: Tier::Sonnet,
        images: Tier::Sonnet,
        documents: Tier::Opus,
        hint_header: HeaderName::from_static("x-rampart-hint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> AutoRules {
        test_rules()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn small_plain_requests_go_to_haiku() {
        let d = rules().decide(
            &Features::default(),
            Some(100),
            Some((50, "estimate")),
            None,
        );
        assert_eq!(d.tier, Tier::Haiku);
        assert_eq!(d.reason, "input_tokens 50 (estimate), no rule matched");
    }

    #[test]
    fn the_most_demanding_rule_wins_and_every_rule_that_asked_is_named() {
        let r = rules();
        let tools = Features {
            tools: true,
            ..Features::default()
        };
        let d = r.decide(&tools, Some(5_000), Some((200, "count_tokens")), None);
        assert_eq!(d.tier, Tier::Sonnet);
        assert_eq!(d.reason, "max_tokens 5000 >= 4096, tools");
        let d = r.decide(&tools, Some(5_000), Some((20_000, "count_tokens")), None);
        assert_eq!(d.tier, Tier::Opus);
        assert_eq!(d.reason, "input_tokens 20000 >= 10000 (count_tokens)");
        let docs = Features {
            documents: true,
            ..Features::default()
        };
        assert_eq!(r.decide(&docs, None, None, None).tier, Tier::Opus);
    }

    #[test]
    fn a_hint_decides_alone() {
        let d = rules().decide(
            &Features::default(),
            Some(50_000),
            Some((90_000, "estimate")),
            Some(Tier::Haiku),
        );
        assert_eq!((d.tier, d.reason.as_str()), (Tier::Haiku, "hint haiku"));
        assert_eq!(Tier::parse(" Opus "), Some(Tier::Opus));
        assert_eq!(Tier::parse("gpt"), None);
    }

    #[test]
    fn zero_thresholds_switch_rules_off_and_tokens_are_only_needed_when_they_can_matter() {
        let mut r = rules();
        r.sonnet_input_tokens = 0;
        r.opus_input_tokens = 0;
        let d = r.decide(
            &Features::default(),
            None,
            Some((1_000_000, "estimate")),
            None,
        );
        assert_eq!(d.tier, Tier::Haiku);
        assert!(!r.needs_tokens(Tier::Haiku));
        let r = rules();
        assert!(r.needs_tokens(Tier::Haiku) && r.needs_tokens(Tier::Sonnet));
        assert!(!r.needs_tokens(Tier::Opus));
    }

    #[test]
    fn features_find_tools_images_and_documents_at_any_depth() {
        let f = features(&obj(json!({
            "tools": [{"name": "x"}],
            "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}
            ]}]
        })));
        assert_eq!(
            f,
            Features {
                tools: true,
                images: true,
                documents: false
            }
        );
        let f = features(&obj(json!({"tools": [], "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"type": "base64"}}]}
        ]})));
        assert!(!f.tools && f.documents && !f.images);
    }

    #[test]
    fn the_estimate_counts_text_and_fixed_costs_but_not_base64() {
        let body = obj(json!({
            "system": "abcd",
            "messages": [
                {"role": "user", "content": "x".repeat(400)},
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "data": "A".repeat(100_000)}},
                    {"type": "document", "source": {"type": "text", "data": "y".repeat(40)}}
                ]}
            ]
        }));
        // (4 + 400 + 40) / 4 text, 1,600 for the image, 4 per message.
        let n = estimate_tokens(&body);
        assert_eq!(n, 111 + 1_600 + 8);
    }

    #[test]
    fn count_tokens_bodies_keep_only_what_the_endpoint_accepts() {
        let body = obj(
            json!({"model": "auto", "max_tokens": 10, "stream": true, "temperature": 1,
            "messages": [], "system": "s", "tools": []}),
        );
        let out: Value =
            serde_json::from_slice(&count_tokens_body(&body, "claude-sonnet-4-6")).unwrap();
        assert_eq!(
            out,
            json!({"model": "claude-sonnet-4-6", "messages": [], "system": "s", "tools": []})
        );
    }

    #[test]
    fn splicing_replaces_only_the_model_value() {
        let body = br#"{"model" : "fast", "messages": []}"#;
        let start = body.windows(6).position(|w| w == b"\"fast\"").unwrap();
        let out = splice_model(body, &(start..start + 6), "claude-\"x\"");
        assert_eq!(&out[..], br#"{"model" : "claude-\"x\"", "messages": []}"#);
    }

    #[test]
    fn chains_skip_models_the_key_may_not_use_and_aliases_scope_as_their_model() {
        let mut s = RoutingSettings::default();
        s.fallbacks.insert(
            "opus".into(),
            vec!["sonnet".into(), "haiku".into(), "opus".into()],
        );
        s.aliases.insert("fast".into(), "haiku".into());
        s.auto = Some(rules());
        assert_eq!(s.chain("opus", None), ["opus", "sonnet", "haiku"]);
        let scopes = Scopes {
            endpoints: vec![],
            models: vec!["opus".into(), "haiku".into()],
        };
        assert_eq!(s.chain("opus", Some(&scopes)), ["opus", "haiku"]);
        assert_eq!(s.chain("other", None), ["other"]);
        assert_eq!(s.scope_model("fast"), Some("haiku"));
        assert_eq!(s.scope_model("auto"), None);
        assert_eq!(s.scope_model("x"), Some("x"));
        assert!(s.is_active() && !RoutingSettings::default().is_active());
    }

    #[test]
    fn the_token_cache_expires_and_evicts_the_oldest() {
        let c = TokenCache::new(2, 100);
        let (a, b, d) = (
            TokenCache::digest(b"a"),
            TokenCache::digest(b"b"),
            TokenCache::digest(b"d"),
        );
        c.put(a, 1, 0);
        c.put(b, 2, 0);
        assert_eq!((c.get(&a, 50), c.get(&b, 50)), (Some(1), Some(2)));
        assert_eq!(c.get(&a, 100), None, "expired");
        c.put(d, 3, 0);
        assert_eq!((c.get(&a, 1), c.get(&d, 1)), (None, Some(3)), "a evicted");
    }

    #[test]
    fn the_nearest_allowed_tier_prefers_the_cheaper_on_a_tie() {
        assert_eq!(nearest_allowed(Tier::Sonnet, |_| true), Some(Tier::Sonnet));
        assert_eq!(
            nearest_allowed(Tier::Sonnet, |t| t != Tier::Sonnet),
            Some(Tier::Haiku)
        );
        assert_eq!(
            nearest_allowed(Tier::Opus, |t| t == Tier::Haiku),
            Some(Tier::Haiku)
        );
        assert_eq!(nearest_allowed(Tier::Haiku, |_| false), None);
    }
}
