//! One classification of every upstream outcome.
//!
//! [`classify`] is the only place that looks at what an upstream attempt produced — a status
//! line, a transport failure, a timeout, or an in-band `event: error` at the head of a stream —
//! and turns it into an [`Outcome`]. Retries, circuit breakers, cool-downs and fallbacks consume
//! the [`Class`] (through [`Class::retryable`], [`Class::breaker_failure`], [`Class::cools_target`]
//! and [`Class::falls_back`]); none of them matches a raw status code.
//!
//! | what happened | class | retried | breaker | cool-down | fallback |
//! |---|---|---|---|---|---|
//! | 2xx (and anything not 4xx/5xx) | `success` | – | success | – | – |
//! | 429, in-band `rate_limit_error` | `rate_limited` | yes | – | until `retry-after` / reset | – |
//! | 529, in-band `overloaded_error` | `overloaded` | yes | failure | – | yes |
//! | 500, 502, 503, 504, other 5xx, in-band `api_error` / `timeout_error` | `server_error` | yes | failure | – | – |
//! | no connection (refused, DNS, TLS) | `connect_failed` | yes | failure | – | – |
//! | no connection within the connect timeout | `connect_timeout` | yes | failure | – | – |
//! | connection reset or closed before the response | `reset` | yes | failure | – | – |
//! | no response headers within the first-byte timeout | `first_byte_timeout` | yes | failure | – | – |
//! | no stream event within the idle timeout | `idle_timeout` | yes | failure | – | – |
//! | other 4xx, other in-band errors | `client_error` | never | success | – | – |
//!
//! "Retried" means: before the first byte reaches the client, within the attempt limit, the
//! deadline and the retry budget (see [`crate::exchange`]).

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// What kind of outcome an upstream attempt had. See the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The target answered (2xx, or any status that is neither 4xx nor 5xx).
    Success,
    /// 4xx other than 429, or an in-band error of a client-error type: never retried.
    ClientError,
    /// 429.
    RateLimited,
    /// 529 or an in-band `overloaded_error`.
    Overloaded,
    /// Other 5xx, or an in-band `api_error`.
    ServerError,
    /// No connection could be made (refused, unreachable, DNS, TLS).
    ConnectFailed,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The connection broke after the request was written, before a response.
    Reset,
    /// No response headers within the first-byte timeout.
    FirstByteTimeout,
    /// Response headers came, but no stream event within the idle timeout.
    IdleTimeout,
}

impl Class {
    /// Every class, for metric tables and tests.
    pub const ALL: [Self; 10] = [
        Self::Success,
        Self::ClientError,
        Self::RateLimited,
        Self::Overloaded,
        Self::ServerError,
        Self::ConnectFailed,
        Self::ConnectTimeout,
        Self::Reset,
        Self::FirstByteTimeout,
        Self::IdleTimeout,
    ];

    /// Whether another attempt may help.
    #[must_use]
    pub const fn retryable(self) -> bool {
        !matches!(self, Self::Success | Self::ClientError)
    }

    /// Whether the request was written to the upstream and no answer came: the connection broke
    /// after it, or no headers (or no first stream event) arrived in time. The upstream may have
    /// done the work, and billed it.
    #[must_use]
    pub const fn unanswered(self) -> bool {
        matches!(
            self,
            Self::Reset | Self::FirstByteTimeout | Self::IdleTimeout
        )
    }

    /// Whether the target's circuit breaker counts this as a failure (a rate limit is the
    /// target working as designed; a client error is the request's fault).
    #[must_use]
    pub const fn breaker_failure(self) -> bool {
        !matches!(self, Self::Success | Self::ClientError | Self::RateLimited)
    }

    /// Whether the target cools down (is avoided until its rate limit resets).
    #[must_use]
    pub const fn cools_target(self) -> bool {
        matches!(self, Self::RateLimited)
    }

    /// Whether the request moves on to the next model of its fallback chain at once.
    #[must_use]
    pub const fn falls_back(self) -> bool {
        matches!(self, Self::Overloaded)
    }

    /// The metric label and log name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::ServerError => "server_error",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::Reset => "reset",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

/// A classified outcome: the class and the upstream's own wait hint, when it gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The class.
    pub class: Class,
    /// `retry-after-ms` / `retry-after` of the response, when present and positive.
    pub retry_after: Option<Duration>,
}

/// A transport failure, as the HTTP client reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// Connecting failed.
    Connect,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The connection failed after connecting (reset, closed, malformed response).
    Broken,
}

/// What an upstream attempt produced, for [`classify`].
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// A response status line and its headers.
    Response(StatusCode, &'a HeaderMap),
    /// The stream's first event was `event: error` with this `error.type`.
    InBandError(&'a str),
    /// The HTTP client failed.
    Transport(TransportFailure),
    /// No response headers in time.
    FirstByteTimeout,
    /// No stream event in time after the headers.
    IdleTimeout,
}

/// The one classification of upstream outcomes. See the module docs.
#[must_use]
pub fn classify(observed: Observed<'_>) -> Outcome {
    let (class, retry_after) = match observed {
        Observed::Response(status, headers) => {
            let class = match status.as_u16() {
                429 => Class::RateLimited,
                529 => Class::Overloaded,
                400..=499 => Class::ClientError,
                500..=599 => Class::ServerError,
                _ => Class::Success,
            };
            let hint = if class.retryable() {
                retry_after(headers)
            } else {
                None
            };
            (class, hint)
        }
        Observed::InBandError(kind) => (
            match kind {
                "overloaded_error" => Class::Overloaded,
                "rate_limit_error" => Class::RateLimited,
                "api_error" | "timeout_error" => Class::ServerError,
                _ => Class::ClientError,
            },
            None,
        ),
        Observed::Transport(TransportFailure::Connect) => (Class::ConnectFailed, None),
        Observed::Transport(TransportFailure::ConnectTimeout) => (Class::ConnectTimeout, None),
        Observed::Transport(TransportFailure::Broken) => (Class::Reset, None),
        Observed::FirstByteTimeout => (Class::FirstByteTimeout, None),
        Observed::IdleTimeout => (Class::IdleTimeout, None),
    };
    Outcome { class, retry_after }
}

/// The upstream's wait hint, as the official SDKs read it: `retry-after-ms` (milliseconds,
/// fractional allowed), then `retry-after` as seconds (fractional allowed) or an HTTP date. Zero,
/// negative, unparseable or absurd (over a day) values are ignored.
#[must_use]
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    const MAX: f64 = 86_400.0;
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms > 0.0
        && ms / 1000.0 <= MAX
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs > 0.0 && secs <= MAX).then(|| Duration::from_secs_f64(secs));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (date - time::OffsetDateTime::now_utc()).as_seconds_f64();
    (secs > 0.0 && secs <= MAX).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn status(code: u16, headers: &[(&'static str, &'static str)]) -> Outcome {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_static(v));
        }
        classify(Observed::Response(StatusCode::from_u16(code).unwrap(), &h))
    }

    #[test]
    fn statuses_classify_by_family_with_429_and_529_apart() {
        for (code, class) in [
            (200, Class::Success),
            (201, Class::Success),
            (304, Class::Success),
            (400, Class::ClientError),
            (401, Class::ClientError),
            (404, Class::ClientError),
            (408, Class::ClientError),
            (413, Class::ClientError),
            (429, Class::RateLimited),
            (500, Class::ServerError),
            (502, Class::ServerError),
            (503, Class::ServerError),
            (504, Class::ServerError),
            (529, Class::Overloaded),
            (599, Class::ServerError),
        ] {
            assert_eq!(status(code, &[]).class, class, "{code}");
        }
    }

    #[test]
    fn client_errors_are_never_retried_and_do_not_trip_breakers() {
        let c = status(400, &[("retry-after", "3")]);
        assert!(!c.class.retryable() && !c.class.breaker_failure());
        assert_eq!(
            c.retry_after, None,
            "a hint on a non-retryable answer is ignored"
        );
        assert!(!Class::Success.retryable());
    }

    #[test]
    fn rate_limits_cool_the_target_without_counting_as_a_breaker_failure() {
        let c = status(429, &[("retry-after", "7")]);
        assert!(c.class.retryable() && c.class.cools_target() && !c.class.breaker_failure());
        assert_eq!(c.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn overload_falls_back_and_counts_against_the_breaker() {
        let c = status(529, &[]);
        assert!(c.class.falls_back() && c.class.breaker_failure() && c.class.retryable());
        assert!(!Class::ServerError.falls_back());
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after_and_bad_values_are_ignored() {
        let c = status(529, &[("retry-after-ms", "250.5"), ("retry-after", "9")]);
        assert_eq!(c.retry_after, Some(Duration::from_micros(250_500)));
        assert_eq!(
            status(503, &[("retry-after", "1.5")]).retry_after,
            Some(Duration::from_millis(1500))
        );
        for bad in ["0", "-1", "soon", "1e9"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(bad).unwrap());
            assert_eq!(retry_after(&h), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
        let text = at
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_str(&text).unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(27) && got <= Duration::from_secs(30),
            "{got:?}"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None, "a date in the past is no wait");
    }

    #[test]
    fn in_band_errors_classify_by_their_type() {
        let c = |t| classify(Observed::InBandError(t)).class;
        assert_eq!(c("overloaded_error"), Class::Overloaded);
        assert_eq!(c("api_error"), Class::ServerError);
        assert_eq!(c("rate_limit_error"), Class::RateLimited);
        assert_eq!(c("invalid_request_error"), Class::ClientError);
    }

    #[test]
    fn transport_failures_and_timeouts_are_retryable_breaker_failures() {
        for o in [
            Observed::Transport(TransportFailure::Connect),
            Observed::Transport(TransportFailure::ConnectTimeout),
            Observed::Transport(TransportFailure::Broken),
            Observed::FirstByteTimeout,
            Observed::IdleTimeout,
        ] {
            let c = classify(o).class;
            assert!(
                c.retryable() && c.breaker_failure() && !c.falls_back(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Class::ALL {
            assert!(seen.insert(c.as_str()));
        }
    }
}
