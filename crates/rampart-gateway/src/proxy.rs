//! The pass-through proxy engine: authenticate, read and check the body in one pass, forward with
//! the upstream credential, pipe the response back chunk by chunk while reading usage on the side.
//!
//! Every request ends in exactly one [`Completion`], which records metrics and the access log
//! when the response body finishes, fails, or is dropped because the client went away (dropping
//! the body also drops the upstream response, which cancels the upstream request). With a usage
//! ledger, the completion also writes the request's usage record exactly once, before the last
//! byte of the response is released (see [`Completion::record_usage`]); a whole answer of a known
//! size is read first and its record committed before any of it is sent, in one spool `write`
//! with the other answers its worker finishes in the same turn (`spooled_first`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::auth::{self, AuthFailure, Authenticator, Denial, Scopes};
use crate::config::Settings;
use crate::denials::{DenialAudit, Denied};
use crate::error::ProxyError;
use crate::exchange::{Call, UpstreamBody, Upstreams};
use crate::peek;
use crate::routes::Route;
use crate::sse::{UsageScanner, UsageSummary};
use crate::telemetry;
use crate::upstream_key::UpstreamKey;
use crate::upstream_pool::BoxError;
use rampart_ledger::Ledger;
use rampart_ledger::pricing::{Known, PriceTable, TokenUsage, note_unknown_model};
use rampart_store::UsageRecord;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// Largest non-streamed Messages body copied aside to read usage.
const JSON_TAP_LIMIT: usize = 8 * 1024 * 1024;

/// Largest error answer copied aside to read its error type (an envelope is a few hundred
/// bytes; the upstream's error bodies are read up to this much when they are held for a retry).
const ERROR_TAP_LIMIT: usize = 64 * 1024;

thread_local! {
    /// Set on a request worker's thread when its shutdown grace is over: the responses still
    /// open there are then dropped with its runtime, cut by Rampart, not left by their clients.
    static CUT_AT_SHUTDOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This thread's worker stops serving: whatever of its requests is dropped from now on was cut
/// by Rampart (see [`Completion::cut_at_shutdown`]).
pub(crate) fn cutting_at_shutdown() {
    CUT_AT_SHUTDOWN.set(true);
}

/// Shared state of the proxy.
pub struct AppState {
    /// Validated configuration.
    pub settings: Settings,
    /// Who may call.
    pub auth: Arc<dyn Authenticator>,
    /// The upstream call: targets, breakers, retries, routing ([`crate::exchange`]).
    pub upstreams: Upstreams,
    /// The `[upstream]` `x-api-key` (marked sensitive), fixed or from the store; `None` when
    /// every target has its own.
    pub upstream_key: Option<Arc<UpstreamKey>>,
    /// Audit of refused key uses (only with a store).
    pub denials: Option<DenialAudit>,
    /// The usage ledger (only with a store).
    pub ledger: Option<Arc<Ledger>>,
    /// Rate limits and budgets (only with a store): see [`crate::admission`].
    pub limits: Option<crate::admission::Limits>,
    /// The response cache and breakpoint policies: see [`crate::response_cache`].
    pub cache: crate::response_cache::ResponseCache,
    /// Message batches with a store (see [`crate::batches`]); without, they are passed through.
    pub batches: Option<Arc<crate::batches::Batches>>,
    /// Reloads the key directory when a credential is unknown (only with a store).
    pub key_misses: Option<Arc<crate::keydir::MissRefresh>>,
    /// Whether the store's background tasks still run (only with a store).
    pub tasks: Option<Arc<crate::store_plane::TaskHealth>>,
    /// Set when SIGTERM arrived.
    pub shutting_down: AtomicBool,
}

/// What the proxy may be given beyond settings and authentication; all off by default.
#[derive(Debug, Default)]
pub struct ProxyParts {
    /// Audit refused key uses (401 and 403) to the store: see [`crate::denials`].
    pub denials: Option<DenialAudit>,
    /// The upstream key when it does not come from the settings (a stored credential, see
    /// [`crate::upstream_key::StoredUpstream`]).
    pub upstream_key: Option<Arc<UpstreamKey>>,
    /// Keys of upstream targets naming a stored credential, by credential name.
    pub target_keys: Vec<(String, Arc<UpstreamKey>)>,
    /// Record one usage record per request: see [`rampart_ledger::ledger`].
    pub ledger: Option<Arc<Ledger>>,
    /// Enforce the store's rate limits and budgets: see [`crate::admission`].
    pub limits: Option<crate::admission::Limits>,
    /// Serve message batches from the store: see [`crate::batches`].
    pub batches: Option<Arc<crate::batches::Batches>>,
    /// Look an unknown credential up in the store: see [`crate::keydir::MissRefresh`].
    pub key_misses: Option<Arc<crate::keydir::MissRefresh>>,
    /// Whether the store's background tasks still run (`/readyz`): see
    /// [`crate::store_plane::TaskHealth`].
    pub tasks: Option<Arc<crate::store_plane::TaskHealth>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("upstream", &self.settings.upstream)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Build the state from validated settings and the optional [`ProxyParts`]; the upstream
    /// key of `parts` wins over the settings'.
    ///
    /// # Errors
    /// When an upstream key a target needs is missing, or cannot be a header value.
    pub fn with_parts(
        settings: Settings,
        auth: Arc<dyn Authenticator>,
        parts: ProxyParts,
    ) -> Result<Self, String> {
        let upstream_key = match (parts.upstream_key, &settings.upstream_api_key) {
            (Some(stored), _) => Some(stored),
            (None, Some(key)) => Some(Arc::new(UpstreamKey::fixed(key)?)),
            (None, None) => None,
        };
        let upstreams = Upstreams::new(&settings, upstream_key.clone(), &parts.target_keys)?;
        let cache = crate::response_cache::ResponseCache {
            settings: settings.cache_settings.clone(),
            store: settings.cache.store()?,
        };
        Ok(Self {
            cache,
            upstreams,
            settings,
            auth,
            upstream_key,
            denials: parts.denials,
            ledger: parts.ledger,
            limits: parts.limits,
            batches: parts.batches,
            key_misses: parts.key_misses,
            tasks: parts.tasks,
            shutting_down: AtomicBool::new(false),
        })
    }
}

/// Metrics, access log and usage record for one request, recorded exactly once.
#[derive(Debug)]
pub struct Completion {
    route: Route,
    method: Method,
    request_id: String,
    key: Option<Arc<str>>,
    model: Option<String>,
    status: u16,
    streamed: bool,
    start: Instant,
    upstream: Option<Duration>,
    overhead: Option<Duration>,
    usage: Option<UsageSummary>,
    client_aborted: bool,
    upstream_request_id: Option<String>,
    /// The calling store key's ids.
    key_id: Option<uuid::Uuid>,
    team_id: Option<uuid::Uuid>,
    user_id: Option<uuid::Uuid>,
    /// Upstream attempts made (0 when the request never went upstream).
    pub(crate) attempts: u32,
    /// Answered from Rampart's response cache.
    pub(crate) cache_hit: bool,
    /// Breakpoints were added: what they saved is counted when the usage is known.
    breakpoints_prices: Option<Arc<PriceTable>>,
    /// What caching saved (micro-dollars): a response-cache hit's replayed cost, or the
    /// breakpoints' net saving once the usage is known.
    saved_micro_usd: i64,
    /// The error type of an error Rampart answered with.
    error_type: Option<&'static str>,
    /// Where the usage record goes and how it is priced; taken when it is written.
    ledger: Option<(Arc<Ledger>, Arc<PriceTable>)>,
    /// The request's reservation against rate limits and budgets, settled when the response is
    /// done (dropped unsettled: nothing was used), and the prices it is settled at.
    ticket: Option<(rampart_limits::Ticket, Arc<PriceTable>)>,
    /// The limits' state after admission, for the response headers.
    limit_status: Option<rampart_limits::Status>,
    /// When `limit_status` was read: a response whose headers go out long after (a slow or
    /// retried answer) shows the limits as they stand then (`admission::aged`).
    limits_read_at: Instant,
    /// The key has limits: the upstream's `anthropic-ratelimit-*` (its shared key's) never
    /// reach the client, even where Rampart has no state of its own to show.
    limited: bool,
    /// Made while the upstream answers ([`Completion::prepare`]): the usage record's head, the
    /// rate-limit header values and the `x-request-id` value. Boxed: it is most of a
    /// completion's size, and the completion and the forwarding future are copied whole when
    /// they are made.
    prepared: Option<Box<Prepared>>,
    /// The usage's cost, worked out once: settlement and the usage record both need it.
    cost: Option<CostMemo>,
    /// The request's duration, taken when its response ended: the completion is then handed
    /// to the accounting thread, which records it a few milliseconds later.
    ended: Option<Duration>,
    /// The body of a Messages request sent upstream (with a usage ledger or limits), until its
    /// outcome shows what it used or that the upstream billed nothing: what
    /// [`Completion::estimate_unread_usage`] estimates from.
    sent: Option<Bytes>,
}

/// [`Completion::cost`] as worked out: at which table, with or without a usage.
#[derive(Debug)]
struct CostMemo {
    table: Arc<PriceTable>,
    had_usage: bool,
    cost: Option<(u64, Known)>,
}

impl Completion {
    /// Boxed: the completion moves from the request into its response body and then to the
    /// accounting thread, and it is several hundred bytes.
    fn new(route: Route, method: Method, request_id: String) -> Box<Self> {
        telemetry::request_started();
        let start = Instant::now();
        Box::new(Self {
            route,
            method,
            request_id,
            key: None,
            model: None,
            // Until a response is produced, a drop means the client went away.
            status: 499,
            streamed: false,
            start,
            upstream: None,
            overhead: None,
            usage: None,
            client_aborted: true,
            upstream_request_id: None,
            key_id: None,
            team_id: None,
            user_id: None,
            attempts: 0,
            cache_hit: false,
            breakpoints_prices: None,
            saved_micro_usd: 0,
            error_type: None,
            ledger: None,
            ticket: None,
            limit_status: None,
            limits_read_at: start,
            limited: false,
            prepared: None,
            cost: None,
            ended: None,
            sent: None,
        })
    }

    /// How long the request took: to the end of its response when that was marked ([`Self::end`]),
    /// else to now.
    fn total(&self) -> Duration {
        self.ended.unwrap_or_else(|| self.start.elapsed())
    }

    /// A request that seems left by its client (dropped before its end) on a worker whose
    /// shutdown grace is over was cut by Rampart instead: recorded as not aborted, with
    /// `api_error` (the client sees its connection closed, as when an upstream cuts an answer
    /// off) and, when no response had begun, that type's status rather than 499.
    fn cut_at_shutdown(&mut self) {
        if self.client_aborted && CUT_AT_SHUTDOWN.get() {
            self.client_aborted = false;
            let api_error = rampart_api::ErrorType::ApiError;
            self.error_type.get_or_insert(api_error.as_str());
            if self.status == 499 {
                self.status = api_error.status();
            }
        }
    }

    /// The response ended now (its last byte released, or the client gone): the duration kept.
    fn end(&mut self) {
        self.ended.get_or_insert_with(|| self.start.elapsed());
    }

    /// A Messages request the upstream may have done (and billed) without its usage being read
    /// is charged an estimate instead of nothing: a whole answer cut off after its head or left
    /// by its client while it was read, a client that left while the request was with the
    /// upstream, an attempt that timed out or lost its connection after the request was
    /// written. The estimate is the reservation's: the input tokens by the shared estimator and,
    /// for a whole answer (generated whole before it is sent), its `max_tokens` of output. (A
    /// delivered stream is not estimated: its `message_start` came first, and the output it
    /// delivered is counted.) Once (later calls do nothing).
    fn estimate_unread_usage(&mut self) {
        let Some(body) = self.sent.take() else {
            return;
        };
        if self.usage.is_some() {
            return;
        }
        let (input_tokens, max_tokens) = rampart_api::tokens::estimate_request(&body).map_or_else(
            || ((body.len() as u64).div_ceil(4), 0),
            |e| (e.input_tokens, e.max_tokens),
        );
        self.usage = Some(UsageSummary {
            input_tokens,
            output_tokens: if self.streamed { 0 } else { max_tokens },
            ..UsageSummary::default()
        });
        telemetry::usage_estimated();
    }

    /// Settle the request's reservation with the usage read from the response (before the last
    /// byte is released, so the client's next request finds its slot free).
    fn settle_limits(&mut self) {
        if let Some((ticket, prices)) = self.ticket.take() {
            let budget = ticket.policy().is_some_and(|p| p.has_budget());
            let cost = if budget {
                self.cost(&prices).map_or(0, |(micros, _)| micros)
            } else {
                0
            };
            crate::admission::settle(ticket, self.usage.as_ref(), cost);
        }
    }

    /// The model the usage is priced by: the served one, else the requested one.
    fn usage_model(&self) -> Option<&str> {
        self.usage
            .as_ref()
            .and_then(|u| u.model.as_deref())
            .or(self.model.as_deref())
    }

    /// What the usage cost at `prices` (micro-dollars, and whether the model was listed),
    /// priced by the served model, else the requested one; `None` when there is no model or
    /// no token was used. Worked out once per table.
    fn cost(&mut self, prices: &Arc<PriceTable>) -> Option<(u64, Known)> {
        if let Some(memo) = &self.cost
            && Arc::ptr_eq(&memo.table, prices)
            && memo.had_usage == self.usage.is_some()
        {
            return memo.cost;
        }
        let tokens = self
            .usage
            .as_ref()
            .map_or_else(TokenUsage::default, UsageSummary::tokens);
        let cost = match self.usage_model() {
            Some(model) if tokens != TokenUsage::default() => {
                let (p, known) = prices.lookup(model);
                Some((prices.cost_at(&p, &tokens, false), known))
            }
            _ => None,
        };
        self.cost = Some(CostMemo {
            table: prices.clone(),
            had_usage: self.usage.is_some(),
            cost,
        });
        cost
    }

    /// Record this request in `state`'s usage ledger, if it has one.
    fn with_ledger(mut self: Box<Self>, state: &AppState) -> Box<Self> {
        if let Some(ledger) = &state.ledger {
            self.ledger = Some((ledger.clone(), state.settings.prices.clone()));
        }
        self
    }

    /// What the added breakpoints saved, once the usage is known (once; later calls do nothing):
    /// the uncached price of the tokens read from the cache less the extra price of the writes.
    fn count_breakpoint_savings(&mut self) {
        let Some(prices) = self.breakpoints_prices.take() else {
            return;
        };
        let actual = self.cost(&prices).map_or(0, |(micros, _)| micros);
        let (Some(usage), Some(model)) = (self.usage.as_ref(), self.usage_model()) else {
            return;
        };
        let plain = crate::response_cache::uncached_cost(&prices, model, &usage.tokens());
        let saved = i128::from(plain) - i128::from(actual);
        telemetry::cache_saved("breakpoints", saved);
        self.saved_micro_usd = i64::try_from(saved).unwrap_or(0);
    }

    /// What can be made before the response arrives, made while the upstream answers: the usage
    /// record's head (its spool line begun) and the response's rate-limit and request id values.
    fn prepare(&self) -> Box<Prepared> {
        Box::new(Prepared {
            record: self
                .ledger
                .as_ref()
                .map(|_| rampart_ledger::Prepared::new(self.head())),
            status_headers: self
                .limit_status
                .as_ref()
                .map(crate::admission::StatusHeaders::of),
            request_id_header: HeaderValue::from_str(&self.request_id).ok(),
        })
    }

    /// The `anthropic-ratelimit-*` headers of the limits' state after admission, if admitted
    /// (made beforehand when they were prepared), as it stands at `now` if that is long after
    /// ([`crate::admission::aged`]).
    fn write_limit_headers(&mut self, headers: &mut HeaderMap, now: Instant) {
        let elapsed = now.saturating_duration_since(self.limits_read_at);
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Some(h) = self.prepared.as_mut().and_then(|p| p.status_headers.take()) {
            h.write_aged(elapsed_ms, headers);
        } else if let Some(s) = &self.limit_status {
            crate::admission::write_status_aged(s, elapsed_ms, headers);
        }
    }

    /// [`Completion::write_limit_headers`] on the upstream's answer (its headers arrived at
    /// `now`): a limited key that was not admitted here (models, count_tokens without a request
    /// limit, fail open) gets none of the upstream's `anthropic-ratelimit-*` either, which
    /// describe the organisation's shared key.
    fn replace_upstream_limit_headers(&mut self, headers: &mut HeaderMap, now: Instant) {
        if self.limit_status.is_none() && self.limited {
            crate::admission::write_status(&rampart_limits::Status::default(), headers);
        } else {
            self.write_limit_headers(headers, now);
        }
    }

    /// Keep what [`Completion::prepare`] made.
    fn keep(&mut self, prepared: Box<Prepared>) {
        self.prepared = Some(prepared);
    }

    /// The usage record with its head (the fields known before the request goes upstream) and
    /// an empty outcome.
    fn head(&self) -> UsageRecord {
        let now = time::OffsetDateTime::now_utc();
        // An admitted request is recorded at its admission, the moment whose budget period it
        // was charged to (so the ledger a budget is seeded from puts it in the same day or
        // month, also for a body whose upload straddled midnight); any other at its arrival.
        let admitted = self
            .ticket
            .as_ref()
            .and_then(|(t, _)| t.admitted_ms())
            .and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            });
        UsageRecord {
            id: ledger_id(now),
            at: admitted.unwrap_or_else(|| now - self.start.elapsed()),
            request_id: self.request_id.clone(),
            key_id: self.key_id,
            team_id: self.team_id,
            user_id: self.user_id,
            key_label: self.key.as_deref().map(str::to_owned),
            endpoint: self.route.template().to_owned(),
            model_requested: self.model.as_deref().map(|m| shown_model(m).to_owned()),
            model_served: None,
            status: 0,
            error_type: None,
            input_tokens: 0,
            output_tokens: 0,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            cost_micro_usd: 0,
            priced: false,
            latency_us: 0,
            upstream_latency_us: None,
            upstream_attempts: 0,
            streamed: false,
            cache_hit: false,
            client_aborted: false,
            saved_micro_usd: 0,
        }
    }

    /// Write the usage record, once (later calls do nothing): priced by the served model (else
    /// the requested one), with the cache writes split by TTL. Called before the last byte of
    /// the response is released, so a client that has its whole response has its record in the
    /// spool.
    fn record_usage(&mut self) {
        drop(self.write_usage(false));
    }

    /// [`Completion::record_usage`] for a response that waits for its record before any of it
    /// is sent: the record is staged for its worker's next group write (see
    /// [`rampart_ledger::Ledger::stage_prepared`]), to be committed before the response goes.
    fn stage_usage(&mut self) -> Option<rampart_ledger::Staged> {
        self.write_usage(true)
    }

    fn write_usage(&mut self, stage: bool) -> Option<rampart_ledger::Staged> {
        self.count_breakpoint_savings();
        let (ledger, prices) = self.ledger.take()?;
        let (cost_micro_usd, priced) = match self.cost(&prices) {
            Some((micros, known)) => {
                if known == Known::Default
                    && let Some(model) = self.usage_model()
                {
                    note_unknown_model(model);
                }
                (micros, known == Known::Listed)
            }
            None => (0, true),
        };
        let usage = self.usage.as_ref();
        let tokens = usage.map_or_else(TokenUsage::default, UsageSummary::tokens);
        let served = usage.and_then(|u| u.model.as_deref());
        let (w5, w1) = tokens.cache_writes();
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let prepared = self
            .prepared
            .as_mut()
            .and_then(|p| p.record.take())
            .unwrap_or_else(|| rampart_ledger::Prepared::new(self.head()));
        let outcome = |r: &mut UsageRecord| {
            r.model_served = served.map(|m| shown_model(m).to_owned());
            r.status = self.status;
            r.error_type = self
                .error_type
                .or_else(|| Some(stream_error_type(usage?.stream_error.as_deref()?)))
                .map(str::to_owned);
            r.input_tokens = tokens.input_tokens;
            r.output_tokens = tokens.output_tokens;
            r.cache_write_5m_tokens = w5;
            r.cache_write_1h_tokens = w1;
            r.cache_read_tokens = tokens.cache_read_input_tokens;
            r.cost_micro_usd = cost_micro_usd;
            r.priced = priced;
            r.latency_us = micros(self.total());
            r.upstream_latency_us = self.upstream.map(micros);
            r.upstream_attempts = self.attempts;
            r.streamed = self.streamed;
            r.cache_hit = self.cache_hit;
            r.client_aborted = self.client_aborted;
            r.saved_micro_usd = self.saved_micro_usd;
        };
        if stage {
            return Some(ledger.stage_prepared(prepared, outcome));
        }
        ledger.record_prepared(prepared, outcome);
        None
    }
}

/// The error type recorded for a stream the upstream ended with an `error` event naming
/// `named`: that type when the API uses it, else `api_error` (the event is the upstream's: no
/// string of its own making goes into the ledger).
fn stream_error_type(named: &str) -> &'static str {
    rampart_api::ErrorType::from_name(named)
        .unwrap_or(rampart_api::ErrorType::ApiError)
        .as_str()
}

/// What [`Completion::prepare`] made.
#[derive(Debug)]
struct Prepared {
    record: Option<rampart_ledger::Prepared>,
    status_headers: Option<crate::admission::StatusHeaders>,
    request_id_header: Option<HeaderValue>,
}

/// Longest model name kept in a usage record.
const MAX_MODEL_CHARS: usize = 200;

/// The first [`MAX_MODEL_CHARS`] characters of `model` (a slice: no copy char by char; a name
/// of at most that many bytes is whole).
fn shown_model(model: &str) -> &str {
    if model.len() <= MAX_MODEL_CHARS {
        return model;
    }
    model
        .char_indices()
        .nth(MAX_MODEL_CHARS)
        .map_or(model, |(i, _)| &model[..i])
}

/// A fresh UUIDv7 for a usage record made at `now` (time-ordered, from the thread's random
/// generator rather than a `getrandom` call per request).
fn ledger_id(now: time::OffsetDateTime) -> uuid::Uuid {
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.cut_at_shutdown();
        self.estimate_unread_usage();
        self.settle_limits();
        self.record_usage();
        telemetry::request_finished(&telemetry::Finished {
            route: self.route,
            method: self.method.as_str(),
            request_id: &self.request_id,
            key: self.key.as_deref(),
            model_requested: self.model.as_deref(),
            status: self.status,
            streamed: self.streamed,
            total: self.total(),
            upstream: self.upstream,
            overhead: self.overhead,
            usage: self.usage.as_ref(),
            client_aborted: self.client_aborted,
            upstream_request_id: self.upstream_request_id.as_deref(),
        });
    }
}

/// A request id: the client's `x-request-id` when it is sane, else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'=' | b'+' | b'/')
        })
    {
        return v.to_owned();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_rmp_00000000000000000000000000000000";
    let r: [u8; 16] = rand::random();
    for (pair, byte) in id[8..].chunks_exact_mut(2).zip(r) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// Entry point for every proxied route.
pub async fn handle<B>(state: Arc<AppState>, route: Route, req: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    handle_from(state, route, req, None).await
}

/// [`handle`] for a request from `client` (named in audit rows of refused key uses).
pub async fn handle_from<B>(
    state: Arc<AppState>,
    route: Route,
    req: http::Request<B>,
    client: Option<SocketAddr>,
) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = req.into_parts();
    let mut done = Completion::new(route, parts.method.clone(), request_id(&parts.headers))
        .with_ledger(&state);
    let public_base = matches!(route, Route::Batches | Route::Batch | Route::BatchCancel)
        .then(|| public_base(&state.settings, &parts.headers));
    let request_id = public_base.is_some().then(|| done.request_id.clone());
    // Boxed: the forwarding future is kilobytes (it holds the upstream call's), and a future is
    // copied whole each time it is moved into the one awaiting it; boxed, it is copied once and
    // the futures around it stay small.
    let resp = match Box::pin(forward(&state, &mut done, &mut parts, body, client)).await {
        Ok(Forwarded::Upstream(answered)) => {
            let (upstream, sent_at, headers_at, cache) = *answered;
            let (parts, body) = build_response(upstream, done, sent_at, headers_at, cache);
            if body.stage {
                // Boxed: only responses that wait for their record take this path.
                Box::pin(spooled_first(parts, body)).await
            } else {
                Response::from_parts(parts, Body::new(body))
            }
        }
        Ok(Forwarded::Cached(hit)) => cached_response(hit, done),
        Ok(Forwarded::Local(resp)) => {
            // Served by Rampart's own batches (crate::batches): nothing to rewrite.
            let mut done = done;
            done.status = resp.status().as_u16();
            done.client_aborted = false;
            return resp;
        }
        Err(e) => return error_response(e, done),
    };
    match (public_base, request_id) {
        (Some(base), Some(request_id)) if resp.status().is_success() => {
            // Boxed: batch routes only, and every request's future would carry its size.
            Box::pin(crate::batch_urls::rewrite(resp, &base, &request_id)).await
        }
        _ => resp,
    }
}

/// The base URL clients reach Rampart at: configured, else from `Host` (and `x-forwarded-proto`).
pub(crate) fn public_base(settings: &Settings, headers: &HeaderMap) -> Option<String> {
    if let Some(base) = &settings.public_base_url {
        return Some(base.clone());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// Respond with an error; the completion is recorded now.
fn error_response(e: ProxyError, mut done: Box<Completion>) -> Response {
    done.error_type = Some(e.kind_and_status().0.as_str());
    let mut resp = e.into_response_with(&done.request_id);
    // Admitted, then failed (upstream unreachable, timeout …): the limits still describe the
    // key, and the reservation is released when `done` drops.
    if done.limit_status.is_some() {
        // A failure after admission, maybe after a long wait: the limits as they stand now.
        done.write_limit_headers(resp.headers_mut(), Instant::now());
    }
    done.status = resp.status().as_u16();
    done.client_aborted = false;
    // The usage record is written when `done` drops here, before the response is returned.
    resp
}

/// A response for a request that never reaches the proxy engine (404, 405), still recorded: in
/// `state`'s usage ledger too when given (a request to the API's paths, `/v1/…`).
pub fn reject(
    state: Option<&AppState>,
    route: Route,
    headers: &HeaderMap,
    method: &Method,
    err: ProxyError,
) -> Response {
    let mut done = Completion::new(route, method.clone(), request_id(headers));
    if let Some(state) = state {
        done = done.with_ledger(state);
    }
    error_response(err, done)
}

/// Audit a refused key use, when a store is configured (see [`crate::denials`]).
fn audit_denied(
    state: &AppState,
    done: &Completion,
    parts: &http::request::Parts,
    client: Option<SocketAddr>,
    refused: Refused<'_>,
) {
    if let Some(denials) = &state.denials {
        denials.record(&Denied {
            status: refused.status,
            reason: refused.reason,
            credential: refused.credential,
            key_id: refused.key_id,
            path: parts.uri.path(),
            client,
            request_id: &done.request_id,
            model: refused.model,
        });
    }
}

/// The parts of a [`Denied`] known where a request is refused.
#[derive(Debug, Clone, Copy)]
struct Refused<'a> {
    status: u16,
    reason: &'static str,
    credential: Option<&'a str>,
    key_id: Option<uuid::Uuid>,
    model: Option<&'a str>,
}

/// How a request was answered.
enum Forwarded {
    /// By the upstream: response, sent at, headers at, and the response cache's capture plan.
    Upstream(Box<Answered>),
    /// From the response cache.
    Cached(CacheHit),
    /// By Rampart itself (batches with a store).
    Local(Response),
}

/// An upstream answer and when it was sent and its headers arrived.
type Answered = (
    http::Response<UpstreamBody<crate::upstream::ResponseBody>>,
    Instant,
    Instant,
    Option<CacheCapture>,
);

/// Where a miss's answer is stored once complete.
struct CacheCapture {
    capture: crate::response_cache::Capturing,
    key: Option<(rampart_cache::CacheKey, Duration)>,
    store: Arc<dyn rampart_cache::ResponseStore>,
    outcome: HeaderValue,
}

/// A cache hit, ready to send.
struct CacheHit {
    body: Bytes,
    content_type: &'static str,
}

/// Authenticate, check and admit the request, then answer it from the cache, Rampart's own
/// batches or the upstream. `parts` is borrowed, not moved (an async fn keeps what it is given
/// beside its own copy of it); its headers are taken for the upstream request.
async fn forward<B>(
    state: &AppState,
    done: &mut Completion,
    parts: &mut http::request::Parts,
    body: B,
    client: Option<SocketAddr>,
) -> Result<Forwarded, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ProxyError::ShuttingDown);
    }
    // Authenticate before reading the body: deny by default, cheaply.
    let refused = |status, reason, credential| Refused {
        status,
        reason,
        credential,
        key_id: None,
        model: None,
    };
    let credential = match auth::credential(&parts.headers) {
        Ok(cred) => cred,
        Err(AuthFailure::Missing) => return Err(ProxyError::MissingKey),
        Err(AuthFailure::Invalid) => {
            let r = refused(401, "malformed_credential", None);
            audit_denied(state, done, parts, client, r);
            return Err(ProxyError::InvalidKey);
        }
    };
    let mut checked = state.auth.check(credential);
    // A key created a moment ago (the CLI, another instance) is looked up before it is refused.
    if matches!(checked, Err(Denial::Unknown))
        && let Some(misses) = &state.key_misses
    {
        misses.refresh().await;
        checked = state.auth.check(credential);
    }
    let identity = match checked {
        Ok(identity) => identity,
        Err(denial) => {
            let r = refused(401, denial.as_str(), Some(credential));
            audit_denied(state, done, parts, client, r);
            return Err(ProxyError::InvalidKey);
        }
    };
    let scopes = identity.scopes.clone();
    let policy = identity.limits.clone();
    done.limited = state.limits.is_some() && policy.is_some();
    done.key = Some(identity.key_label.clone());
    (done.key_id, done.team_id, done.user_id) =
        (identity.key_id, identity.team_id, identity.user_id);
    if let (Some(scopes), Some(endpoint)) = (&scopes, crate::auth::Endpoint::of(done.route))
        && !scopes.allows_endpoint(endpoint)
    {
        let r = Refused {
            key_id: identity.key_id,
            ..refused(403, "endpoint_not_allowed", Some(credential))
        };
        audit_denied(state, done, parts, client, r);
        return Err(ProxyError::Forbidden(format!(
            "this API key may not call {}",
            done.route.template()
        )));
    }

    let is_post = parts.method == Method::POST;
    let (mut model_span, mut max_tokens, mut estimate) = (None, None, None);
    let body_bytes = if parts.method == Method::GET || parts.method == Method::DELETE {
        Bytes::new()
    } else {
        let limit = if done.route == Route::Batches {
            state.settings.max_batch_body_bytes
        } else {
            state.settings.max_body_bytes
        };
        read_body(&parts.headers, body, limit).await?
    };
    if done.route.has_json_body(is_post) {
        // A Messages request whose key reserves tokens or spend is checked and estimated in one
        // pass over the body.
        let reserves = done.route == Route::Messages
            && state.limits.is_some()
            && policy.as_ref().is_some_and(|p| p.reserves_demand());
        let peeked = if reserves {
            let (peeked, e) = peek::peek_estimating(&body_bytes)?;
            estimate = e;
            peeked
        } else {
            peek::peek(&body_bytes)?
        };
        // Routing may serve another model than the one named: scopes apply to that one (an
        // alias's model here; `auto`'s choice and fallbacks in the upstream call).
        let scoped = peeked
            .model
            .as_deref()
            .and_then(|m| state.upstreams.routing().scope_model(m));
        if let Some(scopes) = &scopes
            && let Some((model, err)) = check_models(scopes, done.route, scoped, &body_bytes)?
        {
            let r = Refused {
                key_id: identity.key_id,
                model: Some(&model),
                ..refused(403, "model_not_allowed", Some(credential))
            };
            audit_denied(state, done, parts, client, r);
            done.model = peeked.model;
            return Err(err);
        }
        done.model = peeked.model;
        done.streamed = peeked.stream;
        model_span = peeked.model_span;
        max_tokens = peeked.max_tokens;
    }

    // A spent budget also stops new batches passed through to the upstream (their cost arrives
    // with their results). Rampart's own batches reserve their worst case, which refuses a spent
    // budget in the same step.
    if let (Some(limits), Some(policy), Route::Batches, true, None) =
        (&state.limits, &policy, done.route, is_post, &state.batches)
        && policy.has_budget()
    {
        crate::admission::check_budget(limits, policy).await?;
    }
    // Batches with a store are Rampart's own: scoped, in either execution mode (crate::batches).
    if let Some(batches) = &state.batches
        && matches!(
            done.route,
            Route::Batches | Route::Batch | Route::BatchCancel | Route::BatchResults
        )
    {
        let req = crate::batches::api::Request {
            route: done.route,
            method: &parts.method,
            parts,
            identity: &identity,
            body: body_bytes,
            request_id: &done.request_id,
        };
        // Boxed: the batch API's future is large, and every request's would carry its size.
        let resp = Box::pin(crate::batches::api::handle(state, batches, req)).await;
        if !resp.status().is_success() {
            done.error_type =
                Some(rampart_api::ErrorType::from_status(resp.status().as_u16()).as_str());
        }
        return Ok(Forwarded::Local(resp));
    }
    // count_tokens counts as a request (not tokens) against the request limits.
    if let (Some(limits), Some(policy), Route::CountTokens, true) =
        (&state.limits, &policy, done.route, is_post)
    {
        done.limit_status = crate::admission::count_request(limits, policy).await?;
        done.limits_read_at = Instant::now();
    }
    // Rate limits and budgets: reserve now, settle when the response is done.
    if let (Some(limits), Some(policy), Route::Messages, true) =
        (&state.limits, &policy, done.route, is_post)
        && let Some(ticket) = crate::admission::admit(
            limits,
            policy,
            &body_bytes,
            estimate.map(|e| (e, done.model.as_deref())),
        )
        .await?
    {
        done.limit_status = Some(*ticket.status());
        done.limits_read_at = Instant::now();
        done.ticket = Some((ticket, limits.prices.clone()));
    }

    // The caching levers (messages only): the response cache, then prompt-cache breakpoints.
    let mut body_bytes = body_bytes;
    let mut cache = None;
    if done.route == Route::Messages && is_post {
        use crate::response_cache as rc;
        let mode = rc::Mode::of(&parts.headers)?;
        let effective = state.cache.settings.effective(&identity);
        let plan = rc::plan(
            effective,
            mode,
            || rc::tenant(&identity),
            &parts.headers,
            &body_bytes,
        );
        let key = match plan.clone() {
            rc::Plan::Lookup(key, ttl) => {
                if let Some(hit) = state.cache.store.get(&key).await {
                    telemetry::cache_event("hit");
                    if let Some(tokens) = rc::cached_tokens(&hit) {
                        let saved = state.settings.prices.cost(&hit.model, &tokens, false);
                        telemetry::cache_saved("response", i128::from(saved));
                        done.saved_micro_usd = i64::try_from(saved).unwrap_or(i64::MAX);
                    }
                    let (body, content_type) = rc::hit_body(&hit, done.streamed);
                    done.cache_hit = true;
                    // The answer names the model that served it; so does its record (no
                    // tokens, no cost: nothing went upstream).
                    done.usage = Some(UsageSummary {
                        model: Some(hit.model.clone()),
                        ..UsageSummary::default()
                    });
                    return Ok(Forwarded::Cached(CacheHit { body, content_type }));
                }
                telemetry::cache_event("miss");
                Some((key, ttl))
            }
            rc::Plan::Refresh(key, ttl) => Some((key, ttl)),
            rc::Plan::Bypass => None,
        };
        cache = Some(CacheCapture {
            capture: rc::Capturing::new(done.streamed, state.cache.settings.capture_limit),
            outcome: rc::outcome_of(&plan),
            key,
            store: state.cache.store.clone(),
        });
        if effective.breakpoints
            && let Some((rewritten, applied)) =
                rc::with_breakpoints(&body_bytes, &state.cache.settings.breakpoints)
        {
            telemetry::breakpoints_added(applied.added.len());
            done.breakpoints_prices = Some(state.settings.prices.clone());
            body_bytes = rewritten;
        }
    }

    // The upstream call: targets, breakers, retries, fallbacks, stream hold-back. From here the
    // upstream may do the work whatever becomes of the answer: with a ledger or limits, keep the
    // body to estimate it from should its usage not be read.
    if done.route == Route::Messages && is_post && (done.ledger.is_some() || done.ticket.is_some())
    {
        done.sent = Some(body_bytes.clone());
    }
    let call = Call {
        route: done.route,
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        headers: upstream_headers(std::mem::take(&mut parts.headers), &done.request_id),
        body: body_bytes,
        model: done.model.as_deref(),
        model_span,
        max_tokens,
        scopes: scopes.as_deref(),
        request_id: &done.request_id,
        arrived: done.start,
    };
    // Until the call returns its count: a client that leaves meanwhile leaves a record of (at
    // least) the attempt in flight.
    done.attempts = 1;
    let mut prepared = None;
    let called = {
        // Pinned where it is made: the call's future is large, and each move copies it.
        let upstream = std::pin::pin!(state.upstreams.call(&call));
        // Without a usage record or limits there is too little to make for the yield to pay.
        if done.ledger.is_some() || done.limit_status.is_some() {
            while_waiting(upstream, || prepared = Some(done.prepare())).await
        } else {
            upstream.await
        }
    };
    if let Some(p) = prepared {
        done.keep(p);
    }
    let delivered = match called {
        Ok(d) => d,
        Err(failed) => {
            done.attempts = failed.attempts;
            if !failed.unanswered {
                // No attempt was left unanswered: none was sent, or each was answered.
                done.sent = None;
            }
            if failed.error.is_upstream_failure() {
                telemetry::upstream_error(upstream_error_kind(&failed.error));
            }
            return Err(failed.error);
        }
    };
    done.attempts = delivered.attempts;
    if !delivered.response.status().is_success() || done.streamed {
        // The upstream's error answer billed nothing; a stream's first event (`message_start`,
        // with its usage) came before it was delivered, and what follows is counted as it
        // comes. Either way the body is not kept for the length of the answer.
        done.sent = None;
    }
    done.upstream = Some(delivered.headers_at - delivered.sent_at);
    Ok(Forwarded::Upstream(Box::new((
        delivered.response,
        delivered.sent_at,
        delivered.headers_at,
        cache,
    ))))
}

/// Await `upstream`, and if it has to wait, run `work` once while it does, after the other
/// tasks ready on this thread have run.
///
/// The first poll hands the request to its connection's task, which writes it when it runs:
/// this task wakes itself and yields to it (going to the back of the queue), and does `work` on
/// its next turn, while the upstream answers, rather than on the response's path. A future
/// ready at the first poll has no wait to use: `work` is not run.
async fn while_waiting<F: Future>(mut upstream: Pin<&mut F>, work: impl FnOnce()) -> F::Output {
    let mut work = Some(work);
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded && let Some(work) = work.take() {
            work();
        }
        if let Poll::Ready(out) = upstream.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if !yielded {
            yielded = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// The `rampart_upstream_errors_total` kind of a final upstream failure.
fn upstream_error_kind(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::UpstreamUnreachable => "connect",
        ProxyError::UpstreamFailed => "io",
        ProxyError::NoUpstreamAvailable { .. } => "circuit_open",
        _ => "timeout",
    }
}

/// Model scopes: the request's `model` and, for batch creation, every item's `params.model`
/// (parsed only here, for keys with model scopes). A refusal is the refused model (cut short)
/// and the client's error.
///
/// # Errors
/// A batch body whose items cannot be read ([`peek::first_refused_batch_model`]).
fn check_models(
    scopes: &Scopes,
    route: Route,
    model: Option<&str>,
    body: &[u8],
) -> Result<Option<(String, ProxyError)>, ProxyError> {
    if let Some(model) = model
        && !scopes.allows_model(model)
    {
        let shown: String = model.chars().take(100).collect();
        let err = ProxyError::Forbidden(format!("this API key may not use model {shown}"));
        return Ok(Some((shown, err)));
    }
    if route == Route::Batches
        && !scopes.models.is_empty()
        && let Some(item) = peek::first_refused_batch_model(body, |m| scopes.allows_model(m))?
    {
        let err = ProxyError::Forbidden(format!(
            "this API key may not use model {} (batch request custom_id {})",
            item.model, item.custom_id
        ));
        return Ok(Some((item.model, err)));
    }
    Ok(None)
}

async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(_) => Err(ProxyError::BodyRead),
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus the ones
/// Rampart sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Header names listed in `Connection`, which are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    if !headers.contains_key(header::CONNECTION) {
        return Vec::new();
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Headers never forwarded upstream: hop-by-hop ones, the client's bearer credential, and those
/// the connection sets (`host`, `content-length`). The client's `x-api-key`, `x-request-id` and
/// `accept-encoding` are overwritten instead ([`upstream_headers`]).
fn strip_on_request(name: &HeaderName) -> bool {
    is_hop_by_hop(name) || matches!(name.as_str(), "host" | "content-length" | "authorization")
}

/// The client's headers as sent upstream: hop-by-hop ones and its credentials removed, the
/// request id added, identity encoding asked for, and an empty `x-api-key` where each attempt
/// writes its target's key.
///
/// A header Rampart sets anyway is overwritten where the client's is rather than removed (a
/// removal costs a lookup and a shift); the `x-api-key` slot is kept so that each attempt's copy
/// of these headers takes the key in place instead of growing.
pub(crate) fn upstream_headers(mut headers: HeaderMap, request_id: &str) -> HeaderMap {
    let listed = connection_listed(&headers);
    // One removal at a time, each found by a scan of the names (usually two: `host` and
    // `content-length`), rather than a list of them made first.
    while let Some(name) = headers
        .keys()
        .find(|n| strip_on_request(n) || listed.contains(n))
        .cloned()
    {
        headers.remove(name);
    }
    match HeaderValue::from_str(request_id) {
        Ok(v) => {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
        Err(_) => {
            headers.remove(&X_REQUEST_ID);
        }
    }
    // Usage is read from the body on the side, so ask for it uncompressed.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // The client's own key never goes upstream: it is overwritten here, then by the target's.
    headers.insert(
        crate::exchange::X_API_KEY.clone(),
        HeaderValue::from_static(""),
    );
    headers
}

/// Answer from the response cache: no upstream call, zero upstream cost in the usage record.
fn cached_response(hit: CacheHit, mut done: Box<Completion>) -> Response {
    done.status = 200;
    done.client_aborted = false;
    done.overhead = Some(done.start.elapsed());
    done.settle_limits();
    let mut resp = http::Response::new(Body::from(hit.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(hit.content_type),
    );
    h.insert(
        crate::response_cache::CACHE_HEADER.clone(),
        crate::response_cache::outcome::HIT,
    );
    if let Ok(v) = HeaderValue::from_str(&done.request_id) {
        h.insert(X_REQUEST_ID.clone(), v.clone());
        h.insert(REQUEST_ID.clone(), v);
    }
    if let Some(s) = &done.limit_status {
        crate::admission::write_status(s, h);
    }
    resp
}

fn build_response(
    upstream: http::Response<UpstreamBody<crate::upstream::ResponseBody>>,
    mut done: Box<Completion>,
    sent_at: Instant,
    headers_at: Instant,
    cache: Option<CacheCapture>,
) -> (http::response::Parts, MeteredBody) {
    let (mut parts, body) = upstream.into_parts();
    for name in connection_listed(&parts.headers) {
        parts.headers.remove(name);
    }
    if parts.headers.keys().any(is_hop_by_hop) {
        let names: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|n| is_hop_by_hop(n))
            .cloned()
            .collect();
        for n in names {
            parts.headers.remove(&n);
        }
    }
    if let Some(v) = done
        .prepared
        .as_mut()
        .and_then(|p| p.request_id_header.take())
        .or_else(|| HeaderValue::from_str(&done.request_id).ok())
    {
        parts.headers.insert(X_REQUEST_ID.clone(), v);
    }
    done.upstream_request_id = parts
        .headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    done.streamed = is_sse;
    let tap = if is_sse {
        Tap::Sse(Box::default())
    } else if done.route.reports_usage() && parts.status.is_success() {
        Tap::Json(Copied::default())
    } else if done.ledger.is_some() && parts.status.as_u16() >= 400 {
        // The upstream's error answer, relayed: its record takes the envelope's error type.
        Tap::Error(Copied::default())
    } else {
        Tap::None
    };
    done.status = parts.status.as_u16();
    done.replace_upstream_limit_headers(&mut parts.headers, headers_at);
    done.overhead = Some((sent_at - done.start) + headers_at.elapsed());
    if let Some(c) = &cache {
        parts.headers.insert(
            crate::response_cache::CACHE_HEADER.clone(),
            c.outcome.clone(),
        );
    }
    // Only a complete, successful answer is worth capturing.
    let cache = cache.filter(|c| c.key.is_some() && parts.status.is_success());
    // A whole answer of a known, bounded size waits for its usage record (see
    // `spooled_first`); a stream or a large answer writes its record when its last frame
    // passes.
    let stage = done.ledger.is_some()
        && !is_sse
        && http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n <= JSON_TAP_LIMIT as u64);
    // The completion moves into the body: it is recorded when the body ends or is dropped.
    let metered = MeteredBody {
        inner: body,
        tap,
        cache,
        completion: Some(done),
        stage,
        staged: None,
    };
    (parts, metered)
}

/// A whole answer (not a stream) read before any of it is sent, its usage record staged as
/// its last frame is read and committed with the records of the other responses the worker
/// finishes in the same turn (one spool `write` for all of them), then sent head and body
/// together. The record is in the spool before the client has a byte of the response.
async fn spooled_first(parts: http::response::Parts, mut body: MeteredBody) -> Response {
    let mut frames = std::collections::VecDeque::with_capacity(1);
    loop {
        match std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await
        {
            Some(Ok(frame)) => {
                frames.push_back(Ok(frame));
                if http_body::Body::is_end_stream(&body) {
                    break;
                }
            }
            // Sent as it came: the head and what arrived, then the error (the connection is
            // cut, as when the answer is piped through).
            Some(Err(e)) => {
                frames.push_back(Err(e));
                break;
            }
            None => break,
        }
    }
    if let Some(staged) = body.staged.take() {
        staged.commit().await;
    }
    drop(body);
    Response::from_parts(parts, Body::new(Replay::new(frames)))
}

/// Frames read beforehand, sent as they were read.
struct Replay {
    frames: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Data bytes not yet sent.
    remaining: u64,
}

impl Replay {
    fn new(frames: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>) -> Self {
        let remaining = frames
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        Self { frames, remaining }
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.frames.pop_front();
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.remaining -= data.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.frames.iter().any(Result::is_err) {
            http_body::SizeHint::default()
        } else {
            http_body::SizeHint::with_exact(self.remaining)
        }
    }
}

/// What is read from the response on the side.
enum Tap {
    None,
    Sse(Box<UsageScanner>),
    /// A whole answer, for its usage (up to [`JSON_TAP_LIMIT`]).
    Json(Copied),
    /// An error answer (status >= 400, not a stream) relayed from the upstream, for its error
    /// type (up to [`ERROR_TAP_LIMIT`]): only with a usage ledger, never on a success's path.
    Error(Copied),
}

impl Tap {
    /// Take in the next frame's `data`.
    fn feed(&mut self, data: &Bytes) {
        match self {
            Tap::None => {}
            Tap::Sse(s) => s.feed(data),
            Tap::Json(body) => body.push(data, JSON_TAP_LIMIT),
            Tap::Error(body) => body.push(data, ERROR_TAP_LIMIT),
        }
    }

    /// The usage read from the response, if any.
    fn into_usage(self) -> Option<UsageSummary> {
        match self {
            Tap::None | Tap::Error(_) => None,
            Tap::Sse(s) => Some(s.into_summary()),
            Tap::Json(body) => body.read(JSON_TAP_LIMIT, UsageSummary::from_json).flatten(),
        }
    }

    /// The error type of a relayed error answer ([`UsageSummary::error_type_of`]: its
    /// envelope's, else its status's); `None` for any other answer.
    fn error_type(&self, status: u16) -> Option<&'static str> {
        let Tap::Error(body) = self else {
            return None;
        };
        let kind = body
            .read(ERROR_TAP_LIMIT, |b| UsageSummary::error_type_of(status, b))
            .unwrap_or_else(|| rampart_api::ErrorType::from_status(status));
        Some(kind.as_str())
    }
}

/// A body kept aside as reference-counted clones of its frames (no copy of the bytes), while it
/// stays within a limit; past it, nothing is kept.
#[derive(Default)]
struct Copied {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Copied {
    fn push(&mut self, data: &Bytes, limit: usize) {
        self.len = self.len.saturating_add(data.len());
        if self.len <= limit {
            self.chunks.push(data.clone());
        } else {
            self.chunks.clear();
        }
    }

    /// `read` of the whole body (joined only when it came in several frames); `None` past `limit`.
    fn read<T>(&self, limit: usize, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        (self.len <= limit).then(|| match self.chunks.as_slice() {
            [body] => read(body),
            chunks => read(&chunks.concat()),
        })
    }
}

/// The upstream body, piped through frame by frame, with usage read on the side and the
/// request's [`Completion`] recorded when it ends or is dropped.
struct MeteredBody {
    inner: UpstreamBody<crate::upstream::ResponseBody>,
    tap: Tap,
    /// The response cache's capture of this answer (a miss or a refresh).
    cache: Option<CacheCapture>,
    completion: Option<Box<Completion>>,
    /// Read whole before it is sent (`spooled_first`): the usage record is staged, not written.
    stage: bool,
    /// The staged record, until `spooled_first` commits it (written at once if dropped).
    staged: Option<rampart_ledger::Staged>,
}

impl MeteredBody {
    /// Hand the completion and what was tapped to the accounting thread: the usage read, the
    /// metrics and the access log happen after this frame has gone to the client. With a usage
    /// ledger, the usage is read and the record written here, before the frame is released.
    fn finish(&mut self, client_aborted: bool) {
        // A whole answer that ended well goes into the response cache (off the response path).
        if let Some(CacheCapture {
            capture,
            key: Some((key, ttl)),
            store,
            ..
        }) = self.cache.take()
            && !client_aborted
        {
            tokio::spawn(async move {
                if crate::response_cache::store(&store, key, ttl, capture).await {
                    telemetry::cache_event("store");
                }
            });
        }
        if let Some(mut c) = self.completion.take() {
            c.end();
            c.client_aborted = client_aborted;
            c.cut_at_shutdown();
            let tap = std::mem::replace(&mut self.tap, Tap::None);
            if c.ledger.is_some() || c.ticket.is_some() {
                if let Some(kind) = tap.error_type(c.status) {
                    c.error_type.get_or_insert(kind);
                }
                c.usage = tap.into_usage();
                c.estimate_unread_usage();
                c.settle_limits();
                if self.stage && !client_aborted {
                    self.staged = c.stage_usage();
                } else {
                    c.record_usage();
                }
                crate::accounting::defer(move || drop(c));
            } else {
                crate::accounting::defer(move || {
                    c.usage = tap.into_usage();
                    drop(c);
                });
            }
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Some(c) = &mut this.cache {
                    c.capture.push(data);
                }
                this.tap.feed(data);
            }
            // A body with a content-length is not polled past its last byte: finish here.
            if this.inner.is_end_stream() {
                this.finish(false);
            }
        }
        match &polled {
            Poll::Ready(Some(Err(e))) => {
                telemetry::upstream_error("io");
                // An answer cut off (not a stream, which ends in an `error` event instead): its
                // record says so with the type a stream's event would carry.
                if let Some(c) = this.completion.as_mut() {
                    c.error_type.get_or_insert(cut_off_error_type(e));
                }
                this.finish(false);
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error type of an answer cut off by the upstream: `timeout_error` for the idle timeout or
/// the deadline, `api_error` for a broken connection (as `exchange::UpstreamBody` names them in a
/// stream's closing event).
fn cut_off_error_type(e: &BoxError) -> &'static str {
    let timed_out = e
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
    if timed_out {
        rampart_api::ErrorType::TimeoutError.as_str()
    } else {
        rampart_api::ErrorType::ApiError.as_str()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Still holding the completion: the client went away before the end of the body.
        self.finish(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An upstream call on a current-thread runtime: its first poll hands the request to a
    /// connection task (which logs `written` when it runs, then answers).
    async fn call_through_a_connection_task(log: &Arc<Mutex<Vec<&'static str>>>) {
        let (request_tx, request_rx) = tokio::sync::oneshot::channel::<()>();
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
        let conn_log = log.clone();
        tokio::spawn(async move {
            if request_rx.await.is_ok() {
                conn_log.lock().unwrap().push("written");
                let _ = answer_tx.send(());
            }
        });
        // The connection task is waiting for a request before the call starts.
        tokio::task::yield_now().await;
        let upstream = async move {
            let _ = request_tx.send(());
            let _ = answer_rx.await;
        };
        let work_log = log.clone();
        while_waiting(std::pin::pin!(upstream), || {
            work_log.lock().unwrap().push("work");
        })
        .await;
    }

    #[tokio::test]
    async fn work_while_waiting_runs_after_the_connection_task_has_written_the_request() {
        let log = Arc::new(Mutex::new(Vec::new()));
        call_through_a_connection_task(&log).await;
        assert_eq!(*log.lock().unwrap(), ["written", "work"]);
    }

    #[tokio::test]
    async fn an_upstream_ready_at_once_has_no_wait_to_work_in() {
        let mut ran = false;
        let out = while_waiting(std::pin::pin!(async { 7 }), || ran = true).await;
        assert_eq!((out, ran), (7, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_lasts_until_its_response_ends_not_until_it_is_accounted() {
        let mut done = Completion::new(Route::Messages, Method::POST, "req_1".to_owned());
        tokio::time::advance(Duration::from_millis(30)).await;
        done.end();
        // The accounting thread records it a few milliseconds later.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(done.total(), Duration::from_millis(30));
        done.end();
        assert_eq!(done.total(), Duration::from_millis(30));
        // Without a marked end (a response never made), the duration runs to now.
        let open = Completion::new(Route::Messages, Method::POST, "req_2".to_owned());
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(open.total(), Duration::from_millis(7));
    }

    #[test]
    fn what_a_worker_drops_after_its_shutdown_grace_was_cut_by_rampart_not_its_client() {
        let outcome = |c: &Completion| (c.status, c.client_aborted, c.error_type);
        // Before: a dropped response is the client's doing.
        let mut left = Completion::new(Route::Messages, Method::POST, "req_1".to_owned());
        left.cut_at_shutdown();
        assert_eq!(outcome(&left), (499, true, None));
        // On a worker past its grace (a thread of its own here, as each worker is).
        let after = std::thread::spawn(move || {
            cutting_at_shutdown();
            let mut waiting = Completion::new(Route::Messages, Method::POST, "req_2".to_owned());
            waiting.cut_at_shutdown();
            let mut streaming = Completion::new(Route::Messages, Method::POST, "req_3".to_owned());
            streaming.status = 200;
            streaming.cut_at_shutdown();
            // An answer that ended is not cut, nor is an error's type replaced.
            let mut ended = Completion::new(Route::Messages, Method::POST, "req_4".to_owned());
            (ended.status, ended.client_aborted) = (200, false);
            ended.cut_at_shutdown();
            let mut failed = Completion::new(Route::Messages, Method::POST, "req_5".to_owned());
            (failed.status, failed.error_type) = (200, Some("overloaded_error"));
            failed.cut_at_shutdown();
            [&waiting, &streaming, &ended, &failed].map(|c| outcome(c))
        });
        assert_eq!(
            after.join().unwrap(),
            [
                (500, false, Some("api_error")),
                (200, false, Some("api_error")),
                (200, false, None),
                (200, false, Some("overloaded_error")),
            ]
        );
        // The other threads are not affected.
        left.cut_at_shutdown();
        assert_eq!(outcome(&left), (499, true, None));
    }

    #[test]
    fn a_replayed_answer_is_its_frames_in_order_with_its_exact_size() {
        let data = |s: &'static str| Ok(Frame::data(Bytes::from_static(s.as_bytes())));
        let mut body = Replay::new([data("{\"a\":"), data("1}")].into());
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(7));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read = Vec::new();
        while let Poll::Ready(Some(frame)) =
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx)
        {
            read.extend_from_slice(frame.unwrap().data_ref().unwrap());
            if http_body::Body::is_end_stream(&body) {
                assert_eq!(http_body::Body::size_hint(&body).exact(), Some(0));
            }
        }
        assert_eq!(read, b"{\"a\":1}");
        // An answer cut short is sent up to the cut, then fails as it did: its size is unknown.
        let cut: BoxError = "upstream went away".into();
        let mut body = Replay::new([data("{\"a\""), Err(cut)].into());
        assert_eq!(http_body::Body::size_hint(&body).exact(), None);
        assert!(matches!(
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert!(matches!(
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx),
            Poll::Ready(None)
        ));
    }

    #[test]
    fn a_relayed_error_answer_has_its_envelopes_type_else_its_statuss() {
        let envelope =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let tapped = |chunks: &[&'static [u8]]| {
            let mut tap = Tap::Error(Copied::default());
            for chunk in chunks {
                tap.feed(&Bytes::from_static(chunk));
            }
            tap
        };
        // One frame or several.
        assert_eq!(
            tapped(&[envelope]).error_type(529),
            Some("overloaded_error")
        );
        let (a, b) = envelope.split_at(30);
        assert_eq!(tapped(&[a, b]).error_type(500), Some("overloaded_error"));
        // Not an envelope, or one too long to have been kept: the status's type.
        assert_eq!(tapped(&[b"Bad Gateway"]).error_type(502), Some("api_error"));
        let over = Tap::Error(Copied {
            chunks: Vec::new(),
            len: ERROR_TAP_LIMIT + 1,
        });
        assert_eq!(over.error_type(429), Some("rate_limit_error"));
        // No other answer has one (a success's tap is not read for it), nor usage.
        assert!(Tap::None.error_type(200).is_none());
        let json = Tap::Json(Copied {
            chunks: vec![Bytes::from_static(envelope)],
            len: envelope.len(),
        });
        assert!(json.error_type(200).is_none());
        assert!(tapped(&[envelope]).into_usage().is_none());
    }

    #[test]
    fn a_streams_error_event_is_recorded_by_a_type_the_api_uses() {
        assert_eq!(stream_error_type("overloaded_error"), "overloaded_error");
        assert_eq!(stream_error_type("rate_limit_error"), "rate_limit_error");
        // What the scanner names an event it cannot read, or a type of the upstream's making.
        assert_eq!(stream_error_type("unknown"), "api_error");
        assert_eq!(stream_error_type(&"x".repeat(10_000)), "api_error");
    }

    #[test]
    fn an_answer_cut_off_is_a_timeout_or_an_api_error() {
        let timed_out: BoxError = std::io::Error::new(std::io::ErrorKind::TimedOut, "idle").into();
        assert_eq!(cut_off_error_type(&timed_out), "timeout_error");
        let reset: BoxError = std::io::Error::other("connection reset").into();
        assert_eq!(cut_off_error_type(&reset), "api_error");
    }

    #[test]
    fn request_ids_from_clients_are_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(request_id(&h), "abc-123_x.y");
        h.insert(
            "x-request-id",
            HeaderValue::from_static("bad id with spaces"),
        );
        assert!(request_id(&h).starts_with("req_rmp_"));
        assert_eq!(request_id(&HeaderMap::new()).len(), "req_rmp_".len() + 32);
    }

    #[test]
    fn upstream_headers_drop_hop_by_hop_credentials_and_what_connection_lists() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("host", "gw"),
            ("content-length", "5"),
            ("x-api-key", "rk_live_secret"),
            ("authorization", "Bearer secret"),
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-private", "p"),
            ("accept-encoding", "gzip"),
            ("x-request-id", "client-chosen"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "a"),
            ("anthropic-beta", "b"),
            ("x-custom", "1"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let out = upstream_headers(h, "req_1");
        // Names in any order; one name's values in the client's.
        let mut shown: Vec<(String, Vec<String>)> = out
            .keys()
            .map(|n| {
                let values = out
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned());
                (n.to_string(), values.collect())
            })
            .collect();
        shown.sort();
        let want: Vec<(String, Vec<String>)> = [
            ("accept-encoding", &["identity"][..]),
            ("anthropic-beta", &["a", "b"]),
            ("anthropic-version", &["2023-06-01"]),
            ("x-api-key", &[""]),
            ("x-custom", &["1"]),
            ("x-request-id", &["req_1"]),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.iter().map(|v| (*v).to_owned()).collect()))
        .collect();
        assert_eq!(shown, want);
    }

    #[test]
    fn connection_listed_headers_are_found() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-custom"));
        let listed = connection_listed(&h);
        assert!(listed.contains(&HeaderName::from_static("x-custom")));
    }

    #[test]
    fn shown_models_keep_the_first_characters() {
        let old = |m: &str| m.chars().take(MAX_MODEL_CHARS).collect::<String>();
        for m in [
            String::new(),
            "claude-sonnet-4-6".to_owned(),
            "x".repeat(MAX_MODEL_CHARS),
            "y".repeat(MAX_MODEL_CHARS + 1),
            "é".repeat(MAX_MODEL_CHARS),
            "é".repeat(MAX_MODEL_CHARS + 3),
            format!("{}😀tail", "a".repeat(MAX_MODEL_CHARS - 1)),
        ] {
            assert_eq!(shown_model(&m), old(&m));
        }
    }
}
