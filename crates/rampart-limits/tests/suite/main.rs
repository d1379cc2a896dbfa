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
);

/// A limiter on a Redis that is not there.
fn unreachable(on_failure: FailureMode) -> Limiter {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = LimiterConfig {
        backend: Backend::Redis {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "unreachable".to_owned(),
            timeout: Duration::from_millis(200),
        },
        on_failure,
        lease: Duration::from_secs(900),
    };
    Limiter::new(&config, Arc::new(ManualClock::at(T0))).unwrap()
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_by_default_and_open_when_configured() {
    let p = rampart_limits::Policy::new(
        uuid::Uuid::new_v4(),
        [rampart_limits::ScopeLimits {
            scope: rampart_limits::Scope {
                kind: rampart_limits::ScopeKind::Key,
                id: uuid::Uuid::new_v4(),
            },
            rates: rampart_limits::Rates {
                rpm: Some(1),
                ..rampart_limits::Rates::default()
            },
            budget: None,
        }],
    )
    .unwrap();
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

#[tokio::test]
async fn an_in_process_budget_can_start_from_what_the_ledger_says_was_spent() {
    let h = in_process();
    let scope = rampart_limits::Scope {
        kind: rampart_limits::ScopeKind::Team,
        id: uuid::Uuid::new_v4(),
    };
    let budget = rampart_limits::Budget {
        limit_micros: 1_000,
        period: rampart_limits::Period::Month,
    };
    let p = rampart_limits::Policy::new(
        scope.id,
        [rampart_limits::ScopeLimits {
            scope,
            rates: rampart_limits::Rates::default(),
            budget: Some(budget),
        }],
    )
    .unwrap();
    assert!(h.limiter.is_in_process());
    h.limiter.seed_spent(scope.id, scope, budget, 1_000);
    let demand = rampart_limits::Demand {
        cost_micros: 1,
        ..rampart_limits::Demand::default()
    };
    assert!(matches!(
        h.limiter.admit(&p, demand).await,
        rampart_limits::Admission::Rejected(r) if r.reason == rampart_limits::Reason::Budget
    ));
    // A lower figure never undoes what the process counted itself.
    h.limiter.seed_spent(scope.id, scope, budget, 10);
    assert!(matches!(
        h.limiter.admit(&p, demand).await,
        rampart_limits::Admission::Rejected(_)
    ));
    // Next month starts afresh.
    h.advance(31 * 24 * 3_600_000);
    assert!(matches!(
        h.limiter.admit(&p, demand).await,
        rampart_limits::Admission::Admitted(_)
    ));
}
