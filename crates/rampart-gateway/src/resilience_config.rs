//! Configuration of the upstream pool, retries, breakers, timeouts and model routing: the TOML
//! shapes (`[upstream]` extensions and `[routing]`) and their validation into
//! [`ResilienceSettings`] and [`RoutingSettings`]. Every problem is reported with its path.
//!
//! ```toml
//! [upstream]
//! base_url = "https://api.anthropic.com"  # a one-target pool when no targets are listed
//! connect_timeout_ms = 5000                # connect (TCP + TLS handshake start)
//! header_timeout_ms = 600000               # time to first byte: the response headers
//! idle_timeout_ms = 600000                 # longest gap between body chunks / stream events
//! total_timeout_ms = 0                     # overall deadline of a request; 0 = none
//! max_cooldown_ms = 60000                  # longest cool-down of a rate-limited target
//!
//! [upstream.timeouts.count_tokens]         # per route (messages, count_tokens, models, batches);
//! header_timeout_ms = 10000                # any of the four timeouts above
//!
//! [[upstream.targets]]                     # replaces base_url; up to 64
//! name = "primary"                         # metric label and log name (default target-N)
//! base_url = "https://api.anthropic.com"
//! credential = "org-a"                     # a stored credential (`rampart upstreams add`), or
//! # api_key_env = "ANTHROPIC_KEY_B"        # an environment variable holding the key, or
//! # api_key_file = "/run/secrets/b"        # a file; default: the [upstream] key
//! weight = 1.0                             # relative share (P2C cost is divided by it)
//! models = ["claude-*"]                    # model patterns served; default all
//! batches = false                          # batch routes go here (default: the first target)
//!
//! [upstream.retry]
//! max_attempts = 3                         # per request, across targets and fallback models
//! initial_backoff_ms = 500                 # full jitter: uniform in [0, min(max, initial·2ⁿ)]
//! max_backoff_ms = 8000
//! max_retry_after_ms = 10000               # longest retry-after waited for
//! budget_ratio = 0.2                       # retries ≤ 20 % of requests …
//! budget_min_per_sec = 10                  # … + 10 per second
//! budget_window_secs = 10
//!
//! [upstream.breaker]
//! enabled = true
//! consecutive_failures = 5
//! failure_rate = 0.5                       # open at ≥ 50 % failures …
//! min_requests = 20                        # … of at least 20 attempts …
//! window_secs = 10                         # … in the last 10 s
//! open_ms = 10000                          # then one probe
//!
//! [routing.aliases]
//! fast = "claude-haiku-4-5"
//!
//! [routing.fallbacks]
//! "claude-opus-4-6" = ["claude-sonnet-4-6"]
//!
//! [routing.auto]                           # present = the `auto` model is on
//! name = "auto"
//! haiku = "claude-haiku-4-5"
//! sonnet = "claude-sonnet-4-6"
//! opus = "claude-opus-4-6"
//! token_count = "upstream"                 # count_tokens pre-flight (cached), or "estimate"
//! sonnet_input_tokens = 4000               # 0 switches a rule off
//! opus_input_tokens = 60000
//! sonnet_max_tokens = 4096
//! opus_max_tokens = 32000
//! tools = "sonnet"                         # least tier with tools / images / documents
//! images = "sonnet"
//! documents = "sonnet"
//! hint_header = "x-rampart-hint"           # haiku | sonnet | opus, decides alone
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerSettings;
use crate::config::UpstreamTarget;
use crate::retry::RetrySettings;
use crate::routing::{AutoRules, RoutingSettings, Tier, TokenSource};
use crate::secret::Secret;

/// `[[upstream.targets]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Name (metric label); default `target-N` (1-based).
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL.
    pub base_url: String,
    /// A stored credential's name (needs a store).
    #[serde(default)]
    pub credential: Option<String>,
    /// An environment variable holding the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A file holding the key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Relative weight. Default 1.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Model patterns served; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Batch routes go to this target.
    #[serde(default)]
    pub batches: bool,
}

/// `[upstream.retry]`. See [`RetrySettings`] for defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub max_retry_after_ms: u64,
    pub budget_ratio: f64,
    pub budget_min_per_sec: u32,
    pub budget_window_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let d = RetrySettings::default();
        Self {
            max_attempts: d.max_attempts,
            initial_backoff_ms: ms(d.initial_backoff),
            max_backoff_ms: ms(d.max_backoff),
            max_retry_after_ms: ms(d.max_retry_after),
            budget_ratio: d.budget_ratio,
            budget_min_per_sec: d.budget_min_per_sec,
            budget_window_secs: d.budget_window.as_secs(),
        }
    }
}

/// `[upstream.breaker]`. See [`BreakerSettings`] for defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window_secs: u64,
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        let d = BreakerSettings::default();
        Self {
            enabled: d.enabled,
            consecutive_failures: d.consecutive_failures,
            failure_rate: d.failure_rate,
            min_requests: d.min_requests,
            window_secs: d.window.as_secs(),
            open_ms: ms(d.open_for),
        }
    }
}

/// `[upstream.timeouts.<route>]`: overrides of the `[upstream]` timeouts for one route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RouteTimeoutsConfig {
    pub connect_timeout_ms: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
}

/// `[routing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Alias → model.
    pub aliases: BTreeMap<String, String>,
    /// Model → fallback models, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// The `auto` model.
    pub auto: Option<AutoConfig>,
}

/// `[routing.auto]`. See [`AutoRules`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct AutoConfig {
    pub name: String,
    pub haiku: String,
    pub sonnet: String,
    pub opus: String,
    pub token_count: TokenSource,
    pub sonnet_input_tokens: u64,
    pub opus_input_tokens: u64,
    pub sonnet_max_tokens: u64,
    pub opus_max_tokens: u64,
    pub tools: Tier,
    pub images: Tier,
    pub documents: Tier,
    pub hint_header: String,
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            name: "auto".to_owned(),
            haiku: "claude-haiku-4-5".to_owned(),
            sonnet: "claude-sonnet-4-6".to_owned(),
            opus: "claude-opus-4-6".to_owned(),
            token_count: TokenSource::Upstream,
            sonnet_input_tokens: 4_000,
            opus_input_tokens: 60_000,
            sonnet_max_tokens: 4_096,
            opus_max_tokens: 32_000,
            tools: Tier::Sonnet,
            images: Tier::Sonnet,
            documents: Tier::Sonnet,
            hint_header: "x-rampart-hint".to_owned(),
        }
    }
}

/// Timeouts of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// Connect.
    pub connect: Duration,
    /// Until the response headers.
    pub first_byte: Duration,
    /// Longest gap between body chunks or stream events.
    pub idle: Duration,
    /// Overall deadline, if any.
    pub total: Option<Duration>,
}

/// Where a target's key comes from.
#[derive(Debug, Clone)]
pub enum TargetKey {
    /// The `[upstream]` key (configured, or the store's default credential).
    Default,
    /// Given in the environment or a file.
    Fixed(Secret),
    /// A stored credential of this name.
    Stored(String),
}

/// A validated target.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// Name.
    pub name: String,
    /// Base URL.
    pub base: UpstreamTarget,
    /// Credential.
    pub key: TargetKey,
    /// Weight (> 0).
    pub weight: f64,
    /// Model patterns; empty = all.
    pub models: Vec<String>,
}

/// The validated pool, retry, breaker and timeout settings.
#[derive(Debug, Clone)]
pub struct ResilienceSettings {
    /// Targets, in configuration order (at least one).
    pub targets: Vec<TargetSettings>,
    /// Index of the target batch routes go to.
    pub batch_target: usize,
    /// Retries.
    pub retry: RetrySettings,
    /// Breakers.
    pub breaker: BreakerSettings,
    /// Per route: messages, count_tokens, models, batches.
    pub timeouts: [RouteTimeouts; 4],
    /// Longest cool-down.
    pub max_cooldown: Duration,
}

impl ResilienceSettings {
    /// Whether some target uses the `[upstream]` key (so it must exist); also when no target
    /// could be read (the single `base_url` target would).
    #[must_use]
    pub fn needs_default_key(&self) -> bool {
        self.targets.is_empty()
            || self
                .targets
                .iter()
                .any(|t| matches!(t.key, TargetKey::Default))
    }

    /// Names of the stored credentials targets use.
    #[must_use]
    pub fn stored_credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| match &t.key {
                TargetKey::Stored(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The route names of `[upstream.timeouts.*]`, in [`ResilienceSettings::timeouts`] order.
pub const TIMEOUT_ROUTES: [&str; 4] = ["messages", "count_tokens", "models", "batches"];

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `[upstream]` values this module validates.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// `connect_timeout_ms`.
    pub connect_ms: u64,
    /// `header_timeout_ms`.
    pub header_ms: u64,
    /// `idle_timeout_ms`.
    pub idle_ms: u64,
    /// `total_timeout_ms` (0 = none).
    pub total_ms: u64,
}

/// What [`validate`] reads.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The parsed `[upstream] base_url` (the one-target pool when no targets are listed).
    pub base: Option<UpstreamTarget>,
    /// `[[upstream.targets]]`.
    pub targets: &'a [TargetConfig],
    /// `[upstream]` timeouts.
    pub timeouts: UpstreamTimeouts,
    /// `[upstream.timeouts.*]`.
    pub route_timeouts: &'a BTreeMap<String, RouteTimeoutsConfig>,
    /// `[upstream.retry]`.
    pub retry: &'a RetryConfig,
    /// `[upstream.breaker]`.
    pub breaker: &'a BreakerConfig,
    /// `[upstream] max_cooldown_ms`.
    pub max_cooldown_ms: u64,
    /// Whether stored credentials can be used.
    pub store_credentials: bool,
}

/// Validate the pool, retry, breaker and timeout settings, pushing every problem.
pub fn validate(inputs: &Inputs<'_>, problems: &mut Vec<String>) -> Option<ResilienceSettings> {
    let before = problems.len();
    let targets = targets(inputs, problems);
    let batch_targets: Vec<usize> = inputs
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.batches)
        .map(|(i, _)| i)
        .collect();
    if batch_targets.len() > 1 {
        problems.push("upstream.targets: at most one target may set batches = true".to_owned());
    }
    let r = inputs.retry;
    if !(1..=10).contains(&r.max_attempts) {
        problems.push("upstream.retry.max_attempts: must be between 1 and 10".to_owned());
    }
    if r.initial_backoff_ms > r.max_backoff_ms {
        problems.push(
            "upstream.retry.initial_backoff_ms: must not exceed upstream.retry.max_backoff_ms"
                .to_owned(),
        );
    }
    if !(0.0..=1.0).contains(&r.budget_ratio) {
        problems.push("upstream.retry.budget_ratio: must be between 0 and 1".to_owned());
    }
    if r.budget_window_secs == 0 {
        problems.push("upstream.retry.budget_window_secs: must be greater than 0".to_owned());
    }
    let b = inputs.breaker;
    if b.consecutive_failures == 0 {
        problems.push("upstream.breaker.consecutive_failures: must be at least 1".to_owned());
    }
    if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
        problems.push("upstream.breaker.failure_rate: must be above 0 and at most 1".to_owned());
    }
    if b.window_secs == 0 || b.open_ms == 0 {
        problems
            .push("upstream.breaker.window_secs and open_ms: must be greater than 0".to_owned());
    }
    if inputs.timeouts.idle_ms == 0 {
        problems.push("upstream.idle_timeout_ms: must be greater than 0".to_owned());
    }
    if inputs.max_cooldown_ms == 0 {
        problems.push("upstream.max_cooldown_ms: must be greater than 0".to_owned());
    }
    let timeouts = route_timeouts(inputs, problems);
    if problems.len() > before {
        return None;
    }
    Some(ResilienceSettings {
        targets,
        batch_target: batch_targets.first().copied().unwrap_or(0),
        retry: RetrySettings {
            max_attempts: r.max_attempts,
            initial_backoff: Duration::from_millis(r.initial_backoff_ms),
            max_backoff: Duration::from_millis(r.max_backoff_ms),
            max_retry_after: Duration::from_millis(r.max_retry_after_ms),
            budget_ratio: r.budget_ratio,
            budget_min_per_sec: r.budget_min_per_sec,
            budget_window: Duration::from_secs(r.budget_window_secs),
        },
        breaker: BreakerSettings {
            enabled: b.enabled,
            consecutive_failures: b.consecutive_failures,
            failure_rate: b.failure_rate,
            min_requests: b.min_requests,
            window: Duration::from_secs(b.window_secs),
            open_for: Duration::from_millis(b.open_ms),
        },
        timeouts,
        max_cooldown: Duration::from_millis(inputs.max_cooldown_ms),
    })
}

fn targets(inputs: &Inputs<'_>, problems: &mut Vec<String>) -> Vec<TargetSettings> {
    if inputs.targets.is_empty() {
        return inputs
            .base
            .clone()
            .map(|base| TargetSettings {
                name: "default".to_owned(),
                base,
                key: TargetKey::Default,
                weight: 1.0,
                models: Vec::new(),
            })
            .into_iter()
            .collect();
    }
    if inputs.targets.len() > crate::upstream_pool::MAX_TARGETS {
        problems.push(format!(
            "upstream.targets: at most {} targets",
            crate::upstream_pool::MAX_TARGETS
        ));
    }
    let mut out = Vec::with_capacity(inputs.targets.len());
    let mut names: Vec<String> = Vec::with_capacity(inputs.targets.len());
    for (i, t) in inputs.targets.iter().enumerate() {
        let at = format!("upstream.targets[{i}]");
        let name = t
            .name
            .clone()
            .unwrap_or_else(|| format!("target-{}", i + 1));
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            problems.push(format!(
                "{at}.name: `{name}` must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        }
        if names.contains(&name) {
            problems.push(format!("{at}.name: `{name}` is used by another target"));
        }
        names.push(name.clone());
        let base = crate::config::parse_base_url(&t.base_url, &format!("{at}.base_url"), problems);
        let weight = t.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight > 0.0) {
            problems.push(format!("{at}.weight: must be a number above 0"));
        }
        for (j, m) in t.models.iter().enumerate() {
            if m.is_empty() {
                problems.push(format!("{at}.models[{j}]: must not be empty"));
            }
        }
        let key = match (&t.credential, &t.api_key_env, &t.api_key_file) {
            (None, None, None) => Some(TargetKey::Default),
            (Some(name), None, None) => {
                if !inputs.store_credentials {
                    problems.push(format!(
                        "{at}.credential: names a stored credential, but no store is configured (--data-dir / RAMPART_DATABASE_URL)"
                    ));
                }
                Some(TargetKey::Stored(name.clone()))
            }
            (None, Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    Some(TargetKey::Fixed(Secret::new(v.trim().to_owned())))
                }
                _ => {
                    problems.push(format!(
                        "{at}.api_key_env: environment variable {var} is not set or empty"
                    ));
                    None
                }
            },
            (None, None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => {
                    Some(TargetKey::Fixed(Secret::new(s.trim().to_owned())))
                }
                Ok(_) => {
                    problems.push(format!("{at}.api_key_file {}: is empty", path.display()));
                    None
                }
                Err(e) => {
                    problems.push(format!("{at}.api_key_file {}: {e}", path.display()));
                    None
                }
            },
            _ => {
                problems.push(format!(
                    "{at}: set at most one of credential, api_key_env, api_key_file"
                ));
                None
            }
        };
        if let (Some(base), Some(key)) = (base, key) {
            out.push(TargetSettings {
                name,
                base,
                key,
                weight,
                models: t.models.clone(),
            });
        }
    }
    out
}

fn route_timeouts(inputs: &Inputs<'_>, problems: &mut Vec<String>) -> [RouteTimeouts; 4] {
    let d = inputs.timeouts;
    let total = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let defaults = RouteTimeouts {
        connect: Duration::from_millis(d.connect_ms),
        first_byte: Duration::from_millis(d.header_ms),
        idle: Duration::from_millis(d.idle_ms),
        total: total(d.total_ms),
    };
    let mut out = [defaults; 4];
    for (route, t) in inputs.route_timeouts {
        let Some(i) = TIMEOUT_ROUTES.iter().position(|r| r == route) else {
            problems.push(format!(
                "upstream.timeouts.{route}: unknown route (expected one of: {})",
                TIMEOUT_ROUTES.join(", ")
            ));
            continue;
        };
        for (name, v) in [
            ("connect_timeout_ms", t.connect_timeout_ms),
            ("header_timeout_ms", t.header_timeout_ms),
            ("idle_timeout_ms", t.idle_timeout_ms),
        ] {
            if v == Some(0) {
                problems.push(format!(
                    "upstream.timeouts.{route}.{name}: must be greater than 0"
                ));
            }
        }
        let o = &mut out[i];
        if let Some(v) = t.connect_timeout_ms {
            o.connect = Duration::from_millis(v);
        }
        if let Some(v) = t.header_timeout_ms {
            o.first_byte = Duration::from_millis(v);
        }
        if let Some(v) = t.idle_timeout_ms {
            o.idle = Duration::from_millis(v);
        }
        if let Some(v) = t.total_timeout_ms {
            o.total = total(v);
        }
    }
    out
}

/// Validate `[routing]`, pushing every problem.
pub fn validate_routing(cfg: &RoutingConfig, problems: &mut Vec<String>) -> RoutingSettings {
    let auto_name = cfg.auto.as_ref().map(|a| a.name.as_str());
    let mut aliases = HashMap::new();
    for (alias, model) in &cfg.aliases {
        if alias.is_empty() || model.is_empty() {
            problems.push("routing.aliases: names and models must not be empty".to_owned());
        } else if cfg.aliases.contains_key(model) {
            problems.push(format!(
                "routing.aliases.{alias}: `{model}` is itself an alias (aliases do not chain)"
            ));
        } else if Some(alias.as_str()) == auto_name || Some(model.as_str()) == auto_name {
            problems.push(format!(
                "routing.aliases.{alias}: conflicts with the auto model's name"
            ));
        } else {
            aliases.insert(alias.clone(), model.clone());
        }
    }
    let mut fallbacks = HashMap::new();
    for (model, next) in &cfg.fallbacks {
        if next.is_empty() {
            problems.push(format!(
                "routing.fallbacks.{model}: list at least one model"
            ));
            continue;
        }
        if cfg.aliases.contains_key(model) || Some(model.as_str()) == auto_name {
            problems.push(format!(
                "routing.fallbacks.{model}: name a model, not an alias or the auto model"
            ));
            continue;
        }
        let resolved: Vec<String> = next
            .iter()
            .map(|m| cfg.aliases.get(m).unwrap_or(m).clone())
            .collect();
        if resolved.iter().any(|m| m == model || m.is_empty()) {
            problems.push(format!(
                "routing.fallbacks.{model}: must not list the model itself or an empty name"
            ));
            continue;
        }
        fallbacks.insert(model.clone(), resolved);
    }
    let auto = cfg.auto.as_ref().and_then(|a| {
        let mut ok = true;
        if a.name.is_empty() || [&a.haiku, &a.sonnet, &a.opus].iter().any(|m| m.is_empty()) {
            problems
                .push("routing.auto: name, haiku, sonnet and opus must not be empty".to_owned());
            ok = false;
        }
        for (name, sonnet, opus) in [
            ("input_tokens", a.sonnet_input_tokens, a.opus_input_tokens),
            ("max_tokens", a.sonnet_max_tokens, a.opus_max_tokens),
        ] {
            if sonnet > 0 && opus > 0 && sonnet > opus {
                problems.push(format!(
                    "routing.auto.sonnet_{name}: must not exceed routing.auto.opus_{name}"
                ));
                ok = false;
            }
        }
        let hint = http::HeaderName::from_bytes(a.hint_header.as_bytes()).ok();
        if hint.is_none() {
            problems.push(format!(
                "routing.auto.hint_header: `{}` is not a header name",
                a.hint_header
            ));
        }
        let resolve = |m: &String| cfg.aliases.get(m).unwrap_or(m).clone();
        Some(AutoRules {
            name: a.name.clone(),
            models: [resolve(&a.haiku), resolve(&a.sonnet), resolve(&a.opus)],
            token_source: a.token_count,
            sonnet_input_tokens: a.sonnet_input_tokens,
            opus_input_tokens: a.opus_input_tokens,
            sonnet_max_tokens: a.sonnet_max_tokens,
            opus_max_tokens: a.opus_max_tokens,
            tools: a.tools,
            images: a.images,
            documents: a.documents,
            hint_header: hint?,
        })
        .filter(|_| ok)
    });
    RoutingSettings {
        aliases,
        fallbacks,
        auto,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::sources;
    use crate::config::{Settings, Sources, load};
    use crate::secret::Secret;

    fn ok(toml: &str) -> Settings {
        load(&sources(toml)).unwrap()
    }

    fn problems(toml: &str) -> String {
        load(&sources(toml)).unwrap_err().to_string()
    }

    #[test]
    fn the_single_base_url_is_a_one_target_pool_with_the_defaults() {
        let s = ok("[upstream]\nbase_url = \"http://127.0.0.1:9\"\n");
        let r = &s.resilience;
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].base.authority.as_str(), "127.0.0.1:9");
        assert!(r.needs_default_key());
        assert_eq!(r.retry, crate::retry::RetrySettings::default());
        assert_eq!(r.breaker, crate::breaker::BreakerSettings::default());
        assert_eq!(r.timeouts[0].first_byte.as_secs(), 600);
        assert_eq!(r.timeouts[0].total, None);
        assert!(!s.routing.is_active());
    }

    #[test]
    fn targets_replace_the_base_url_and_route_timeouts_override_per_route() {
        let s = ok(r#"
            [upstream]
            total_timeout_ms = 900000
            [upstream.timeouts.count_tokens]
            header_timeout_ms = 10000
            total_timeout_ms = 0
            [[upstream.targets]]
            name = "a"
            base_url = "https://a.example/prefix/"
            weight = 2.5
            models = ["claude-opus-*"]
            [[upstream.targets]]
            base_url = "https://b.example"
            batches = true
        "#);
        let r = &s.resilience;
        assert_eq!(
            r.targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "target-2"]
        );
        assert_eq!(r.targets[0].base.path_prefix, "/prefix");
        assert_eq!((r.targets[0].weight, r.batch_target), (2.5, 1));
        assert_eq!(s.upstream.authority.as_str(), "a.example");
        assert_eq!(r.timeouts[1].first_byte.as_secs(), 10);
        assert_eq!(r.timeouts[1].total, None);
        assert_eq!(r.timeouts[0].total.map(|d| d.as_secs()), Some(900));
    }

    #[test]
    fn every_target_problem_is_named_by_its_path() {
        let text = problems(
            r#"
            [[upstream.targets]]
            name = "a b"
            base_url = "ftp://x"
            weight = 0
            credential = "c"
            api_key_env = "X"
            [[upstream.targets]]
            name = "t"
            base_url = "https://t.example"
            api_key_env = "RAMPART_TEST_SURELY_UNSET_VARIABLE"
            batches = true
            [[upstream.targets]]
            name = "t"
            base_url = "https://u.example"
            credential = "stored"
            batches = true
            [upstream.timeouts.embeddings]
            header_timeout_ms = 1
            [upstream.timeouts.messages]
            idle_timeout_ms = 0
            [upstream.retry]
            max_attempts = 0
            budget_ratio = 2.0
            [upstream.breaker]
            failure_rate = 0.0
        "#,
        );
        for needle in [
            "upstream.targets[0].name: `a b`",
            "upstream.targets[0].base_url: `ftp://x` must use http or https",
            "upstream.targets[0].weight",
            "upstream.targets[0]: set at most one of credential, api_key_env, api_key_file",
            "upstream.targets[1].api_key_env: environment variable RAMPART_TEST_SURELY_UNSET_VARIABLE",
            "upstream.targets[2].name: `t` is used by another target",
            "upstream.targets[2].credential: names a stored credential, but no store is configured",
            "at most one target may set batches = true",
            "upstream.timeouts.embeddings: unknown route",
            "upstream.timeouts.messages.idle_timeout_ms: must be greater than 0",
            "upstream.retry.max_attempts",
            "upstream.retry.budget_ratio",
            "upstream.breaker.failure_rate",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn targets_with_their_own_keys_need_no_upstream_key() {
        let dir = std::env::temp_dir().join(format!("rampart-key-{}", uuid::Uuid::now_v7()));
        std::fs::write(&dir, "sk-ant-from-file\n").unwrap();
        let s = load(&Sources {
            inline_toml: Some(format!(
                "[[upstream.targets]]\nbase_url = \"https://a.example\"\napi_key_file = \"{}\"\n",
                dir.display()
            )),
            client_keys: vec![Secret::new("rk_test_0123456789abcdef".to_owned())],
            ..Sources::default()
        })
        .unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(!s.resilience.needs_default_key());
        assert!(s.upstream_api_key.is_none());
        assert!(matches!(
            s.resilience.targets[0].key,
            super::TargetKey::Fixed(_)
        ));
    }

    #[test]
    fn routing_resolves_aliases_in_chains_and_auto_and_refuses_loops() {
        let s = ok(r#"
            [routing.aliases]
            fast = "claude-haiku-4-5"
            smart = "claude-sonnet-4-6"
            [routing.fallbacks]
            "claude-opus-4-6" = ["smart", "fast"]
            [routing.auto]
            haiku = "fast"
            token_count = "estimate"
            tools = "opus"
        "#);
        let r = &s.routing;
        assert_eq!(
            r.fallbacks["claude-opus-4-6"],
            ["claude-sonnet-4-6", "claude-haiku-4-5"]
        );
        let auto = r.auto.as_ref().unwrap();
        assert_eq!(auto.models[0], "claude-haiku-4-5");
        assert_eq!(auto.tools, crate::routing::Tier::Opus);
        assert_eq!(auto.token_source, crate::routing::TokenSource::Estimate);
        let text = problems(
            r#"
            [routing.aliases]
            a = "b"
            b = "claude-x"
            auto = "claude-y"
            [routing.fallbacks]
            "claude-x" = ["claude-x"]
            "claude-z" = []
            [routing.auto]
            sonnet_input_tokens = 100
            opus_input_tokens = 10
            hint_header = "bad header"
        "#,
        );
        for needle in [
            "routing.aliases.a: `b` is itself an alias",
            "routing.aliases.auto: conflicts with the auto model's name",
            "routing.fallbacks.claude-x: must not list the model itself",
            "routing.fallbacks.claude-z: list at least one model",
            "routing.auto.sonnet_input_tokens: must not exceed",
            "routing.auto.hint_header: `bad header`",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let text = problems("[routing.auto]\ntools = \"gpt\"\n");
        assert!(
            text.contains("routing.auto.tools: unknown variant"),
            "{text}"
        );
    }
}
