//! The ledger: [`Ledger::record_prepared`] on the request path, [`LedgerWriter::run`] in the background.
//!
//! # Guarantees
//! - A record is appended to the spool ([`crate::spool`]) before the request's response
//!   completes (the gateway records before releasing the last byte), so once a client has its
//!   whole response, the record is in the kernel: a process crash (`kill -9`, OOM kill, panic)
//!   loses nothing. A stream's record is written with a `write` of its own
//!   ([`Ledger::record_prepared`]); a whole answer's is staged and committed before any of the
//!   answer is sent ([`Ledger::stage_prepared`]), with one `write` for every record a worker
//!   commits in the same turn. With `fsync = "interval"` (default) a power failure loses at most
//!   the records of the last `fsync_interval_ms`; with `"always"` nothing (a disk flush per
//!   request).
//! - The same record is handed to the writer in memory: every `flush_interval_ms` it inserts
//!   what arrived, up to `batch_max` records per transaction, together with the rollups, and
//!   only then moves the spool's committed offsets (saved beside the segments after each
//!   drain). The spool files are read back only for what memory does not hold: after a restart
//!   (from the saved offsets), or while a lane's memory queue is full. Records are idempotent
//!   (by id and time), so a crash at any point replays without double counting.
//! - SIGTERM: after the last request, the writer drains everything before the process exits;
//!   when the database is unreachable the records stay in the spool for the next start.
//! - A record the database refuses (a value it cannot store) is set aside in the spool
//!   directory's [`REFUSED_FILE`] and its batch's other records are written: one bad record
//!   never holds back the ledger.
//! - If the spool cannot be written (disk full), records are kept in memory (up to
//!   [`FALLBACK_MAX`]) and written by the next batch; `rampart_ledger_write_failures_total
//!   {stage="spool"}` counts them (those are not crash-proof).
//!
//! # Metrics
//! `rampart_ledger_queue_depth` (records not yet in the database), `rampart_ledger_spool_bytes`,
//! `rampart_ledger_batch_records` (records per committed batch),
//! `rampart_ledger_write_failures_total{stage}` (`spool`, `database`, `purge`),
//! `rampart_ledger_records_total` (new records committed), `rampart_ledger_duplicates_total`
//! (replayed records already stored), `rampart_ledger_corrupt_lines_total`,
//! `rampart_ledger_dropped_total` (memory fallback full), `rampart_ledger_purged_total`,
//! `rampart_ledger_refused_total` (records the database refused, set aside in
//! [`REFUSED_FILE`]).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_store::{Store, UsageRecord};
use time::OffsetDateTime;

use crate::config::{FsyncPolicy, LedgerConfig};
use crate::log_limit::LogLimiter;
use crate::record::Prepared;
use crate::spool::{Batch, Queued, Spool, StagedAt};

/// The file in the spool directory that keeps the records the database refused (JSON lines).
pub const REFUSED_FILE: &str = "refused.jsonl";
/// Records kept in memory when the spool cannot be written.
pub const FALLBACK_MAX: usize = 100_000;
/// Raw records deleted per purge statement.
const PURGE_CHUNK: u32 = 10_000;
/// How often the queue-depth and spool-size gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// At most one "cannot write the ledger spool" line per this period (the first at once; each
/// line counts the failed records not logged since the one before).
const SPOOL_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long [`LedgerWriter::catch_up`] may hold a start when the spool has a backlog.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// How long the shutdown flush may take when the database is slow or away.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// The request path's handle: cheap to share, at most one `write` per record.
#[derive(Debug)]
pub struct Ledger {
    spool: Spool,
    fallback: Mutex<Vec<UsageRecord>>,
    /// Limits the spool failures' log lines (one per failing request otherwise).
    spool_failures: LogLimiter,
}

/// Describe the ledger's metrics (once, after the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "rampart_ledger_queue_depth",
        "Usage records not yet written to the database (spool and memory)."
    );
    metrics::describe_gauge!(
        "rampart_ledger_spool_bytes",
        "Bytes in the ledger's local spool."
    );
    metrics::describe_histogram!(
        "rampart_ledger_batch_records",
        "Usage records per database transaction."
    );
    metrics::describe_counter!(
        "rampart_ledger_write_failures_total",
        "Ledger write failures by stage (spool, database, purge)."
    );
    metrics::describe_counter!(
        "rampart_ledger_spool_writes_total",
        "Writes to the ledger's spool (records of one worker's turn share one)."
    );
    metrics::describe_counter!(
        "rampart_ledger_records_total",
        "Usage records written to the database."
    );
    metrics::describe_counter!(
        "rampart_ledger_duplicates_total",
        "Replayed usage records the database already had (skipped)."
    );
    metrics::describe_counter!(
        "rampart_ledger_corrupt_lines_total",
        "Spool lines that failed their checksum (skipped)."
    );
    metrics::describe_counter!(
        "rampart_ledger_dropped_total",
        "Usage records lost because neither the spool nor memory could hold them."
    );
    metrics::describe_counter!(
        "rampart_ledger_refused_total",
        "Usage records the database refused, set aside in the spool directory's refused.jsonl."
    );
    metrics::describe_counter!(
        "rampart_ledger_purged_total",
        "Raw usage records deleted after the retention period."
    );
    metrics::describe_counter!(
        "rampart_pricing_unknown_model_total",
        "Requests priced at the default price because their model is not in the price table."
    );
    // What alerts watch is exported from the start, at 0, not only after its first event (a
    // dashboard shows 0 rather than "no data").
    for name in [
        "rampart_ledger_corrupt_lines_total",
        "rampart_ledger_dropped_total",
        "rampart_ledger_refused_total",
        "rampart_pricing_unknown_model_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

impl Ledger {
    /// Open the spool (`config.spool_dir`, else `default_dir`) with `lanes` writer lanes and
    /// return the handle and its writer.
    ///
    /// # Errors
    /// When the spool directory cannot be created or is used by another process.
    pub fn open(
        config: &LedgerConfig,
        default_dir: &Path,
        lanes: usize,
    ) -> std::io::Result<(Arc<Ledger>, LedgerWriter)> {
        let dir = config.spool_dir.as_deref().unwrap_or(default_dir);
        let spool = Spool::open(
            dir,
            lanes,
            config.segment_bytes,
            config.fsync == FsyncPolicy::Always,
        )?;
        let ledger = Arc::new(Ledger {
            spool,
            fallback: Mutex::new(Vec::new()),
            spool_failures: LogLimiter::new(SPOOL_FAILURE_LOG_EVERY),
        });
        let writer = LedgerWriter {
            ledger: ledger.clone(),
            config: config.clone(),
            held: Queued::default(),
            held_pos: 0,
        };
        Ok((ledger, writer))
    }

    /// Append a record prepared beforehand (its head encoded while the upstream answered), its
    /// outcome set by `outcome`, to the spool (one `write`) and queue it for the writer. Never
    /// fails: when the spool cannot be written the record is kept in memory for the writer (up
    /// to [`FALLBACK_MAX`]) and the failure is counted.
    pub fn record_prepared(&self, prepared: Prepared, outcome: impl FnOnce(&mut UsageRecord)) {
        if let Err(unwritten) = self.spool.append_prepared(prepared, outcome) {
            self.keep_unwritten(std::iter::once(*unwritten));
        }
    }

    /// [`Ledger::record_prepared`] in two steps, for a response that can wait for its record
    /// to be written before any of it is sent: the record is staged now (no system call) and
    /// written by [`Staged::commit`], with one `write` for every record staged in the same lane
    /// meanwhile (the other responses of the worker's turn), or when the [`Staged`] is dropped.
    pub fn stage_prepared(
        self: Arc<Self>,
        prepared: Prepared,
        outcome: impl FnOnce(&mut UsageRecord),
    ) -> Staged {
        let at = self.spool.stage_prepared(prepared, outcome);
        Staged {
            ledger: self,
            at: Some(at),
        }
    }

    /// Append `refused` (records the database would not take, each with the reason) to the
    /// spool directory's [`REFUSED_FILE`], one JSON object per line, and sync it: kept for the
    /// operator, never dropped.
    fn set_aside(&self, refused: &[(&UsageRecord, String)]) -> std::io::Result<()> {
        use std::io::Write as _;
        if refused.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for (record, reason) in refused {
            serde_json::to_writer(
                &mut lines,
                &serde_json::json!({ "reason": reason, "record": record }),
            )?;
            lines.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spool.dir().join(REFUSED_FILE))?;
        file.write_all(&lines)?;
        file.sync_data()
    }

    fn write_staged(&self, at: StagedAt) {
        if let Err(unwritten) = self.spool.write_staged(at) {
            self.keep_unwritten(unwritten);
        }
    }

    /// Records the spool could not take: kept in memory for the writer (up to
    /// [`FALLBACK_MAX`]), each failure counted, and logged at most once per
    /// [`SPOOL_FAILURE_LOG_EVERY`] (see [`LogLimiter`]).
    fn keep_unwritten(&self, unwritten: impl IntoIterator<Item = crate::spool::Unwritten>) {
        let mut fallback = self
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut failed = 0u64;
        let mut first_error = None;
        for crate::spool::Unwritten { error, record } in unwritten {
            metrics::counter!("rampart_ledger_write_failures_total", "stage" => "spool")
                .increment(1);
            failed += 1;
            first_error.get_or_insert(error);
            if fallback.len() < FALLBACK_MAX {
                fallback.push(record);
            } else {
                metrics::counter!("rampart_ledger_dropped_total").increment(1);
            }
        }
        drop(fallback);
        if let Some(e) = first_error
            && let Some(suppressed) = self.spool_failures.occur(failed)
        {
            tracing::error!(
                target: "rampart::ledger",
                error = %e,
                dir = %self.spool.dir().display(),
                records = failed,
                suppressed,
                "cannot write the ledger spool; keeping the records in memory (logged at most every {}s; `suppressed`: failed records not logged since the last line)",
                SPOOL_FAILURE_LOG_EVERY.as_secs()
            );
        }
    }

    /// The spool failures not logged yet, once [`SPOOL_FAILURE_LOG_EVERY`] has passed since
    /// the last line (at the `end`: any), logged now: failures that stopped are not left out.
    fn log_overdue_spool_failures(&self, end: bool) {
        if let Some(suppressed) = self.spool_failures.overdue(end) {
            tracing::error!(
                target: "rampart::ledger",
                dir = %self.spool.dir().display(),
                suppressed,
                "the ledger spool could not be written for more records since the last line; they were kept in memory"
            );
        }
    }

    /// Records not yet in the database.
    #[must_use]
    pub fn queue_depth(&self) -> u64 {
        self.spool.pending() + self.fallback_len() as u64
    }

    fn fallback_len(&self) -> usize {
        self.fallback.lock().map_or(0, |f| f.len())
    }

    fn take_fallback(&self, max: usize) -> Vec<UsageRecord> {
        let mut f = self
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = f.len().min(max);
        f.drain(..n).collect()
    }

    fn restore_fallback(&self, mut records: Vec<UsageRecord>) {
        let mut f = self
            .fallback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        records.append(&mut f);
        *f = records;
    }

    fn publish_gauges(&self) {
        self.log_overdue_spool_failures(false);
        metrics::gauge!("rampart_ledger_queue_depth").set(self.queue_depth() as f64);
        metrics::gauge!("rampart_ledger_spool_bytes").set(self.spool.bytes() as f64);
        metrics::counter!("rampart_ledger_spool_writes_total").absolute(self.spool.writes());
    }
}

/// A usage record staged for a group write ([`Ledger::stage_prepared`]); written by
/// [`Staged::commit`], or at once when dropped.
#[must_use = "a staged record is written when committed or dropped"]
#[derive(Debug)]
pub struct Staged {
    ledger: Arc<Ledger>,
    at: Option<StagedAt>,
}

impl Staged {
    /// Let the other tasks ready on this thread run first (they may stage records of their
    /// own), then write the group: once this is ready, the record is in the spool. Dropped
    /// before that, the record is written then.
    pub fn commit(self) -> Commit {
        Commit {
            staged: Some(self),
            yielded: false,
        }
    }

    fn write(&mut self) {
        if let Some(at) = self.at.take() {
            self.ledger.write_staged(at);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.write();
    }
}

/// [`Staged::commit`]'s future.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Commit {
    staged: Option<Staged>,
    yielded: bool,
}

impl Future for Commit {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded {
            // To the back of the worker's queue: the tasks ready now run before the write.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(mut staged) = self.staged.take() {
            staged.write();
        }
        Poll::Ready(())
    }
}

/// Drains the spool into the database and purges expired raw records. See the module docs.
#[derive(Debug)]
pub struct LedgerWriter {
    ledger: Arc<Ledger>,
    config: LedgerConfig,
    /// Records taken from memory; those from `held_pos` on are not yet committed (kept across
    /// failed attempts).
    held: Queued,
    held_pos: usize,
}

/// What one drain pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Nothing was waiting.
    Empty,
    /// A batch was written; more may be waiting.
    Batch { full: bool },
}

impl LedgerWriter {
    /// Drain every `flush_interval_ms` and purge every `purge_interval_secs` until `shutdown`
    /// resolves, then seal the spool and drain what is left (for at most 30 s).
    pub async fn run(mut self, store: Store, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut drain_tick = tokio::time::interval(self.config.flush_interval());
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purge_tick =
            tokio::time::interval(Duration::from_secs(self.config.purge_interval_secs.max(1)));
        purge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The gauges follow the spool every second, whatever the drain period.
        let mut gauge_tick = tokio::time::interval(GAUGE_EVERY);
        gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sync = tokio::time::Instant::now();
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = drain_tick.tick() => {
                    if backoff > Duration::ZERO {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    backoff = match self.drain_all(&store).await {
                        Ok(()) => Duration::ZERO,
                        Err(()) => (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(30)),
                    };
                    if self.config.fsync == FsyncPolicy::Interval
                        && last_sync.elapsed() >= self.config.fsync_interval()
                    {
                        last_sync = tokio::time::Instant::now();
                        self.sync().await;
                    }
                }
                _ = purge_tick.tick() => self.purge(&store).await,
                _ = gauge_tick.tick() => self.ledger.publish_gauges(),
                () = &mut shutdown => break,
            }
        }
        self.ledger.log_overdue_spool_failures(true);
        self.ledger.spool.seal_all();
        let flushed = tokio::time::timeout(SHUTDOWN_FLUSH_LIMIT, self.drain_all(&store)).await;
        let left = self.ledger.queue_depth();
        match flushed {
            Ok(Ok(())) if left == 0 => {
                tracing::info!(target: "rampart::ledger", "usage ledger flushed");
            }
            _ => tracing::warn!(
                target: "rampart::ledger",
                records = left,
                "usage ledger not fully flushed; the spooled records are written at the next start"
            ),
        }
        if self.config.fsync != FsyncPolicy::Never {
            self.sync().await;
        }
    }

    /// Write what a previous run left in the spool (a crash, or a database that was away) before
    /// the gateway serves, for at most `limit`; whether all of it went in. Budgets start from
    /// the ledger's spend at start, so without this the spend of the last moments before a
    /// `kill -9` would be handed out again. On `false` (the database is away or slow, a backlog
    /// too large) the writer goes on in [`LedgerWriter::run`] as usual.
    pub async fn catch_up(&mut self, store: &Store, limit: Duration) -> bool {
        let caught_up = tokio::time::timeout(limit, self.drain_all(store)).await;
        let left = self.ledger.queue_depth();
        if matches!(caught_up, Ok(Ok(()))) && left == 0 {
            return true;
        }
        tracing::warn!(
            target: "rampart::ledger",
            records = left,
            "usage records a previous run left in the spool are not all written yet; budgets \
             do not count their spend until they are"
        );
        false
    }

    /// Drain until nothing is waiting, then save the spool's committed offsets; `Err` after a
    /// failed database write (logged, counted).
    async fn drain_all(&mut self, store: &Store) -> Result<(), ()> {
        let drained = self.drain_until_empty(store).await;
        if let Err(e) = self.ledger.spool.save_committed() {
            tracing::warn!(target: "rampart::ledger", error = %e, "cannot save the spool's committed offsets (a restart replays more)");
        }
        self.ledger.publish_gauges();
        drained
    }

    async fn drain_until_empty(&mut self, store: &Store) -> Result<(), ()> {
        loop {
            // Memory and the files both, each pass: neither waits behind the other.
            let memory = self.drain_memory(store).await?;
            let files = self.drain_files(store).await?;
            match (memory, files) {
                (Drained::Batch { full: true }, _) | (_, Drained::Batch { full: true }) => {
                    tokio::task::yield_now().await;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Insert one batch of the records handed over in memory (and of the memory fallback).
    /// The records taken from the spool are walked in place (`held` from `held_pos`), not
    /// split off batch by batch (a copy of what is left each time).
    async fn drain_memory(&mut self, store: &Store) -> Result<Drained, ()> {
        let max = self.config.batch_max;
        if self.held_pos >= self.held.len() {
            let spare = std::mem::take(&mut self.held);
            self.held = self.ledger.spool.take_queued(spare);
            self.held_pos = 0;
        }
        let (from, to) = (self.held_pos, (self.held_pos + max).min(self.held.len()));
        let fallback = self.ledger.take_fallback(max - (to - from));
        let total = (to - from) + fallback.len();
        if total == 0 {
            return Ok(Drained::Empty);
        }
        let batch = self.held.slice(from, to);
        let inserted = if fallback.is_empty() {
            self.insert(store, batch.records, true).await
        } else {
            // Only after the spool could not be written (rare): one list of both.
            let mut both = batch.records.to_vec();
            both.extend_from_slice(&fallback);
            self.insert(store, &both, true).await
        };
        match inserted {
            Ok(()) => {
                self.ledger.spool.commit_queued(batch);
                self.held_pos = to;
                Ok(Drained::Batch {
                    full: total >= max || self.held_pos < self.held.len(),
                })
            }
            Err(()) => {
                // The held records stay where they are, to be tried again first.
                self.ledger.restore_fallback(fallback);
                Err(())
            }
        }
    }

    /// Insert one batch read from the spool files (segments whose records are not in memory).
    async fn drain_files(&self, store: &Store) -> Result<Drained, ()> {
        let max = self.config.batch_max;
        let ledger = self.ledger.clone();
        let read = tokio::task::spawn_blocking(move || ledger.spool.read(max)).await;
        let batch: Batch = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                metrics::counter!("rampart_ledger_write_failures_total", "stage" => "spool")
                    .increment(1);
                tracing::error!(target: "rampart::ledger", error = %e, "cannot read the ledger spool");
                return Err(());
            }
            Err(e) => {
                tracing::error!(target: "rampart::ledger", error = %e, "the spool reader failed");
                return Err(());
            }
        };
        if batch.corrupt > 0 {
            metrics::counter!("rampart_ledger_corrupt_lines_total").increment(batch.corrupt);
        }
        if batch.records.is_empty() {
            // Also deletes sealed segments drained to their end.
            self.ledger.spool.commit(&batch);
            return Ok(Drained::Empty);
        }
        self.insert(store, &batch.records, false).await?;
        self.ledger.spool.commit(&batch);
        Ok(Drained::Batch {
            full: batch.records.len() >= max,
        })
    }

    /// One transaction: `records` and their rollups, counted. `from_memory`: records handed over
    /// in memory, new by construction, inserted without first querying for stored ids (the
    /// store falls back to the checked insert should one be stored after all); records read
    /// back from the spool may have been stored before a crash and are checked.
    async fn insert(
        &self,
        store: &Store,
        records: &[UsageRecord],
        from_memory: bool,
    ) -> Result<(), ()> {
        let inserted = if from_memory {
            store.usage().insert_new_usage(records).await
        } else {
            store.usage().insert_usage(records).await
        };
        match inserted {
            Ok(new) => {
                let total = records.len() as u64;
                metrics::histogram!("rampart_ledger_batch_records").record(total as f64);
                metrics::counter!("rampart_ledger_records_total").increment(new);
                metrics::counter!("rampart_ledger_duplicates_total")
                    .increment(total.saturating_sub(new));
                Ok(())
            }
            Err(rampart_store::StoreError::Invalid(_)) => self.insert_sorting(store, records).await,
            Err(e) => {
                self.database_failed(&e, records.len());
                Err(())
            }
        }
    }

    fn database_failed(&self, e: &rampart_store::StoreError, records: usize) {
        metrics::counter!("rampart_ledger_write_failures_total", "stage" => "database")
            .increment(1);
        tracing::error!(target: "rampart::ledger", error = %e, records, "cannot write usage records to the database; they stay spooled and are retried");
        self.ledger.publish_gauges();
    }

    /// `records` after the database refused a value in their batch (the store already makes
    /// every value it can storable, so this is rare): the batch is inserted in halves, each
    /// checked for ids already stored, until each refused record stands alone; those are set
    /// aside in the spool directory's [`REFUSED_FILE`] (and counted in
    /// `rampart_ledger_refused_total`), so that one record never holds back the others.
    /// `Err` when the database fails otherwise meanwhile, or the refused records cannot be set
    /// aside: then the whole batch is tried again later (what went in is skipped by its id).
    async fn insert_sorting(&self, store: &Store, records: &[UsageRecord]) -> Result<(), ()> {
        let mut parts = vec![records];
        let mut refused = Vec::new();
        let mut new = 0u64;
        while let Some(part) = parts.pop() {
            match store.usage().insert_usage(part).await {
                Ok(n) => new += n,
                Err(rampart_store::StoreError::Invalid(why)) if part.len() == 1 => {
                    refused.push((&part[0], why));
                }
                Err(rampart_store::StoreError::Invalid(_)) => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
                Err(e) => {
                    self.database_failed(&e, records.len());
                    return Err(());
                }
            }
        }
        if let Err(e) = self.ledger.set_aside(&refused) {
            metrics::counter!("rampart_ledger_write_failures_total", "stage" => "refused")
                .increment(1);
            tracing::error!(target: "rampart::ledger", error = %e, records = refused.len(), "cannot set aside usage records the database refused; their batch is retried");
            return Err(());
        }
        for (record, why) in &refused {
            tracing::error!(target: "rampart::ledger", id = %record.id, request_id = %record.request_id, reason = %why, file = REFUSED_FILE, "the database refused a usage record; it is set aside in the spool directory");
        }
        metrics::counter!("rampart_ledger_refused_total").increment(refused.len() as u64);
        metrics::counter!("rampart_ledger_records_total").increment(new);
        Ok(())
    }

    async fn sync(&self) {
        let ledger = self.ledger.clone();
        let synced = tokio::task::spawn_blocking(move || ledger.spool.sync()).await;
        if !matches!(synced, Ok(Ok(()))) {
            metrics::counter!("rampart_ledger_write_failures_total", "stage" => "spool")
                .increment(1);
            tracing::error!(target: "rampart::ledger", "cannot sync the ledger spool to disk");
        }
    }

    async fn purge(&self, store: &Store) {
        let Some(retention) = self.config.retention() else {
            return;
        };
        // Checked: the configuration caps the retention, and a cut-off before the calendar's
        // start has nothing older than it to purge.
        let Some(before) = time::Duration::try_from(retention)
            .ok()
            .and_then(|r| OffsetDateTime::now_utc().checked_sub(r))
        else {
            return;
        };
        loop {
            match store.usage().purge_usage_records(before, PURGE_CHUNK).await {
                Ok(n) => {
                    metrics::counter!("rampart_ledger_purged_total").increment(n);
                    if n < u64::from(PURGE_CHUNK) {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    metrics::counter!("rampart_ledger_write_failures_total", "stage" => "purge")
                        .increment(1);
                    tracing::warn!(target: "rampart::ledger", error = %e, "cannot purge expired usage records");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ledger() -> (tempfile::TempDir, Arc<Ledger>) {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _writer) = Ledger::open(&LedgerConfig::default(), dir.path(), 1).unwrap();
        (dir, ledger)
    }

    fn stage(ledger: &Arc<Ledger>, n: u64) -> Staged {
        ledger
            .clone()
            .stage_prepared(Prepared::new(crate::spool::tests::record(n)), |_| {})
    }

    #[test]
    fn records_committed_in_the_same_turn_share_one_write() {
        let (_dir, ledger) = ledger();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..3)
                .map(|n| {
                    let ledger = ledger.clone();
                    tokio::spawn(async move { stage(&ledger, n).commit().await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(ledger.spool.writes(), 1);
        assert_eq!(ledger.queue_depth(), 3);
    }

    #[test]
    fn a_commit_waits_one_turn_then_the_record_is_written() {
        let (_dir, ledger) = ledger();
        let mut commit = std::pin::pin!(stage(&ledger, 1).commit());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(commit.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ledger.queue_depth(), 0);
        assert!(commit.as_mut().poll(&mut cx).is_ready());
        assert_eq!((ledger.spool.writes(), ledger.queue_depth()), (1, 1));
    }

    /// A log writer keeping what it is given.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_spool_that_cannot_be_written_logs_its_first_failure_then_counts_the_others() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let (ledger, _writer) = Ledger::open(&LedgerConfig::default(), &dir, 1).unwrap();
        // Its directory replaced by a file: no segment can be made.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&recorder, || {
                // A flood of failing requests, one failing group write of three among them.
                for n in 0..500 {
                    ledger.record_prepared(Prepared::new(crate::spool::tests::record(n)), |_| {});
                }
                let first = stage(&ledger, 500);
                drop((stage(&ledger, 501), stage(&ledger, 502)));
                drop(first);
                // The writer's periodic check reports what was left out once a period has
                // passed (not yet), and at the end whatever the time.
                ledger.log_overdue_spool_failures(false);
                ledger.log_overdue_spool_failures(true);
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(
            logged[0].contains("cannot write the ledger spool")
                && logged[0].contains("records=1 suppressed=0"),
            "{text}"
        );
        assert!(
            logged[1].contains("could not be written for more records")
                && logged[1].contains("suppressed=502"),
            "{text}"
        );
        // The counter counts every failed record; memory holds them all.
        let rendered = metrics.render();
        assert!(
            rendered.contains("rampart_ledger_write_failures_total{stage=\"spool\"} 503"),
            "{rendered}"
        );
        assert_eq!(ledger.queue_depth(), 503);
    }

    #[test]
    fn a_staged_record_dropped_before_its_commit_is_written_then() {
        let (_dir, ledger) = ledger();
        drop(stage(&ledger, 1));
        let mut commit = Box::pin(stage(&ledger, 2).commit());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(commit.as_mut().poll(&mut cx).is_pending());
        drop(commit);
        assert_eq!((ledger.spool.writes(), ledger.queue_depth()), (2, 2));
    }
}
