//! Errors, one variant per error class of the official SDKs (`AuthenticationError`,
//! `RateLimitError`, `OverloadedError`, `APIConnectionError`, `APITimeoutError`, …).
//!
//! An HTTP error response becomes the variant of its status; an in-band `event: error` of a stream
//! (after a 200) becomes the variant of its `error.type`, with no status. Every API error carries
//! the `request-id` of the response it came from.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use rampart_api::ErrorType;
use serde_json::Value;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest error message kept from a non-JSON error body.
const MAX_TEXT_MESSAGE: usize = 512;

/// An error the API answered with: an HTTP error status, or an `error` event inside a stream.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: Option<StatusCode>,
    error_type: String,
    message: String,
    request_id: Option<String>,
    headers: HeaderMap,
    body: Value,
}

impl ApiError {
    /// From an error response's status, headers and body. A body that is not the API's envelope
    /// still gives an error: its type from the status, its message from the text.
    pub(crate) fn from_response(status: StatusCode, headers: HeaderMap, body: &[u8]) -> Self {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = || {
            let t = String::from_utf8_lossy(body);
            let t = t.trim();
            if t.is_empty() {
                format!("HTTP {status}")
            } else {
                truncate(t, MAX_TEXT_MESSAGE)
            }
        };
        let error_type = json["error"]["type"].as_str().map_or_else(
            || ErrorType::from_status(status.as_u16()).as_str().to_owned(),
            str::to_owned,
        );
        let message = json["error"]["message"]
            .as_str()
            .map_or_else(text, str::to_owned);
        let request_id = header_str(&headers, "request-id")
            .or_else(|| json["request_id"].as_str())
            .map(str::to_owned);
        Self {
            status: Some(status),
            error_type,
            message,
            request_id,
            headers,
            body: json,
        }
    }

    /// From the JSON of an in-band `event: error` of a stream whose response had `headers`.
    pub(crate) fn from_stream_event(data: &str, headers: &HeaderMap) -> Self {
        let json: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        let error_type = json["error"]["type"]
            .as_str()
            .unwrap_or("api_error")
            .to_owned();
        let message = json["error"]["message"]
            .as_str()
            .map_or_else(|| truncate(data.trim(), MAX_TEXT_MESSAGE), str::to_owned);
        Self {
            status: None,
            error_type,
            message,
            request_id: header_str(headers, "request-id").map(str::to_owned),
            headers: headers.clone(),
            body: json,
        }
    }

    /// The HTTP status; `None` for an error event inside a stream.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.status.map(|s| s.as_u16())
    }

    /// `error.type` as sent, e.g. `"overloaded_error"` (new types may appear).
    #[must_use]
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// `error.type` as a known [`ErrorType`], when it is one.
    #[must_use]
    pub fn kind(&self) -> Option<ErrorType> {
        ErrorType::ALL
            .into_iter()
            .find(|t| t.as_str() == self.error_type)
    }

    /// `error.message`: human-readable; its wording can change, so do not match on it.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `request-id` response header (or the body's `request_id`).
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The response headers (rate-limit state, `retry-after`, …).
    #[must_use]
    pub const fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The decoded JSON body (`Null` when it was not JSON), e.g. for `error.details`.
    #[must_use]
    pub const fn body(&self) -> &Value {
        &self.body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} ({}): {}", self.error_type, s.as_u16(), self.message)?,
            None => write!(f, "{} (in stream): {}", self.error_type, self.message)?,
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request-id {id}]")?;
        }
        Ok(())
    }
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 400 `invalid_request_error`.
    #[error("{0}")]
    BadRequest(Box<ApiError>),
    /// 401 `authentication_error`: missing or invalid API key.
    #[error("{0}")]
    Authentication(Box<ApiError>),
    /// 402 `billing_error`.
    #[error("{0}")]
    PaymentRequired(Box<ApiError>),
    /// 403 `permission_error`: the key may not do this.
    #[error("{0}")]
    PermissionDenied(Box<ApiError>),
    /// 404 `not_found_error`.
    #[error("{0}")]
    NotFound(Box<ApiError>),
    /// 409 `conflict_error`.
    #[error("{0}")]
    Conflict(Box<ApiError>),
    /// 413 `request_too_large`.
    #[error("{0}")]
    RequestTooLarge(Box<ApiError>),
    /// 422.
    #[error("{0}")]
    UnprocessableEntity(Box<ApiError>),
    /// 429 `rate_limit_error`.
    #[error("{0}")]
    RateLimit(Box<ApiError>),
    /// 529 `overloaded_error`.
    #[error("{0}")]
    Overloaded(Box<ApiError>),
    /// 500 `api_error` and any other 5xx (502, 503, 504 `timeout_error`, …).
    #[error("{0}")]
    InternalServer(Box<ApiError>),
    /// Any other error status, or an in-band error of a type not listed above.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// No response: the connection could not be made or broke (retried like the SDKs do).
    #[error("connection error: {message}")]
    Connection {
        /// What happened (never holds a credential).
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The request or the stream took longer than the timeout.
    #[error("request timed out after {} s ({phase})", .after.as_secs_f64())]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
        /// Waiting for the response, reading its body, or waiting for the next stream event.
        phase: &'static str,
    },
    /// The response did not match the API (bad JSON, a broken event sequence, an oversized body).
    #[error("invalid response: {message}{}", .request_id.as_deref().map(|id| format!(" [request-id {id}]")).unwrap_or_default())]
    InvalidResponse {
        /// What was wrong.
        message: String,
        /// The response's `request-id`.
        request_id: Option<String>,
    },
    /// The call was not made: bad configuration or arguments (no API key, a bad base URL, an
    /// empty id, a non-streaming request that would take longer than 10 minutes, …).
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// The variant for an API error: by HTTP status, or for a stream's error event by its type.
    pub(crate) fn from_api(e: ApiError) -> Self {
        let b = Box::new(e);
        match b.status() {
            Some(400) => Self::BadRequest(b),
            Some(401) => Self::Authentication(b),
            Some(402) => Self::PaymentRequired(b),
            Some(403) => Self::PermissionDenied(b),
            Some(404) => Self::NotFound(b),
            Some(409) => Self::Conflict(b),
            Some(413) => Self::RequestTooLarge(b),
            Some(422) => Self::UnprocessableEntity(b),
            Some(429) => Self::RateLimit(b),
            Some(529) => Self::Overloaded(b),
            Some(500..=599) => Self::InternalServer(b),
            Some(_) => Self::Api(b),
            None => match b.kind() {
                Some(ErrorType::InvalidRequestError) => Self::BadRequest(b),
                Some(ErrorType::AuthenticationError) => Self::Authentication(b),
                Some(ErrorType::BillingError) => Self::PaymentRequired(b),
                Some(ErrorType::PermissionError) => Self::PermissionDenied(b),
                Some(ErrorType::NotFoundError) => Self::NotFound(b),
                Some(ErrorType::ConflictError) => Self::Conflict(b),
                Some(ErrorType::RequestTooLarge) => Self::RequestTooLarge(b),
                Some(ErrorType::RateLimitError) => Self::RateLimit(b),
                Some(ErrorType::OverloadedError) => Self::Overloaded(b),
                Some(ErrorType::ApiError | ErrorType::TimeoutError) => Self::InternalServer(b),
                None => Self::Api(b),
            },
        }
    }

    /// A connection error with `source`'s chain as its message.
    pub(crate) fn connection(source: BoxError) -> Self {
        let mut message = source.to_string();
        let mut cause = source.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        Self::Connection {
            message,
            source: Some(source),
        }
    }

    pub(crate) fn invalid_response(message: impl Into<String>, headers: &HeaderMap) -> Self {
        Self::InvalidResponse {
            message: message.into(),
            request_id: header_str(headers, "request-id").map(str::to_owned),
        }
    }

    /// The API error behind this error, if the API answered with one.
    #[must_use]
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::BadRequest(e)
            | Self::Authentication(e)
            | Self::PaymentRequired(e)
            | Self::PermissionDenied(e)
            | Self::NotFound(e)
            | Self::Conflict(e)
            | Self::RequestTooLarge(e)
            | Self::UnprocessableEntity(e)
            | Self::RateLimit(e)
            | Self::Overloaded(e)
            | Self::InternalServer(e)
            | Self::Api(e) => Some(e),
            Self::Connection { .. }
            | Self::Timeout { .. }
            | Self::InvalidResponse { .. }
            | Self::InvalidArgument(_) => None,
        }
    }

    /// The HTTP status of an API error (`None` for in-band stream errors and non-API errors).
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.api_error().and_then(ApiError::status)
    }

    /// The `request-id` of the response this error came from, when there was one.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::InvalidResponse { request_id, .. } => request_id.as_deref(),
            _ => self.api_error().and_then(ApiError::request_id),
        }
    }

    /// Whether this is a timeout.
    #[must_use]
    pub const fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn status_errors_map_to_the_sdk_classes() {
        let cases = [
            (400, "BadRequest"),
            (401, "Authentication"),
            (402, "PaymentRequired"),
            (403, "PermissionDenied"),
            (404, "NotFound"),
            (409, "Conflict"),
            (413, "RequestTooLarge"),
            (422, "UnprocessableEntity"),
            (429, "RateLimit"),
            (500, "InternalServer"),
            (503, "InternalServer"),
            (504, "InternalServer"),
            (529, "Overloaded"),
            (408, "Api"),
            (418, "Api"),
        ];
        for (status, class) in cases {
            let e = Error::from_api(ApiError::from_response(
                StatusCode::from_u16(status).unwrap(),
                HeaderMap::new(),
                b"",
            ));
            let name = format!("{e:?}");
            assert!(name.starts_with(&format!("{class}(")), "{status}: {name}");
            assert_eq!(e.status(), Some(status));
        }
    }

    #[test]
    fn envelope_fields_and_request_id_are_exposed() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_body"}"#;
        let e = ApiError::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            headers(&[("request-id", "req_header"), ("retry-after", "3")]),
            body,
        );
        assert_eq!(e.error_type(), "rate_limit_error");
        assert_eq!(e.kind(), Some(ErrorType::RateLimitError));
        assert_eq!(e.message(), "slow down");
        assert_eq!(e.request_id(), Some("req_header"));
        assert_eq!(e.headers()["retry-after"], "3");
        assert_eq!(
            e.to_string(),
            "rate_limit_error (429): slow down [request-id req_header]"
        );
        let no_header =
            ApiError::from_response(StatusCode::TOO_MANY_REQUESTS, HeaderMap::new(), body);
        assert_eq!(no_header.request_id(), Some("req_body"));
    }

    #[test]
    fn a_body_that_is_not_the_envelope_still_gives_a_typed_error() {
        let e = ApiError::from_response(
            StatusCode::BAD_GATEWAY,
            HeaderMap::new(),
            b"<html>bad gateway</html>",
        );
        assert_eq!(
            (e.error_type(), e.message()),
            ("api_error", "<html>bad gateway</html>")
        );
        let empty = ApiError::from_response(StatusCode::NOT_FOUND, HeaderMap::new(), b"  ");
        assert_eq!(
            (empty.error_type(), empty.message()),
            ("not_found_error", "HTTP 404 Not Found")
        );
        let long = "x".repeat(2000);
        let e = ApiError::from_response(StatusCode::BAD_REQUEST, HeaderMap::new(), long.as_bytes());
        assert_eq!(e.message().chars().count(), MAX_TEXT_MESSAGE + 1);
    }

    #[test]
    fn stream_error_events_map_by_type_and_carry_no_status() {
        let h = headers(&[("request-id", "req_s")]);
        let e = Error::from_api(ApiError::from_stream_event(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &h,
        ));
        assert!(matches!(e, Error::Overloaded(_)), "{e:?}");
        assert_eq!((e.status(), e.request_id()), (None, Some("req_s")));
        assert_eq!(
            e.to_string(),
            "overloaded_error (in stream): Overloaded [request-id req_s]"
        );
        let odd = Error::from_api(ApiError::from_stream_event(
            r#"{"type":"error","error":{"type":"brand_new_error","message":"?"}}"#,
            &h,
        ));
        assert!(matches!(odd, Error::Api(_)));
        let garbage = Error::from_api(ApiError::from_stream_event("not json", &h));
        assert_eq!(garbage.api_error().unwrap().message(), "not json");
    }

    #[test]
    fn connection_errors_name_their_causes_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Error::connection(Box::new(Outer(inner)));
        assert_eq!(
            e.to_string(),
            "connection error: client error (Connect): refused"
        );
    }
}
