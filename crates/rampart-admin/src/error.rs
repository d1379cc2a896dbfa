//! The admin API's one error shape: Anthropic's envelope plus the request id.
//!
//! Handlers and extractors return [`ApiError`]; its response carries the kind and message as an
//! extension with an empty body, and the outer middleware ([`crate::http::finish`]), which knows
//! the request id, renders the JSON. So every error, including a rejection by an extractor, a 404
//! from the fallback, or a 405, gets the same body.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// The `error.type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400 / 405.
    InvalidRequestError,
    /// 401.
    AuthenticationError,
    /// 403.
    PermissionError,
    /// 404.
    NotFoundError,
    /// 409.
    ConflictError,
    /// 413.
    RequestTooLarge,
    /// 429.
    RateLimitError,
    /// 500.
    ApiError,
}

/// Why an admin request failed. Messages are written for the client: never a secret, an SQL
/// fragment or an internal detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 429.
    #[error("too many attempts; try again later")]
    RateLimited {
        /// Seconds until the next attempt may succeed.
        retry_after: u64,
    },
    /// 500.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status code and kind.
    #[must_use]
    pub fn status(&self) -> (StatusCode, ErrorKind) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequestError),
            ApiError::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, ErrorKind::AuthenticationError)
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::PermissionError),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFoundError),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorKind::InvalidRequestError,
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorKind::ConflictError),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::RequestTooLarge),
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimitError)
            }
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::ApiError),
        }
    }

    /// A 400 with `message`.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }
}

impl From<rampart_store::StoreError> for ApiError {
    fn from(e: rampart_store::StoreError) -> Self {
        use rampart_store::StoreError as S;
        match e {
            S::NotFound => ApiError::NotFound("resource"),
            S::Conflict { what } => ApiError::Conflict(format!("{what} already exists")),
            S::Invalid(msg) => ApiError::BadRequest(msg),
            S::Backend(source) => {
                tracing::error!(error = %source, "admin store call failed");
                ApiError::Internal
            }
        }
    }
}

/// What the rendering middleware turns into the JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub kind: ErrorKind,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        let mut resp = status.into_response();
        match self {
            ApiError::RateLimited { retry_after } => {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            // The rest of the body was not read: tell the client this connection ends here.
            ApiError::TooLarge(_) => {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp.extensions_mut().insert(Rendered {
            kind,
            message: self.to_string(),
        });
        resp
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// Always `error`.
    #[serde(rename = "type")]
    #[schema(example = "error")]
    pub kind: String,
    /// What went wrong.
    pub error: ErrorDetail,
    /// The request id (also in the `x-request-id` header).
    pub request_id: String,
}

/// The `error` member.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The class of error.
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    /// A message for people.
    pub message: String,
}

impl ErrorResponse {
    pub(crate) fn new(kind: ErrorKind, message: String, request_id: &str) -> Self {
        ErrorResponse {
            kind: "error".to_owned(),
            error: ErrorDetail { kind, message },
            request_id: request_id.to_owned(),
        }
    }
}

/// The error responses every operation may return (for the OpenAPI document).
#[derive(Debug, IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Malformed or invalid input.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorResponse),
    /// Missing, invalid, expired or revoked credentials.
    #[response(status = 401)]
    Unauthenticated(ErrorResponse),
    /// The caller's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// No such resource in the caller's scope.
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// The change conflicts with existing state.
    #[response(status = 409)]
    Conflict(ErrorResponse),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// Throttled.
    #[response(status = 429, headers(("retry-after" = u64, description = "Seconds to wait")))]
    RateLimited(ErrorResponse),
    /// Internal failure.
    #[response(status = 500)]
    Internal(ErrorResponse),
}
