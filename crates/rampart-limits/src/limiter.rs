//! The limiter the gateway talks to: admission ([`Limiter::admit`]) returns a [`Ticket`] that
//! must be settled with what the request used ([`Ticket::settle`]); dropping a ticket settles it
//! as "nothing used" (a request that never reached the upstream).
//!
//! # Repairs (Redis)
//! A call whose answer is lost (a timeout, a dropped connection) may still have run, or may
//! still run when Redis resumes. Nothing it took is left behind: an admission that failed is
//! *released* (its ticket id was chosen before the call), and a settlement that failed is kept;
//! both wait in a bounded queue ([`MAX_REPAIRS`]) and are sent once a health check finds Redis
//! answering again. Every Redis call is idempotent ([`crate::redis`]), so a repair of a call that
//! did run, or that runs after its repair, changes nothing more.
//!
//! A settlement or repair whose call is dropped before its answer came (its runtime shut down:
//! a gateway worker's, at the end of the shutdown grace; or it was spawned on a runtime shutting
//! down, which drops it at once) is queued for repair the same way, and [`Limiter::flush`] sends
//! what is queued before the process exits, so a stream cut at shutdown does not hold its
//! reservation for the lease.
//!
//! # Leases (Redis)
//! A reservation in Redis carries a lease, so that one held by an instance that died is let go.
//! A live instance renews the leases of its tickets in flight ([`Limiter::renew_leases`], every
//! third of a lease with the health checks), so a request that runs longer than the lease keeps
//! its concurrency slot and its budget reservation: the lease only bounds how long a dead
//! instance's reservations are held. Admission and settlement stay one round trip each; they
//! only add and remove the ticket in an in-memory map the renewals read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};

use crate::clock::Clock;
use crate::engine::{self, Rejection, Status};
use crate::local::Local;
use crate::policy::{Budget, Demand, Policy, Scope, Used};
use crate::redis::{RENEW_BATCH, RedisBackend, RedisFailure};

/// What to do when the shared backend (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Refuse limited requests (503) until it is back. The default: a limit that silently
    /// stops holding is worse than a short outage.
    #[default]
    Closed,
    /// Let limited requests through unchecked (and unreserved) until it is back.
    Open,
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In this process (one instance).
    InProcess,
    /// In Redis, shared by every instance using the same URL and prefix.
    Redis {
        /// `redis://[:password@]host:port[/db]`.
        url: String,
        /// Key prefix (several deployments may share one Redis).
        prefix: String,
        /// Per-call timeout (connect and reply).
        timeout: Duration,
    },
}

/// How a limiter is built.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// In process or Redis.
    pub backend: Backend,
    /// Redis only: behaviour while Redis is unreachable.
    pub on_failure: FailureMode,
    /// Redis only: how long a reservation outlives an instance that died holding it (its
    /// concurrency slot frees, its budget reservation is charged). A live instance renews the
    /// leases of its requests in flight every third of it ([`Limiter::run_health_checks`]), so
    /// requests may run longer.
    pub lease: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            backend: Backend::InProcess,
            on_failure: FailureMode::Closed,
            lease: Duration::from_secs(900),
        }
    }
}

/// The outcome of an admission.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; settle the ticket when the response is done.
    Admitted(Ticket),
    /// Refused: 429 (rates, concurrency) or 402 (budget).
    Rejected(Rejection),
    /// The backend is unreachable and the limiter fails closed: 503.
    Unavailable,
    /// The backend is unreachable and the limiter fails open: go ahead, unlimited.
    Unchecked,
}

/// The limiter: cheap to clone.
///
/// On Redis, a call whose answer is lost (a timeout, a dropped connection) leaves nothing
/// behind: an admission that failed is released, and a settlement that failed is sent again,
/// once a health check ([`Limiter::check_health`]) finds Redis answering ([`MAX_REPAIRS`] kept
/// at most; [`Limiter::pending_repairs`]). Every Redis call is idempotent, so a repair of a call
/// that did run, or that Redis runs only after its repair, changes nothing more.
#[derive(Debug, Clone)]
pub struct Limiter(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    backend: Store,
    clock: Arc<dyn Clock>,
    lease_ms: i64,
    on_failure: FailureMode,
    up: AtomicBool,
    /// Wakes the health checks when a call fails, so a passing failure is over in one ping.
    recheck: tokio::sync::Notify,
    tickets: AtomicU64,
    /// Where fire-and-forget settlements run (Redis).
    runtime: Option<tokio::runtime::Handle>,
    /// Releases and settlements that failed, sent again once Redis answers (see the module docs).
    repairs: Mutex<VecDeque<Repair>>,
    /// Settlements and repairs on their way to Redis ([`Sending`]): [`Limiter::flush`] waits for
    /// them to end (sent, or queued for repair).
    sending: AtomicUsize,
    /// How many calls the last [`Limiter::flush`] left unsent, so that a second flush (after the
    /// batch workers) does not log the same ones again.
    unsent_logged: AtomicUsize,
    /// Redis: the tickets admitted and not settled yet, by id, whose leases
    /// [`Limiter::renew_leases`] keeps running.
    live: Mutex<LiveTickets>,
    /// Whether the last health check (or seeding) found Redis's seeding mark: the budgets were
    /// started from the usage ledger since Redis last lost its state (always true in process).
    seeded: AtomicBool,
    /// Wakes [`Limiter::budgets_unseeded`] when a health check finds the mark missing.
    unseeded: tokio::sync::Notify,
}

type LiveTickets = HashMap<u64, Pending, foldhash::fast::RandomState>;

/// The most failed calls kept for repair; beyond it the oldest is dropped (its reservation is
/// then released by its lease, as for an instance that died).
pub const MAX_REPAIRS: usize = 65_536;

/// A Redis call to send again once Redis answers.
#[derive(Debug)]
enum Repair {
    /// Give back what an admission whose answer was lost took (if anything), and tombstone it.
    Release(Pending),
    /// A settlement that failed.
    Settle(Pending, Used),
}

#[derive(Debug)]
enum Store {
    Local(Local),
    Redis(Arc<RedisBackend>),
}

struct Metrics {
    admitted: Counter,
    rejected_rate: Counter,
    rejected_concurrency: Counter,
    rejected_budget: Counter,
    unavailable: Counter,
    unchecked: Counter,
    redis_admit: Counter,
    redis_settle: Counter,
    redis_release: Counter,
    redis_ping: Counter,
    redis_renew: Counter,
    redis_errors: Counter,
    repairs_dropped: Counter,
    repairs_pending: Gauge,
    up: Gauge,
    budgets_seeded: Gauge,
}

/// A gauge's value for a yes or no.
fn gauge_value(yes: bool) -> f64 {
    if yes { 1.0 } else { 0.0 }
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        metrics::describe_counter!(
            "rampart_limits_decisions_total",
            "Admission decisions of the limiter by outcome."
        );
        metrics::describe_counter!(
            "rampart_limits_redis_round_trips_total",
            "Round trips to Redis by operation (admit, settle, release, renew, ping)."
        );
        metrics::describe_gauge!(
            "rampart_limits_redis_repairs_pending",
            "Releases of admissions whose answer was lost and failed settlements, waiting for \
             Redis to answer again."
        );
        metrics::describe_counter!(
            "rampart_limits_redis_repairs_dropped_total",
            "Repairs dropped because the queue was full (their leases release them)."
        );
        metrics::describe_counter!(
            "rampart_limits_backend_errors_total",
            "Failed calls to the limits backend (Redis)."
        );
        metrics::describe_gauge!(
            "rampart_limits_backend_up",
            "1 when the limits backend is reachable (always 1 in process)."
        );
        metrics::describe_gauge!(
            "rampart_limits_budgets_seeded",
            "1 when the budgets were started from the usage ledger since Redis last lost its \
             state; 0 while they count from zero (Redis emptied, and the seeding not done yet: \
             the store unreachable, say). Always 1 in process."
        );
        let decision =
            |d: &'static str| counter!("rampart_limits_decisions_total", "decision" => d);
        Metrics {
            admitted: decision("admitted"),
            rejected_rate: decision("rejected_rate"),
            rejected_concurrency: decision("rejected_concurrency"),
            rejected_budget: decision("rejected_budget"),
            unavailable: decision("unavailable"),
            unchecked: decision("unchecked"),
            redis_admit: counter!("rampart_limits_redis_round_trips_total", "op" => "admit"),
            redis_settle: counter!("rampart_limits_redis_round_trips_total", "op" => "settle"),
            redis_release: counter!("rampart_limits_redis_round_trips_total", "op" => "release"),
            redis_ping: counter!("rampart_limits_redis_round_trips_total", "op" => "ping"),
            redis_renew: counter!("rampart_limits_redis_round_trips_total", "op" => "renew"),
            redis_errors: counter!("rampart_limits_backend_errors_total"),
            repairs_dropped: counter!("rampart_limits_redis_repairs_dropped_total"),
            repairs_pending: gauge!("rampart_limits_redis_repairs_pending"),
            up: gauge!("rampart_limits_backend_up"),
            budgets_seeded: gauge!("rampart_limits_budgets_seeded"),
        }
    })
}

impl Limiter {
    /// A limiter as configured, on `clock`. A Redis limiter connects lazily (the first call or
    /// [`Limiter::check_health`]); it needs a tokio runtime to exist.
    ///
    /// # Errors
    /// An unusable Redis URL.
    pub fn new(config: &LimiterConfig, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let (backend, runtime) = match &config.backend {
            Backend::InProcess => (Store::Local(Local::new()), None),
            Backend::Redis {
                url,
                prefix,
                timeout,
            } => (
                Store::Redis(Arc::new(RedisBackend::new(url, prefix, *timeout)?)),
                Some(
                    tokio::runtime::Handle::try_current()
                        .map_err(|_| "the Redis limiter needs a tokio runtime".to_owned())?,
                ),
            ),
        };
        Ok(Self::from_parts(backend, runtime, config, clock))
    }

    fn from_parts(
        backend: Store,
        runtime: Option<tokio::runtime::Handle>,
        config: &LimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        metrics().up.set(1.0);
        let seeded = matches!(backend, Store::Local(_));
        metrics().budgets_seeded.set(gauge_value(seeded));
        Self(Arc::new(Inner {
            clock,
            lease_ms: i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX),
            on_failure: config.on_failure,
            up: AtomicBool::new(true),
            recheck: tokio::sync::Notify::new(),
            // Random start: two processes never share a ticket id (Redis leases are keyed by it).
            tickets: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0),
            // On Redis, unknown until a health check reads the mark.
            seeded: AtomicBool::new(seeded),
            unseeded: tokio::sync::Notify::new(),
            backend,
            runtime,
            repairs: Mutex::new(VecDeque::new()),
            sending: AtomicUsize::new(0),
            unsent_logged: AtomicUsize::new(0),
            live: Mutex::new(HashMap::default()),
        }))
    }

    /// An in-process limiter on `clock`.
    #[must_use]
    pub fn in_process(clock: Arc<dyn Clock>) -> Self {
        Self::from_parts(
            Store::Local(Local::new()),
            None,
            &LimiterConfig::default(),
            clock,
        )
    }

    /// `in-process` or `redis`.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        match self.0.backend {
            Store::Local(_) => "in-process",
            Store::Redis(_) => "redis",
        }
    }

    /// Whether the backend answered its last call (always true in process). While it is false,
    /// admissions do not call Redis: they get the configured failure answer at once, until a
    /// health check (or a call still in flight) gets a reply again.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    /// Whether an unreachable backend refuses requests.
    #[must_use]
    pub fn fails_closed(&self) -> bool {
        self.0.on_failure == FailureMode::Closed
    }

    fn mark(&self, up: bool, what: &str, err: Option<&RedisFailure>) {
        let was = self.0.up.swap(up, Ordering::Relaxed);
        metrics().up.set(gauge_value(up));
        if was && !up {
            // A failed call wakes the health checks; a failed check or repair waits for the next.
            if what != "ping" && what != "repair" {
                self.0.recheck.notify_one();
            }
            tracing::error!(
                target: "rampart::limits",
                error = %err.map(ToString::to_string).unwrap_or_default(),
                during = what,
                fail = if self.fails_closed() { "closed" } else { "open" },
                "limits backend unreachable; limited requests get the failure answer at once until \
                 a health check succeeds"
            );
        } else if !was && up {
            tracing::info!(target: "rampart::limits", "limits backend reachable again");
        }
    }

    /// Ping the backend now (loading the script); updates [`Limiter::is_up`]. When Redis
    /// answers, the repairs waiting for it are sent (see the module docs); false when one of
    /// them fails.
    pub async fn check_health(&self) -> bool {
        let Store::Redis(r) = &self.0.backend else {
            return true;
        };
        metrics().redis_ping.increment(1);
        match r.ping().await {
            Ok(seeded) => {
                // Up first: whoever the note wakes may call Redis at once.
                self.mark(true, "ping", None);
                self.note_seeded(seeded);
                self.repair(r).await
            }
            Err(e) => {
                metrics().redis_errors.increment(1);
                self.mark(false, "ping", Some(&e));
                false
            }
        }
    }

    /// Whether the budgets were started from the usage ledger since Redis last lost its state,
    /// as the last health check or [`Limiter::finish_seeding`] found (always true in process:
    /// its state is lost only with the process, whose start seeds it).
    #[must_use]
    pub fn budgets_seeded(&self) -> bool {
        self.0.seeded.load(Ordering::Relaxed)
    }

    /// Resolves when a health check finds Redis without the seeding mark (it lost its state, or
    /// was never seeded): its budgets count from zero until started from the usage ledger again
    /// ([`Limiter::seed_spent`] between [`Limiter::begin_seeding`] and
    /// [`Limiter::finish_seeding`]). Never in process. May resolve once more for a loss already
    /// seeded: check [`Limiter::budgets_seeded`].
    pub async fn budgets_unseeded(&self) {
        self.0.unseeded.notified().await;
    }

    fn note_seeded(&self, seeded: bool) {
        metrics().budgets_seeded.set(gauge_value(seeded));
        if self.0.seeded.swap(seeded, Ordering::Relaxed) && !seeded {
            tracing::warn!(
                target: "rampart::limits",
                "Redis has lost the limits' state (no seeding mark): budgets count from zero \
                 until started from the usage ledger again"
            );
        }
        if !seeded {
            self.0.unseeded.notify_one();
        }
    }

    /// Before starting the budgets from the usage ledger ([`Limiter::seed_spent`]): on Redis,
    /// mark the seeding begun unless it is marked already (one round trip; nothing in
    /// process). Then [`Limiter::finish_seeding`].
    ///
    /// # Errors
    /// The Redis call failed, or Redis is known to be down (then no call is made).
    pub async fn begin_seeding(&self) -> Result<(), RedisFailure> {
        match self.redis()? {
            Some(r) => r
                .begin_seeding()
                .await
                .inspect_err(|e| self.failed("seed", e)),
            None => Ok(()),
        }
    }

    /// After every budget was seeded: on Redis, mark them seeded (one round trip), which the
    /// health checks of every instance read ([`Limiter::budgets_seeded`]). False when Redis lost
    /// its state since [`Limiter::begin_seeding`]: the seeds may be lost with it; seed again.
    ///
    /// # Errors
    /// The Redis call failed, or Redis is known to be down (then no call is made).
    pub async fn finish_seeding(&self) -> Result<bool, RedisFailure> {
        let Some(r) = self.redis()? else {
            return Ok(true);
        };
        let done = r
            .finish_seeding()
            .await
            .inspect_err(|e| self.failed("seed", e))?;
        self.0.seeded.store(done, Ordering::Relaxed);
        metrics().budgets_seeded.set(gauge_value(done));
        Ok(done)
    }

    /// The Redis backend (`None` in process), or an error when it is known to be down.
    fn redis(&self) -> Result<Option<&RedisBackend>, RedisFailure> {
        match &self.0.backend {
            Store::Local(_) => Ok(None),
            Store::Redis(_) if !self.is_up() => Err(RedisFailure::Command(
                "Redis is unreachable (a health check failed)".to_owned(),
            )),
            Store::Redis(r) => Ok(Some(r)),
        }
    }

    /// Count a failed call and mark Redis down.
    fn failed(&self, what: &str, e: &RedisFailure) {
        metrics().redis_errors.increment(1);
        self.mark(false, what, Some(e));
    }

    /// Check the backend every `every` until `shutdown` resolves (Redis only; returns at once
    /// in process), so readiness follows Redis even without traffic, and at once when a call
    /// fails: while the backend is down, admissions wait on nothing and only these checks (or a
    /// call that was already in flight) bring it back. Every third of a lease, the leases of
    /// the requests in flight are renewed too ([`Limiter::renew_leases`]).
    pub async fn run_health_checks(
        self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        if matches!(self.0.backend, Store::Local(_)) {
            return;
        }
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let third = u64::try_from(self.0.lease_ms / 3).unwrap_or(1).max(1);
        let mut renew = tokio::time::interval(Duration::from_millis(third));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.check_health().await; }
                _ = renew.tick() => { self.renew_leases().await; }
                () = self.0.recheck.notified() => {
                    self.check_health().await;
                    tick.reset();
                }
                () = &mut shutdown => return,
            }
        }
    }

    /// Admit a request under `policy` reserving `demand` (capped, see [`Demand::capped`]).
    pub async fn admit(&self, policy: &Arc<Policy>, demand: Demand) -> Admission {
        self.admit_as(policy, demand, false).await
    }

    /// [`Limiter::admit`] for a reservation that must fit whole in what is left of every budget
    /// (a batch's worst case), where a request may overdraw a budget by its own reservation:
    /// refused ([`crate::Reason::Budget`], with [`Rejection::needed_micros`]) when it does not.
    /// The fit is checked in the same atomic step as the rest (the same single round trip on
    /// Redis), so a refused reservation is never taken, not even for a moment.
    pub async fn admit_whole(&self, policy: &Arc<Policy>, demand: Demand) -> Admission {
        self.admit_as(policy, demand, true).await
    }

    async fn admit_as(&self, policy: &Arc<Policy>, demand: Demand, whole: bool) -> Admission {
        let demand = demand.capped();
        let now = self.0.clock.now_ms();
        let id = self.0.tickets.fetch_add(1, Ordering::Relaxed);
        let (admitted, snaps) = match &self.0.backend {
            Store::Local(l) => l.admit(policy, &demand, now, whole),
            Store::Redis(r) => {
                // Known to be down (a failed call or health check): answer at once instead of
                // making every request wait out the timeout on a Redis that does not reply. The
                // health checks notice when it is back.
                if !self.is_up() {
                    return self.unreachable();
                }
                metrics().redis_admit.increment(1);
                // Boxed: the script call's future would otherwise size every admission's.
                match Box::pin(r.admit(
                    policy,
                    &demand,
                    &ticket_name(id),
                    self.0.lease_ms,
                    now,
                    whole,
                ))
                .await
                {
                    Ok(v) => {
                        if !self.is_up() {
                            self.mark(true, "admit", None);
                        }
                        v
                    }
                    Err(e) => {
                        metrics().redis_errors.increment(1);
                        self.mark(false, "admit", Some(&e));
                        // It may have run, or may run when Redis resumes: release it then.
                        self.queue(Repair::Release(Pending {
                            id,
                            policy: policy.clone(),
                            demand,
                            admitted_ms: now,
                        }));
                        return self.unreachable();
                    }
                }
            }
        };
        if admitted {
            let pending = Pending {
                id,
                policy: policy.clone(),
                demand,
                admitted_ms: now,
            };
            if let Store::Redis(_) = &self.0.backend {
                self.live().insert(id, pending.clone());
            }
            let ticket = Ticket {
                pending: Some(pending),
                status: engine::status(policy, &demand, &snaps, now, true),
                limiter: self.clone(),
            };
            metrics().admitted.increment(1);
            Admission::Admitted(ticket)
        } else {
            // A whole reservation that does not fit is refused by the same step that checks it
            // (nothing was reserved), for the budget it overdraws; any other refusal as usual.
            let unfit = if whole && engine::fits(policy, &demand, &snaps) {
                engine::unfit(policy, &demand, &snaps, now)
            } else {
                None
            };
            let r = unfit.unwrap_or_else(|| engine::rejection(policy, &demand, &snaps, now));
            match r.reason {
                engine::Reason::Budget => metrics().rejected_budget.increment(1),
                engine::Reason::Concurrency => metrics().rejected_concurrency.increment(1),
                engine::Reason::Rate(_) => metrics().rejected_rate.increment(1),
            }
            Admission::Rejected(r)
        }
    }

    /// The answer while the backend is unreachable: 503 (fail closed) or unlimited (fail open).
    fn unreachable(&self) -> Admission {
        match self.0.on_failure {
            FailureMode::Closed => {
                metrics().unavailable.increment(1);
                Admission::Unavailable
            }
            FailureMode::Open => {
                metrics().unchecked.increment(1);
                Admission::Unchecked
            }
        }
    }

    /// Count at least `micros` as spent in `budget`'s current period on `scope` (of policy
    /// group `group`), e.g. what the usage ledger says was spent: at start, and when a budget
    /// appears on a running instance (a new budget, another period, another team), so a budget
    /// counts its whole period whenever it was set and a Redis that lost its state does not
    /// hand a spent budget out again. What the limiter counted itself is never lowered. One
    /// round trip with Redis.
    ///
    /// # Errors
    /// The Redis call failed, or Redis is known to be down (then no call is made): the budget
    /// keeps what Redis counts.
    pub async fn seed_spent(
        &self,
        group: uuid::Uuid,
        scope: Scope,
        budget: Budget,
        micros: u64,
    ) -> Result<(), RedisFailure> {
        let now = self.0.clock.now_ms();
        let window = budget.period.window(now);
        match &self.0.backend {
            Store::Local(l) => {
                l.seed_spent(group, scope, window.0, micros);
                Ok(())
            }
            Store::Redis(_) if !self.is_up() => Err(RedisFailure::Command(
                "Redis is unreachable (a health check failed)".to_owned(),
            )),
            Store::Redis(r) => r
                .seed_spent(group, scope, window, micros, now)
                .await
                .inspect_err(|e| {
                    metrics().redis_errors.increment(1);
                    self.mark(false, "seed", Some(e));
                }),
        }
    }

    /// Keep `repair` for when Redis answers again (dropping the oldest when full).
    fn queue(&self, repair: Repair) {
        let mut q = self
            .0
            .repairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if q.len() >= MAX_REPAIRS {
            q.pop_front();
            metrics().repairs_dropped.increment(1);
            tracing::warn!(
                target: "rampart::limits",
                max = MAX_REPAIRS,
                "too many Redis calls waiting for repair; the oldest is dropped (its lease \
                 releases it)"
            );
        }
        q.push_back(repair);
        metrics().repairs_pending.set(q.len() as f64);
    }

    /// How many repairs wait for Redis (see the module docs).
    #[must_use]
    pub fn pending_repairs(&self) -> usize {
        self.0
            .repairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Send the repairs waiting (oldest first) until none is left or one fails (it is kept,
    /// Redis is marked down); whether none failed.
    async fn repair(&self, r: &RedisBackend) -> bool {
        loop {
            let next = {
                let mut q = self
                    .0
                    .repairs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let next = q.pop_front();
                metrics().repairs_pending.set(q.len() as f64);
                next
            };
            let Some(repair) = next else {
                return true;
            };
            // Queued again if this task is dropped before the answer (a runtime shutting down).
            let call = Sending::new(self, repair);
            let now = self.0.clock.now_ms();
            let Some(repair) = &call.call else {
                continue;
            };
            let done = match repair {
                Repair::Release(p) => {
                    metrics().redis_release.increment(1);
                    Box::pin(r.release(
                        &p.policy,
                        &p.demand,
                        &ticket_name(p.id),
                        self.0.lease_ms,
                        p.admitted_ms,
                        now,
                    ))
                    .await
                }
                Repair::Settle(p, used) => {
                    metrics().redis_settle.increment(1);
                    Box::pin(r.settle(
                        &p.policy,
                        &p.demand,
                        used,
                        &ticket_name(p.id),
                        self.0.lease_ms,
                        p.admitted_ms,
                        now,
                    ))
                    .await
                }
            };
            match done {
                Ok(()) => call.sent(),
                Err(e) => {
                    metrics().redis_errors.increment(1);
                    if let RedisFailure::Server(_) = e {
                        // Redis refuses it: sending it again would not help (its lease releases
                        // it).
                        tracing::error!(
                            target: "rampart::limits",
                            error = %e,
                            "Redis refused a repair of a lost call; dropped"
                        );
                        call.sent();
                        continue;
                    }
                    // Kept (queued again by the drop), for the next health check.
                    drop(call);
                    self.mark(false, "repair", Some(&e));
                    return false;
                }
            }
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LiveTickets> {
        self.0.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Renew the leases of the tickets in flight on Redis that were admitted more than a third
    /// of a lease ago, to a lease from now (512 tickets per round trip), so a live request keeps
    /// its concurrency slot and budget reservation however long it runs. A lease that lapsed
    /// already stays lapsed. [`Limiter::run_health_checks`] calls it every third of a lease.
    /// Returns how many tickets were renewed: 0 in process, when none is due, or when Redis is
    /// known to be down (the next round tries again).
    pub async fn renew_leases(&self) -> usize {
        let Store::Redis(r) = &self.0.backend else {
            return 0;
        };
        if !self.is_up() {
            return 0;
        }
        let now = self.0.clock.now_ms();
        let due: Vec<Pending> = self
            .live()
            .values()
            .filter(|p| now - p.admitted_ms >= self.0.lease_ms / 3)
            .cloned()
            .collect();
        let mut renewed = 0;
        for chunk in due.chunks(RENEW_BATCH) {
            let tickets: Vec<_> = chunk
                .iter()
                .map(|p| (&*p.policy, &p.demand, ticket_name(p.id), p.admitted_ms))
                .collect();
            metrics().redis_renew.increment(1);
            if let Err(e) = r.renew(&tickets, self.0.lease_ms, now).await {
                metrics().redis_errors.increment(1);
                if let RedisFailure::Server(_) = e {
                    tracing::error!(
                        target: "rampart::limits",
                        error = %e,
                        "Redis refused to renew the leases of requests in flight"
                    );
                } else {
                    self.mark(false, "renew", Some(&e));
                }
                break;
            }
            renewed += chunk.len();
        }
        renewed
    }

    /// Before the process exits, once nothing settles any more (the gateway's workers are
    /// gone): wait for the settlements on their way to Redis to end, then, if any call waits
    /// for repair, send them all if Redis answers. Waits `wait` at most (a few seconds: an
    /// unreachable Redis must not hold the exit up); what is still queued then is logged and
    /// left to its lease (logged once for the same count). Returns how many calls are left unsent
    /// (0 in process).
    pub async fn flush(&self, wait: Duration) -> usize {
        if matches!(self.0.backend, Store::Local(_)) {
            return 0;
        }
        let _ = tokio::time::timeout(wait, async {
            while self.0.sending.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if self.pending_repairs() > 0 {
                self.check_health().await;
            }
        })
        .await;
        let left = self.pending_repairs() + self.0.sending.load(Ordering::Acquire);
        if left > 0 && self.0.unsent_logged.swap(left, Ordering::AcqRel) != left {
            tracing::warn!(
                target: "rampart::limits",
                left,
                "settlements not sent to Redis before exit; their leases release them"
            );
        }
        left
    }

    fn settle(&self, p: Pending, used: Used) {
        let used = used.capped();
        let now = self.0.clock.now_ms();
        if let Store::Redis(_) = &self.0.backend {
            // Ended here: no more renewals (one that runs meanwhile is harmless: the settlement
            // removes what it renews, and a renewal after the settlement finds nothing).
            self.live().remove(&p.id);
        }
        match &self.0.backend {
            Store::Local(l) => l.settle(&p.policy, &p.demand, &used, p.admitted_ms, now),
            // Known to be down: kept for when it answers again, without waiting on it.
            Store::Redis(_) if !self.is_up() => self.queue(Repair::Settle(p, used)),
            Store::Redis(r) => {
                let r = r.clone();
                // Dropped unsent (its runtime shut down), it is queued for repair: see `flush`.
                let call = Sending::new(self, Repair::Settle(p, used));
                let task = async move {
                    let Some(Repair::Settle(p, used)) = &call.call else {
                        return;
                    };
                    metrics().redis_settle.increment(1);
                    let name = ticket_name(p.id);
                    let sent = r
                        .settle(
                            &p.policy,
                            &p.demand,
                            used,
                            &name,
                            call.limiter.0.lease_ms,
                            p.admitted_ms,
                            now,
                        )
                        .await;
                    match sent {
                        Ok(()) => call.sent(),
                        Err(e) => {
                            // It may have run or not: sent again once Redis answers
                            // (idempotent); queued by the drop, before the health check wakes.
                            metrics().redis_errors.increment(1);
                            let limiter = call.limiter.clone();
                            drop(call);
                            limiter.mark(false, "settle", Some(&e));
                        }
                    }
                };
                // On a worker, its own thread (and connection): the settlement is sent before the
                // worker's next admission. Elsewhere, the runtime the limiter was made on.
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread => {
                        h.spawn(task);
                    }
                    _ => {
                        if let Some(rt) = &self.0.runtime {
                            rt.spawn(task);
                        }
                    }
                }
            }
        }
    }
}

/// A settlement or repair on its way to Redis. Unless [`Sending::sent`] says it was answered, it
/// is queued for repair when dropped: a call that failed, and one whose task was dropped before
/// its answer came (its runtime shut down, or it was spawned on a runtime shutting down, which
/// drops the task at once). A call that did run is harmless to send again (idempotent).
struct Sending {
    limiter: Limiter,
    call: Option<Repair>,
}

impl Sending {
    fn new(limiter: &Limiter, call: Repair) -> Self {
        limiter.0.sending.fetch_add(1, Ordering::AcqRel);
        Self {
            limiter: limiter.clone(),
            call: Some(call),
        }
    }

    /// Answered (or refused for good): nothing to repair.
    fn sent(mut self) {
        self.call = None;
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.limiter.queue(call);
        }
        self.limiter.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ticket_name(id: u64) -> String {
    format!("{id:016x}")
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    policy: Arc<Policy>,
    demand: Demand,
    admitted_ms: i64,
}

/// An admitted request's reservation. Settle it with [`Ticket::settle`]; dropping it settles it
/// as having used nothing.
#[derive(Debug)]
pub struct Ticket {
    pending: Option<Pending>,
    status: Status,
    limiter: Limiter,
}

impl Ticket {
    /// The per-minute limits after this request's reservation (for the response headers).
    #[must_use]
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// What was reserved.
    #[must_use]
    pub fn demand(&self) -> Option<Demand> {
        self.pending.as_ref().map(|p| p.demand)
    }

    /// The policy the request was admitted under.
    #[must_use]
    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.pending.as_ref().map(|p| &p.policy)
    }

    /// When it was admitted (milliseconds since the epoch, the limiter's clock): the moment
    /// whose budget period it is charged to.
    #[must_use]
    pub fn admitted_ms(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.admitted_ms)
    }

    /// Replace the reservation with what the request used: unused tokens go back to the
    /// buckets, the budget is charged `used.cost_micros`, the concurrency slot frees.
    pub fn settle(mut self, used: Used) {
        if let Some(p) = self.pending.take() {
            self.limiter.settle(p, used);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.limiter.settle(p, Used::default());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;

    /// A recorder that keeps counters by name and labels.
    #[derive(Default)]
    struct Counters(Mutex<Vec<(String, Arc<AtomicU64>)>>);

    impl metrics::Recorder for Counters {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let c = Arc::new(AtomicU64::new(0));
            self.0
                .lock()
                .unwrap()
                .push((format!("{}{{{}}}", key.name(), labels.join(",")), c.clone()));
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    /// Health check pings (and, on the Redis at `RAMPART_TEST_REDIS_URL`, lease renewals) are
    /// counted as round trips. One test: the metrics are registered once per process.
    #[tokio::test]
    async fn health_check_pings_and_renewals_are_counted_as_round_trips() {
        let counters = Counters::default();
        metrics::with_local_recorder(&counters, || {
            let _ = metrics();
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = LimiterConfig {
            backend: Backend::Redis {
                url: format!("redis://127.0.0.1:{port}"),
                prefix: "pings".to_owned(),
                timeout: Duration::from_millis(200),
            },
            ..LimiterConfig::default()
        };
        let limiter = Limiter::new(&config, Arc::new(ManualClock::at(0))).unwrap();
        assert!(!limiter.check_health().await);
        assert!(!limiter.check_health().await);
        let count = |op: &str| {
            counters
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(k, _)| *k == format!("rampart_limits_redis_round_trips_total{{op={op}}}"))
                .map(|(_, c)| c.load(Ordering::Relaxed))
        };
        assert_eq!(count("ping"), Some(2));
        let Some(url) = std::env::var("RAMPART_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return;
        };
        let config = LimiterConfig {
            backend: Backend::Redis {
                url,
                prefix: format!("renews-{}", uuid::Uuid::new_v4().simple()),
                timeout: Duration::from_secs(2),
            },
            ..LimiterConfig::default()
        };
        let clock = Arc::new(ManualClock::at(0));
        let limiter = Limiter::new(&config, clock.clone()).unwrap();
        let policy = Policy::new(
            uuid::Uuid::new_v4(),
            [crate::policy::ScopeLimits {
                scope: Scope {
                    kind: crate::policy::ScopeKind::Key,
                    id: uuid::Uuid::new_v4(),
                },
                rates: crate::policy::Rates {
                    concurrency: Some(1),
                    ..crate::policy::Rates::default()
                },
                budget: None,
            }],
        )
        .unwrap();
        let Admission::Admitted(_held) = limiter.admit(&policy, Demand::default()).await else {
            panic!("not admitted");
        };
        clock.advance(300_000);
        assert_eq!(limiter.renew_leases().await, 1);
        assert_eq!(count("renew"), Some(1));
    }
}
