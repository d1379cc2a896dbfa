//! Admin sessions: the authenticated [`Caller`], the in-memory cache of revoked token ids, and the
//! login throttle.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::FromRequestParts;
use http::request::Parts;
use rampart_crypto::jwt::{Claims, JwtError};
use rampart_store::{Role, Store, User};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AdminState;
use crate::error::ApiError;

/// The signed-in user behind a request: a valid access token whose `jti` is not revoked, for a
/// user who exists and is enabled. The role and team come from the user row, read on every
/// request, so a demotion or a disabled account takes effect at once.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user, as stored now.
    pub user: User,
    /// The verified token claims.
    pub claims: Claims,
}

impl Caller {
    /// The caller's role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.user.role
    }

    /// Whether the caller is an admin.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }

    /// The caller's team, if any.
    #[must_use]
    pub fn team(&self) -> Option<Uuid> {
        self.user.team_id
    }

    /// The audit actor name.
    #[must_use]
    pub fn actor(&self) -> String {
        format!("user:{}", self.user.email)
    }
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        const MISSING: &str = "missing bearer token: send Authorization: Bearer <access_token>";
        let token = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated(MISSING))?
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or(ApiError::Unauthenticated(MISSING))?;
        let claims = state.jwt().verify(token).map_err(|e| match e {
            JwtError::Expired => ApiError::Unauthenticated("access token expired"),
            _ => ApiError::Unauthenticated("invalid access token"),
        })?;
        if state.revoked().contains(&claims.jti) {
            return Err(ApiError::Unauthenticated("access token revoked"));
        }
        let id = Uuid::parse_str(&claims.sub)
            .map_err(|_| ApiError::Unauthenticated("invalid access token"))?;
        let user = match state.store().get_user(id).await {
            Ok(u) => u,
            Err(rampart_store::StoreError::NotFound) => {
                return Err(ApiError::Unauthenticated("invalid access token"));
            }
            Err(e) => return Err(e.into()),
        };
        if user.disabled {
            return Err(ApiError::Unauthenticated("account disabled"));
        }
        // A password change (or disabling) voids the sessions issued before it, to the
        // millisecond (`iat_ms`; tokens without it are compared by whole seconds).
        let issued_ms = claims
            .iat_ms
            .map_or(i128::from(claims.iat) * 1000 + 999, i128::from);
        if user
            .sessions_valid_after
            .is_some_and(|t| issued_ms < t.unix_timestamp_nanos() / 1_000_000)
        {
            return Err(ApiError::Unauthenticated(
                "session ended by a password change; sign in again",
            ));
        }
        Ok(Caller { user, claims })
    }
}

/// Revoked access-token ids, kept in memory and refreshed from the store every second (so a
/// revocation on one instance holds on all within a second); local revocations apply at once.
#[derive(Debug, Default)]
pub struct RevokedJtis {
    set: RwLock<HashMap<String, OffsetDateTime>>,
}

impl RevokedJtis {
    /// Whether `jti` is revoked.
    #[must_use]
    pub fn contains(&self, jti: &str) -> bool {
        self.set.read().map(|s| s.contains_key(jti)).unwrap_or(true)
    }

    /// Record a revocation made here.
    pub fn insert(&self, jti: &str, expires_at: OffsetDateTime) {
        if let Ok(mut s) = self.set.write() {
            s.insert(jti.to_owned(), expires_at);
        }
    }

    /// Replace the set with the store's revocations still in force.
    ///
    /// # Errors
    /// A store failure (the previous set stays).
    pub async fn refresh(&self, store: &Store) -> rampart_store::Result<()> {
        let now = OffsetDateTime::now_utc();
        let fresh: HashMap<String, OffsetDateTime> = store
            .list_revoked_jti(now)
            .await?
            .into_iter()
            .map(|r| (r.jti, r.expires_at))
            .collect();
        if let Ok(mut s) = self.set.write() {
            // Keep local entries the store has not shown yet (a write racing this read).
            s.retain(|jti, exp| *exp > now && !fresh.contains_key(jti));
            s.extend(fresh);
        }
        Ok(())
    }
}

/// Failed-login throttle, per account and per client address: after `max` failures within
/// `window`, further attempts are refused until the oldest failure leaves the window. Unknown
/// accounts are counted exactly like existing ones, so the throttle reveals nothing.
#[derive(Debug)]
pub struct LoginLimiter {
    per_account: usize,
    per_address: usize,
    window: Duration,
    failures: Mutex<HashMap<Subject, VecDeque<Instant>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Account(String),
    Address(IpAddr),
}

/// Entries kept before stale ones are swept.
const SWEEP_AT: usize = 50_000;

impl LoginLimiter {
    /// A limiter allowing `per_account` and `per_address` failures per `window`.
    #[must_use]
    pub fn new(per_account: usize, per_address: usize, window: Duration) -> Self {
        Self {
            per_account: per_account.max(1),
            per_address: per_address.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn subjects(account: &str, addr: Option<IpAddr>) -> Vec<(Subject, bool)> {
        let mut v = vec![(Subject::Account(account.to_ascii_lowercase()), true)];
        if let Some(a) = addr {
            v.push((Subject::Address(a), false));
        }
        v
    }

    /// `Err(seconds to wait)` when either the account or the address is over its limit.
    ///
    /// # Errors
    /// The wait, in whole seconds (at least 1).
    pub fn check(&self, account: &str, addr: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return Err(1);
        };
        let mut wait = Duration::ZERO;
        for (subject, is_account) in Self::subjects(account, addr) {
            let limit = if is_account {
                self.per_account
            } else {
                self.per_address
            };
            if let Some(q) = map.get_mut(&subject) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= limit
                    && let Some(oldest) = q.front()
                {
                    wait = wait.max(self.window.saturating_sub(now.duration_since(*oldest)));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.as_secs().max(1))
        }
    }

    /// Count a failure against the account and the address.
    pub fn fail(&self, account: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for (subject, is_account) in Self::subjects(account, addr) {
            let limit = if is_account {
                self.per_account
            } else {
                self.per_address
            };
            let q = map.entry(subject).or_default();
            q.push_back(now);
            while q.len() > limit {
                q.pop_front();
            }
        }
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeed(&self, account: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&Subject::Account(account.to_ascii_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_throttle_counts_accounts_and_addresses_separately() {
        let l = LoginLimiter::new(3, 5, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check("x@y.io", Some(a)).is_ok());
            l.fail("x@y.io", Some(a));
        }
        let wait = l.check("X@Y.io", Some(a)).unwrap_err();
        assert!((1..=60).contains(&wait));
        // Another account from the same address still has two attempts left there.
        assert!(l.check("z@y.io", Some(a)).is_ok());
        l.fail("z@y.io", Some(a));
        l.fail("w@y.io", Some(a));
        assert!(l.check("new@y.io", Some(a)).is_err());
        assert!(
            l.check("new@y.io", Some("10.0.0.2".parse().unwrap()))
                .is_ok()
        );
    }

    #[test]
    fn success_clears_the_account_and_the_window_expires() {
        let l = LoginLimiter::new(1, 100, Duration::from_millis(30));
        l.fail("a@b.io", None);
        assert!(l.check("a@b.io", None).is_err());
        l.succeed("a@b.io");
        assert!(l.check("a@b.io", None).is_ok());
        l.fail("a@b.io", None);
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.check("a@b.io", None).is_ok());
    }
}
