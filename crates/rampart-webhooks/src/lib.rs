//! Webhooks on batch end: a team may register one HTTPS URL; when one of its message batches
//! ends, Rampart POSTs `{"type":"message_batch.ended","batch":{…the batch object…}}` to it,
//! signed with the team's secret (see [`rampart_crypto::webhook`]), and retries failures with
//! exponential backoff and jitter, recording every attempt in the store.
//!
//! - [`WebhooksConfig`]: `[webhooks]` in the configuration.
//! - [`UrlPolicy`]: which URLs and addresses may be targets (HTTPS only; no loopback, private or
//!   link-local addresses unless configured), checked when a webhook is set and again, against
//!   every resolved address, when it is called.
//! - [`backoff`]: the wait before the next attempt.
//! - [`Dispatcher`]: the background task of `rampart serve`; it counts attempts in
//!   `rampart_webhook_attempts_total{outcome}` (`delivered`, `failed` = retried later, `gave_up`).

mod dispatch;
mod policy;

use std::time::Duration;

use serde::Deserialize;

pub use dispatch::{Dispatcher, batch_object, event_body};
pub use policy::{UrlPolicy, check_ip};

/// The headers of a delivery.
pub mod headers {
    /// A stable id of the event (the same on every attempt): `evt_<batch id>`.
    pub const ID: &str = "rampart-webhook-id";
    /// Unix seconds when the attempt was signed.
    pub const TIMESTAMP: &str = "rampart-webhook-timestamp";
    /// `v1=<hex HMAC-SHA256 over "{timestamp}.{body}">`.
    pub const SIGNATURE: &str = "rampart-webhook-signature";
    /// 1 for the first attempt.
    pub const ATTEMPT: &str = "rampart-webhook-attempt";
}

/// `[webhooks]`: webhooks on batch end (with a store).
///
/// ```toml
/// [webhooks]
/// enabled = true                 # run the dispatcher in `rampart serve`
/// poll_interval_ms = 1000        # how often ended batches are looked for
/// max_attempts = 8               # then the delivery is given up (every attempt is recorded)
/// initial_backoff_ms = 5000      # wait after the first failure; doubles, with jitter
/// max_backoff_ms = 3600000
/// timeout_ms = 10000             # per attempt: connect, send, answer
/// allow_http_loopback = false    # http:// to 127.0.0.1 / ::1 / localhost (tests, local receivers)
/// allow_private_networks = false # targets on private, loopback and link-local addresses
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Run the dispatcher. Default true.
    pub enabled: bool,
    /// How often ended batches are looked for. Default 1000 ms.
    pub poll_interval_ms: u64,
    /// Attempts per delivery before it is given up. Default 8.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each, with jitter. Default 5 s.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts. Default 1 h.
    pub max_backoff_ms: u64,
    /// Per attempt. Default 10 s.
    pub timeout_ms: u64,
    /// Allow `http://` URLs whose host is a loopback address or `localhost`. Default false.
    pub allow_http_loopback: bool,
    /// Allow targets on private, loopback, link-local and other non-public addresses.
    /// Default false (server-side request forgery).
    pub allow_private_networks: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_ms: 1000,
            max_attempts: 8,
            initial_backoff_ms: 5000,
            max_backoff_ms: 3_600_000,
            timeout_ms: 10_000,
            allow_http_loopback: false,
            allow_private_networks: false,
        }
    }
}

impl WebhooksConfig {
    /// Every problem with these values, each naming its field.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.poll_interval_ms == 0 {
            p.push("webhooks.poll_interval_ms: must be at least 1".to_owned());
        }
        if !(1..=100).contains(&self.max_attempts) {
            p.push("webhooks.max_attempts: must be between 1 and 100".to_owned());
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms {
            p.push(
                "webhooks.initial_backoff_ms: must be at least 1 and at most max_backoff_ms"
                    .to_owned(),
            );
        }
        if !(1..=300_000).contains(&self.timeout_ms) {
            p.push("webhooks.timeout_ms: must be between 1 and 300000".to_owned());
        }
        p
    }

    /// The URL policy these settings make.
    #[must_use]
    pub fn policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_http_loopback: self.allow_http_loopback,
            allow_private_networks: self.allow_private_networks,
        }
    }
}

/// The wait after failed attempt number `attempt` (1-based): `initial × 2^(attempt-1)` capped at
/// `max`, of which the upper half is random ("equal jitter": never less than half the step, so
/// retries spread out but still back off). `unit` is a random number in `[0, 1)`.
#[must_use]
pub fn backoff(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let step = initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(5), s(3600), 0.0), Duration::from_millis(2500));
        assert_eq!(backoff(1, s(5), s(3600), 1.0), s(5));
        assert_eq!(backoff(2, s(5), s(3600), 0.0), s(5));
        assert_eq!(backoff(3, s(5), s(3600), 0.5), s(15));
        for attempt in 1..=40 {
            for unit in [0.0, 0.3, 0.999] {
                let d = backoff(attempt, s(5), s(3600), unit);
                assert!(d <= s(3600), "{attempt} {unit} {d:?}");
                assert!(d >= s(5).min(s(3600)) / 2);
            }
        }
        assert_eq!(backoff(40, s(5), s(3600), 0.0), s(1800));
        // Monotone in the attempt at a fixed jitter.
        let waits: Vec<_> = (1..12).map(|a| backoff(a, s(1), s(600), 0.5)).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    }

    #[test]
    fn config_problems_name_their_field() {
        assert!(WebhooksConfig::default().problems().is_empty());
        let bad = WebhooksConfig {
            max_attempts: 0,
            initial_backoff_ms: 10,
            max_backoff_ms: 5,
            ..WebhooksConfig::default()
        };
        let p = bad.problems();
        assert!(p.iter().any(|x| x.starts_with("webhooks.max_attempts")));
        assert!(
            p.iter()
                .any(|x| x.starts_with("webhooks.initial_backoff_ms"))
        );
    }
}
