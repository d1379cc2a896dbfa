//! [`LimitsRepository`], written once and compiled once per engine (like `repo.rs`).

use async_trait::async_trait;
use sqlx::{Row, Transaction};
use uuid::Uuid;

use super::repo::{finish, insert_key};
use super::{Db, EngineStore};
use crate::error::{Result, StoreError};
use crate::limits::{
    AllLimits, BudgetPeriod, BudgetSetting, LimitSettings, LimitsRepository, TeamLimitSettings,
};
use crate::model::{ApiKey, NewApiKey, NewAuditEvent};
use crate::{DbTime, now};

type DbRow = <Db as sqlx::Database>::Row;
type Tx = Transaction<'static, Db>;

macro_rules! key_limit_cols {
    () => {
        "key_id, rpm, itpm, otpm, concurrency, budget_micros, budget_period"
    };
}
macro_rules! team_limit_cols {
    () => {
        "team_id, rpm, itpm, otpm, concurrency, budget_micros, budget_period, key_rpm, key_itpm, \
         key_otpm, key_concurrency, key_budget_micros, key_budget_period"
    };
}

fn to_db(v: Option<u64>) -> Option<i64> {
    // Values are validated to fit (see `LimitSettings::validate`).
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn from_db(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn settings(row: &DbRow, prefix: &str) -> Result<LimitSettings> {
    let col = |c: &str| format!("{prefix}{c}");
    let get = |c: &str| -> Result<Option<u64>> {
        Ok(from_db(row.try_get::<Option<i64>, _>(col(c).as_str())?))
    };
    let budget = match (
        get("budget_micros")?,
        row.try_get::<Option<String>, _>(col("budget_period").as_str())?,
    ) {
        (Some(micros), Some(period)) => Some(BudgetSetting {
            micros,
            period: period.parse::<BudgetPeriod>()?,
        }),
        _ => None,
    };
    Ok(LimitSettings {
        rpm: get("rpm")?,
        itpm: get("itpm")?,
        otpm: get("otpm")?,
        concurrency: get("concurrency")?,
        budget,
    })
}

async fn upsert_key_limits(tx: &mut Tx, key_id: Uuid, l: &LimitSettings) -> Result<()> {
    if l.is_empty() {
        sqlx::query("DELETE FROM key_limits WHERE key_id = $1")
            .bind(key_id)
            .execute(&mut **tx)
            .await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO key_limits (key_id, rpm, itpm, otpm, concurrency, budget_micros, \
         budget_period, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (key_id) DO UPDATE SET rpm = $2, itpm = $3, otpm = $4, concurrency = $5, \
         budget_micros = $6, budget_period = $7, updated_at = $8",
    )
    .bind(key_id)
    .bind(to_db(l.rpm))
    .bind(to_db(l.itpm))
    .bind(to_db(l.otpm))
    .bind(to_db(l.concurrency))
    .bind(to_db(l.budget.map(|b| b.micros)))
    .bind(l.budget.map(|b| b.period.as_str()))
    .bind(DbTime(now()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a row with `id` exists in `table` (a constant), inside the transaction.
async fn exists(tx: &mut Tx, sql: &'static str, id: Uuid) -> Result<bool> {
    Ok(sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

#[async_trait]
impl LimitsRepository for EngineStore {
    async fn key_limits(&self, key_id: Uuid) -> Result<LimitSettings> {
        let row = sqlx::query(concat!(
            "SELECT k.id AS id, ",
            "l.rpm, l.itpm, l.otpm, l.concurrency, l.budget_micros, l.budget_period ",
            "FROM api_keys k LEFT JOIN key_limits l ON l.key_id = k.id WHERE k.id = $1"
        ))
        .bind(key_id)
        .fetch_one(&self.pool)
        .await?;
        settings(&row, "")
    }

    async fn set_key_limits(
        &self,
        key_id: Uuid,
        limits: &LimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<LimitSettings> {
        limits.validate("")?;
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "SELECT id FROM api_keys WHERE id = $1", key_id).await? {
            return Err(StoreError::NotFound);
        }
        upsert_key_limits(&mut tx, key_id, limits).await?;
        finish(tx, audit, *limits).await
    }

    async fn team_limits(&self, team_id: Uuid) -> Result<TeamLimitSettings> {
        let row = sqlx::query(concat!(
            "SELECT t.id AS id, l.rpm, l.itpm, l.otpm, l.concurrency, l.budget_micros, ",
            "l.budget_period, l.key_rpm, l.key_itpm, l.key_otpm, l.key_concurrency, ",
            "l.key_budget_micros, l.key_budget_period ",
            "FROM teams t LEFT JOIN team_limits l ON l.team_id = t.id WHERE t.id = $1"
        ))
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(TeamLimitSettings {
            team: settings(&row, "")?,
            key_defaults: settings(&row, "key_")?,
        })
    }

    async fn set_team_limits(
        &self,
        team_id: Uuid,
        limits: &TeamLimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<TeamLimitSettings> {
        limits.team.validate("team")?;
        limits.key_defaults.validate("key_defaults")?;
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "SELECT id FROM teams WHERE id = $1", team_id).await? {
            return Err(StoreError::NotFound);
        }
        if limits.team.is_empty() && limits.key_defaults.is_empty() {
            sqlx::query("DELETE FROM team_limits WHERE team_id = $1")
                .bind(team_id)
                .execute(&mut *tx)
                .await?;
        } else {
            let (t, k) = (&limits.team, &limits.key_defaults);
            sqlx::query(
                "INSERT INTO team_limits (team_id, rpm, itpm, otpm, concurrency, budget_micros, \
                 budget_period, key_rpm, key_itpm, key_otpm, key_concurrency, key_budget_micros, \
                 key_budget_period, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (team_id) DO UPDATE SET rpm = $2, itpm = $3, otpm = $4, \
                 concurrency = $5, budget_micros = $6, budget_period = $7, key_rpm = $8, \
                 key_itpm = $9, key_otpm = $10, key_concurrency = $11, key_budget_micros = $12, \
                 key_budget_period = $13, updated_at = $14",
            )
            .bind(team_id)
            .bind(to_db(t.rpm))
            .bind(to_db(t.itpm))
            .bind(to_db(t.otpm))
            .bind(to_db(t.concurrency))
            .bind(to_db(t.budget.map(|b| b.micros)))
            .bind(t.budget.map(|b| b.period.as_str()))
            .bind(to_db(k.rpm))
            .bind(to_db(k.itpm))
            .bind(to_db(k.otpm))
            .bind(to_db(k.concurrency))
            .bind(to_db(k.budget.map(|b| b.micros)))
            .bind(k.budget.map(|b| b.period.as_str()))
            .bind(DbTime(now()))
            .execute(&mut *tx)
            .await?;
        }
        finish(tx, audit, *limits).await
    }

    async fn all_limits(&self) -> Result<AllLimits> {
        let keys = sqlx::query(concat!(
            "SELECT ",
            key_limit_cols!(),
            " FROM key_limits ORDER BY key_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("key_id")?, settings(row, "")?)))
        .collect::<Result<Vec<_>>>()?;
        let teams = sqlx::query(concat!(
            "SELECT ",
            team_limit_cols!(),
            " FROM team_limits ORDER BY team_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("team_id")?,
                TeamLimitSettings {
                    team: settings(row, "")?,
                    key_defaults: settings(row, "key_")?,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(AllLimits { keys, teams })
    }

    async fn directory_version(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT version FROM directory_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("version")?,
        )
    }

    async fn create_api_key_with_limits(
        &self,
        key: &NewApiKey,
        limits: &LimitSettings,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey> {
        limits.validate("limits")?;
        let mut tx = self.begin_write().await?;
        let created = insert_key(&mut tx, key, None).await?;
        upsert_key_limits(&mut tx, created.id, limits).await?;
        finish(tx, audit, created).await
    }
}
