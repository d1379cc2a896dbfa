//! The Redis backend: the same state as [`crate::local`], kept in Redis and changed only by one
//! Lua script (`limits.lua`), so every instance sharing the Redis sees one limit. One round trip
//! per admission (`EVALSHA`, check and reserve atomically) and one per settlement. The leases
//! of live tickets are renewed in the background, many tickets per round trip ([`RENEW_BATCH`]).
//!
//! Every call is idempotent, so a call whose answer was lost can be sent again: the caller picks
//! the ticket id before the admission runs; an admission of a ticket that is already admitted
//! takes nothing twice; a settlement or a release acts only on the reservation the ticket still
//! holds; and a release (the compensation for an admission whose answer never came) leaves a
//! tombstone for the ticket, so the admission, should Redis run it after the release (another
//! connection, a frozen server resuming), takes nothing. A call that fails on a dropped or
//! refused connection is sent once more on a fresh one (a restarted Redis costs no failed call).
//!
//! Keys carry the team's id as a hash tag (`rampart:{<team>}:…`), so a script only touches one
//! slot of a Redis Cluster. Bucket hashes expire once they would be full again (or, while
//! tokens are reserved in them, a second after the last lease), in-flight sets a second after
//! their last lease, budget hashes a week after their period ends, and a released ticket's
//! tombstone a minute after the lease, so idle keys and teams cost no memory.
//!
//! One key never expires: the seeding mark (`<prefix>:seeded`, see [`SEEDED`]), set once the
//! budgets were started from the usage ledger; a Redis without it lost its state, which the
//! health check ([`RedisBackend::ping`]) reads in its single round trip.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::engine::Snapshot;
use crate::policy::{Demand, Policy, Scope, ScopeKind, Used};

/// The script (see `limits.lua`).
pub(crate) const SCRIPT: &str = include_str!("limits.lua");

/// Raise a budget hash's `spent` to ARGV[1] when it is lower (never lower it: what the
/// instances counted themselves stays), and keep the hash until ARGV[2] (ms from now) at least.
const SEED_SCRIPT: &str = r"
local seed = tonumber(ARGV[1])
if seed > (tonumber(redis.call('HGET', KEYS[1], 'spent')) or 0) then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1])
end
local ttl = tonumber(ARGV[2])
if ttl > redis.call('PTTL', KEYS[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// The most tickets renewed in one round trip (one pipeline of script calls).
pub(crate) const RENEW_BATCH: usize = 512;
/// The values of the seeding mark (`<prefix>:seeded`, no expiry): `seeding` while an instance
/// starts the budgets from the usage ledger on a Redis that had no mark, `seeded` once one did.
/// A Redis without it lost its state (a restart without persistence, `FLUSHALL`) or was never
/// seeded; one where `seeding` became `seeded` was not emptied meanwhile (`SET … XX` needs the
/// key that the emptying would have removed).
const SEEDING: &str = "seeding";
const SEEDED: &str = "seeded";

/// How long budget state is kept after its period ends.
const BUDGET_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Why a Redis call failed (the text never carries the URL or its password).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    /// No reply within the configured timeout.
    #[error("no reply from Redis within {0:?}")]
    Timeout(Duration),
    /// The connection or the command failed.
    #[error("Redis error: {0}")]
    Command(String),
    /// Redis answered the call with an error (sending it again would get the same answer).
    #[error("Redis answered with an error: {0}")]
    Server(String),
}

/// A connection (reconnecting on its own) and the script.
///
/// Calls made on a gateway worker (a current-thread runtime) use a connection of that thread,
/// driven by that thread: no hand-off to another thread and back on every admission, and a
/// worker's settlement always reaches Redis before its next admission. Elsewhere (tests, the
/// accounting thread) the shared connection, driven by the runtime the backend was made on.
#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Tells this backend's thread-local connections from another backend's.
    id: u64,
    script: redis::Script,
    /// [`SEED_SCRIPT`].
    seed: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether a failed call is worth sending again at once: its connection was dropped (the
/// connection manager reconnects on such an error), not refused (the manager has already tried
/// again, with backoff, before it says so), a timeout or a server's answer.
fn resendable(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_connection_refusal() && !e.is_timeout()
}

fn command(e: &redis::RedisError) -> RedisFailure {
    // Redis errors describe the failure (kind, server message), never the connection URL.
    if matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    ) {
        RedisFailure::Server(e.to_string())
    } else {
        RedisFailure::Command(e.to_string())
    }
}

impl RedisBackend {
    /// A backend for `url` (`redis://[:password@]host:port[/db]`); connects lazily, reconnects
    /// by itself, and gives up on a call after `timeout`.
    ///
    /// # Errors
    /// When the URL cannot be parsed (the message does not repeat it).
    pub(crate) fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("limits.redis_url is not a Redis URL ({})", e.category()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("cannot set up the Redis connection: {}", e.category()))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Self {
            conn,
            client,
            config,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            script: redis::Script::new(SCRIPT),
            seed: redis::Script::new(SEED_SCRIPT),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// The common start of a scope's keys: `<prefix>:{<group>}:<k|t>:<id>`.
    fn base(&self, group: uuid::Uuid, scope: Scope) -> String {
        let kind = match scope.kind {
            ScopeKind::Key => 'k',
            ScopeKind::Team => 't',
        };
        format!(
            "{}:{{{}}}:{kind}:{}",
            self.prefix,
            group.simple(),
            scope.id.simple()
        )
    }

    fn keys(&self, policy: &Policy, ticket: &str, budget_at_ms: i64) -> Vec<String> {
        let mut keys = Vec::with_capacity(policy.scopes.len() * 4 + 1);
        for s in &policy.scopes {
            let base = self.base(policy.group, s.scope);
            let period = s.budget.map_or(0, |b| b.period.window(budget_at_ms).0);
            keys.push(format!("{base}:b"));
            keys.push(format!("{base}:c"));
            keys.push(format!("{base}:g:{period}"));
            keys.push(format!("{base}:l:{period}"));
        }
        // The ticket's tombstone, in the team's slot like the rest.
        keys.push(format!(
            "{}:{{{}}}:x:{ticket}",
            self.prefix,
            policy.group.simple()
        ));
        keys
    }

    #[allow(clippy::too_many_arguments)]
    fn invocation(
        &self,
        op: &str,
        policy: &Policy,
        demand: &Demand,
        used: &Used,
        ticket: &str,
        lease_ms: i64,
        now: i64,
        budget_at_ms: i64,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        for k in self.keys(policy, ticket, budget_at_ms) {
            inv.key(k);
        }
        inv.arg(op)
            .arg(now)
            .arg(ticket)
            .arg(lease_ms)
            .arg(policy.scopes.len())
            .arg(demand.input_tokens)
            .arg(demand.output_tokens)
            .arg(demand.cost_micros)
            .arg(used.input_tokens)
            .arg(used.output_tokens)
            .arg(used.cost_micros);
        for s in &policy.scopes {
            let r = s.rates;
            inv.arg(r.rpm.unwrap_or(0))
                .arg(r.itpm.unwrap_or(0))
                .arg(r.otpm.unwrap_or(0))
                .arg(r.concurrency.unwrap_or(0))
                .arg(s.budget.map_or(0, |b| b.limit_micros))
                .arg(s.budget.map_or(0, |b| {
                    b.period
                        .window(budget_at_ms)
                        .1
                        .saturating_add(BUDGET_KEEP_MS)
                }));
        }
        inv
    }

    /// This thread's connection on a current-thread runtime (made on first use), else the
    /// shared one.
    fn connection(&self) -> ConnectionManager {
        thread_local! {
            static CONNS: std::cell::RefCell<Vec<(u64, ConnectionManager)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !on_worker {
            return self.conn.clone();
        }
        CONNS.with(|conns| {
            let mut conns = conns.borrow_mut();
            if let Some((_, c)) = conns.iter().find(|(id, _)| *id == self.id) {
                return c.clone();
            }
            match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
            {
                Ok(c) => {
                    conns.push((self.id, c.clone()));
                    c
                }
                Err(_) => self.conn.clone(),
            }
        })
    }

    /// Run a script call (every one is idempotent, see the module docs), within the timeout; a
    /// call that fails on a dropped or refused connection is sent once more (the connection
    /// reconnects on that error): a connection that died with a restarted Redis, or that a short
    /// network cut broke, costs no failed call.
    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisFailure> {
        let mut conn = self.connection();
        let call = async {
            match inv.invoke_async(&mut conn).await {
                Err(e) if resendable(&e) => inv.invoke_async(&mut conn).await,
                other => other,
            }
        };
        self.within(call).await
    }

    /// `call`'s answer, or its failure, or a timeout after the configured one.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisFailure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(command(&e)),
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        }
    }

    /// Check and reserve in one round trip; `(admitted, what each scope looked like before)`.
    pub(crate) async fn admit(
        &self,
        policy: &Policy,
        demand: &Demand,
        ticket: &str,
        lease_ms: i64,
        now: i64,
        whole: bool,
    ) -> Result<(bool, Vec<Snapshot>), RedisFailure> {
        let inv = self.invocation(
            if whole { "w" } else { "a" },
            policy,
            demand,
            &Used::default(),
            ticket,
            lease_ms,
            now,
            now,
        );
        let reply: Vec<i64> = self.run(inv).await?;
        if reply.first() == Some(&2) {
            // Only an admission nobody waits for any more can find its ticket released.
            return Err(RedisFailure::Command(
                "the admission's ticket was released".to_owned(),
            ));
        }
        let n = policy.scopes.len();
        if reply.len() != 1 + 10 * n {
            return Err(RedisFailure::Command(format!(
                "unexpected script reply of {} values",
                reply.len()
            )));
        }
        let snaps = reply[1..]
            .chunks_exact(10)
            .map(|c| {
                let count = |v: i64| u64::try_from(v).unwrap_or(0);
                Snapshot {
                    levels: [c[0], c[1], c[2]],
                    inflight: count(c[3]),
                    committed: count(c[4]),
                    reserved: [0, count(c[5]), count(c[6])],
                    rates: [count(c[7]), count(c[8]), count(c[9])],
                }
            })
            .collect();
        Ok((reply[0] == 1, snaps))
    }

    /// Settle an admitted request in one round trip (idempotent: a settlement sent again
    /// changes nothing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn settle(
        &self,
        policy: &Policy,
        demand: &Demand,
        used: &Used,
        ticket: &str,
        lease_ms: i64,
        admitted_ms: i64,
        now: i64,
    ) -> Result<(), RedisFailure> {
        self.end(
            "s",
            policy,
            demand,
            used,
            ticket,
            lease_ms,
            admitted_ms,
            now,
        )
        .await
    }

    /// Undo the admission of `ticket` whose answer was lost, in one round trip: what it took is
    /// given back as by a settlement with nothing used (nothing when it was never admitted or
    /// is settled already), and the ticket is tombstoned for `lease_ms` and a minute more, so
    /// the admission, should Redis run it only now, takes nothing. Idempotent.
    pub(crate) async fn release(
        &self,
        policy: &Policy,
        demand: &Demand,
        ticket: &str,
        lease_ms: i64,
        admitted_ms: i64,
        now: i64,
    ) -> Result<(), RedisFailure> {
        let nothing = Used::default();
        self.end(
            "r",
            policy,
            demand,
            &nothing,
            ticket,
            lease_ms,
            admitted_ms,
            now,
        )
        .await
    }

    /// The script's end of a ticket (`op` `s`, a settlement, or `r`, a release).
    #[allow(clippy::too_many_arguments)]
    async fn end(
        &self,
        op: &str,
        policy: &Policy,
        demand: &Demand,
        used: &Used,
        ticket: &str,
        lease_ms: i64,
        admitted_ms: i64,
        now: i64,
    ) -> Result<(), RedisFailure> {
        let inv = self.invocation(op, policy, demand, used, ticket, lease_ms, now, admitted_ms);
        let _: Vec<i64> = self.run(inv).await?;
        Ok(())
    }

    /// Renew the leases of live `tickets` (`(policy, demand, ticket, admitted at)`, at most
    /// [`RENEW_BATCH`]) to `now + lease_ms`, in one round trip: the script loaded, then one call
    /// per ticket, pipelined. A lease that lapsed already stays lapsed. Idempotent.
    pub(crate) async fn renew(
        &self,
        tickets: &[(&Policy, &Demand, String, i64)],
        lease_ms: i64,
        now: i64,
    ) -> Result<(), RedisFailure> {
        let nothing = Used::default();
        let calls: Vec<_> = tickets
            .iter()
            .map(|(policy, demand, ticket, admitted_ms)| {
                self.invocation(
                    "k",
                    policy,
                    demand,
                    &nothing,
                    ticket,
                    lease_ms,
                    now,
                    *admitted_ms,
                )
            })
            .collect();
        // A pipeline does not load a missing script by itself: it goes first.
        let mut pipe = redis::pipe();
        pipe.load_script(&self.script).ignore();
        for call in &calls {
            pipe.invoke_script(call).ignore();
        }
        let mut conn = self.connection();
        let sent = async {
            match pipe.query_async::<()>(&mut conn).await {
                Err(e) if resendable(&e) => pipe.query_async::<()>(&mut conn).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(command(&e)),
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        }
    }

    /// Count at least `micros` as spent in the budget period `window` (start and end, ms) of
    /// `scope`, in one round trip; what the hash already counts is never lowered.
    pub(crate) async fn seed_spent(
        &self,
        group: uuid::Uuid,
        scope: Scope,
        window: (i64, i64),
        micros: u64,
        now: i64,
    ) -> Result<(), RedisFailure> {
        let key = format!("{}:g:{}", self.base(group, scope), window.0);
        let keep = window
            .1
            .saturating_add(BUDGET_KEEP_MS)
            .saturating_sub(now)
            .max(1);
        let mut inv = self.seed.prepare_invoke();
        inv.key(key).arg(micros).arg(keep);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    /// `PING`, read the seeding mark, and load the script so admissions need no second round
    /// trip: one pipeline, one round trip. Whether the mark says the budgets were seeded.
    pub(crate) async fn ping(&self) -> Result<bool, RedisFailure> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING")
            .cmd("GET")
            .arg(self.mark())
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT);
        let (_, mark, _): (String, Option<String>, String) = self.query(&pipe).await?;
        Ok(mark.as_deref() == Some(SEEDED))
    }

    /// The seeding mark's key (see [`SEEDED`]).
    fn mark(&self) -> String {
        format!("{}:seeded", self.prefix)
    }

    /// Before seeding the budgets: mark the seeding begun, unless the mark is there already.
    pub(crate) async fn begin_seeding(&self) -> Result<(), RedisFailure> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.mark()).arg(SEEDING).arg("NX");
        let _: (Option<String>,) = self.query(&pipe).await?;
        Ok(())
    }

    /// After seeding the budgets: mark them seeded, only if the mark is still there (whether it
    /// was; if not, Redis was emptied meanwhile and the seeds may be lost with it).
    pub(crate) async fn finish_seeding(&self) -> Result<bool, RedisFailure> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.mark()).arg(SEEDED).arg("XX");
        let (done,): (Option<String>,) = self.query(&pipe).await?;
        Ok(done.is_some())
    }

    /// Send `pipe` (idempotent) on the shared connection within the timeout, once more when
    /// the connection was dropped or refused (the first call after Redis came back finds the
    /// old connection dead).
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisFailure> {
        let mut conn = self.conn.clone();
        let call = async {
            match pipe.query_async(&mut conn).await {
                Err(e) if resendable(&e) => pipe.query_async(&mut conn).await,
                other => other,
            }
        };
        self.within(call).await
    }
}

#[cfg(test)]
mod tests {
    //! The script's idempotence, on the Redis at `RAMPART_TEST_REDIS_URL` (skipped when unset;
    //! the limits suite fails in CI without it).
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::engine::WINDOW_MS;
    use crate::policy::{Budget, Period, Rates, ScopeLimits};
    use std::sync::Arc;

    /// 2026-06-01T12:00:00Z.
    const T0: i64 = 1_780_315_200_000;

    #[test]
    fn a_dropped_connection_is_sent_again_a_refused_one_is_not() {
        let io = |kind| redis::RedisError::from(std::io::Error::from(kind));
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(resendable(&io(kind)), "{kind:?}");
        }
        // The connection manager retried it with backoff before it said so.
        assert!(!resendable(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(!resendable(&io(std::io::ErrorKind::TimedOut)));
    }
    const LEASE: i64 = 900_000;

    fn backend() -> Option<RedisBackend> {
        let url = std::env::var("RAMPART_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let prefix = format!("unit-{}", uuid::Uuid::new_v4().simple());
        Some(RedisBackend::new(&url, &prefix, Duration::from_secs(2)).unwrap())
    }

    /// One slot, 100 output tokens a minute, 1,000 µ$ a day.
    fn policy() -> Arc<Policy> {
        Policy::new(
            uuid::Uuid::new_v4(),
            [ScopeLimits {
                scope: Scope {
                    kind: ScopeKind::Key,
                    id: uuid::Uuid::new_v4(),
                },
                rates: Rates {
                    otpm: Some(100),
                    concurrency: Some(1),
                    ..Rates::default()
                },
                budget: Some(Budget {
                    limit_micros: 1_000,
                    period: Period::Day,
                }),
            }],
        )
        .unwrap()
    }

    const DEMAND: Demand = Demand {
        input_tokens: 0,
        output_tokens: 30,
        cost_micros: 400,
    };

    fn untouched() -> Snapshot {
        Snapshot {
            levels: [0, 0, 100 * WINDOW_MS],
            rates: [0, 0, 100],
            ..Snapshot::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admission_that_runs_after_its_release_takes_nothing() {
        let Some(r) = backend() else { return };
        let p = policy();
        // Released first (its answer was lost), run only then (another connection, a frozen
        // Redis resuming): refused, nothing taken.
        r.release(&p, &DEMAND, "t1", LEASE, T0, T0).await.unwrap();
        assert!(r.admit(&p, &DEMAND, "t1", LEASE, T0, false).await.is_err());
        let (ok, snaps) = r.admit(&p, &DEMAND, "t2", LEASE, T0, false).await.unwrap();
        assert!(ok);
        assert_eq!(snaps, [untouched()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_gives_back_what_the_admission_took_once_and_a_settlement_settles_once() {
        let Some(r) = backend() else { return };
        let p = policy();
        assert!(
            r.admit(&p, &DEMAND, "t1", LEASE, T0, false)
                .await
                .unwrap()
                .0
        );
        for _ in 0..2 {
            r.release(&p, &DEMAND, "t1", LEASE, T0, T0).await.unwrap();
        }
        let (ok, snaps) = r.admit(&p, &DEMAND, "t2", LEASE, T0, false).await.unwrap();
        assert!(ok);
        assert_eq!(snaps, [untouched()], "given back exactly, once");
        let used = Used {
            input_tokens: 0,
            output_tokens: 10,
            cost_micros: 100,
        };
        for _ in 0..2 {
            r.settle(&p, &DEMAND, &used, "t2", LEASE, T0, T0)
                .await
                .unwrap();
        }
        // A release after the settlement (or of a ticket settled already) changes nothing.
        r.release(&p, &DEMAND, "t2", LEASE, T0, T0).await.unwrap();
        let (ok, snaps) = r.admit(&p, &DEMAND, "t3", LEASE, T0, false).await.unwrap();
        assert!(ok);
        let settled_once = Snapshot {
            levels: [0, 0, 90 * WINDOW_MS],
            inflight: 0,
            committed: 100,
            reserved: [0; 3],
            rates: [0, 0, 100],
        };
        assert_eq!(snaps, [settled_once]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admission_sent_twice_is_taken_once() {
        let Some(r) = backend() else { return };
        let p = policy();
        assert!(
            r.admit(&p, &DEMAND, "t1", LEASE, T0, false)
                .await
                .unwrap()
                .0
        );
        // Sent again (its first answer was lost with its connection): admitted, not taken again.
        let (ok, _) = r.admit(&p, &DEMAND, "t1", LEASE, T0, false).await.unwrap();
        assert!(ok);
        let (ok, snaps) = r.admit(&p, &DEMAND, "t2", LEASE, T0, false).await.unwrap();
        assert!(!ok, "one slot, taken once");
        let once = Snapshot {
            levels: [0, 0, 70 * WINDOW_MS],
            inflight: 1,
            committed: 400,
            reserved: [0, 0, 30],
            rates: [0, 0, 100],
        };
        assert_eq!(snaps, [once]);
    }
}
