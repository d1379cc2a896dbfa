//! HTTP plumbing of the admin plane: the request context (id, client address), strict extractors
//! whose rejections use the admin error shape, security headers, CORS and error rendering.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::AdminState;
use crate::error::{ApiError, ErrorResponse, Rendered};

/// The largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Who is asking, from where, under which request id. Put in the request's extensions by
/// [`context`]; extract it in handlers.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The request id (the client's `x-request-id` if sane, else generated).
    pub request_id: String,
    /// The client's address, if the server knows it.
    pub client_addr: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .ok_or(ApiError::Internal)
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map_or_else(|| format!("req_{}", Uuid::now_v7().simple()), str::to_owned)
}

/// Outermost middleware: sets up [`Ctx`], answers CORS preflights, renders errors with the request
/// id, and adds the security headers to every response.
pub async fn context(
    axum::extract::State(state): axum::extract::State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let ctx = Ctx {
        request_id: request_id(req.headers()),
        client_addr: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    };
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed_origin = origin.filter(|o| state.settings().cors_origins.iter().any(|a| a == o));
    let is_docs = req.uri().path().starts_with("/admin/docs");
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    // Read the whole (small) body before any handler runs: a handler that answers early (a bad
    // id, a missing token) would otherwise leave it unread, and hyper then closes the connection
    // without saying so, breaking the client's next request on it.
    let (head, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let too_large = body.is_err();
    let mut req = Request::from_parts(head, Body::from(body.unwrap_or_default()));
    let mut resp = if too_large {
        ApiError::TooLarge(MAX_BODY).into_response()
    } else if preflight {
        if allowed_origin.is_some() {
            StatusCode::NO_CONTENT.into_response()
        } else {
            ApiError::Forbidden("cross-origin requests from this origin are not allowed")
                .into_response()
        }
    } else {
        req.extensions_mut().insert(ctx.clone());
        next.run(req).await
    };
    if let Some(rendered) = resp.extensions_mut().remove::<Rendered>() {
        let body = ErrorResponse::new(rendered.kind, rendered.message, &ctx.request_id);
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        resp = (status, axum::Json(body)).into_response();
        for (k, v) in &headers {
            resp.headers_mut().insert(k, v.clone());
        }
    } else if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        || resp.status() == StatusCode::NOT_FOUND
            && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        // axum's own 404/405 (e.g. a known path with another method): same shape as ours.
        let err = if resp.status() == StatusCode::NOT_FOUND {
            ApiError::NotFound("route")
        } else {
            ApiError::MethodNotAllowed
        };
        let (status, kind) = err.status();
        let allow = resp.headers().get(header::ALLOW).cloned();
        resp = (
            status,
            axum::Json(ErrorResponse::new(kind, err.to_string(), &ctx.request_id)),
        )
            .into_response();
        if let Some(allow) = allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    security_headers(h, is_docs, state.settings().hsts);
    if let Some(origin) = allowed_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

fn security_headers(h: &mut HeaderMap, docs: bool, hsts: bool) {
    // The docs page runs Swagger UI from our own origin only; the API itself serves JSON only.
    let csp = if docs {
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    } else {
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}

/// A JSON body: `content-type: application/json`, at most [`MAX_BODY`] bytes, UTF-8, and
/// deserialised strictly (types deny unknown fields).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::bad(
                "expected a JSON body with content-type: application/json",
            ));
        }
        let bytes = read_body(req.into_body()).await?;
        parse_json(&bytes).map(Json)
    }
}

/// An optional JSON body: empty is `None`, otherwise as [`Json`].
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        if !has_type {
            let bytes = read_body(req.into_body()).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(None));
            }
            return Err(ApiError::bad(
                "expected a JSON body with content-type: application/json",
            ));
        }
        Json::<T>::from_request(req, state)
            .await
            .map(|j| OptionalJson(Some(j.0)))
    }
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::bad("request body is not valid UTF-8"))?;
    // serde would also fill a struct from an array, field by field in order; bodies are objects.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad("request body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = T::deserialize(&mut de).map_err(|e| ApiError::bad(describe(&e)))?;
    de.end().map_err(|e| ApiError::bad(describe(&e)))?;
    Ok(value)
}

/// serde's message, cut short (it may quote the input) and without the position noise.
fn describe(e: &serde_json::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if msg.len() > 200 {
        let mut end = 200;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    format!("invalid request body: {msg}")
}

/// The `{id}` path parameter as a UUID (400 otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::bad("invalid path parameter"))?;
        Uuid::parse_str(&raw)
            .map(Id)
            .map_err(|_| ApiError::bad("id must be a UUID"))
    }
}

/// Query parameters, strictly (400 for unknown or malformed ones).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A `+` in a query string reads as a space (form encoding): an RFC 3339 offset written
        // as is (`+02:00`) fails to parse with no hint of why.
        let plus = parts.uri.query().is_some_and(|q| q.contains('+'));
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                let mut msg: String = text.chars().take(200).collect();
                if msg.is_empty() {
                    msg = "malformed query string".to_owned();
                }
                if plus {
                    msg.push_str(
                        " (a `+` in a query string reads as a space: write a time zone offset's `+` as %2B, or use Z)",
                    );
                }
                ApiError::bad(format!("invalid query: {msg}"))
            })
    }
}
