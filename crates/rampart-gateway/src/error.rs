//! Proxy-plane errors and their one mapping to HTTP: Anthropic's error envelope.
//!
//! Every error Rampart itself produces on `/v1/*` goes through [`ProxyError::into_response_with`].
//! Messages are written for the client; internal detail (socket errors, paths) goes to the log only.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use rampart_api::{ErrorEnvelope, ErrorType};

/// Something Rampart refuses or fails to do, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No credential header.
    #[error("x-api-key header is required")]
    MissingKey,
    /// Credential not accepted.
    #[error("invalid x-api-key")]
    InvalidKey,
    /// Body is not valid JSON.
    #[error("invalid request: malformed JSON body: {0}")]
    MalformedJson(String),
    /// Body is not UTF-8.
    #[error("invalid request: body is not valid UTF-8")]
    InvalidUtf8,
    /// Body is JSON of the wrong shape for what Rampart must check.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Body is JSON but not an object.
    #[error("invalid request: body must be a JSON object")]
    NotAnObject,
    /// Body larger than the configured limit.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The client's body could not be read (aborted upload).
    #[error("invalid request: the request body could not be read")]
    BodyRead,
    /// No such route.
    #[error("Not found")]
    NotFound,
    /// Route exists, method does not.
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The key may not call this endpoint or use this model.
    #[error("{0}")]
    Forbidden(String),
    /// Could not connect to the upstream.
    #[error("upstream unreachable: Rampart could not connect to the Anthropic API")]
    UpstreamUnreachable,
    /// The upstream did not send headers in time.
    #[error("upstream timeout: the Anthropic API did not respond within {0} ms")]
    UpstreamTimeout(u128),
    /// The upstream connection failed after connecting.
    #[error("upstream error: the connection to the Anthropic API failed")]
    UpstreamFailed,
    /// No connection to the upstream within the connect timeout.
    #[error("upstream connect timeout: no connection to the Anthropic API within {0} ms")]
    UpstreamConnectTimeout(u128),
    /// The upstream's stream sent no event within the idle timeout, before anything was sent on.
    #[error("upstream idle timeout: the Anthropic API sent nothing for {0} ms")]
    StreamIdleTimeout(u128),
    /// The route's overall deadline passed.
    #[error("request deadline: no complete upstream response within the overall limit of {0} ms")]
    DeadlineExceeded(u128),
    /// The client's own timeout (`x-stainless-timeout`) passed; Rampart stopped working on it.
    #[error("client timeout: the x-stainless-timeout of {0} ms passed before an upstream response")]
    ClientTimeout(u128),
    /// Every upstream target that serves the model has an open circuit breaker.
    #[error(
        "no upstream available for {model}: the circuit breaker of every upstream target serving it is open"
    )]
    NoUpstreamAvailable {
        /// The model (or route) asked for.
        model: String,
        /// When a breaker will let a probe through (sent as `retry-after`).
        retry_after_secs: u64,
    },
    /// No upstream target serves the model.
    #[error("model: {0} (no upstream target serves this model)")]
    ModelNotServed(String),
    /// No upstream credential is loaded (the stored one was removed).
    #[error("Rampart has no upstream credential configured")]
    NoUpstreamKey,
    /// The gateway is shutting down.
    #[error("Rampart is shutting down; retry on another instance")]
    ShuttingDown,
    /// A rate or concurrency limit of the key or its team refused the request (429).
    #[error("{}", crate::admission::rejection_message(.0))]
    RateLimited(Box<rampart_limits::Rejection>),
    /// The key's or its team's budget for the period is spent, or a batch's worst case does not
    /// fit in what is left of it (402).
    #[error("{}", crate::admission::rejection_message(.0))]
    OverBudget(Box<rampart_limits::Rejection>),
    /// The shared limits store (Redis) is unreachable and the limiter fails closed (503).
    #[error(
        "Rampart cannot reach its rate-limit store; requests with limits are refused until it is back"
    )]
    LimitsUnavailable,
}

impl ProxyError {
    /// The Anthropic error type and HTTP status for this error.
    #[must_use]
    pub fn kind_and_status(&self) -> (ErrorType, StatusCode) {
        match self {
            Self::MissingKey | Self::InvalidKey => {
                (ErrorType::AuthenticationError, StatusCode::UNAUTHORIZED)
            }
            Self::MalformedJson(_)
            | Self::InvalidRequest(_)
            | Self::InvalidUtf8
            | Self::NotAnObject
            | Self::BodyRead => (ErrorType::InvalidRequestError, StatusCode::BAD_REQUEST),
            Self::BodyTooLarge(_) => (ErrorType::RequestTooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            Self::NotFound => (ErrorType::NotFoundError, StatusCode::NOT_FOUND),
            Self::Forbidden(_) => (ErrorType::PermissionError, StatusCode::FORBIDDEN),
            Self::MethodNotAllowed(_) => (
                ErrorType::InvalidRequestError,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            Self::UpstreamUnreachable | Self::UpstreamFailed => {
                (ErrorType::ApiError, StatusCode::BAD_GATEWAY)
            }
            Self::UpstreamTimeout(_)
            | Self::UpstreamConnectTimeout(_)
            | Self::StreamIdleTimeout(_)
            | Self::DeadlineExceeded(_)
            | Self::ClientTimeout(_) => (ErrorType::TimeoutError, StatusCode::GATEWAY_TIMEOUT),
            Self::NoUpstreamAvailable { .. } => (
                ErrorType::OverloadedError,
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            ),
            Self::ModelNotServed(_) => (ErrorType::NotFoundError, StatusCode::NOT_FOUND),
            Self::NoUpstreamKey => (ErrorType::ApiError, StatusCode::INTERNAL_SERVER_ERROR),
            Self::ShuttingDown => (ErrorType::OverloadedError, StatusCode::SERVICE_UNAVAILABLE),
            Self::RateLimited(_) => (ErrorType::RateLimitError, StatusCode::TOO_MANY_REQUESTS),
            Self::OverBudget(_) => (ErrorType::BillingError, StatusCode::PAYMENT_REQUIRED),
            Self::LimitsUnavailable => (ErrorType::ApiError, StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// Whether this is the final failure of an upstream call (after Rampart's own retries):
    /// the response then says `x-should-retry: false`, so SDKs do not retry on top.
    #[must_use]
    pub const fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable
                | Self::UpstreamTimeout(_)
                | Self::UpstreamFailed
                | Self::UpstreamConnectTimeout(_)
                | Self::StreamIdleTimeout(_)
                | Self::DeadlineExceeded(_)
                | Self::ClientTimeout(_)
                | Self::NoUpstreamAvailable { .. }
        )
    }

    /// The response: envelope body, `request-id` and `x-request-id` headers, and for upstream
    /// failures `x-should-retry: false` (and `retry-after` when a breaker will reopen).
    #[must_use]
    pub fn into_response_with(self, request_id: &str) -> Response {
        let (kind, status) = self.kind_and_status();
        let upstream_failure = self.is_upstream_failure();
        let retry_after = match &self {
            Self::NoUpstreamAvailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let body = ErrorEnvelope::new(kind, self.to_string())
            .with_request_id(request_id)
            .to_json();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("request-id", v.clone());
            h.insert("x-request-id", v);
        }
        if upstream_failure {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        match &self {
            Self::RateLimited(r) | Self::OverBudget(r) => {
                crate::admission::rejection_headers(r, h);
            }
            Self::LimitsUnavailable => {
                // Said outright: Redis comes back by itself, and a retry a second later is what
                // the client should do (as for the 429's it stands in for).
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                h.insert("x-should-retry", HeaderValue::from_static("true"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_status_its_type_is_served_with() {
        for e in [
            ProxyError::MissingKey,
            ProxyError::InvalidKey,
            ProxyError::MalformedJson("x".into()),
            ProxyError::InvalidUtf8,
            ProxyError::InvalidRequest("x".into()),
            ProxyError::NotAnObject,
            ProxyError::BodyTooLarge(1),
            ProxyError::BodyRead,
            ProxyError::NotFound,
            ProxyError::Forbidden("x".into()),
            ProxyError::UpstreamUnreachable,
            ProxyError::UpstreamTimeout(5),
            ProxyError::UpstreamFailed,
            ProxyError::NoUpstreamKey,
            ProxyError::UpstreamConnectTimeout(1),
            ProxyError::StreamIdleTimeout(1),
            ProxyError::DeadlineExceeded(1),
            ProxyError::ClientTimeout(1),
            ProxyError::NoUpstreamAvailable {
                model: "m".into(),
                retry_after_secs: 3,
            },
            ProxyError::ModelNotServed("m".into()),
        ] {
            let (kind, status) = e.kind_and_status();
            if status.as_u16() != 502 {
                assert_eq!(kind.status(), status.as_u16(), "{e:?}");
            }
        }
    }

    #[test]
    fn upstream_failures_tell_sdks_not_to_retry_and_local_refusals_do_not() {
        let r = ProxyError::NoUpstreamAvailable {
            model: "claude-opus-4-6".into(),
            retry_after_secs: 4,
        }
        .into_response_with("req_1");
        assert_eq!(r.status().as_u16(), 529);
        assert_eq!(r.headers()["x-should-retry"], "false");
        assert_eq!(r.headers()["retry-after"], "4");
        for e in [ProxyError::UpstreamTimeout(5), ProxyError::ClientTimeout(5)] {
            let r = e.into_response_with("r");
            assert_eq!(r.headers()["x-should-retry"], "false");
        }
        for e in [
            ProxyError::InvalidKey,
            ProxyError::BodyTooLarge(1),
            ProxyError::ModelNotServed("m".into()),
        ] {
            let r = e.into_response_with("r");
            assert!(!r.headers().contains_key("x-should-retry"));
        }
        let r = ProxyError::LimitsUnavailable.into_response_with("r");
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            (&r.headers()["x-should-retry"], &r.headers()["retry-after"]),
            (
                &HeaderValue::from_static("true"),
                &HeaderValue::from_static("1")
            )
        );
    }
}
