//! The error envelope: `{"type":"error","error":{"type":..,"message":..},"request_id":..}`.

use serde::{Deserialize, Serialize};

/// The `error.type` values the API uses, with the HTTP status each one is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// 400: malformed or invalid request.
    InvalidRequestError,
    /// 401: missing or invalid credential.
    AuthenticationError,
    /// 402: billing problem or budget exhausted.
    BillingError,
    /// 403: the credential may not do this.
    PermissionError,
    /// 404: unknown route or resource.
    NotFoundError,
    /// 409: conflicting state.
    ConflictError,
    /// 413: body over the size limit.
    RequestTooLarge,
    /// 429: rate limited.
    RateLimitError,
    /// 500: unexpected upstream error.
    ApiError,
    /// 504: timed out while processing.
    TimeoutError,
    /// 529: upstream overloaded.
    OverloadedError,
}

impl ErrorType {
    /// Every variant, for tables and tests.
    pub const ALL: [ErrorType; 11] = [
        Self::InvalidRequestError,
        Self::AuthenticationError,
        Self::BillingError,
        Self::PermissionError,
        Self::NotFoundError,
        Self::ConflictError,
        Self::RequestTooLarge,
        Self::RateLimitError,
        Self::ApiError,
        Self::TimeoutError,
        Self::OverloadedError,
    ];

    /// The wire name, e.g. `"invalid_request_error"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequestError => "invalid_request_error",
            Self::AuthenticationError => "authentication_error",
            Self::BillingError => "billing_error",
            Self::PermissionError => "permission_error",
            Self::NotFoundError => "not_found_error",
            Self::ConflictError => "conflict_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimitError => "rate_limit_error",
            Self::ApiError => "api_error",
            Self::TimeoutError => "timeout_error",
            Self::OverloadedError => "overloaded_error",
        }
    }

    /// The error type whose wire name is `name`; `None` for any other string (a name the API
    /// does not use, or not a name at all).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The HTTP status code the API serves this error type with.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequestError => 400,
            Self::AuthenticationError => 401,
            Self::BillingError => 402,
            Self::PermissionError => 403,
            Self::NotFoundError => 404,
            Self::ConflictError => 409,
            Self::RequestTooLarge => 413,
            Self::RateLimitError => 429,
            Self::ApiError => 500,
            Self::TimeoutError => 504,
            Self::OverloadedError => 529,
        }
    }

    /// The error type the API uses for an HTTP status (unknown 4xx map to `invalid_request_error`,
    /// unknown 5xx to `api_error`).
    #[must_use]
    pub const fn from_status(status: u16) -> Self {
        match status {
            401 => Self::AuthenticationError,
            402 => Self::BillingError,
            403 => Self::PermissionError,
            404 => Self::NotFoundError,
            409 => Self::ConflictError,
            413 => Self::RequestTooLarge,
            429 => Self::RateLimitError,
            504 => Self::TimeoutError,
            529 => Self::OverloadedError,
            500..=599 => Self::ApiError,
            _ => Self::InvalidRequestError,
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inner `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error class.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// Human-readable message; never carries internal detail.
    pub message: String,
}

/// The full error envelope returned with every non-2xx response and in SSE `error` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// Always `"error"`.
    #[serde(rename = "type")]
    pub envelope_type: EnvelopeTag,
    /// The error itself.
    pub error: ErrorBody,
    /// The request id, also sent as the `request-id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The constant `"error"` tag of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeTag {
    /// `"error"`.
    #[default]
    Error,
}

impl ErrorEnvelope {
    /// An envelope of `kind` with `message`.
    #[must_use]
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            envelope_type: EnvelopeTag::Error,
            error: ErrorBody {
                kind,
                message: message.into(),
            },
            request_id: None,
        }
    }

    /// The same envelope carrying `request_id`.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Serialised JSON bytes.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising this plain struct cannot fail; fall back to a fixed body just in case.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#
                .to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_serialises_exactly_like_the_api() {
        let env =
            ErrorEnvelope::new(ErrorType::NotFoundError, "Not found").with_request_id("req_1");
        let json = String::from_utf8(env.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"type":"error","error":{"type":"not_found_error","message":"Not found"},"request_id":"req_1"}"#
        );
    }

    #[test]
    fn status_round_trips_for_every_type() {
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::from_status(t.status()), t, "{t}");
        }
        assert_eq!(ErrorType::from_status(418), ErrorType::InvalidRequestError);
        assert_eq!(ErrorType::from_status(503), ErrorType::ApiError);
    }

    #[test]
    fn names_round_trip_and_nothing_else_is_a_type() {
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::from_name(t.as_str()), Some(t), "{t}");
        }
        for name in [
            "",
            "error",
            "Overloaded_Error",
            "overloaded_error ",
            "x_error",
        ] {
            assert_eq!(ErrorType::from_name(name), None, "{name:?}");
        }
    }
}
