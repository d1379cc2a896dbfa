//! Rampart's traffic control: per-minute rate limits (requests, input tokens, output tokens),
//! concurrency limits and budgets, per virtual key and per team, enforced with
//! **reserve, then settle**.
//!
//! At admission ([`Limiter::admit`]) a request reserves one request, its estimated input
//! tokens, its `max_tokens` of output and its worst-case cost, in one atomic step across every
//! scope that limits it (its key and its team). When the response is done the [`Ticket`] is
//! settled with the real usage ([`Ticket::settle`]): unused tokens go back, the budget is
//! charged the real cost, the concurrency slot frees. The rules are in [`engine`]; overshoot is
//! zero for request counts and at most one request's reservation for tokens and budgets.
//!
//! Two backends, one behaviour (one test suite runs against both):
//! - in process ([`Backend::InProcess`], the default): exact for one instance;
//! - Redis ([`Backend::Redis`]): one Lua script, one round trip per admission and one per
//!   settlement, so limits hold across every instance sharing the Redis. While Redis is
//!   unreachable the limiter fails closed (503) or open, as configured ([`FailureMode`]): once a
//!   call or a health check has failed, admissions do not wait on Redis until a health check
//!   ([`Limiter::run_health_checks`]) gets a reply again. A call whose answer was lost leaves
//!   nothing behind: every call is idempotent, an admission that failed is released and a
//!   settlement that failed is sent again once Redis answers (see [`Limiter`]), and a
//!   call that failed on a dropped connection (a restarted Redis) is sent again at once. A live
//!   instance renews the leases of its requests in flight, so only a dead instance's
//!   reservations expire ([`Limiter::renew_leases`]).
//!
//! Time comes from a [`Clock`] (wall-clock milliseconds, derived from `tokio::time`).

pub mod clock;
pub mod engine;
mod limiter;
mod local;
pub mod policy;
mod redis;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use engine::{Dimension, IN_FLIGHT_WAIT_MS, Reason, Rejection, Snapshot, Status, Window};
pub use limiter::{Admission, Backend, FailureMode, Limiter, LimiterConfig, MAX_REPAIRS, Ticket};
pub use policy::{Budget, Demand, Period, Policy, Rates, Scope, ScopeKind, ScopeLimits, Used};
pub use redis::RedisFailure;
