//! Admission control on the proxy path (`POST /v1/messages` with a store key that has limits or
//! a budget): reserve before the upstream call, settle when the response is done.
//! `POST /v1/messages/count_tokens` counts as one request against the request limits
//! ([`count_request`]); it draws no tokens, concurrency or budget.
//!
//! - **Reserve** ([`admit`]): one request, the input tokens estimated from the body
//!   ([`rampart_api::tokens`], only when a token limit or a budget needs them), `max_tokens` of
//!   output, and the request's worst-case cost at the model's price (only with a budget) — in
//!   one atomic step on the key and its team ([`rampart_limits`]). Refusals are 429
//!   `rate_limit_error` with `retry-after` and `x-should-retry: true`, or 402 `billing_error`
//!   naming the budget and when it resets (`x-should-retry: false`); an unreachable Redis is 503
//!   (fail closed) or lets the request through unlimited (fail open).
//! - **Settle** ([`settle`]): with the usage the upstream reported (the JSON body, or
//!   `message_start` + the last `message_delta` of a stream; a stream that died midway settles
//!   with what it reported so far), priced at the served model. It runs before the last byte is
//!   released to the client, so a client's next request already sees its slot free.
//! - **Headers** ([`write_status`]): every response of a limited key carries Rampart's own
//!   `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`
//!   (the most restrictive of key and team; brought up to date when the answer comes a second
//!   or more after admission, [`aged`]); the upstream's, which describe the organisation's
//!   shared upstream key, are removed.

use std::sync::Arc;

use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use rampart_ledger::pricing::PriceTable;
use rampart_limits::{
    Admission, Demand, Dimension, Limiter, Period, Policy, Reason, Rejection, ScopeKind, Status,
    Ticket, Used, Window,
};

use crate::error::ProxyError;
use crate::peek::Estimate;
use crate::sse::UsageSummary;

/// The limiter and the prices budgets are charged at.
#[derive(Debug, Clone)]
pub struct Limits {
    /// In process or Redis.
    pub limiter: Limiter,
    /// Prices for worst-case reservations and settlements.
    pub prices: Arc<PriceTable>,
}

impl Limits {
    /// The limiter as `config` says, ready for `rampart serve`: the metrics recorder installed
    /// first (so the limiter's metrics are exported), the backend checked (and its script
    /// loaded), and budgets started from the usage ledger's spend ([`seed_budgets`]): those
    /// loaded now, and those a later reload of `directory` brings. The task returned checks the
    /// backend every second (so readiness follows Redis without traffic) and keeps the budgets
    /// seeded ([`keep_seeded`]): every budget of `directory` is started from the ledger again
    /// when Redis lost its state, and until it succeeds when a seeding failed (Redis or the
    /// store unreachable at start).
    ///
    /// # Errors
    /// An unusable Redis URL.
    pub async fn start(
        config: &rampart_limits::LimiterConfig,
        prices: Arc<PriceTable>,
        directory: &Arc<crate::keydir::KeyDirectory>,
        store: &rampart_store::Store,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        if let Err(e) = crate::telemetry::install() {
            tracing::warn!(error = %e, "metrics recorder unavailable; limits metrics are not exported");
        }
        let limiter = Limiter::new(config, Arc::new(rampart_limits::SystemClock))?;
        if !limiter.check_health().await {
            tracing::error!(
                backend = limiter.backend_name(),
                "limits backend unreachable at start; retrying every second"
            );
        }
        let health = limiter
            .clone()
            .run_health_checks(std::time::Duration::from_secs(1), std::future::pending());
        let limits = Self { limiter, prices };
        let again = Arc::new(SeedAgain::default());
        // Budgets a later reload brings are seeded before it takes effect; those loaded
        // already, now (a budget loaded in between is seeded twice, harmlessly).
        directory.set_budget_seeder(Arc::new(LedgerSeeder {
            limits: limits.clone(),
            store: store.clone(),
            again: again.clone(),
        }));
        match seed_directory(&limits, directory, store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(budgets = n, "budgets resume from the usage ledger's spend"),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot start budgets from the usage ledger's spend; they count only what \
                     the limiter counts until a retry succeeds"
                );
                again.request();
            }
        }
        let seeding = keep_seeded(limits.clone(), directory.clone(), store.clone(), again);
        let task = tokio::spawn(async move {
            tokio::join!(health, seeding);
        });
        Ok((limits, task))
    }
}

/// A seeding of every budget that failed and must be done again ([`keep_seeded`]).
#[derive(Debug, Default)]
struct SeedAgain {
    needed: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl SeedAgain {
    fn request(&self) {
        self.needed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Why a seeding of budgets ([`seed_budgets`]) did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SeedFailure {
    /// The usage ledger's rollups could not be read.
    #[error("cannot read this period's spend from the usage ledger: {0}")]
    Store(#[from] rampart_store::StoreError),
    /// The limiter's backend (Redis) failed.
    #[error(transparent)]
    Limiter(#[from] rampart_limits::RedisFailure),
    /// Redis lost its state meanwhile: what was seeded may be lost with it.
    #[error("Redis lost its state while the budgets were being seeded")]
    Lost,
}

/// Start every budget of `directory` from the usage ledger's spend ([`seed_budgets`]), marked on
/// Redis as a seeding that every instance's health check reads
/// ([`Limiter::begin_seeding`](rampart_limits::Limiter::begin_seeding),
/// [`Limiter::finish_seeding`](rampart_limits::Limiter::finish_seeding)); how many were seeded.
async fn seed_directory(
    limits: &Limits,
    directory: &crate::keydir::KeyDirectory,
    store: &rampart_store::Store,
) -> Result<usize, SeedFailure> {
    limits.limiter.begin_seeding().await?;
    let n = seed_budgets(limits, &directory.budgets(), &directory.lineage(), store).await?;
    if limits.limiter.finish_seeding().await? {
        Ok(n)
    } else {
        Err(SeedFailure::Lost)
    }
}

/// The first wait before a failed seeding is tried again; it doubles up to [`RESEED_MAX_WAIT`].
const RESEED_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest wait between tries of a failed seeding.
const RESEED_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Keep the budgets of `directory` started from the usage ledger's spend, forever: seed all of
/// them again ([`seed_directory`]) whenever the limiter finds that Redis lost its state
/// ([`Limiter::budgets_unseeded`](rampart_limits::Limiter::budgets_unseeded)), and whenever a
/// seeding failed (`again`), until it succeeds: at once once Redis answers (it is not called
/// while known down), with a growing wait after other failures (the store). Requests are served
/// meanwhile; several instances seeding at once is harmless (a seed never lowers a count).
async fn keep_seeded(
    limits: Limits,
    directory: Arc<crate::keydir::KeyDirectory>,
    store: rampart_store::Store,
    again: Arc<SeedAgain>,
) {
    use std::sync::atomic::Ordering;
    let mut wait = RESEED_FIRST_WAIT;
    loop {
        if limits.limiter.budgets_seeded() && !again.needed.load(Ordering::Relaxed) {
            tokio::select! {
                () = limits.limiter.budgets_unseeded() => {}
                () = again.wake.notified() => {}
            }
            continue;
        }
        if !limits.limiter.is_up() {
            // Its health checks bring it back (and wake this when Redis comes back empty); a
            // seeding now would fail at once.
            tokio::select! {
                () = tokio::time::sleep(RESEED_FIRST_WAIT) => {}
                () = limits.limiter.budgets_unseeded() => {}
            }
            continue;
        }
        again.needed.store(false, Ordering::Relaxed);
        match seed_directory(&limits, &directory, &store).await {
            Ok(n) => {
                wait = RESEED_FIRST_WAIT;
                tracing::info!(
                    budgets = n,
                    "budgets started again from the usage ledger's spend"
                );
            }
            Err(e) => {
                again.needed.store(true, Ordering::Relaxed);
                // Lost meanwhile: Redis answers, so seed again at once.
                let pause = match e {
                    SeedFailure::Lost => std::time::Duration::ZERO,
                    _ => wait,
                };
                tracing::warn!(
                    error = %e,
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "cannot start budgets from the usage ledger's spend; retrying"
                );
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                    wait = (wait * 2).min(RESEED_MAX_WAIT);
                }
            }
        }
    }
}

impl Limits {
    /// Before the process exits, once nothing settles any more: send Redis what is still on its
    /// way or waits for repair (settlements of responses cut at the shutdown deadline, dropped
    /// with their worker's runtime), within a few seconds ([`Limiter::flush`]), so their
    /// reservations free now, not after the lease.
    pub async fn flush(&self) {
        self.limiter.flush(std::time::Duration::from_secs(3)).await;
    }
}

/// Seeds the budgets a directory reload brings ([`crate::keydir::BudgetSeeder`]) from the
/// usage ledger.
#[derive(Debug)]
struct LedgerSeeder {
    limits: Limits,
    store: rampart_store::Store,
    /// Told when a seeding fails, so every budget is seeded again once it can be.
    again: Arc<SeedAgain>,
}

impl crate::keydir::BudgetSeeder for LedgerSeeder {
    fn seed<'a>(
        &'a self,
        budgets: &'a [(uuid::Uuid, rampart_limits::Scope, rampart_limits::Budget)],
        lineage: &'a crate::keydir::Lineage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match seed_budgets(&self.limits, budgets, lineage, &self.store).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    budgets = n,
                    "new budgets start from what the usage ledger says their period spent"
                ),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot start the new budgets from the usage ledger's spend; they count \
                         from now until a retry succeeds"
                    );
                    self.again.request();
                }
            }
        })
    }
}

/// Start each of `budgets` (`(policy group, scope, budget)`) from what the usage ledger's rollups
/// say its key or team spent in the budget's current period, so neither a restart nor a budget
/// set (or moved to another period or team) on a running instance hands a period's budget out
/// again. Both backends; what the limiter counted itself is never lowered
/// ([`Limiter::seed_spent`](rampart_limits::Limiter::seed_spent)). The ledger lags by its flush
/// interval, and requests in flight are not in it yet. On Redis the seeds go out 64 at a time
/// over the limiter's multiplexed connections, so thousands of budgets take a few round trips'
/// time rather than one round trip each (20,000 budgets on a local Redis: about half a second
/// instead of five). Returns how many budgets were seeded.
///
/// # Errors
/// A store failure reading the rollups, or a Redis failure (it ends the seeding: the others
/// would each wait on it).
pub async fn seed_budgets(
    limits: &Limits,
    budgets: &[(uuid::Uuid, rampart_limits::Scope, rampart_limits::Budget)],
    lineage: &crate::keydir::Lineage,
    store: &rampart_store::Store,
) -> Result<usize, SeedFailure> {
    let now = time::OffsetDateTime::now_utc();
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    // (group, scope, budget, what the ledger says its period spent)
    let mut seeds = Vec::new();
    for period in [Period::Day, Period::Month] {
        let of_period: Vec<_> = budgets
            .iter()
            .filter(|(_, _, b)| b.period == period)
            .collect();
        if of_period.is_empty() {
            continue;
        }
        let from = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(period.window(now_ms).0) * 1_000_000,
        )
        .unwrap_or(now);
        let mut sums = std::collections::HashMap::new();
        for kind in [ScopeKind::Key, ScopeKind::Team] {
            let ids: Vec<uuid::Uuid> = of_period
                .iter()
                .filter(|(_, s, _)| s.kind == kind)
                .map(|(_, s, _)| s.id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            // One scope (a budget set on a running instance): only its rows, unless it is a
            // key whose line has other keys (their rows count too).
            let only = (ids.len() == 1
                && (kind == ScopeKind::Team || !lineage.values().any(|&line| line == ids[0])))
            .then(|| ids[0]);
            let query = rampart_store::UsageQuery {
                from,
                to: now + time::Duration::hours(1),
                key_id: only.filter(|_| kind == ScopeKind::Key),
                team_id: only.filter(|_| kind == ScopeKind::Team),
                user_id: None,
                model: None,
                group_by: rampart_store::UsageGroupBy {
                    key: kind == ScopeKind::Key,
                    team: kind == ScopeKind::Team,
                    model: false,
                    day: false,
                },
            };
            for r in store.usage().usage_summary(&query).await? {
                let id = match kind {
                    ScopeKind::Key => r.key_id,
                    ScopeKind::Team => r.team_id,
                };
                if let Some(id) = id {
                    // A rotated key's spend counts for its line's first key.
                    let id = match kind {
                        ScopeKind::Key => lineage.get(&id).copied().unwrap_or(id),
                        ScopeKind::Team => id,
                    };
                    let sum: &mut u64 = sums.entry((kind, id)).or_default();
                    *sum = sum.saturating_add(r.cost_micro_usd);
                }
            }
        }
        seeds.extend(of_period.into_iter().filter_map(|&(group, scope, budget)| {
            sums.get(&(scope.kind, scope.id))
                .map(|&micros| (group, scope, budget, micros))
        }));
    }
    let mut done = futures_util::stream::iter(seeds)
        .map(|(group, scope, budget, micros)| {
            limits.limiter.seed_spent(group, scope, budget, micros)
        })
        .buffer_unordered(SEEDS_IN_FLIGHT);
    let mut seeded = 0;
    while let Some(result) = done.next().await {
        // A Redis failure: the rest would wait on it too (those in flight are dropped).
        result?;
        seeded += 1;
    }
    Ok(seeded)
}

/// How many budget seeds [`seed_budgets`] has in flight at once: enough to fill a round trip
/// with commands, few enough that a Redis failure ends the pass without a burst of errors.
const SEEDS_IN_FLIGHT: usize = 64;

/// Refuse a batch creation (402) when a budget of the key or its team is already spent. A
/// batch is billed as its results arrive, so its cost cannot be reserved here; it only must not
/// start once the budget is gone. Nothing is reserved and no rate limit is drawn on.
///
/// # Errors
/// 402 ([`ProxyError::OverBudget`]) or 503 ([`ProxyError::LimitsUnavailable`]).
pub(crate) async fn check_budget(limits: &Limits, policy: &Policy) -> Result<(), ProxyError> {
    let budgets_only = Policy::new(
        policy.group,
        policy
            .scopes
            .iter()
            .filter(|s| s.budget.is_some())
            .map(|s| rampart_limits::ScopeLimits {
                rates: rampart_limits::Rates::default(),
                ..*s
            }),
    );
    let Some(budgets_only) = budgets_only else {
        return Ok(());
    };
    // One micro-dollar "reserved" and given back at once: the test is "anything left?".
    let probe = Demand {
        cost_micros: 1,
        ..Demand::default()
    };
    admit_and_release(limits, &budgets_only, probe)
        .await
        .map(|_| ())
}

/// Count a `count_tokens` request against the request limits (`rpm`) of the key and its team:
/// it counts as a request, not as tokens, and costs nothing, so token limits, concurrency and
/// budgets are not drawn on. Returns the limits' state for the response headers (`None` when
/// the key has no request limit).
///
/// # Errors
/// 429 ([`ProxyError::RateLimited`]) or 503 ([`ProxyError::LimitsUnavailable`]).
pub(crate) async fn count_request(
    limits: &Limits,
    policy: &Policy,
) -> Result<Option<Status>, ProxyError> {
    let requests_only = policy.narrowed(|s| rampart_limits::ScopeLimits {
        rates: rampart_limits::Rates {
            rpm: s.rates.rpm,
            ..rampart_limits::Rates::default()
        },
        budget: None,
        ..s
    });
    match requests_only {
        Some(p) => admit_and_release(limits, &p, Demand::default()).await,
        None => Ok(None),
    }
}

/// Admit `demand` under `policy` and give it back at once (what was drawn on stays counted, as
/// a settlement with no usage does); the limits' state after it, `None` when unchecked.
async fn admit_and_release(
    limits: &Limits,
    policy: &Arc<Policy>,
    demand: Demand,
) -> Result<Option<Status>, ProxyError> {
    match limits.limiter.admit(policy, demand).await {
        Admission::Admitted(t) => {
            let status = *t.status();
            t.settle(Used::default());
            Ok(Some(status))
        }
        Admission::Unchecked => Ok(None),
        Admission::Unavailable => Err(ProxyError::LimitsUnavailable),
        Admission::Rejected(r) if r.reason == Reason::Budget => {
            Err(ProxyError::OverBudget(Box::new(r)))
        }
        Admission::Rejected(r) => Err(ProxyError::RateLimited(Box::new(r))),
    }
}

/// Reserve for the Messages request `body` (already checked to be a JSON object) under `policy`.
///
/// # Errors
/// 429 ([`ProxyError::RateLimited`]), 402 ([`ProxyError::OverBudget`]) or 503
/// ([`ProxyError::LimitsUnavailable`]).
pub(crate) async fn admit(
    limits: &Limits,
    policy: &Arc<Policy>,
    body: &[u8],
    known: Option<(Estimate, Option<&str>)>,
) -> Result<Option<Ticket>, ProxyError> {
    let demand = if policy.reserves_demand() {
        match known {
            Some((e, model)) => priced_demand(&limits.prices, policy.has_budget(), e, model),
            None => demand(&limits.prices, policy.has_budget(), body),
        }
    } else {
        Demand::default()
    };
    match limits.limiter.admit(policy, demand).await {
        Admission::Admitted(t) => Ok(Some(t)),
        Admission::Unchecked => Ok(None),
        Admission::Unavailable => Err(ProxyError::LimitsUnavailable),
        Admission::Rejected(r) if r.reason == Reason::Budget => {
            Err(ProxyError::OverBudget(Box::new(r)))
        }
        Admission::Rejected(r) => Err(ProxyError::RateLimited(Box::new(r))),
    }
}

/// What a Messages `body` reserves: its input tokens by the shared estimator, its `max_tokens`,
/// and (`priced`) its worst-case cost at the requested model's price. One parse of the body, only
/// for keys whose limits need it; a body it cannot read (the upstream refuses it anyway) counts
/// a token per four bytes.
pub(crate) fn demand(prices: &PriceTable, priced: bool, body: &[u8]) -> Demand {
    // One borrowed pass over the body (no `serde_json::Value` built): the shared estimate,
    // `max_tokens` and `model`.
    let Some(e) = rampart_api::tokens::estimate_request(body) else {
        return Demand {
            input_tokens: (body.len() as u64).div_ceil(4),
            ..Demand::default()
        };
    };
    let estimate = Estimate {
        input_tokens: e.input_tokens,
        max_tokens: e.max_tokens,
    };
    priced_demand(prices, priced, estimate, e.model.as_deref())
}

/// [`demand`] from an estimate already made ([`crate::peek::peek_estimating`]) and the body's
/// `model` (when a string).
fn priced_demand(prices: &PriceTable, priced: bool, e: Estimate, model: Option<&str>) -> Demand {
    let cost_micros = match model {
        Some(model) if priced => prices.worst_case(model, e.input_tokens, e.max_tokens, false),
        _ => 0,
    };
    Demand {
        input_tokens: e.input_tokens,
        output_tokens: e.max_tokens,
        cost_micros,
    }
}

/// Settle `ticket` with the usage the response reported (none: nothing was used) and its cost
/// (micro-dollars, priced at the served model, else the requested one; 0 without a budget).
/// Input tokens are the uncached input and the cache writes: cache reads are not drawn from
/// input-token limits, as with Anthropic's own.
pub(crate) fn settle(ticket: Ticket, usage: Option<&UsageSummary>, cost_micros: u64) {
    let Some(u) = usage else {
        ticket.settle(Used::default());
        return;
    };
    ticket.settle(Used {
        input_tokens: u.tokens().rate_limited_input(),
        output_tokens: u.output_tokens,
        cost_micros,
    });
}

const HEADER_PREFIX: &str = "anthropic-ratelimit-";

/// `anthropic-ratelimit-<dimension>-{limit,remaining,reset}` for requests, input tokens, output
/// tokens and tokens.
static HEADERS: [[HeaderName; 3]; 4] = [
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-input-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-output-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-output-tokens-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
];

/// Replace any `anthropic-ratelimit-*` headers by Rampart's `status`.
pub(crate) fn write_status(status: &Status, headers: &mut HeaderMap) {
    StatusHeaders::of(status).write(headers);
}

/// How long after the limits were read their headers are brought up to date ([`aged`]).
/// Sooner, the values read are shown: a reset is to the second, so one read less than a
/// second ago is not earlier than the response's `Date`, and `remaining` lags by less than a
/// second's refill (never more than there is). So a prompt answer makes no new header values.
const STALE_AFTER_MS: u64 = 1_000;

/// `status`, read `elapsed_ms` ago, as it stands now if that is [`STALE_AFTER_MS`] or more
/// (a slow or retried answer): refilled meanwhile, no reset in the past.
pub(crate) fn aged(status: &Status, elapsed_ms: u64) -> Option<Status> {
    (elapsed_ms >= STALE_AFTER_MS).then(|| status.after(elapsed_ms))
}

/// [`write_status`] of `status` read `elapsed_ms` ago ([`aged`]).
pub(crate) fn write_status_aged(status: &Status, elapsed_ms: u64, headers: &mut HeaderMap) {
    write_status(&aged(status, elapsed_ms).unwrap_or(*status), headers);
}

/// The `anthropic-ratelimit-*` values of a [`Status`], made ahead of the response they go on
/// (while the upstream answers): one for each of the twelve [`HEADERS`] whose window the status
/// has. Made again only if the answer comes so late that they are stale
/// ([`StatusHeaders::write_aged`]).
#[derive(Debug)]
pub(crate) struct StatusHeaders {
    status: Status,
    values: [Option<HeaderValue>; 12],
}

impl StatusHeaders {
    pub(crate) fn of(status: &Status) -> Self {
        let windows = [
            status.requests,
            status.input_tokens,
            status.output_tokens,
            status.tokens(),
        ];
        Self {
            status: *status,
            values: std::array::from_fn(|i| windows[i / 3].map(|w| window_value(i, &w))),
        }
    }

    /// [`StatusHeaders::write`], of the status as it stands `elapsed_ms` after it was read
    /// ([`aged`]): made again only when the values made beforehand are that old.
    pub(crate) fn write_aged(self, elapsed_ms: u64, headers: &mut HeaderMap) {
        match aged(&self.status, elapsed_ms) {
            Some(now) => write_status(&now, headers),
            None => self.write(headers),
        }
    }

    /// Replace any `anthropic-ratelimit-*` headers by these.
    ///
    /// Usually the upstream sent one of each of the same names (or none): their values are then
    /// overwritten in place in one pass over the headers, without hashing the twelve names
    /// again (~4k instructions under callgrind); anything else (a repeated or foreign
    /// `anthropic-ratelimit-*` header, or one Rampart has no window for) takes
    /// [`write_status_by_name`].
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        let Self { status, mut values } = self;
        let mut seen = 0u16;
        let mut in_place = true;
        for (name, value) in headers.iter_mut() {
            let Some(rest) = name.as_str().strip_prefix(HEADER_PREFIX) else {
                continue;
            };
            let Some(i) = header_index(rest) else {
                in_place = false;
                break;
            };
            if seen & (1 << i) != 0 {
                in_place = false;
                break;
            }
            let Some(v) = values[i].take() else {
                in_place = false;
                break;
            };
            seen |= 1 << i;
            *value = v;
        }
        if !in_place {
            write_status_by_name(&status, headers);
            return;
        }
        for (i, name) in HEADERS.iter().flatten().enumerate() {
            if let Some(v) = values[i].take() {
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// The index in [`HEADERS`] (flattened) of `anthropic-ratelimit-{rest}`, if it is one of them.
fn header_index(rest: &str) -> Option<usize> {
    Some(match rest {
        "requests-limit" => 0,
        "requests-remaining" => 1,
        "requests-reset" => 2,
        "input-tokens-limit" => 3,
        "input-tokens-remaining" => 4,
        "input-tokens-reset" => 5,
        "output-tokens-limit" => 6,
        "output-tokens-remaining" => 7,
        "output-tokens-reset" => 8,
        "tokens-limit" => 9,
        "tokens-remaining" => 10,
        "tokens-reset" => 11,
        _ => return None,
    })
}

/// Value `i % 3` (limit, remaining, reset) of window `w`, the `i / 3`th of [`HEADERS`].
fn window_value(i: usize, w: &Window) -> HeaderValue {
    match i % 3 {
        0 => limit_value(i / 3, w.limit),
        1 => HeaderValue::from(w.remaining),
        _ => reset_value(w.reset_at_ms),
    }
}

/// [`write_status`] by inserting each name (replacing all values of it) and removing the other
/// `anthropic-ratelimit-*` headers.
fn write_status_by_name(status: &Status, headers: &mut HeaderMap) {
    let windows = [
        status.requests,
        status.input_tokens,
        status.output_tokens,
        status.tokens(),
    ];
    headers.reserve(12);
    let mut written = 0;
    for (i, (names, w)) in HEADERS.iter().zip(windows).enumerate() {
        match w {
            // Inserting replaces the upstream's value of the same name.
            Some(w) => {
                put_window(headers, i, names, &w);
                written += names.len();
            }
            None => names.iter().for_each(|n| {
                headers.remove(n);
            }),
        }
    }
    // Any other `anthropic-ratelimit-*` the upstream sent describes its limits, not Rampart's
    // (counted first: the usual answer is that there is none).
    let prefixed = |n: &HeaderName| n.as_str().starts_with(HEADER_PREFIX);
    if headers.keys().filter(|n| prefixed(n)).count() > written {
        let ours = |n: &HeaderName| HEADERS.iter().flatten().any(|k| k == n);
        let stray: Vec<HeaderName> = headers
            .keys()
            .filter(|n| prefixed(n) && !ours(n))
            .cloned()
            .collect();
        for name in stray {
            headers.remove(name);
        }
    }
}

fn put_window(headers: &mut HeaderMap, i: usize, names: &[HeaderName; 3], w: &Window) {
    headers.insert(names[0].clone(), limit_value(i, w.limit));
    headers.insert(names[1].clone(), HeaderValue::from(w.remaining));
    headers.insert(names[2].clone(), reset_value(w.reset_at_ms));
}

/// The limit of window `i` (of [`HEADERS`]) as a header value, formatted again only when it
/// changes (a key's limits rarely do): a cached value is a reference-count increment.
fn limit_value(i: usize, limit: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<[Option<(u64, HeaderValue)>; 4]> =
            const { std::cell::RefCell::new([None, None, None, None]) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let Some(slot) = last.get_mut(i) else {
            return HeaderValue::from(limit);
        };
        if let Some((l, v)) = &*slot
            && *l == limit
        {
            return v.clone();
        }
        let v = HeaderValue::from(limit);
        *slot = Some((limit, v.clone()));
        v
    })
}

/// [`rfc3339`] of a reset time as a header value, formatted once per second per thread.
fn reset_value(ms: i64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(i64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let secs = ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((s, v)) = &*last
            && *s == secs
        {
            return v.clone();
        }
        let v = HeaderValue::try_from(rfc3339(secs * 1000))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        *last = Some((secs, v.clone()));
        v
    })
}

/// Milliseconds since the epoch as RFC 3339 in UTC, to the second (rounded up: the limit has
/// refilled by then).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The headers of a refusal: `retry-after` (429), `x-should-retry`, and the limits' status.
pub(crate) fn rejection_headers(r: &Rejection, headers: &mut HeaderMap) {
    write_status(&r.status, headers);
    if r.reason == Reason::Budget {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    } else {
        let secs = r.retry_after_ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::try_from(secs.to_string()) {
            headers.insert(http::header::RETRY_AFTER, v);
        }
        headers.insert("x-should-retry", HeaderValue::from_static("true"));
    }
}

fn whose(scope: ScopeKind) -> &'static str {
    match scope {
        ScopeKind::Key => "this API key's",
        ScopeKind::Team => "this API key's team's",
    }
}

/// The client's message for a refusal: which limit, whose, and when to come back.
pub(crate) fn rejection_message(r: &Rejection) -> String {
    match r.reason {
        Reason::Rate(d) => {
            let what = match d {
                Dimension::Requests => "requests",
                Dimension::InputTokens => "input tokens",
                Dimension::OutputTokens => "output tokens",
            };
            format!(
                "rate limit exceeded: {} limit of {} {what} per minute is reached; retry after {} s",
                whose(r.scope),
                r.limit,
                r.retry_after_ms.div_ceil(1000).max(1)
            )
        }
        Reason::Concurrency => format!(
            "rate limit exceeded: {} limit of {} concurrent requests is reached; retry when one finishes",
            whose(r.scope),
            r.limit
        ),
        // Only a batch reserves whole (`Limiter::admit_whole`): a request is admitted while a
        // micro-dollar is left.
        Reason::Budget if r.needed_micros > 0 => format!(
            "budget exceeded: this batch's worst case of ${} does not fit in what is left (${}) of {} {} budget of ${}; it resets at {}",
            dollars(r.needed_micros),
            dollars(r.limit.saturating_sub(r.committed_micros)),
            whose(r.scope),
            period_name(r.period),
            dollars(r.limit),
            rfc3339(r.resets_at_ms)
        ),
        Reason::Budget => format!(
            "budget exceeded: {} {} budget of ${} is spent; it resets at {}",
            whose(r.scope),
            period_name(r.period),
            dollars(r.limit),
            rfc3339(r.resets_at_ms)
        ),
    }
}

fn period_name(period: Option<Period>) -> &'static str {
    match period {
        Some(Period::Month) => "monthly",
        _ => "daily",
    }
}

/// Micro-dollars as dollars with cents (and more digits only when needed).
fn dollars(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    let mut s = format!("{whole}.{frac:06}");
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_index_names_each_header_by_its_place() {
        for (i, name) in HEADERS.iter().flatten().enumerate() {
            let rest = name.as_str().strip_prefix(HEADER_PREFIX).unwrap();
            assert_eq!(header_index(rest), Some(i), "{name}");
        }
        for other in [
            "",
            "requests",
            "tokens-limit-x",
            "priority-input-tokens-limit",
        ] {
            assert_eq!(header_index(other), None, "{other}");
        }
    }

    #[test]
    fn dollars_keep_cents_and_only_needed_digits() {
        assert_eq!(dollars(12_500_000), "12.50");
        assert_eq!(dollars(1), "0.000001");
        assert_eq!(dollars(0), "0.00");
        assert_eq!(dollars(1_234_567_000), "1234.567");
    }

    #[test]
    fn a_spent_budget_and_a_batch_that_does_not_fit_say_different_things() {
        let spent = Rejection {
            reason: Reason::Budget,
            scope: ScopeKind::Team,
            limit: 10_000_000,
            retry_after_ms: 0,
            period: Some(Period::Month),
            resets_at_ms: 1_780_272_000_000,
            committed_micros: 10_000_001,
            needed_micros: 0,
            status: Status::default(),
        };
        assert_eq!(
            rejection_message(&spent),
            "budget exceeded: this API key's team's monthly budget of $10.00 is spent; it resets at \
             2026-06-01T00:00:00Z"
        );
        let unfit = Rejection {
            scope: ScopeKind::Key,
            period: Some(Period::Day),
            committed_micros: 250_000,
            needed_micros: 12_345_000,
            ..spent
        };
        assert_eq!(
            rejection_message(&unfit),
            "budget exceeded: this batch's worst case of $12.345 does not fit in what is left \
             ($9.75) of this API key's daily budget of $10.00; it resets at 2026-06-01T00:00:00Z"
        );
    }

    #[test]
    fn resets_round_up_to_the_second() {
        assert_eq!(rfc3339(1_780_315_200_000), "2026-06-01T12:00:00Z");
        assert_eq!(rfc3339(1_780_315_200_001), "2026-06-01T12:00:01Z");
    }

    #[test]
    fn upstream_rate_limit_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("999999"),
        );
        h.insert("request-id", HeaderValue::from_static("req_1"));
        let w = Window {
            limit: 60,
            remaining: 59,
            reset_at_ms: 1_780_315_201_000,
            full_at_ms: 1_780_315_201_000,
            scope: ScopeKind::Key,
        };
        write_status(
            &Status {
                requests: Some(w),
                ..Status::default()
            },
            &mut h,
        );
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "59");
        assert_eq!(
            h["anthropic-ratelimit-requests-reset"],
            "2026-06-01T12:00:01Z"
        );
        assert!(h.get("anthropic-ratelimit-tokens-remaining").is_none());
        assert_eq!(h["request-id"], "req_1");
    }

    #[test]
    fn status_headers_in_place_match_the_by_name_path() {
        let w = |limit, remaining| Window {
            limit,
            remaining,
            reset_at_ms: 1_780_315_201_000,
            full_at_ms: 1_780_315_201_000,
            scope: ScopeKind::Key,
        };
        let statuses = [
            Status::default(),
            Status {
                requests: Some(w(60, 59)),
                ..Status::default()
            },
            Status {
                requests: Some(w(60, 59)),
                input_tokens: Some(w(1000, 10)),
                output_tokens: Some(w(500, 1)),
                at_ms: 1_780_315_200_000,
            },
        ];
        let upstream: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("request-id", "r")],
            HEADERS
                .iter()
                .flatten()
                .map(|n| (n.as_str(), "7"))
                .chain([("content-type", "application/json")])
                .collect(),
            vec![
                ("anthropic-ratelimit-requests-limit", "1"),
                ("anthropic-ratelimit-requests-limit", "2"),
            ],
            vec![("anthropic-ratelimit-other", "1"), ("x", "y")],
            vec![("anthropic-ratelimit-tokens-reset", "z")],
        ];
        for status in &statuses {
            for hs in &upstream {
                let mut a = HeaderMap::new();
                for (k, v) in hs {
                    a.append(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
                let mut b = a.clone();
                write_status(status, &mut a);
                write_status_by_name(status, &mut b);
                let list = |h: &HeaderMap| {
                    let mut v: Vec<(String, String)> = h
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(list(&a), list(&b), "{status:?} {hs:?}");
            }
        }
    }

    #[test]
    fn demands_follow_the_shared_estimate_and_the_price_table() {
        let prices = PriceTable::builtin();
        let body = br#"{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"abcdefgh"}]}"#;
        let d = demand(&prices, true, body);
        assert_eq!((d.input_tokens, d.output_tokens), (4 + 2, 5));
        assert_eq!(
            d.cost_micros,
            prices.worst_case("claude-sonnet-4-6", 6, 5, false)
        );
        assert_eq!(demand(&prices, false, body).cost_micros, 0);
        assert_eq!(demand(&prices, true, b"not json at all!").input_tokens, 4);
    }
}
