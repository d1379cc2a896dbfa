//! Rampart's persistence: versioned migrations and one repository surface over two engines.
//!
//! - **SQLite** (the embedded default): a file `rampart.db` in the data directory, WAL journal,
//!   foreign keys on, a busy timeout. URL `sqlite://PATH?mode=rwc`; see [`sqlite_url`].
//! - **PostgreSQL** for several instances: `postgres://...` (usually from `RAMPART_DATABASE_URL`).
//!
//! [`Store::open`] picks the engine from the URL; [`Store::migrate`] applies the embedded,
//! versioned migrations (`migrations/<engine>/NNNN_name.sql`). Every repository method is on the
//! [`Repository`] trait, which [`SqliteStore`] and [`PgStore`] implement from a single source file
//! (`repo.rs`, compiled once per engine with that engine's types), so the two cannot drift apart.
//!
//! All SQL is static text with bind parameters. Callers hash and encrypt: the store keeps argon2
//! PHC strings, keyed API-key hashes, refresh-token hashes and AEAD ciphertexts opaque.
//!
//! Admin writes take an optional [`NewAuditEvent`] that is appended to the audit chain in the same
//! transaction as the change (see [`chain`] for the hash).

pub mod batches;
pub mod cache_policy;
pub mod chain;
pub mod error;
pub mod limits;
pub mod model;
mod postgres;
mod sqlite;
pub mod usage;
mod usage_rows;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub use batches::BatchRepository;
pub use cache_policy::{AllCachePolicies, CachePolicy, CachePolicyRepository};
pub use error::{Result, StoreError};
pub use limits::{
    AllLimits, BudgetPeriod, BudgetSetting, LimitField, LimitSettings, LimitsRepository,
    TeamLimitSettings, field_path,
};
pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use usage::{UsageGroupBy, UsageQuery, UsageRecord, UsageRepository, UsageRow};
pub use webhooks::WebhookRepository;

/// The file name of the embedded database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "rampart.db";

/// The URL of the embedded SQLite database in `data_dir` (created on first open).
pub fn sqlite_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join(SQLITE_FILE_NAME).display()
    )
}

/// Which database engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Engine {
    /// The engine a URL names: `sqlite:` or `postgres://` / `postgresql://`.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for any other scheme (the URL itself is not echoed).
    pub fn from_url(url: &str) -> Result<Engine> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err(StoreError::Invalid(
                "database URL must start with sqlite: or postgres://".to_owned(),
            ))
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Sqlite => "SQLite",
            Engine::Postgres => "PostgreSQL",
        })
    }
}

/// Everything the rest of Rampart reads from and writes to the database.
///
/// Methods that change admin state take `audit: Option<&NewAuditEvent>`: when given, the event
/// is appended to the audit chain in the same transaction, so either both happen or neither.
#[async_trait]
pub trait Repository: Send + Sync + std::fmt::Debug {
    // --- teams ---------------------------------------------------------------------------------

    /// Create a team.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the name is taken.
    async fn create_team(&self, name: &str, audit: Option<&NewAuditEvent>) -> Result<Team>;
    /// A team by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_team(&self, id: Uuid) -> Result<Team>;
    /// All teams, oldest first.
    async fn list_teams(&self) -> Result<Vec<Team>>;
    /// Rename a team.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Conflict`] if the name is taken.
    async fn rename_team(
        &self,
        id: Uuid,
        name: &str,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Team>;
    /// Disable or re-enable a team.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn set_team_disabled(
        &self,
        id: Uuid,
        disabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Team>;

    // --- users ---------------------------------------------------------------------------------

    /// Create a user.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the email is taken (ignoring ASCII case),
    /// [`StoreError::Invalid`] if the team does not exist.
    async fn create_user(&self, user: &NewUser, audit: Option<&NewAuditEvent>) -> Result<User>;
    /// A user by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_user(&self, id: Uuid) -> Result<User>;
    /// A user by email, ignoring ASCII case.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_user_by_email(&self, email: &str) -> Result<User>;
    /// Users, oldest first; only one team's when `team_id` is given.
    async fn list_users(&self, team_id: Option<Uuid>) -> Result<Vec<User>>;
    /// Change some fields of a user.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Conflict`], [`StoreError::Invalid`].
    async fn update_user(
        &self,
        id: Uuid,
        update: &UserUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<User>;
    /// Disable or re-enable a user.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn set_user_disabled(
        &self,
        id: Uuid,
        disabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<User>;

    // --- API keys ------------------------------------------------------------------------------

    /// Store a new key.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the hash exists, [`StoreError::Invalid`] for a missing team/user.
    async fn create_api_key(
        &self,
        key: &NewApiKey,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey>;
    /// A key by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_api_key(&self, id: Uuid) -> Result<ApiKey>;
    /// A key by its keyed hash (the authentication lookup).
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_api_key_by_hash(&self, key_hash: &[u8]) -> Result<ApiKey>;
    /// Keys, oldest first, narrowed by `filter`.
    async fn list_api_keys(&self, filter: ApiKeyFilter) -> Result<Vec<ApiKey>>;
    /// Change the label, scopes or expiry of a key.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn update_api_key(
        &self,
        id: Uuid,
        update: &ApiKeyUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey>;
    /// Disable or re-enable a key.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn set_api_key_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey>;
    /// Revoke a key for good; revoking twice keeps the first time.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn revoke_api_key(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey>;
    /// Replace key `old_id` by a new key (same team, user, name, scopes and expiry) with
    /// `prefix`/`key_hash`; the old key keeps working until `now + overlap` (or its own earlier
    /// expiry). Returns `(new, old)`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Invalid`] if the old key is revoked,
    /// [`StoreError::Conflict`] if the new hash exists.
    async fn rotate_api_key(
        &self,
        old_id: Uuid,
        prefix: &str,
        key_hash: &[u8],
        overlap: Duration,
        now: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<(ApiKey, ApiKey)>;
    /// Record key uses collected in memory, in one transaction; a time older than the stored one
    /// is ignored. Returns how many keys changed.
    async fn touch_api_keys_last_used(&self, uses: &[(Uuid, OffsetDateTime)]) -> Result<u64>;

    // --- upstream credentials ------------------------------------------------------------------

    /// Store an encrypted upstream credential.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the name is taken.
    async fn create_upstream_credential(
        &self,
        cred: &NewUpstreamCredential,
        audit: Option<&NewAuditEvent>,
    ) -> Result<UpstreamCredential>;
    /// A credential by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn get_upstream_credential(&self, id: Uuid) -> Result<UpstreamCredential>;
    /// All credentials, oldest first.
    async fn list_upstream_credentials(&self) -> Result<Vec<UpstreamCredential>>;
    /// Delete a credential.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn delete_upstream_credential(
        &self,
        id: Uuid,
        audit: Option<&NewAuditEvent>,
    ) -> Result<()>;
    /// Master-key rotation: replace ciphertexts in one transaction, all or nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if an id is missing, [`StoreError::Conflict`] if a row is no
    /// longer under `old_key_id` (someone else rotated it).
    async fn reencrypt_upstream_credentials(
        &self,
        batch: &[Reencrypted],
        audit: Option<&NewAuditEvent>,
    ) -> Result<u64>;

    // --- refresh tokens ------------------------------------------------------------------------

    /// Store a refresh token.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the hash exists, [`StoreError::Invalid`] for a missing user.
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<RefreshToken>;
    /// Spend a token atomically: of concurrent calls with one hash, exactly one gets
    /// [`SpendOutcome::Spent`].
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown hash.
    async fn spend_refresh_token(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<SpendOutcome>;
    /// Revoke every unrevoked token of a family. Returns how many were revoked.
    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        now: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<u64>;
    /// Delete tokens that expired before `now`. Returns how many.
    async fn purge_expired_refresh_tokens(&self, now: OffsetDateTime) -> Result<u64>;

    // --- revoked access tokens -----------------------------------------------------------------

    /// Revoke an access token by `jti` until `expires_at`; revoking twice is not an error.
    async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<()>;
    /// Revocations still in force at `now` (to fill the in-memory revocation cache).
    async fn list_revoked_jti(&self, now: OffsetDateTime) -> Result<Vec<RevokedJti>>;
    /// Delete revocations of tokens that have expired anyway. Returns how many.
    async fn purge_expired_jti(&self, now: OffsetDateTime) -> Result<u64>;

    // --- audit log -----------------------------------------------------------------------------

    /// Append an event to the chain; concurrent appends are serialised, never forked.
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent>;
    /// One page of events.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
    /// `(seq, hash)` of the newest event, to anchor the chain outside the database.
    async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>>;
    /// Walk the whole chain; `None` if it holds, else the first broken event.
    async fn verify_audit_chain(&self) -> Result<Option<ChainBreak>>;
}

/// A cheap, cloneable handle on an open database, whichever the engine.
/// Derefs to [`Repository`].
#[derive(Debug, Clone)]
pub struct Store {
    repo: Arc<dyn Repository>,
    engine: Engine,
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connect to the database at `url` (see the crate docs). Does not migrate.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for an unknown scheme or malformed URL, [`StoreError::Backend`] if
    /// the database cannot be opened.
    pub async fn open(url: &str) -> Result<Store> {
        Ok(match Engine::from_url(url)? {
            Engine::Sqlite => Store::from(SqliteStore::open(url).await?),
            Engine::Postgres => Store::from(PgStore::open(url).await?),
        })
    }

    /// Which engine this store talks to.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The usage ledger's records and rollups (see [`usage`]).
    pub fn usage(&self) -> &dyn UsageRepository {
        match &self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(p) => p,
        }
    }

    /// Caching policies per key and team (see [`cache_policy`]).
    pub fn cache_policies(&self) -> &dyn CachePolicyRepository {
        match &self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(p) => p,
        }
    }

    /// Limits and budgets per key and team (see [`limits`]).
    pub fn limits(&self) -> &dyn LimitsRepository {
        match &self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(p) => p,
        }
    }

    /// Message batches and the local queue (see [`batches`]).
    pub fn batches(&self) -> &dyn BatchRepository {
        match &self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(p) => p,
        }
    }

    /// Team webhooks and their delivery attempts (see [`webhooks`]).
    pub fn webhooks(&self) -> &dyn WebhookRepository {
        match &self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(p) => p,
        }
    }

    /// Apply the embedded migrations that have not been applied yet. Idempotent.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if a migration fails or an applied one was changed.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        match &self.inner {
            Inner::Sqlite(s) => s.migrate().await,
            Inner::Postgres(p) => p.migrate().await,
        }
    }

    /// Close every pooled connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        match &self.inner {
            Inner::Sqlite(s) => s.close().await,
            Inner::Postgres(p) => p.close().await,
        }
    }
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Self {
        Store {
            repo: Arc::new(s.clone()),
            engine: Engine::Sqlite,
            inner: Inner::Sqlite(s),
        }
    }
}

impl From<PgStore> for Store {
    fn from(p: PgStore) -> Self {
        Store {
            repo: Arc::new(p.clone()),
            engine: Engine::Postgres,
            inner: Inner::Postgres(p),
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Repository;

    fn deref(&self) -> &Self::Target {
        &*self.repo
    }
}

/// A timestamp as the engines store it: microseconds, UTC. Each engine module implements the sqlx
/// traits (SQLite: INTEGER microseconds since the epoch; PostgreSQL: `timestamptz`).
#[derive(Debug, Clone, Copy)]
struct DbTime(OffsetDateTime);

impl DbTime {
    fn micros(self) -> i64 {
        // i64 microseconds cover ±292,000 years; `time` cannot represent more than ±9999 years.
        i64::try_from(self.0.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
    }

    fn from_micros(m: i64) -> std::result::Result<DbTime, time::error::ComponentRange> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1000).map(DbTime)
    }
}

/// The current time at the precision the store keeps.
fn now() -> OffsetDateTime {
    truncate(OffsetDateTime::now_utc())
}

/// `t` in UTC, truncated to whole microseconds.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let micros = utc.microsecond();
    utc.replace_microsecond(micros).unwrap_or(utc)
}

/// The embedded migrations of one engine.
fn migrator(engine: Engine) -> sqlx::migrate::Migrator {
    migrator_up_to(engine, i64::MAX)
}

/// The embedded migrations of one engine up to version `last` (an older release's set, for
/// upgrade tests).
fn migrator_up_to(engine: Engine, last: i64) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let sources: &[(i64, &'static str, &'static str)] = match engine {
        Engine::Sqlite => &[
            (
                1,
                "identity",
                include_str!("../migrations/sqlite/0001_identity.sql"),
            ),
            (
                2,
                "sessions_valid_after",
                include_str!("../migrations/sqlite/0002_sessions_valid_after.sql"),
            ),
            (
                3,
                "limits",
                include_str!("../migrations/sqlite/0003_limits.sql"),
            ),
            (
                4,
                "usage_ledger",
                include_str!("../migrations/sqlite/0004_usage_ledger.sql"),
            ),
            (
                5,
                "usage_records_clustered",
                include_str!("../migrations/sqlite/0005_usage_records_clustered.sql"),
            ),
            (
                6,
                "cache_savings",
                include_str!("../migrations/sqlite/0006_cache_savings.sql"),
            ),
            (
                7,
                "batches",
                include_str!("../migrations/sqlite/0007_batches.sql"),
            ),
            (
                8,
                "webhooks",
                include_str!("../migrations/sqlite/0008_webhooks.sql"),
            ),
            (
                9,
                "cache_policies",
                include_str!("../migrations/sqlite/0009_cache_policies.sql"),
            ),
            (
                10,
                "usage_records_by_time",
                include_str!("../migrations/sqlite/0010_usage_records_by_time.sql"),
            ),
            (
                11,
                "batch_item_replays",
                include_str!("../migrations/sqlite/0011_batch_item_replays.sql"),
            ),
            (
                12,
                "upstream_item_models",
                include_str!("../migrations/sqlite/0012_upstream_item_models.sql"),
            ),
        ],
        Engine::Postgres => &[
            (
                1,
                "identity",
                include_str!("../migrations/postgres/0001_identity.sql"),
            ),
            (
                2,
                "sessions_valid_after",
                include_str!("../migrations/postgres/0002_sessions_valid_after.sql"),
            ),
            (
                3,
                "limits",
                include_str!("../migrations/postgres/0003_limits.sql"),
            ),
            (
                4,
                "usage_ledger",
                include_str!("../migrations/postgres/0004_usage_ledger.sql"),
            ),
            (
                5,
                "usage_records_clustered",
                include_str!("../migrations/postgres/0005_usage_records_clustered.sql"),
            ),
            (
                6,
                "cache_savings",
                include_str!("../migrations/postgres/0006_cache_savings.sql"),
            ),
            (
                7,
                "batches",
                include_str!("../migrations/postgres/0007_batches.sql"),
            ),
            (
                8,
                "webhooks",
                include_str!("../migrations/postgres/0008_webhooks.sql"),
            ),
            (
                9,
                "cache_policies",
                include_str!("../migrations/postgres/0009_cache_policies.sql"),
            ),
            // 10 is SQLite's alone (its usage_records rebuilt keyed by time).
            (
                11,
                "batch_item_replays",
                include_str!("../migrations/postgres/0011_batch_item_replays.sql"),
            ),
            (
                12,
                "upstream_item_models",
                include_str!("../migrations/postgres/0012_upstream_item_models.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        sources
            .iter()
            .filter(|&&(version, _, _)| version <= last)
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Run `migrator` on `pool`, reporting what it applied.
async fn run_migrations<DB>(engine: Engine, pool: &sqlx::Pool<DB>) -> Result<MigrationReport>
where
    DB: sqlx::Database,
    DB::Connection: sqlx::migrate::Migrate,
{
    use sqlx::migrate::Migrate;
    let migrator = migrator(engine);
    let applied_before: Vec<i64> = {
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table("_sqlx_migrations").await?;
        conn.list_applied_migrations("_sqlx_migrations")
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect()
    };
    migrator.run(pool).await?;
    let mut report = MigrationReport::default();
    for m in migrator.iter() {
        let entry = (m.version, m.description.to_string());
        if applied_before.contains(&m.version) {
            report.already_applied.push(entry);
        } else {
            report.applied_now.push(entry);
        }
    }
    Ok(report)
}
