//! The local queue's workers: claim, run, settle — and the sweeper (expiry, retention).
//!
//! One task per instance ([`Runner::run`], stopped by its shutdown signal):
//!
//! 1. **Claim** when there is room (at most `batches.workers` items in flight): ready items are
//!    claimed with a lease (`batches.lease_secs`), fairly across teams (round robin, each team
//!    at most `batches.team_concurrency` running items over all instances). It claims again as
//!    soon as items settle, when a local batch is created here, and every `claim_interval_ms`.
//! 2. **Pace** each claimed item under the per-minute limits of its batch's key and team
//!    ([`super::pacing`]): one with no room is queued again until they free up, its attempt
//!    given back.
//! 3. **Run** each admitted item as its own task: a `POST /v1/messages` through the upstream pool
//!    (routing, breakers and retries of the pool apply), the answer classified by
//!    [`crate::classify`]: success → `succeeded`; a client error → `errored`; a retryable
//!    failure → queued again after a backoff (`backoff_base_ms` doubling, with jitter, at least
//!    the upstream's `retry-after`), or `errored` with a dead letter once `max_attempts` ran.
//! 4. **Settle** finished attempts in groups, each group in one transaction with the items'
//!    usage records and their batches' counts ([`rampart_store::BatchRepository::complete_items`]);
//!    a failed commit is retried, the claims' leases kept alive meanwhile.
//! 5. **Keep leases** of items in flight alive every third of the lease.
//! 6. **Sweep** every second: expire unfinished items of batches past their expiry; every
//!    minute, remove the results of batches past their retention.
//!
//! On shutdown it claims nothing more, lets the items in flight finish and settles them (up to
//! the grace period); whatever is left is claimable again once its lease lapses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rampart_api::{ErrorEnvelope, ErrorType};
use rampart_ledger::pricing::TokenUsage;
use rampart_store::UsageRecord;
use rampart_store::batches::{ClaimOptions, ClaimedItem, Completion, Outcome, item_run_usage_id};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pacing::{Admitted, Pace, Pacer, Spent, spread};
use super::{Batches, metrics};
use crate::classify::{Observed, classify};
use crate::proxy::AppState;
use crate::routes::Route;

/// Most completions settled in one transaction.
const SETTLE_GROUP: usize = 512;
/// How long finished items wait for others to share their settling transaction.
const GATHER: Duration = Duration::from_millis(2);
/// The endpoint usage records of batch items carry.
pub const ITEM_ENDPOINT: &str = "/v1/messages/batches";

/// Most paused batches a claim skips (the bound parameters of its statement).
const MAX_SKIPPED: usize = 256;

/// Held batch reservations looked up per sweep pass (every ~5 s), so a runner holding many
/// open batches spends a bounded time on them before claiming again.
const HELD_CHECKS: usize = 32;

/// The local queue's worker task. See the module docs.
#[derive(Debug)]
pub struct Runner {
    state: Arc<AppState>,
    batches: Arc<Batches>,
}

/// A finished attempt on its way to the store, with what budgets need once it is applied.
#[derive(Debug)]
struct Finished {
    completion: Completion,
    key_id: Option<uuid::Uuid>,
    worst: u64,
    cost: u64,
    label: &'static str,
    /// Deferred: claim nothing more of its batch here before this.
    pause: Option<Instant>,
}

impl Runner {
    /// A runner for `batches` calling through `state`'s upstreams.
    #[must_use]
    pub fn new(state: Arc<AppState>, batches: Arc<Batches>) -> Self {
        Self { state, batches }
    }

    /// Run until `shutdown`, then drain (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let settings = self.batches.settings.clone();
        let workers = settings.workers as usize;
        let bite = (workers / 4).max(1);
        let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
        let mut in_flight: HashMap<(String, u64), u32> = HashMap::new();
        let mut pending: Vec<Finished> = Vec::new();
        let mut after_team: Option<String> = None;
        // Batches whose key had no room under its per-minute limits, until when: not claimed
        // meanwhile, so a large batch of a limited key is not claimed and deferred over and
        // over while it waits (one bite per pause at most).
        let mut paused: HashMap<String, Instant> = HashMap::new();
        let mut claim_due = true;
        let mut claim_tick = tokio::time::interval(settings.claim_interval);
        let mut lease_tick = tokio::time::interval(settings.lease / 3);
        let mut sweep_tick = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut claim_tick, &mut lease_tick, &mut sweep_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut sweeps: u64 = 0;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stop_at: Option<Instant> = None;
        loop {
            // Claim in bites of at least a quarter of the slots (fewer, larger transactions),
            // unless nothing is in flight.
            let room = workers.saturating_sub(in_flight.len());
            if stop_at.is_none() && claim_due && room > 0 && (room >= bite || in_flight.is_empty())
            {
                claim_due = false;
                let now = Instant::now();
                paused.retain(|_, until| *until > now);
                let options = ClaimOptions {
                    limit: u32::try_from(room).unwrap_or(u32::MAX),
                    per_team: settings.team_concurrency,
                    lease: lease_of(settings.lease),
                    now: time::OffsetDateTime::now_utc(),
                    after_team: after_team.clone(),
                    skip_batches: paused.keys().take(MAX_SKIPPED).cloned().collect(),
                };
                match self.batches.store.batches().claim_items(&options).await {
                    Ok(items) => {
                        if items.len() == room {
                            claim_due = true;
                        }
                        if let Some(last) = items.last() {
                            after_team = Some(last.team_key.clone());
                        }
                        for item in items {
                            if item.maybe_duplicate {
                                metrics::maybe_duplicate();
                                tracing::warn!(
                                    batch = %item.batch_id,
                                    custom_id = %item.custom_id,
                                    attempt = item.attempt,
                                    "batch item claimed again after a lapsed lease: its upstream call may have run twice (charged once)"
                                );
                            }
                            in_flight.insert((item.batch_id.clone(), item.idx), item.attempt);
                            let (state, batches, tx) =
                                (self.state.clone(), self.batches.clone(), tx.clone());
                            tokio::spawn(async move {
                                let done = execute(&state, &batches, item).await;
                                let _ = tx.send(done);
                            });
                        }
                        metrics::in_flight(in_flight.len());
                    }
                    Err(e) => tracing::error!(error = %e, "claiming batch items failed"),
                }
            }
            if stop_at.is_some_and(|t| in_flight.is_empty() || Instant::now() >= t) {
                break;
            }
            tokio::select! {
                Some(first) = rx.recv() => {
                    pending.push(first);
                    // Gather what finishes within a moment: one transaction settles them all.
                    let gather = Instant::now() + GATHER;
                    while pending.len() < SETTLE_GROUP.min(bite.max(1) * 2) {
                        match tokio::time::timeout_at(gather, rx.recv()).await {
                            Ok(Some(f)) => pending.push(f),
                            _ => break,
                        }
                    }
                    for f in &pending {
                        if let Some(until) = f.pause {
                            let at = paused.entry(f.completion.batch_id.clone()).or_insert(until);
                            *at = (*at).max(until);
                        }
                    }
                    if self.settle(&mut pending, &mut in_flight).await {
                        claim_due = true;
                    }
                    metrics::in_flight(in_flight.len());
                }
                _ = claim_tick.tick() => {
                    claim_due = true;
                    if !pending.is_empty() {
                        self.settle(&mut pending, &mut in_flight).await;
                    }
                }
                () = self.batches.wake.notified() => claim_due = true,
                _ = lease_tick.tick() => {
                    let claims: Vec<(String, u64, u32)> = in_flight
                        .iter()
                        .map(|((b, i), a)| (b.clone(), *i, *a))
                        .collect();
                    let until = time::OffsetDateTime::now_utc() + lease_of(settings.lease);
                    if let Err(e) = self.batches.store.batches().extend_leases(&claims, until).await {
                        tracing::error!(error = %e, "extending batch item leases failed");
                    }
                }
                _ = sweep_tick.tick() => {
                    sweeps += 1;
                    self.sweep(sweeps % 60 == 1, (sweeps % 5 == 1).then_some(sweeps / 5)).await;
                }
                () = &mut shutdown, if stop_at.is_none() => {
                    stop_at = Some(Instant::now() + self.state.settings.shutdown_grace);
                    tracing::info!(in_flight = in_flight.len(), "batch runner stopping: settling the items in flight");
                }
                () = tokio::time::sleep(Duration::from_millis(100)), if stop_at.is_some() => {}
            }
        }
        if !pending.is_empty() {
            self.settle(&mut pending, &mut in_flight).await;
        }
        tracing::info!(left = in_flight.len(), "batch runner stopped");
    }

    /// Write `pending` in one transaction; on success drop them from `in_flight` and settle
    /// budgets. Returns whether anything was written.
    async fn settle(
        &self,
        pending: &mut Vec<Finished>,
        in_flight: &mut HashMap<(String, u64), u32>,
    ) -> bool {
        let group: Vec<Completion> = pending.iter().map(|f| f.completion.clone()).collect();
        let now = time::OffsetDateTime::now_utc();
        let done = match self
            .batches
            .store
            .batches()
            .complete_items(&group, now)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, items = group.len(), "settling batch items failed; retrying");
                return false;
            }
        };
        for (f, applied) in pending.drain(..).zip(done.applied) {
            let c = &f.completion;
            in_flight.remove(&(c.batch_id.clone(), c.idx));
            if !applied {
                metrics::item("superseded");
                continue;
            }
            metrics::item(f.label);
            // A replayed item was charged on its own reservation (worst and cost 0 here).
            if c.usage.is_some() && (f.worst > 0 || f.cost > 0) {
                self.batches
                    .budgets
                    .settle_item(&c.batch_id, f.key_id, f.worst, f.cost)
                    .await;
            }
        }
        for id in done.ended {
            self.batches.budgets.release(&id);
            tracing::info!(batch = %id, "batch ended");
        }
        true
    }

    /// `held`: the number of this pass over the reservations held here, when it is time for one.
    async fn sweep(&self, archive: bool, held: Option<u64>) {
        let now = time::OffsetDateTime::now_utc();
        let repo = self.batches.store.batches();
        match repo.expire_batches(now).await {
            Ok(ended) => {
                for id in ended {
                    self.batches.budgets.release(&id);
                    tracing::info!(batch = %id, "batch expired");
                }
            }
            Err(e) => tracing::error!(error = %e, "expiring batches failed"),
        }
        // Reservations held here for batches another instance ended (or deleted): give them back.
        // At most HELD_CHECKS lookups a pass, in turn, however many batches are held.
        if let Some(pass) = held {
            let mut ids = self.batches.budgets.held();
            ids.sort_unstable();
            let n = ids.len().min(HELD_CHECKS);
            let start = usize::try_from(pass)
                .unwrap_or(0)
                .wrapping_mul(HELD_CHECKS)
                .checked_rem(ids.len())
                .unwrap_or(0);
            for id in ids.iter().cycle().skip(start).take(n) {
                match repo.get_batch(id).await {
                    Ok(b) if b.processing_status != "ended" => {}
                    Ok(_) | Err(rampart_store::StoreError::NotFound) => {
                        self.batches.budgets.release(id);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, batch = %id, "checking a held batch failed")
                    }
                }
            }
        }
        if archive {
            match repo.archive_batches(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(batches = n, "batch results past retention removed"),
                Err(e) => tracing::error!(error = %e, "removing old batch results failed"),
            }
        }
    }
}

fn lease_of(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MINUTE)
}

/// The retry delay after `attempt` (1-based): `base · 2^(attempt−1)` capped at `max`, minus up
/// to a quarter of jitter, and never shorter than the upstream's `retry-after`.
#[must_use]
pub fn backoff(
    base: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let jitter: f64 = rand::random::<f64>() * 0.25;
    let d = capped.mul_f64(1.0 - jitter);
    retry_after.map_or(d, |r| d.max(r.min(max)))
}

/// The usage a Messages response reports.
pub(crate) fn tokens_of(message: &Value) -> TokenUsage {
    let u = message.get("usage");
    let n = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let split = |k: &str| {
        u.and_then(|u| u.get("cache_creation"))
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
    };
    TokenUsage {
        input_tokens: n("input_tokens").unwrap_or(0),
        output_tokens: n("output_tokens").unwrap_or(0),
        cache_creation_input_tokens: n("cache_creation_input_tokens").unwrap_or(0),
        cache_read_input_tokens: n("cache_read_input_tokens").unwrap_or(0),
        cache_creation_5m: split("ephemeral_5m_input_tokens"),
        cache_creation_1h: split("ephemeral_1h_input_tokens"),
    }
}

/// The error envelope of an error answer (the upstream's own when it is one), without its
/// request id.
fn envelope_of(status: StatusCode, body: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && v.get("type").and_then(Value::as_str) == Some("error")
        && v.get("error").is_some_and(Value::is_object)
    {
        return serde_json::json!({"type": "error", "error": v["error"]});
    }
    let kind = match status.as_u16() {
        400 => ErrorType::InvalidRequestError,
        401 => ErrorType::AuthenticationError,
        403 => ErrorType::PermissionError,
        404 => ErrorType::NotFoundError,
        413 => ErrorType::RequestTooLarge,
        429 => ErrorType::RateLimitError,
        529 => ErrorType::OverloadedError,
        504 => ErrorType::TimeoutError,
        _ => ErrorType::ApiError,
    };
    let message = status.canonical_reason().unwrap_or("upstream error");
    serde_json::from_slice(&ErrorEnvelope::new(kind, message).to_json()).unwrap_or(Value::Null)
}

/// What one attempt produced before it is recorded.
struct Answer {
    status: StatusCode,
    /// The message (success) or the error envelope.
    doc: Value,
    retryable: bool,
    retry_after: Option<Duration>,
    upstream_latency: Option<Duration>,
    /// The upstream may have worked on it without its answer being read (no answer, or one
    /// cut off).
    unread: bool,
}

fn refused(kind: ErrorType, message: &str) -> Answer {
    let doc =
        serde_json::from_slice(&ErrorEnvelope::new(kind, message).to_json()).unwrap_or(Value::Null);
    Answer {
        status: StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::BAD_REQUEST),
        doc,
        retryable: false,
        retry_after: None,
        upstream_latency: None,
        unread: false,
    }
}

async fn attempt(state: &AppState, item: &ClaimedItem, request_id: &str) -> Answer {
    let body = Bytes::from(item.params.clone());
    let peeked = match crate::peek::peek(&body) {
        Ok(p) => p,
        Err(e) => return refused(ErrorType::InvalidRequestError, &e.to_string()),
    };
    if peeked.stream {
        return refused(
            ErrorType::InvalidRequestError,
            "stream: batch requests cannot be streamed",
        );
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    let headers = crate::proxy::upstream_headers(headers, request_id);
    let call = crate::exchange::Call {
        route: Route::Messages,
        method: Method::POST,
        path_and_query: http::uri::PathAndQuery::from_static("/v1/messages"),
        headers,
        body,
        model: peeked.model.as_deref(),
        model_span: peeked.model_span.clone(),
        max_tokens: peeked.max_tokens,
        scopes: None,
        request_id,
        arrived: Instant::now(),
    };
    let delivered = match state.upstreams.call(&call).await {
        Ok(d) => d,
        Err(failed) => {
            let (kind, status) = failed.error.kind_and_status();
            let outcome = classify(Observed::Response(status, &HeaderMap::new()));
            let mut a = refused(kind, &failed.error.to_string());
            a.status = status;
            a.retryable = failed.error.is_upstream_failure() || outcome.class.retryable();
            a.unread = failed.unanswered;
            return a;
        }
    };
    let latency = delivered.headers_at - delivered.sent_at;
    let head_ok = delivered.response.status().is_success();
    let (status, headers, bytes) = match super::api::read_answer(delivered.response).await {
        Ok(a) => a,
        Err(_) => {
            let mut a = refused(ErrorType::ApiError, "the upstream's answer broke off");
            a.status = StatusCode::BAD_GATEWAY;
            a.retryable = true;
            // A message cut off: the upstream generated it whole before sending it.
            a.unread = head_ok;
            return a;
        }
    };
    if status.is_success() {
        return match serde_json::from_slice::<Value>(&bytes) {
            Ok(doc) if doc.is_object() => Answer {
                status,
                doc,
                retryable: false,
                retry_after: None,
                upstream_latency: Some(latency),
                unread: false,
            },
            _ => {
                let mut a = refused(
                    ErrorType::ApiError,
                    "the upstream's answer was not a message",
                );
                a.status = StatusCode::BAD_GATEWAY;
                a.retryable = true;
                a.unread = true;
                a
            }
        };
    }
    let outcome = classify(Observed::Response(status, &headers));
    Answer {
        status,
        doc: envelope_of(status, &bytes),
        retryable: outcome.class.retryable(),
        retry_after: outcome.retry_after,
        upstream_latency: Some(latency),
        unread: false,
    }
}

/// Run one claimed item and say how it ended. See the module docs.
async fn execute(state: &AppState, batches: &Batches, item: ClaimedItem) -> Finished {
    let started = Instant::now();
    let at = time::OffsetDateTime::now_utc();
    let usage_id = item_run_usage_id(&item.batch_id, item.idx, item.replays);
    let request_id = format!("req_batch_{}", usage_id.simple());
    let admitted = match batches
        .pacer
        .admit(item.key_id, item.params.as_bytes(), item.replays > 0)
        .await
    {
        Pace::Go(admitted) => admitted,
        Pace::Wait(wait) => return deferred(item, at + lease_of(spread(wait)), wait),
    };
    let answer = attempt(state, &item, &request_id).await;
    let answered = answer.status.is_success().then(|| tokens_of(&answer.doc));
    let settings = &batches.settings;
    let last = item.attempt >= settings.max_attempts;
    let (outcome, label) = if answer.status.is_success() {
        let result = format!(r#"{{"type":"succeeded","message":{}}}"#, answer.doc);
        (Outcome::Succeeded(result), "succeeded")
    } else {
        let result = format!(r#"{{"type":"errored","error":{}}}"#, answer.doc);
        match (answer.retryable, last) {
            (false, _) => (Outcome::Errored(result), "errored"),
            (true, false) => {
                let wait = backoff(
                    settings.backoff_base,
                    settings.backoff_max,
                    item.attempt,
                    answer.retry_after,
                );
                (
                    Outcome::Retry {
                        not_before: at + lease_of(wait),
                        error: answer.doc.to_string(),
                    },
                    "retried",
                )
            }
            (true, true) => (
                Outcome::DeadLetter {
                    result,
                    status: Some(answer.status.as_u16()),
                    error: answer.doc.to_string(),
                },
                "dead_lettered",
            ),
        }
    };
    let params: Value = serde_json::from_str(&item.params).unwrap_or(Value::Null);
    let requested = params.get("model").and_then(Value::as_str);
    let (usage, cost) = if matches!(outcome, Outcome::Retry { .. }) {
        (None, 0)
    } else {
        let succeeded = answered.is_some();
        let tokens = answered.unwrap_or_default();
        let served = succeeded
            .then(|| answer.doc.get("model").and_then(Value::as_str))
            .flatten();
        let prices = &state.settings.prices;
        let (cost, priced) = match served.or(requested) {
            Some(m) if tokens != TokenUsage::default() => {
                let (p, known) = prices.lookup(m);
                if known == rampart_ledger::pricing::Known::Default {
                    // Priced at the default: counted and reported as the proxy's requests are.
                    rampart_ledger::pricing::note_unknown_model(m);
                }
                (
                    prices.cost_at(&p, &tokens, false),
                    known == rampart_ledger::pricing::Known::Listed,
                )
            }
            _ => (0, true),
        };
        let (w5, w1) = tokens.cache_writes();
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let error_type = (!succeeded)
            .then(|| {
                answer
                    .doc
                    .get("error")
                    .and_then(|e| e.get("type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .flatten();
        let record = UsageRecord {
            id: usage_id,
            at,
            request_id: request_id.clone(),
            key_id: item.key_id,
            team_id: item.team_id,
            user_id: item.user_id,
            key_label: item.key_label.clone(),
            endpoint: ITEM_ENDPOINT.to_owned(),
            model_requested: requested.map(|m| m.chars().take(200).collect()),
            model_served: served.map(|m| m.chars().take(200).collect()),
            status: answer.status.as_u16(),
            error_type,
            input_tokens: tokens.input_tokens,
            output_tokens: tokens.output_tokens,
            cache_write_5m_tokens: w5,
            cache_write_1h_tokens: w1,
            cache_read_tokens: tokens.cache_read_input_tokens,
            cost_micro_usd: cost,
            priced,
            latency_us: micros(started.elapsed()),
            upstream_latency_us: answer.upstream_latency.map(micros),
            upstream_attempts: item.attempt,
            streamed: false,
            cache_hit: false,
            client_aborted: false,
            saved_micro_usd: 0,
        };
        (Some(record), cost)
    };
    // A replay's own reservation is charged its cost; the batch's then has nothing to settle.
    let charged_here = admitted.as_ref().is_some_and(Admitted::charges_cost);
    Pacer::settle(
        admitted,
        match &answered {
            Some(tokens) => Spent::Answered(tokens),
            None if answer.unread => Spent::Unread,
            None => Spent::Nothing,
        },
        cost,
    );
    let (worst, cost) = if charged_here || item.replays > 0 {
        (0, 0)
    } else {
        (item.worst_micro_usd, cost)
    };
    Finished {
        completion: Completion {
            batch_id: item.batch_id,
            idx: item.idx,
            attempt: item.attempt,
            outcome,
            usage,
        },
        key_id: item.key_id,
        worst,
        cost,
        label,
        pause: None,
    }
}

/// `item` not run: its key has no room under its per-minute limits for `wait`; it runs again
/// from `not_before`.
fn deferred(item: ClaimedItem, not_before: time::OffsetDateTime, wait: Duration) -> Finished {
    Finished {
        completion: Completion {
            batch_id: item.batch_id,
            idx: item.idx,
            attempt: item.attempt,
            outcome: Outcome::Deferred { not_before },
            usage: None,
        },
        key_id: item.key_id,
        worst: item.worst_micro_usd,
        cost: 0,
        label: "deferred",
        pause: Some(Instant::now() + wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let d1 = backoff(base, max, 1, None);
        assert!(d1 <= base && d1 >= base.mul_f64(0.75), "{d1:?}");
        let d3 = backoff(base, max, 3, None);
        assert!(d3 <= base * 4 && d3 >= (base * 4).mul_f64(0.75), "{d3:?}");
        assert!(backoff(base, max, 30, None) <= max);
        assert_eq!(
            backoff(base, max, 1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(backoff(base, max, 1, Some(Duration::from_secs(90))), max);
    }

    #[test]
    fn error_answers_keep_the_upstreams_envelope_or_get_one() {
        let own = envelope_of(
            StatusCode::BAD_REQUEST,
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"},"request_id":"req_1"}"#,
        );
        assert_eq!(own["error"]["message"], "max_tokens: Field required");
        assert!(own.get("request_id").is_none());
        let made = envelope_of(StatusCode::from_u16(529).unwrap(), b"<html>");
        assert_eq!(made["type"], "error");
        assert_eq!(made["error"]["type"], "overloaded_error");
    }
}
