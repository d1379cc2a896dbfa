//! [`BatchRepository`] for one engine: compiled once per engine like `repo.rs` (a `#[path]`
//! module of `sqlite.rs` and `postgres.rs`), with the same SQL text and binds on both. The one
//! difference is how claims lock: PostgreSQL serialises claimers with a transaction-scoped
//! advisory lock and skips rows other transactions hold (`FOR UPDATE SKIP LOCKED`); SQLite's
//! write transaction (`BEGIN IMMEDIATE`) already holds the database-wide write lock.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::repo::{finish, ts, ts_opt};
use super::{CLAIM_SKIP_LOCKED, Db, EngineStore, lock_claims};
use crate::DbTime;
use crate::batches::{
    Batch, BatchMode, BatchPage, BatchRepository, ClaimOptions, ClaimedItem, Completed, Completion,
    Cursor, DeadLetter, DeadLetterQuery, ItemModels, ItemResult, NewBatch, Outcome, UpstreamState,
};
use crate::error::{Result, StoreError};
use crate::model::NewAuditEvent;
use crate::usage::UsageRecord;

type DbRow = <Db as sqlx::Database>::Row;
type Tx = Transaction<'static, Db>;

macro_rules! batch_cols {
    () => {
        "id, owner, team_id, key_id, user_id, key_label, mode, processing_status, request_count, \
         succeeded_count, errored_count, canceled_count, expired_count, reserved_micro_usd, \
         created_at, expires_at, ended_at, cancel_initiated_at, archived_at, results_until"
    };
}

macro_rules! dead_letter_cols {
    () => {
        "id, batch_id, idx, custom_id, team_id, key_id, attempts, last_status, last_error, \
         created_at, replayed_at, replay_count"
    };
}

/// Items per INSERT statement (5 binds each... well under both engines' bind limits).
const ITEM_CHUNK: usize = 500;
/// Item models per INSERT statement (3 binds each: 6,000, under SQLite's 32,766 and
/// PostgreSQL's 65,535).
const MODEL_CHUNK: usize = 2000;
/// Largest page of batches.
const MAX_PAGE: u32 = 1000;
/// The result of an item that never ran.
const CANCELED: &str = r#"{"type":"canceled"}"#;
const EXPIRED: &str = r#"{"type":"expired"}"#;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A `message_batches` row (every column of `batch_cols!`); also read by the webhook queries.
pub(super) fn batch(row: &DbRow) -> Result<Batch> {
    let mode: String = row.try_get("mode")?;
    Ok(Batch {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        team_id: row.try_get("team_id")?,
        key_id: row.try_get("key_id")?,
        user_id: row.try_get("user_id")?,
        key_label: row.try_get("key_label")?,
        mode: BatchMode::parse(&mode)
            .ok_or_else(|| StoreError::Invalid("unknown batch mode".to_owned()))?,
        processing_status: row.try_get("processing_status")?,
        request_count: uint(row.try_get("request_count")?),
        succeeded: uint(row.try_get("succeeded_count")?),
        errored: uint(row.try_get("errored_count")?),
        canceled: uint(row.try_get("canceled_count")?),
        expired: uint(row.try_get("expired_count")?),
        reserved_micro_usd: uint(row.try_get("reserved_micro_usd")?),
        created_at: ts(row, "created_at")?,
        expires_at: ts(row, "expires_at")?,
        ended_at: ts_opt(row, "ended_at")?,
        cancel_initiated_at: ts_opt(row, "cancel_initiated_at")?,
        archived_at: ts_opt(row, "archived_at")?,
        results_until: ts(row, "results_until")?,
    })
}

fn dead_letter(row: &DbRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        idx: uint(row.try_get("idx")?),
        custom_id: row.try_get("custom_id")?,
        team_id: row.try_get("team_id")?,
        key_id: row.try_get("key_id")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        last_status: row
            .try_get::<Option<i64>, _>("last_status")?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error")?,
        created_at: ts(row, "created_at")?,
        replayed_at: ts_opt(row, "replayed_at")?,
        replay_count: u32::try_from(row.try_get::<i64, _>("replay_count")?).unwrap_or(u32::MAX),
    })
}

async fn dead_letter_by_id<'e, E>(e: E, id: Uuid) -> Result<DeadLetter>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    let row = sqlx::query(concat!(
        "SELECT ",
        dead_letter_cols!(),
        " FROM batch_dead_letters WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(e)
    .await?
    .ok_or(StoreError::NotFound)?;
    dead_letter(&row)
}

async fn get_in(tx: &mut Tx, id: &str) -> Result<Batch> {
    let row = sqlx::query(concat!(
        "SELECT ",
        batch_cols!(),
        " FROM message_batches WHERE id = $1"
    ))
    .bind(id.to_owned())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    batch(&row)
}

/// Add to a batch's counts.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    succeeded: i64,
    errored: i64,
    canceled: i64,
    expired: i64,
}

impl Delta {
    fn add(&mut self, state: &str, by: i64) {
        match state {
            "succeeded" => self.succeeded += by,
            "errored" => self.errored += by,
            "canceled" => self.canceled += by,
            "expired" => self.expired += by,
            _ => {}
        }
    }
}

/// Apply `delta` to batch `id`, and end it (with `ended_at`) when nothing is left unfinished.
/// Returns whether it ended now.
async fn count_and_maybe_end(
    tx: &mut Tx,
    id: &str,
    delta: Delta,
    now: OffsetDateTime,
) -> Result<bool> {
    sqlx::query(
        "UPDATE message_batches SET succeeded_count = succeeded_count + $1, \
         errored_count = errored_count + $2, canceled_count = canceled_count + $3, \
         expired_count = expired_count + $4 WHERE id = $5",
    )
    .bind(delta.succeeded)
    .bind(delta.errored)
    .bind(delta.canceled)
    .bind(delta.expired)
    .bind(id.to_owned())
    .execute(&mut **tx)
    .await?;
    end_if_done(tx, id, now).await
}

async fn end_if_done(tx: &mut Tx, id: &str, now: OffsetDateTime) -> Result<bool> {
    let ended = sqlx::query(
        "UPDATE message_batches SET processing_status = 'ended', ended_at = $1 \
         WHERE id = $2 AND processing_status <> 'ended' \
         AND succeeded_count + errored_count + canceled_count + expired_count >= request_count",
    )
    .bind(DbTime(now))
    .bind(id.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(ended.rows_affected() > 0)
}

/// Mark the unfinished, unstarted items of `id` (queued, or running with a lapsed lease) as
/// `state` with `result`; returns how many.
async fn close_unstarted(
    tx: &mut Tx,
    id: &str,
    state: &'static str,
    result: &'static str,
    now: OffsetDateTime,
) -> Result<i64> {
    let done = sqlx::query(
        "UPDATE batch_items SET state = $1, result = $2, counted_as = $1, completed_at = $3, \
         lease_until = NULL WHERE batch_id = $4 \
         AND (state = 'queued' OR (state = 'running' AND lease_until <= $3))",
    )
    .bind(state)
    .bind(result)
    .bind(DbTime(now))
    .bind(id.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
}

#[async_trait]
impl BatchRepository for EngineStore {
    async fn create_batch(&self, b: &NewBatch) -> Result<Batch> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO message_batches (id, owner, team_id, key_id, user_id, key_label, mode, \
             processing_status, request_count, reserved_micro_usd, created_at, expires_at, \
             results_until) VALUES ($1, $2, $3, $4, $5, $6, $7, 'in_progress', $8, $9, $10, $11, $12)",
        )
        .bind(b.id.clone())
        .bind(b.owner.clone())
        .bind(b.team_id)
        .bind(b.key_id)
        .bind(b.user_id)
        .bind(b.key_label.clone())
        .bind(b.mode.as_str())
        .bind(int(b.request_count))
        .bind(int(b.reserved_micro_usd))
        .bind(DbTime(b.created_at))
        .bind(DbTime(b.expires_at))
        .bind(DbTime(b.results_until))
        .execute(&mut *tx)
        .await?;
        let team_key = b.team_id.map(|t| t.to_string()).unwrap_or_default();
        let indexed: Vec<(usize, &crate::batches::NewBatchItem)> =
            b.items.iter().enumerate().collect();
        for chunk in indexed.chunks(ITEM_CHUNK) {
            let mut qb = QueryBuilder::<Db>::new(
                "INSERT INTO batch_items (batch_id, idx, custom_id, team_key, params, \
                 worst_micro_usd, state, not_before) ",
            );
            qb.push_values(chunk, |mut row, (idx, item)| {
                row.push_bind(b.id.clone())
                    .push_bind(i64::try_from(*idx).unwrap_or(i64::MAX))
                    .push_bind(item.custom_id.clone())
                    .push_bind(team_key.clone())
                    .push_bind(item.params.clone())
                    .push_bind(int(item.worst_micro_usd))
                    .push_bind("queued")
                    .push_bind(DbTime(b.created_at));
            });
            qb.build().execute(&mut *tx).await?;
        }
        // In the batch's transaction: never a batch without its models, nor models without it.
        let models: Vec<(&str, Option<&str>)> = b.item_models.rows().collect();
        for chunk in models.chunks(MODEL_CHUNK) {
            let mut qb = QueryBuilder::<Db>::new(
                "INSERT INTO upstream_item_models (batch_id, custom_id, model) ",
            );
            qb.push_values(chunk, |mut row, (custom_id, model)| {
                row.push_bind(b.id.clone())
                    .push_bind((*custom_id).to_owned())
                    .push_bind(model.map(str::to_owned));
            });
            qb.build().execute(&mut *tx).await?;
        }
        let created = get_in(&mut tx, &b.id).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_batch(&self, id: &str) -> Result<Batch> {
        let row = sqlx::query(concat!(
            "SELECT ",
            batch_cols!(),
            " FROM message_batches WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        batch(&row)
    }

    async fn list_batches(&self, owner: &str, cursor: &Cursor, limit: u32) -> Result<BatchPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let anchor = match cursor {
            Cursor::Start => None,
            Cursor::After(id) | Cursor::Before(id) => {
                let b = self.get_batch(id).await?;
                if b.owner != owner {
                    return Err(StoreError::NotFound);
                }
                Some((b.created_at, b.id))
            }
        };
        let mut qb = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            batch_cols!(),
            " FROM message_batches WHERE owner = "
        ));
        qb.push_bind(owner.to_owned());
        let newer = matches!(cursor, Cursor::Before(_));
        if let Some((at, id)) = anchor {
            qb.push(if newer {
                " AND (created_at > "
            } else {
                " AND (created_at < "
            })
            .push_bind(DbTime(at))
            .push(" OR (created_at = ")
            .push_bind(DbTime(at))
            .push(if newer { " AND id > " } else { " AND id < " })
            .push_bind(id)
            .push("))");
        }
        qb.push(if newer {
            " ORDER BY created_at ASC, id ASC LIMIT "
        } else {
            " ORDER BY created_at DESC, id DESC LIMIT "
        })
        .push_bind(i64::from(limit) + 1);
        let rows = qb.build().fetch_all(&self.pool).await?;
        let mut batches = rows.iter().map(batch).collect::<Result<Vec<_>>>()?;
        let has_more = batches.len() > limit as usize;
        batches.truncate(limit as usize);
        if newer {
            batches.reverse();
        }
        Ok(BatchPage { batches, has_more })
    }

    async fn cancel_batch(&self, id: &str, now: OffsetDateTime) -> Result<Batch> {
        let mut tx = self.begin_write().await?;
        let b = get_in(&mut tx, id).await?;
        if b.processing_status == "in_progress" {
            sqlx::query(
                "UPDATE message_batches SET processing_status = 'canceling', \
                 cancel_initiated_at = $1 WHERE id = $2",
            )
            .bind(DbTime(now))
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
            if b.mode == BatchMode::Local {
                let n = close_unstarted(&mut tx, id, "canceled", CANCELED, now).await?;
                let delta = Delta {
                    canceled: n,
                    ..Delta::default()
                };
                count_and_maybe_end(&mut tx, id, delta, now).await?;
            }
        }
        let b = get_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(b)
    }

    async fn delete_batch(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let b = get_in(&mut tx, id).await?;
        if b.processing_status != "ended" {
            return Err(StoreError::Invalid(
                "a batch can be deleted only after its processing has ended".to_owned(),
            ));
        }
        sqlx::query("DELETE FROM batch_items WHERE batch_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM message_batches WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn batch_results(&self, id: &str, from: u64, limit: u32) -> Result<Vec<ItemResult>> {
        sqlx::query(
            "SELECT idx, custom_id, result FROM batch_items WHERE batch_id = $1 AND idx >= $2 \
             ORDER BY idx LIMIT $3",
        )
        .bind(id.to_owned())
        .bind(int(from))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ItemResult {
                idx: uint(row.try_get("idx")?),
                custom_id: row.try_get("custom_id")?,
                result: row.try_get("result")?,
            })
        })
        .collect()
    }

    async fn claim_items(&self, o: &ClaimOptions) -> Result<Vec<ClaimedItem>> {
        if o.limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        lock_claims(&mut tx).await?;
        let now = DbTime(o.now);
        let running: HashMap<String, i64> = sqlx::query(
            "SELECT team_key, COUNT(*) AS n FROM batch_items \
             WHERE state = 'running' AND lease_until > $1 GROUP BY team_key",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("team_key")?, r.try_get::<i64, _>("n")?)))
        .collect::<Result<_>>()?;
        // Teams with work: those with a lapsed lease (few rows: running ones), and those with
        // queued items, found by index seeks (one per team) rather than a scan of the queue.
        let mut teams: Vec<String> = sqlx::query(
            "SELECT DISTINCT team_key FROM batch_items WHERE state = 'running' AND lease_until <= $1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("team_key"))
        .collect::<std::result::Result<_, _>>()?;
        let mut after: Option<String> = None;
        loop {
            let mut qb = QueryBuilder::<Db>::new(
                "SELECT MIN(team_key) AS t FROM batch_items WHERE state = 'queued'",
            );
            if let Some(a) = &after {
                qb.push(" AND team_key > ").push_bind(a.clone());
            }
            let next: Option<String> = qb.build().fetch_one(&mut *tx).await?.try_get("t")?;
            match next {
                Some(t) => {
                    if !teams.contains(&t) {
                        teams.push(t.clone());
                    }
                    after = Some(t);
                }
                None => break,
            }
        }
        teams.sort();
        // Round robin: the teams after the last one served come first.
        if let Some(after) = &o.after_team {
            let split = teams.partition_point(|t| t <= after);
            teams.rotate_left(split);
        }
        // Hand out the slots one at a time across teams with room.
        let mut quota: BTreeMap<usize, i64> = BTreeMap::new();
        let mut left = i64::from(o.limit);
        let per_team = i64::from(o.per_team.max(1));
        loop {
            let mut gave = false;
            for (i, team) in teams.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let q = quota.entry(i).or_default();
                if running.get(team).copied().unwrap_or(0) + *q < per_team {
                    *q += 1;
                    left -= 1;
                    gave = true;
                }
            }
            if !gave || left == 0 {
                break;
            }
        }
        let lease_until = DbTime(o.now + o.lease);
        let mut claimed = Vec::new();
        for (i, q) in quota {
            if q == 0 {
                continue;
            }
            // Lapsed leases first (their items may have run: flagged), then queued items in
            // arrival order; each an index range of the team.
            let mut left = q;
            for lapsed in [true, false] {
                if left <= 0 {
                    break;
                }
                let mut qb = QueryBuilder::<Db>::new(
                    "UPDATE batch_items SET state = 'running', attempts = attempts + 1, \
                     lease_until = ",
                );
                qb.push_bind(lease_until).push(if lapsed {
                    ", maybe_duplicate = TRUE WHERE (batch_id, idx) IN (SELECT batch_id, idx \
                     FROM batch_items WHERE state = 'running' AND team_key = "
                } else {
                    " WHERE (batch_id, idx) IN (SELECT batch_id, idx FROM batch_items \
                     WHERE state = 'queued' AND team_key = "
                });
                qb.push_bind(teams[i].clone());
                if !o.skip_batches.is_empty() {
                    qb.push(" AND batch_id NOT IN (");
                    let mut list = qb.separated(", ");
                    for id in &o.skip_batches {
                        list.push_bind(id.clone());
                    }
                    qb.push(")");
                }
                if lapsed {
                    qb.push(" AND lease_until <= ").push_bind(now);
                } else {
                    qb.push(" AND not_before <= ").push_bind(now);
                }
                qb.push(" ORDER BY not_before LIMIT ")
                    .push_bind(left)
                    .push(CLAIM_SKIP_LOCKED)
                    .push(
                        ") RETURNING batch_id, idx, custom_id, team_key, params, attempts, \
                         maybe_duplicate, worst_micro_usd, replays",
                    );
                for row in qb.build().fetch_all(&mut *tx).await? {
                    left -= 1;
                    claimed.push(ClaimedItem {
                        batch_id: row.try_get("batch_id")?,
                        idx: uint(row.try_get("idx")?),
                        custom_id: row.try_get("custom_id")?,
                        team_key: row.try_get("team_key")?,
                        params: row.try_get("params")?,
                        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?)
                            .unwrap_or(u32::MAX),
                        maybe_duplicate: row.try_get("maybe_duplicate")?,
                        worst_micro_usd: uint(row.try_get("worst_micro_usd")?),
                        replays: uint(row.try_get("replays")?),
                        team_id: None,
                        key_id: None,
                        user_id: None,
                        key_label: None,
                    });
                }
            }
        }
        if !claimed.is_empty() {
            let mut ids: Vec<String> = claimed.iter().map(|c| c.batch_id.clone()).collect();
            ids.sort();
            ids.dedup();
            let mut qb = QueryBuilder::<Db>::new(
                "SELECT id, team_id, key_id, user_id, key_label FROM message_batches WHERE id IN (",
            );
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            qb.push(")");
            let owners: HashMap<String, DbRow> = qb
                .build()
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get::<String, _>("id")?, r)))
                .collect::<Result<_>>()?;
            for c in &mut claimed {
                if let Some(r) = owners.get(&c.batch_id) {
                    c.team_id = r.try_get("team_id")?;
                    c.key_id = r.try_get("key_id")?;
                    c.user_id = r.try_get("user_id")?;
                    c.key_label = r.try_get("key_label")?;
                }
            }
        }
        tx.commit().await?;
        claimed.sort_by(|a, b| (&a.batch_id, a.idx).cmp(&(&b.batch_id, b.idx)));
        Ok(claimed)
    }

    async fn extend_leases(
        &self,
        claims: &[(String, u64, u32)],
        until: OffsetDateTime,
    ) -> Result<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for (batch_id, idx, attempt) in claims {
            n += sqlx::query(
                "UPDATE batch_items SET lease_until = $1 WHERE batch_id = $2 AND idx = $3 \
                 AND state = 'running' AND attempts = $4",
            )
            .bind(DbTime(until))
            .bind(batch_id.clone())
            .bind(int(*idx))
            .bind(i64::from(*attempt))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn complete_items(&self, done: &[Completion], now: OffsetDateTime) -> Result<Completed> {
        let mut out = Completed::default();
        if done.is_empty() {
            return Ok(out);
        }
        let mut tx = self.begin_write().await?;
        let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
        let mut records: Vec<UsageRecord> = Vec::new();
        let mut finished: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for c in done {
            let (state, result, error, not_before) = match &c.outcome {
                Outcome::Succeeded(r) => ("succeeded", Some(r.clone()), None, None),
                Outcome::Errored(r) => ("errored", Some(r.clone()), None, None),
                Outcome::DeadLetter { result, error, .. } => {
                    ("errored", Some(result.clone()), Some(error.clone()), None)
                }
                Outcome::Retry { not_before, error } => {
                    ("queued", None, Some(error.clone()), Some(*not_before))
                }
                Outcome::Deferred { not_before } => ("queued", None, None, Some(*not_before)),
            };
            // The claim is the fence: only the attempt that holds it may settle the item. A
            // finished item's earlier count (a replayed dead letter's) comes back unchanged.
            let counted: Option<Option<String>> = if state == "queued" {
                // A deferred item gives back the attempt it was claimed with (`$6` = 1) and
                // keeps its last error (`$2` NULL).
                let n = sqlx::query(
                    "UPDATE batch_items SET state = 'queued', lease_until = NULL, not_before = $1, \
                     last_error = COALESCE($2, last_error), attempts = attempts - $6 \
                     WHERE batch_id = $3 AND idx = $4 AND state = 'running' AND attempts = $5",
                )
                .bind(DbTime(not_before.unwrap_or(now)))
                .bind(error.clone())
                .bind(c.batch_id.clone())
                .bind(int(c.idx))
                .bind(i64::from(c.attempt))
                .bind(i64::from(matches!(c.outcome, Outcome::Deferred { .. })))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (n > 0).then_some(None)
            } else {
                sqlx::query(
                    "UPDATE batch_items SET state = $1, result = $2, lease_until = NULL, \
                     completed_at = $3, last_error = COALESCE($4, last_error) \
                     WHERE batch_id = $5 AND idx = $6 AND state = 'running' AND attempts = $7 \
                     RETURNING counted_as",
                )
                .bind(state)
                .bind(result)
                .bind(DbTime(now))
                .bind(error.clone())
                .bind(c.batch_id.clone())
                .bind(int(c.idx))
                .bind(i64::from(c.attempt))
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<Option<String>, _>("counted_as"))
                .transpose()?
            };
            let Some(counted) = counted else {
                out.applied.push(false);
                continue;
            };
            out.applied.push(true);
            if state == "queued" {
                continue;
            }
            finished.entry(c.batch_id.clone()).or_default().push(c.idx);
            let d = deltas.entry(c.batch_id.clone()).or_default();
            d.add(state, 1);
            if let Some(old) = counted {
                d.add(&old, -1);
            }
            if let Outcome::DeadLetter { status, error, .. } = &c.outcome {
                sqlx::query(concat!(
                    "INSERT INTO batch_dead_letters (",
                    dead_letter_cols!(),
                    ") SELECT $1, i.batch_id, i.idx, i.custom_id, b.team_id, b.key_id, \
                     i.attempts, $2, $3, $4, NULL, 0 FROM batch_items i \
                     JOIN message_batches b ON b.id = i.batch_id \
                     WHERE i.batch_id = $5 AND i.idx = $6"
                ))
                .bind(Uuid::now_v7())
                .bind(status.map(i64::from))
                .bind(error.clone())
                .bind(DbTime(now))
                .bind(c.batch_id.clone())
                .bind(int(c.idx))
                .execute(&mut *tx)
                .await?;
            }
            if let Some(r) = &c.usage {
                records.push(r.clone());
            }
        }
        // Each finished item now counts under its state (one statement per batch).
        for (batch_id, idxs) in &finished {
            for chunk in idxs.chunks(ITEM_CHUNK) {
                let mut qb = QueryBuilder::<Db>::new(
                    "UPDATE batch_items SET counted_as = state WHERE batch_id = ",
                );
                qb.push_bind(batch_id.clone()).push(" AND idx IN (");
                let mut list = qb.separated(", ");
                for idx in chunk {
                    list.push_bind(int(*idx));
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
        }
        out.usage_inserted = EngineStore::insert_usage_in(&mut tx, &records).await?;
        for (id, delta) in deltas {
            if count_and_maybe_end(&mut tx, &id, delta, now).await? {
                out.ended.push(id);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn expire_batches(&self, now: OffsetDateTime) -> Result<Vec<String>> {
        let due: Vec<String> = sqlx::query(
            "SELECT id FROM message_batches WHERE processing_status <> 'ended' \
             AND mode = 'local' AND expires_at <= $1",
        )
        .bind(DbTime(now))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<std::result::Result<_, _>>()?;
        let mut ended = Vec::new();
        for id in due {
            let mut tx = self.begin_write().await?;
            let n = close_unstarted(&mut tx, &id, "expired", EXPIRED, now).await?;
            let delta = Delta {
                expired: n,
                ..Delta::default()
            };
            if count_and_maybe_end(&mut tx, &id, delta, now).await? {
                ended.push(id);
            }
            tx.commit().await?;
        }
        Ok(ended)
    }

    async fn archive_batches(&self, now: OffsetDateTime) -> Result<u64> {
        let due: Vec<String> = sqlx::query(
            "SELECT id FROM message_batches WHERE archived_at IS NULL \
             AND processing_status = 'ended' AND results_until <= $1",
        )
        .bind(DbTime(now))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<std::result::Result<_, _>>()?;
        let mut n = 0;
        for id in due {
            let mut tx = self.begin_write().await?;
            sqlx::query("DELETE FROM batch_items WHERE batch_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE message_batches SET archived_at = $1 WHERE id = $2")
                .bind(DbTime(now))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n += 1;
        }
        Ok(n)
    }

    async fn open_upstream_batches(&self, limit: u32) -> Result<Vec<Batch>> {
        sqlx::query(concat!(
            "SELECT ",
            batch_cols!(),
            " FROM message_batches WHERE mode = 'upstream' AND processing_status <> 'ended' \
             ORDER BY upstream_synced_at IS NOT NULL, upstream_synced_at, created_at LIMIT $1"
        ))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(batch)
        .collect()
    }

    async fn sync_upstream_batch(
        &self,
        id: &str,
        s: &UpstreamState,
        now: OffsetDateTime,
    ) -> Result<()> {
        // While not ended, everything still counts as processing (as the API reports it).
        let status = if s.processing_status == "ended" {
            "in_progress"
        } else {
            s.processing_status.as_str()
        };
        sqlx::query(
            "UPDATE message_batches SET processing_status = $1, \
             cancel_initiated_at = COALESCE(cancel_initiated_at, $2), upstream_synced_at = $3 \
             WHERE id = $4 AND processing_status <> 'ended'",
        )
        .bind(status.to_owned())
        .bind(s.cancel_initiated_at.map(DbTime))
        .bind(DbTime(now))
        .bind(id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn item_models(&self, id: &str) -> Result<ItemModels> {
        let rows =
            sqlx::query("SELECT custom_id, model FROM upstream_item_models WHERE batch_id = $1")
                .bind(id.to_owned())
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("custom_id")?, row.try_get("model")?)))
                .collect::<Result<Vec<(String, Option<String>)>>>()?;
        Ok(ItemModels::from_rows(rows))
    }

    async fn end_upstream_batch(
        &self,
        id: &str,
        s: &UpstreamState,
        usage: &[UsageRecord],
        now: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let ended = sqlx::query(
            "UPDATE message_batches SET processing_status = 'ended', ended_at = $1, \
             succeeded_count = $2, errored_count = $3, canceled_count = $4, expired_count = $5, \
             request_count = $6, cancel_initiated_at = COALESCE(cancel_initiated_at, $7), \
             upstream_synced_at = $1 WHERE id = $8 AND processing_status <> 'ended'",
        )
        .bind(DbTime(now))
        .bind(int(s.succeeded))
        .bind(int(s.errored))
        .bind(int(s.canceled))
        .bind(int(s.expired))
        .bind(int(s.succeeded + s.errored + s.canceled + s.expired))
        .bind(s.cancel_initiated_at.map(DbTime))
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if ended {
            EngineStore::insert_usage_in(&mut tx, usage).await?;
            // Read only to write these records: kept no longer than the batch is open.
            sqlx::query("DELETE FROM upstream_item_models WHERE batch_id = $1")
                .bind(id.to_owned())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    async fn list_dead_letters(&self, q: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        let mut qb = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            dead_letter_cols!(),
            " FROM batch_dead_letters WHERE 1 = 1"
        ));
        if let Some(b) = &q.batch_id {
            qb.push(" AND batch_id = ").push_bind(b.clone());
        }
        if let Some(t) = q.team_id {
            qb.push(" AND team_id = ").push_bind(t);
        }
        if let Some(after) = q.after {
            qb.push(" AND id > ").push_bind(after);
        }
        qb.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(q.limit.clamp(1, MAX_PAGE)));
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dead_letter)
            .collect()
    }

    async fn get_dead_letter(&self, id: Uuid) -> Result<DeadLetter> {
        dead_letter_by_id(&self.pool, id).await
    }

    async fn replay_dead_letter(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        audit: Option<&NewAuditEvent>,
    ) -> Result<DeadLetter> {
        let mut tx = self.begin_write().await?;
        let dl = dead_letter_by_id(&mut *tx, id).await?;
        let queued = sqlx::query(
            "UPDATE batch_items SET state = 'queued', attempts = 0, not_before = $1, \
             lease_until = NULL, maybe_duplicate = FALSE, replays = replays + 1 \
             WHERE batch_id = $2 AND idx = $3 AND state = 'errored'",
        )
        .bind(DbTime(now))
        .bind(dl.batch_id.clone())
        .bind(int(dl.idx))
        .execute(&mut *tx)
        .await?;
        if queued.rows_affected() == 0 {
            let exists =
                sqlx::query("SELECT 1 AS one FROM batch_items WHERE batch_id = $1 AND idx = $2")
                    .bind(dl.batch_id.clone())
                    .bind(int(dl.idx))
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
            return Err(if exists {
                StoreError::Invalid("the item is not errored (already replayed?)".to_owned())
            } else {
                StoreError::NotFound
            });
        }
        sqlx::query(
            "UPDATE batch_dead_letters SET replayed_at = $1, replay_count = replay_count + 1 \
             WHERE id = $2",
        )
        .bind(DbTime(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let dl = dead_letter_by_id(&mut *tx, id).await?;
        finish(tx, audit, dl).await
    }
}
