//! The behaviour both backends share. Each function is one test per backend.

use std::sync::Arc;

use rampart_limits::{
    Admission, Budget, Demand, Dimension, Period, Policy, Rates, Reason, Rejection, Scope,
    ScopeKind, ScopeLimits, Ticket, Used,
};
use uuid::Uuid;

use crate::{Harness, T0};

fn key_scope(rates: Rates, budget: Option<Budget>) -> ScopeLimits {
    ScopeLimits {
        scope: Scope {
            kind: ScopeKind::Key,
            id: Uuid::new_v4(),
        },
        rates,
        budget,
    }
}

fn team_scope(team: Uuid, rates: Rates, budget: Option<Budget>) -> ScopeLimits {
    ScopeLimits {
        scope: Scope {
            kind: ScopeKind::Team,
            id: team,
        },
        rates,
        budget,
    }
}

fn key_policy(rates: Rates) -> Arc<Policy> {
    Policy::new(Uuid::new_v4(), [key_scope(rates, None)]).unwrap()
}

fn rpm(n: u64) -> Rates {
    Rates {
        rpm: Some(n),
        ..Rates::default()
    }
}

fn itpm(n: u64) -> Rates {
    Rates {
        itpm: Some(n),
        ..Rates::default()
    }
}

fn otpm(n: u64) -> Rates {
    Rates {
        otpm: Some(n),
        ..Rates::default()
    }
}

fn tokens(input: u64, output: u64) -> Demand {
    Demand {
        input_tokens: input,
        output_tokens: output,
        cost_micros: 0,
    }
}

async fn admit(h: &Harness, p: &Arc<Policy>, d: Demand) -> Result<Ticket, Rejection> {
    match h.limiter.admit(p, d).await {
        Admission::Admitted(t) => Ok(t),
        Admission::Rejected(r) => Err(r),
        other => panic!("backend failure: {other:?}"),
    }
}

/// Settlements of the Redis backend are fire-and-forget; give them time to land.
async fn settled() {
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
}

pub async fn admits_up_to_the_request_limit_then_refuses_with_a_retry_after(h: &Harness) {
    let p = key_policy(rpm(3));
    let mut held = Vec::new();
    for left in [2, 1, 0] {
        let t = admit(h, &p, Demand::default()).await.unwrap();
        let w = t.status().requests.unwrap();
        assert_eq!((w.limit, w.remaining), (3, left));
        held.push(t);
    }
    let r = admit(h, &p, Demand::default()).await.unwrap_err();
    assert_eq!(r.reason, Reason::Rate(Dimension::Requests));
    assert_eq!(r.scope, ScopeKind::Key);
    assert_eq!(r.limit, 3);
    // One request comes back every 20 s.
    assert_eq!(r.retry_after_ms, 20_000);
    assert_eq!(r.status.requests.unwrap().remaining, 0);
    assert_eq!(r.status.requests.unwrap().reset_at_ms, T0 + 60_000);
    // Settling does not give a request back.
    held.into_iter().for_each(|t| t.settle(Used::default()));
    settled().await;
    assert!(admit(h, &p, Demand::default()).await.is_err());
}

pub async fn requests_refill_continuously_over_the_minute(h: &Harness) {
    let p = key_policy(rpm(60));
    for _ in 0..60 {
        admit(h, &p, Demand::default()).await.unwrap();
    }
    assert!(admit(h, &p, Demand::default()).await.is_err());
    h.advance(999);
    assert_eq!(
        admit(h, &p, Demand::default())
            .await
            .unwrap_err()
            .retry_after_ms,
        1
    );
    h.advance(1);
    admit(h, &p, Demand::default()).await.unwrap();
    assert!(admit(h, &p, Demand::default()).await.is_err());
    // An idle minute refills the whole allowance, never more.
    h.advance(3_600_000);
    for _ in 0..60 {
        admit(h, &p, Demand::default()).await.unwrap();
    }
    assert!(admit(h, &p, Demand::default()).await.is_err());
}

pub async fn concurrent_admissions_never_exceed_the_request_limit(h: &Harness) {
    let p = key_policy(rpm(25));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (limiter, p) = (h.limiter.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            matches!(
                limiter.admit(&p, Demand::default()).await,
                Admission::Admitted(_)
            )
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 25);
}

pub async fn input_tokens_are_reserved_then_the_unused_part_is_returned(h: &Harness) {
    let p = key_policy(itpm(1_000));
    let t = admit(h, &p, tokens(600, 0)).await.unwrap();
    assert_eq!(t.status().input_tokens.unwrap().remaining, 400);
    t.settle(Used {
        input_tokens: 100,
        ..Used::default()
    });
    settled().await;
    let t = admit(h, &p, tokens(800, 0)).await.unwrap();
    assert_eq!(t.status().input_tokens.unwrap().remaining, 100);
    // A ticket dropped unsettled used nothing (the request never reached the upstream).
    drop(t);
    settled().await;
    let t = admit(h, &p, tokens(1, 0)).await.unwrap();
    assert_eq!(t.status().input_tokens.unwrap().remaining, 899);
}

pub async fn a_token_bucket_is_overdrawn_by_at_most_one_reservation(h: &Harness) {
    let p = key_policy(itpm(1_000));
    // 999 left: a 5000-token request still gets in (one whole token is there)…
    let a = admit(h, &p, tokens(1, 0)).await.unwrap();
    let big = admit(h, &p, tokens(5_000, 0)).await.unwrap();
    assert_eq!(big.status().input_tokens.unwrap().remaining, 0);
    // …(both use all they reserved)…
    a.settle(Used {
        input_tokens: 1,
        ..Used::default()
    });
    big.settle(Used {
        input_tokens: 5_000,
        ..Used::default()
    });
    settled().await;
    // …and nothing else until the debt is paid back and one token is there again: 4002 tokens
    // at 1000 a minute.
    let r = admit(h, &p, tokens(1, 0)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Rate(Dimension::InputTokens));
    assert_eq!(r.retry_after_ms, 240_120);
    h.advance(240_119);
    assert!(admit(h, &p, tokens(1, 0)).await.is_err());
    h.advance(1);
    admit(h, &p, tokens(1, 0)).await.unwrap();
}

pub async fn output_beyond_the_reservation_is_charged_as_debt(h: &Harness) {
    let p = key_policy(Rates {
        otpm: Some(100),
        ..Rates::default()
    });
    let t = admit(h, &p, tokens(0, 10)).await.unwrap();
    t.settle(Used {
        output_tokens: 150,
        ..Used::default()
    });
    settled().await;
    let r = admit(h, &p, tokens(0, 1)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Rate(Dimension::OutputTokens));
    // 50 in debt, one token needed: 51 tokens at 100 a minute.
    assert_eq!(r.retry_after_ms, 30_600);
    // A request that draws no output is not held back by the output bucket.
    admit(h, &p, tokens(5, 0)).await.unwrap();
}

pub async fn concurrency_slots_free_when_tickets_settle_or_drop(h: &Harness) {
    let p = key_policy(Rates {
        concurrency: Some(2),
        ..Rates::default()
    });
    let a = admit(h, &p, Demand::default()).await.unwrap();
    let b = admit(h, &p, Demand::default()).await.unwrap();
    let r = admit(h, &p, Demand::default()).await.unwrap_err();
    assert_eq!(r.reason, Reason::Concurrency);
    assert_eq!((r.limit, r.retry_after_ms), (2, 1_000));
    a.settle(Used::default());
    settled().await;
    let c = admit(h, &p, Demand::default()).await.unwrap();
    drop(b);
    settled().await;
    let _d = admit(h, &p, Demand::default()).await.unwrap();
    assert!(admit(h, &p, Demand::default()).await.is_err());
    drop(c);
}

pub async fn the_team_limit_is_shared_by_its_keys(h: &Harness) {
    let team = Uuid::new_v4();
    let shared = team_scope(team, rpm(4), None);
    let k1 = Policy::new(team, [key_scope(rpm(3), None), shared]).unwrap();
    let k2 = Policy::new(team, [key_scope(rpm(3), None), shared]).unwrap();
    for _ in 0..3 {
        admit(h, &k1, Demand::default()).await.unwrap();
    }
    let r = admit(h, &k1, Demand::default()).await.unwrap_err();
    assert_eq!(r.scope, ScopeKind::Key);
    admit(h, &k2, Demand::default()).await.unwrap();
    let r = admit(h, &k2, Demand::default()).await.unwrap_err();
    assert_eq!((r.scope, r.limit), (ScopeKind::Team, 4));
}

pub async fn status_reports_the_most_restrictive_scope(h: &Harness) {
    let team = Uuid::new_v4();
    let p = Policy::new(
        team,
        [
            key_scope(
                Rates {
                    rpm: Some(100),
                    otpm: Some(500),
                    ..Rates::default()
                },
                None,
            ),
            team_scope(
                team,
                Rates {
                    rpm: Some(10),
                    itpm: Some(2_000),
                    otpm: Some(10_000),
                    ..Rates::default()
                },
                None,
            ),
        ],
    )
    .unwrap();
    let t = admit(h, &p, tokens(50, 100)).await.unwrap();
    let s = t.status();
    let req = s.requests.unwrap();
    assert_eq!(
        (req.scope, req.limit, req.remaining),
        (ScopeKind::Team, 10, 9)
    );
    assert_eq!(req.reset_at_ms, T0 + 6_000);
    let out = s.output_tokens.unwrap();
    assert_eq!(
        (out.scope, out.limit, out.remaining),
        (ScopeKind::Key, 500, 400)
    );
    assert_eq!(s.input_tokens.unwrap().remaining, 1_950);
    assert_eq!(s.tokens().unwrap().remaining, 400);
}

fn daily(limit_micros: u64) -> Option<Budget> {
    Some(Budget {
        limit_micros,
        period: Period::Day,
    })
}

fn cost(micros: u64) -> Demand {
    Demand {
        cost_micros: micros,
        ..Demand::default()
    }
}

pub async fn a_budget_refuses_once_spent_and_names_its_reset(h: &Harness) {
    let p = Policy::new(Uuid::new_v4(), [key_scope(Rates::default(), daily(1_000))]).unwrap();
    let t = admit(h, &p, cost(700)).await.unwrap();
    t.settle(Used {
        cost_micros: 999,
        ..Used::default()
    });
    settled().await;
    // One micro-dollar left: still admitted, with its full worst case reserved.
    let t = admit(h, &p, cost(500)).await.unwrap();
    let r = admit(h, &p, cost(1)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Budget);
    assert_eq!(r.period, Some(Period::Day));
    assert_eq!(r.limit, 1_000);
    // 2026-06-02T00:00:00Z.
    assert_eq!(r.resets_at_ms, T0 + 12 * 3_600_000);
    // A free request (nothing to reserve) is not refused by a spent budget.
    admit(h, &p, cost(0)).await.unwrap();
    t.settle(Used::default());
    settled().await;
    admit(h, &p, cost(1)).await.unwrap();
}

pub async fn budget_overshoot_under_concurrency_is_at_most_one_reservation(h: &Harness) {
    let limit = 10_000;
    let worst = 3_000;
    let p = Policy::new(Uuid::new_v4(), [key_scope(Rates::default(), daily(limit))]).unwrap();
    // Nearly exhausted: 9,500 of 10,000 spent.
    admit(h, &p, cost(9_500)).await.unwrap().settle(Used {
        cost_micros: 9_500,
        ..Used::default()
    });
    settled().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (limiter, p) = (h.limiter.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            match limiter.admit(&p, cost(worst)).await {
                Admission::Admitted(t) => {
                    // Each request really costs its worst case.
                    t.settle(Used {
                        cost_micros: worst,
                        ..Used::default()
                    });
                    true
                }
                _ => false,
            }
        }));
    }
    let mut admitted = 0u64;
    for t in tasks {
        admitted += u64::from(t.await.unwrap());
    }
    settled().await;
    let spent = 9_500 + admitted * worst;
    assert_eq!(admitted, 1, "only one request fits in the last 500 µ$");
    assert!(
        spent <= limit + worst,
        "spent {spent} > limit + one reservation"
    );
    assert_eq!(
        admit(h, &p, cost(1)).await.unwrap_err().reason,
        Reason::Budget
    );
}

pub async fn a_budget_resets_with_its_period(h: &Harness) {
    let team = Uuid::new_v4();
    let p = Policy::new(
        team,
        [team_scope(
            team,
            Rates::default(),
            Some(Budget {
                limit_micros: 100,
                period: Period::Month,
            }),
        )],
    )
    .unwrap();
    admit(h, &p, cost(100)).await.unwrap().settle(Used {
        cost_micros: 100,
        ..Used::default()
    });
    settled().await;
    let r = admit(h, &p, cost(1)).await.unwrap_err();
    assert_eq!(r.scope, ScopeKind::Team);
    // 2026-07-01T00:00:00Z.
    let july = T0 + (29 * 24 + 12) * 3_600_000;
    assert_eq!(r.resets_at_ms, july);
    h.advance(july - T0 - 1);
    assert!(admit(h, &p, cost(1)).await.is_err());
    h.advance(1);
    admit(h, &p, cost(100)).await.unwrap();
}

pub async fn unlimited_dimensions_are_never_checked(h: &Harness) {
    let p = key_policy(Rates {
        otpm: Some(10),
        ..Rates::default()
    });
    // Huge input and request counts pass; only output is limited.
    for _ in 0..20 {
        let t = admit(h, &p, tokens(1_000_000, 0)).await.unwrap();
        assert!(t.status().requests.is_none() && t.status().input_tokens.is_none());
        assert_eq!(t.status().output_tokens.unwrap().remaining, 10);
    }
    let _held = admit(h, &p, tokens(0, 10)).await.unwrap();
    assert!(admit(h, &p, tokens(0, 1)).await.is_err());
}

async fn admit_whole(h: &Harness, p: &Arc<Policy>, d: Demand) -> Result<Ticket, Rejection> {
    match h.limiter.admit_whole(p, d).await {
        Admission::Admitted(t) => Ok(t),
        Admission::Rejected(r) => Err(r),
        other => panic!("backend failure: {other:?}"),
    }
}

pub async fn a_reservation_that_must_fit_whole_is_refused_naming_what_is_left(h: &Harness) {
    let team = Uuid::new_v4();
    let monthly = Some(Budget {
        limit_micros: 2_000,
        period: Period::Month,
    });
    let p = Policy::new(
        team,
        [
            key_scope(Rates::default(), daily(1_000)),
            team_scope(team, Rates::default(), monthly),
        ],
    )
    .unwrap();
    admit(h, &p, cost(700)).await.unwrap().settle(Used {
        cost_micros: 600,
        ..Used::default()
    });
    settled().await;
    // 400 left of the key's day, 1,400 of the team's month: 401 does not fit, in the key's.
    let r = admit_whole(h, &p, cost(401)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Budget);
    assert_eq!(r.scope, ScopeKind::Key);
    assert_eq!(
        (r.limit, r.committed_micros, r.needed_micros),
        (1_000, 600, 401)
    );
    assert_eq!(r.period, Some(Period::Day));
    assert_eq!(r.resets_at_ms, T0 + 12 * 3_600_000);
    // Refused in the step that checked it, it held nothing even for a moment: exactly what is
    // left fits at once (no release to wait for).
    let t = admit_whole(h, &p, cost(400)).await.unwrap();
    // Used up now: a request is refused as spent (nothing "needed" to fit).
    let r = admit(h, &p, cost(1)).await.unwrap_err();
    assert_eq!((r.needed_micros, r.committed_micros), (0, 1_000));
    let r = admit_whole(h, &p, cost(1)).await.unwrap_err();
    assert_eq!((r.reason, r.needed_micros), (Reason::Budget, 0));
    t.settle(Used::default());
    settled().await;
    // Where the team's month is the tighter budget, it is the one named.
    admit(h, &p, cost(1)).await.unwrap().settle(Used {
        cost_micros: 1_300,
        ..Used::default()
    });
    settled().await;
    h.advance(13 * 3_600_000); // the key's next day; the team's month goes on (1,900 of 2,000)
    let r = admit_whole(h, &p, cost(500)).await.unwrap_err();
    assert_eq!(r.scope, ScopeKind::Team);
    assert_eq!(
        (r.limit, r.committed_micros, r.needed_micros),
        (2_000, 1_900, 500)
    );
    settled().await;
    admit_whole(h, &p, cost(100)).await.unwrap();
}

pub async fn a_raised_limit_applies_at_once_and_a_lowered_one_caps_at_once(h: &Harness) {
    let (scope, group) = (key_scope(rpm(1), None), Uuid::new_v4());
    let with = |rates: Rates| Policy::new(group, [ScopeLimits { rates, ..scope }]).unwrap();
    admit(h, &with(rpm(1)), Demand::default()).await.unwrap();
    assert!(admit(h, &with(rpm(1)), Demand::default()).await.is_err());
    // Raised from 1 to 3 per minute: 1 used, 2 left now (not after a refill).
    let raised = with(rpm(3));
    let t = admit(h, &raised, Demand::default()).await.unwrap();
    assert_eq!(t.status().requests.unwrap().remaining, 1);
    admit(h, &raised, Demand::default()).await.unwrap();
    assert!(admit(h, &raised, Demand::default()).await.is_err());
    // Lowered again: nothing more until it refills at the new rate.
    assert!(admit(h, &with(rpm(2)), Demand::default()).await.is_err());
}

pub async fn a_budget_starts_from_what_the_ledger_says_was_spent_and_is_never_lowered(h: &Harness) {
    let team = Uuid::new_v4();
    let budget = Budget {
        limit_micros: 1_000,
        period: Period::Month,
    };
    let scope = team_scope(team, Rates::default(), Some(budget));
    let p = Policy::new(team, [scope]).unwrap();
    // Seeded before any request: 600 of 1,000 spent, so a worst case of 500 no longer fits whole.
    h.limiter
        .seed_spent(team, scope.scope, budget, 600)
        .await
        .unwrap();
    assert!(admit_whole(h, &p, cost(500)).await.is_err());
    // The refused reservation is given back (fire-and-forget on Redis).
    settled().await;
    admit_whole(h, &p, cost(400))
        .await
        .unwrap()
        .settle(Used::default());
    settled().await;
    // Spend counted by the limiter itself: 300 more, 900 in all.
    admit(h, &p, cost(300)).await.unwrap().settle(Used {
        cost_micros: 300,
        ..Used::default()
    });
    settled().await;
    // A lower figure (the ledger lags) never undoes it; a higher one raises it.
    h.limiter
        .seed_spent(team, scope.scope, budget, 700)
        .await
        .unwrap();
    assert!(admit_whole(h, &p, cost(101)).await.is_err());
    // The refused reservation is given back (fire-and-forget on Redis).
    settled().await;
    admit_whole(h, &p, cost(100))
        .await
        .unwrap()
        .settle(Used::default());
    settled().await;
    h.limiter
        .seed_spent(team, scope.scope, budget, 1_000)
        .await
        .unwrap();
    assert_eq!(
        admit(h, &p, cost(1)).await.unwrap_err().reason,
        Reason::Budget
    );
    // Next month starts afresh.
    h.advance(31 * 24 * 3_600_000);
    admit(h, &p, cost(1)).await.unwrap();
}

pub async fn waits_do_not_count_reservations_in_flight_as_used(h: &Harness) {
    let p = key_policy(Rates {
        otpm: Some(100),
        ..Rates::default()
    });
    // A stream of max_tokens 50,000 at 100 a minute: nothing is left while it runs, but it
    // settles with what it uses, so neither the reset nor a refusal's wait is 8 hours.
    let stream = admit(h, &p, tokens(0, 50_000)).await.unwrap();
    let w = stream.status().output_tokens.unwrap();
    assert_eq!((w.remaining, w.reset_at_ms), (0, T0 + 1_000));
    let r = admit(h, &p, tokens(0, 1)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Rate(Dimension::OutputTokens));
    assert_eq!(r.retry_after_ms, 1_000);
    assert_eq!(r.status.output_tokens.unwrap().reset_at_ms, T0 + 1_000);
    // It used 49: 51 left.
    stream.settle(Used {
        output_tokens: 49,
        ..Used::default()
    });
    settled().await;
    let t = admit(h, &p, tokens(0, 1)).await.unwrap();
    let w = t.status().output_tokens.unwrap();
    assert_eq!(w.remaining, 50);
    // Full again when the 49 used and the 1 in flight are back: 49 at 100 a minute, and the
    // one reserved counts for no more than a second.
    assert_eq!(w.reset_at_ms, T0 + 29_400);
    // Settled usage in debt is waited out in full.
    t.settle(Used {
        output_tokens: 200,
        ..Used::default()
    });
    settled().await;
    let r = admit(h, &p, tokens(0, 1)).await.unwrap_err();
    // 49 + 200 used of 100: 149 in debt, one token needed: 150 at 100 a minute.
    assert_eq!(r.retry_after_ms, 90_000);
    assert_eq!(r.status.output_tokens.unwrap().reset_at_ms, T0 + 149_400);
}

pub async fn input_reservations_in_flight_are_waited_out_in_full(h: &Harness) {
    let p = key_policy(itpm(1_000));
    // A 904-token prompt leaves 96 of 1 000: full again when 904 have refilled (54.24 s), not
    // in a second — an input reservation is the prompt's count and comes back only as it refills.
    let a = admit(h, &p, tokens(904, 0)).await.unwrap();
    let w = a.status().input_tokens.unwrap();
    assert_eq!((w.remaining, w.reset_at_ms), (96, T0 + 54_240));
    // Another, then the third is refused: 808 overdrawn while both are in flight, so a retry
    // succeeds once 809 have refilled (48.54 s), and a retry after a second would be refused.
    let b = admit(h, &p, tokens(904, 0)).await.unwrap();
    assert_eq!(b.status().input_tokens.unwrap().reset_at_ms, T0 + 108_480);
    let r = admit(h, &p, tokens(904, 0)).await.unwrap_err();
    assert_eq!(r.reason, Reason::Rate(Dimension::InputTokens));
    assert_eq!(r.retry_after_ms, 48_540);
    assert_eq!(r.status.input_tokens.unwrap().reset_at_ms, T0 + 108_480);
    h.advance(48_539);
    assert!(admit(h, &p, tokens(904, 0)).await.is_err());
    h.advance(1);
    admit(h, &p, tokens(904, 0)).await.unwrap();
    drop((a, b));
}

fn output_used(n: u64) -> Used {
    Used {
        output_tokens: n,
        ..Used::default()
    }
}

pub async fn a_limit_lowered_while_requests_run_holds_when_they_settle(h: &Harness) {
    let (scope, group) = (key_scope(otpm(3_000), None), Uuid::new_v4());
    let with = |rates: Rates| Policy::new(group, [ScopeLimits { rates, ..scope }]).unwrap();
    let running = [
        admit(h, &with(otpm(3_000)), tokens(0, 300)).await.unwrap(),
        admit(h, &with(otpm(3_000)), tokens(0, 300)).await.unwrap(),
        admit(h, &with(otpm(3_000)), tokens(0, 300)).await.unwrap(),
    ];
    // Lowered to 300 with 900 reserved: nothing is left.
    let lowered = with(otpm(300));
    assert!(admit(h, &lowered, tokens(0, 1)).await.is_err());
    // The three end having used 100 each: 300 used this minute, the whole new limit. Each
    // settles under the limit it was admitted at; none of them may hand that limit out again.
    for t in running {
        t.settle(output_used(100));
    }
    settled().await;
    let r = admit(h, &lowered, tokens(0, 1)).await.unwrap_err();
    assert_eq!(
        (r.reason, r.limit),
        (Reason::Rate(Dimension::OutputTokens), 300)
    );
    // What was used under 3000 a minute refills at that rate (as it would have): 3 s, 150.
    assert_eq!(r.retry_after_ms, 20);
    h.advance(3_000);
    let t = admit(h, &lowered, tokens(0, 1)).await.unwrap();
    assert_eq!(t.status().output_tokens.unwrap().remaining, 149);
    // From this admission on the bucket refills at 300 a minute: 300 more, all used, overdraw
    // it by one reservation (151 over), waited out at the new rate.
    let big = admit(h, &lowered, tokens(0, 300)).await.unwrap();
    t.settle(output_used(1));
    big.settle(output_used(300));
    settled().await;
    let r = admit(h, &lowered, tokens(0, 1)).await.unwrap_err();
    assert_eq!(r.retry_after_ms, 30_400);
}

pub async fn a_lowered_limit_never_makes_what_was_used_smaller(h: &Harness) {
    let (scope, group) = (key_scope(rpm(60), None), Uuid::new_v4());
    let with = |rates: Rates| Policy::new(group, [ScopeLimits { rates, ..scope }]).unwrap();
    let full = with(rpm(60));
    for _ in 0..60 {
        admit(h, &full, Demand::default()).await.unwrap();
    }
    // Lowered to 6, 10.3 s later: 49.7 of the 60 still used, so nothing under 6…
    h.advance(10_300);
    assert!(admit(h, &with(rpm(6)), Demand::default()).await.is_err());
    // …and raised back to 60: the 10 that refilled, not a fresh 54.
    assert_eq!(admitted_until_refused(h, &full).await, 10);
}

pub async fn a_limit_raised_while_requests_run_keeps_what_was_used_since(h: &Harness) {
    let (scope, group) = (key_scope(otpm(30), None), Uuid::new_v4());
    let with = |rates: Rates| Policy::new(group, [ScopeLimits { rates, ..scope }]).unwrap();
    let running = admit(h, &with(otpm(30)), tokens(0, 30)).await.unwrap();
    // Raised to 1000: 30 used, 970 left; 500 more reserved under the new limit.
    let raised = with(otpm(1_000));
    let t = admit(h, &raised, tokens(0, 500)).await.unwrap();
    assert_eq!(t.status().output_tokens.unwrap().remaining, 470);
    // The request admitted under 30 ends using all of it: its settlement under its old limit
    // neither forgets the 500 reserved since nor adds the raise a second time.
    running.settle(output_used(30));
    settled().await;
    let t2 = admit(h, &raised, tokens(0, 1)).await.unwrap();
    assert_eq!(t2.status().output_tokens.unwrap().remaining, 469);
    drop((t, t2));
}

pub async fn two_credentials_limited_differently_on_one_scope_share_one_count(h: &Harness) {
    // A rotated key's old and new credentials count against one scope; an admin may give them
    // different limits during the overlap. Alternating between them must not refill the scope.
    let (scope, group) = (key_scope(rpm(60), None), Uuid::new_v4());
    let old = Policy::new(
        group,
        [ScopeLimits {
            rates: rpm(60),
            ..scope
        }],
    )
    .unwrap();
    let new = Policy::new(
        group,
        [ScopeLimits {
            rates: rpm(30),
            ..scope
        }],
    )
    .unwrap();
    let mut admitted = 0;
    for i in 0..200 {
        let p = if i % 2 == 0 { &old } else { &new };
        if let Ok(t) = admit(h, p, Demand::default()).await {
            admitted += 1;
            t.settle(Used::default());
        }
    }
    assert_eq!(
        admitted, 60,
        "within a minute, never more than the higher of the two limits"
    );
    // 10.3 s on, 10 have refilled: one request under the lower limit (refused: 49.7 still used)
    // does not make room for more under the higher one.
    h.advance(10_300);
    assert!(admit(h, &new, Demand::default()).await.is_err());
    assert_eq!(admitted_until_refused(h, &old).await, 10);
}

/// How many requests `p` gets admitted (and keeps running) before one is refused.
async fn admitted_until_refused(h: &Harness, p: &Arc<Policy>) -> usize {
    let mut admitted = 0;
    while admit(h, p, Demand::default()).await.is_ok() {
        admitted += 1;
    }
    admitted
}

pub async fn a_concurrency_limit_set_while_requests_run_counts_them(h: &Harness) {
    let (scope, group) = (key_scope(rpm(1_000), None), Uuid::new_v4());
    let with = |rates: Rates| Policy::new(group, [ScopeLimits { rates, ..scope }]).unwrap();
    let mut running: Vec<Ticket> = Vec::new();
    for _ in 0..3 {
        running.push(
            admit(h, &with(rpm(1_000)), Demand::default())
                .await
                .unwrap(),
        );
    }
    let capped = with(Rates {
        concurrency: Some(2),
        ..rpm(1_000)
    });
    let r = admit(h, &capped, Demand::default()).await.unwrap_err();
    assert_eq!((r.reason, r.limit), (Reason::Concurrency, 2));
    running.pop().unwrap().settle(Used::default());
    settled().await;
    assert!(
        admit(h, &capped, Demand::default()).await.is_err(),
        "2 still run"
    );
    running.pop().unwrap().settle(Used::default());
    settled().await;
    let _t = admit(h, &capped, Demand::default()).await.unwrap();
}

pub async fn a_clock_set_back_refills_from_then_on(h: &Harness) {
    let p = key_policy(rpm(3));
    for _ in 0..3 {
        admit(h, &p, Demand::default()).await.unwrap();
    }
    // The clock is set back an hour (a VM restored, an NTP step): nothing refills for the
    // step, and the bucket refills from then on, not once the clock is back where it was.
    h.clock.set(T0 - 3_600_000);
    let r = admit(h, &p, Demand::default()).await.unwrap_err();
    assert_eq!(r.retry_after_ms, 20_000);
    h.advance(20_000);
    admit(h, &p, Demand::default()).await.unwrap();
}
