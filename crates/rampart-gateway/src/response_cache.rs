//! The caching levers in the proxy pipeline (`POST /v1/messages` only):
//!
//! - **Response cache**: the policy (global default, per team, per key, in `[cache]`) and the
//!   request's `x-rampart-cache` header decide whether to look up, store, or neither. The tenant of
//!   an entry is the key's team (a configuration key is its own tenant). A hit is answered from the
//!   store — as JSON, or as a replayed SSE stream when the request streams — with a fresh message
//!   id and `x-rampart-cache: hit`; a miss is captured on the side (bounded) and stored when the
//!   answer is complete and successful.
//! - **Prompt-cache breakpoints**: when the policy is on, `cache_control` marks are added to the
//!   body before it goes upstream (see [`rampart_cache::breakpoints`]); the body is only rewritten
//!   when a mark is added.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use rampart_cache::breakpoints::{self, Applied};
use rampart_cache::sse::{Capture, is_cacheable, replay};
use rampart_cache::{CacheKey, CachedResponse, ResponseStore};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Identity;
use crate::error::ProxyError;

/// The request header that steers the response cache.
pub static CACHE_HEADER: HeaderName = HeaderName::from_static("x-rampart-cache");

/// What a request asks of the response cache (`x-rampart-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No header: follow the policy.
    Policy,
    /// `use`: look up and store, even where the policy is off.
    Use,
    /// `bypass`: neither look up nor store.
    Bypass,
    /// `refresh`: skip the lookup, store the new answer.
    Refresh,
}

impl Mode {
    /// The mode a request asks for.
    ///
    /// # Errors
    /// 400 for a value other than `use`, `bypass` or `refresh`.
    pub fn of(headers: &HeaderMap) -> Result<Mode, ProxyError> {
        let Some(v) = headers.get(&CACHE_HEADER) else {
            return Ok(Mode::Policy);
        };
        match v.to_str().map(str::trim) {
            Ok(s) if s.eq_ignore_ascii_case("use") => Ok(Mode::Use),
            Ok(s) if s.eq_ignore_ascii_case("bypass") => Ok(Mode::Bypass),
            Ok(s) if s.eq_ignore_ascii_case("refresh") => Ok(Mode::Refresh),
            _ => Err(ProxyError::InvalidRequest(format!(
                "{CACHE_HEADER} must be one of use, bypass, refresh"
            ))),
        }
    }
}

/// One policy level (global, team or key); unset fields inherit from the level above.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyLevel {
    /// Response cache on or off.
    pub response: Option<bool>,
    /// Entry lifetime.
    pub ttl: Option<Duration>,
    /// Prompt-cache breakpoints on or off.
    pub breakpoints: Option<bool>,
}

impl PolicyLevel {
    /// A policy stored through the admin API or the CLI.
    #[must_use]
    pub fn stored(p: &rampart_store::CachePolicy) -> Self {
        PolicyLevel {
            response: p.response_enabled,
            ttl: p.ttl_secs.map(Duration::from_secs),
            breakpoints: p.breakpoints_enabled,
        }
    }
}

/// The caching policies a store key carries from the store (admin API, CLI): its own and its
/// team's. They beat the configuration's at the same level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredPolicies {
    /// The key's own.
    pub key: PolicyLevel,
    /// Its team's.
    pub team: PolicyLevel,
}

/// The response-cache and breakpoint settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Defaults for everyone.
    pub global: PolicyLevel,
    /// Per-team overrides, by team id.
    pub teams: HashMap<Uuid, PolicyLevel>,
    /// Per-key overrides, by key id (above the team's).
    pub keys: HashMap<Uuid, PolicyLevel>,
    /// The breakpoint policy (TTLs and minimum prefix lengths).
    pub breakpoints: breakpoints::Policy,
    /// Largest answer captured for the cache.
    pub capture_limit: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            global: PolicyLevel {
                response: Some(false),
                ttl: Some(Duration::from_secs(3600)),
                breakpoints: Some(false),
            },
            teams: HashMap::new(),
            keys: HashMap::new(),
            breakpoints: breakpoints::Policy::default(),
            capture_limit: 4 * 1024 * 1024,
        }
    }
}

/// What the policy says for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// Response cache on.
    pub response: bool,
    /// Entry lifetime.
    pub ttl: Duration,
    /// Breakpoints on.
    pub breakpoints: bool,
}

impl CacheSettings {
    /// The policy for `identity`: key over team over global, and at the key and team levels
    /// what the store says (admin API, CLI) over the configuration's `[cache]` entries.
    #[must_use]
    pub fn effective(&self, identity: &Identity) -> Effective {
        let stored = identity.cache.as_deref();
        let levels = [
            stored.map(|s| &s.key),
            identity.key_id.and_then(|k| self.keys.get(&k)),
            stored.map(|s| &s.team),
            identity.team_id.and_then(|t| self.teams.get(&t)),
            Some(&self.global),
        ];
        let pick = |f: &dyn Fn(&PolicyLevel) -> Option<bool>| {
            levels.iter().flatten().find_map(|l| f(l)).unwrap_or(false)
        };
        Effective {
            response: pick(&|l| l.response),
            breakpoints: pick(&|l| l.breakpoints),
            ttl: levels
                .iter()
                .flatten()
                .find_map(|l| l.ttl)
                .unwrap_or(Duration::from_secs(3600)),
        }
    }
}

/// The tenant an entry belongs to: the key's team, or the configuration key itself.
#[must_use]
pub fn tenant(identity: &Identity) -> String {
    match identity.team_id {
        Some(team) => format!("team:{team}"),
        None => format!("config-key:{}", identity.key_label),
    }
}

/// What to do with the response cache for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not cached (`x-rampart-cache: bypass` in the response).
    Bypass,
    /// Look up `key`; on a miss, store under it.
    Lookup(CacheKey, Duration),
    /// Store under `key` without looking up.
    Refresh(CacheKey, Duration),
}

/// Decide the plan for a messages request; `tenant` is asked only when the cache is on.
#[must_use]
pub fn plan(
    effective: Effective,
    mode: Mode,
    tenant: impl FnOnce() -> String,
    headers: &HeaderMap,
    body: &[u8],
) -> Plan {
    let on = match mode {
        Mode::Bypass => false,
        Mode::Use | Mode::Refresh => true,
        Mode::Policy => effective.response,
    };
    if !on {
        return Plan::Bypass;
    }
    let betas: Vec<&str> = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    match rampart_cache::cache_key(&tenant(), &betas, body) {
        Ok(key) if mode == Mode::Refresh => Plan::Refresh(key, effective.ttl),
        Ok(key) => Plan::Lookup(key, effective.ttl),
        Err(_) => Plan::Bypass,
    }
}

/// A hit, as the response body and content type the client asked for.
#[must_use]
pub fn hit_body(cached: &CachedResponse, stream: bool) -> (Bytes, &'static str) {
    let mut message: Value = serde_json::from_slice(&cached.message).unwrap_or(Value::Null);
    // A fresh id per answer, as the API gives.
    message["id"] = Value::String(format!("msg_{}", Uuid::new_v4().simple()));
    if stream {
        (replay(&message), "text/event-stream")
    } else {
        (
            Bytes::from(serde_json::to_vec(&message).unwrap_or_default()),
            "application/json",
        )
    }
}

/// The usage of a cached answer (what the hit saved, priced by the ledger).
#[must_use]
pub fn cached_usage(cached: &CachedResponse) -> Option<Value> {
    serde_json::from_slice::<Value>(&cached.message)
        .ok()?
        .get("usage")
        .cloned()
}

/// Captures an upstream answer on its way to the client.
#[derive(Debug)]
pub enum Capturing {
    /// A JSON answer, bounded.
    Json {
        /// Bytes so far.
        buf: BytesMut,
        /// Limit.
        limit: usize,
        /// Past the limit.
        over: bool,
    },
    /// An SSE answer.
    Sse(Capture),
}

impl Capturing {
    /// A capture for a response of this kind.
    #[must_use]
    pub fn new(stream: bool, limit: usize) -> Self {
        if stream {
            Capturing::Sse(Capture::new(limit))
        } else {
            Capturing::Json {
                buf: BytesMut::new(),
                limit,
                over: false,
            }
        }
    }

    /// Feed the next chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        match self {
            Capturing::Sse(c) => c.push(chunk),
            Capturing::Json { buf, limit, over } => {
                if *over || buf.len() + chunk.len() > *limit {
                    *over = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
        }
    }

    /// The final message, when it is complete and worth storing.
    #[must_use]
    pub fn finish(self) -> Option<(Value, Bytes)> {
        let message = match self {
            Capturing::Sse(c) => c.finish()?,
            Capturing::Json { buf, over, .. } => {
                if over {
                    return None;
                }
                serde_json::from_slice(&buf).ok()?
            }
        };
        if !is_cacheable(&message) {
            return None;
        }
        let bytes = Bytes::from(serde_json::to_vec(&message).ok()?);
        Some((message, bytes))
    }
}

/// Store a finished capture under `key`.
pub async fn store(
    cache: &Arc<dyn ResponseStore>,
    key: CacheKey,
    ttl: Duration,
    capture: Capturing,
) -> bool {
    let Some((message, bytes)) = capture.finish() else {
        return false;
    };
    let model = message
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    cache
        .put(
            key,
            CachedResponse {
                message: bytes,
                model,
                ttl,
            },
        )
        .await;
    true
}

/// Add breakpoints to a messages body when the policy says so; `None` when the body is unchanged.
#[must_use]
pub fn with_breakpoints(body: &[u8], policy: &breakpoints::Policy) -> Option<(Bytes, Applied)> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let applied = breakpoints::apply(&mut value, policy);
    if applied.added.is_empty() {
        return None;
    }
    Some((Bytes::from(serde_json::to_vec(&value).ok()?), applied))
}

/// `x-rampart-cache` response header values.
pub mod outcome {
    use http::HeaderValue;

    /// Served from the cache.
    pub const HIT: HeaderValue = HeaderValue::from_static("hit");
    /// Looked up, not found (the answer may be stored).
    pub const MISS: HeaderValue = HeaderValue::from_static("miss");
    /// Not cached.
    pub const BYPASS: HeaderValue = HeaderValue::from_static("bypass");
}

/// The response header for a plan that did not hit.
#[must_use]
pub fn outcome_of(plan: &Plan) -> HeaderValue {
    match plan {
        Plan::Lookup(..) => outcome::MISS,
        Plan::Bypass | Plan::Refresh(..) => outcome::BYPASS,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn identity(team: Option<Uuid>, key: Option<Uuid>) -> Identity {
        let mut i = Identity::unscoped(Arc::from("rk_live_abcd"));
        i.team_id = team;
        i.key_id = key;
        i
    }

    #[test]
    fn key_policy_beats_team_policy_beats_the_default() {
        let team = Uuid::now_v7();
        let key = Uuid::now_v7();
        let mut s = CacheSettings::default();
        s.teams.insert(
            team,
            PolicyLevel {
                response: Some(true),
                ttl: Some(Duration::from_secs(60)),
                breakpoints: Some(true),
            },
        );
        s.keys.insert(
            key,
            PolicyLevel {
                response: Some(false),
                ..PolicyLevel::default()
            },
        );
        let in_team = s.effective(&identity(Some(team), None));
        assert!(in_team.response && in_team.breakpoints);
        assert_eq!(in_team.ttl, Duration::from_secs(60));
        let opted_out = s.effective(&identity(Some(team), Some(key)));
        assert!(!opted_out.response && opted_out.breakpoints);
        let other = s.effective(&identity(Some(Uuid::now_v7()), None));
        assert!(!other.response && !other.breakpoints);
    }

    #[test]
    fn a_stored_policy_beats_the_configuration_at_its_level() {
        let team = Uuid::now_v7();
        let key = Uuid::now_v7();
        let mut s = CacheSettings::default();
        s.teams.insert(
            team,
            PolicyLevel {
                response: Some(true),
                ttl: Some(Duration::from_secs(60)),
                breakpoints: Some(true),
            },
        );
        s.keys.insert(
            key,
            PolicyLevel {
                breakpoints: Some(true),
                ..PolicyLevel::default()
            },
        );
        let mut i = identity(Some(team), Some(key));
        // The team's stored policy turns the response cache off and shortens the TTL; the key's
        // stored policy turns breakpoints off; the rest comes from the configuration.
        i.cache = Some(Arc::new(StoredPolicies {
            key: PolicyLevel {
                breakpoints: Some(false),
                ..PolicyLevel::default()
            },
            team: PolicyLevel {
                response: Some(false),
                ttl: Some(Duration::from_secs(5)),
                breakpoints: None,
            },
        }));
        let e = s.effective(&i);
        assert_eq!(
            (e.response, e.breakpoints, e.ttl),
            (false, false, Duration::from_secs(5))
        );
        // The configuration's key entry still beats the stored team policy.
        i.cache = Some(Arc::new(StoredPolicies {
            key: PolicyLevel::default(),
            team: PolicyLevel {
                breakpoints: Some(false),
                ..PolicyLevel::default()
            },
        }));
        assert!(s.effective(&i).breakpoints);
    }

    #[test]
    fn the_request_header_steers_within_the_policy() {
        let mut h = HeaderMap::new();
        assert_eq!(Mode::of(&h).unwrap(), Mode::Policy);
        for (v, m) in [
            ("use", Mode::Use),
            ("BYPASS", Mode::Bypass),
            (" refresh ", Mode::Refresh),
        ] {
            h.insert(CACHE_HEADER.clone(), HeaderValue::from_static(v));
            assert_eq!(Mode::of(&h).unwrap(), m);
        }
        h.insert(CACHE_HEADER.clone(), HeaderValue::from_static("sometimes"));
        assert!(Mode::of(&h).is_err());
        let off = Effective {
            response: false,
            ttl: Duration::from_secs(1),
            breakpoints: false,
        };
        let body = br#"{"model":"m","max_tokens":1,"messages":[]}"#;
        let none = HeaderMap::new();
        assert_eq!(
            plan(off, Mode::Policy, || "t".into(), &none, body),
            Plan::Bypass
        );
        assert!(matches!(
            plan(off, Mode::Use, || "t".into(), &none, body),
            Plan::Lookup(..)
        ));
        assert!(matches!(
            plan(off, Mode::Refresh, || "t".into(), &none, body),
            Plan::Refresh(..)
        ));
        let on = Effective {
            response: true,
            ..off
        };
        assert_eq!(
            plan(on, Mode::Bypass, || "t".into(), &none, body),
            Plan::Bypass
        );
    }

    #[test]
    fn tenants_are_teams_or_the_configuration_key_itself() {
        let team = Uuid::now_v7();
        assert_eq!(tenant(&identity(Some(team), None)), format!("team:{team}"));
        assert_eq!(tenant(&identity(None, None)), "config-key:rk_live_abcd");
    }

    #[test]
    fn captures_store_only_complete_successful_answers() {
        let done = serde_json::json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}});
        let mut json = Capturing::new(false, 1 << 20);
        json.push(done.to_string().as_bytes());
        assert!(json.finish().is_some());
        let mut truncated = done.clone();
        truncated["stop_reason"] = "max_tokens".into();
        let mut json = Capturing::new(false, 1 << 20);
        json.push(truncated.to_string().as_bytes());
        assert!(json.finish().is_none());
        let mut sse = Capturing::new(true, 1 << 20);
        sse.push(&replay(&done));
        assert_eq!(sse.finish().unwrap().0, done);
        let cached = CachedResponse {
            message: Bytes::from(done.to_string()),
            model: "m".into(),
            ttl: Duration::from_secs(5),
        };
        let (body, kind) = hit_body(&cached, false);
        assert_eq!(kind, "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_ne!(v["id"], "msg_1");
        assert_eq!(v["content"], done["content"]);
        let (body, kind) = hit_body(&cached, true);
        assert_eq!(kind, "text/event-stream");
        assert!(body.starts_with(b"event: message_start"));
    }
}

/// `[cache]`: the response cache and prompt-cache breakpoints.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Response cache on for everyone (teams and keys may override). Default false.
    pub response_enabled: bool,
    /// Lifetime of a cached answer. Default 3600 s.
    pub ttl_secs: u64,
    /// `memory` (default: in-process, byte-bounded) or `redis` (shared by every instance).
    pub backend: String,
    /// Byte bound of the in-process store. Default 256 MiB.
    pub max_bytes: u64,
    /// Largest answer captured for the cache. Default 4 MiB.
    pub capture_limit_bytes: u64,
    /// `redis://…` for the `redis` backend (or `RAMPART_CACHE__REDIS_URL`).
    pub redis_url: Option<String>,
    /// Prompt-cache breakpoints on for everyone. Default false.
    pub breakpoints_enabled: bool,
    /// TTL of the tools and system breakpoints: `5m` (default) or `1h`.
    pub breakpoints_static_ttl: String,
    /// TTL of the conversation breakpoints: `5m` (default) or `1h` (only with a `1h` static TTL).
    pub breakpoints_conversation_ttl: String,
    /// Minimum cacheable prefix per model id (overrides and additions to the built-in table).
    pub min_cacheable_tokens: std::collections::BTreeMap<String, u64>,
    /// Per-team policies.
    pub teams: Vec<PolicyEntry>,
    /// Per-key policies (above their team's).
    pub keys: Vec<PolicyEntry>,
}

/// A team's or key's policy in `[cache]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// The team's or key's id.
    pub id: Uuid,
    /// Response cache on or off.
    pub response_enabled: Option<bool>,
    /// Entry lifetime.
    pub ttl_secs: Option<u64>,
    /// Breakpoints on or off.
    pub breakpoints_enabled: Option<bool>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            response_enabled: false,
            ttl_secs: 3600,
            backend: "memory".to_owned(),
            max_bytes: 256 * 1024 * 1024,
            capture_limit_bytes: 4 * 1024 * 1024,
            redis_url: None,
            breakpoints_enabled: false,
            breakpoints_static_ttl: "5m".to_owned(),
            breakpoints_conversation_ttl: "5m".to_owned(),
            min_cacheable_tokens: std::collections::BTreeMap::new(),
            teams: Vec::new(),
            keys: Vec::new(),
        }
    }
}

fn parse_ttl(field: &str, v: &str, problems: &mut Vec<String>) -> breakpoints::Ttl {
    match v {
        "5m" => breakpoints::Ttl::FiveMinutes,
        "1h" => breakpoints::Ttl::OneHour,
        other => {
            problems.push(format!("cache.{field}: `{other}` must be 5m or 1h"));
            breakpoints::Ttl::FiveMinutes
        }
    }
}

impl CacheConfig {
    /// Validate into settings, reporting every problem.
    pub fn settings(&self, problems: &mut Vec<String>) -> CacheSettings {
        let level = |e: &PolicyEntry| PolicyLevel {
            response: e.response_enabled,
            ttl: e.ttl_secs.map(Duration::from_secs),
            breakpoints: e.breakpoints_enabled,
        };
        if self.ttl_secs == 0
            || self
                .teams
                .iter()
                .chain(&self.keys)
                .any(|e| e.ttl_secs == Some(0))
        {
            problems.push("cache.ttl_secs: must be greater than 0".to_owned());
        }
        match self.backend.as_str() {
            "memory" => {}
            "redis" if self.redis_url.is_some() => {}
            "redis" => {
                problems.push("cache.redis_url: required with cache.backend = \"redis\"".to_owned())
            }
            other => problems.push(format!("cache.backend: `{other}` must be memory or redis")),
        }
        let static_ttl = parse_ttl(
            "breakpoints_static_ttl",
            &self.breakpoints_static_ttl,
            problems,
        );
        let conversation_ttl = parse_ttl(
            "breakpoints_conversation_ttl",
            &self.breakpoints_conversation_ttl,
            problems,
        );
        if static_ttl < conversation_ttl {
            problems.push("cache.breakpoints_conversation_ttl: 1h breakpoints must come before 5m ones, so a 1h conversation TTL needs a 1h static TTL".to_owned());
        }
        let mut policy = breakpoints::Policy {
            static_ttl,
            conversation_ttl,
            ..breakpoints::Policy::default()
        };
        for (model, n) in &self.min_cacheable_tokens {
            policy.minimums.retain(|(m, _)| m != model);
            policy.minimums.push((model.clone(), *n));
        }
        CacheSettings {
            global: PolicyLevel {
                response: Some(self.response_enabled),
                ttl: Some(Duration::from_secs(self.ttl_secs)),
                breakpoints: Some(self.breakpoints_enabled),
            },
            teams: self.teams.iter().map(|e| (e.id, level(e))).collect(),
            keys: self.keys.iter().map(|e| (e.id, level(e))).collect(),
            breakpoints: policy,
            capture_limit: usize::try_from(self.capture_limit_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The store this configuration names.
    ///
    /// # Errors
    /// An unusable Redis URL.
    pub fn store(&self) -> Result<Arc<dyn ResponseStore>, String> {
        match (self.backend.as_str(), &self.redis_url) {
            ("redis", Some(url)) => Ok(Arc::new(rampart_cache::store::RedisStore::new(
                url,
                "rampart",
                Duration::from_millis(250),
            )?)),
            _ => Ok(Arc::new(rampart_cache::MemoryStore::new(self.max_bytes))),
        }
    }
}

/// The response cache of a running gateway.
#[derive(Debug)]
pub struct ResponseCache {
    /// Policies.
    pub settings: CacheSettings,
    /// Where answers are kept.
    pub store: Arc<dyn ResponseStore>,
}

/// What an answer would have cost without prompt caching: every cache write and read priced as
/// plain input. Compared with the real cost, this is what the breakpoints saved (negative on a
/// turn that only writes: a write costs more than plain input).
#[must_use]
pub fn uncached_cost(
    prices: &rampart_ledger::pricing::PriceTable,
    model: &str,
    tokens: &rampart_ledger::pricing::TokenUsage,
) -> u64 {
    let plain = rampart_ledger::pricing::TokenUsage {
        input_tokens: tokens.input_tokens
            + tokens.cache_creation_input_tokens
            + tokens.cache_read_input_tokens,
        output_tokens: tokens.output_tokens,
        ..rampart_ledger::pricing::TokenUsage::default()
    };
    prices.cost(model, &plain, false)
}

/// The usage of a cached answer as priced tokens.
#[must_use]
pub fn cached_tokens(cached: &CachedResponse) -> Option<rampart_ledger::pricing::TokenUsage> {
    let u = cached_usage(cached)?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let split = u.get("cache_creation");
    let part = |k: &str| split.and_then(|s| s.get(k)).and_then(Value::as_u64);
    Some(rampart_ledger::pricing::TokenUsage {
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        cache_creation_input_tokens: n("cache_creation_input_tokens"),
        cache_read_input_tokens: n("cache_read_input_tokens"),
        cache_creation_5m: part("ephemeral_5m_input_tokens"),
        cache_creation_1h: part("ephemeral_1h_input_tokens"),
    })
}
