//! One behaviour, two backends: every test in `cases` runs against the in-process limiter and
//! against Redis (`RAMPART_TEST_REDIS_URL`; skipped loudly when unset, failing when `CI` is set),
//! on a [`ManualClock`], so time moves only when a test says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod cases;

use std::sync::Arc;
use std::time::Duration;

use rampart_limits::{Backend, Clock, FailureMode, Limiter, LimiterConfig, ManualClock};

/// 2026-06-01T12:00:00Z: mid-day, mid-month.
pub const T0: i64 = 1_780_315_200_000;

/// A limiter on a fresh clock, with its own key prefix on Redis.
#[derive(Debug)]
pub struct Harness {
    pub limiter: Limiter,
    pub clock: Arc<ManualClock>,
}

impl Harness {
    pub fn advance(&self, ms: i64) {
        self.clock.advance(ms);
    }
}

pub fn in_process() -> Harness {
    let clock = Arc::new(ManualClock::at(T0));
    Harness {
        limiter: Limiter::in_process(clock.clone() as Arc<dyn Clock>),
        clock,
    }
}

pub fn redis_url() -> Option<String> {
    match std::env::var("RAMPART_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but RAMPART_TEST_REDIS_URL is not: the Redis half of the limits suite \
                 must run in CI (scripts/test.sh starts a throwaway redis-server)"
            );
            static BANNER: std::sync::Once = std::sync::Once::new();
            BANNER.call_once(|| {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"\n##########################################################################\n\
                      ## SKIPPING every redis::* limits test: RAMPART_TEST_REDIS_URL is unset. ##\n\
                      ## ./scripts/test.sh starts a throwaway redis-server and runs them.     ##\n\
                      ##########################################################################\n\n",
                );
            });
            None
        }
    }
}

pub async fn redis() -> Option<Harness> {
    let url = redis_url()?;
    let clock = Arc::new(ManualClock::at(T0));
    let config = LimiterConfig {
        backend: Backend::Redis {
            url,
            prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
            timeout: Duration::from_secs(2),
        },
        on_failure: FailureMode::Closed,
        lease: Duration::from_secs(900),
    };
    let limiter = Limiter::new(&config, clock.clone() as Arc<dyn Clock>).unwrap();
    assert!(
        limiter.check_health().await,
        "Redis at RAMPART_TEST_REDIS_URL is unreachable"
    );
    Some(Harness { limiter, clock })
}

/// Instantiate every named `cases` function once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::cases::$name(&crate::in_process()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = crate::redis().await else { return };
                    crate::cases::$name(&h).await;
                }
            )*
        }
    };
}

on_both_backends!(
    admits_up_to_the_request_limit_then_refuses_with_a_retry_after,
    requests_refill_continuously_over_the_minute,
    concurrent_admissions_never_exceed_the_request_limit,
    input_tokens_are_reserved_then_the_unused_part_is_returned,
    a_token_bucket_is_overdrawn_by_at_most_one_reservation,
    output_beyond_the_reservation_is_charged_as_debt,
    concurrency_slots_free_when_tickets_settle_or_drop,
    the_team_limit_is_shared_by_its_keys,
    status_reports_the_most_restrictive_scope,
    a_budget_refuses_once_spent_and_names_its_reset,
    budget_overshoot_under_concurrency_is_at_most_one_reservation,
    a_budget_resets_with_its_period,
    unlimited_dimensions_are_never_checked,
    a_reservation_that_must_fit_whole_is_refused_naming_what_is_left,
    a_raised_limit_applies_at_once_and_a_lowered_one_caps_at_once,
    a_budget_starts_from_what_the_ledger_says_was_spent_and_is_never_lowered,
    waits_do_not_count_reservations_in_flight_as_used,
    input_reservations_in_flight_are_waited_out_in_full,
    a_limit_lowered_while_requests_run_holds_when_they_settle,
    a_limit_raised_while_requests_run_keeps_what_was_used_since,
    a_lowered_limit_never_makes_what_was_used_smaller,
    two_credentials_limited_differently_on_one_scope_share_one_count,
    a_concurrency_limit_set_while_requests_run_counts_them,
    a_clock_set_back_refills_from_then_on,
);

/// A limiter on the Redis at `url`, keys under `prefix`, with a 900 s lease.
fn redis_limiter(
    url: String,
    prefix: String,
    timeout: Duration,
    on_failure: FailureMode,
) -> Limiter {
    let config = redis_config(url, prefix, timeout, on_failure);
    Limiter::new(&config, Arc::new(ManualClock::at(T0))).unwrap()
}

fn redis_config(
    url: String,
    prefix: String,
    timeout: Duration,
    on_failure: FailureMode,
) -> LimiterConfig {
    LimiterConfig {
        backend: Backend::Redis {
            url,
            prefix,
            timeout,
        },
        on_failure,
        lease: Duration::from_secs(900),
    }
}

/// A limiter on the test Redis at `url` (keys under a fresh prefix, a 2 s timeout, failing
/// closed) with `lease`, on `clock`.
fn leased_limiter(url: String, lease: Duration, clock: Arc<dyn Clock>) -> Limiter {
    let prefix = format!("lease-{}", uuid::Uuid::new_v4().simple());
    let config = LimiterConfig {
        lease,
        ..redis_config(url, prefix, Duration::from_secs(2), FailureMode::Closed)
    };
    Limiter::new(&config, clock).unwrap()
}

/// `limiter`'s health checks every `every` (and lease renewals), until the sender is used.
fn health_checks(
    limiter: &Limiter,
    every: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let checks = tokio::spawn(limiter.clone().run_health_checks(every, async move {
        let _ = stopped.await;
    }));
    (stop, checks)
}

/// A limiter on a Redis that is not there.
fn unreachable(on_failure: FailureMode) -> Limiter {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    redis_limiter(
        format!("redis://127.0.0.1:{port}"),
        "unreachable".to_owned(),
        Duration::from_millis(200),
        on_failure,
    )
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_by_default_and_open_when_configured() {
    let p = rpm_policy(1);
    let closed = unreachable(FailureMode::Closed);
    assert!(closed.is_up(), "up until a call fails");
    assert!(matches!(
        closed.admit(&p, rampart_limits::Demand::default()).await,
        rampart_limits::Admission::Unavailable
    ));
    assert!(!closed.is_up() && closed.fails_closed());
    assert!(!closed.check_health().await);
    let open = unreachable(FailureMode::Open);
    for _ in 0..3 {
        assert!(matches!(
            open.admit(&p, rampart_limits::Demand::default()).await,
            rampart_limits::Admission::Unchecked
        ));
    }
    assert!(!open.is_up());
}

/// A stand-in for a Redis that stops answering (a frozen server, a network partition): it
/// accepts connections and, while `frozen`, forwards nothing either way, so calls get no reply
/// and no error. Without a Redis behind it, it is always frozen. It can also cut every
/// connection open (a restarted Redis, a broken network path: what was not forwarded is lost),
/// and while `down`, close each new connection at once (a Redis that is not running).
struct Stall {
    url: String,
    frozen: tokio::sync::watch::Sender<bool>,
    cuts: tokio::sync::watch::Sender<u64>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Stall {
    async fn start(to: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (frozen, rx) = tokio::sync::watch::channel(to.is_none());
        let cuts = tokio::sync::watch::Sender::new(0);
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cuts2, down2) = (cuts.clone(), down.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let Some(to) = &to else {
                    held.push(client);
                    continue;
                };
                if down2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let server = tokio::net::TcpStream::connect(to).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to) in [(cr, sw), (sr, cw)].map(|(r, w)| (r, w)) {
                    let (frozen, mut cut) = (rx.clone(), cuts2.subscribe());
                    tokio::spawn(async move {
                        tokio::select! {
                            () = Self::pump(from, to, frozen) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        Self {
            url,
            frozen,
            cuts,
            down,
        }
    }

    /// Close every connection open now, dropping what it holds.
    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Go down (cut every connection, close new ones) or come back.
    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn limiter(&self, on_failure: FailureMode, timeout: Duration) -> Limiter {
        redis_limiter(
            self.url.clone(),
            format!("stall-{}", uuid::Uuid::new_v4().simple()),
            timeout,
            on_failure,
        )
    }
}

/// `rates` on a new key (in a new group), no budget.
fn key_policy(rates: rampart_limits::Rates) -> Arc<rampart_limits::Policy> {
    rampart_limits::Policy::new(
        uuid::Uuid::new_v4(),
        [rampart_limits::ScopeLimits {
            scope: rampart_limits::Scope {
                kind: rampart_limits::ScopeKind::Key,
                id: uuid::Uuid::new_v4(),
            },
            rates,
            budget: None,
        }],
    )
    .unwrap()
}

fn rpm_policy(n: u64) -> Arc<rampart_limits::Policy> {
    key_policy(rampart_limits::Rates {
        rpm: Some(n),
        ..rampart_limits::Rates::default()
    })
}

/// The longest of `n` admissions on `limiter`, each of which must be `expected`.
async fn slowest_of(
    limiter: &Limiter,
    n: usize,
    expected: fn(&rampart_limits::Admission) -> bool,
) -> Duration {
    let p = rpm_policy(1_000);
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = tokio::time::Instant::now();
        let a = limiter.admit(&p, rampart_limits::Demand::default()).await;
        slowest = slowest.max(started.elapsed());
        assert!(expected(&a), "{a:?}");
    }
    slowest
}

/// Once the limiter knows Redis does not answer (here: its health check timed out), admissions
/// get the configured answer at once instead of each waiting out the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_is_not_waited_on_once_known_down() {
    let stall = Stall::start(None).await;
    let timeout = Duration::from_secs(2);
    let closed = stall.limiter(FailureMode::Closed, timeout);
    let open = stall.limiter(FailureMode::Open, timeout);
    let (c, o) = tokio::join!(closed.check_health(), open.check_health());
    assert!(!c && !o && !closed.is_up() && !open.is_up());
    let slowest = slowest_of(&closed, 20, |a| {
        matches!(a, rampart_limits::Admission::Unavailable)
    })
    .await;
    assert!(
        slowest < Duration::from_millis(100),
        "fail closed: {slowest:?}"
    );
    let slowest = slowest_of(&open, 20, |a| {
        matches!(a, rampart_limits::Admission::Unchecked)
    })
    .await;
    assert!(
        slowest < Duration::from_millis(100),
        "fail open: {slowest:?}"
    );
}

/// Seeding budgets from the ledger (at start, or when a reload brings one) on a Redis known to
/// be down fails at once instead of waiting out the timeout per budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_a_budget_on_a_redis_known_down_fails_at_once() {
    let stall = Stall::start(None).await;
    let limiter = stall.limiter(FailureMode::Closed, Duration::from_secs(2));
    assert!(!limiter.check_health().await);
    let scope = rampart_limits::Scope {
        kind: rampart_limits::ScopeKind::Key,
        id: uuid::Uuid::new_v4(),
    };
    let budget = rampart_limits::Budget {
        limit_micros: 1_000,
        period: rampart_limits::Period::Day,
    };
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        assert!(
            limiter
                .seed_spent(scope.id, scope, budget, 10)
                .await
                .is_err()
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "{took:?}");
}

/// `host:port` of the test Redis.
fn redis_addr(url: &str) -> String {
    url.trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// Redis answers, then hangs: the first call to notice pays the timeout, the rest are answered
/// at once; when it answers again the health checks bring the limiter back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_then_answers_again_is_used_again_by_itself() {
    let Some(url) = redis_url() else { return };
    let stall = Stall::start(Some(redis_addr(&url))).await;
    let timeout = Duration::from_millis(500);
    let limiter = stall.limiter(FailureMode::Closed, timeout);
    assert!(limiter.check_health().await);
    let (stop, checks) = health_checks(&limiter, Duration::from_millis(100));
    let admitted =
        |a: &rampart_limits::Admission| matches!(a, rampart_limits::Admission::Admitted(_));
    let unavailable =
        |a: &rampart_limits::Admission| matches!(a, rampart_limits::Admission::Unavailable);
    slowest_of(&limiter, 3, admitted).await;

    stall.frozen.send_replace(true);
    // The call that finds out waits for the timeout; nobody after it does.
    let first = slowest_of(&limiter, 1, unavailable).await;
    assert!(first >= timeout - Duration::from_millis(50), "{first:?}");
    assert!(!limiter.is_up());
    let slowest = slowest_of(&limiter, 20, unavailable).await;
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    // Still down a few health checks later, and still answering at once.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!limiter.is_up());
    let slowest = slowest_of(&limiter, 5, unavailable).await;
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");

    stall.frozen.send_replace(false);
    let back = tokio::time::Instant::now();
    while !limiter.is_up() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest_of(&limiter, 3, admitted).await;
    let _ = stop.send(());
    checks.await.unwrap();
}

#[test]
fn a_bad_redis_url_is_refused_without_echoing_it() {
    let config = LimiterConfig {
        backend: Backend::Redis {
            url: "http://user:hunter2@example".to_owned(),
            prefix: "x".to_owned(),
            timeout: Duration::from_millis(200),
        },
        ..LimiterConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let err = Limiter::new(&config, Arc::new(ManualClock::at(T0))).unwrap_err();
    assert!(
        err.contains("limits.redis_url") && !err.contains("hunter2"),
        "{err}"
    );
}

/// One slot and 100 output tokens a minute on one key.
fn slot_policy() -> Arc<rampart_limits::Policy> {
    key_policy(rampart_limits::Rates {
        otpm: Some(100),
        concurrency: Some(1),
        ..rampart_limits::Rates::default()
    })
}

fn output(n: u64) -> rampart_limits::Demand {
    rampart_limits::Demand {
        output_tokens: n,
        ..rampart_limits::Demand::default()
    }
}

fn admitted(a: rampart_limits::Admission) -> rampart_limits::Ticket {
    match a {
        rampart_limits::Admission::Admitted(t) => t,
        other => panic!("not admitted: {other:?}"),
    }
}

/// A frozen Redis (`kill -STOP`) gets an admission, which times out (503), then resumes and
/// runs it: the slot and the tokens it took are given back once a health check finds Redis
/// answering, not held for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_whose_answer_was_lost_is_released_once_redis_answers() {
    let Some(url) = redis_url() else { return };
    let stall = Stall::start(Some(redis_addr(&url))).await;
    let limiter = stall.limiter(FailureMode::Closed, Duration::from_millis(300));
    assert!(limiter.check_health().await);
    let p = slot_policy();
    stall.frozen.send_replace(true);
    assert!(matches!(
        limiter.admit(&p, output(50)).await,
        rampart_limits::Admission::Unavailable
    ));
    assert_eq!(limiter.pending_repairs(), 1);
    // Resumed: Redis runs the admission nobody waits for any more, then the release.
    stall.frozen.send_replace(false);
    assert!(limiter.check_health().await);
    assert_eq!(limiter.pending_repairs(), 0);
    let t = admitted(limiter.admit(&p, output(1)).await);
    assert_eq!(t.status().output_tokens.unwrap().remaining, 99);
}

/// A settlement lost to an outage (every connection cut, new ones refused) is sent again once
/// Redis is back: the slot frees then, not after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_lost_to_an_outage_is_sent_again_once_redis_answers() {
    let Some(url) = redis_url() else { return };
    let stall = Stall::start(Some(redis_addr(&url))).await;
    let limiter = stall.limiter(FailureMode::Closed, Duration::from_millis(500));
    assert!(limiter.check_health().await);
    let p = slot_policy();
    let t = admitted(limiter.admit(&p, output(50)).await);
    stall.set_down(true);
    t.settle(rampart_limits::Used {
        output_tokens: 10,
        ..rampart_limits::Used::default()
    });
    let lost = tokio::time::Instant::now();
    while limiter.pending_repairs() == 0 {
        assert!(lost.elapsed() < Duration::from_secs(5), "never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!limiter.is_up());
    stall.set_down(false);
    assert!(limiter.check_health().await);
    assert_eq!(limiter.pending_repairs(), 0);
    // The slot is free and the settlement counted once: 100 - 10 used - 1 reserved now.
    let t = admitted(limiter.admit(&p, output(1)).await);
    assert_eq!(t.status().output_tokens.unwrap().remaining, 89);
}

/// A log writer keeping what it is given.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// What this thread logs from now until the guard drops.
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let lines = Self::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Redis is down at exit: the gateway's flush, then `serve`'s after the batch workers, each
/// leave the settlement unsent; it is logged once, by the first.
#[tokio::test]
async fn a_settlement_left_unsent_at_exit_is_logged_once() {
    let Some(url) = redis_url() else { return };
    let stall = Stall::start(Some(redis_addr(&url))).await;
    let limiter = stall.limiter(FailureMode::Closed, Duration::from_millis(200));
    assert!(limiter.check_health().await);
    let t = admitted(limiter.admit(&slot_policy(), output(50)).await);
    stall.set_down(true);
    t.settle(rampart_limits::Used::default());
    let lost = tokio::time::Instant::now();
    while limiter.pending_repairs() == 0 {
        assert!(lost.elapsed() < Duration::from_secs(5), "never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lines, _default) = Lines::capture();
    for _ in 0..2 {
        assert_eq!(limiter.flush(Duration::from_millis(500)).await, 1);
    }
    let text = lines.text();
    let unsent: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("settlements not sent"))
        .collect();
    assert_eq!(unsent.len(), 1, "{text}");
    assert!(unsent[0].contains("left=1"), "{text}");
}

/// A worker's connection that died with a restarted Redis (or a broken network path) costs no
/// failed call: the call is sent again on a fresh connection, and counted once.
#[tokio::test]
async fn a_connection_broken_by_a_redis_restart_costs_no_failed_call() {
    let Some(url) = redis_url() else { return };
    let stall = Stall::start(Some(redis_addr(&url))).await;
    let limiter = stall.limiter(FailureMode::Closed, Duration::from_secs(2));
    let p = rpm_policy(10);
    let t = admitted(limiter.admit(&p, rampart_limits::Demand::default()).await);
    assert_eq!(t.status().requests.unwrap().remaining, 9);
    for left in [8, 7] {
        stall.cut();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = admitted(limiter.admit(&p, rampart_limits::Demand::default()).await);
        assert_eq!(t.status().requests.unwrap().remaining, left);
        assert!(limiter.is_up());
    }
}

/// A gateway worker's runtime shut down at the end of the shutdown grace: a settlement it had
/// spawned and not sent yet, and a ticket its dropped tasks still held, are queued for repair
/// and sent by `flush` from the runtime that outlives it; their slots free at once, not after
/// the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_dropped_with_their_runtime_are_sent_by_flush() {
    let Some(url) = redis_url() else { return };
    let limiter = leased_limiter(url, Duration::from_secs(900), Arc::new(ManualClock::at(T0)));
    assert!(limiter.check_health().await);
    let (settled, held) = (slot_policy(), slot_policy());
    let a = admitted(limiter.admit(&settled, output(50)).await);
    let b = admitted(limiter.admit(&held, output(50)).await);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Spawned on this runtime, never polled before it shuts down.
            a.settle(rampart_limits::Used {
                output_tokens: 10,
                ..rampart_limits::Used::default()
            });
            // A response still open at the deadline: dropped with the runtime.
            tokio::spawn(async move {
                let _held = b;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
    })
    .join()
    .unwrap();
    assert_eq!(limiter.pending_repairs(), 2);
    for p in [&settled, &held] {
        assert!(matches!(
            limiter.admit(p, output(1)).await,
            rampart_limits::Admission::Rejected(_)
        ));
    }
    assert_eq!(limiter.flush(Duration::from_secs(3)).await, 0);
    assert_eq!(limiter.pending_repairs(), 0);
    // Both slots are free; the settlement counted its usage, the dropped ticket nothing.
    let t = admitted(limiter.admit(&settled, output(1)).await);
    assert_eq!(t.status().output_tokens.unwrap().remaining, 89);
    let t = admitted(limiter.admit(&held, output(1)).await);
    assert_eq!(t.status().output_tokens.unwrap().remaining, 99);
}

/// One slot, 100 output tokens a minute and 1,000 µ$ a day on one key.
fn slot_and_budget_policy() -> Arc<rampart_limits::Policy> {
    let budget = rampart_limits::Budget {
        limit_micros: 1_000,
        period: rampart_limits::Period::Day,
    };
    slot_policy()
        .narrowed(|s| rampart_limits::ScopeLimits {
            budget: Some(budget),
            ..s
        })
        .unwrap()
}

/// 30 output tokens and 600 µ$.
const LONG: rampart_limits::Demand = rampart_limits::Demand {
    input_tokens: 0,
    output_tokens: 30,
    cost_micros: 600,
};

/// What `p`'s budget counts as spent and reserved, as a refused whole reservation says (under
/// the budget alone, so a full concurrency limit does not answer instead).
async fn committed(limiter: &Limiter, p: &Arc<rampart_limits::Policy>) -> u64 {
    let huge = rampart_limits::Demand {
        cost_micros: 1_000_000,
        ..rampart_limits::Demand::default()
    };
    let budget = p
        .narrowed(|s| rampart_limits::ScopeLimits {
            rates: rampart_limits::Rates::default(),
            ..s
        })
        .unwrap();
    match limiter.admit_whole(&budget, huge).await {
        rampart_limits::Admission::Rejected(r) => r.committed_micros,
        other => panic!("not refused: {other:?}"),
    }
}

/// A request that runs for three leases on a live instance (its health checks running) keeps
/// its concurrency slot and its budget reservation throughout, and settles as a short one
/// would: its real cost charged, not its reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_request_keeps_its_reservation_past_its_lease() {
    let Some(url) = redis_url() else { return };
    let clock = Arc::new(rampart_limits::TokioClock::new());
    let limiter = leased_limiter(url, Duration::from_secs(2), clock);
    assert!(limiter.check_health().await);
    let (stop, checks) = health_checks(&limiter, Duration::from_secs(1));
    let p = slot_and_budget_policy();
    let t = admitted(limiter.admit(&p, LONG).await);
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match limiter.admit(&p, output(1)).await {
            rampart_limits::Admission::Rejected(r) => {
                assert_eq!(r.reason, rampart_limits::Reason::Concurrency);
            }
            other => panic!("the slot of a live request was taken: {other:?}"),
        }
        assert_eq!(committed(&limiter, &p).await, 600, "reserved, not charged");
    }
    t.settle(rampart_limits::Used {
        output_tokens: 10,
        cost_micros: 100,
        ..rampart_limits::Used::default()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(committed(&limiter, &p).await, 100, "charged what it used");
    // 20 of its 30 tokens given back (plus what refilled meanwhile), 1 reserved now.
    let t = admitted(limiter.admit(&p, output(1)).await);
    let left = t.status().output_tokens.unwrap().remaining;
    assert!(left >= 89, "{left}");
    let _ = stop.send(());
    checks.await.unwrap();
}

/// A lease that lapsed (its instance was taken for dead) is not renewed: its slot stays free
/// and its reservation charged; leases still running are, many per round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_not_renewed() {
    let Some(url) = redis_url() else { return };
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = leased_limiter(url, Duration::from_secs(3), clock.clone());
    let (lapsing, live) = (slot_and_budget_policy(), slot_and_budget_policy());
    let held = admitted(limiter.admit(&lapsing, LONG).await);
    clock.advance(999);
    assert_eq!(
        limiter.renew_leases().await,
        0,
        "not due before a third of a lease"
    );
    clock.advance(2_001);
    let running = admitted(limiter.admit(&live, LONG).await);
    // Lapsed exactly now (a lease ends at its expiry): not brought back.
    assert_eq!(limiter.renew_leases().await, 1);
    clock.advance(1_000);
    assert_eq!(limiter.renew_leases().await, 2);
    assert!(matches!(
        limiter.admit(&live, output(1)).await,
        rampart_limits::Admission::Rejected(_)
    ));
    let t = admitted(limiter.admit(&lapsing, output(1)).await);
    assert_eq!(
        committed(&limiter, &lapsing).await,
        600,
        "charged at its lapse"
    );
    drop((t, held, running));
}

/// Delete every key under `prefix` on the Redis at `url`: the state lost, as by a restart without
/// persistence or `FLUSHALL`, for this prefix alone (other tests share the Redis).
async fn wipe(url: &str, prefix: &str) {
    let mut conn = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = ::redis::Script::new(
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1",
    )
    .arg(format!("{prefix}:*"))
    .invoke_async(&mut conn)
    .await
    .unwrap();
}

/// The seeding mark: a Redis is unseeded until a seeding finishes on it, every instance's health
/// check reads the mark, one that lost its state is found unseeded by the next check (which
/// wakes `budgets_unseeded`), and a seeding during which it lost its state does not mark it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_state_is_found_unseeded_by_the_next_health_check() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("seeded-{}", uuid::Uuid::new_v4().simple());
    let instance = || {
        redis_limiter(
            url.clone(),
            prefix.clone(),
            Duration::from_secs(2),
            FailureMode::Closed,
        )
    };
    let (limiter, other) = (instance(), instance());
    let woken = |l: &Limiter| {
        let l = l.clone();
        async move {
            tokio::time::timeout(Duration::from_millis(200), l.budgets_unseeded())
                .await
                .is_ok()
        }
    };
    assert!(limiter.check_health().await);
    assert!(!limiter.budgets_seeded(), "never seeded");
    assert!(woken(&limiter).await);
    limiter.begin_seeding().await.unwrap();
    assert!(other.check_health().await);
    assert!(!other.budgets_seeded(), "a seeding under way is not done");
    assert!(limiter.finish_seeding().await.unwrap());
    assert!(limiter.budgets_seeded());
    assert!(other.check_health().await);
    assert!(other.budgets_seeded(), "every instance reads the mark");
    // Seeded: a health check wakes nobody.
    let _ = woken(&other).await;
    assert!(other.check_health().await);
    assert!(!woken(&other).await);

    wipe(&url, &prefix).await;
    assert!(other.check_health().await);
    assert!(!other.budgets_seeded());
    assert!(woken(&other).await);
    // Lost again during a seeding: the seeds may be gone with it, so it is not marked seeded.
    other.begin_seeding().await.unwrap();
    wipe(&url, &prefix).await;
    assert!(!other.finish_seeding().await.unwrap());
    assert!(!other.budgets_seeded());
    assert!(other.check_health().await);
    assert!(!other.budgets_seeded());
}

/// A Redis that refuses connections (not running, as at a start before it) is reported as
/// refusing them, once the connection's own retries are spent, not as a timeout.
#[tokio::test]
async fn a_refused_connection_is_reported_as_refused_not_as_a_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let timeout = Duration::from_secs(3);
    let limiter = redis_limiter(
        format!("redis://127.0.0.1:{port}"),
        "refused".to_owned(),
        timeout,
        FailureMode::Closed,
    );
    let (lines, _default) = Lines::capture();
    let started = tokio::time::Instant::now();
    assert!(!limiter.check_health().await);
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    let text = lines.text();
    assert!(
        text.contains("limits backend unreachable") && text.contains("Connection refused"),
        "{text}"
    );
}
