//! `[limits]`: where rate-limit and budget state lives and what happens when it cannot be
//! reached. The limits themselves are data in the store (per key and team, `rampart keys create
//! --rpm …`, the admin API), not configuration.
//!
//! ```toml
//! [limits]
//! backend = "redis"                 # or "in-process" (default: one instance)
//! redis_url = "redis://10.0.0.5:6379/0"   # no password here: RAMPART_REDIS_URL or redis_url_file
//! redis_prefix = "rampart"          # key prefix (several deployments may share one Redis)
//! redis_timeout_ms = 1000           # per call: connect and reply
//! on_redis_failure = "closed"       # "closed" (503) or "open" (requests pass unlimited)
//! lease_secs = 900                  # how long a crashed instance's reservations are held
//! ```

use std::path::PathBuf;
use std::time::Duration;

use rampart_limits::{Backend, FailureMode, LimiterConfig};
use serde::Deserialize;

/// The shortest `lease_secs` accepted.
const MIN_LEASE_SECS: u64 = 10;

/// `[limits]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `in-process` (default) or `redis`.
    pub backend: String,
    /// The Redis URL when it holds no password (else `RAMPART_REDIS_URL` or `redis_url_file`).
    pub redis_url: Option<String>,
    /// A file holding the Redis URL (may hold a password).
    pub redis_url_file: Option<PathBuf>,
    /// Key prefix in Redis. Default `rampart`.
    pub redis_prefix: String,
    /// Per-call timeout. Default 1000 ms (a loaded Redis or host must not turn into 503s).
    pub redis_timeout_ms: u64,
    /// `closed` (default: 503 while Redis is unreachable) or `open` (unlimited meanwhile).
    pub on_redis_failure: String,
    /// Lease of a reservation in Redis: how long a crashed instance's reservations are held
    /// (a live instance renews its requests' leases, so they may run longer). Default 900 s.
    pub lease_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: "in-process".to_owned(),
            redis_url: None,
            redis_url_file: None,
            redis_prefix: "rampart".to_owned(),
            redis_timeout_ms: 1_000,
            on_redis_failure: "closed".to_owned(),
            lease_secs: 900,
        }
    }
}

/// Whether a Redis URL carries a password (`redis://user:pass@host` or `redis://:pass@host`).
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The limiter configuration, or `None` after recording problems. With `use_env`, the Redis URL
/// may come from `RAMPART_REDIS_URL`.
pub fn validate(
    c: &LimitsConfig,
    use_env: bool,
    problems: &mut Vec<String>,
) -> Option<LimiterConfig> {
    let before = problems.len();
    let on_failure = match c.on_redis_failure.as_str() {
        "closed" => FailureMode::Closed,
        "open" => FailureMode::Open,
        other => {
            problems.push(format!(
                "limits.on_redis_failure: `{other}` is not `closed` or `open`"
            ));
            FailureMode::Closed
        }
    };
    if c.redis_timeout_ms == 0 {
        problems.push("limits.redis_timeout_ms: must be greater than 0".to_owned());
    }
    // A live request's leases are renewed every third of a lease by the loop that also pings
    // Redis: a third must hold a ping and a renewal that each take up to the timeout.
    let least = (6 * c.redis_timeout_ms).div_ceil(1_000).max(MIN_LEASE_SECS);
    if c.lease_secs < least {
        problems.push(format!(
            "limits.lease_secs: must be at least {least} (at least {MIN_LEASE_SECS}, and six \
             times redis_timeout_ms: live requests' leases are renewed every third of it)"
        ));
    }
    if c.redis_url.as_deref().is_some_and(has_password) {
        problems.push(
            "limits.redis_url: holds a password; put the URL in RAMPART_REDIS_URL or limits.redis_url_file instead"
                .to_owned(),
        );
    }
    let backend = match c.backend.as_str() {
        "in-process" => Backend::InProcess,
        "redis" => {
            let from_env = use_env
                .then(|| std::env::var("RAMPART_REDIS_URL").ok())
                .flatten()
                .filter(|u| !u.trim().is_empty());
            let from_file = c.redis_url_file.as_ref().and_then(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        problems.push(format!("limits.redis_url_file {}: {e}", p.display()));
                    })
                    .ok()
                    .map(|s| s.trim().to_owned())
            });
            match from_env.or(from_file).or_else(|| c.redis_url.clone()) {
                Some(url) => Backend::Redis {
                    url: url.trim().to_owned(),
                    prefix: c.redis_prefix.clone(),
                    timeout: Duration::from_millis(c.redis_timeout_ms),
                },
                None => {
                    problems.push(
                        "limits.backend = \"redis\" needs a URL: RAMPART_REDIS_URL, limits.redis_url_file or limits.redis_url"
                            .to_owned(),
                    );
                    Backend::InProcess
                }
            }
        }
        other => {
            problems.push(format!(
                "limits.backend: `{other}` is not `in-process` or `redis`"
            ));
            Backend::InProcess
        }
    };
    (problems.len() == before).then(|| LimiterConfig {
        backend,
        on_failure,
        lease: Duration::from_secs(c.lease_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_the_configured_url_are_refused() {
        assert!(has_password("redis://:secret@host:6379/0"));
        assert!(has_password("redis://user:secret@host"));
        assert!(!has_password("redis://host:6379"));
        assert!(!has_password("redis://user@host"));
        let mut problems = Vec::new();
        let c = LimitsConfig {
            backend: "redis".into(),
            redis_url: Some("redis://:hunter2@h:1".into()),
            ..LimitsConfig::default()
        };
        assert!(validate(&c, false, &mut problems).is_none());
        assert!(problems[0].contains("RAMPART_REDIS_URL"));
        assert!(!problems.iter().any(|p| p.contains("hunter2")));
    }

    #[test]
    fn every_problem_is_reported() {
        let mut problems = Vec::new();
        let c = LimitsConfig {
            backend: "memcached".into(),
            on_redis_failure: "maybe".into(),
            redis_timeout_ms: 0,
            lease_secs: 0,
            ..LimitsConfig::default()
        };
        assert!(validate(&c, false, &mut problems).is_none());
        assert_eq!(problems.len(), 4, "{problems:?}");
        // A lease must outlast a third of itself spent on a slow ping and a slow renewal.
        for (lease_secs, redis_timeout_ms, ok) in [
            (9, 1_000, false),
            (10, 1_000, true),
            (30, 5_001, false),
            (31, 5_001, true),
        ] {
            let mut problems = Vec::new();
            let c = LimitsConfig {
                lease_secs,
                redis_timeout_ms,
                ..LimitsConfig::default()
            };
            let _ = validate(&c, false, &mut problems);
            assert_eq!(
                problems.is_empty(),
                ok,
                "{lease_secs} {redis_timeout_ms}: {problems:?}"
            );
        }
        let mut problems = Vec::new();
        let redis_without_url = LimitsConfig {
            backend: "redis".into(),
            ..LimitsConfig::default()
        };
        assert!(validate(&redis_without_url, false, &mut problems).is_none());
        let ok = validate(&LimitsConfig::default(), false, &mut Vec::new()).unwrap();
        assert!(matches!(ok.backend, Backend::InProcess));
        assert_eq!(ok.on_failure, FailureMode::Closed);
    }
}
