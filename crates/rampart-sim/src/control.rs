//! The `/_sim/` control plane (no API key needed): faults, counters, reset and the request log.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::error::ApiError;
use crate::faults::FaultRequest;
use crate::models::query_pairs;
use crate::respond::{self, SimBody};
use crate::state::{LOG_CAPACITY, Sim};

/// Body limit of control requests.
const CONTROL_LIMIT: usize = 1024 * 1024;

/// Serves a `/_sim/` request.
pub(crate) async fn handle(
    sim: &Sim,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/');
    let result = match (&parts.method, path) {
        (&Method::POST, "/_sim/faults") => add_fault(sim, body).await,
        (&Method::GET, "/_sim/faults") => {
            Ok(respond::json_value(StatusCode::OK, &sim.faults.list()))
        }
        (&Method::DELETE, "/_sim/faults") => {
            let cleared = sim.faults.list().len();
            sim.faults.clear();
            Ok(respond::json_value(
                StatusCode::OK,
                &json!({"cleared": cleared}),
            ))
        }
        (&Method::GET, "/_sim/counters") => Ok(respond::json_value(
            StatusCode::OK,
            &sim.counters.snapshot(),
        )),
        (&Method::POST, "/_sim/reset") => {
            sim.reset();
            Ok(respond::json_value(StatusCode::OK, &json!({"reset": true})))
        }
        (&Method::GET, "/_sim/requests") => {
            let limit = query_pairs(parts.uri.query())
                .find(|(k, _)| k == "limit")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(20)
                .min(LOG_CAPACITY);
            Ok(respond::json_value(StatusCode::OK, &sim.log.last(limit)))
        }
        _ => Err(ApiError::not_found("Not Found")),
    };
    result.unwrap_or_else(|e| respond::error(&e, request_id))
}

async fn add_fault(sim: &Sim, body: Incoming) -> Result<Response<SimBody>, ApiError> {
    let bytes = crate::router::read_body(body, CONTROL_LIMIT).await?;
    let req: FaultRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("invalid fault: {e}")))?;
    let fault = sim.faults.add(req)?;
    Ok(respond::json_value(
        StatusCode::OK,
        &json!({"id": fault.id, "kind": fault.kind, "remaining": fault.remaining}),
    ))
}
