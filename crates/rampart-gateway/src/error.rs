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
    /// No upstream credential is loaded (the stored one was removed).
    #[error("Rampart has no upstream credential configured")]
    NoUpstreamKey,
    /// The gateway is shutting down.
    #[error("Rampart is shutting down; retry on another instance")]
    ShuttingDown,
    /// A rate or concurrency limit of the key or its team refused the request (429).
    #[error("{}", crate::admission::rejection_message(.0))]
    RateLimited(Box<rampart_limits::Rejection>),
    /// The key's or its team's budget for the period is spent (402).
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
            Self::UpstreamTimeout(_) => (ErrorType::TimeoutError, StatusCode::GATEWAY_TIMEOUT),
            Self::NoUpstreamKey => (ErrorType::ApiError, StatusCode::INTERNAL_SERVER_ERROR),
            Self::ShuttingDown => (ErrorType::OverloadedError, StatusCode::SERVICE_UNAVAILABLE),
            Self::RateLimited(_) => (ErrorType::RateLimitError, StatusCode::TOO_MANY_REQUESTS),
            Self::OverBudget(_) => (ErrorType::BillingError, StatusCode::PAYMENT_REQUIRED),
            Self::LimitsUnavailable => (ErrorType::ApiError, StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// The response: envelope body, `request-id` and `x-request-id` headers.
    #[must_use]
    pub fn into_response_with(self, request_id: &str) -> Response {
        let (kind, status) = self.kind_and_status();
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
        match &self {
            Self::RateLimited(r) | Self::OverBudget(r) => {
                crate::admission::rejection_headers(r, h);
            }
            Self::LimitsUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
        ] {
            let (kind, status) = e.kind_and_status();
            if status.as_u16() != 502 {
                assert_eq!(kind.status(), status.as_u16(), "{e:?}");
            }
        }
    }
}
