//! What is limited: scopes (a key, a team), their rates, concurrency and budgets, and the
//! per-key [`Policy`] the gateway compiles from the store's settings.

use std::sync::Arc;

use time::{Date, Month, OffsetDateTime, Time};
use uuid::Uuid;

/// The largest rate accepted (per minute), so the scaled bucket arithmetic stays exact in
/// Redis' Lua numbers (doubles: integers are exact below 2^53).
pub const MAX_RATE: u64 = 1_000_000_000;
/// The largest concurrency limit accepted.
pub const MAX_CONCURRENCY: u64 = 1_000_000;
/// The largest budget accepted, in micro-dollars (one billion dollars).
pub const MAX_BUDGET_MICROS: u64 = 1_000_000_000_000_000;
/// A demand is capped at this many tokens (a `max_tokens` of 10^18 reserves this much).
pub const MAX_DEMAND_TOKENS: u64 = 100_000_000;
/// A demand is capped at this cost (a million dollars).
pub const MAX_DEMAND_MICROS: u64 = 1_000_000_000_000;

/// What a limit is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// One virtual key.
    Key,
    /// A team: the sum over all its keys.
    Team,
}

impl ScopeKind {
    /// `key` or `team`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
        }
    }
}

/// A key or a team, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// Key or team.
    pub kind: ScopeKind,
    /// The key's or team's id.
    pub id: Uuid,
}

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A calendar day (00:00 to 24:00 UTC).
    Day,
    /// A calendar month (the 1st 00:00 UTC to the next 1st).
    Month,
}

impl Period {
    /// `day` or `month`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// `day` or `month`; anything else is `None`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    /// The period containing `now_ms` (milliseconds since the Unix epoch) as `(start, end)` in
    /// milliseconds: `start <= now_ms < end`.
    #[must_use]
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        // The calendar arithmetic runs once per period per thread; every other request of the
        // day or month reuses its answer.
        thread_local! {
            static LAST: std::cell::Cell<[(i64, i64); 2]> = const { std::cell::Cell::new([(0, 0); 2]) };
        }
        let slot = match self {
            Self::Day => 0,
            Self::Month => 1,
        };
        let last = LAST.get()[slot];
        if last.0 <= now_ms && now_ms < last.1 {
            return last;
        }
        let window = self.compute_window(now_ms);
        LAST.with(|cell| {
            let mut all = cell.get();
            all[slot] = window;
            cell.set(all);
        });
        window
    }

    fn compute_window(self, now_ms: i64) -> (i64, i64) {
        let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let date = now.date();
        let (start, end) = match self {
            Self::Day => (date, date.next_day().unwrap_or(date)),
            Self::Month => {
                let first = Date::from_calendar_date(date.year(), date.month(), 1).unwrap_or(date);
                let (y, m) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    m => (date.year(), m.next()),
                };
                (first, Date::from_calendar_date(y, m, 1).unwrap_or(first))
            }
        };
        let ms = |d: Date| {
            let t = d.with_time(Time::MIDNIGHT).assume_utc();
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
        };
        (ms(start), ms(end))
    }
}

/// A spending limit per period, in micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Micro-dollars allowed per period.
    pub limit_micros: u64,
    /// Day or month (UTC).
    pub period: Period,
}

/// Per-minute rates and the concurrency limit of one scope; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rates {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute (uncached, cache writes and cache reads alike).
    pub itpm: Option<u64>,
    /// Output tokens per minute.
    pub otpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
}

impl Rates {
    /// Whether nothing is limited.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.itpm.is_none()
            && self.otpm.is_none()
            && self.concurrency.is_none()
    }

    /// The three per-minute rates in order requests, input tokens, output tokens.
    #[must_use]
    pub(crate) fn per_minute(&self) -> [Option<u64>; 3] {
        [self.rpm, self.itpm, self.otpm]
    }
}

/// Everything limited on one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScopeLimits {
    /// The key or team.
    pub scope: Scope,
    /// Rates and concurrency.
    pub rates: Rates,
    /// The budget.
    pub budget: Option<Budget>,
}

impl ScopeLimits {
    fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.budget.is_none()
    }
}

/// The limits that apply to requests with one key: its own (or its team's defaults for keys)
/// and its team's. Compiled by the gateway whenever the key directory reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The team: every scope of a policy belongs to it, so one admission touches one shard
    /// (in process) or one Redis hash slot.
    pub group: Uuid,
    /// Key first, then team; only scopes that limit something.
    pub scopes: Vec<ScopeLimits>,
}

impl Policy {
    /// A policy over `scopes` (empty ones dropped); `None` when nothing is limited.
    ///
    /// Values are clamped to the documented maxima ([`MAX_RATE`], [`MAX_CONCURRENCY`],
    /// [`MAX_BUDGET_MICROS`]); a zero is treated as unlimited (the store refuses zeros).
    #[must_use]
    pub fn new(group: Uuid, scopes: impl IntoIterator<Item = ScopeLimits>) -> Option<Arc<Self>> {
        let clamp = |v: Option<u64>, max: u64| v.filter(|v| *v > 0).map(|v| v.min(max));
        let scopes: Vec<ScopeLimits> = scopes
            .into_iter()
            .map(|s| ScopeLimits {
                scope: s.scope,
                rates: Rates {
                    rpm: clamp(s.rates.rpm, MAX_RATE),
                    itpm: clamp(s.rates.itpm, MAX_RATE),
                    otpm: clamp(s.rates.otpm, MAX_RATE),
                    concurrency: clamp(s.rates.concurrency, MAX_CONCURRENCY),
                },
                budget: s.budget.filter(|b| b.limit_micros > 0).map(|b| Budget {
                    limit_micros: b.limit_micros.min(MAX_BUDGET_MICROS),
                    period: b.period,
                }),
            })
            .filter(|s| !s.is_empty())
            .collect();
        (!scopes.is_empty()).then(|| Arc::new(Self { group, scopes }))
    }

    /// This policy with each scope's limits passed through `keep` (e.g. only its budget, or
    /// only its per-minute rates); scopes left limiting nothing are dropped, and `None` when
    /// none is left.
    #[must_use]
    pub fn narrowed(&self, keep: impl Fn(ScopeLimits) -> ScopeLimits) -> Option<Arc<Self>> {
        Self::new(self.group, self.scopes.iter().map(|s| keep(*s)))
    }

    /// Whether any scope limits input or output tokens (the gateway then estimates them).
    #[must_use]
    pub fn limits_tokens(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| s.rates.itpm.is_some() || s.rates.otpm.is_some())
    }

    /// Whether any scope has a budget (the gateway then prices the request).
    #[must_use]
    pub fn has_budget(&self) -> bool {
        self.scopes.iter().any(|s| s.budget.is_some())
    }

    /// Whether admission reserves a request's tokens or spend, so the gateway estimates its body:
    /// token limits or a budget.
    #[must_use]
    pub fn reserves_demand(&self) -> bool {
        self.limits_tokens() || self.has_budget()
    }
}

/// What one request reserves at admission: one request, its estimated input tokens, its
/// `max_tokens` of output, and its worst-case cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Estimated input tokens (all of them: uncached, cache writes, cache reads).
    pub input_tokens: u64,
    /// `max_tokens`.
    pub output_tokens: u64,
    /// Worst-case cost in micro-dollars.
    pub cost_micros: u64,
}

impl Demand {
    /// The demand with each part capped ([`MAX_DEMAND_TOKENS`], [`MAX_DEMAND_MICROS`]).
    #[must_use]
    pub fn capped(self) -> Self {
        Self {
            input_tokens: self.input_tokens.min(MAX_DEMAND_TOKENS),
            output_tokens: self.output_tokens.min(MAX_DEMAND_TOKENS),
            cost_micros: self.cost_micros.min(MAX_DEMAND_MICROS),
        }
    }
}

/// What a request really used, reported at settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    /// Input tokens (uncached + cache writes + cache reads).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micros: u64,
}

impl Used {
    /// The usage with each part capped like a [`Demand`].
    #[must_use]
    pub fn capped(self) -> Self {
        Self {
            input_tokens: self.input_tokens.min(MAX_DEMAND_TOKENS),
            output_tokens: self.output_tokens.min(MAX_DEMAND_TOKENS),
            cost_micros: self.cost_micros.min(MAX_DEMAND_MICROS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        let now = ms("2026-12-31T23:59:59.999Z");
        assert_eq!(
            Period::Day.window(now),
            (ms("2026-12-31T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Month.window(now),
            (ms("2026-12-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"))
        );
        let feb = ms("2028-02-29T12:00:00Z");
        assert_eq!(
            Period::Month.window(feb),
            (ms("2028-02-01T00:00:00Z"), ms("2028-03-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Day.window(ms("2026-06-01T00:00:00Z")).0,
            ms("2026-06-01T00:00:00Z")
        );
    }

    #[test]
    fn a_remembered_window_is_reused_only_inside_it() {
        // Across midnight, a month's end and back in time, each answer is the calendar's.
        let times = [
            "2026-01-31T23:59:59.999Z",
            "2026-02-01T00:00:00Z",
            "2026-02-01T00:00:00.001Z",
            "2026-02-28T23:59:59.999Z",
            "2026-03-01T00:00:00Z",
            "2026-01-15T12:00:00Z",
            "2026-01-15T12:00:00Z",
            "1970-01-01T00:00:00Z",
        ];
        for t in times {
            for p in [Period::Day, Period::Month] {
                assert_eq!(p.window(ms(t)), p.compute_window(ms(t)), "{p:?} at {t}");
            }
        }
    }

    #[test]
    fn empty_scopes_are_dropped_and_values_clamped() {
        let team = Uuid::now_v7();
        let empty = ScopeLimits {
            scope: Scope {
                kind: ScopeKind::Key,
                id: Uuid::now_v7(),
            },
            rates: Rates {
                rpm: Some(0),
                ..Rates::default()
            },
            budget: None,
        };
        assert!(Policy::new(team, [empty]).is_none());
        let big = ScopeLimits {
            scope: Scope {
                kind: ScopeKind::Team,
                id: team,
            },
            rates: Rates {
                itpm: Some(u64::MAX),
                ..Rates::default()
            },
            budget: Some(Budget {
                limit_micros: u64::MAX,
                period: Period::Day,
            }),
        };
        let p = Policy::new(team, [empty, big]).unwrap();
        assert_eq!(p.scopes.len(), 1);
        assert_eq!(p.scopes[0].rates.itpm, Some(MAX_RATE));
        assert_eq!(p.scopes[0].budget.unwrap().limit_micros, MAX_BUDGET_MICROS);
        assert!(p.limits_tokens() && p.has_budget());
    }
}
