//! The retry policy of the official SDKs, to the letter:
//!
//! * up to `max_retries` retries (default 2, so 3 attempts);
//! * `x-should-retry: true` / `false` on a response decides first; otherwise 408, 409, 429 and every
//!   5xx (529 included) are retried, other statuses are not; connection errors and timeouts are
//!   retried; an error inside a stream that has started is never retried;
//! * the wait is what the server asks for — `retry-after-ms` (milliseconds, fractions allowed),
//!   else `retry-after` as seconds (fractions allowed) or as an HTTP date — when that is a
//!   positive value one timer can hold (under 2³¹ ms, about 24.8 days); otherwise
//!   `min(0.5 s × 2ⁿ, 8 s) × (1 − 0.25 × random)`, where n is the number of retries already taken.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::error::header_str;

/// Retries after the first attempt, by default.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// The first backoff delay (before jitter).
pub const INITIAL_RETRY_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff delay (before jitter).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// The longest server-requested wait that is honoured: what one JavaScript timer can hold, the
/// TypeScript SDK's limit. Longer (or unparseable, zero, negative, past) values fall back to the
/// backoff formula.
const MAX_SERVER_DELAY: Duration = Duration::from_millis((1 << 31) - 1);

/// Backoff settings: the SDKs' constants unless changed on the client builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Cap on the doubled delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: INITIAL_RETRY_DELAY,
            max: MAX_RETRY_DELAY,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retries_taken + 1` with no server hint:
    /// `min(initial × 2^retries_taken, max) × (1 − 0.25 × jitter)`, `jitter` in `[0, 1)`.
    #[must_use]
    pub fn delay(&self, retries_taken: u32, jitter: f64) -> Duration {
        let doubled = self
            .initial
            .saturating_mul(2u32.saturating_pow(retries_taken.min(31)));
        let base = doubled.min(self.max);
        base.mul_f64((1.0 - 0.25 * jitter.clamp(0.0, 1.0)).max(0.0))
    }
}

/// Whether a response with `status` and `headers` should be retried (retries permitting).
#[must_use]
pub fn should_retry(status: StatusCode, headers: &HeaderMap) -> bool {
    match header_str(headers, "x-should-retry") {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// The wait a response asks for, when it asks for a usable one (see the module docs).
#[must_use]
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let usable = |secs: f64| {
        (secs.is_finite() && secs > 0.0)
            .then(|| Duration::try_from_secs_f64(secs).ok())
            .flatten()
            .filter(|d| *d <= MAX_SERVER_DELAY)
    };
    if let Some(ms) =
        header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
    {
        return usable(ms / 1000.0);
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return usable(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now)
        .ok()
        .and_then(|d| usable(d.as_secs_f64()))
}

/// The wait before the next attempt: the server's request if usable, else the backoff formula
/// with fresh jitter.
pub(crate) fn next_delay(
    backoff: &Backoff,
    retries_taken: u32,
    headers: Option<&HeaderMap>,
) -> Duration {
    headers
        .and_then(|h| server_delay(h, SystemTime::now()))
        .unwrap_or_else(|| backoff.delay(retries_taken, rand::random::<f64>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_eight_with_up_to_a_quarter_off() {
        let b = Backoff::default();
        let full: Vec<f64> = (0..7).map(|n| b.delay(n, 0.0).as_secs_f64()).collect();
        assert_eq!(full, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
        let most_jitter: Vec<f64> = (0..5)
            .map(|n| b.delay(n, 0.999_999).as_secs_f64())
            .collect();
        for (got, want) in most_jitter.iter().zip([0.375, 0.75, 1.5, 3.0, 6.0]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(8));
    }

    #[test]
    fn the_servers_header_decides_before_the_status() {
        let retry = [408, 409, 429, 500, 502, 503, 504, 529];
        let final_ = [400, 401, 403, 404, 413, 422];
        for s in retry {
            assert!(
                should_retry(StatusCode::from_u16(s).unwrap(), &HeaderMap::new()),
                "{s}"
            );
            assert!(
                !should_retry(
                    StatusCode::from_u16(s).unwrap(),
                    &h(&[("x-should-retry", "false")])
                ),
                "{s}"
            );
        }
        for s in final_ {
            assert!(
                !should_retry(StatusCode::from_u16(s).unwrap(), &HeaderMap::new()),
                "{s}"
            );
            assert!(
                should_retry(
                    StatusCode::from_u16(s).unwrap(),
                    &h(&[("x-should-retry", "true")])
                ),
                "{s}"
            );
        }
        // Only the exact values count.
        assert!(should_retry(
            StatusCode::from_u16(529).unwrap(),
            &h(&[("x-should-retry", "False")])
        ));
    }

    #[test]
    fn retry_after_ms_then_seconds_then_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = |pairs: &[(&'static str, &str)]| server_delay(&h(pairs), now);
        assert_eq!(
            d(&[("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            d(&[("retry-after-ms", "1.5"), ("retry-after", "9")]),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(d(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            d(&[("retry-after", "0.25")]),
            Some(Duration::from_millis(250))
        );
        let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            d(&[("retry-after", &in_30s)]),
            Some(Duration::from_secs(30))
        );
        // Unusable values fall back to the formula.
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        for bad in ["0", "-1", "soon", "NaN", "inf", &past] {
            assert_eq!(d(&[("retry-after", bad)]), None, "{bad}");
        }
        assert_eq!(d(&[("retry-after-ms", "0"), ("retry-after", "5")]), None);
        assert_eq!(d(&[("retry-after", "3000000")]), None, "over 2^31 ms");
        assert_eq!(
            d(&[("retry-after", "86400")]),
            Some(Duration::from_secs(86400)),
            "no 60 s cap"
        );
        assert_eq!(d(&[]), None);
    }

    #[test]
    fn next_delay_prefers_the_server_and_otherwise_stays_in_the_jitter_band() {
        let b = Backoff::default();
        assert_eq!(
            next_delay(&b, 0, Some(&h(&[("retry-after", "3")]))),
            Duration::from_secs(3)
        );
        for n in 0..4 {
            let d = next_delay(&b, n, None).as_secs_f64();
            let top = b.delay(n, 0.0).as_secs_f64();
            assert!(d <= top && d >= top * 0.75, "retry {n}: {d}");
        }
    }
}
