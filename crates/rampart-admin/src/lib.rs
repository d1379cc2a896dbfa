//! Rampart's admin plane, `/admin/v1`: sign-in with short-lived JWT access tokens and rotating
//! refresh tokens, role-checked management of users, teams, virtual keys and encrypted upstream
//! credentials, and the audit log. The contract is `docs/admin-api.md`; the OpenAPI 3.1 document
//! is generated from the handlers and served at `/openapi.json`, with an offline docs page at
//! `/admin/docs/`.
//!
//! Every write appends its audit event in the same transaction as the change (the store's
//! `audit: Option<&NewAuditEvent>` parameter). Writes that change which keys are valid call
//! [`IdentityCache::invalidate`] before answering, so the serving instance applies them at once.

pub mod error;
pub mod http;
mod routes;
pub mod session;
pub mod usage;
pub mod validate;
pub mod views;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::HeaderValue;
use rampart_crypto::apikey::KeyHasher;
use rampart_crypto::envelope::MasterKeys;
use rampart_crypto::jwt::JwtKeys;
use rampart_store::Store;

pub use error::ApiError;
pub use session::{Caller, LoginLimiter, RevokedJtis};

/// Something that caches identities derived from the store (the data plane's key directory) and
/// must reload after an admin write.
#[async_trait::async_trait]
pub trait IdentityCache: Send + Sync + std::fmt::Debug {
    /// Reload now; returns when the new state is in force on this instance.
    async fn invalidate(&self);
}

/// An [`IdentityCache`] that has nothing to reload (tests, or an admin-only process).
#[derive(Debug, Default)]
pub struct NoCache;

#[async_trait::async_trait]
impl IdentityCache for NoCache {
    async fn invalidate(&self) {}
}

/// Tunables of the admin plane.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_ttl: Duration,
    /// Origins allowed to call the API from a browser (exact match). Empty = no CORS.
    pub cors_origins: Vec<HeaderValue>,
    /// Send `Strict-Transport-Security` (when served behind HTTPS).
    pub hsts: bool,
    /// Failed logins allowed per account per window.
    pub login_failures_per_account: usize,
    /// Failed logins allowed per client address per window.
    pub login_failures_per_address: usize,
    /// The login-throttle window.
    pub login_window: Duration,
    /// The environment label in new keys (`rk_<env>_…`).
    pub key_env: String,
    /// Which team webhook URLs are accepted (`[webhooks]`).
    pub webhook_policy: rampart_webhooks::UrlPolicy,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            cors_origins: Vec::new(),
            hsts: false,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window: Duration::from_secs(15 * 60),
            key_env: "live".to_owned(),
            webhook_policy: rampart_webhooks::UrlPolicy::default(),
        }
    }
}

/// Everything the admin handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Store,
    jwt: JwtKeys,
    master: Arc<MasterKeys>,
    hasher: KeyHasher,
    cache: Arc<dyn IdentityCache>,
    settings: AdminSettings,
    revoked: RevokedJtis,
    limiter: LoginLimiter,
    setup_token: Mutex<Option<[u8; 32]>>,
}

impl AdminState {
    /// Assemble the state. `jwt` must issue tokens with `settings.access_ttl`.
    #[must_use]
    pub fn new(
        store: Store,
        jwt: JwtKeys,
        master: Arc<MasterKeys>,
        hasher: KeyHasher,
        cache: Arc<dyn IdentityCache>,
        settings: AdminSettings,
    ) -> Self {
        let limiter = LoginLimiter::new(
            settings.login_failures_per_account,
            settings.login_failures_per_address,
            settings.login_window,
        );
        AdminState(Arc::new(Inner {
            store,
            jwt,
            master,
            hasher,
            cache,
            settings,
            revoked: RevokedJtis::default(),
            limiter,
            setup_token: Mutex::new(None),
        }))
    }

    /// Arm the one-time setup token (its SHA-256 digest); `POST /admin/v1/setup` consumes it.
    pub fn arm_setup_token(&self, digest: [u8; 32]) {
        if let Ok(mut t) = self.0.setup_token.lock() {
            *t = Some(digest);
        }
    }

    /// Background upkeep until aborted: reload revoked token ids every second; purge expired
    /// revocations and refresh tokens hourly.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                if let Err(e) = state.revoked().refresh(state.store()).await {
                    tracing::warn!(error = %e, "revoked-token refresh failed");
                }
                if n.is_multiple_of(3600) {
                    let now = time::OffsetDateTime::now_utc();
                    let _ = state.store().purge_expired_jti(now).await;
                    let _ = state.store().purge_expired_refresh_tokens(now).await;
                }
                n += 1;
            }
        })
    }

    /// Reload the revoked-token cache now (what the upkeep task does every second).
    ///
    /// # Errors
    /// A store failure.
    pub async fn reload_revoked(&self) -> rampart_store::Result<()> {
        self.0.revoked.refresh(&self.0.store).await
    }

    pub(crate) fn store(&self) -> &Store {
        &self.0.store
    }
    pub(crate) fn jwt(&self) -> &JwtKeys {
        &self.0.jwt
    }
    /// The master keys (shared with the webhook dispatcher, which opens signing secrets).
    #[must_use]
    pub fn master_keys(&self) -> Arc<MasterKeys> {
        self.0.master.clone()
    }

    pub(crate) fn master(&self) -> &MasterKeys {
        &self.0.master
    }
    pub(crate) fn hasher(&self) -> &KeyHasher {
        &self.0.hasher
    }
    pub(crate) fn settings(&self) -> &AdminSettings {
        &self.0.settings
    }
    pub(crate) fn revoked(&self) -> &RevokedJtis {
        &self.0.revoked
    }
    pub(crate) fn limiter(&self) -> &LoginLimiter {
        &self.0.limiter
    }
    pub(crate) async fn invalidate(&self) {
        self.0.cache.invalidate().await;
    }
    pub(crate) fn take_setup_token(&self, presented: &str) -> bool {
        let Ok(mut slot) = self.0.setup_token.lock() else {
            return false;
        };
        match *slot {
            Some(d) if rampart_crypto::token::matches(presented, &d) => {
                *slot = None;
                true
            }
            _ => false,
        }
    }
    pub(crate) fn restore_setup_token(&self, presented: &str) {
        self.arm_setup_token(rampart_crypto::token::digest(presented));
    }
}

/// The admin plane's router: `/admin/v1/*`, `/admin/docs/`, `/openapi.json`. Unknown `/admin`
/// paths get the admin error shape; it has no catch-all fallback of its own, so it merges into
/// another router.
pub fn router(state: AdminState) -> axum::Router {
    routes::router(state)
}

/// The OpenAPI document (for tooling and tests).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::openapi()
}
