//! The in-process backend: every scope's state in memory, sharded by team so one admission
//! takes one short lock. Exact for one instance; several instances need [`crate::redis`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use crate::engine::{self, Snapshot, WINDOW_MS};
use crate::policy::{Demand, Policy, Scope, Used};

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct ScopeState {
    /// `(level, updated_at, limit)` per dimension.
    buckets: [Option<(i64, i64, u64)>; 3],
    inflight: u64,
    /// Tokens reserved per dimension by requests in flight (see [`Snapshot::reserved`]).
    reserved: [u64; 3],
    /// `(period start, spent, reserved)`.
    budget: Option<(i64, u64, u64)>,
}

/// Scopes are ids the server made (never chosen by a client), so a fast seeded hash is enough:
/// SipHash cost ~900 instructions per request across the admission's and settlement's lookups.
type Hasher = foldhash::fast::RandomState;

/// The in-process state.
#[derive(Debug)]
pub(crate) struct Local {
    hasher: Hasher,
    shards: Vec<Mutex<HashMap<Scope, ScopeState, Hasher>>>,
}

impl Local {
    pub(crate) fn new() -> Self {
        Self {
            hasher: Hasher::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, group: Uuid) -> std::sync::MutexGuard<'_, HashMap<Scope, ScopeState, Hasher>> {
        let i = usize::try_from(self.hasher.hash_one(group) % SHARDS as u64).unwrap_or(0);
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Check and, when it fits, reserve; returns whether it did and what it saw.
    ///
    /// `whole`: the demand must also fit whole in what is left of every budget
    /// ([`engine::unfit`]), checked in the same step, so a refused one never holds anything.
    pub(crate) fn admit(
        &self,
        policy: &Policy,
        demand: &Demand,
        now: i64,
        whole: bool,
    ) -> (bool, Vec<Snapshot>) {
        let mut shard = self.shard(policy.group);
        let mut snaps = Vec::with_capacity(policy.scopes.len());
        for s in &policy.scopes {
            let st = shard.entry(s.scope).or_default();
            let mut snap = Snapshot {
                inflight: st.inflight,
                ..Snapshot::default()
            };
            for (i, limit) in s.rates.per_minute().into_iter().enumerate() {
                if let Some(limit) = limit {
                    // Written after `now`: the clock was set back. The bucket refills nothing for
                    // the step, and from now on (else it would wait for the clock to catch up).
                    if let Some(bucket) = &mut st.buckets[i]
                        && bucket.1 > now
                    {
                        bucket.1 = now;
                    }
                    snap.levels[i] = engine::refill(st.buckets[i], limit, now);
                    snap.rates[i] = engine::rate_of(st.buckets[i], limit);
                    snap.reserved[i] = st.reserved[i];
                }
            }
            if let Some(b) = s.budget {
                // A budget state from an earlier period starts over.
                let start = b.period.window(now).0;
                let state = match st.budget {
                    Some(state) if state.0 == start => state,
                    _ => (start, 0, 0),
                };
                st.budget = Some(state);
                snap.committed = state.1.saturating_add(state.2);
            }
            snaps.push(snap);
        }
        if !engine::fits(policy, demand, &snaps)
            || (whole && engine::unfit(policy, demand, &snaps, now).is_some())
        {
            return (false, snaps);
        }
        let draw = engine::draws(demand);
        for (s, snap) in policy.scopes.iter().zip(&snaps) {
            let st = shard.entry(s.scope).or_default();
            for (i, limit) in s.rates.per_minute().into_iter().enumerate() {
                // A bucket drawn on is kept at the limit in force from now on; one not drawn on is
                // left as it is.
                if let Some(limit) = limit
                    && draw[i] > 0
                {
                    let taken = i64::try_from(draw[i]).unwrap_or(i64::MAX) * WINDOW_MS;
                    st.buckets[i] = Some((snap.levels[i] - taken, now, limit));
                    if i > 0 {
                        st.reserved[i] = st.reserved[i].saturating_add(draw[i]);
                    }
                }
            }
            // Counted in any scope with a limit, as the Redis backend does: a concurrency limit set
            // while requests run counts those already running.
            if !s.rates.is_empty() {
                st.inflight += 1;
            }
            if s.budget.is_some()
                && demand.cost_micros > 0
                && let Some((_, _, reserved)) = &mut st.budget
            {
                *reserved = reserved.saturating_add(demand.cost_micros);
            }
        }
        (true, snaps)
    }

    /// Start `scope`'s budget for the period beginning at `period_start` with `micros` already
    /// spent (never lowering what this process counted itself).
    pub(crate) fn seed_spent(&self, group: Uuid, scope: Scope, period_start: i64, micros: u64) {
        let mut shard = self.shard(group);
        let st = shard.entry(scope).or_default();
        match &mut st.budget {
            Some((start, spent, _)) if *start == period_start => *spent = (*spent).max(micros),
            _ => st.budget = Some((period_start, micros, 0)),
        }
    }

    /// Return what an admitted request did not use (or charge what it used beyond its
    /// reservation) and free its slot.
    pub(crate) fn settle(
        &self,
        policy: &Policy,
        demand: &Demand,
        used: &Used,
        admitted_ms: i64,
        now: i64,
    ) {
        let mut shard = self.shard(policy.group);
        let reserved = engine::draws(demand);
        let spent = [0, used.input_tokens, used.output_tokens];
        for s in &policy.scopes {
            let Some(st) = shard.get_mut(&s.scope) else {
                continue;
            };
            for (i, limit) in s.rates.per_minute().into_iter().enumerate().skip(1) {
                if let Some(limit) = limit {
                    let refund = (i64::try_from(reserved[i]).unwrap_or(i64::MAX)
                        - i64::try_from(spent[i]).unwrap_or(i64::MAX))
                        * WINDOW_MS;
                    st.buckets[i] = Some(engine::settle(st.buckets[i], limit, now, refund));
                    st.reserved[i] = st.reserved[i].saturating_sub(reserved[i]);
                }
            }
            if !s.rates.is_empty() {
                st.inflight = st.inflight.saturating_sub(1);
            }
            if let Some(b) = s.budget
                && let Some((start, spent, reserved)) = &mut st.budget
                && *start == b.period.window(admitted_ms).0
            {
                *reserved = reserved.saturating_sub(demand.cost_micros);
                *spent = spent.saturating_add(used.cost_micros);
            }
        }
    }
}
