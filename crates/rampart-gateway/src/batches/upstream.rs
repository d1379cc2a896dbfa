//! Upstream mode: poll the upstream for batches Rampart forwarded, and when one has ended, price
//! every result line at batch rates and write the usage records (key, team, user of the batch)
//! in the transaction that marks it `ended` with its final counts
//! ([`rampart_store::BatchRepository::end_upstream_batch`]). Each record names the model its item
//! asked, kept with the batch at creation (read once per results pass), and the model that
//! answered. A batch the upstream no longer knows ends with its unfinished requests counted as
//! expired.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use rampart_store::UsageRecord;
use rampart_store::batches::{Batch, ItemModels, MAX_MODEL_CHARS, UpstreamState, item_usage_id};
use serde_json::Value;

use super::Batches;
use super::runner::ITEM_ENDPOINT;
use crate::error::ProxyError;
use crate::proxy::AppState;
use crate::routes::Route;

/// Open batches looked at per poll.
const PER_POLL: u32 = 50;

/// The upstream mode's poller.
#[derive(Debug)]
pub struct Syncer {
    state: Arc<AppState>,
    batches: Arc<Batches>,
}

impl Syncer {
    /// A poller for `batches` calling through `state`'s upstreams.
    #[must_use]
    pub fn new(state: Arc<AppState>, batches: Arc<Batches>) -> Self {
        Self { state, batches }
    }

    /// Poll every `batches.poll_interval_ms` until `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.batches.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            match self
                .batches
                .store
                .batches()
                .open_upstream_batches(PER_POLL)
                .await
            {
                Ok(open) => {
                    for b in open {
                        sync_one(&self.state, &self.batches, &b).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "listing open upstream batches failed"),
            }
        }
    }
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    h
}

/// `GET path` on the upstream, as Rampart itself (no client headers).
async fn get(
    state: &AppState,
    route: Route,
    path: &str,
) -> Result<http::Response<crate::exchange::UpstreamBody<crate::upstream::ResponseBody>>, ProxyError>
{
    let rid = format!("req_rmp_sync_{}", uuid::Uuid::new_v4().simple());
    super::api::call_upstream(
        state,
        route,
        Method::GET,
        path,
        headers(),
        Bytes::new(),
        &rid,
    )
    .await
}

fn parse_time(s: Option<&str>) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s?, &time::format_description::well_known::Rfc3339).ok()
}

fn state_of(doc: &Value) -> UpstreamState {
    let c = &doc["request_counts"];
    let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
    UpstreamState {
        processing_status: doc["processing_status"]
            .as_str()
            .unwrap_or("in_progress")
            .to_owned(),
        succeeded: n("succeeded"),
        errored: n("errored"),
        canceled: n("canceled"),
        expired: n("expired"),
        cancel_initiated_at: parse_time(doc["cancel_initiated_at"].as_str()),
    }
}

/// Look at one upstream batch now; end it (with its usage) when the upstream says it ended.
pub(crate) async fn sync_one(state: &AppState, batches: &Batches, b: &Batch) {
    let path = format!("/v1/messages/batches/{}", b.id);
    let answer = match get(state, Route::Batch, &path).await {
        Ok(r) => super::api::read_answer(r).await,
        Err(e) => Err(e),
    };
    let now = time::OffsetDateTime::now_utc();
    let repo = batches.store.batches();
    let (status, _, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(batch = %b.id, error = %e, "polling an upstream batch failed");
            return;
        }
    };
    if status == StatusCode::NOT_FOUND {
        let gone = UpstreamState {
            processing_status: "ended".to_owned(),
            succeeded: b.succeeded,
            errored: b.errored,
            canceled: b.canceled,
            expired: b
                .request_count
                .saturating_sub(b.succeeded + b.errored + b.canceled),
            cancel_initiated_at: None,
        };
        tracing::warn!(batch = %b.id, "the upstream no longer knows this batch; ending it");
        if let Err(e) = repo.end_upstream_batch(&b.id, &gone, &[], now).await {
            tracing::error!(batch = %b.id, error = %e, "ending an upstream batch failed");
        }
        batches.budgets.release(&b.id);
        return;
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        tracing::warn!(batch = %b.id, %status, "the upstream's batch object could not be read");
        return;
    };
    if !status.is_success() {
        return;
    }
    let upstream = state_of(&doc);
    if upstream.processing_status != "ended" {
        if let Err(e) = repo.sync_upstream_batch(&b.id, &upstream, now).await {
            tracing::error!(batch = %b.id, error = %e, "updating an upstream batch failed");
        }
        return;
    }
    // Once per results pass: what each item asked, kept at creation.
    let asked = match repo.item_models(&b.id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(batch = %b.id, error = %e, "reading an upstream batch's item models failed");
            return;
        }
    };
    let records = match results(state, b, &asked).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(batch = %b.id, error = %e, "reading an upstream batch's results failed");
            return;
        }
    };
    let cost: u64 = records.iter().map(|r| r.cost_micro_usd).sum();
    match repo
        .end_upstream_batch(&b.id, &upstream, &records, now)
        .await
    {
        Ok(true) => {
            let worst = b.reserved_micro_usd;
            batches
                .budgets
                .settle_item(&b.id, b.key_id, worst, cost)
                .await;
            batches.budgets.release(&b.id);
            tracing::info!(batch = %b.id, records = records.len(), cost_micro_usd = cost, "upstream batch ended");
        }
        Ok(false) => {}
        Err(e) => tracing::error!(batch = %b.id, error = %e, "ending an upstream batch failed"),
    }
}

/// The usage records of an ended upstream batch's result lines (succeeded and errored items; the
/// canceled and expired never ran), naming the model each item asked as `asked` keeps it.
async fn results(
    state: &AppState,
    b: &Batch,
    asked: &ItemModels,
) -> Result<Vec<UsageRecord>, String> {
    let path = format!("/v1/messages/batches/{}/results", b.id);
    let resp = get(state, Route::BatchResults, &path)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("results answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut line_no: u64 = 0;
    let at = time::OffsetDateTime::now_utc();
    loop {
        let frame = match body.frame().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Some(r) = record_of(state, b, asked, &line, line_no, at) {
                    out.push(r);
                }
                line_no += 1;
            }
        }
    }
    if !buf.iter().all(u8::is_ascii_whitespace)
        && let Some(r) = record_of(state, b, asked, &buf, line_no, at)
    {
        out.push(r);
    }
    Ok(out)
}

/// One result line's usage record: the model asked is the one kept for its `custom_id` (the
/// answering model when none was kept: a batch created before they were kept, or an item that
/// named none), the model served the one that answered (none for an errored item).
fn record_of(
    state: &AppState,
    b: &Batch,
    asked: &ItemModels,
    line: &[u8],
    n: u64,
    at: time::OffsetDateTime,
) -> Option<UsageRecord> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let result = v.get("result")?;
    let kind = result.get("type")?.as_str()?;
    let (status, message, error_type) = match kind {
        "succeeded" => (200, result.get("message"), None),
        "errored" => {
            let t = result
                .pointer("/error/error/type")
                .and_then(Value::as_str)
                .unwrap_or("api_error")
                .to_owned();
            let status = serde_json::from_value::<rampart_api::ErrorType>(Value::String(t.clone()))
                .map_or(500, rampart_api::ErrorType::status);
            (status, None, Some(t))
        }
        _ => return None,
    };
    let tokens = message.map_or_else(
        rampart_ledger::pricing::TokenUsage::default,
        super::runner::tokens_of,
    );
    let model = message.and_then(|m| m.get("model")).and_then(Value::as_str);
    let prices = &state.settings.prices;
    let (cost, priced) = match model {
        Some(m) => {
            let (p, known) = prices.lookup(m);
            if known == rampart_ledger::pricing::Known::Default {
                // Priced at the default: counted and reported as the proxy's requests are.
                rampart_ledger::pricing::note_unknown_model(m);
            }
            (
                prices.cost_at(&p, &tokens, true),
                known == rampart_ledger::pricing::Known::Listed,
            )
        }
        None => (0, true),
    };
    let (w5, w1) = tokens.cache_writes();
    let custom_id = v.get("custom_id").and_then(Value::as_str).unwrap_or("");
    // `""` is no item's id: a line without one has no kept model.
    let requested = (!custom_id.is_empty())
        .then(|| asked.asked(custom_id))
        .flatten()
        .or(model);
    let name = |m: &str| m.chars().take(MAX_MODEL_CHARS).collect::<String>();
    Some(UsageRecord {
        id: item_usage_id(&b.id, n),
        at,
        request_id: format!(
            "{}:{}",
            b.id,
            custom_id.chars().take(64).collect::<String>()
        ),
        key_id: b.key_id,
        team_id: b.team_id,
        user_id: b.user_id,
        key_label: b.key_label.clone(),
        endpoint: ITEM_ENDPOINT.to_owned(),
        model_requested: requested.map(name),
        model_served: model.map(name),
        status,
        error_type,
        input_tokens: tokens.input_tokens,
        output_tokens: tokens.output_tokens,
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1,
        cache_read_tokens: tokens.cache_read_input_tokens,
        cost_micro_usd: cost,
        priced,
        latency_us: 0,
        upstream_latency_us: None,
        upstream_attempts: 1,
        streamed: false,
        cache_hit: false,
        client_aborted: false,
        saved_micro_usd: 0,
    })
}
