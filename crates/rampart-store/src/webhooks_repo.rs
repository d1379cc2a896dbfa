//! [`WebhookRepository`], written once and compiled once per engine (like `repo.rs`).

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::batches_repo::batch;
use super::repo::finish;
use super::{Db, EngineStore};
use crate::error::{Result, StoreError};
use crate::model::NewAuditEvent;
use crate::webhooks::{
    AttemptOutcome, DueWebhook, SealedSecret, TeamWebhook, WebhookDelivery, WebhookRepository,
    WebhookWrite,
};
use crate::{DbTime, now, truncate};

type DbRow = <Db as sqlx::Database>::Row;

macro_rules! webhook_cols {
    () => {
        "team_id, url, secret_ciphertext, secret_nonce, secret_key_id, enabled, created_at, \
         updated_at"
    };
}

macro_rules! delivery_cols {
    () => {
        "id, team_id, batch_id, attempt, url, attempted_at, finished_at, status_code, error, \
         next_attempt_at, delivered"
    };
}

fn time(row: &DbRow, col: &str) -> Result<OffsetDateTime> {
    Ok(row.try_get::<DbTime, _>(col)?.0)
}

fn opt_time(row: &DbRow, col: &str) -> Result<Option<OffsetDateTime>> {
    Ok(row.try_get::<Option<DbTime>, _>(col)?.map(|t| t.0))
}

fn sealed(row: &DbRow) -> Result<SealedSecret> {
    Ok(SealedSecret {
        ciphertext: row.try_get("secret_ciphertext")?,
        nonce: row.try_get("secret_nonce")?,
        key_id: row.try_get("secret_key_id")?,
    })
}

fn webhook(row: &DbRow) -> Result<TeamWebhook> {
    Ok(TeamWebhook {
        team_id: row.try_get("team_id")?,
        url: row.try_get("url")?,
        secret: sealed(row)?,
        enabled: row.try_get("enabled")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn delivery(row: &DbRow) -> Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        team_id: row.try_get("team_id")?,
        batch_id: row.try_get("batch_id")?,
        attempt: u32::try_from(row.try_get::<i32, _>("attempt")?).unwrap_or(0),
        url: row.try_get("url")?,
        attempted_at: time(row, "attempted_at")?,
        finished_at: opt_time(row, "finished_at")?,
        status_code: row
            .try_get::<Option<i32>, _>("status_code")?
            .and_then(|s| u16::try_from(s).ok()),
        error: row.try_get("error")?,
        next_attempt_at: opt_time(row, "next_attempt_at")?,
        delivered: row.try_get("delivered")?,
    })
}

#[async_trait]
impl WebhookRepository for EngineStore {
    async fn put_team_webhook(
        &self,
        write: &WebhookWrite,
        audit: Option<&NewAuditEvent>,
    ) -> Result<(TeamWebhook, bool)> {
        let at = now();
        let mut tx = self.begin_write().await?;
        if sqlx::query("SELECT id FROM teams WHERE id = $1")
            .bind(write.team_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound);
        }
        let existing = sqlx::query(concat!(
            "SELECT ",
            webhook_cols!(),
            " FROM team_webhooks WHERE team_id = $1"
        ))
        .bind(write.team_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| webhook(&r))
        .transpose()?;
        let (secret, created_at, created) = match (existing, &write.secret) {
            (Some(old), None) => (old.secret, old.created_at, false),
            (Some(old), Some(new)) => (new.clone(), old.created_at, false),
            (None, Some(new)) => (new.clone(), at, true),
            (None, None) => {
                return Err(StoreError::Invalid(
                    "a new webhook needs a signing secret".to_owned(),
                ));
            }
        };
        sqlx::query(concat!(
            "INSERT INTO team_webhooks (",
            webhook_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (team_id) DO UPDATE SET \
             url = $2, secret_ciphertext = $3, secret_nonce = $4, secret_key_id = $5, \
             enabled = $6, updated_at = $8"
        ))
        .bind(write.team_id)
        .bind(&write.url)
        .bind(&secret.ciphertext)
        .bind(&secret.nonce)
        .bind(&secret.key_id)
        .bind(write.enabled)
        .bind(DbTime(created_at))
        .bind(DbTime(at))
        .execute(&mut *tx)
        .await?;
        let saved = TeamWebhook {
            team_id: write.team_id,
            url: write.url.clone(),
            secret,
            enabled: write.enabled,
            created_at,
            updated_at: at,
        };
        finish(tx, audit, (saved, created)).await
    }

    async fn get_team_webhook(&self, team_id: Uuid) -> Result<TeamWebhook> {
        let row = sqlx::query(concat!(
            "SELECT ",
            webhook_cols!(),
            " FROM team_webhooks WHERE team_id = $1"
        ))
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        webhook(&row)
    }

    async fn delete_team_webhook(
        &self,
        team_id: Uuid,
        audit: Option<&NewAuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM team_webhooks WHERE team_id = $1")
            .bind(team_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound);
        }
        finish(tx, audit, ()).await
    }

    async fn list_webhook_deliveries(
        &self,
        team_id: Uuid,
        batch_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_cols!(),
            " FROM webhook_deliveries WHERE team_id = $1 AND ($2 IS NULL OR batch_id = $2) \
             ORDER BY attempted_at DESC, attempt DESC LIMIT $3"
        ))
        .bind(team_id)
        .bind(batch_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery).collect()
    }

    async fn due_webhooks(
        &self,
        now: OffsetDateTime,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<DueWebhook>> {
        // The batches (all their columns, for `batches_repo::batch`) joined to what is due:
        // the due part's columns are named apart from message_batches' own.
        let rows = sqlx::query(
            "SELECT id, owner, team_id, key_id, user_id, key_label, mode, processing_status, \
             request_count, succeeded_count, errored_count, canceled_count, expired_count, \
             reserved_micro_usd, created_at, expires_at, ended_at, cancel_initiated_at, \
             archived_at, results_until, \
             due.hook_team, due.hook_url, due.hook_ciphertext, due.hook_nonce, due.hook_key_id, \
             due.last_attempt \
             FROM message_batches JOIN ( \
               SELECT b.id AS due_batch, w.team_id AS hook_team, w.url AS hook_url, \
               w.secret_ciphertext AS hook_ciphertext, w.secret_nonce AS hook_nonce, \
               w.secret_key_id AS hook_key_id, \
               CAST(COALESCE(MAX(d.attempt), 0) AS BIGINT) AS last_attempt \
               FROM message_batches b \
               JOIN team_webhooks w ON w.team_id = b.team_id \
               LEFT JOIN webhook_deliveries d ON d.team_id = b.team_id AND d.batch_id = b.id \
               WHERE w.enabled = $1 AND b.ended_at IS NOT NULL AND b.ended_at >= w.created_at \
               GROUP BY b.id, w.team_id \
               HAVING COUNT(CASE WHEN d.delivered = $1 THEN 1 END) = 0 \
               AND COALESCE(MAX(d.attempt), 0) < $2 \
               AND (COUNT(d.id) = 0 OR MAX(d.next_attempt_at) <= $3) \
             ) due ON due.due_batch = message_batches.id \
             ORDER BY ended_at, id LIMIT $4",
        )
        .bind(true)
        .bind(i64::from(max_attempts))
        .bind(DbTime(truncate(now)))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let last: i64 = row.try_get("last_attempt")?;
                Ok(DueWebhook {
                    team_id: row.try_get("hook_team")?,
                    batch: batch(row)?,
                    url: row.try_get("hook_url")?,
                    secret: SealedSecret {
                        ciphertext: row.try_get("hook_ciphertext")?,
                        nonce: row.try_get("hook_nonce")?,
                        key_id: row.try_get("hook_key_id")?,
                    },
                    attempt: u32::try_from(last + 1).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn claim_webhook_attempt(
        &self,
        due: &DueWebhook,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> Result<Option<Uuid>> {
        let id = Uuid::now_v7();
        let attempt = i32::try_from(due.attempt)
            .map_err(|_| StoreError::Invalid("attempt number out of range".to_owned()))?;
        let claimed = sqlx::query(concat!(
            "INSERT INTO webhook_deliveries (",
            delivery_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $8) \
             ON CONFLICT (team_id, batch_id, attempt) DO NOTHING"
        ))
        .bind(id)
        .bind(due.team_id)
        .bind(&due.batch.id)
        .bind(attempt)
        .bind(&due.url)
        .bind(DbTime(truncate(now)))
        .bind(DbTime(truncate(lease_until)))
        .bind(false)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((claimed == 1).then_some(id))
    }

    async fn finish_webhook_attempt(&self, id: Uuid, outcome: &AttemptOutcome) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET finished_at = $2, status_code = $3, error = $4, \
             next_attempt_at = $5, delivered = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(DbTime(truncate(outcome.finished_at)))
        .bind(outcome.status_code.map(i32::from))
        .bind(outcome.error.as_deref())
        .bind(outcome.next_attempt_at.map(|t| DbTime(truncate(t))))
        .bind(outcome.delivered)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
