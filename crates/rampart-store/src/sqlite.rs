//! The SQLite engine: connection options, timestamp encoding, and the write-transaction rules.
//! The repository methods themselves are in `repo.rs`, compiled here with SQLite's types.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArgumentsBuffer, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
    SqliteSynchronous, SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Decode, Encode, Sqlite, Transaction, Type};

use crate::usage::UsageRecord;
use crate::{DbTime, Engine, MigrationReport, Result, StoreError};
use usage_writer::UsageWriter;

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

mod usage_writer;

type Db = Sqlite;
type EngineStore = SqliteStore;

/// How long a connection waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// The usage ledger's own connection (a database file only; see [`usage_writer`]).
    usage_writer: Option<Arc<UsageWriter>>,
}

impl SqliteStore {
    /// Open (and with `mode=rwc`, create) the database file at `url`: WAL journal, foreign keys
    /// on, synchronous NORMAL, a busy timeout.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a malformed URL, [`StoreError::Backend`] if it cannot be opened.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Invalid("malformed sqlite URL".to_owned()))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // sqlx names an in-memory database `file:sqlx-in-memory-N`, private to its pool.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let usage_writer =
            (!in_memory).then(|| Arc::new(UsageWriter::new(options.get_filename().to_owned())));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, usage_writer })
    }

    /// Usage records through the ledger's own connection ([`usage_writer`]): `None` for an
    /// in-memory database, where the repository's statements insert them instead.
    async fn insert_usage_direct(&self, records: &[UsageRecord]) -> Result<Option<u64>> {
        let Some(writer) = &self.usage_writer else {
            return Ok(None);
        };
        if records.is_empty() {
            return Ok(Some(0));
        }
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // Written from the borrowed records: the runtime hands this worker's other tasks to
            // another thread meanwhile. The copy a blocking-pool thread needs (five strings per
            // record, made and freed) was about 0.5 µs of CPU per request at 32 connections.
            return tokio::task::block_in_place(|| writer.write(records)).map(Some);
        }
        let (writer, records) = (writer.clone(), records.to_vec());
        tokio::task::spawn_blocking(move || writer.write(&records))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
            .map(Some)
    }

    /// Apply pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn migrate(&self) -> Result<MigrationReport> {
        crate::run_migrations(Engine::Sqlite, &self.pool).await
    }

    /// Close the pool.
    pub async fn close(&self) {
        if let Some(writer) = &self.usage_writer {
            writer.close();
        }
        self.pool.close().await;
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes SQLite's single write lock up front, so two
    /// writers queue on the busy timeout instead of failing when a read lock would be upgraded.
    async fn begin_write(&self) -> Result<Transaction<'static, Db>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// What a claim's item selection appends: nothing, the write transaction holds SQLite's only
/// write lock.
const CLAIM_SKIP_LOCKED: &str = "";
/// `usage_records` is keyed by `(at, id)` (migration 0010): the stored-record check looks pairs up.
const USAGE_KEYED_BY_TIME: bool = true;

/// Serialise batch claims. Nothing to do, as for [`lock_audit_chain`].
async fn lock_claims(_tx: &mut Transaction<'static, Db>) -> Result<()> {
    Ok(())
}

/// Serialise audit appends. Nothing to do: the write transaction already holds the database-wide
/// write lock, so no other append can read the chain head until this one commits.
async fn lock_audit_chain(_tx: &mut Transaction<'static, Db>) -> Result<()> {
    Ok(())
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(
        &self,
        buf: &mut SqliteArgumentsBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Encode::<Sqlite>::encode(self.micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        Ok(DbTime::from_micros(micros)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::UsageRepository;

    /// Migration 0010 rebuilds `usage_records` keyed by `(at, id)`: the records an older release
    /// wrote are all there after it, still count once, and new ones go in beside them.
    #[tokio::test]
    async fn usage_records_written_before_migration_10_survive_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        crate::migrator_up_to(Engine::Sqlite, 9)
            .run(&store.pool)
            .await
            .unwrap();
        let at = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let old = |n: u128| UsageRecord {
            id: uuid::Uuid::from_u128(n),
            at: at + time::Duration::seconds(n as i64),
            request_id: format!("req_{n}"),
            key_id: Some(uuid::Uuid::from_u128(7)),
            team_id: None,
            user_id: None,
            key_label: Some("k".to_owned()),
            endpoint: "/v1/messages".to_owned(),
            model_requested: Some("claude-sonnet-4-6".to_owned()),
            model_served: Some("claude-sonnet-4-6".to_owned()),
            status: 200,
            error_type: None,
            input_tokens: 10,
            output_tokens: 20,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            cost_micro_usd: 30,
            priced: true,
            latency_us: 1000,
            upstream_latency_us: Some(900),
            upstream_attempts: 1,
            streamed: false,
            cache_hit: false,
            client_aborted: false,
            saved_micro_usd: 0,
        };
        // As the older release inserted them: the checked insert of the repository.
        let mut tx = store.pool.begin().await.unwrap();
        assert_eq!(
            SqliteStore::insert_usage_in(&mut tx, &[old(1), old(2)])
                .await
                .unwrap(),
            2
        );
        tx.commit().await.unwrap();

        store.migrate().await.unwrap();
        let kept = store
            .list_usage_records(at, at + time::Duration::HOUR, 10)
            .await
            .unwrap();
        assert_eq!(kept, vec![old(1), old(2)]);
        // A replay counts nothing again; a new record goes in.
        assert_eq!(store.insert_usage(&[old(2), old(3)]).await.unwrap(), 1);
        let key: Vec<(i64, String)> = sqlx::query_as(
            "SELECT pk, name FROM pragma_table_info('usage_records') WHERE pk > 0 ORDER BY pk",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(key, vec![(1, "at".to_owned()), (2, "id".to_owned())]);
        store.close().await;
    }

    /// The retention purge finds its rows by the key: no chunk reads the whole table (it did, by
    /// an `id IN (...)` that is no prefix of `(at, id)`).
    #[tokio::test]
    async fn the_retention_purge_never_scans_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            usage_repo::PURGE_SQL
        )))
        .bind(0_i64)
        .bind(10_i64)
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let details: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, "detail").unwrap())
            .collect();
        assert!(!details.is_empty());
        assert!(
            details.iter().all(|d| !d.starts_with("SCAN usage_records")),
            "{details:?}"
        );
        store.close().await;
    }
}
