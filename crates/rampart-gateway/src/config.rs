//! Configuration: defaults, then a TOML file, then `RAMPART_SECTION__FIELD` environment overrides.
//!
//! Secrets never come from the TOML file in plain text: the upstream key comes from
//! `RAMPART_UPSTREAM_API_KEY` or `upstream.api_key_file` (or, with a store, from its encrypted
//! upstream credentials: `upstream.credential` names one), client keys from `RAMPART_API_KEYS`
//! (comma-separated), `auth.api_keys_file` (one per line) or as SHA-256 hashes in `auth.api_key_hashes`.
//! [`load`] validates everything and reports every problem at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::auth::{ApiKeyHash, StaticKeys};
use crate::secret::Secret;

/// `[server]`: the listening socket and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Largest accepted body for messages and count_tokens. Default 32 MiB (the API's limit).
    pub max_body_bytes: u64,
    /// Largest accepted body for batch creation. Default 256 MiB (the API's limit).
    pub max_batch_body_bytes: u64,
    /// On SIGTERM, how long in-flight requests and streams may take to finish. Default 30 s.
    pub shutdown_grace_secs: u64,
    /// The URL clients use to reach Rampart (e.g. `https://claude.internal.example`). Batch
    /// `results_url`s are rewritten to it; when unset, they are derived from the request's `Host`.
    pub public_base_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 32 * 1024 * 1024,
            max_batch_body_bytes: 256 * 1024 * 1024,
            shutdown_grace_secs: 30,
            public_base_url: None,
        }
    }
}

/// `[upstream]`: where requests are forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of the Anthropic API (or the simulator). Default `https://api.anthropic.com`.
    pub base_url: String,
    /// File holding the upstream API key (alternative to `RAMPART_UPSTREAM_API_KEY`).
    pub api_key_file: Option<PathBuf>,
    /// With a store and no key from the environment or a file: the name of the stored upstream
    /// credential to use (`rampart upstreams add`). Default: the oldest one.
    pub credential: Option<String>,
    /// TCP (and TLS) connect timeout. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive (time to first byte). Default
    /// 600000 ms (the SDKs' own).
    pub header_timeout_ms: u64,
    /// Longest gap between response body chunks or stream events. Default 600000 ms.
    pub idle_timeout_ms: u64,
    /// Overall deadline of a request, retries and the streamed body included. Default 0 (none).
    pub total_timeout_ms: u64,
    /// Longest cool-down of a rate-limited target. Default 60000 ms.
    pub max_cooldown_ms: u64,
    /// Per-route overrides of the four timeouts (`messages`, `count_tokens`, `models`, `batches`).
    pub timeouts: std::collections::BTreeMap<String, crate::resilience_config::RouteTimeoutsConfig>,
    /// Several upstream targets; when empty, `base_url` is the only one. See
    /// [`crate::resilience_config`].
    pub targets: Vec<crate::resilience_config::TargetConfig>,
    /// Retries, backoff and the retry budget.
    pub retry: crate::resilience_config::RetryConfig,
    /// Circuit breakers (one per target).
    pub breaker: crate::resilience_config::BreakerConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".to_owned(),
            api_key_file: None,
            credential: None,
            connect_timeout_ms: 5_000,
            header_timeout_ms: 600_000,
            idle_timeout_ms: 600_000,
            total_timeout_ms: 0,
            max_cooldown_ms: 60_000,
            timeouts: std::collections::BTreeMap::new(),
            targets: Vec::new(),
            retry: crate::resilience_config::RetryConfig::default(),
            breaker: crate::resilience_config::BreakerConfig::default(),
        }
    }
}

/// `[auth]`: client keys accepted on the data plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// SHA-256 hex digests of accepted keys (hashes are not secrets).
    pub api_key_hashes: Vec<String>,
    /// File with accepted keys, one per line (`#` comments allowed).
    pub api_keys_file: Option<PathBuf>,
    /// How often store keys' `last_used_at` is written (uses are kept in memory in between, and
    /// written at shutdown). Default 15 s.
    pub last_used_flush_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_key_hashes: Vec::new(),
            api_keys_file: None,
            last_used_flush_secs: 15,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive. Default `info`.
    pub level: String,
    /// `json` or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// A parsed upstream base URL.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (usually empty).
    pub path_prefix: String,
}

/// `[admin]`: the admin plane (`/admin/v1`), served when a store is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API at all. Default true.
    pub enabled: bool,
    /// Access-token lifetime. Default 900 s.
    pub access_token_ttl_secs: u64,
    /// Refresh-token lifetime. Default 7 days.
    pub refresh_token_ttl_secs: u64,
    /// Browser origins allowed to call the admin API (exact, e.g. `https://admin.example`).
    /// Default none; `*` is refused.
    pub cors_origins: Vec<String>,
    /// Serve the admin plane on a non-loopback address without TLS (set when a TLS-terminating
    /// proxy is in front). Default false: `rampart serve` refuses.
    pub allow_insecure_remote: bool,
    /// Failed logins allowed per account per window. Default 5.
    pub login_max_failures_per_account: u32,
    /// Failed logins allowed per client address per window. Default 20.
    pub login_max_failures_per_address: u32,
    /// Login-throttle window. Default 900 s.
    pub login_window_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            cors_origins: Vec::new(),
            allow_insecure_remote: false,
            login_max_failures_per_account: 5,
            login_max_failures_per_address: 20,
            login_window_secs: 900,
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bind address.
    pub listen: SocketAddr,
    /// Body limit for messages/count_tokens.
    pub max_body_bytes: usize,
    /// Body limit for batch creation.
    pub max_batch_body_bytes: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Public base URL without a trailing slash, when configured.
    pub public_base_url: Option<String>,
    /// Upstream base.
    pub upstream: UpstreamTarget,
    /// Key sent upstream, from the environment or a file; `None` when it comes from the store.
    pub upstream_api_key: Option<Secret>,
    /// Which stored upstream credential to use when `upstream_api_key` is `None`; `None` for the
    /// oldest.
    pub upstream_credential: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time-to-headers timeout.
    pub header_timeout: Duration,
    /// The upstream pool, retries, breakers and per-route timeouts.
    pub resilience: crate::resilience_config::ResilienceSettings,
    /// Model aliases, fallback chains and the `auto` model.
    pub routing: crate::routing::RoutingSettings,
    /// Accepted client keys.
    pub keys: StaticKeys,
    /// How often store keys' `last_used_at` is written.
    pub last_used_flush: Duration,
    /// Logging.
    pub log: LogConfig,
    /// The admin plane.
    pub admin: AdminConfig,
    /// Model prices (`[pricing]` over the built-in list prices), for the ledger and budgets.
    pub prices: std::sync::Arc<rampart_ledger::pricing::PriceTable>,
    /// The usage ledger (`[ledger]`), in effect with a store.
    pub ledger: rampart_ledger::LedgerConfig,
    /// Where rate-limit and budget state lives (`[limits]`, see [`crate::limits_config`]).
    pub limits: rampart_limits::LimiterConfig,
    /// `[cache]` as configured (the store is built from it at start).
    pub cache: crate::response_cache::CacheConfig,
    /// The response-cache and breakpoint policies.
    pub cache_settings: crate::response_cache::CacheSettings,
    /// Webhooks on batch end (`[webhooks]`), with a store.
    pub webhooks: rampart_webhooks::WebhooksConfig,
    /// Message batches with a store (`[batches]`).
    pub batches: crate::batches::BatchSettings,
}

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file (optional: defaults and env alone are enough).
    pub file: Option<PathBuf>,
    /// Inline TOML (tests, demo), merged after the file.
    pub inline_toml: Option<String>,
    /// Read `RAMPART_*` from the process environment.
    pub use_env: bool,
    /// Overrides applied last (e.g. `--listen`), as `("server.listen", value)`.
    pub overrides: Vec<(String, String)>,
    /// Secrets given programmatically (demo); otherwise read from env/files.
    pub upstream_api_key: Option<Secret>,
    /// Client keys given programmatically (demo).
    pub client_keys: Vec<Secret>,
    /// Virtual keys come from the store too, so configuration may hold none.
    pub store_keys: bool,
    /// The upstream key may come from the store's credentials, so configuration may hold none.
    pub store_credentials: bool,
}

/// Every problem found, one line each.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

const SECTIONS: &[&str] = &[
    "server", "upstream", "auth", "log", "admin", "routing", "pricing", "ledger", "limits",
    "cache", "batches", "webhooks",
];

/// Load, merge and validate configuration; report every problem at once.
///
/// # Errors
/// [`ConfigErrors`] listing each problem (file unreadable, bad types, unknown fields, invalid
/// values, missing secrets).
pub fn load(sources: &Sources) -> Result<Settings, ConfigErrors> {
    let mut problems = Vec::new();
    let mut fig = Figment::new();
    if let Some(path) = &sources.file {
        if path.is_file() {
            // Checked here first so that a file that is not TOML is reported without its text
            // (figment's message would quote the offending line, whatever file it is).
            match std::fs::read_to_string(path) {
                Ok(text) => match toml::from_str::<toml::Table>(&text) {
                    Ok(_) => fig = fig.merge(Toml::file_exact(path)),
                    Err(e) => problems.push(format!(
                        "config file {}: not valid TOML: {}",
                        path.display(),
                        rampart_ledger::toml_text::describe(&e, &text)
                    )),
                },
                Err(e) => problems.push(format!("config file {}: {e}", path.display())),
            }
        } else {
            problems.push(format!(
                "config file {}: not found or not a file",
                path.display()
            ));
        }
    }
    if let Some(inline) = &sources.inline_toml {
        fig = fig.merge(Toml::string(inline));
    }
    if sources.use_env {
        fig = fig.merge(
            Env::prefixed("RAMPART_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
    }
    for (key, value) in &sources.overrides {
        fig = fig.merge(figment::providers::Serialized::default(key, value));
    }

    match fig.extract::<figment::value::Dict>() {
        Ok(top) => {
            for key in top.keys() {
                if !SECTIONS.contains(&key.as_str()) {
                    problems.push(format!(
                        "unknown section `{key}` (expected one of: {})",
                        SECTIONS.join(", ")
                    ));
                }
            }
        }
        Err(e) => problems.extend(describe(e)),
    }

    let server: ServerConfig = section(&fig, "server", &mut problems);
    let upstream: UpstreamConfig = section(&fig, "upstream", &mut problems);
    let auth: AuthConfig = section(&fig, "auth", &mut problems);
    let log: LogConfig = section(&fig, "log", &mut problems);
    let admin: AdminConfig = section(&fig, "admin", &mut problems);
    let pricing: rampart_ledger::pricing::PricingConfig = section(&fig, "pricing", &mut problems);
    let ledger: rampart_ledger::LedgerConfig = section(&fig, "ledger", &mut problems);
    let limits: crate::limits_config::LimitsConfig = section(&fig, "limits", &mut problems);
    let cache: crate::response_cache::CacheConfig = section(&fig, "cache", &mut problems);
    let cache_settings = cache.settings(&mut problems);
    let webhooks: rampart_webhooks::WebhooksConfig = section(&fig, "webhooks", &mut problems);
    problems.extend(webhooks.problems());
    let batches: crate::batches::BatchesConfig = section(&fig, "batches", &mut problems);
    let batches = batches.settings(&mut problems);
    let limits = crate::limits_config::validate(&limits, sources.use_env, &mut problems);
    problems.extend(ledger.problems());
    let prices = rampart_ledger::pricing::PriceTable::from_config(&pricing).unwrap_or_else(|e| {
        problems.extend(e);
        rampart_ledger::pricing::PriceTable::builtin()
    });
    let routing: crate::resilience_config::RoutingConfig = section(&fig, "routing", &mut problems);
    check_admin(&admin, &mut problems);

    let listen = server
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| {
            problems.push(format!(
                "server.listen: `{}` is not an address like 127.0.0.1:8080",
                server.listen
            ));
        })
        .ok();
    let max_body_bytes = to_limit(
        "server.max_body_bytes",
        server.max_body_bytes,
        &mut problems,
    );
    let max_batch_body_bytes = to_limit(
        "server.max_batch_body_bytes",
        server.max_batch_body_bytes,
        &mut problems,
    );
    let upstream_target = parse_base_url(&upstream.base_url, "upstream.base_url", &mut problems);
    let resilience = crate::resilience_config::validate(
        &crate::resilience_config::Inputs {
            base: upstream_target.clone(),
            targets: &upstream.targets,
            timeouts: crate::resilience_config::UpstreamTimeouts {
                connect_ms: upstream.connect_timeout_ms,
                header_ms: upstream.header_timeout_ms,
                idle_ms: upstream.idle_timeout_ms,
                total_ms: upstream.total_timeout_ms,
            },
            route_timeouts: &upstream.timeouts,
            retry: &upstream.retry,
            breaker: &upstream.breaker,
            max_cooldown_ms: upstream.max_cooldown_ms,
            store_credentials: sources.store_credentials,
        },
        &mut problems,
    );
    let routing = crate::resilience_config::validate_routing(&routing, &mut problems);
    // A request that names an alias (or `auto`) is reserved, and estimated when its usage cannot
    // be read, at what it will be served as, not at the unknown-model default.
    let prices = std::sync::Arc::new(prices.with_routing_names(routing.served_as()));
    // The `[upstream]` key is needed unless every target brings its own.
    let needs_default_key = resilience
        .as_ref()
        .is_none_or(crate::resilience_config::ResilienceSettings::needs_default_key);
    let public_base_url =
        server
            .public_base_url
            .as_deref()
            .and_then(|u| match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && uri.query().is_none() =>
                {
                    Some(u.trim_end_matches('/').to_owned())
                }
                _ => {
                    problems.push(format!(
                        "server.public_base_url: `{u}` is not an http(s) URL without a query"
                    ));
                    None
                }
            });
    if upstream.connect_timeout_ms == 0 {
        problems.push("upstream.connect_timeout_ms: must be greater than 0".to_owned());
    }
    if upstream.header_timeout_ms == 0 {
        problems.push("upstream.header_timeout_ms: must be greater than 0".to_owned());
    }
    if auth.last_used_flush_secs == 0 {
        problems.push("auth.last_used_flush_secs: must be greater than 0".to_owned());
    }
    if tracing_filter_invalid(&log.level) {
        problems.push(format!("log.level: `{}` is not a valid filter", log.level));
    }

    let upstream_api_key = match &sources.upstream_api_key {
        Some(k) => Some(k.clone()),
        None => read_upstream_key(
            sources.use_env,
            upstream.api_key_file.as_deref(),
            !sources.store_credentials && needs_default_key,
            &mut problems,
        ),
    };
    if upstream.credential.is_some() && !sources.store_credentials {
        problems.push(
            "upstream.credential: names a stored credential, but no store is configured (--data-dir / RAMPART_DATABASE_URL)"
                .to_owned(),
        );
    }

    let keys = collect_keys(sources, &auth, &mut problems);

    let upstream_target = resilience
        .as_ref()
        .and_then(|r| r.targets.first())
        .map(|t| t.base.clone())
        .or(upstream_target);
    match (listen, upstream_target, resilience, problems.is_empty()) {
        (Some(listen), Some(upstream_target), Some(resilience), true) => Ok(Settings {
            listen,
            max_body_bytes,
            max_batch_body_bytes,
            shutdown_grace: Duration::from_secs(server.shutdown_grace_secs),
            public_base_url,
            upstream: upstream_target,
            upstream_api_key,
            upstream_credential: upstream.credential,
            connect_timeout: Duration::from_millis(upstream.connect_timeout_ms),
            header_timeout: Duration::from_millis(upstream.header_timeout_ms),
            resilience,
            routing,
            keys,
            last_used_flush: Duration::from_secs(auth.last_used_flush_secs),
            log,
            admin,
            prices,
            ledger,
            limits: limits.unwrap_or_default(),
            cache,
            cache_settings,
            webhooks,
            batches,
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

fn check_admin(admin: &AdminConfig, problems: &mut Vec<String>) {
    for origin in &admin.cors_origins {
        let valid = origin.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        });
        if origin.contains('*') {
            problems.push(
                "admin.cors_origins: `*` is not allowed; list each origin (e.g. https://admin.example)"
                    .to_owned(),
            );
        } else if !valid || origin.ends_with('/') {
            problems.push(format!(
                "admin.cors_origins: `{origin}` is not an origin like https://admin.example"
            ));
        }
    }
    if admin.access_token_ttl_secs == 0 || admin.access_token_ttl_secs > 86_400 {
        problems.push("admin.access_token_ttl_secs: must be between 1 and 86400".to_owned());
    }
    if admin.refresh_token_ttl_secs < admin.access_token_ttl_secs {
        problems.push(
            "admin.refresh_token_ttl_secs: must be at least admin.access_token_ttl_secs".to_owned(),
        );
    }
    if admin.login_max_failures_per_account == 0
        || admin.login_max_failures_per_address == 0
        || admin.login_window_secs == 0
    {
        problems.push("admin.login_*: limits and window must be greater than 0".to_owned());
    }
}

/// Most problems reported for one section (each one leaves a value out: see [`section`]).
const MAX_SECTION_PROBLEMS: usize = 100;

/// `[name]` as `T` (its default when absent). Every value that does not fit (unknown field,
/// wrong type, bad variant) is a problem, and is left out, its default taken instead, so that
/// the section's other values are still read and then checked: one mistake does not hide the
/// others. An incomplete table (a required field missing) is left out whole, and a problem says
/// that the rest of it is checked once the others are fixed. When a bad value
/// cannot be left out (a whole array element, a section that is not a table), the section is
/// its default and a problem says that more may follow once those reported are fixed.
fn section<T: Default + for<'de> Deserialize<'de>>(
    fig: &Figment,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    if !fig.contains(name) {
        return T::default();
    }
    let mut error = match fig.extract_inner::<T>(name) {
        Ok(v) => return v,
        Err(e) => e,
    };
    let Ok(mut value) = fig.find_value(name) else {
        problems.extend(describe(error));
        return T::default();
    };
    // Paths (inside the section) of the values left out so far.
    let mut left_out: Vec<Vec<String>> = Vec::new();
    loop {
        // Figment puts the section's name last in the path.
        let mut at = error.path.clone();
        if at.last().is_some_and(|last| last == name) {
            at.pop();
        }
        // A missing field leaves its whole table out; unless the field is one left out here
        // before (reported already, as it was), it is news.
        let (news, whole_table) = match &error.kind {
            figment::error::Kind::MissingField(field) => (
                !left_out
                    .iter()
                    .any(|p| p.split_last() == Some((&field.to_string(), at.as_slice()))),
                true,
            ),
            _ => (true, false),
        };
        let error_metadata = error.metadata.clone();
        if news {
            problems.extend(describe(error));
        }
        if left_out.len() >= MAX_SECTION_PROBLEMS || !remove_at(&mut value, &at) {
            problems.push(format!(
                "[{name}]: any further problems in this section are reported once those above are fixed"
            ));
            return T::default();
        }
        if whole_table {
            problems.push(format!(
                "{}: the rest of this table is checked once the problems above are fixed",
                std::iter::once(name)
                    .chain(at.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".")
            ));
        }
        left_out.push(at);
        match value.deserialize::<T>() {
            Ok(v) => return v,
            Err(e) => {
                // Where the value came from (file or environment), as figment would say.
                let key = std::iter::once(name)
                    .chain(e.path.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".");
                error = e.with_path(name);
                error.metadata = fig.find_metadata(&key).cloned().or(error_metadata);
            }
        }
    }
}

/// Remove the table entry at `path` from `value`; whether there was one. An array element is not
/// removed: the next ones would take its place, and problems about them would name the wrong one.
fn remove_at(value: &mut figment::value::Value, path: &[String]) -> bool {
    use figment::value::Value;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for key in parents {
        let next = match at {
            Value::Dict(_, dict) => dict.get_mut(key),
            Value::Array(_, items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match at {
        Value::Dict(_, dict) => dict.remove(last).is_some(),
        _ => false,
    }
}

fn describe(e: figment::Error) -> Vec<String> {
    e.into_iter()
        .map(|err| {
            // Figment appends the section to the path of a value inside it: put it first.
            let path = match err.path.split_last() {
                Some((section, inner)) => std::iter::once(section)
                    .chain(inner)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("."),
                None => String::new(),
            };
            let source = err
                .metadata
                .as_ref()
                .map(
                    |m| match &err.metadata.as_ref().and_then(|m| m.source.clone()) {
                        Some(src) => format!(" (from {src})"),
                        None => format!(" (from {})", m.name),
                    },
                )
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{source}", err.kind)
            } else {
                format!("{path}: {}{source}", err.kind)
            }
        })
        .collect()
}

fn to_limit(name: &str, v: u64, problems: &mut Vec<String>) -> usize {
    if v == 0 {
        problems.push(format!("{name}: must be greater than 0"));
    }
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn tracing_filter_invalid(level: &str) -> bool {
    level.trim().is_empty()
        || level
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "_=,:-.[]{}\"*".contains(c)))
}

/// Parse an upstream base URL (`field` names it in problems).
pub(crate) fn parse_base_url(
    base: &str,
    field: &str,
    problems: &mut Vec<String>,
) -> Option<UpstreamTarget> {
    let bad = |problems: &mut Vec<String>, why: &str| {
        problems.push(format!("{field}: `{base}` {why}"));
        None
    };
    let Ok(uri) = base.parse::<http::Uri>() else {
        return bad(problems, "is not a URL");
    };
    let Some(scheme) = uri.scheme().cloned() else {
        return bad(problems, "needs a scheme (http:// or https://)");
    };
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return bad(problems, "must use http or https");
    }
    let Some(authority) = uri.authority().cloned() else {
        return bad(problems, "needs a host");
    };
    if authority.as_str().contains('@') {
        return bad(problems, "must not carry credentials");
    }
    if uri.query().is_some() {
        return bad(problems, "must not have a query string");
    }
    Some(UpstreamTarget {
        scheme,
        authority,
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// The upstream key from `file` or the environment; a problem when it is `required` and missing.
fn read_upstream_key(
    use_env: bool,
    file: Option<&Path>,
    required: bool,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim().to_owned())),
            Ok(_) => {
                problems.push(format!(
                    "upstream.api_key_file {}: is empty",
                    path.display()
                ));
                None
            }
            Err(e) => {
                problems.push(format!("upstream.api_key_file {}: {e}", path.display()));
                None
            }
        };
    }
    if use_env
        && let Ok(v) = std::env::var("RAMPART_UPSTREAM_API_KEY")
        && !v.trim().is_empty()
    {
        return Some(Secret::new(v.trim().to_owned()));
    }
    if required {
        problems.push(
            "upstream API key missing: set RAMPART_UPSTREAM_API_KEY or upstream.api_key_file, or use the store (--data-dir / RAMPART_DATABASE_URL) with `rampart upstreams add`"
                .to_owned(),
        );
    }
    None
}

fn collect_keys(sources: &Sources, auth: &AuthConfig, problems: &mut Vec<String>) -> StaticKeys {
    let mut hashes = BTreeSet::new();
    for (i, h) in auth.api_key_hashes.iter().enumerate() {
        match ApiKeyHash::from_hex(h) {
            Some(hash) => {
                hashes.insert(hash);
            }
            None => problems.push(format!(
                "auth.api_key_hashes[{i}]: not a 64-character SHA-256 hex digest"
            )),
        }
    }
    let mut add_key = |key: &str, origin: &str, problems: &mut Vec<String>| {
        let key = key.trim();
        if key.is_empty() || key.starts_with('#') {
            return;
        }
        if key.len() < 16 {
            problems.push(format!(
                "{origin}: a client key is shorter than 16 characters"
            ));
            return;
        }
        hashes.insert(ApiKeyHash::of(key));
    };
    for k in &sources.client_keys {
        add_key(k.expose(), "client key", problems);
    }
    if let Some(path) = &auth.api_keys_file {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                for line in s.lines() {
                    add_key(line, "auth.api_keys_file", problems);
                }
            }
            Err(e) => problems.push(format!("auth.api_keys_file {}: {e}", path.display())),
        }
    }
    if sources.use_env
        && let Ok(v) = std::env::var("RAMPART_API_KEYS")
    {
        for k in v.split(',') {
            add_key(k, "RAMPART_API_KEYS", problems);
        }
    }
    if hashes.is_empty() && !sources.store_keys {
        problems.push(
            "no client API keys: set RAMPART_API_KEYS, auth.api_keys_file or auth.api_key_hashes, or use the store (--data-dir / RAMPART_DATABASE_URL) with `rampart keys create` (deny by default)"
                .to_owned(),
        );
    }
    StaticKeys::new(hashes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sources with an upstream key and a client key given, and `toml`.
    pub(crate) fn sources(toml: &str) -> Sources {
        Sources {
            inline_toml: Some(toml.to_owned()),
            upstream_api_key: Some(Secret::new("sk-up".to_owned())),
            client_keys: vec![Secret::new("rk_test_0123456789abcdef".to_owned())],
            ..Sources::default()
        }
    }

    #[test]
    fn defaults_are_valid_with_secrets_given() {
        let s = load(&sources("")).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(s.upstream.scheme, http::uri::Scheme::HTTPS);
        assert_eq!(s.upstream.authority.as_str(), "api.anthropic.com");
    }

    #[test]
    fn routing_names_are_priced_at_what_they_are_served_as() {
        use rampart_ledger::pricing::Known;
        let s = load(&sources(
            "[routing.aliases]\nfast = \"claude-haiku-4-5\"\nodd = \"claude-unpriced-1\"\n\
             [routing.auto]\nhaiku = \"fast\"\n",
        ))
        .unwrap();
        let p = &s.prices;
        assert_eq!(p.lookup("fast"), p.lookup("claude-haiku-4-5"));
        let (auto, known) = p.lookup("auto");
        assert_eq!(known, Known::Listed);
        let opus = s.routing.auto.as_ref().unwrap().models[2].clone();
        assert_eq!(auto.rates.output, p.lookup(&opus).0.rates.output, "{opus}");
        // An alias of a model with no price stays at the default (and is reported as unknown).
        assert_eq!(p.lookup("odd").1, Known::Default);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let err = load(&Sources {
            inline_toml: Some(
                "[server]\nlisten = \"nope\"\nmax_body_bytes = 0\n[upstream]\nbase_url = \"ftp://x\"\n[bogus]\na = 1\n[log]\nformat = \"xml\"\n"
                    .to_owned(),
            ),
            ..Sources::default()
        })
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "server.listen",
            "server.max_body_bytes",
            "upstream.base_url",
            "unknown section `bogus`",
            "log.format",
            "upstream API key missing",
            "no client API keys",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn a_bad_field_does_not_hide_the_other_problems_of_its_section() {
        let err = load(&sources(
            "[ledger]\nfsync = \"sometimes\"\nretention_days = -5\nbatch_max = 0\n\
             [pricing]\nbatch_discount_percent = 120\n\
             [pricing.models.\"a\"]\ninput = -1\noutput = 1\ncache_reed = 1\n\
             [pricing.models.\"b\"]\ninput = \"x\"\n\
             [pricing.models.\"\"]\ninput = 1\noutput = 1\n",
        ))
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "ledger.fsync: unknown variant",
            "ledger.retention_days",
            "ledger.batch_max",
            "pricing.models.a.cache_reed: unknown field",
            "pricing.models.b.input: invalid type",
            "pricing.models.b: the rest of this table is checked once",
            "pricing.batch_discount_percent",
            "pricing.models.\"a\".input",
            "a model id is empty",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // `b`'s input, left out for its type, is not reported missing as well.
        assert!(!text.contains("missing field"), "{text}");
        assert_eq!(err.0.len(), 9, "{text}");
    }

    #[test]
    fn a_bad_array_element_says_more_may_follow() {
        let err = load(&sources(
            "[[upstream.targets]]\nname = \"x\"\nbase_url = 5\n",
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("upstream.targets.0.base_url"), "{text}");
        assert!(
            text.contains("[upstream]: any further problems in this section are reported once"),
            "{text}"
        );
    }

    #[test]
    fn a_config_file_that_is_not_toml_is_not_shown() {
        let dir = std::env::temp_dir().join(format!("rampart-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shadow");
        std::fs::write(&path, "root:$6$c2FsdA$aGFzaA:19000:0:99999:7:::\n").unwrap();
        let err = load(&Sources {
            file: Some(path.clone()),
            ..sources("")
        })
        .unwrap_err()
        .to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(
            err.contains(&format!(
                "config file {}: not valid TOML: line 1, column 5",
                path.display()
            )),
            "{err}"
        );
        for shown in ["root", "$6$", "c2FsdA", "19000"] {
            assert!(!err.contains(shown), "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let err = load(&sources("[server]\nlisen = \"127.0.0.1:1\"\n")).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn upstream_path_prefix_is_kept_without_trailing_slash() {
        let s = load(&sources(
            "[upstream]\nbase_url = \"http://127.0.0.1:9/proxy/\"\n",
        ))
        .unwrap();
        assert_eq!(s.upstream.path_prefix, "/proxy");
        assert_eq!(s.upstream.scheme, http::uri::Scheme::HTTP);
    }

    #[test]
    fn overrides_win_over_files() {
        let mut src = sources("[server]\nlisten = \"127.0.0.1:1\"\n");
        src.overrides
            .push(("server.listen".to_owned(), "127.0.0.1:0".to_owned()));
        assert_eq!(load(&src).unwrap().listen.port(), 0);
    }

    #[test]
    fn with_a_store_the_upstream_key_may_come_from_it() {
        let stored = |toml: &str, store: bool| {
            load(&Sources {
                inline_toml: Some(toml.to_owned()),
                store_keys: store,
                store_credentials: store,
                ..Sources::default()
            })
        };
        let s = stored("[upstream]\ncredential = \"primary\"\n", true).unwrap();
        assert!(s.upstream_api_key.is_none());
        assert_eq!(s.upstream_credential.as_deref(), Some("primary"));
        assert!(stored("", true).unwrap().upstream_credential.is_none());
        let err = stored("[upstream]\ncredential = \"primary\"\n", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstream.credential") && err.contains("upstream API key missing"),
            "{err}"
        );
    }

    #[test]
    fn short_client_keys_are_refused() {
        let mut src = sources("");
        src.client_keys = vec![Secret::new("short".to_owned())];
        assert!(
            load(&src)
                .unwrap_err()
                .to_string()
                .contains("shorter than 16")
        );
    }
}
