//! The repository methods, written once and compiled once per engine.
//!
//! This file is a module of both `sqlite.rs` and `postgres.rs` (via `#[path]`); `super::Db`,
//! `super::EngineStore`, `EngineStore::begin_write` and `super::lock_audit_chain` resolve to that
//! engine's items, so every query below runs on both engines with the same text and binds. SQLite
//! accepts PostgreSQL's `$N` placeholders, and both schemas have the same tables, columns and
//! constraint names; only column types differ, which the sqlx type mapping hides (see `DbTime`).

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{Row, Transaction};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{Db, EngineStore, lock_audit_chain};
use crate::chain::{GENESIS, Link};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::{DbTime, Repository, now, truncate};

type DbRow = <Db as sqlx::Database>::Row;
type Tx = Transaction<'static, Db>;

macro_rules! team_cols {
    () => {
        "id, name, disabled, created_at"
    };
}
macro_rules! user_cols {
    () => {
        "id, email, password_hash, role, team_id, disabled, created_at, updated_at, \
         sessions_valid_after"
    };
}
macro_rules! key_cols {
    () => {
        "id, team_id, user_id, name, prefix, key_hash, allowed_models, allowed_endpoints, \
         expires_at, enabled, created_at, last_used_at, rotated_from, revoked_at"
    };
}
macro_rules! cred_cols {
    () => {
        "id, name, ciphertext, nonce, key_id, created_at, updated_at"
    };
}
macro_rules! token_cols {
    () => {
        "id, family_id, user_id, token_hash, issued_at, expires_at, spent_at, revoked_at"
    };
}
macro_rules! audit_cols {
    () => {
        "seq, at, actor, action, target, outcome, client_addr, request_id, details, prev_hash, hash"
    };
}

/// Largest page [`Repository::list_audit`] returns.
const MAX_AUDIT_PAGE: u32 = 1000;
/// Rows read per round trip while verifying the chain.
const VERIFY_PAGE: i64 = 1000;

#[async_trait]
impl Repository for EngineStore {
    // --- teams ---------------------------------------------------------------------------------

    async fn create_team(&self, name: &str, audit: Option<&NewAuditEvent>) -> Result<Team> {
        non_empty("team name", name)?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "INSERT INTO teams (id, name, disabled, created_at) VALUES ($1, $2, $3, $4) RETURNING ",
            team_cols!()
        ))
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(false)
        .bind(DbTime(now()))
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, team(&row)?).await
    }

    async fn get_team(&self, id: Uuid) -> Result<Team> {
        let row = sqlx::query(concat!(
            "SELECT ",
            team_cols!(),
            " FROM teams WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        team(&row)
    }

    async fn list_teams(&self) -> Result<Vec<Team>> {
        sqlx::query(concat!("SELECT ", team_cols!(), " FROM teams ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(team)
            .collect()
    }

    async fn rename_team(
        &self,
        id: Uuid,
        name: &str,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Team> {
        non_empty("team name", name)?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE teams SET name = $2 WHERE id = $1 RETURNING ",
            team_cols!()
        ))
        .bind(id)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, team(&row)?).await
    }

    async fn set_team_disabled(
        &self,
        id: Uuid,
        disabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Team> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE teams SET disabled = $2 WHERE id = $1 RETURNING ",
            team_cols!()
        ))
        .bind(id)
        .bind(disabled)
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, team(&row)?).await
    }

    // --- users ---------------------------------------------------------------------------------

    async fn create_user(&self, new: &NewUser, audit: Option<&NewAuditEvent>) -> Result<User> {
        non_empty("email", &new.email)?;
        non_empty("password hash", &new.password_hash)?;
        let at = DbTime(now());
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "INSERT INTO users (id, email, password_hash, role, team_id, disabled, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ",
            user_cols!()
        ))
        .bind(Uuid::now_v7())
        .bind(&new.email)
        .bind(&new.password_hash)
        .bind(new.role.as_str())
        .bind(new.team_id)
        .bind(false)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, user(&row)?).await
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        user(&row)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<User> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE lower(email) = lower($1)"
        ))
        .bind(email)
        .fetch_one(&self.pool)
        .await?;
        user(&row)
    }

    async fn list_users(&self, team_id: Option<Uuid>) -> Result<Vec<User>> {
        sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE ($1 IS NULL OR team_id = $1) ORDER BY id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user)
        .collect()
    }

    async fn update_user(
        &self,
        id: Uuid,
        update: &UserUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<User> {
        if let Some(email) = &update.email {
            non_empty("email", email)?;
        }
        if let Some(hash) = &update.password_hash {
            non_empty("password hash", hash)?;
        }
        let at = now();
        let new_password = update.password_hash.is_some();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE users SET email = COALESCE($2, email), \
             password_hash = COALESCE($3, password_hash), role = COALESCE($4, role), \
             team_id = CASE WHEN $5 THEN $6 ELSE team_id END, updated_at = $7, \
             sessions_valid_after = CASE WHEN $8 THEN $7 ELSE sessions_valid_after END \
             WHERE id = $1 RETURNING ",
            user_cols!()
        ))
        .bind(id)
        .bind(update.email.as_deref())
        .bind(update.password_hash.as_deref())
        .bind(update.role.map(Role::as_str))
        .bind(update.team_id.is_some())
        .bind(update.team_id.flatten())
        .bind(DbTime(at))
        .bind(new_password)
        .fetch_one(&mut *tx)
        .await?;
        if new_password {
            revoke_user_refresh_tokens(&mut tx, id, at).await?;
        }
        finish(tx, audit, user(&row)?).await
    }

    async fn set_user_disabled(
        &self,
        id: Uuid,
        disabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<User> {
        let at = now();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE users SET disabled = $2, updated_at = $3, \
             sessions_valid_after = CASE WHEN $2 THEN $3 ELSE sessions_valid_after END \
             WHERE id = $1 RETURNING ",
            user_cols!()
        ))
        .bind(id)
        .bind(disabled)
        .bind(DbTime(at))
        .fetch_one(&mut *tx)
        .await?;
        if disabled {
            revoke_user_refresh_tokens(&mut tx, id, at).await?;
        }
        finish(tx, audit, user(&row)?).await
    }

    // --- API keys ------------------------------------------------------------------------------

    async fn create_api_key(
        &self,
        new: &NewApiKey,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey> {
        let mut tx = self.begin_write().await?;
        let key = insert_key(&mut tx, new, None).await?;
        finish(tx, audit, key).await
    }

    async fn get_api_key(&self, id: Uuid) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        api_key(&row)
    }

    async fn get_api_key_by_hash(&self, key_hash: &[u8]) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_one(&self.pool)
        .await?;
        api_key(&row)
    }

    async fn list_api_keys(&self, filter: ApiKeyFilter) -> Result<Vec<ApiKey>> {
        sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE ($1 IS NULL OR team_id = $1) AND ($2 IS NULL OR user_id = $2) \
             ORDER BY id"
        ))
        .bind(filter.team_id)
        .bind(filter.user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_key)
        .collect()
    }

    async fn update_api_key(
        &self,
        id: Uuid,
        update: &ApiKeyUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey> {
        if let Some(name) = &update.name {
            non_empty("key name", name)?;
        }
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET name = COALESCE($2, name), \
             allowed_models = COALESCE($3, allowed_models), \
             allowed_endpoints = COALESCE($4, allowed_endpoints), \
             expires_at = CASE WHEN $5 THEN $6 ELSE expires_at END \
             WHERE id = $1 RETURNING ",
            key_cols!()
        ))
        .bind(id)
        .bind(update.name.as_deref())
        .bind(update.allowed_models.as_ref().map(Json))
        .bind(update.allowed_endpoints.as_ref().map(Json))
        .bind(update.expires_at.is_some())
        .bind(update.expires_at.flatten().map(DbTime))
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, api_key(&row)?).await
    }

    async fn set_api_key_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET enabled = $2 WHERE id = $1 RETURNING ",
            key_cols!()
        ))
        .bind(id)
        .bind(enabled)
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, api_key(&row)?).await
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<ApiKey> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
            key_cols!()
        ))
        .bind(id)
        .bind(DbTime(at))
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, api_key(&row)?).await
    }

    async fn rotate_api_key(
        &self,
        old_id: Uuid,
        prefix: &str,
        key_hash: &[u8],
        overlap: Duration,
        at: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<(ApiKey, ApiKey)> {
        if overlap.is_negative() {
            return Err(StoreError::Invalid(
                "overlap must not be negative".to_owned(),
            ));
        }
        let mut tx = self.begin_write().await?;
        let old_row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE id = $1"
        ))
        .bind(old_id)
        .fetch_one(&mut *tx)
        .await?;
        let old = api_key(&old_row)?;
        if old.revoked_at.is_some() {
            return Err(StoreError::Invalid(
                "a revoked key cannot be rotated".to_owned(),
            ));
        }
        let replacement = NewApiKey {
            team_id: old.team_id,
            user_id: old.user_id,
            name: old.name.clone(),
            prefix: prefix.to_owned(),
            key_hash: key_hash.to_vec(),
            allowed_models: old.allowed_models.clone(),
            allowed_endpoints: old.allowed_endpoints.clone(),
            expires_at: old.expires_at,
        };
        let new = insert_key(&mut tx, &replacement, Some(old.id)).await?;
        // The successor keeps the old key's own limits (see `crate::limits`).
        sqlx::query(
            "INSERT INTO key_limits (key_id, rpm, itpm, otpm, concurrency, budget_micros, \
             budget_period, updated_at) SELECT $1, rpm, itpm, otpm, concurrency, budget_micros, \
             budget_period, updated_at FROM key_limits WHERE key_id = $2",
        )
        .bind(new.id)
        .bind(old.id)
        .execute(&mut *tx)
        .await?;
        let overlap_end = at.saturating_add(overlap);
        let old_row = sqlx::query(concat!(
            "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $2 \
             THEN $2 ELSE expires_at END WHERE id = $1 RETURNING ",
            key_cols!()
        ))
        .bind(old_id)
        .bind(DbTime(overlap_end))
        .fetch_one(&mut *tx)
        .await?;
        let old = api_key(&old_row)?;
        finish(tx, audit, (new, old)).await
    }

    async fn touch_api_keys_last_used(&self, uses: &[(Uuid, OffsetDateTime)]) -> Result<u64> {
        if uses.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut changed = 0;
        for (id, at) in uses {
            changed += sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(DbTime(*at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    // --- upstream credentials ------------------------------------------------------------------

    async fn create_upstream_credential(
        &self,
        new: &NewUpstreamCredential,
        audit: Option<&NewAuditEvent>,
    ) -> Result<UpstreamCredential> {
        non_empty("credential name", &new.name)?;
        let at = DbTime(now());
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "INSERT INTO upstream_credentials (id, name, ciphertext, nonce, key_id, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ",
            cred_cols!()
        ))
        .bind(Uuid::now_v7())
        .bind(&new.name)
        .bind(&new.ciphertext)
        .bind(&new.nonce)
        .bind(&new.key_id)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        finish(tx, audit, credential(&row)?).await
    }

    async fn get_upstream_credential(&self, id: Uuid) -> Result<UpstreamCredential> {
        let row = sqlx::query(concat!(
            "SELECT ",
            cred_cols!(),
            " FROM upstream_credentials WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        credential(&row)
    }

    async fn list_upstream_credentials(&self) -> Result<Vec<UpstreamCredential>> {
        sqlx::query(concat!(
            "SELECT ",
            cred_cols!(),
            " FROM upstream_credentials ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(credential)
        .collect()
    }

    async fn delete_upstream_credential(
        &self,
        id: Uuid,
        audit: Option<&NewAuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM upstream_credentials WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        finish(tx, audit, ()).await
    }

    async fn reencrypt_upstream_credentials(
        &self,
        batch: &[Reencrypted],
        audit: Option<&NewAuditEvent>,
    ) -> Result<u64> {
        let at = DbTime(now());
        let mut tx = self.begin_write().await?;
        for item in batch {
            let updated = sqlx::query(
                "UPDATE upstream_credentials SET ciphertext = $2, nonce = $3, key_id = $4, \
                 updated_at = $5 WHERE id = $1 AND key_id = $6",
            )
            .bind(item.id)
            .bind(&item.ciphertext)
            .bind(&item.nonce)
            .bind(&item.key_id)
            .bind(at)
            .bind(&item.old_key_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                let exists = sqlx::query("SELECT id FROM upstream_credentials WHERE id = $1")
                    .bind(item.id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                return Err(if exists {
                    StoreError::Conflict {
                        what: "upstream credential master key id",
                    }
                } else {
                    StoreError::NotFound
                });
            }
        }
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        finish(tx, audit, count).await
    }

    // --- refresh tokens ------------------------------------------------------------------------

    async fn insert_refresh_token(&self, new: &NewRefreshToken) -> Result<RefreshToken> {
        let row = sqlx::query(concat!(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, issued_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            token_cols!()
        ))
        .bind(Uuid::now_v7())
        .bind(new.family_id)
        .bind(new.user_id)
        .bind(&new.token_hash)
        .bind(DbTime(now()))
        .bind(DbTime(new.expires_at))
        .fetch_one(&self.pool)
        .await?;
        refresh_token(&row)
    }

    async fn spend_refresh_token(
        &self,
        token_hash: &[u8],
        at: OffsetDateTime,
    ) -> Result<SpendOutcome> {
        // One statement: the row lock (PostgreSQL) or the write lock (SQLite) lets exactly one
        // of concurrent spenders see `spent_at IS NULL`.
        let spent = sqlx::query(concat!(
            "UPDATE refresh_tokens SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL \
             AND revoked_at IS NULL AND expires_at > $2 RETURNING ",
            token_cols!()
        ))
        .bind(token_hash)
        .bind(DbTime(at))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = spent {
            return Ok(SpendOutcome::Spent(refresh_token(&row)?));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM refresh_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?;
        let token = refresh_token(&row)?;
        Ok(if token.revoked_at.is_some() {
            SpendOutcome::Revoked(token)
        } else if token.spent_at.is_some() {
            SpendOutcome::AlreadySpent(token)
        } else {
            SpendOutcome::Expired(token)
        })
    }

    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        at: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(DbTime(at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        finish(tx, audit, revoked).await
    }

    async fn purge_expired_refresh_tokens(&self, at: OffsetDateTime) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1")
                .bind(DbTime(at))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // --- revoked access tokens -----------------------------------------------------------------

    async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<()> {
        non_empty("jti", jti)?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO revoked_jti (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO UPDATE \
             SET expires_at = CASE WHEN excluded.expires_at > revoked_jti.expires_at \
             THEN excluded.expires_at ELSE revoked_jti.expires_at END",
        )
        .bind(jti)
        .bind(DbTime(expires_at))
        .execute(&mut *tx)
        .await?;
        finish(tx, audit, ()).await
    }

    async fn list_revoked_jti(&self, at: OffsetDateTime) -> Result<Vec<RevokedJti>> {
        sqlx::query("SELECT jti, expires_at FROM revoked_jti WHERE expires_at > $1 ORDER BY jti")
            .bind(DbTime(at))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(RevokedJti {
                    jti: row.try_get("jti")?,
                    expires_at: ts(row, "expires_at")?,
                })
            })
            .collect()
    }

    async fn purge_expired_jti(&self, at: OffsetDateTime) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM revoked_jti WHERE expires_at <= $1")
                .bind(DbTime(at))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // --- audit log -----------------------------------------------------------------------------

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent> {
        let mut tx = self.begin_write().await?;
        let appended = append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(appended)
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = match q.limit {
            0 => 100,
            n => n.min(MAX_AUDIT_PAGE),
        };
        let sql = if q.newest_first {
            concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
                 AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
                 AND ($5 IS NULL OR seq < $5) ORDER BY seq DESC LIMIT $6"
            )
        } else {
            concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
                 AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
                 AND ($5 IS NULL OR seq > $5) ORDER BY seq ASC LIMIT $6"
            )
        };
        sqlx::query(sql)
            .bind(q.actor.as_deref())
            .bind(q.action.as_deref())
            .bind(q.since.map(DbTime))
            .bind(q.until.map(DbTime))
            .bind(q.cursor)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_event)
            .collect()
    }

    async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    async fn verify_audit_chain(&self) -> Result<Option<ChainBreak>> {
        let mut prev_seq = 0_i64;
        let mut prev_hash = GENESIS.to_vec();
        loop {
            let rows = sqlx::query(concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(prev_seq)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            for row in &rows {
                let ev = audit_event(row)?;
                let broken = |reason| {
                    Ok(Some(ChainBreak {
                        seq: ev.seq,
                        reason,
                    }))
                };
                if ev.seq != prev_seq + 1 {
                    return broken(BreakReason::SeqGap);
                }
                if ev.prev_hash != prev_hash {
                    return broken(BreakReason::PrevHashMismatch);
                }
                if link(&ev).hash().as_slice() != ev.hash.as_slice() {
                    return broken(BreakReason::HashMismatch);
                }
                prev_seq = ev.seq;
                prev_hash = ev.hash;
            }
        }
    }
}

/// Append the audit event (if any) inside `tx`, commit, and hand back `value`.
pub(super) async fn finish<T>(mut tx: Tx, audit: Option<&NewAuditEvent>, value: T) -> Result<T> {
    if let Some(event) = audit {
        append_in(&mut tx, event).await?;
    }
    tx.commit().await?;
    Ok(value)
}

/// Append one event to the chain inside `tx`, holding the engine's audit lock until commit.
async fn append_in(tx: &mut Tx, event: &NewAuditEvent) -> Result<AuditEvent> {
    lock_audit_chain(tx).await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, prev_hash) = match head {
        Some(row) => (row.try_get::<i64, _>("seq")? + 1, row.try_get("hash")?),
        None => (1, GENESIS.to_vec()),
    };
    let details = serde_json::to_string(&event.details)
        .map_err(|_| StoreError::Invalid("audit details are not serialisable".to_owned()))?;
    let mut appended = AuditEvent {
        seq,
        at: now(),
        actor: event.actor.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        outcome: event.outcome,
        client_addr: event.client_addr.clone(),
        request_id: event.request_id.clone(),
        details,
        prev_hash,
        hash: Vec::new(),
    };
    appended.hash = link(&appended).hash().to_vec();
    sqlx::query(concat!(
        "INSERT INTO audit_log (",
        audit_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(appended.seq)
    .bind(DbTime(appended.at))
    .bind(&appended.actor)
    .bind(&appended.action)
    .bind(&appended.target)
    .bind(appended.outcome.as_str())
    .bind(appended.client_addr.as_deref())
    .bind(appended.request_id.as_deref())
    .bind(&appended.details)
    .bind(&appended.prev_hash)
    .bind(&appended.hash)
    .execute(&mut **tx)
    .await?;
    Ok(appended)
}

/// The hashed view of a stored event.
fn link(ev: &AuditEvent) -> Link<'_> {
    Link {
        prev_hash: &ev.prev_hash,
        seq: ev.seq,
        at_micros: DbTime(ev.at).micros(),
        actor: &ev.actor,
        action: &ev.action,
        target: &ev.target,
        outcome: ev.outcome.as_str(),
        client_addr: ev.client_addr.as_deref(),
        request_id: ev.request_id.as_deref(),
        details: &ev.details,
    }
}

/// Revoke every live refresh token of a user (password changed, user disabled).
async fn revoke_user_refresh_tokens(tx: &mut Tx, user_id: Uuid, at: OffsetDateTime) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(DbTime(at))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

pub(super) async fn insert_key(
    tx: &mut Tx,
    new: &NewApiKey,
    rotated_from: Option<Uuid>,
) -> Result<ApiKey> {
    non_empty("key name", &new.name)?;
    non_empty("key prefix", &new.prefix)?;
    if new.key_hash.is_empty() {
        return Err(StoreError::Invalid("key hash must not be empty".to_owned()));
    }
    let row = sqlx::query(concat!(
        "INSERT INTO api_keys (id, team_id, user_id, name, prefix, key_hash, allowed_models, \
         allowed_endpoints, expires_at, enabled, created_at, rotated_from) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
        key_cols!()
    ))
    .bind(Uuid::now_v7())
    .bind(new.team_id)
    .bind(new.user_id)
    .bind(&new.name)
    .bind(&new.prefix)
    .bind(&new.key_hash)
    .bind(Json(&new.allowed_models))
    .bind(Json(&new.allowed_endpoints))
    .bind(new.expires_at.map(DbTime))
    .bind(true)
    .bind(DbTime(now()))
    .bind(rotated_from)
    .fetch_one(&mut **tx)
    .await?;
    api_key(&row)
}

fn non_empty(what: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(StoreError::Invalid(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

// --- row mapping -------------------------------------------------------------------------------

pub(super) fn ts(row: &DbRow, col: &str) -> Result<OffsetDateTime> {
    Ok(truncate(row.try_get::<DbTime, _>(col)?.0))
}

pub(super) fn ts_opt(row: &DbRow, col: &str) -> Result<Option<OffsetDateTime>> {
    Ok(row
        .try_get::<Option<DbTime>, _>(col)?
        .map(|t| truncate(t.0)))
}

fn team(row: &DbRow) -> Result<Team> {
    Ok(Team {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        disabled: row.try_get("disabled")?,
        created_at: ts(row, "created_at")?,
    })
}

fn user(row: &DbRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        role: row.try_get::<String, _>("role")?.parse()?,
        team_id: row.try_get("team_id")?,
        disabled: row.try_get("disabled")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
        sessions_valid_after: ts_opt(row, "sessions_valid_after")?,
    })
}

fn api_key(row: &DbRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        team_id: row.try_get("team_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        allowed_models: row.try_get::<Json<Vec<String>>, _>("allowed_models")?.0,
        allowed_endpoints: row.try_get::<Json<Vec<String>>, _>("allowed_endpoints")?.0,
        expires_at: ts_opt(row, "expires_at")?,
        enabled: row.try_get("enabled")?,
        created_at: ts(row, "created_at")?,
        last_used_at: ts_opt(row, "last_used_at")?,
        rotated_from: row.try_get("rotated_from")?,
        revoked_at: ts_opt(row, "revoked_at")?,
    })
}

fn credential(row: &DbRow) -> Result<UpstreamCredential> {
    Ok(UpstreamCredential {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        ciphertext: row.try_get("ciphertext")?,
        nonce: row.try_get("nonce")?,
        key_id: row.try_get("key_id")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn refresh_token(row: &DbRow) -> Result<RefreshToken> {
    Ok(RefreshToken {
        id: row.try_get("id")?,
        family_id: row.try_get("family_id")?,
        user_id: row.try_get("user_id")?,
        token_hash: row.try_get("token_hash")?,
        issued_at: ts(row, "issued_at")?,
        expires_at: ts(row, "expires_at")?,
        spent_at: ts_opt(row, "spent_at")?,
        revoked_at: ts_opt(row, "revoked_at")?,
    })
}

fn audit_event(row: &DbRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        seq: row.try_get("seq")?,
        at: ts(row, "at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get::<String, _>("outcome")?.parse()?,
        client_addr: row.try_get("client_addr")?,
        request_id: row.try_get("request_id")?,
        details: row.try_get("details")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}
