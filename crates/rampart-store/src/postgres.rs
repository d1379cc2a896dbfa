//! The PostgreSQL engine: connection pool, timestamp encoding, and the audit-chain lock.
//! The repository methods themselves are in `repo.rs`, compiled here with PostgreSQL's types.

use std::time::Duration;

use sqlx::postgres::{PgArgumentBuffer, PgPoolOptions, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Transaction, Type};
use time::OffsetDateTime;

use crate::usage::UsageRecord;
use crate::{DbTime, Engine, MigrationReport, Result};

#[allow(
    clippy::duplicate_mod,
    reason = "repo.rs is compiled once per engine on purpose: one source, two sets of types"
)]
#[path = "repo.rs"]
mod repo;

#[allow(
    clippy::duplicate_mod,
    reason = "limits_repo.rs is compiled once per engine on purpose, like repo.rs"
)]
#[path = "limits_repo.rs"]
mod limits_repo;

#[allow(
    clippy::duplicate_mod,
    reason = "usage_repo.rs is compiled once per engine on purpose, like repo.rs"
)]
#[path = "usage_repo.rs"]
mod usage_repo;

#[allow(
    clippy::duplicate_mod,
    reason = "cache_policy_repo.rs is compiled once per engine on purpose, like repo.rs"
)]
#[path = "cache_policy_repo.rs"]
mod cache_policy_repo;

#[allow(
    clippy::duplicate_mod,
    reason = "webhooks_repo.rs is compiled once per engine on purpose, like repo.rs"
)]
#[path = "webhooks_repo.rs"]
mod webhooks_repo;

#[allow(
    clippy::duplicate_mod,
    reason = "batches_repo.rs is compiled once per engine on purpose, like repo.rs"
)]
#[path = "batches_repo.rs"]
mod batches_repo;

type Db = Postgres;
type EngineStore = PgStore;

/// Key of the transaction-scoped advisory lock that serialises audit appends ("rampaudt").
const AUDIT_LOCK_KEY: i64 = 0x7261_6d70_6175_6474;

/// Key of the transaction-scoped advisory lock that serialises batch claims ("rampclam"), so
/// per-team concurrency counts are exact across instances.
const CLAIM_LOCK_KEY: i64 = 0x7261_6d70_636c_616d;

/// What a claim's item selection appends: rows another transaction holds are skipped.
const CLAIM_SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
/// `usage_records` is keyed by `id` (with an index on `at`): the stored-record check looks ids up.
const USAGE_KEYED_BY_TIME: bool = false;

/// Serialise batch claims across instances until the transaction ends.
async fn lock_claims(tx: &mut Transaction<'static, Db>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLAIM_LOCK_KEY)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
}

impl PgStore {
    /// Connect a pool to `url`.
    ///
    /// # Errors
    /// [`crate::StoreError::Invalid`] for a malformed URL, [`crate::StoreError::Backend`] if the
    /// server cannot be reached.
    pub async fn open(url: &str) -> Result<PgStore> {
        let options: sqlx::postgres::PgConnectOptions = url
            .parse()
            .map_err(|_| crate::StoreError::Invalid("malformed postgres URL".to_owned()))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    /// Apply pending migrations (sqlx holds an advisory lock, so concurrent instances are safe).
    ///
    /// # Errors
    /// [`crate::StoreError::Backend`].
    pub async fn migrate(&self) -> Result<MigrationReport> {
        crate::run_migrations(Engine::Postgres, &self.pool).await
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction (READ COMMITTED; row locks and constraints do the rest).
    async fn begin_write(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.pool.begin().await?)
    }

    /// PostgreSQL has no direct usage writer (see SQLite's): the repository's statements run.
    #[allow(
        clippy::unused_async,
        reason = "the same call as SQLite's, which awaits its writer thread"
    )]
    async fn insert_usage_direct(&self, _records: &[UsageRecord]) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// Serialise audit appends with a transaction-scoped advisory lock: held until commit or
/// rollback, so the next appender reads the head only after this one's row is visible. (A
/// `SELECT ... FOR UPDATE` on the head row would not cover the empty table.)
async fn lock_audit_chain(tx: &mut Transaction<'static, Db>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK_KEY)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <OffsetDateTime as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Encode::<Postgres>::encode(crate::truncate(self.0), buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        Ok(DbTime(<OffsetDateTime as Decode<Postgres>>::decode(value)?))
    }
}
