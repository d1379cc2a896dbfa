//! The six `/v1/messages/batches*` endpoints with a store, wire-compatible with Anthropic's (the
//! simulator's messages and statuses): create, get, list (`limit` 1–1000, `before_id`,
//! `after_id`, newest first), cancel, delete (only once ended), results (JSONL, once ended).
//!
//! Called by the proxy after authentication, endpoint and model scopes and the body limit. A
//! batch is visible only to its owner ([`super::owner_of`]): another team's id is 404, exactly
//! like an unknown one. Every refusal is Anthropic's error envelope; nothing is stored for a
//! refused creation.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use rampart_api::ErrorType;
use rampart_api::error::ErrorEnvelope;
use rampart_store::StoreError;
use rampart_store::batches::{Batch, BatchMode, Cursor, ItemModels, NewBatch, NewBatchItem};
use serde_json::Value;

use super::{Batches, batch_object, new_batch_id, owner_of};
use crate::auth::Identity;
use crate::error::ProxyError;
use crate::proxy::AppState;
use crate::routes::Route;

/// The request header that picks a batch's execution mode.
pub const MODE_HEADER: &str = "x-rampart-batch-mode";

/// Largest upstream batch document read (a 1000-item list page is far below).
const DOC_LIMIT: usize = 16 * 1024 * 1024;
/// Result rows read per database page while streaming results.
const RESULTS_PAGE: u32 = 1000;

/// What the handler needs of the request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The route.
    pub route: Route,
    /// Method.
    pub method: &'a Method,
    /// The request's head.
    pub parts: &'a http::request::Parts,
    /// The caller.
    pub identity: &'a Identity,
    /// The body (creation only).
    pub body: Bytes,
    /// Request id.
    pub request_id: &'a str,
}

/// An error response in Anthropic's envelope.
pub(crate) fn error(
    status: StatusCode,
    kind: ErrorType,
    message: &str,
    request_id: &str,
) -> Response {
    let body = ErrorEnvelope::new(kind, message)
        .with_request_id(request_id)
        .to_json();
    json(status, body, request_id)
}

fn invalid(message: &str, request_id: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        ErrorType::InvalidRequestError,
        message,
        request_id,
    )
}

fn not_found(id: &str, request_id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorType::NotFoundError,
        &format!("message_batch: {id} not found"),
        request_id,
    )
}

fn internal(e: &StoreError, request_id: &str) -> Response {
    tracing::error!(error = %e, request_id, "batch store failure");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorType::ApiError,
        "Internal server error",
        request_id,
    )
}

fn json(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_ids(resp, request_id)
}

/// `request-id` and `x-request-id` on `resp`.
fn with_ids(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("request-id", v.clone());
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn object(b: &Batch, base: Option<&str>, request_id: &str) -> Response {
    let doc = serde_json::to_vec(&batch_object(b, base)).unwrap_or_default();
    json(StatusCode::OK, doc, request_id)
}

/// The path's batch id (`/v1/messages/batches/{id}[/…]`).
fn path_id(path: &str) -> &str {
    path.trim_start_matches("/v1/messages/batches/")
        .split('/')
        .next()
        .unwrap_or_default()
}

/// Serve one batch request. See the module docs.
pub async fn handle(state: &AppState, batches: &Arc<Batches>, req: Request<'_>) -> Response {
    let base = crate::proxy::public_base(&state.settings, &req.parts.headers);
    let rid = req.request_id;
    if req.route == Route::Batches && *req.method == Method::POST {
        return create(state, batches, &req, base.as_deref()).await;
    }
    if req.route == Route::Batches {
        return list(batches, &req, base.as_deref()).await;
    }
    let id = path_id(req.parts.uri.path()).to_owned();
    let batch = match batches.store.batches().get_batch(&id).await {
        Ok(b) if b.owner == owner_of(req.identity) => b,
        Ok(_) | Err(StoreError::NotFound) => return not_found(&id, rid),
        Err(e) => return internal(&e, rid),
    };
    match batch.mode {
        BatchMode::Local => local(batches, &req, batch, base.as_deref()).await,
        BatchMode::Upstream => upstream(state, batches, &req, batch, base.as_deref()).await,
    }
}

async fn local(batches: &Batches, req: &Request<'_>, b: Batch, base: Option<&str>) -> Response {
    let rid = req.request_id;
    let repo = batches.store.batches();
    match (req.route, req.method) {
        (Route::Batch, &Method::GET) => object(&b, base, rid),
        (Route::Batch, _) => {
            if b.processing_status != "ended" {
                return invalid(
                    &format!(
                        "Batch {} cannot be deleted while it is still processing. Cancel it first and wait for it to end.",
                        b.id
                    ),
                    rid,
                );
            }
            match repo.delete_batch(&b.id).await {
                Ok(()) => deleted(&b.id, rid),
                Err(StoreError::NotFound) => not_found(&b.id, rid),
                Err(e) => internal(&e, rid),
            }
        }
        (Route::BatchCancel, _) => {
            match repo
                .cancel_batch(&b.id, time::OffsetDateTime::now_utc())
                .await
            {
                Ok(c) => {
                    if c.processing_status == "ended" {
                        batches.budgets.release(&c.id);
                    }
                    object(&c, base, rid)
                }
                Err(e) => internal(&e, rid),
            }
        }
        _ => results(batches, &b, rid),
    }
}

fn deleted(id: &str, rid: &str) -> Response {
    let doc = serde_json::json!({"id": id, "type": "message_batch_deleted"});
    json(
        StatusCode::OK,
        serde_json::to_vec(&doc).unwrap_or_default(),
        rid,
    )
}

/// The JSONL results of an ended local batch, streamed from the store a page at a time.
fn results(batches: &Batches, b: &Batch, rid: &str) -> Response {
    if b.processing_status != "ended" {
        return invalid(
            &format!(
                "Batch {} has not finished processing; results are available once processing_status is 'ended'.",
                b.id
            ),
            rid,
        );
    }
    if b.archived_at.is_some() {
        return error(
            StatusCode::NOT_FOUND,
            ErrorType::NotFoundError,
            &format!(
                "The results of message_batch {} are no longer available (retention passed).",
                b.id
            ),
            rid,
        );
    }
    let store = batches.store.clone();
    let id = b.id.clone();
    let stream = futures_util::stream::unfold(Some(0u64), move |from| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let from = from?;
            match store.batches().batch_results(&id, from, RESULTS_PAGE).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|r| r.idx + 1);
                    let mut out = Vec::with_capacity(rows.len() * 256);
                    for r in rows {
                        let result = r
                            .result
                            .unwrap_or_else(|| r#"{"type":"expired"}"#.to_owned());
                        out.extend_from_slice(b"{\"custom_id\":");
                        out.extend_from_slice(
                            serde_json::to_string(&r.custom_id)
                                .unwrap_or_default()
                                .as_bytes(),
                        );
                        out.extend_from_slice(b",\"result\":");
                        out.extend_from_slice(result.as_bytes());
                        out.extend_from_slice(b"}\n");
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from(out)), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, batch = %id, "batch results read failed");
                    Some((
                        Err(std::io::Error::other("batch results read failed")),
                        None,
                    ))
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-jsonl"),
    );
    with_ids(resp, rid)
}

/// `limit`, `before_id`, `after_id`, as the API validates them.
fn page_query(query: Option<&str>) -> Result<(u32, Cursor), String> {
    let mut limit = 20u32;
    let mut cursor = Cursor::Start;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| "limit: Input should be a valid integer".to_owned())?;
                if n < 1 {
                    return Err("limit: Input should be greater than or equal to 1".to_owned());
                }
                if n > 1000 {
                    return Err("limit: Input should be less than or equal to 1000".to_owned());
                }
                limit = u32::try_from(n).unwrap_or(20);
            }
            "after_id" if !v.is_empty() => cursor = Cursor::After(v.to_owned()),
            "before_id" if !v.is_empty() => cursor = Cursor::Before(v.to_owned()),
            _ => {}
        }
    }
    Ok((limit, cursor))
}

async fn list(batches: &Batches, req: &Request<'_>, base: Option<&str>) -> Response {
    let rid = req.request_id;
    let (limit, cursor) = match page_query(req.parts.uri.query()) {
        Ok(q) => q,
        Err(m) => return invalid(&m, rid),
    };
    let owner = owner_of(req.identity);
    let page = match batches
        .store
        .batches()
        .list_batches(&owner, &cursor, limit)
        .await
    {
        Ok(p) => p,
        // An unknown (or someone else's) cursor gives an empty page, as the API does.
        Err(StoreError::NotFound) => rampart_store::batches::BatchPage {
            batches: Vec::new(),
            has_more: false,
        },
        Err(e) => return internal(&e, rid),
    };
    let data: Vec<_> = page.batches.iter().map(|b| batch_object(b, base)).collect();
    let doc = serde_json::json!({
        "data": data,
        "has_more": page.has_more,
        "first_id": page.batches.first().map(|b| b.id.clone()),
        "last_id": page.batches.last().map(|b| b.id.clone()),
    });
    json(
        StatusCode::OK,
        serde_json::to_vec(&doc).unwrap_or_default(),
        rid,
    )
}

/// A valid `custom_id`: 1–64 of `[a-zA-Z0-9_-]`.
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The items of a creation body, checked as the API checks them (params are validated when
/// they run: bad params become `errored` results).
fn parse_items(body: &[u8], max: u64) -> Result<Vec<(String, Value)>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !doc.is_object() {
        return Err("body: Input should be a valid dictionary".to_owned());
    }
    let requests = match doc.get("requests") {
        None | Some(Value::Null) => return Err("requests: Field required".to_owned()),
        Some(Value::Array(r)) => r,
        Some(_) => return Err("requests: Input should be a valid list".to_owned()),
    };
    if requests.is_empty() {
        return Err(
            "requests: List should have at least 1 item after validation, not 0".to_owned(),
        );
    }
    if requests.len() as u64 > max {
        return Err(format!(
            "requests: List should have at most {max} items after validation, not {}",
            requests.len()
        ));
    }
    let mut seen = HashSet::with_capacity(requests.len());
    let mut items = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if !r.is_object() {
            return Err(format!("requests.{i}: Input should be a valid dictionary"));
        }
        let custom_id = match r.get("custom_id") {
            Some(Value::String(s)) if valid_custom_id(s) => s.clone(),
            Some(Value::String(_)) => {
                return Err(format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                ));
            }
            None | Some(Value::Null) => {
                return Err(format!("requests.{i}.custom_id: Field required"));
            }
            Some(_) => {
                return Err(format!(
                    "requests.{i}.custom_id: Input should be a valid string"
                ));
            }
        };
        if !seen.insert(custom_id.clone()) {
            return Err(format!(
                "requests: custom_id values must be unique; '{custom_id}' is repeated"
            ));
        }
        let params = match r.get("params") {
            Some(p) if p.is_object() => p,
            None | Some(Value::Null) => return Err(format!("requests.{i}.params: Field required")),
            Some(_) => {
                return Err(format!(
                    "requests.{i}.params: Input should be a valid dictionary"
                ));
            }
        };
        items.push((custom_id, params.clone()));
    }
    Ok(items)
}

/// The model an item's params ask (as written, at most as long as a usage record keeps it).
fn asked_model(params: &Value) -> Option<&str> {
    let model = params.get("model")?.as_str()?;
    Some(
        model
            .char_indices()
            .nth(rampart_store::batches::MAX_MODEL_CHARS)
            .map_or(model, |(end, _)| &model[..end]),
    )
}

/// The worst-case cost of one item's params (0 without a model or prices).
fn worst_case(prices: &rampart_ledger::pricing::PriceTable, params: &Value, batch: bool) -> u64 {
    let Some(model) = params.get("model").and_then(Value::as_str) else {
        return 0;
    };
    let input = rampart_api::tokens::estimate_input_tokens(params);
    let output = params
        .get("max_tokens")
        .map_or(0, rampart_api::tokens::whole_tokens);
    prices.worst_case(model, input, output, batch)
}

fn header_mode(req: &Request<'_>) -> Result<Option<BatchMode>, String> {
    match req.parts.headers.get(MODE_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(BatchMode::parse)
            .map(Some)
            .ok_or_else(|| format!("{MODE_HEADER}: must be `local` or `upstream`")),
    }
}

async fn create(
    state: &AppState,
    batches: &Arc<Batches>,
    req: &Request<'_>,
    base: Option<&str>,
) -> Response {
    let rid = req.request_id;
    let header = match header_mode(req) {
        Ok(m) => m,
        Err(m) => return invalid(&m, rid),
    };
    let mode = batches.mode_for(header, req.identity.team_id);
    let items = match parse_items(&req.body, batches.settings.max_requests) {
        Ok(items) => items,
        Err(m) => return invalid(&m, rid),
    };
    let prices = &state.settings.prices;
    let discounted = mode == BatchMode::Upstream;
    let worst: Vec<u64> = items
        .iter()
        .map(|(_, p)| worst_case(prices, p, discounted))
        .collect();
    let total: u64 = worst.iter().fold(0, |a, w| a.saturating_add(*w));
    let reserved = match batches
        .budgets
        .reserve(req.identity.limits.as_ref(), total)
        .await
    {
        Ok(r) => r,
        Err(e) => return e.into_response_with(rid),
    };
    let now = rampart_store_now();
    let expires_at = now + batches.settings.expiry;
    let results_until = now + batches.settings.retention;
    let mut new = NewBatch {
        id: new_batch_id(),
        owner: owner_of(req.identity),
        team_id: req.identity.team_id,
        key_id: req.identity.key_id,
        user_id: req.identity.user_id,
        key_label: Some(req.identity.key_label.to_string()),
        mode,
        request_count: items.len() as u64,
        reserved_micro_usd: if reserved.is_some() { total } else { 0 },
        created_at: now,
        expires_at,
        results_until,
        items: Vec::new(),
        item_models: ItemModels::default(),
    };
    if mode == BatchMode::Upstream {
        // The upstream answers with the model that served each item; the one it asked is kept
        // here, stored with the batch's row, for the items' usage records.
        new.item_models = ItemModels::from_items(
            items
                .iter()
                .map(|(custom_id, params)| (custom_id.as_str(), asked_model(params))),
        );
        return create_upstream(state, batches, req, new, reserved, base).await;
    }
    new.items = items
        .into_iter()
        .zip(worst)
        .map(|((custom_id, params), worst_micro_usd)| NewBatchItem {
            custom_id,
            params: params.to_string(),
            worst_micro_usd,
        })
        .collect();
    match batches.store.batches().create_batch(&new).await {
        Ok(b) => {
            batches.budgets.hold(&b.id, reserved, total);
            batches.wake.notify_one();
            tracing::info!(batch = %b.id, items = b.request_count, mode = "local", "batch created");
            object(&b, base, rid)
        }
        Err(e) => internal(&e, rid),
    }
}

/// Now, at the store's precision.
fn rampart_store_now() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// Forward `req` to the upstream at `path` with `body`.
pub(crate) async fn call_upstream(
    state: &AppState,
    route: Route,
    method: Method,
    path: &str,
    headers: http::HeaderMap,
    body: Bytes,
    request_id: &str,
) -> Result<http::Response<crate::exchange::UpstreamBody<crate::upstream::ResponseBody>>, ProxyError>
{
    let mut headers = crate::proxy::upstream_headers(headers, request_id);
    headers.remove(MODE_HEADER);
    let call = crate::exchange::Call {
        route,
        method,
        path_and_query: http::uri::PathAndQuery::try_from(path)
            .map_err(|_| ProxyError::InvalidRequest("bad path".to_owned()))?,
        headers,
        body,
        model: None,
        model_span: None,
        max_tokens: None,
        scopes: None,
        request_id,
        arrived: tokio::time::Instant::now(),
    };
    state
        .upstreams
        .call(&call)
        .await
        .map(|d| d.response)
        .map_err(|f| f.error)
}

/// Read an upstream answer's status and (bounded) body.
pub(crate) async fn read_answer(
    resp: http::Response<crate::exchange::UpstreamBody<crate::upstream::ResponseBody>>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), ProxyError> {
    let (parts, body) = resp.into_parts();
    let bytes = http_body_util::Limited::new(body, DOC_LIMIT)
        .collect()
        .await
        .map_err(|_| ProxyError::UpstreamFailed)?
        .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

/// The upstream's answer, passed on as it came (status, content type, body), with every
/// `results_url` pointing at Rampart.
fn pass_on(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: Bytes,
    base: Option<&str>,
    rid: &str,
) -> Response {
    let body = match (status.is_success(), base) {
        (true, Some(base)) => match serde_json::from_slice::<Value>(&body) {
            Ok(mut doc) => {
                if let Some(items) = doc.get_mut("data").and_then(Value::as_array_mut) {
                    for item in items {
                        crate::batch_urls::fix(item, base);
                    }
                }
                crate::batch_urls::fix(&mut doc, base);
                Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
            }
            Err(_) => body,
        },
        _ => body,
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Some(v) = headers.get("retry-after") {
        h.insert(header::RETRY_AFTER, v.clone());
    }
    with_ids(resp, rid)
}

async fn create_upstream(
    state: &AppState,
    batches: &Arc<Batches>,
    req: &Request<'_>,
    mut new: NewBatch,
    reserved: Option<(Arc<rampart_limits::Policy>, rampart_limits::Ticket)>,
    base: Option<&str>,
) -> Response {
    let rid = req.request_id;
    let answer = match call_upstream(
        state,
        Route::Batches,
        Method::POST,
        "/v1/messages/batches",
        req.parts.headers.clone(),
        req.body.clone(),
        rid,
    )
    .await
    {
        Ok(r) => read_answer(r).await,
        Err(e) => Err(e),
    };
    let (status, headers, body) = match answer {
        Ok(a) => a,
        Err(e) => return e.into_response_with(rid),
    };
    if !status.is_success() {
        return pass_on(status, &headers, body, base, rid);
    }
    let Ok(doc) = serde_json::from_slice::<rampart_api::batches::MessageBatch>(&body) else {
        tracing::error!(
            request_id = rid,
            "the upstream's batch object could not be read"
        );
        return ProxyError::UpstreamFailed.into_response_with(rid);
    };
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    };
    new.id = doc.id.clone();
    if let Some(t) = parse(&doc.created_at) {
        new.created_at = t;
        new.results_until = t + batches.settings.retention;
    }
    if let Some(t) = parse(&doc.expires_at) {
        new.expires_at = t;
    }
    let total = new.reserved_micro_usd;
    match batches.store.batches().create_batch(&new).await {
        Ok(b) => {
            batches.budgets.hold(&b.id, reserved, total);
            tracing::info!(batch = %b.id, items = b.request_count, mode = "upstream", "batch created");
            pass_on(status, &headers, body, base, rid)
        }
        Err(e) => internal(&e, rid),
    }
}

async fn upstream(
    state: &AppState,
    batches: &Arc<Batches>,
    req: &Request<'_>,
    b: Batch,
    base: Option<&str>,
) -> Response {
    let rid = req.request_id;
    let path = req.parts.uri.path_and_query().map_or_else(
        || req.parts.uri.path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    if req.route == Route::Batch && *req.method == Method::DELETE && b.processing_status != "ended"
    {
        // Settle it first (its usage), so a deleted batch's items are never lost to the ledger.
        super::upstream::sync_one(state, batches, &b).await;
        match batches.store.batches().get_batch(&b.id).await {
            Ok(now) if now.processing_status == "ended" => {}
            Ok(_) => {
                return invalid(
                    &format!(
                        "Batch {} cannot be deleted while it is still processing. Cancel it first and wait for it to end.",
                        b.id
                    ),
                    rid,
                );
            }
            Err(e) => return internal(&e, rid),
        }
    }
    let resp = match call_upstream(
        state,
        req.route,
        req.method.clone(),
        &path,
        req.parts.headers.clone(),
        Bytes::new(),
        rid,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return e.into_response_with(rid),
    };
    if req.route == Route::BatchResults {
        // Streamed through untouched.
        let (parts, body) = resp.into_parts();
        let mut out = Response::new(Body::new(body));
        *out.status_mut() = parts.status;
        for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        return with_ids(out, rid);
    }
    let (status, headers, body) = match read_answer(resp).await {
        Ok(a) => a,
        Err(e) => return e.into_response_with(rid),
    };
    if status.is_success() {
        let repo = batches.store.batches();
        let done = match (req.route, req.method) {
            (Route::BatchCancel, _) => repo
                .cancel_batch(&b.id, time::OffsetDateTime::now_utc())
                .await
                .map(|_| ()),
            (Route::Batch, &Method::DELETE) => {
                batches.budgets.release(&b.id);
                repo.delete_batch(&b.id).await
            }
            (Route::Batch, _) if b.processing_status != "ended" && upstream_ended(&body) => {
                // The client is told it ended: settle it now (usage, counts, ended_at), so what
                // Rampart lists and bills agrees with what the client saw.
                super::upstream::sync_one(state, batches, &b).await;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, batch = %b.id, "batch row not updated after the upstream's answer");
        }
    }
    pass_on(status, &headers, body, base, rid)
}

/// Whether an upstream batch object says `ended`.
fn upstream_ended(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v["processing_status"] == "ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_bodies_are_checked_like_the_api_does() {
        let max = 3;
        let ok = br#"{"requests":[{"custom_id":"a","params":{"model":"m"}},{"custom_id":"b-2","params":{}}]}"#;
        assert_eq!(parse_items(ok, max).unwrap().len(), 2);
        for (body, want) in [
            (&br#"{}"#[..], "requests: Field required"),
            (br#"{"requests":{}}"#, "requests: Input should be a valid list"),
            (br#"{"requests":[]}"#, "at least 1 item"),
            (br#"{"requests":[{"params":{}}]}"#, "requests.0.custom_id: Field required"),
            (br#"{"requests":[{"custom_id":"a b","params":{}}]}"#, "should match pattern"),
            (br#"{"requests":[{"custom_id":"a"}]}"#, "requests.0.params: Field required"),
            (
                br#"{"requests":[{"custom_id":"a","params":[]}]}"#,
                "requests.0.params: Input should be a valid dictionary",
            ),
            (
                br#"{"requests":[{"custom_id":"a","params":[1]}]}"#,
                "requests.0.params: Input should be a valid dictionary",
            ),
            (br#"{"requests":[{"custom_id":7,"params":{}}]}"#, "custom_id: Input should be a valid string"),
            (br#"{"requests":[1]}"#, "requests.0: Input should be a valid dictionary"),
            (
                br#"{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}"#,
                "'a' is repeated",
            ),
            (
                br#"{"requests":[{"custom_id":"a","params":{}},{"custom_id":"b","params":{}},{"custom_id":"c","params":{}},{"custom_id":"d","params":{}}]}"#,
                "at most 3 items",
            ),
            (b"[1]", "body: Input should be a valid dictionary"),
            (b"{", "invalid JSON"),
        ] {
            let e = parse_items(body, max).unwrap_err();
            assert!(e.contains(want), "{e} / {want}");
        }
    }

    #[test]
    fn an_items_model_is_kept_as_written_up_to_a_usage_records_length() {
        let asked = |params: Value| asked_model(&params).map(str::to_owned);
        assert_eq!(
            asked(serde_json::json!({"model": "claude-haiku-4-5"})).as_deref(),
            Some("claude-haiku-4-5")
        );
        assert_eq!(asked(serde_json::json!({"model": 7})), None);
        assert_eq!(asked(serde_json::json!({})), None);
        // Longer would not be stored, and the batch with it (after the upstream took it).
        let long = "é".repeat(rampart_store::batches::MAX_MODEL_CHARS + 1);
        assert_eq!(
            asked(serde_json::json!({ "model": long })),
            Some("é".repeat(rampart_store::batches::MAX_MODEL_CHARS))
        );
    }

    #[test]
    fn list_queries_follow_the_api_bounds() {
        assert_eq!(page_query(None).unwrap(), (20, Cursor::Start));
        assert_eq!(
            page_query(Some("limit=5&after_id=msgbatch_x")).unwrap(),
            (5, Cursor::After("msgbatch_x".to_owned()))
        );
        assert_eq!(
            page_query(Some("before_id=b")).unwrap().1,
            Cursor::Before("b".to_owned())
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-3"] {
            assert!(page_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
