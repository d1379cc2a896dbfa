//! [`ApiError`]: the one error type of the API plane, turned into an HTTP response in
//! [`crate::respond::error`] and into a batch `errored` result in [`crate::batches`].

use rampart_api::{ErrorEnvelope, ErrorType};

/// An error the simulator answers with, in Anthropic's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// `error.type`.
    pub kind: ErrorType,
    /// HTTP status (normally `kind.status()`).
    pub status: u16,
    /// `error.message`.
    pub message: String,
    /// `retry-after` seconds, if any.
    pub retry_after: Option<u64>,
    /// `retry-after-ms` to send, when set.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error of `kind`, served with its usual status.
    pub(crate) fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: kind.status(),
            message: message.into(),
            retry_after: None,
            retry_after_ms: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidRequestError, message)
    }

    /// 404 `not_found_error`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFoundError, message)
    }

    /// 401 `authentication_error`.
    pub(crate) fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorType::AuthenticationError, message)
    }

    /// The envelope, without a request id.
    pub(crate) fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope::new(self.kind, self.message.clone())
    }
}

/// `"<field>: Field required"`.
pub(crate) fn required(field: &str) -> ApiError {
    ApiError::invalid(format!("{field}: Field required"))
}

/// `"<field>: <what>"`, the pydantic-style message the API uses for a bad field.
pub(crate) fn bad_field(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{field}: {what}"))
}
