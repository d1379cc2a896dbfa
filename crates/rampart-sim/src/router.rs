//! Request handling, in order: route → read and parse the body → count and log → `latency_ms` →
//! 404/405 → credential → `anthropic-version` → fault (reset, status, stall, or a body fault kept
//! for later) → handler → body fault applied → common headers. `/_sim/` requests skip to
//! [`crate::control`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use rampart_api::{ErrorBody, ErrorType};
use serde_json::{Value, json};

use crate::engine;
use crate::error::ApiError;
use crate::faults::{Fault, FaultKind};
use crate::respond::{self, SimBody};
use crate::sse::{self, SseFrames, StreamFault};
use crate::state::{RouteGroup, Sim};
use crate::validate::{check_auth, check_version, json_error};

/// Body limit of messages and count_tokens requests (32 MB).
const MESSAGES_LIMIT: usize = 32 * 1024 * 1024;
/// Body limit of batch creation (256 MB).
const BATCH_LIMIT: usize = 256 * 1024 * 1024;

/// Returned instead of a response when the connection must be dropped (the `reset` fault).
pub(crate) type ResetConnection = crate::respond::Simulated;

const RESET: ResetConnection = crate::respond::Simulated("simulated connection reset");

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Messages,
    CountTokens,
    ModelsList,
    Model(String),
    BatchCreate,
    BatchList,
    Batch(String),
    BatchCancel(String),
    BatchDelete(String),
    BatchResults(String),
    MethodNotAllowed(RouteGroup),
    NotFound,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Self {
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut buf = [""; 6];
        let mut n = 0;
        for segment in path.split('/').skip(1) {
            let Some(slot) = buf.get_mut(n) else {
                return Self::NotFound;
            };
            *slot = segment;
            n += 1;
        }
        let segments = &buf[..n];
        let m = method.clone();
        let (route, group) = match segments {
            ["v1", "messages"] => (
                matches!(m, Method::POST).then_some(Self::Messages),
                RouteGroup::Messages,
            ),
            ["v1", "messages", "count_tokens"] => (
                matches!(m, Method::POST).then_some(Self::CountTokens),
                RouteGroup::CountTokens,
            ),
            ["v1", "models"] => (
                matches!(m, Method::GET).then_some(Self::ModelsList),
                RouteGroup::Models,
            ),
            ["v1", "models", id] => (
                matches!(m, Method::GET).then(|| Self::Model((*id).to_owned())),
                RouteGroup::Models,
            ),
            ["v1", "messages", "batches"] => (
                match m {
                    Method::POST => Some(Self::BatchCreate),
                    Method::GET => Some(Self::BatchList),
                    _ => None,
                },
                RouteGroup::Batches,
            ),
            ["v1", "messages", "batches", id] => (
                match m {
                    Method::GET => Some(Self::Batch((*id).to_owned())),
                    Method::DELETE => Some(Self::BatchDelete((*id).to_owned())),
                    _ => None,
                },
                RouteGroup::Batches,
            ),
            ["v1", "messages", "batches", id, "cancel"] => (
                matches!(m, Method::POST).then(|| Self::BatchCancel((*id).to_owned())),
                RouteGroup::Batches,
            ),
            ["v1", "messages", "batches", id, "results"] => (
                matches!(m, Method::GET).then(|| Self::BatchResults((*id).to_owned())),
                RouteGroup::Batches,
            ),
            _ => return Self::NotFound,
        };
        route.unwrap_or(Self::MethodNotAllowed(group))
    }

    fn group(&self) -> Option<RouteGroup> {
        Some(match self {
            Self::Messages => RouteGroup::Messages,
            Self::CountTokens => RouteGroup::CountTokens,
            Self::ModelsList | Self::Model(_) => RouteGroup::Models,
            Self::BatchCreate
            | Self::BatchList
            | Self::Batch(_)
            | Self::BatchCancel(_)
            | Self::BatchDelete(_)
            | Self::BatchResults(_) => RouteGroup::Batches,
            Self::MethodNotAllowed(g) => *g,
            Self::NotFound => return None,
        })
    }

    const fn body_limit(&self) -> Option<usize> {
        match self {
            Self::Messages | Self::CountTokens => Some(MESSAGES_LIMIT),
            Self::BatchCreate => Some(BATCH_LIMIT),
            _ => None,
        }
    }
}

/// Reads a whole body up to `limit` bytes.
///
/// # Errors
/// 413 `request_too_large` over the limit; 400 when the body cannot be read.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorType::RequestTooLarge,
            "Request exceeds the maximum allowed number of bytes.",
        )),
        Err(_) => Err(ApiError::invalid("The request body could not be read.")),
    }
}

/// What a handler produced, before body faults and framing.
enum Payload {
    Json(StatusCode, Bytes),
    Jsonl(Bytes),
    Sse(SseFrames),
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Payload, ApiError> {
    serde_json::to_vec(value)
        .map(|b| Payload::Json(StatusCode::OK, Bytes::from(b)))
        .map_err(|_| ApiError::new(ErrorType::ApiError, "Internal server error"))
}

/// Serves one request.
///
/// # Errors
/// [`ResetConnection`] when a `reset` fault fires; the connection is then dropped.
pub(crate) async fn handle(
    sim: Arc<Sim>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, ResetConnection> {
    let request_id = crate::ids::request_id();
    let path = req.uri().path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        let mut resp = crate::control::handle(&sim, req, &request_id).await;
        respond::decorate(&mut resp, &request_id);
        return Ok(resp);
    }
    let route = Route::parse(req.method(), path);
    let (parts, body) = req.into_parts();
    let parsed = match route.body_limit() {
        Some(limit) => Some(
            read_body(body, limit)
                .await
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| json_error(&e))),
        ),
        None => None,
    };
    let model = match &parsed {
        Some(Ok(v)) => v.get("model").and_then(Value::as_str),
        _ => None,
    };
    sim.counters.arrive(route.group(), model);
    sim.log
        .push(&parts.method, &parts.uri, &parts.headers, model);
    let mut resp = api(&sim, &route, &parts, parsed.as_ref(), model, &request_id).await?;
    respond::decorate(&mut resp, &request_id);
    Ok(resp)
}

async fn api(
    sim: &Sim,
    route: &Route,
    parts: &Parts,
    parsed: Option<&Result<Value, ApiError>>,
    model: Option<&str>,
    request_id: &str,
) -> Result<Response<SimBody>, ResetConnection> {
    if sim.settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.settings.latency_ms)).await;
    }
    let early = match route {
        Route::NotFound => Some(ApiError::not_found("Not Found")),
        Route::MethodNotAllowed(_) => Some(ApiError {
            status: 405,
            ..ApiError::invalid("Method Not Allowed")
        }),
        _ => None,
    };
    if let Some(e) = early {
        return Ok(respond::error(&e, request_id));
    }
    let credential = match check_auth(&parts.headers, sim.settings.api_key.as_deref())
        .and_then(|c| check_version(&parts.headers).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => return Ok(respond::error(&e, request_id)),
    };
    let fault = route.group().and_then(|g| sim.faults.take(g, model));
    if let Some(f) = &fault {
        match f.kind {
            FaultKind::Reset => return Err(RESET),
            FaultKind::Status => return Ok(respond::error(&f.error(), request_id)),
            FaultKind::StallHeaders => tokio::time::sleep(f.delay()).await,
            _ => {}
        }
    }
    let payload = match dispatch(sim, route, parts, parsed, credential) {
        Ok(p) => p,
        Err(e) => return Ok(respond::error(&e, request_id)),
    };
    let exhausted = fault
        .as_ref()
        .filter(|f| f.kind == FaultKind::Exhausted)
        .map(|f| crate::respond::Exhausted(f.retry_after.unwrap_or(1)));
    let body_fault =
        fault.filter(|f| !matches!(f.kind, FaultKind::StallHeaders | FaultKind::Exhausted));
    let mut resp = finish(
        payload,
        body_fault.as_ref(),
        sim.settings.tokens_per_sec,
        request_id,
    );
    if let Some(e) = exhausted {
        resp.extensions_mut().insert(e);
    }
    Ok(resp)
}

fn body_of(parsed: Option<&Result<Value, ApiError>>) -> Result<&Value, ApiError> {
    match parsed {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.clone()),
        None => Err(ApiError::invalid("A request body is required.")),
    }
}

fn dispatch(
    sim: &Sim,
    route: &Route,
    parts: &Parts,
    parsed: Option<&Result<Value, ApiError>>,
    credential: &str,
) -> Result<Payload, ApiError> {
    let base = sim.settings.base_url.as_str();
    let query = parts.uri.query();
    match route {
        Route::Messages => {
            let outcome = engine::run(sim, body_of(parsed)?, Some(credential))?;
            let id = crate::ids::message_id();
            if outcome.stream {
                Ok(Payload::Sse(sse::frames(id, &outcome)))
            } else {
                to_json(&engine::message(id, &outcome, "standard"))
            }
        }
        Route::CountTokens => {
            to_json(&json!({"input_tokens": engine::count(sim, body_of(parsed)?)?}))
        }
        Route::ModelsList => to_json(&sim.catalogue.list(query)?),
        Route::Model(id) => Ok(Payload::Json(StatusCode::OK, sim.catalogue.get_json(id)?)),
        Route::BatchCreate => to_json(&sim.batches.create(sim, body_of(parsed)?)?),
        Route::BatchList => to_json(&sim.batches.list(query, base)?),
        Route::Batch(id) => to_json(&sim.batches.get(id, base)?),
        Route::BatchCancel(id) => to_json(&sim.batches.cancel(id, base)?),
        Route::BatchDelete(id) => to_json(&sim.batches.delete(id)?),
        Route::BatchResults(id) => Ok(Payload::Jsonl(sim.batches.results(id)?)),
        Route::MethodNotAllowed(_) | Route::NotFound => Err(ApiError::not_found("Not Found")),
    }
}

fn finish(
    payload: Payload,
    fault: Option<&Fault>,
    tokens_per_sec: f64,
    request_id: &str,
) -> Response<SimBody> {
    let (status, content_type, bytes) = match payload {
        Payload::Sse(frames) => {
            let stream_fault = fault.map(|f| match f.kind {
                FaultKind::StallStream => StreamFault::Stall {
                    after: f.after_events,
                    delay: f.delay(),
                },
                FaultKind::ErrorEvent => StreamFault::Error {
                    after: f.after_events,
                    error: ErrorBody {
                        kind: f.error_type,
                        message: f.message.clone(),
                    },
                },
                FaultKind::AbortStream => StreamFault::Abort {
                    after: f.after_events,
                },
                _ => StreamFault::Slow { delay: f.delay() },
            });
            let mut resp = Response::new(sse::body(frames, tokens_per_sec, stream_fault));
            let headers = resp.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return resp;
        }
        Payload::Json(status, bytes) => (status, "application/json", bytes),
        Payload::Jsonl(bytes) => (StatusCode::OK, "application/x-jsonl", bytes),
    };
    let body = match fault.map(|f| f.kind) {
        Some(FaultKind::ErrorEvent) => {
            if let Some(f) = fault {
                return respond::error(&f.error(), request_id);
            }
            respond::full(bytes)
        }
        Some(FaultKind::AbortStream) => respond::truncated(bytes),
        Some(FaultKind::Slow | FaultKind::StallStream) => {
            respond::delayed(bytes, fault.map_or(Duration::ZERO, Fault::delay))
        }
        _ => respond::full(bytes),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_by_method_and_path() {
        assert_eq!(Route::parse(&Method::POST, "/v1/messages"), Route::Messages);
        assert_eq!(
            Route::parse(&Method::GET, "/v1/messages"),
            Route::MethodNotAllowed(RouteGroup::Messages)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/v1/models/claude-x"),
            Route::Model("claude-x".into())
        );
        assert_eq!(
            Route::parse(&Method::POST, "/v1/messages/batches/b1/cancel"),
            Route::BatchCancel("b1".into())
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/v1/messages/batches/b1"),
            Route::BatchDelete("b1".into())
        );
        assert_eq!(Route::parse(&Method::GET, "/v2/nothing"), Route::NotFound);
    }
}
