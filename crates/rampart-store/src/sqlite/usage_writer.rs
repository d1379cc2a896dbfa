//! SQLite's ledger writer: the usage ledger's batches inserted through a connection of their own,
//! with one prepared single-row `INSERT … ON CONFLICT (at, id) DO NOTHING` run per record and one
//! prepared rollup upsert per rollup row, in one `BEGIN IMMEDIATE` transaction. Both statements
//! are prepared once per connection (rusqlite's statement cache), not once per batch.
//!
//! Every proxied request writes a record, so this is the embedded database's busiest write. Through
//! sqlx the same batch cost about 5 µs of CPU per record (the values copied into sqlx's argument
//! buffer, multi-row statements of up to 10,400 parameters bound and cleared, and a hand-off to
//! sqlx's connection thread for each statement); bound straight into a prepared statement it
//! costs under 2 µs, and on the two cores that also run the clients that is throughput for the
//! whole gateway (see the README's benchmark).
//!
//! The insert's conflict clause makes it idempotent by the table's key `(at, id)` (a record
//! written again has both the same), exactly like the checked insert of the repository: a
//! record already stored (a spool replayed after a crash) or twice in a batch
//! is skipped, and only the rows that were inserted are added to the rollups.
//!
//! Only for a database file: an in-memory database is private to sqlx's pool, so there the
//! repository's statements run instead.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::BUSY_TIMEOUT;
use super::usage_repo::values_sql;
use crate::DbTime;
use crate::error::{Result, StoreError};
use crate::usage::UsageRecord;
use crate::usage_rows::{
    RECORD_BINDS, ROLLUP_BINDS, ROLLUP_INSERT, ROLLUP_UPSERT, int, record_cols, rollup_deltas,
};

static INSERT_RECORD: LazyLock<String> = LazyLock::new(|| {
    values_sql(
        concat!("INSERT INTO usage_records (", record_cols!(), ") "),
        1,
        RECORD_BINDS,
        " ON CONFLICT (at, id) DO NOTHING",
    )
});

static UPSERT_ROLLUP: LazyLock<String> =
    LazyLock::new(|| values_sql(ROLLUP_INSERT, 1, ROLLUP_BINDS, ROLLUP_UPSERT));

/// The ledger's connection to the database file at `path`, opened at its first batch and again
/// after a failed one.
#[derive(Debug)]
pub(super) struct UsageWriter {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl UsageWriter {
    pub(super) fn new(path: PathBuf) -> UsageWriter {
        UsageWriter {
            path,
            conn: Mutex::new(None),
        }
    }

    /// Insert the records not stored yet, and their rollups, in one transaction; the number
    /// inserted. Blocks (run it off the async threads).
    pub(super) fn write(&self, records: &[UsageRecord]) -> Result<u64> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(self.open().map_err(store_error)?),
        };
        write_batch(conn, records).map_err(|e| {
            // Whatever state the connection is in, the next batch starts on a fresh one.
            *guard = None;
            store_error(e)
        })
    }

    /// Close the connection (the pool closes the others).
    pub(super) fn close(&self) {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // The pool created the file and put it in WAL mode (kept in the file); synchronous and
        // the busy timeout are per connection, set as the pool sets them.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(conn)
    }
}

fn write_batch(conn: &mut Connection, records: &[UsageRecord]) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserted: Vec<&UsageRecord> = Vec::with_capacity(records.len());
    {
        // Cached on the connection: parsing the statement again costs more than a small batch's rows.
        let mut insert = tx.prepare_cached(&INSERT_RECORD)?;
        for r in records {
            let new = insert.execute(params![
                &r.id.as_bytes()[..],
                DbTime(r.at).micros(),
                r.request_id,
                r.key_id.as_ref().map(|id| &id.as_bytes()[..]),
                r.team_id.as_ref().map(|id| &id.as_bytes()[..]),
                r.user_id.as_ref().map(|id| &id.as_bytes()[..]),
                r.key_label,
                r.endpoint,
                r.model_requested,
                r.model_served,
                i32::from(r.status),
                r.error_type,
                int(r.input_tokens),
                int(r.output_tokens),
                int(r.cache_write_5m_tokens),
                int(r.cache_write_1h_tokens),
                int(r.cache_read_tokens),
                int(r.cost_micro_usd),
                r.priced,
                int(r.latency_us),
                r.upstream_latency_us.map(int),
                i32::try_from(r.upstream_attempts).unwrap_or(i32::MAX),
                r.streamed,
                r.cache_hit,
                r.client_aborted,
                r.saved_micro_usd,
            ])?;
            if new == 1 {
                inserted.push(r);
            }
        }
        let mut upsert = tx.prepare_cached(&UPSERT_ROLLUP)?;
        for (k, s) in rollup_deltas(inserted.iter().copied()) {
            upsert.execute(params![
                k.period,
                k.bucket,
                &k.key_id.as_bytes()[..],
                &k.team_id.as_bytes()[..],
                &k.user_id.as_bytes()[..],
                k.model,
                s.requests,
                s.errors,
                s.input_tokens,
                s.output_tokens,
                s.cache_write_5m_tokens,
                s.cache_write_1h_tokens,
                s.cache_read_tokens,
                s.cost_micro_usd,
                s.saved_micro_usd,
            ])?;
        }
    }
    tx.commit()?;
    Ok(inserted.len() as u64)
}

/// A rusqlite error as the repository's: a schema rule broken is invalid input, the rest a backend
/// error (whose text is never shown).
fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            StoreError::Invalid("a value is outside what the schema allows".to_owned())
        }
        Some(rusqlite::ErrorCode::TooBig | rusqlite::ErrorCode::TypeMismatch) => {
            StoreError::Invalid("a value cannot be stored as it is".to_owned())
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}
