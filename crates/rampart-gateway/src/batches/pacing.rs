//! Local batch items under their key's and team's per-minute limits.
//!
//! A local item is a `POST /v1/messages` to the upstream like any other: it uses the same
//! organisation's rate limits there. So before it runs, it is admitted under the requests,
//! input tokens and output tokens per minute of the key that made its batch and of that key's
//! team, drawing from the same buckets as the key's own requests, and settled with its real
//! usage afterwards. An item that finds no room is not failed: it goes back to the queue until
//! the limit frees up ([`rampart_store::batches::Outcome::Deferred`]), without using an attempt.
//!
//! Concurrency and budgets are left out on purpose: the queue has its own bound on running items
//! (`team_concurrency`), and the batch reserved its worst case in the budgets at submission.
//! Except for an item replayed from the dead letters: its batch's reservation for it was given
//! back when it failed (the batch may have ended since), so a replay reserves its own worst case
//! in the key's and team's budgets as a request does, is charged its cost on that reservation,
//! and waits in the queue while a budget has no room for it.

use std::sync::Arc;
use std::time::Duration;

use rampart_ledger::pricing::TokenUsage;
use rampart_limits::{Admission, Demand, Policy, Rates, ScopeLimits, Ticket, Used};
use uuid::Uuid;

use crate::admission::Limits;
use crate::keydir::KeyDirectory;

/// How long an item waits when the limits backend is unreachable and fails closed.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);
/// How long a replayed item waits when a budget has no room for it: a budget frees up when its
/// period ends or when an admin raises it, which a refusal cannot foresee; so it looks again.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// Admits local batch items under their key's per-minute limits.
#[derive(Debug)]
pub struct Pacer {
    limits: Option<Limits>,
    directory: Option<Arc<KeyDirectory>>,
}

/// Whether an item may run now.
#[derive(Debug)]
pub enum Pace {
    /// Run it; settle the ticket (if any) with what it used ([`Pacer::settle`]).
    Go(Option<Admitted>),
    /// No room for this long (the limit's retry-after): queue it again.
    Wait(Duration),
}

/// An admitted item's reservation.
#[derive(Debug)]
pub struct Admitted {
    ticket: Ticket,
    demand: Demand,
}

impl Admitted {
    /// Whether the reservation includes the item's cost (a replay's: see the module docs).
    #[must_use]
    pub fn charges_cost(&self) -> bool {
        self.demand.cost_micros > 0
    }
}

/// What an item's attempt used of its reservation.
#[derive(Debug, Clone, Copy)]
pub enum Spent<'a> {
    /// The upstream answered with a message: its usage.
    Answered(&'a TokenUsage),
    /// The upstream may have worked on it without its usage being read (no answer, or one cut
    /// off): the reservation is kept, as for a request.
    Unread,
    /// Nothing the upstream bills: an error answer, a connection refused.
    Nothing,
}

/// `policy` with its per-minute rates (no concurrency), and with its budgets when `budgets`; or
/// `None` without any.
fn per_minute_only(policy: &Policy, budgets: bool) -> Option<Arc<Policy>> {
    policy.narrowed(|s| ScopeLimits {
        rates: Rates {
            concurrency: None,
            ..s.rates
        },
        budget: s.budget.filter(|_| budgets),
        ..s
    })
}

impl Pacer {
    /// Items paced on `limits` (none: every item runs at once), finding each key's limits in
    /// `directory`.
    #[must_use]
    pub fn new(limits: Option<Limits>, directory: Option<Arc<KeyDirectory>>) -> Self {
        Self { limits, directory }
    }

    /// Admit an item of a batch made by `key_id` whose Messages params are `params`; a
    /// `replayed` one under the budgets too (see the module docs).
    pub async fn admit(&self, key_id: Option<Uuid>, params: &[u8], replayed: bool) -> Pace {
        let (Some(limits), Some(directory), Some(key_id)) = (&self.limits, &self.directory, key_id)
        else {
            return Pace::Go(None);
        };
        let Some(policy) = directory
            .policy_of(key_id)
            .and_then(|p| per_minute_only(&p, replayed))
        else {
            return Pace::Go(None);
        };
        // Tokens as a request reserves them; no cost (budgets are the batch's) but a replay's.
        let priced = replayed && policy.scopes.iter().any(|s| s.budget.is_some());
        let demand = if policy.limits_tokens() || priced {
            crate::admission::demand(&limits.prices, priced, params)
        } else {
            Demand::default()
        };
        match limits.limiter.admit(&policy, demand).await {
            Admission::Admitted(ticket) => Pace::Go(Some(Admitted {
                ticket,
                demand: demand.capped(),
            })),
            Admission::Unchecked => Pace::Go(None),
            Admission::Unavailable => Pace::Wait(UNAVAILABLE_WAIT),
            Admission::Rejected(r) if r.reason == rampart_limits::Reason::Budget => {
                Pace::Wait(BUDGET_WAIT)
            }
            Admission::Rejected(r) => Pace::Wait(Duration::from_millis(r.retry_after_ms)),
        }
    }

    /// Settle an admitted item's reservation with what its attempt `spent`, and `cost` when the
    /// reservation [charges it](Admitted::charges_cost).
    pub fn settle(admitted: Option<Admitted>, spent: Spent<'_>, cost: u64) {
        let Some(Admitted { ticket, demand }) = admitted else {
            return;
        };
        let used = match spent {
            Spent::Answered(u) => Used {
                input_tokens: u.rate_limited_input(),
                output_tokens: u.output_tokens,
                cost_micros: if demand.cost_micros > 0 { cost } else { 0 },
            },
            Spent::Unread => Used {
                input_tokens: demand.input_tokens,
                output_tokens: demand.output_tokens,
                cost_micros: demand.cost_micros,
            },
            Spent::Nothing => Used::default(),
        };
        ticket.settle(used);
    }
}

/// The wait of an item refused for `retry_after`: at least that, plus up to as much again at
/// random (at least 50 ms more), so the items refused together come back spread out instead of
/// all at the instant one of them can run.
#[must_use]
pub fn spread(retry_after: Duration) -> Duration {
    let base = retry_after.max(Duration::from_millis(10));
    let extra = base.max(Duration::from_millis(50));
    base + extra.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_limits::{Budget, Period, Scope, ScopeKind};

    #[test]
    fn only_per_minute_rates_are_kept() {
        let group = Uuid::from_u128(1);
        let key = ScopeLimits {
            scope: Scope {
                kind: ScopeKind::Key,
                id: Uuid::from_u128(2),
            },
            rates: Rates {
                rpm: Some(10),
                concurrency: Some(2),
                ..Rates::default()
            },
            budget: Some(Budget {
                period: Period::Day,
                limit_micros: 5,
            }),
        };
        let team = ScopeLimits {
            scope: Scope {
                kind: ScopeKind::Team,
                id: group,
            },
            rates: Rates {
                concurrency: Some(4),
                ..Rates::default()
            },
            budget: None,
        };
        let policy = Policy::new(group, [key, team]).unwrap();
        let paced = per_minute_only(&policy, false).unwrap();
        assert_eq!(paced.scopes.len(), 1, "the team limits nothing per minute");
        assert_eq!(
            paced.scopes[0].rates,
            Rates {
                rpm: Some(10),
                ..Rates::default()
            }
        );
        assert_eq!(paced.scopes[0].budget, None);
        let budget_only = Policy::new(
            group,
            [ScopeLimits {
                rates: Rates::default(),
                ..key
            }],
        )
        .unwrap();
        assert!(per_minute_only(&budget_only, false).is_none());
    }

    #[test]
    fn waits_are_at_least_the_retry_after_and_spread() {
        let r = Duration::from_millis(400);
        let waits: Vec<Duration> = (0..64).map(|_| spread(r)).collect();
        assert!(waits.iter().all(|w| *w >= r && *w <= r * 2));
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_millis(100), "{lo:?}..{hi:?}");
        assert!(spread(Duration::ZERO) >= Duration::from_millis(10));
    }
}
