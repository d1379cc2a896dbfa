//! The arithmetic both backends share: token buckets in integer "unit·milliseconds", the
//! admission rule, and how a backend's view of each scope becomes a decision with headers.
//!
//! # Buckets
//! A per-minute limit `L` is a token bucket of capacity `L` refilled continuously at `L` per
//! 60 s (so an idle scope regains its whole minute's allowance within a minute, as Anthropic's
//! own limits do). Levels are kept scaled by 60 000 (`L` per minute is `L` scaled units per
//! millisecond), so refills are exact integer additions; the Redis script does the same
//! arithmetic on Lua numbers, exact below 2^53 (see [`crate::policy::MAX_RATE`]).
//!
//! # Admission rule
//! A request is admitted when, in every scope that limits it, each bucket it draws on holds at
//! least one whole unit (one request, one token), the scope has a free concurrency slot, and
//! the budget has at least one micro-dollar left. Its full reservation is then taken, which may
//! overdraw a token bucket or a budget: **by at most one request's reservation**, since an
//! overdrawn bucket admits nobody until it refills. Request buckets draw exactly one unit, so
//! admitted requests never exceed the request limit at all.
//!
//! # Waits
//! The waits reported (a refusal's `retry-after`, a window's reset) are the time the level needs
//! to refill, with one exception: **output tokens** reserved by requests still in flight. Those
//! are `max_tokens`, which settle with the real usage soon and usually far below it (a
//! `max_tokens` of 50 000 that ends up using 49 tokens), so the part of an output wait that only
//! waits for them counts for at most [`IN_FLIGHT_WAIT_MS`]; the rest is the time the *settled*
//! output level (those reservations given back) needs. Input tokens get no such allowance: their
//! reservation is the shared estimator's count of the prompt, which is what the upstream reports
//! (prompt-cache reads aside), so it is as good as spent and is waited out in full — a shorter
//! wait would only make clients retry into a second refusal. See [`Snapshot::reserved`].

use crate::policy::{Demand, Policy, ScopeKind};

/// The bucket window: per-minute limits.
pub(crate) const WINDOW_MS: i64 = 60_000;

/// The dimensions with a bucket, in order.
pub(crate) const DIMENSIONS: [Dimension; 3] = [
    Dimension::Requests,
    Dimension::InputTokens,
    Dimension::OutputTokens,
];

/// A per-minute limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Input tokens per minute.
    InputTokens,
    /// Output tokens per minute.
    OutputTokens,
}

impl Dimension {
    /// `requests`, `input-tokens`, `output-tokens` (as in `anthropic-ratelimit-*` headers).
    #[must_use]
    pub const fn header_name(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::InputTokens => "input-tokens",
            Self::OutputTokens => "output-tokens",
        }
    }
}

/// A bucket's level after refilling it to `now`, for a request under `limit`: full when it has
/// no state, else the limit less what is still used. The state is `(level, updated_at, limit it
/// is kept at)`; what it says is *used* (`limit kept at − level`), which refills at the limit it
/// is kept at (the one in force at its last admission), so a changed limit applies to what was
/// used at once: a raise adds the raise (what was used stays used; the rest of the new
/// allowance is there now); under a lowered one, what was used under the old limit drains at
/// the old rate (gone within a minute, as it would have been) until an admission under the new
/// limit keeps the bucket at that. Nothing but time makes *used* smaller, whatever limits the
/// requests reading it were admitted under (a limit changed while requests ran; a rotated key's
/// two credentials limited differently): no order of admissions, settlements and limit changes
/// hands out more than the highest of those limits allows.
pub(crate) fn refill(state: Option<(i64, i64, u64)>, limit: u64, now: i64) -> i64 {
    let cap = scaled(limit);
    match state {
        None => cap,
        Some(state) => cap - used_at(state, now),
    }
}

/// What a bucket's state says is still used at `now` (scaled), refilled at the limit it is kept
/// at.
fn used_at((level, t, was): (i64, i64, u64), now: i64) -> i64 {
    let rate = i64::try_from(was).unwrap_or(i64::MAX);
    let elapsed = (now - t).max(0);
    scaled(was)
        .saturating_sub(level)
        .saturating_sub(elapsed.saturating_mul(rate))
        .max(0)
}

/// The rate (per minute) a bucket in `state` refills at until its next admission: the limit it
/// is kept at, or `limit` when it has no state.
pub(crate) fn rate_of(state: Option<(i64, i64, u64)>, limit: u64) -> u64 {
    state.map_or(limit, |(_, _, was)| was)
}

/// A bucket's state after a settlement at `now` gives back `refund` scaled units (negative: it
/// charges usage beyond the reservation). It stays kept at the same limit, refilled at it: only
/// an admission, under the limit in force, moves that (a settlement under the limit its request
/// was admitted at, since changed, would otherwise count the change again, or make what was
/// used under one limit refill at another's rate). No state is a full bucket at `limit`, the
/// request's own.
pub(crate) fn settle(
    state: Option<(i64, i64, u64)>,
    limit: u64,
    now: i64,
    refund: i64,
) -> (i64, i64, u64) {
    let state = state.unwrap_or((scaled(limit), now, limit));
    let was = state.2;
    let used = used_at(state, now).saturating_sub(refund).max(0);
    (scaled(was) - used, now, was)
}

/// `n` units scaled to unit·milliseconds (saturating).
fn scaled(n: u64) -> i64 {
    i64::try_from(n)
        .unwrap_or(i64::MAX)
        .saturating_mul(WINDOW_MS)
}

/// `a / b` rounded up, for `a >= 0` and `b > 0`.
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// Milliseconds until a bucket at `level` refills to at least `target` (scaled units).
fn ms_until(level: i64, target: i64, limit: u64) -> u64 {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX).max(1);
    u64::try_from(ceil_div((target - level).max(0), limit)).unwrap_or(0)
}

/// The most a reported wait counts for output tokens reserved by requests still in flight: they
/// settle with the real usage (usually far below `max_tokens`) when their responses end,
/// typically within seconds, and are not waited out as if they would all be used. (Input
/// reservations are waited out in full: see the module docs.)
pub const IN_FLIGHT_WAIT_MS: u64 = 1_000;

/// Of the `reserved` tokens of dimension `d` held by requests in flight, those a wait may count
/// for at most [`IN_FLIGHT_WAIT_MS`]: output tokens only (see the module docs). Requests are
/// never given back, and an input reservation is the prompt's count, as good as spent.
fn soon_given_back(d: Dimension, reserved: u64) -> u64 {
    match d {
        Dimension::OutputTokens => reserved,
        Dimension::Requests | Dimension::InputTokens => 0,
    }
}

/// A bucket's level with the `reserved` tokens of requests in flight given back (capped at the
/// capacity): the level that settled usage alone leaves.
fn settled_level(level: i64, reserved: u64, limit: u64) -> i64 {
    let back = i64::try_from(reserved)
        .unwrap_or(i64::MAX)
        .saturating_mul(WINDOW_MS);
    let cap = i64::try_from(limit)
        .unwrap_or(i64::MAX)
        .saturating_mul(WINDOW_MS);
    level.saturating_add(back).min(cap).max(level)
}

/// The wait reported until a bucket at `level` (of which `reserved` tokens are held by
/// requests in flight and soon given back: see [`soon_given_back`]) reaches `target`: none when
/// it is there; else the time the settled level needs, and at least the time the level needs up
/// to [`IN_FLIGHT_WAIT_MS`] (see the module docs). Never more than the level alone would need.
fn wait_ms(level: i64, reserved: u64, target: i64, limit: u64) -> u64 {
    let full = ms_until(level, target, limit);
    if full == 0 {
        return 0;
    }
    ms_until(settled_level(level, reserved, limit), target, limit).max(full.min(IN_FLIGHT_WAIT_MS))
}

/// What a backend saw of one scope, before this request's reservation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bucket levels (scaled), in [`DIMENSIONS`] order; meaningless for unlimited ones.
    pub levels: [i64; 3],
    /// Requests in flight.
    pub inflight: u64,
    /// Budget spent and reserved in the current period (micro-dollars).
    pub committed: u64,
    /// Tokens reserved in each bucket (in [`DIMENSIONS`] order) by requests in flight, not
    /// settled yet: part of the levels. Always 0 for requests (a request is never given back).
    /// Only the output tokens' shorten the waits reported (they are soon given back in part);
    /// input reservations count as spent there (see the module docs).
    pub reserved: [u64; 3],
    /// The rate (per minute) each bucket refills at until its next admission: the limit it is
    /// kept at ([`refill`]), which a changed limit makes differ from the request's own. 0 for an
    /// unlimited bucket (and read as the request's limit).
    pub rates: [u64; 3],
}

/// The rate bucket `i` of `snap` refills at (see [`Snapshot::rates`]) for a request under
/// `limit`; once that request is admitted drawing on it, the bucket is kept at `limit`.
fn refill_rate(snap: &Snapshot, i: usize, limit: u64, admitted_drawing: bool) -> u64 {
    if admitted_drawing || snap.rates[i] == 0 {
        limit
    } else {
        snap.rates[i]
    }
}

/// How much of each bucket a demand draws on.
pub(crate) fn draws(demand: &Demand) -> [u64; 3] {
    [1, demand.input_tokens, demand.output_tokens]
}

/// The admission rule (see the module docs); the Redis script implements the same test.
pub(crate) fn fits(policy: &Policy, demand: &Demand, snaps: &[Snapshot]) -> bool {
    let draw = draws(demand);
    policy.scopes.iter().zip(snaps).all(|(s, snap)| {
        let buckets_ok = s
            .rates
            .per_minute()
            .iter()
            .zip(draw)
            .zip(snap.levels)
            .all(|((limit, need), level)| limit.is_none() || need == 0 || level >= WINDOW_MS);
        let slot_ok = s.rates.concurrency.is_none_or(|max| snap.inflight < max);
        let budget_ok = s
            .budget
            .is_none_or(|b| demand.cost_micros == 0 || snap.committed < b.limit_micros);
        buckets_ok && slot_ok && budget_ok
    })
}

/// One per-minute limit as the `anthropic-ratelimit-<dimension>-*` headers describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The limit per minute.
    pub limit: u64,
    /// Whole units left now (0 when overdrawn).
    pub remaining: u64,
    /// When the bucket will be full again (milliseconds since the epoch); for output tokens as
    /// settled usage implies: output reserved by requests in flight adds at most
    /// [`IN_FLIGHT_WAIT_MS`] (see the module docs).
    pub reset_at_ms: i64,
    /// When the bucket will be full again with every reservation in flight counted as used:
    /// [`Window::reset_at_ms`] without the output tokens' allowance. `remaining` grows towards
    /// the limit by this ([`Status::after`]).
    pub full_at_ms: i64,
    /// Which scope this is (the most restrictive one).
    pub scope: ScopeKind,
}

impl Window {
    /// More restrictive than `other`: fewer units left, or as few and a later reset (two
    /// windows with nothing left differ only in how long they hold a client back).
    #[must_use]
    pub fn tighter(&self, other: &Self) -> bool {
        (self.remaining, other.reset_at_ms) < (other.remaining, self.reset_at_ms)
    }

    /// This window at `now_ms` if nothing was drawn or given back since it was read: what
    /// refilled meanwhile (continuously, `limit` a minute) is left too, up to the limit, and a
    /// reset already past is now.
    fn at(self, now_ms: i64) -> Self {
        let window = u128::from(WINDOW_MS.unsigned_abs());
        // Whole units still missing at `now_ms` (rounded up: never more left than there is).
        let short_ms = u128::from(self.full_at_ms.saturating_sub(now_ms).max(0).unsigned_abs());
        let missing = (short_ms * u128::from(self.limit)).div_ceil(window);
        let refilled = u64::try_from(u128::from(self.limit).saturating_sub(missing)).unwrap_or(0);
        Self {
            remaining: self.remaining.max(refilled),
            reset_at_ms: self.reset_at_ms.max(now_ms),
            ..self
        }
    }
}

/// The state of a request's per-minute limits, most restrictive scope per dimension
/// ([`Window::tighter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Requests per minute.
    pub requests: Option<Window>,
    /// Input tokens per minute.
    pub input_tokens: Option<Window>,
    /// Output tokens per minute.
    pub output_tokens: Option<Window>,
    /// When it was read (milliseconds since the epoch, the limiter's clock).
    pub at_ms: i64,
}

impl Status {
    /// This status `elapsed_ms` after it was read, if nothing was drawn or given back
    /// meanwhile: each bucket has refilled by then (so `remaining` may be more), and no reset is
    /// earlier than that moment. For headers that go out well after admission (a slow or
    /// retried answer).
    #[must_use]
    pub fn after(&self, elapsed_ms: u64) -> Self {
        let now = self
            .at_ms
            .saturating_add(i64::try_from(elapsed_ms).unwrap_or(i64::MAX));
        Self {
            requests: self.requests.map(|w| w.at(now)),
            input_tokens: self.input_tokens.map(|w| w.at(now)),
            output_tokens: self.output_tokens.map(|w| w.at(now)),
            at_ms: now,
        }
    }

    /// The windows present, with their dimension.
    pub fn windows(&self) -> impl Iterator<Item = (Dimension, Window)> + '_ {
        DIMENSIONS
            .into_iter()
            .zip([self.requests, self.input_tokens, self.output_tokens])
            .filter_map(|(d, w)| w.map(|w| (d, w)))
    }

    /// The more restrictive of the input and output windows ([`Window::tighter`]), for the
    /// combined `anthropic-ratelimit-tokens-*` headers.
    #[must_use]
    pub fn tokens(&self) -> Option<Window> {
        match (self.input_tokens, self.output_tokens) {
            (Some(i), Some(o)) => Some(if o.tighter(&i) { o } else { i }),
            (i, o) => i.or(o),
        }
    }

    fn slot(&mut self, d: Dimension) -> &mut Option<Window> {
        match d {
            Dimension::Requests => &mut self.requests,
            Dimension::InputTokens => &mut self.input_tokens,
            Dimension::OutputTokens => &mut self.output_tokens,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A per-minute limit (429).
    Rate(Dimension),
    /// No free concurrency slot (429).
    Concurrency,
    /// The budget of the period is spent, or a reservation that must fit whole does not fit in
    /// what is left ([`Rejection::needed_micros`]) (402).
    Budget,
}

/// A refusal, with what the client needs to hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The limit that refused the request (the one that frees up last).
    pub reason: Reason,
    /// On the key or on its team.
    pub scope: ScopeKind,
    /// The limit's value (per minute, in flight, or micro-dollars per period).
    pub limit: u64,
    /// For rates and concurrency: how long until a retry can succeed (milliseconds).
    pub retry_after_ms: u64,
    /// For budgets: the period (`day` / `month`).
    pub period: Option<crate::policy::Period>,
    /// For budgets: when the period ends and the budget resets (milliseconds since the epoch).
    pub resets_at_ms: i64,
    /// For budgets: what was spent and reserved in the period before this request
    /// (micro-dollars); at least `limit` when the budget is used up.
    pub committed_micros: u64,
    /// For budgets, when a reservation that must fit whole ([`crate::Limiter::admit_whole`]: a
    /// batch's worst case) does not fit in what is left: that reservation (micro-dollars). 0
    /// when the budget is used up.
    pub needed_micros: u64,
    /// The per-minute limits as they stand (for the response headers).
    pub status: Status,
}

/// How long a full concurrency limit is waited out before a retry (the time until a slot frees
/// is unknown).
pub const CONCURRENCY_RETRY_MS: u64 = 1_000;

/// The status after (when `admitted`) or without this request's reservation.
pub(crate) fn status(
    policy: &Policy,
    demand: &Demand,
    snaps: &[Snapshot],
    now: i64,
    admitted: bool,
) -> Status {
    let draw = draws(demand);
    let mut status = Status {
        at_ms: now,
        ..Status::default()
    };
    for (s, snap) in policy.scopes.iter().zip(snaps) {
        for (i, limit) in s.rates.per_minute().into_iter().enumerate() {
            let Some(limit) = limit else { continue };
            // Once admitted, this request's own reservation is in flight too.
            let taken = if admitted { draw[i] } else { 0 };
            let rate = refill_rate(snap, i, limit, taken > 0);
            let reserved = soon_given_back(DIMENSIONS[i], snap.reserved[i].saturating_add(taken));
            let taken = i64::try_from(taken)
                .unwrap_or(i64::MAX)
                .saturating_mul(WINDOW_MS);
            let level = snap.levels[i].saturating_sub(taken);
            let cap = i64::try_from(limit).unwrap_or(i64::MAX) * WINDOW_MS;
            let window = Window {
                limit,
                remaining: u64::try_from(level.max(0) / WINDOW_MS).unwrap_or(0),
                reset_at_ms: now.saturating_add(
                    i64::try_from(wait_ms(level, reserved, cap, rate)).unwrap_or(0),
                ),
                full_at_ms: now
                    .saturating_add(i64::try_from(ms_until(level, cap, rate)).unwrap_or(0)),
                scope: s.scope.kind,
            };
            let slot = status.slot(DIMENSIONS[i]);
            if slot.is_none_or(|w| window.tighter(&w)) {
                *slot = Some(window);
            }
        }
    }
    status
}

/// Why `demand` does not fit (see [`fits`]): a budget first (402: waiting does not help), else
/// the limit that frees up last.
pub(crate) fn rejection(
    policy: &Policy,
    demand: &Demand,
    snaps: &[Snapshot],
    now: i64,
) -> Rejection {
    let draw = draws(demand);
    let status = status(policy, demand, snaps, now, false);
    let mut worst: Option<Rejection> = None;
    for (s, snap) in policy.scopes.iter().zip(snaps) {
        let mut consider = |r: Rejection| {
            let replace = match &worst {
                None => true,
                Some(w) if w.reason == Reason::Budget => false,
                Some(_) if r.reason == Reason::Budget => true,
                Some(w) => r.retry_after_ms > w.retry_after_ms,
            };
            if replace {
                worst = Some(r);
            }
        };
        let base = Rejection {
            reason: Reason::Concurrency,
            scope: s.scope.kind,
            limit: 0,
            retry_after_ms: 0,
            period: None,
            resets_at_ms: 0,
            committed_micros: 0,
            needed_micros: 0,
            status,
        };
        if let Some(b) = s.budget
            && demand.cost_micros > 0
            && snap.committed >= b.limit_micros
        {
            consider(Rejection {
                reason: Reason::Budget,
                limit: b.limit_micros,
                period: Some(b.period),
                resets_at_ms: b.period.window(now).1,
                committed_micros: snap.committed,
                ..base
            });
        }
        if let Some(max) = s.rates.concurrency
            && snap.inflight >= max
        {
            consider(Rejection {
                limit: max,
                retry_after_ms: CONCURRENCY_RETRY_MS,
                ..base
            });
        }
        for (i, limit) in s.rates.per_minute().into_iter().enumerate() {
            if let Some(limit) = limit
                && draw[i] > 0
                && snap.levels[i] < WINDOW_MS
            {
                consider(Rejection {
                    reason: Reason::Rate(DIMENSIONS[i]),
                    limit,
                    retry_after_ms: wait_ms(
                        snap.levels[i],
                        soon_given_back(DIMENSIONS[i], snap.reserved[i]),
                        WINDOW_MS,
                        refill_rate(snap, i, limit, false),
                    )
                    .max(1),
                    ..base
                });
            }
        }
    }
    worst.unwrap_or(Rejection {
        reason: Reason::Concurrency,
        scope: ScopeKind::Key,
        limit: 0,
        retry_after_ms: CONCURRENCY_RETRY_MS,
        period: None,
        resets_at_ms: 0,
        committed_micros: 0,
        needed_micros: 0,
        status,
    })
}

/// For a demand that was admitted but must fit whole in what was left of every budget before
/// it (see [`crate::Limiter::admit_whole`]): the budget it overdraws (the one with least left),
/// or `None` when it fits.
pub(crate) fn unfit(
    policy: &Policy,
    demand: &Demand,
    snaps: &[Snapshot],
    now: i64,
) -> Option<Rejection> {
    let mut tightest: Option<(u64, Rejection)> = None;
    for (s, snap) in policy.scopes.iter().zip(snaps) {
        let Some(b) = s.budget else { continue };
        let left = b.limit_micros.saturating_sub(snap.committed);
        if demand.cost_micros <= left || tightest.as_ref().is_some_and(|(l, _)| *l <= left) {
            continue;
        }
        tightest = Some((
            left,
            Rejection {
                reason: Reason::Budget,
                scope: s.scope.kind,
                limit: b.limit_micros,
                retry_after_ms: 0,
                period: Some(b.period),
                resets_at_ms: b.period.window(now).1,
                committed_micros: snap.committed,
                needed_micros: demand.cost_micros,
                status: status(policy, demand, snaps, now, false),
            },
        ));
    }
    tightest.map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_full_refill_linearly_and_cap() {
        assert_eq!(refill(None, 10, 5), 10 * WINDOW_MS);
        // Empty at t=0: after 6 s, one of ten per minute is back.
        assert_eq!(refill(Some((0, 0, 10)), 10, 6_000), WINDOW_MS);
        assert_eq!(refill(Some((0, 0, 10)), 10, 600_000), 10 * WINDOW_MS);
        // Overdrawn buckets refill from below zero; a clock step backwards refills nothing.
        assert_eq!(
            refill(Some((-WINDOW_MS, 100, 10)), 10, 106),
            -WINDOW_MS + 60
        );
        assert_eq!(refill(Some((5, 100, 10)), 10, 50), 5);
        // A lowered limit: nothing used, all of the new one left.
        assert_eq!(
            refill(Some((100 * WINDOW_MS, 0, 100)), 10, 0),
            10 * WINDOW_MS
        );
        // A raised limit adds the raise at once: 1 of 1 used, now 1 of 60 used.
        assert_eq!(refill(Some((0, 0, 1)), 60, 0), 59 * WINDOW_MS);
        // A lowered one keeps what was used, which refills at the rate it was used under until
        // an admission under the new one: 50 of 100 used, lowered to 10: 40 over; 24 s later
        // 40 of it refilled, none left; 30 s later all 10 left; 2 used, 8 of 10 left.
        assert_eq!(
            refill(Some((50 * WINDOW_MS, 0, 100)), 10, 0),
            -40 * WINDOW_MS
        );
        assert_eq!(refill(Some((50 * WINDOW_MS, 0, 100)), 10, 24_000), 0);
        assert_eq!(
            refill(Some((50 * WINDOW_MS, 0, 100)), 10, 30_000),
            10 * WINDOW_MS
        );
        assert_eq!(refill(Some((98 * WINDOW_MS, 0, 100)), 10, 0), 8 * WINDOW_MS);
        assert_eq!(rate_of(Some((0, 0, 100)), 10), 100);
        assert_eq!(rate_of(None, 10), 10);
        // Never overflows.
        assert_eq!(refill(Some((i64::MIN / 2, 0, 1)), 1, i64::MAX / 2), -1);
        assert_eq!(refill(Some((i64::MIN / 2, 0, 1)), 1, i64::MAX), WINDOW_MS);
    }

    #[test]
    fn a_settlement_keeps_the_limit_its_bucket_is_kept_at() {
        let w = WINDOW_MS;
        // 40 of 100 used; a settlement giving 10 back leaves 30 used, at 100.
        assert_eq!(
            settle(Some((60 * w, 0, 100)), 100, 0, 10 * w),
            (70 * w, 0, 100)
        );
        // Kept at 10 since (lowered): a request admitted at 100 settles at 10, refilled at 10.
        assert_eq!(
            settle(Some((0, 0, 10)), 100, 6_000, 2 * w),
            (3 * w, 6_000, 10)
        );
        // Kept at 100 since (raised): a request admitted at 10 settles at 100, refilled at 100.
        assert_eq!(
            settle(Some((0, 0, 100)), 10, 6_000, 0),
            (10 * w, 6_000, 100)
        );
        // Usage beyond the reservation is debt; what is given back never makes the level
        // more than full; no state is a full bucket.
        assert_eq!(
            settle(Some((100 * w, 0, 100)), 100, 0, -150 * w),
            (-50 * w, 0, 100)
        );
        assert_eq!(
            settle(Some((99 * w, 0, 100)), 100, 0, 5 * w),
            (100 * w, 0, 100)
        );
        assert_eq!(settle(None, 10, 7, -w), (9 * w, 7, 10));
    }

    #[test]
    fn waits_are_rounded_up_to_the_millisecond() {
        assert_eq!(ms_until(0, WINDOW_MS, 7), 8572);
        assert_eq!(ms_until(WINDOW_MS, WINDOW_MS, 7), 0);
    }

    #[test]
    fn reservations_in_flight_count_for_at_most_a_second_of_a_wait() {
        let w = WINDOW_MS;
        // Nothing in flight: the level's own wait.
        assert_eq!(wait_ms(-50 * w, 0, w, 100), 30_600);
        // 50 000 of 100 per minute reserved by a stream still running: it settles soon.
        assert_eq!(wait_ms(-49_900 * w, 50_000, w, 100), 1_000);
        assert_eq!(wait_ms(-49_900 * w, 50_000, 100 * w, 100), 1_000);
        // Settled usage in debt: its own wait, whatever is in flight on top.
        assert_eq!(wait_ms(-1_050 * w, 1_000, w, 100), 30_600);
        // Never more than the level alone needs, and nothing when it is there.
        assert_eq!(wait_ms(w / 2, 1, w, 100), 300);
        assert_eq!(wait_ms(w, 5, w, 100), 0);
    }

    /// A key at 1 000 input and 1 000 output tokens a minute, and its state with `level` input
    /// and output tokens left, `reserved` of each held by requests in flight.
    fn key_at(level: i64, reserved: u64) -> (std::sync::Arc<Policy>, Snapshot) {
        use crate::policy::{Rates, Scope, ScopeLimits};
        let id = uuid::Uuid::new_v4();
        let scope = ScopeLimits {
            scope: Scope {
                kind: ScopeKind::Key,
                id,
            },
            rates: Rates {
                itpm: Some(1_000),
                otpm: Some(1_000),
                ..Rates::default()
            },
            budget: None,
        };
        let snap = Snapshot {
            levels: [0, level * WINDOW_MS, level * WINDOW_MS],
            reserved: [0, reserved, reserved],
            ..Snapshot::default()
        };
        (Policy::new(id, [scope]).unwrap(), snap)
    }

    #[test]
    fn input_reservations_are_waited_out_in_full_and_output_ones_for_a_second() {
        let tokens = |input, output| Demand {
            input_tokens: input,
            output_tokens: output,
            cost_micros: 0,
        };
        // Nothing in flight: a 904-token prompt leaves 96, and refilling 904 at 1 000 a minute
        // takes 54.24 s; its own input reservation is not a wait of a second.
        let (p, snap) = key_at(1_000, 0);
        let s = status(&p, &tokens(904, 904), &[snap], 0, true);
        let (i, o) = (s.input_tokens.unwrap(), s.output_tokens.unwrap());
        assert_eq!((i.remaining, i.reset_at_ms), (96, 54_240));
        // The same 904 as max_tokens settles soon.
        assert_eq!((o.remaining, o.reset_at_ms), (96, 1_000));
        // The combined window is the one that holds a client back longer.
        assert_eq!(s.tokens(), Some(i));
        // 1 788 in flight of which 1 000 are used up and 788 overdrawn: the next request waits
        // for 789 input tokens (47.34 s), not a second; on output alone it would wait a second.
        let (p, snap) = key_at(-788, 1_788);
        let r = rejection(&p, &tokens(894, 0), &[snap], 0);
        assert_eq!(r.reason, Reason::Rate(Dimension::InputTokens));
        assert_eq!(r.retry_after_ms, 47_340);
        assert_eq!(r.status.input_tokens.unwrap().reset_at_ms, 107_280);
        assert_eq!(r.status.output_tokens.unwrap().reset_at_ms, 1_000);
        let r = rejection(&p, &tokens(0, 894), &[snap], 0);
        assert_eq!(r.reason, Reason::Rate(Dimension::OutputTokens));
        assert_eq!(r.retry_after_ms, 1_000);
    }

    #[test]
    fn a_status_read_earlier_is_refilled_to_the_moment_it_goes_out() {
        let tokens = Demand {
            input_tokens: 904,
            output_tokens: 904,
            cost_micros: 0,
        };
        let (p, snap) = key_at(1_000, 0);
        let s = status(&p, &tokens, &[snap], 0, true);
        assert_eq!(s.after(0), s);
        // 14 s later 233⅓ tokens are back; the input reset stands, the output one (a second
        // ahead at admission) is now, not in the past.
        let later = s.after(14_000);
        let (i, o) = (later.input_tokens.unwrap(), later.output_tokens.unwrap());
        assert_eq!((i.remaining, i.reset_at_ms), (329, 54_240));
        assert_eq!((o.remaining, o.reset_at_ms), (329, 14_000));
        assert_eq!(later.at_ms, 14_000);
        // Full after a minute, and never beyond the limit.
        let i = s.after(60_000).input_tokens.unwrap();
        assert_eq!((i.remaining, i.reset_at_ms), (1_000, 60_000));
        // A debt is paid back before anything is left: 788 overdrawn, 1 000 a minute.
        let (p, snap) = key_at(-788, 1_788);
        let s = rejection(&p, &tokens, &[snap], 0).status;
        assert_eq!(s.after(47_279).input_tokens.unwrap().remaining, 0);
        assert_eq!(s.after(60_000).input_tokens.unwrap().remaining, 212);
    }
}
