//! [`CachePolicyRepository`], written once and compiled once per engine (like `repo.rs`).

use async_trait::async_trait;
use sqlx::{Row, Transaction};
use uuid::Uuid;

use super::repo::finish;
use super::{Db, EngineStore};
use crate::cache_policy::{AllCachePolicies, CachePolicy, CachePolicyRepository};
use crate::error::{Result, StoreError};
use crate::model::NewAuditEvent;
use crate::{DbTime, now};

type DbRow = <Db as sqlx::Database>::Row;
type Tx = Transaction<'static, Db>;

/// The scope column's value for a key or a team (constants, never user input).
const KEY: &str = "key";
const TEAM: &str = "team";

fn policy(row: &DbRow) -> Result<CachePolicy> {
    Ok(CachePolicy {
        response_enabled: row.try_get("response_enabled")?,
        ttl_secs: row
            .try_get::<Option<i64>, _>("ttl_secs")?
            .and_then(|v| u64::try_from(v).ok()),
        breakpoints_enabled: row.try_get("breakpoints_enabled")?,
    })
}

/// The policy of `id` in `scope`, after checking with `owner_sql` (a constant) that its key or
/// team exists.
async fn read(
    pool: &sqlx::Pool<Db>,
    owner_sql: &'static str,
    scope: &'static str,
    id: Uuid,
) -> Result<CachePolicy> {
    if sqlx::query(owner_sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound);
    }
    let row = sqlx::query(
        "SELECT response_enabled, ttl_secs, breakpoints_enabled FROM cache_policies \
         WHERE scope = $1 AND scope_id = $2",
    )
    .bind(scope)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map_or(Ok(CachePolicy::default()), policy)
}

/// Replace the policy of `scope_id` in `scope` (an empty policy deletes the row).
async fn write(
    mut tx: Tx,
    owner_sql: &'static str,
    scope: &'static str,
    id: Uuid,
    p: &CachePolicy,
    audit: Option<&NewAuditEvent>,
) -> Result<CachePolicy> {
    p.validate()?;
    if sqlx::query(owner_sql)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound);
    }
    if p.is_empty() {
        sqlx::query("DELETE FROM cache_policies WHERE scope = $1 AND scope_id = $2")
            .bind(scope)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO cache_policies (scope, scope_id, response_enabled, ttl_secs, \
             breakpoints_enabled, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (scope, scope_id) DO UPDATE SET response_enabled = $3, ttl_secs = $4, \
             breakpoints_enabled = $5, updated_at = $6",
        )
        .bind(scope)
        .bind(id)
        .bind(p.response_enabled)
        // Validated to fit.
        .bind(p.ttl_secs.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
        .bind(p.breakpoints_enabled)
        .bind(DbTime(now()))
        .execute(&mut *tx)
        .await?;
    }
    finish(tx, audit, *p).await
}

const KEY_EXISTS: &str = "SELECT id FROM api_keys WHERE id = $1";
const TEAM_EXISTS: &str = "SELECT id FROM teams WHERE id = $1";

#[async_trait]
impl CachePolicyRepository for EngineStore {
    async fn key_cache_policy(&self, key_id: Uuid) -> Result<CachePolicy> {
        read(&self.pool, KEY_EXISTS, KEY, key_id).await
    }

    async fn set_key_cache_policy(
        &self,
        key_id: Uuid,
        policy: &CachePolicy,
        audit: Option<&NewAuditEvent>,
    ) -> Result<CachePolicy> {
        let tx = self.begin_write().await?;
        write(tx, KEY_EXISTS, KEY, key_id, policy, audit).await
    }

    async fn team_cache_policy(&self, team_id: Uuid) -> Result<CachePolicy> {
        read(&self.pool, TEAM_EXISTS, TEAM, team_id).await
    }

    async fn set_team_cache_policy(
        &self,
        team_id: Uuid,
        policy: &CachePolicy,
        audit: Option<&NewAuditEvent>,
    ) -> Result<CachePolicy> {
        let tx = self.begin_write().await?;
        write(tx, TEAM_EXISTS, TEAM, team_id, policy, audit).await
    }

    async fn all_cache_policies(&self) -> Result<AllCachePolicies> {
        let mut all = AllCachePolicies::default();
        let rows = sqlx::query(
            "SELECT scope, scope_id, response_enabled, ttl_secs, breakpoints_enabled \
             FROM cache_policies ORDER BY scope, scope_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let entry = (row.try_get::<Uuid, _>("scope_id")?, policy(row)?);
            match row.try_get::<String, _>("scope")?.as_str() {
                KEY => all.keys.push(entry),
                _ => all.teams.push(entry),
            }
        }
        Ok(all)
    }
}
