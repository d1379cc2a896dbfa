//! [`UsageRepository`] for one engine: compiled once per engine like `repo.rs` (a `#[path]`
//! module of `sqlite.rs` and `postgres.rs`), with the same SQL text and binds on both.
//!
//! A batch is cut into statements of a few fixed sizes, so the prepared-statement cache serves
//! them ([`fixed_chunks`]), and checked for ids already stored (one `SELECT … WHERE id IN (…)`
//! per chunk, which finds nothing unless a spool is being replayed); the new records are
//! inserted with multi-row `INSERT`s, and only those are summed (in memory, one row per rollup
//! key) and upserted into `usage_rollups` with `ON CONFLICT … DO UPDATE SET x = x + excluded.x`,
//! all in one transaction.
//!
//! A SQLite database file takes the ledger's batches through its own connection instead
//! (`sqlite/usage_writer.rs`, same result): these statements then serve PostgreSQL, an
//! in-memory SQLite database, and a batch item's record written in the transaction that settles
//! the item (`insert_usage_in`).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use sqlx::{Arguments as _, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Db, EngineStore};
use crate::DbTime;
use crate::error::{Result, StoreError};
use crate::usage::{UsageGroupBy, UsageQuery, UsageRecord, UsageRepository, UsageRow};
use crate::usage_rows::{
    DAY, HOUR, RECORD_BINDS, ROLLUP_BINDS, ROLLUP_INSERT, ROLLUP_UPSERT, RollupKey, Sums, int,
    record_cols, rollup_deltas, storable,
};

type DbRow = <Db as sqlx::Database>::Row;

/// Records per INSERT statement (26 binds each, well under both engines' bind limits).
const RECORD_CHUNK: usize = 400;
/// Rollup rows per upsert statement (15 binds each).
const ROLLUP_CHUNK: usize = 1000;
/// The row counts of a statement below its chunk size: a batch is cut into statements of these
/// sizes only, so their text repeats and the connection's prepared-statement cache serves them
/// (parsing a statement of a new size cost more than inserting its rows).
const SMALLER_CHUNKS: [usize; 4] = [100, 25, 5, 1];

type Args = <Db as sqlx::Database>::Arguments;
/// Statement texts by row count (a few: the sizes of [`fixed_chunks`]), built once.
type SqlCache = Mutex<Vec<(usize, &'static str)>>;
static CHECK_SQL: SqlCache = Mutex::new(Vec::new());
static INSERT_SQL: SqlCache = Mutex::new(Vec::new());
static ROLLUP_SQL: SqlCache = Mutex::new(Vec::new());

/// The text of `cache`'s statement over `rows` rows, built by `build` the first time and kept for
/// the life of the process (binding into ready text instead of a `QueryBuilder` per batch saves
/// formatting a separator and a placeholder per bound value).
fn statement(cache: &SqlCache, rows: usize, build: impl FnOnce(usize) -> String) -> &'static str {
    let mut texts = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, sql)) = texts.iter().find(|(n, _)| *n == rows) {
        return sql;
    }
    let sql: &'static str = Box::leak(build(rows).into_boxed_str());
    texts.push((rows, sql));
    sql
}

/// `prefix VALUES (…), (…) suffix` with `rows` rows of `cols` placeholders in the engine's style
/// (also SQLite's direct usage writer's single-row statements).
pub(super) fn values_sql(prefix: &str, rows: usize, cols: usize, suffix: &str) -> String {
    let mut qb = QueryBuilder::<Db>::new(prefix);
    qb.push_values(0..rows, |mut row, _| {
        for _ in 0..cols {
            row.push_bind(0_i64);
        }
    });
    qb.push(suffix);
    qb.into_string()
}

/// `prefix` + `n` placeholders separated by commas + `suffix`, in the engine's style.
fn in_list_sql(prefix: &str, n: usize, suffix: &str) -> String {
    let mut qb = QueryBuilder::<Db>::new(prefix);
    let mut list = qb.separated(", ");
    for _ in 0..n {
        list.push_bind(0_i64);
    }
    qb.push(suffix);
    qb.into_string()
}

/// Bind a usage record's [`RECORD_BINDS`] values, in `record_cols!` order (texts by reference:
/// the engine copies them once, where a cloned `String` cost an allocation more).
fn add_record(
    args: &mut Args,
    r: &UsageRecord,
) -> std::result::Result<(), sqlx::error::BoxDynError> {
    args.add(r.id)?;
    args.add(DbTime(r.at))?;
    args.add(r.request_id.as_str())?;
    args.add(r.key_id)?;
    args.add(r.team_id)?;
    args.add(r.user_id)?;
    args.add(r.key_label.as_deref())?;
    args.add(r.endpoint.as_str())?;
    args.add(r.model_requested.as_deref())?;
    args.add(r.model_served.as_deref())?;
    args.add(i32::from(r.status))?;
    args.add(r.error_type.as_deref())?;
    args.add(int(r.input_tokens))?;
    args.add(int(r.output_tokens))?;
    args.add(int(r.cache_write_5m_tokens))?;
    args.add(int(r.cache_write_1h_tokens))?;
    args.add(int(r.cache_read_tokens))?;
    args.add(int(r.cost_micro_usd))?;
    args.add(r.priced)?;
    args.add(int(r.latency_us))?;
    args.add(r.upstream_latency_us.map(int))?;
    args.add(i32::try_from(r.upstream_attempts).unwrap_or(i32::MAX))?;
    args.add(r.streamed)?;
    args.add(r.cache_hit)?;
    args.add(r.client_aborted)?;
    args.add(r.saved_micro_usd)
}

/// Bind a rollup row's [`ROLLUP_BINDS`] values.
fn add_rollup(
    args: &mut Args,
    k: &RollupKey<'_>,
    s: &Sums,
) -> std::result::Result<(), sqlx::error::BoxDynError> {
    args.add(k.period)?;
    args.add(k.bucket)?;
    args.add(k.key_id)?;
    args.add(k.team_id)?;
    args.add(k.user_id)?;
    args.add(k.model)?;
    args.add(s.requests)?;
    args.add(s.errors)?;
    args.add(s.input_tokens)?;
    args.add(s.output_tokens)?;
    args.add(s.cache_write_5m_tokens)?;
    args.add(s.cache_write_1h_tokens)?;
    args.add(s.cache_read_tokens)?;
    args.add(s.cost_micro_usd)?;
    args.add(s.saved_micro_usd)
}

/// `items` cut into runs of `largest` items, then of [`SMALLER_CHUNKS`] sizes (largest first).
fn fixed_chunks<T>(mut items: &[T], largest: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    for size in std::iter::once(largest).chain(SMALLER_CHUNKS.into_iter().filter(|&s| s < largest))
    {
        while items.len() >= size {
            let (chunk, rest) = items.split_at(size);
            chunks.push(chunk);
            items = rest;
        }
    }
    chunks
}
/// Largest page of raw records.
const MAX_RECORD_PAGE: u32 = 10_000;

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `[from, to)` widened to whole hours and split into hourly and daily parts:
/// `(hours before the first whole day, whole days, hours after the last whole day)`, each a
/// half-open range of Unix seconds (possibly empty).
fn split_range(from: OffsetDateTime, to: OffsetDateTime) -> [(i64, i64); 3] {
    let fh = from.unix_timestamp().div_euclid(HOUR) * HOUR;
    let secs = to.unix_timestamp();
    let on_the_hour = secs.rem_euclid(HOUR) == 0 && to.nanosecond() == 0;
    let th = secs.div_euclid(HOUR) * HOUR + if on_the_hour { 0 } else { HOUR };
    let fd = fh.saturating_add(DAY - 1).div_euclid(DAY) * DAY;
    let td = th.div_euclid(DAY) * DAY;
    if fd < td {
        [(fh, fd), (fd, td), (td, th)]
    } else {
        [(fh, th), (0, 0), (0, 0)]
    }
}

impl EngineStore {
    /// [`UsageRepository::insert_usage`] inside the caller's transaction (a batch item's
    /// completion writes its record in the transaction that settles it).
    pub(super) async fn insert_usage_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        records: &[UsageRecord],
    ) -> Result<u64> {
        Self::insert_storable_in(tx, &storable(records)).await
    }

    /// [`EngineStore::insert_usage_in`] of records already made [`storable`].
    async fn insert_storable_in(
        tx: &mut sqlx::Transaction<'static, Db>,
        records: &[UsageRecord],
    ) -> Result<u64> {
        let tx = &mut **tx;
        if records.is_empty() {
            return Ok(0);
        }
        // A record twice in one batch counts once.
        let mut seen = HashSet::with_capacity(records.len());
        let unique: Vec<&UsageRecord> = records.iter().filter(|r| seen.insert(r.id)).collect();
        let mut inserted: Vec<&UsageRecord> = Vec::with_capacity(unique.len());
        for chunk in fixed_chunks(&unique, RECORD_CHUNK) {
            let mut keys = Args::default();
            for r in chunk {
                if super::USAGE_KEYED_BY_TIME {
                    keys.add(DbTime(r.at)).map_err(sqlx::Error::Encode)?;
                }
                keys.add(r.id).map_err(sqlx::Error::Encode)?;
            }
            let sql = statement(&CHECK_SQL, chunk.len(), |n| {
                if super::USAGE_KEYED_BY_TIME {
                    // Pairs first, each looked up by the key (an `IN` of row values scans).
                    values_sql(
                        "SELECT u.id FROM (",
                        n,
                        2,
                        ") AS v CROSS JOIN usage_records AS u \
                         ON u.at = v.column1 AND u.id = v.column2",
                    )
                } else {
                    in_list_sql("SELECT id FROM usage_records WHERE id IN (", n, ")")
                }
            });
            let stored: HashSet<Uuid> = sqlx::query_with(sql, keys)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<Uuid, _>("id"))
                .collect::<std::result::Result<_, _>>()?;
            let fresh: Vec<&UsageRecord> = chunk
                .iter()
                .copied()
                .filter(|r| !stored.contains(&r.id))
                .collect();
            Self::insert_records(tx, &fresh).await?;
            inserted.extend(fresh);
        }
        Self::add_rollups(tx, &inserted).await?;
        Ok(inserted.len() as u64)
    }

    /// `records` inserted as they are (a stored id fails the statement on its uniqueness).
    async fn insert_records(
        tx: &mut <Db as sqlx::Database>::Connection,
        records: &[&UsageRecord],
    ) -> Result<()> {
        for part in fixed_chunks(records, RECORD_CHUNK) {
            let mut args = Args::default();
            for r in part {
                add_record(&mut args, r).map_err(sqlx::Error::Encode)?;
            }
            let sql = statement(&INSERT_SQL, part.len(), |n| {
                values_sql(
                    concat!("INSERT INTO usage_records (", record_cols!(), ") "),
                    n,
                    RECORD_BINDS,
                    "",
                )
            });
            sqlx::query_with(sql, args).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// The rollups of `inserted` (records just inserted, each once) added to `usage_rollups`.
    async fn add_rollups(
        tx: &mut <Db as sqlx::Database>::Connection,
        inserted: &[&UsageRecord],
    ) -> Result<()> {
        let deltas = rollup_deltas(inserted.iter().copied());
        for chunk in fixed_chunks(&deltas, ROLLUP_CHUNK) {
            let mut args = Args::default();
            for (k, s) in chunk {
                add_rollup(&mut args, k, s).map_err(sqlx::Error::Encode)?;
            }
            let sql = statement(&ROLLUP_SQL, chunk.len(), |n| {
                values_sql(ROLLUP_INSERT, n, ROLLUP_BINDS, ROLLUP_UPSERT)
            });
            sqlx::query_with(sql, args).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// [`UsageRepository::insert_new_usage`]: no check for stored ids; `None` when one of
    /// `records` is stored already (or there twice), and then nothing is written.
    async fn insert_new_usage_once(&self, records: &[UsageRecord]) -> Result<Option<u64>> {
        let mut tx = self.begin_write().await?;
        let refs: Vec<&UsageRecord> = records.iter().collect();
        match Self::insert_records(&mut tx, &refs).await {
            Ok(()) => {}
            // The only unique rule of usage_records is its key (id; (at, id) in SQLite).
            Err(StoreError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        Self::add_rollups(&mut tx, &refs).await?;
        tx.commit().await?;
        Ok(Some(refs.len() as u64))
    }
}

#[async_trait]
impl UsageRepository for EngineStore {
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<u64> {
        let records = &*storable(records);
        if let Some(n) = self.insert_usage_direct(records).await? {
            return Ok(n);
        }
        let mut tx = self.begin_write().await?;
        let n = Self::insert_storable_in(&mut tx, records).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn insert_new_usage(&self, records: &[UsageRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let records = &*storable(records);
        if let Some(n) = self.insert_usage_direct(records).await? {
            return Ok(n);
        }
        match self.insert_new_usage_once(records).await? {
            Some(n) => Ok(n),
            // Not all new after all: the checked insert skips what is stored.
            None => self.insert_usage(records).await,
        }
    }

    async fn usage_summary(&self, q: &UsageQuery) -> Result<Vec<UsageRow>> {
        if q.to <= q.from {
            return Err(StoreError::Invalid(
                "the end of the range must be after its start".to_owned(),
            ));
        }
        let dims = dimensions(q.group_by);
        let mut qb = QueryBuilder::<Db>::new("SELECT ");
        for (expr, alias) in &dims {
            qb.push(expr).push(" AS ").push(alias).push(", ");
        }
        qb.push(
            "CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(errors), 0) AS BIGINT) AS errors, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cache_write_5m_tokens), 0) AS BIGINT) AS cache_write_5m_tokens, \
             CAST(COALESCE(SUM(cache_write_1h_tokens), 0) AS BIGINT) AS cache_write_1h_tokens, \
             CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens, \
             CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS cost_micro_usd, \
             CAST(COALESCE(SUM(saved_micro_usd), 0) AS BIGINT) AS saved_micro_usd \
             FROM usage_rollups WHERE ((period = 'hour' AND ((bucket >= ",
        );
        let [head, days, tail] = split_range(q.from, q.to);
        qb.push_bind(head.0)
            .push(" AND bucket < ")
            .push_bind(head.1)
            .push(") OR (bucket >= ")
            .push_bind(tail.0)
            .push(" AND bucket < ")
            .push_bind(tail.1)
            .push("))) OR (period = 'day' AND bucket >= ")
            .push_bind(days.0)
            .push(" AND bucket < ")
            .push_bind(days.1)
            .push("))");
        if let Some(id) = q.key_id {
            qb.push(" AND key_id = ").push_bind(id);
        }
        if let Some(id) = q.team_id {
            qb.push(" AND team_id = ").push_bind(id);
        }
        if let Some(id) = q.user_id {
            qb.push(" AND user_id = ").push_bind(id);
        }
        if let Some(model) = &q.model {
            qb.push(" AND model = ").push_bind(model.clone());
        }
        if !dims.is_empty() {
            let aliases: Vec<&str> = dims.iter().map(|(_, alias)| *alias).collect();
            let list = aliases.join(", ");
            qb.push(" GROUP BY ")
                .push(&list)
                .push(" ORDER BY ")
                .push(&list);
        }
        qb.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| usage_row(row, q.group_by))
            .collect()
    }

    async fn list_usage_records(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<UsageRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            record_cols!(),
            " FROM usage_records WHERE at >= $1 AND at < $2 ORDER BY at, id LIMIT $3"
        ))
        .bind(DbTime(from))
        .bind(DbTime(to))
        .bind(i64::from(limit.min(MAX_RECORD_PAGE)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(usage_record)
        .collect()
    }

    async fn purge_usage_records(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(PURGE_SQL)
            .bind(DbTime(before))
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// One chunk of the retention purge: the oldest `$2` records before `$1`. Where the table is keyed
/// by `(at, id)`, the rows are named by that key: an outer `id IN (...)` there is no key prefix,
/// so SQLite scanned the whole table for every chunk (~0.1 s at a million records, under the write
/// lock the ledger writer needs). By id elsewhere (the primary key, with an index on `at`).
pub(super) const PURGE_SQL: &str = if super::USAGE_KEYED_BY_TIME {
    "DELETE FROM usage_records WHERE (at, id) IN \
     (SELECT at, id FROM usage_records WHERE at < $1 ORDER BY at LIMIT $2)"
} else {
    "DELETE FROM usage_records WHERE id IN \
     (SELECT id FROM usage_records WHERE at < $1 ORDER BY at LIMIT $2)"
};

/// `(SQL expression, alias)` of each grouped dimension, from a fixed set (never user input).
fn dimensions(g: UsageGroupBy) -> Vec<(&'static str, &'static str)> {
    let mut dims = Vec::with_capacity(4);
    if g.day {
        dims.push(("(bucket / 86400) * 86400", "day"));
    }
    if g.team {
        dims.push(("team_id", "team_id"));
    }
    if g.key {
        dims.push(("key_id", "key_id"));
    }
    if g.model {
        dims.push(("model", "model"));
    }
    dims
}

fn non_nil(id: Uuid) -> Option<Uuid> {
    (!id.is_nil()).then_some(id)
}

fn usage_row(row: &DbRow, g: UsageGroupBy) -> Result<UsageRow> {
    let day = if g.day {
        let secs: i64 = row.try_get("day")?;
        Some(
            OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| StoreError::Invalid("a rollup day is out of range".to_owned()))?
                .date(),
        )
    } else {
        None
    };
    let get = |col: &str| -> Result<u64> { Ok(uint(row.try_get::<i64, _>(col)?)) };
    Ok(UsageRow {
        day,
        key_id: if g.key {
            non_nil(row.try_get("key_id")?)
        } else {
            None
        },
        team_id: if g.team {
            non_nil(row.try_get("team_id")?)
        } else {
            None
        },
        model: if g.model {
            Some(row.try_get::<String, _>("model")?).filter(|m| !m.is_empty())
        } else {
            None
        },
        requests: get("requests")?,
        errors: get("errors")?,
        input_tokens: get("input_tokens")?,
        output_tokens: get("output_tokens")?,
        cache_write_5m_tokens: get("cache_write_5m_tokens")?,
        cache_write_1h_tokens: get("cache_write_1h_tokens")?,
        cache_read_tokens: get("cache_read_tokens")?,
        cost_micro_usd: get("cost_micro_usd")?,
        saved_micro_usd: row.try_get("saved_micro_usd")?,
    })
}

fn usage_record(row: &DbRow) -> Result<UsageRecord> {
    let get = |col: &str| -> Result<u64> { Ok(uint(row.try_get::<i64, _>(col)?)) };
    Ok(UsageRecord {
        id: row.try_get("id")?,
        at: row.try_get::<DbTime, _>("at")?.0,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        team_id: row.try_get("team_id")?,
        user_id: row.try_get("user_id")?,
        key_label: row.try_get("key_label")?,
        endpoint: row.try_get("endpoint")?,
        model_requested: row.try_get("model_requested")?,
        model_served: row.try_get("model_served")?,
        status: u16::try_from(row.try_get::<i32, _>("status")?).unwrap_or(0),
        error_type: row.try_get("error_type")?,
        input_tokens: get("input_tokens")?,
        output_tokens: get("output_tokens")?,
        cache_write_5m_tokens: get("cache_write_5m_tokens")?,
        cache_write_1h_tokens: get("cache_write_1h_tokens")?,
        cache_read_tokens: get("cache_read_tokens")?,
        cost_micro_usd: get("cost_micro_usd")?,
        priced: row.try_get("priced")?,
        latency_us: get("latency_us")?,
        upstream_latency_us: row
            .try_get::<Option<i64>, _>("upstream_latency_us")?
            .map(uint),
        upstream_attempts: u32::try_from(row.try_get::<i32, _>("upstream_attempts")?).unwrap_or(0),
        streamed: row.try_get("streamed")?,
        cache_hit: row.try_get("cache_hit")?,
        client_aborted: row.try_get("client_aborted")?,
        saved_micro_usd: row.try_get("saved_micro_usd")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn batches_are_cut_into_statements_of_a_few_fixed_sizes() {
        let items: Vec<usize> = (0..1234).collect();
        let chunks = fixed_chunks(&items, 400);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [400, 400, 400, 25, 5, 1, 1, 1, 1]);
        assert_eq!(chunks.concat(), items, "every item once, in order");
        assert_eq!(fixed_chunks(&items[..3], 1000).len(), 3);
        assert!(fixed_chunks::<usize>(&[], 400).is_empty());
    }

    #[test]
    fn ranges_split_into_hours_and_whole_days() {
        let t = |dt: OffsetDateTime| dt.unix_timestamp();
        // Within one day: hours only, widened to whole hours.
        let [h, d, tl] = split_range(
            datetime!(2026-06-01 10:30 UTC),
            datetime!(2026-06-01 12:00:00.5 UTC),
        );
        assert_eq!(
            h,
            (
                t(datetime!(2026-06-01 10:00 UTC)),
                t(datetime!(2026-06-01 13:00 UTC))
            )
        );
        assert_eq!((d, tl), ((0, 0), (0, 0)));
        // Across days: head hours, whole days, tail hours.
        let [h, d, tl] = split_range(
            datetime!(2026-06-01 22:10 UTC),
            datetime!(2026-06-04 01:00 UTC),
        );
        assert_eq!(
            h,
            (
                t(datetime!(2026-06-01 22:00 UTC)),
                t(datetime!(2026-06-02 00:00 UTC))
            )
        );
        assert_eq!(
            d,
            (
                t(datetime!(2026-06-02 00:00 UTC)),
                t(datetime!(2026-06-04 00:00 UTC))
            )
        );
        assert_eq!(
            tl,
            (
                t(datetime!(2026-06-04 00:00 UTC)),
                t(datetime!(2026-06-04 01:00 UTC))
            )
        );
    }
}
