//! The upstream call: the one step of the pipeline between the request checks and the response
//! going back to the client ([`Upstreams::call`]).
//!
//! For each request:
//! 1. **Deadline**: the route's overall timeout (`total_timeout_ms`) and the client's own
//!    `x-stainless-timeout` (seconds) from when the request arrived; the earlier one bounds every
//!    attempt and wait before the first byte, so Rampart never keeps working after the client has
//!    given up. Once the answer is flowing only the route's deadline applies (the SDKs' timeout is
//!    per read, and a client that gives up disconnects, which cancels the upstream request).
//! 2. **Routing** ([`crate::routing`]): an alias becomes its model; `auto` becomes the model its
//!    rules choose (with a `count_tokens` pre-flight when configured); the model's fallback chain
//!    is prepared.
//! 3. **Attempts**, at most `max_attempts` in all:
//!    - pick a target ([`Pool::pick`]): a target this request has not tried yet when one is
//!      ready; none ready means a fallback model (every breaker open) or, when all are cooling
//!      down, the one that cools down first — after a rate limit the retry waits for it (up to
//!      the retry-after cap, else the next fallback model or the end), otherwise it goes anyway
//!      (the limit that cooled it may be another model's);
//!    - every attempt after the first takes a token from the retry budget; one on a target
//!      already tried waits first: the upstream's `retry-after` (if within the cap), else the
//!      jittered backoff;
//!    - send, under the connect and first-byte timeouts; a stream is **held back** until its
//!      first event proves it healthy (`message_start`; an in-band `event: error` there is a
//!      failure like any other);
//!    - [`classify`] the outcome; report it to the pool (breaker, latency, cool-down); an
//!      overloaded model moves on to its next fallback at once; other retryable failures try
//!      again; a client error, or a success, ends the loop.
//! 4. **The answer**: the upstream's response, piped (see [`UpstreamBody`]), with
//!    `x-rampart-served-model`, `x-rampart-attempts` (when more than one attempt was made), and
//!    `x-rampart-route` / `x-rampart-fallback` when routing changed the model. After the final failure the client gets the upstream's own
//!    error (status, headers, body — or the in-band error event) with `x-should-retry: false`, or
//!    Rampart's error when there was no upstream answer (connect failure, a timeout, no target
//!    available), also with `x-should-retry: false`, so the official SDKs do not retry on top.
//!
//! Nothing reaches the client before the loop ends, so retries and fallbacks never duplicate
//! output. Once bytes have been sent, a failure cannot be retried: a stream then ends with a
//! well-formed `event: error` (`timeout_error` for the idle timeout or the deadline, `api_error`
//! for a broken connection); a JSON body is cut off.

use std::borrow::Cow;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full};
use rampart_api::{ErrorBody, ErrorEnvelope, ErrorType, stream::StreamEvent};
use serde_json::{Map, Value};
use tokio::time::{Instant, Sleep};

use crate::auth::Scopes;
use crate::classify::{Class, Observed, Outcome, classify};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::resilience_config::{ResilienceSettings, RouteTimeouts, TargetKey};
use crate::retry::{RetryBudget, RetrySettings};
use crate::routes::Route;
use crate::routing::{self, AutoRules, RoutingSettings, Tier, TokenCache, TokenSource};
use crate::upstream_key::UpstreamKey;
use crate::upstream_pool::{
    BoxError, HyperTransport, Lease, Pick, Pool, Target, TargetSpec, Transport,
};
use crate::window::Clock;

/// The upstream credential header: left empty by `proxy::upstream_headers`, filled per attempt
/// here.
pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_STAINLESS_TIMEOUT: HeaderName = HeaderName::from_static("x-stainless-timeout");
static X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
static X_SERVED_MODEL: HeaderName = HeaderName::from_static("x-rampart-served-model");
static X_ROUTE: HeaderName = HeaderName::from_static("x-rampart-route");
static X_FALLBACK: HeaderName = HeaderName::from_static("x-rampart-fallback");
static X_ATTEMPTS: HeaderName = HeaderName::from_static("x-rampart-attempts");

/// Largest upstream error body kept to hand back after the final failure.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Largest stream head held back while waiting for the first real event.
const HOLDBACK_LIMIT: usize = 1024 * 1024;
/// Largest partial event kept while piping a stream (past it, bytes are passed on as they come).
const PARTIAL_EVENT_LIMIT: usize = 8 * 1024 * 1024;
/// `count_tokens` answers are kept this long.
const TOKEN_CACHE_TTL_MS: u64 = 10 * 60 * 1000;
const TOKEN_CACHE_ENTRIES: usize = 4096;

/// Why the request's deadline exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The route's overall timeout.
    Total(Duration),
    /// The client's `x-stainless-timeout`.
    Client(Duration),
}

impl Cut {
    fn error(self) -> ProxyError {
        match self {
            Self::Total(d) => ProxyError::DeadlineExceeded(d.as_millis()),
            Self::Client(d) => ProxyError::ClientTimeout(d.as_millis()),
        }
    }

    fn message(self) -> String {
        self.error().to_string()
    }
}

#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    cut: Cut,
}

impl Deadline {
    fn of(arrived: Instant, total: Option<Duration>, client: Option<Duration>) -> Option<Self> {
        let a = total.map(|d| Self {
            at: arrived + d,
            cut: Cut::Total(d),
        });
        let b = client.map(|d| Self {
            at: arrived + d,
            cut: Cut::Client(d),
        });
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The earlier of `at` and the deadline, and whether the deadline is the one that bites.
    fn bound(this: Option<Self>, at: Instant) -> (Instant, Option<Cut>) {
        match this {
            Some(d) if d.at <= at => (d.at, Some(d.cut)),
            _ => (at, None),
        }
    }
}

/// The client's `x-stainless-timeout` (seconds, fractions allowed), when sane (up to a day).
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(&X_STAINLESS_TIMEOUT)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0.0 && secs <= 86_400.0).then(|| Duration::from_secs_f64(secs))
}

/// The request, as the upstream call needs it.
#[derive(Debug)]
pub struct Call<'a> {
    /// The route.
    pub route: Route,
    /// Method.
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: http::uri::PathAndQuery,
    /// Headers to forward (hop-by-hop and client credentials already removed).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// `model`, when the body names one.
    pub model: Option<&'a str>,
    /// Where the `model` value sits in the body (for rewriting it).
    pub model_span: Option<Range<usize>>,
    /// `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// The caller's key scopes (routing never picks a model they refuse).
    pub scopes: Option<&'a Scopes>,
    /// Request id (logs).
    pub request_id: &'a str,
    /// When the request arrived (the deadline counts from here).
    pub arrived: Instant,
}

/// The upstream's answer, ready to pipe to the client.
#[derive(Debug)]
pub struct Delivered<B> {
    /// Status, headers and body.
    pub response: http::Response<UpstreamBody<B>>,
    /// When the first attempt was sent.
    pub sent_at: Instant,
    /// When the answer's headers arrived.
    pub headers_at: Instant,
    /// Upstream attempts made.
    pub attempts: u32,
}

/// No upstream answer to pass on: Rampart's error, and the attempts made.
#[derive(Debug)]
pub struct Failed {
    /// The error the client gets.
    pub error: ProxyError,
    /// Upstream attempts made (0 when none could be).
    pub attempts: u32,
    /// An attempt's request reached the upstream and got no answer (the connection broke
    /// after it was written, or no headers or first event came in time): the upstream may have
    /// done, and billed, the work.
    pub unanswered: bool,
}

/// The pool, the routing rules, the retry policy and the transport. See the module docs.
#[derive(Debug)]
pub struct Upstreams<T: Transport = HyperTransport> {
    pool: Pool,
    routing: RoutingSettings,
    transport: T,
    retry: RetrySettings,
    budget: RetryBudget,
    timeouts: [RouteTimeouts; 4],
    tokens: TokenCache,
}

impl Upstreams<HyperTransport> {
    /// The upstreams of `settings`: `default_key` for targets without their own credential,
    /// `stored` for targets naming a stored one.
    ///
    /// # Errors
    /// A key that is needed but missing, or TLS that cannot be set up.
    pub fn new(
        settings: &Settings,
        default_key: Option<Arc<UpstreamKey>>,
        stored: &[(String, Arc<UpstreamKey>)],
    ) -> Result<Self, String> {
        Self::with_transport(
            &settings.resilience,
            settings.routing.clone(),
            HyperTransport::new()?,
            default_key,
            stored,
        )
    }
}

impl<T: Transport> Upstreams<T> {
    /// [`Upstreams::new`] with another transport (tests).
    ///
    /// # Errors
    /// A key that is needed but missing, or an invalid pool.
    pub fn with_transport(
        settings: &ResilienceSettings,
        routing: RoutingSettings,
        transport: T,
        default_key: Option<Arc<UpstreamKey>>,
        stored: &[(String, Arc<UpstreamKey>)],
    ) -> Result<Self, String> {
        let mut specs = Vec::with_capacity(settings.targets.len());
        for t in &settings.targets {
            let key = match &t.key {
                TargetKey::Default => default_key
                    .clone()
                    .ok_or("no upstream API key is configured")?,
                TargetKey::Fixed(secret) => Arc::new(UpstreamKey::fixed(secret)?),
                TargetKey::Stored(name) => stored
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, k)| k.clone())
                    .ok_or_else(|| {
                        format!(
                            "upstream target `{}`: stored credential `{name}` is not loaded",
                            t.name
                        )
                    })?,
            };
            specs.push(TargetSpec {
                name: t.name.clone(),
                base: t.base.clone(),
                key,
                weight: t.weight,
                models: t.models.clone(),
            });
        }
        Ok(Self {
            pool: Pool::new(
                specs,
                settings.batch_target,
                settings.breaker,
                settings.max_cooldown,
            )?,
            routing,
            transport,
            retry: settings.retry,
            budget: RetryBudget::new(&settings.retry),
            timeouts: settings.timeouts,
            tokens: TokenCache::new(TOKEN_CACHE_ENTRIES, TOKEN_CACHE_TTL_MS),
        })
    }

    /// The routing rules.
    #[must_use]
    pub fn routing(&self) -> &RoutingSettings {
        &self.routing
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Make the upstream call for `call`. See the module docs.
    ///
    /// # Errors
    /// [`Failed`] with Rampart's answer when no upstream answer is to be passed on: a bad
    /// routing hint (400), a model the key may not use (403), no target for the model (404),
    /// every breaker open (529), a connect failure (502), a timeout (504), a missing upstream
    /// key (500).
    ///
    /// `call` is borrowed, not moved: an async fn keeps what it is given and its own copy of it,
    /// and this future is already kilobytes.
    pub async fn call(&self, call: &Call<'_>) -> Result<Delivered<T::Body>, Failed> {
        let timeouts = self.timeouts[route_index(call.route)];
        let deadline = Deadline::of(call.arrived, timeouts.total, client_timeout(&call.headers));
        let clock = *self.pool.clock();
        self.budget.request(clock.now_ms());
        let (chain, route_note) = self.plan(call, deadline).await.map_err(|error| Failed {
            error,
            attempts: 0,
            unanswered: false,
        })?;
        let body = body_for(call, chain.model(0));
        let mut run = Run {
            call,
            chain,
            timeouts,
            deadline,
            index: 0,
            body,
            tried: 0,
            attempts: 0,
            waits: 0,
            fresh_model: true,
            fallback_note: None,
            route_note,
            sent_at: None,
            unanswered: false,
        };
        let result = self.run(&mut run).await;
        result.map_err(|error| Failed {
            error,
            attempts: run.attempts,
            unanswered: run.unanswered,
        })
    }

    /// The models to try, and the `x-rampart-route` note when routing changed the model.
    async fn plan<'c>(
        &self,
        call: &Call<'c>,
        deadline: Option<Deadline>,
    ) -> Result<(Chain<'c>, Option<String>), ProxyError> {
        let Some(requested) = call.model else {
            return Ok((Chain::single(None), None));
        };
        if !self.routing.is_active()
            || call.model_span.is_none()
            || !matches!(call.route, Route::Messages | Route::CountTokens)
        {
            return Ok((Chain::single(Some(Cow::Borrowed(requested))), None));
        }
        let (model, note) = match &self.routing.auto {
            Some(rules) if rules.name == requested => {
                // Boxed: routing by task is the exception, and its future is large.
                let (model, reason) = Box::pin(self.auto(call, rules, deadline)).await?;
                let note = format!("{requested} -> {model}; {reason}");
                (model, Some(note))
            }
            _ => match self.routing.aliases.get(requested) {
                Some(model) => (
                    model.clone(),
                    Some(format!("{requested} -> {model}; alias")),
                ),
                None => (requested.to_owned(), None),
            },
        };
        let models = self.routing.chain(&model, call.scopes);
        Ok((Chain::many(models), note))
    }

    /// Choose the `auto` model; returns it and the reason.
    async fn auto(
        &self,
        call: &Call<'_>,
        rules: &AutoRules,
        deadline: Option<Deadline>,
    ) -> Result<(String, String), ProxyError> {
        let hint = match call.headers.get(&rules.hint_header) {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(Tier::parse).ok_or_else(|| {
                ProxyError::InvalidRequest(format!(
                    "{}: must be one of haiku, sonnet, opus",
                    rules.hint_header
                ))
            })?),
        };
        let (tier, reason) = if call.route == Route::CountTokens {
            // Counting needs no decision about output: the Sonnet model counts like any.
            (hint.unwrap_or(Tier::Sonnet), "count_tokens".to_owned())
        } else {
            let body: Map<String, Value> =
                serde_json::from_slice(&call.body).map_err(|_| ProxyError::NotAnObject)?;
            let features = routing::features(&body);
            let first = rules.decide(&features, call.max_tokens, None, hint);
            if hint.is_none() && rules.needs_tokens(first.tier) {
                let (n, source) = self.input_tokens(call, rules, &body, deadline).await;
                let d = rules.decide(&features, call.max_tokens, Some((n, source)), hint);
                (d.tier, d.reason)
            } else {
                (first.tier, first.reason)
            }
        };
        let chosen = match call.scopes {
            Some(s) => routing::nearest_allowed(tier, |t| s.allows_model(rules.model(t)))
                .ok_or_else(|| {
                    ProxyError::Forbidden(format!(
                        "this API key may not use any model {} routes to",
                        rules.name
                    ))
                })?,
            None => tier,
        };
        let reason = if chosen == tier {
            reason
        } else {
            format!("{reason}; {} not allowed for this key", tier.as_str())
        };
        let model = rules.model(chosen).to_owned();
        metrics::counter!("rampart_routing_auto_total", "tier" => chosen.as_str()).increment(1);
        tracing::info!(
            target: "rampart::routing",
            request_id = call.request_id,
            requested = %rules.name,
            model = %model,
            tier = chosen.as_str(),
            reason = %reason,
            "auto route"
        );
        Ok((model, reason))
    }

    /// The input size for `auto`: the upstream's `count_tokens` (cached) or the local estimate.
    async fn input_tokens(
        &self,
        call: &Call<'_>,
        rules: &AutoRules,
        body: &Map<String, Value>,
        deadline: Option<Deadline>,
    ) -> (u64, &'static str) {
        if rules.token_source == TokenSource::Estimate {
            return (routing::estimate_tokens(body), "estimate");
        }
        let model = rules.model(Tier::Sonnet);
        let count_body = routing::count_tokens_body(body, model);
        let key = TokenCache::digest(&count_body);
        let clock = self.pool.clock();
        if let Some(n) = self.tokens.get(&key, clock.now_ms()) {
            return (n, "count_tokens, cached");
        }
        match self.count_upstream(call, model, count_body, deadline).await {
            Some(n) => {
                self.tokens.put(key, n, clock.now_ms());
                (n, "count_tokens")
            }
            None => (
                routing::estimate_tokens(body),
                "estimate, count_tokens failed",
            ),
        }
    }

    /// One `count_tokens` call, no retries; `None` on any failure.
    async fn count_upstream(
        &self,
        call: &Call<'_>,
        model: &str,
        body: Bytes,
        deadline: Option<Deadline>,
    ) -> Option<u64> {
        let mut lease = match self.pool.pick(Some(model), false, 0) {
            Pick::Target(l) => l,
            Pick::Cooling { index, .. } => self.pool.lease(index)?,
            Pick::Open { .. } | Pick::NoTarget => return None,
        };
        let t = self.timeouts[route_index(Route::CountTokens)];
        let pq = http::uri::PathAndQuery::from_static("/v1/messages/count_tokens");
        let mut headers = call.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let req = request(lease.target(), &Method::POST, &pq, &headers, body).ok()?;
        let sent = Instant::now();
        let (limit, _) = Deadline::bound(deadline, sent + t.first_byte);
        let resp = match tokio::time::timeout_at(limit, self.transport.send(req, t.connect)).await {
            Ok(Ok(r)) => r,
            Ok(Err(f)) => {
                self.pool
                    .report(&mut lease, &classify(Observed::Transport(f)), None, None);
                return None;
            }
            Err(_) => return None,
        };
        let outcome = classify(Observed::Response(resp.status(), resp.headers()));
        let latency = sent.elapsed();
        self.pool
            .report(&mut lease, &outcome, Some(latency), Some(resp.headers()));
        if outcome.class != Class::Success {
            return None;
        }
        let bytes = read_limited(resp.into_body(), t.idle, deadline, ERROR_BODY_LIMIT)
            .await
            .ok()?;
        #[derive(serde::Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        serde_json::from_slice::<Count>(&bytes)
            .ok()
            .map(|c| c.input_tokens)
    }

    async fn run(&self, run: &mut Run<'_, '_>) -> Result<Delivered<T::Body>, ProxyError> {
        let clock = *self.pool.clock();
        let batches = matches!(
            run.call.route,
            Route::Batches | Route::Batch | Route::BatchCancel | Route::BatchResults
        );
        let mut last: Option<Failure> = None;
        let mut unavailable: Option<Unavailable> = None;
        let mut granted = false;
        let mut waited = false;
        loop {
            if run.attempts >= self.retry.max_attempts {
                break;
            }
            if run.attempts > 0 && !granted {
                if !self.budget.try_retry(clock.now_ms()) {
                    metrics::counter!("rampart_upstream_retry_budget_exhausted_total").increment(1);
                    tracing::warn!(
                        target: "rampart::upstream",
                        request_id = run.call.request_id,
                        attempts = run.attempts,
                        "retry budget spent: not retrying"
                    );
                    break;
                }
                granted = true;
            }
            let lease = match self
                .pool
                .pick(run.chain.model(run.index), batches, run.tried)
            {
                Pick::Target(l) => l,
                Pick::Cooling { index, until_ms } => {
                    let wait = Duration::from_millis(until_ms.saturating_sub(clock.now_ms()));
                    let rate_limited = last
                        .as_ref()
                        .is_some_and(|f| f.outcome.class.cools_target());
                    if rate_limited {
                        // A retry after a rate limit waits for the cool-down when it is short
                        // enough.
                        if wait > self.retry.max_retry_after || run.past_deadline(wait) {
                            if run.advance("rate_limited") {
                                continue;
                            }
                            break;
                        }
                        tokio::time::sleep(wait).await;
                        waited = true;
                    }
                    // Anything else goes anyway: the limit may be another model's, not the
                    // target's, and only the upstream knows.
                    match self.pool.lease(index) {
                        Some(l) => l,
                        None => break,
                    }
                }
                Pick::Open { until_ms } => {
                    if run.advance("circuit_open") {
                        continue;
                    }
                    unavailable = Some(Unavailable::Open {
                        model: run.chain.model(run.index).map(str::to_owned),
                        retry_in: until_ms
                            .map(|u| Duration::from_millis(u.saturating_sub(clock.now_ms()))),
                    });
                    break;
                }
                Pick::NoTarget => {
                    if run.advance("no_target") {
                        continue;
                    }
                    unavailable = Some(Unavailable::NoTarget(
                        run.chain.model(run.index).map(str::to_owned),
                    ));
                    break;
                }
            };
            if run.attempts > 0
                && !waited
                && !run.fresh_model
                && run.tried & (1 << lease.index()) != 0
            {
                // Same target again: wait first.
                let hint = last.as_ref().and_then(|f| f.outcome.retry_after);
                let wait = match hint {
                    Some(h) if h > self.retry.max_retry_after => {
                        drop(lease);
                        if run.advance("retry_after_too_long") {
                            continue;
                        }
                        break;
                    }
                    Some(h) => h,
                    None => self.retry.backoff(run.waits),
                };
                if run.past_deadline(wait) {
                    break;
                }
                drop(lease);
                run.waits += 1;
                waited = true;
                tokio::time::sleep(wait).await;
                continue;
            }
            granted = false;
            waited = false;
            run.attempts += 1;
            run.tried |= 1 << lease.index();
            run.fresh_model = false;
            if run.attempts > 1 {
                metrics::counter!(
                    "rampart_upstream_retries_total",
                    "reason" => last.as_ref().map_or("fallback", |f| f.outcome.class.as_str())
                )
                .increment(1);
            }
            match self.attempt(run, lease, clock).await {
                Ok(delivered) => return Ok(delivered),
                Err(failure) => {
                    let target = &self.pool.targets()[failure.target];
                    let give_up = failure.stop.is_some() || !failure.outcome.class.retryable();
                    tracing::info!(
                        target: "rampart::upstream",
                        request_id = run.call.request_id,
                        attempt = run.attempts,
                        upstream = %target.name,
                        model = run.chain.model(run.index).unwrap_or(""),
                        outcome = failure.outcome.class.as_str(),
                        "upstream attempt failed"
                    );
                    let falls_back = failure.outcome.class.falls_back();
                    run.unanswered |= failure.outcome.class.unanswered();
                    last = Some(failure);
                    if give_up {
                        break;
                    }
                    if falls_back {
                        run.advance("overloaded");
                    }
                }
            }
        }
        self.give_up(run, last, unavailable)
    }

    /// The final answer when no attempt succeeded.
    fn give_up(
        &self,
        run: &Run<'_, '_>,
        last: Option<Failure>,
        unavailable: Option<Unavailable>,
    ) -> Result<Delivered<T::Body>, ProxyError> {
        let Some(failure) = last else {
            return Err(match unavailable {
                Some(Unavailable::Open { model, retry_in }) => ProxyError::NoUpstreamAvailable {
                    model: model.unwrap_or_else(|| "this route".to_owned()),
                    retry_after_secs: retry_in.map_or(1, |d| d.as_secs().max(1)),
                },
                Some(Unavailable::NoTarget(model)) => {
                    ProxyError::ModelNotServed(model.unwrap_or_default())
                }
                None => ProxyError::UpstreamUnreachable,
            });
        };
        tracing::warn!(
            target: "rampart::upstream",
            request_id = run.call.request_id,
            attempts = run.attempts,
            upstream = %self.pool.targets()[failure.target].name,
            outcome = failure.outcome.class.as_str(),
            "upstream call failed"
        );
        if let Some(stop) = failure.stop {
            return Err(stop);
        }
        let Some(held) = failure.held else {
            let t = run.timeouts;
            return Err(match failure.outcome.class {
                Class::ConnectFailed => ProxyError::UpstreamUnreachable,
                Class::ConnectTimeout => ProxyError::UpstreamConnectTimeout(t.connect.as_millis()),
                Class::FirstByteTimeout => ProxyError::UpstreamTimeout(t.first_byte.as_millis()),
                Class::IdleTimeout => ProxyError::StreamIdleTimeout(t.idle.as_millis()),
                _ => ProxyError::UpstreamFailed,
            });
        };
        let mut parts = held.parts;
        parts
            .headers
            .insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        let len = held.body.len();
        if parts.headers.contains_key(CONTENT_LENGTH) {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        run.annotate(&mut parts.headers, failure.model.as_deref());
        let now = Instant::now();
        Ok(Delivered {
            response: http::Response::from_parts(parts, UpstreamBody::buffered(held.body)),
            sent_at: run.sent_at.unwrap_or(now),
            headers_at: now,
            attempts: run.attempts,
        })
    }

    /// One attempt on `lease`'s target.
    async fn attempt(
        &self,
        run: &mut Run<'_, '_>,
        mut lease: Lease,
        clock: Clock,
    ) -> Result<Delivered<T::Body>, Failure> {
        let model = run.chain.model(run.index).map(str::to_owned);
        let target = lease.index();
        let fail = |outcome: Outcome, held: Option<Held>, stop: Option<ProxyError>| Failure {
            outcome,
            target,
            model: model.clone(),
            held,
            stop,
        };
        let t = run.timeouts;
        let call = run.call;
        let req = match request(
            lease.target(),
            &call.method,
            &call.path_and_query,
            &call.headers,
            run.body.clone(),
        ) {
            Ok(r) => r,
            // No key loaded for this target (or a path it cannot take): nothing was sent.
            Err(e) => {
                let o = classify(Observed::Response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &HeaderMap::new(),
                ));
                return Err(fail(o, None, Some(e)));
            }
        };
        let sent = Instant::now();
        run.sent_at.get_or_insert(sent);
        let (limit, cut) = Deadline::bound(run.deadline, sent + t.first_byte);
        let resp = match tokio::time::timeout_at(limit, self.transport.send(req, t.connect)).await {
            Err(_) => {
                let o = classify(Observed::FirstByteTimeout);
                if cut.is_none() {
                    self.pool.report(&mut lease, &o, None, None);
                }
                return Err(fail(o, None, cut.map(Cut::error)));
            }
            Ok(Err(transport)) => {
                let o = classify(Observed::Transport(transport));
                self.pool.report(&mut lease, &o, None, None);
                return Err(fail(o, None, None));
            }
            Ok(Ok(r)) => r,
        };
        let headers_at = Instant::now();
        let latency = headers_at - sent;
        let outcome = classify(Observed::Response(resp.status(), resp.headers()));
        let (mut parts, body) = resp.into_parts();
        if outcome.class.retryable() {
            let bytes = match read_limited(body, t.idle, run.deadline, ERROR_BODY_LIMIT).await {
                Ok(b) => b,
                Err(_) => Bytes::from(
                    ErrorEnvelope::new(
                        ErrorType::from_status(parts.status.as_u16()),
                        "the upstream's error response could not be read",
                    )
                    .to_json(),
                ),
            };
            self.pool
                .report(&mut lease, &outcome, Some(latency), Some(&parts.headers));
            return Err(fail(outcome, Some(Held { parts, body: bytes }), None));
        }
        let sse = is_event_stream(&parts.headers);
        // Before the first byte the client's own timeout counts too; once it is reading, its
        // timeout is per read (the SDKs' is), so the body answers only to the route's deadline.
        let body_deadline = Deadline::of(call.arrived, t.total, None);
        let mut body = UpstreamBody::pipe(body, sse, t.idle, body_deadline, clock);
        if sse && outcome.class == Class::Success && call.route == Route::Messages {
            match hold_back(&mut body, run.deadline).await {
                Head::Healthy => {}
                Head::InBand(kind) => {
                    let o = classify(Observed::InBandError(&kind));
                    self.pool
                        .report(&mut lease, &o, Some(latency), Some(&parts.headers));
                    if o.class.retryable() {
                        let mut held = BytesMut::new();
                        if let Some(p) = body.prefix.take() {
                            held.extend_from_slice(&p);
                        }
                        if let Some(t) = body.sse.as_ref() {
                            held.extend_from_slice(t);
                        }
                        let held = Held {
                            parts,
                            body: held.freeze(),
                        };
                        return Err(fail(o, Some(held), None));
                    }
                    parts
                        .headers
                        .insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
                    return Ok(self.deliver(run, parts, body, lease, headers_at));
                }
                Head::Failed(observed) => {
                    let o = classify(observed);
                    self.pool.report(&mut lease, &o, Some(latency), None);
                    return Err(fail(o, None, None));
                }
                Head::Cut(cut) => {
                    return Err(fail(
                        classify(Observed::IdleTimeout),
                        None,
                        Some(cut.error()),
                    ));
                }
            }
        }
        self.pool
            .report(&mut lease, &outcome, Some(latency), Some(&parts.headers));
        if outcome.class == Class::ClientError {
            parts
                .headers
                .insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        }
        Ok(self.deliver(run, parts, body, lease, headers_at))
    }

    fn deliver(
        &self,
        run: &Run<'_, '_>,
        mut parts: http::response::Parts,
        mut body: UpstreamBody<T::Body>,
        lease: Lease,
        headers_at: Instant,
    ) -> Delivered<T::Body> {
        if body.sse.is_some() {
            // Rampart may end the stream with its own error event: the length is not known.
            parts.headers.remove(CONTENT_LENGTH);
        }
        run.annotate(&mut parts.headers, run.chain.model(run.index));
        body.lease = Some(lease);
        Delivered {
            response: http::Response::from_parts(parts, body),
            sent_at: run.sent_at.unwrap_or(headers_at),
            headers_at,
            attempts: run.attempts,
        }
    }
}

/// The state of one request's attempts.
struct Run<'r, 'c> {
    call: &'r Call<'c>,
    chain: Chain<'c>,
    timeouts: RouteTimeouts,
    deadline: Option<Deadline>,
    /// Position in the chain.
    index: usize,
    /// The body for the current model.
    body: Bytes,
    /// Targets tried for the current model (bit set).
    tried: u64,
    attempts: u32,
    /// Backoff waits so far (the exponent).
    waits: u32,
    /// No attempt yet on the current model.
    fresh_model: bool,
    fallback_note: Option<String>,
    route_note: Option<String>,
    sent_at: Option<Instant>,
    /// An attempt was sent and left unanswered ([`Class::unanswered`]).
    unanswered: bool,
}

impl Run<'_, '_> {
    /// Move to the next model of the chain, if there is one.
    fn advance(&mut self, reason: &'static str) -> bool {
        let Some(next) = self.chain.model(self.index + 1) else {
            return false;
        };
        let from = self.chain.model(self.index).unwrap_or("");
        metrics::counter!(
            "rampart_routing_fallbacks_total",
            "from" => from.to_owned(),
            "to" => next.to_owned(),
            "reason" => reason
        )
        .increment(1);
        tracing::info!(
            target: "rampart::routing",
            request_id = self.call.request_id,
            from,
            to = next,
            reason,
            "falling back to the next model"
        );
        let note = format!("{from} -> {next}; {reason}");
        self.fallback_note = Some(match self.fallback_note.take() {
            Some(earlier) => format!("{earlier}, {note}"),
            None => note,
        });
        self.body = body_for(self.call, Some(next));
        self.index += 1;
        self.tried = 0;
        self.fresh_model = true;
        true
    }

    fn past_deadline(&self, wait: Duration) -> bool {
        self.deadline.is_some_and(|d| Instant::now() + wait >= d.at)
    }

    /// Rampart's response headers: served model, attempts, routing notes.
    fn annotate(&self, headers: &mut HeaderMap, served: Option<&str>) {
        if let Some(m) = served
            && let Ok(v) = HeaderValue::from_str(m)
        {
            headers.insert(X_SERVED_MODEL.clone(), v);
        }
        if self.attempts > 1 {
            headers.insert(X_ATTEMPTS.clone(), attempts_value(self.attempts));
        }
        for (name, note) in [
            (&X_ROUTE, &self.route_note),
            (&X_FALLBACK, &self.fallback_note),
        ] {
            if let Some(v) = note.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// The request body naming `model` (rewritten only when it differs from the one asked for).
fn body_for(call: &Call<'_>, model: Option<&str>) -> Bytes {
    match (&call.model_span, call.model, model) {
        (Some(span), Some(asked), Some(model)) if asked != model => {
            routing::splice_model(&call.body, span, model)
        }
        _ => call.body.clone(),
    }
}

fn attempts_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    SMALL
        .get(n as usize)
        .map_or_else(|| HeaderValue::from(n), |s| HeaderValue::from_static(s))
}

/// The models a request may be served by, first the one asked for (after aliases and `auto`).
#[derive(Debug)]
struct Chain<'a> {
    first: Option<Cow<'a, str>>,
    rest: Vec<String>,
}

impl<'a> Chain<'a> {
    fn single(model: Option<Cow<'a, str>>) -> Self {
        Self {
            first: model,
            rest: Vec::new(),
        }
    }

    fn many(mut models: Vec<String>) -> Self {
        let rest = models.split_off(1.min(models.len()));
        Self {
            first: models.pop().map(Cow::Owned),
            rest,
        }
    }

    fn model(&self, i: usize) -> Option<&str> {
        if i == 0 {
            self.first.as_deref()
        } else {
            self.rest.get(i - 1).map(String::as_str)
        }
    }
}

/// Why no attempt could be made.
enum Unavailable {
    Open {
        model: Option<String>,
        retry_in: Option<Duration>,
    },
    NoTarget(Option<String>),
}

/// A failed attempt.
struct Failure {
    outcome: Outcome,
    target: usize,
    model: Option<String>,
    /// The upstream's answer, handed to the client if this is the final failure.
    held: Option<Held>,
    /// No more attempts: the answer is this error (the deadline passed, or no key to send).
    stop: Option<ProxyError>,
}

struct Held {
    parts: http::response::Parts,
    body: Bytes,
}

/// Index into [`ResilienceSettings::timeouts`].
fn route_index(route: Route) -> usize {
    match route {
        Route::Messages | Route::Unknown => 0,
        Route::CountTokens => 1,
        Route::Models | Route::Model => 2,
        Route::Batches | Route::Batch | Route::BatchCancel | Route::BatchResults => 3,
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// The request for `target`: its URI (base + path prefix + the client's path and query) and key.
fn request(
    target: &Target,
    method: &Method,
    pq: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, ProxyError> {
    let base = &target.base;
    let pq = if base.path_prefix.is_empty() {
        pq.clone()
    } else {
        http::uri::PathAndQuery::try_from(format!("{}{}", base.path_prefix, pq.as_str()))
            .map_err(|_| ProxyError::NotFound)?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(base.scheme.clone());
    parts.authority = Some(base.authority.clone());
    parts.path_and_query = Some(pq);
    let uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::NotFound)?;
    let mut headers = headers.clone();
    // Over the empty one `upstream_headers` left: in place, without growing the copy.
    headers.insert(
        X_API_KEY.clone(),
        target.key.header().ok_or(ProxyError::NoUpstreamKey)?,
    );
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Read a whole body of at most `limit` bytes, under the idle timeout and the deadline.
async fn read_limited<B>(
    mut body: B,
    idle: Duration,
    deadline: Option<Deadline>,
    limit: usize,
) -> Result<Bytes, ()>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        let (at, _) = Deadline::bound(deadline, Instant::now() + idle);
        match tokio::time::timeout_at(at, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) | Err(_) => return Err(()),
        }
    }
}

/// What the head of a stream showed.
enum Head {
    /// A real event came first (or the head grew past the hold-back limit): pipe.
    Healthy,
    /// `event: error` came first, with this `error.type`.
    InBand(String),
    /// The stream failed before its first event.
    Failed(Observed<'static>),
    /// The deadline passed before the first event.
    Cut(Cut),
}

/// Hold a stream back until its first event other than `ping` (see the module docs), within
/// the idle timeout and `deadline`. The bytes read stay in `body` (prefix and partial tail) to
/// be sent first.
async fn hold_back<B>(body: &mut UpstreamBody<B>, deadline: Option<Deadline>) -> Head
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let Some(mut inner) = body.inner.take() else {
        return Head::Healthy;
    };
    let idle = body.idle;
    let mut head = Bytes::new();
    let mut scanned = 0;
    loop {
        let (at, cut) = Deadline::bound(deadline, Instant::now() + idle);
        let data = match tokio::time::timeout_at(at, inner.frame()).await {
            Err(_) => {
                return match cut {
                    Some(c) => Head::Cut(c),
                    None => Head::Failed(Observed::IdleTimeout),
                };
            }
            Ok(Some(Err(_))) => {
                return Head::Failed(Observed::Transport(
                    crate::classify::TransportFailure::Broken,
                ));
            }
            Ok(None) => {
                // Ended before any event: pass on what there is.
                body.prefix = (!head.is_empty()).then_some(head);
                return Head::Healthy;
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        head = if head.is_empty() {
            data
        } else {
            let mut joined = BytesMut::with_capacity(head.len() + data.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(&data);
            joined.freeze()
        };
        while let Some((text_end, next)) = event_end(&head[scanned..]) {
            let text = &head[scanned..scanned + text_end];
            scanned += next;
            match event_name(text) {
                None | Some("ping") => continue,
                Some("error") => {
                    let kind = in_band_error_type(text);
                    body.inner = Some(inner);
                    body.split_head(head);
                    return Head::InBand(kind);
                }
                Some(_) => {
                    body.inner = Some(inner);
                    body.split_head(head);
                    return Head::Healthy;
                }
            }
        }
        if head.len() > HOLDBACK_LIMIT {
            body.inner = Some(inner);
            body.split_head(head);
            return Head::Healthy;
        }
    }
}

/// The end of the first complete event in `buf`: (end of its text, start of what follows).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
            _ => {}
        }
    }
    None
}

/// Just past the last complete event in `buf`.
fn last_boundary(buf: &[u8]) -> Option<usize> {
    if buf.ends_with(b"\n\n") {
        return Some(buf.len());
    }
    for i in memchr::memrchr_iter(b'\n', buf) {
        if i >= 1 && buf[i - 1] == b'\n' {
            return Some(i + 1);
        }
        if i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' {
            return Some(i + 1);
        }
    }
    None
}

/// The event's name: its `event:` field, else the `type` of its data; `None` for a comment.
fn event_name(text: &[u8]) -> Option<&str> {
    // The usual shape, `event: NAME` first: read that line alone.
    if let Some(rest) = text.strip_prefix(b"event:") {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or(rest);
        return std::str::from_utf8(line).ok().map(str::trim);
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut data = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("event:") {
            return Some(v.trim());
        }
        if data.is_none() {
            data = line.strip_prefix("data:");
        }
    }
    let data = data?.trim();
    // `"type":"…"` in the data, without parsing the whole object.
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Typed<'_>>(data).ok().map(|t| t.kind)
}

/// `error.type` of an `event: error` (`api_error` when unreadable).
fn in_band_error_type(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let data: String = text
        .split('\n')
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("data:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n");
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        error: Inner,
    }
    serde_json::from_str::<Event>(&data)
        .map(|e| e.error.kind)
        .unwrap_or_else(|_| "api_error".to_owned())
}

/// The upstream body as the client receives it: the held-back head first, then the upstream's
/// frames, under the idle timeout and the deadline (armed only while the upstream is silent, so
/// a busy stream costs no timer work). A stream is passed on in whole events; when it fails —
/// the connection breaks, the idle timeout or the deadline passes — the partial event is dropped
/// and a well-formed `event: error` ends it. A JSON body that fails ends with an error (the
/// client sees a cut-off response). Holds the attempt's [`Lease`] until it ends, and counts a
/// failure against the target's breaker.
pub struct UpstreamBody<B> {
    inner: Option<B>,
    prefix: Option<Bytes>,
    sse: Option<BytesMut>,
    idle: Duration,
    deadline: Option<Deadline>,
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    lease: Option<Lease>,
    clock: Clock,
    done: bool,
}

impl<B> std::fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("sse", &self.sse.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> UpstreamBody<B> {
    fn pipe(inner: B, sse: bool, idle: Duration, deadline: Option<Deadline>, clock: Clock) -> Self {
        Self {
            inner: Some(inner),
            prefix: None,
            sse: sse.then(BytesMut::new),
            idle,
            deadline,
            timer: None,
            progressed: true,
            lease: None,
            clock,
            done: false,
        }
    }

    /// A complete body (a held upstream error).
    fn buffered(bytes: Bytes) -> Self {
        Self {
            inner: None,
            prefix: Some(bytes),
            sse: None,
            idle: Duration::MAX,
            deadline: None,
            timer: None,
            progressed: false,
            lease: None,
            clock: Clock::new(),
            done: false,
        }
    }

    /// Keep the whole events of `head` to send first, and its partial event for later.
    fn split_head(&mut self, head: Bytes) {
        let complete = last_boundary(&head).unwrap_or(0);
        let rest = head.slice(complete..);
        self.prefix = (complete > 0).then(|| head.slice(..complete));
        if let Some(tail) = self.sse.as_mut() {
            tail.extend_from_slice(&rest);
        }
    }

    /// A stream's next whole events from `data`, keeping a partial event for later.
    fn frame_events(&mut self, data: Bytes) -> Option<Bytes> {
        let Some(tail) = self.sse.as_mut() else {
            return Some(data);
        };
        if tail.is_empty() {
            return match last_boundary(&data) {
                Some(end) if end == data.len() => Some(data),
                Some(end) => {
                    tail.extend_from_slice(&data[end..]);
                    Some(data.slice(..end))
                }
                None if data.len() > PARTIAL_EVENT_LIMIT => Some(data),
                None => {
                    tail.extend_from_slice(&data);
                    None
                }
            };
        }
        tail.extend_from_slice(&data);
        match last_boundary(tail) {
            Some(end) => Some(tail.split_to(end).freeze()),
            None if tail.len() > PARTIAL_EVENT_LIMIT => Some(tail.split().freeze()),
            None => None,
        }
    }

    /// The upstream failed after the answer began: count it, drop the upstream, and for a
    /// stream queue the closing error event.
    fn fail(&mut self, class: Class, kind: ErrorType, message: String) -> Option<Bytes> {
        self.inner = None;
        self.timer = None;
        if let Some(lease) = self.lease.take() {
            lease.late_failure(self.clock.now_ms(), class);
        }
        crate::telemetry::upstream_error(class.as_str());
        if self.sse.is_some() {
            self.sse = Some(BytesMut::new());
            let event = StreamEvent::Error {
                error: ErrorBody { kind, message },
            };
            Some(Bytes::from(event.to_sse()))
        } else {
            None
        }
    }
}

impl<B> http_body::Body for UpstreamBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(p) = this.prefix.take() {
            if this.inner.is_none() && this.sse.as_ref().is_none_or(BytesMut::is_empty) {
                this.done = true;
            }
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let Some(inner) = this.inner.as_mut() else {
                this.done = true;
                let tail = this
                    .sse
                    .as_mut()
                    .filter(|t| !t.is_empty())
                    .map(|t| t.split().freeze());
                return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.progressed = true;
                    match frame.into_data() {
                        Ok(data) => {
                            if let Some(out) = this.frame_events(data) {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err: BoxError = e.into();
                    tracing::warn!(target: "rampart::upstream", error = %err, "upstream body failed after the answer began");
                    return match this.fail(
                        Class::Reset,
                        ErrorType::ApiError,
                        "upstream connection lost mid-stream".to_owned(),
                    ) {
                        Some(event) => {
                            this.done = true;
                            Poll::Ready(Some(Ok(Frame::data(event))))
                        }
                        None => Poll::Ready(Some(Err(err))),
                    };
                }
                Poll::Ready(None) => {
                    // Finished: the lease ends (no longer in flight).
                    this.inner = None;
                    this.lease = None;
                    this.timer = None;
                }
                Poll::Pending => {
                    let now = Instant::now();
                    let (at, cut) = Deadline::bound(this.deadline, now + this.idle);
                    match this.timer.as_mut() {
                        Some(t) if this.progressed => t.as_mut().reset(at),
                        Some(_) => {}
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                    this.progressed = false;
                    let Some(timer) = this.timer.as_mut() else {
                        return Poll::Pending;
                    };
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let (class, message) = match cut {
                        Some(c) => (Class::IdleTimeout, c.message()),
                        None => (
                            Class::IdleTimeout,
                            ProxyError::StreamIdleTimeout(this.idle.as_millis()).to_string(),
                        ),
                    };
                    return match this.fail(class, ErrorType::TimeoutError, message.clone()) {
                        Some(event) => {
                            this.done = true;
                            Poll::Ready(Some(Ok(Frame::data(event))))
                        }
                        None => Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            message,
                        )
                        .into()))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.prefix.is_some() {
            return false;
        }
        if self.done {
            return true;
        }
        match &self.inner {
            None => self.sse.as_ref().is_none_or(BytesMut::is_empty),
            Some(inner) => self.sse.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.inner, &self.prefix) {
            (None, Some(p)) if self.sse.is_none() => {
                http_body::SizeHint::with_exact(p.len() as u64)
            }
            (Some(inner), None) if self.sse.is_none() => inner.size_hint(),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// Describe the resilience metrics (called once when the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "rampart_upstream_attempts_total",
        "Upstream attempts by target and outcome class (see crate::classify)."
    );
    metrics::describe_counter!(
        "rampart_upstream_retries_total",
        "Attempts after the first, by the class of the failure that caused them."
    );
    metrics::describe_counter!(
        "rampart_upstream_retry_budget_exhausted_total",
        "Retries not made because the retry budget was spent."
    );
    metrics::describe_gauge!(
        "rampart_upstream_breaker_state",
        "Circuit breaker state by target: 0 closed, 1 open, 2 half-open."
    );
    metrics::describe_counter!(
        "rampart_upstream_breaker_transitions_total",
        "Circuit breaker transitions by target and new state."
    );
    metrics::describe_counter!(
        "rampart_upstream_cooldowns_total",
        "Rate-limit cool-downs started, by target."
    );
    metrics::describe_histogram!(
        "rampart_upstream_target_ttfb_seconds",
        "Time from an attempt sent to its response headers, by target (pools of several targets)."
    );
    metrics::describe_counter!(
        "rampart_routing_fallbacks_total",
        "Requests moved to the next model of their fallback chain, by models and reason."
    );
    metrics::describe_counter!(
        "rampart_routing_auto_total",
        "auto model decisions, by tier."
    );
}

#[cfg(test)]
mod tests;
