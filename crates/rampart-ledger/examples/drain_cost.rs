//! What the usage ledger costs per record, stage by stage, on this machine (release build):
//!
//! ```sh
//! cargo run --release -p rampart-ledger --example drain_cost [records]
//! ```
//!
//! 1. the request path: encode a record as a spool line, append it (one `write`) and queue it
//!    for the writer; the writer takes it from memory;
//! 2. recovery: read the spool back and decode it (what the writer does only after a restart);
//! 3. the database: insert the records into a fresh SQLite store in batches of 1000 (records and
//!    rollups, one transaction per batch): checked for stored ids as a spool replay is, then into
//!    another store unchecked as the writer's records from memory are, then the same batches
//!    replayed.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use rampart_ledger::spool::{Queued, Spool};
use rampart_store::{Store, UsageRecord};
use std::time::Duration;

use tokio::time::Instant;

fn record(n: u64) -> UsageRecord {
    let id = uuid::Uuid::now_v7();
    serde_json::from_value(serde_json::json!({
        "id": id,
        "at": 1_780_000_000_000_000_i64 + i64::try_from(n).unwrap(),
        "request_id": format!("req_rmp_{n:032x}"),
        "key_id": "0196c3a0-0000-7000-8000-000000000001",
        "team_id": "0196c3a0-0000-7000-8000-000000000002",
        "user_id": "0196c3a0-0000-7000-8000-000000000003",
        "key_label": "rk_abcd1",
        "endpoint": "/v1/messages",
        "model_requested": "claude-sonnet-4-6",
        "model_served": "claude-sonnet-4-6",
        "status": 200,
        "error_type": null,
        "input_tokens": 20,
        "output_tokens": 64,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "cache_read_tokens": 0,
        "cost_micro_usd": 1020,
        "priced": true,
        "latency_us": 180,
        "upstream_latency_us": 90,
        "upstream_attempts": 1,
        "streamed": false,
        "cache_hit": false,
        "client_aborted": false
    }))
    .unwrap()
}

fn per(n: usize, since: Instant) -> String {
    format!("{:.2} µs", since.elapsed().as_secs_f64() * 1e6 / n as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<UsageRecord> = (0..n as u64).map(record).collect();

    // DB_ONLY=1: the database stage alone (for a profiler); DB_ONLY=checked or DB_ONLY=memory:
    // only that insert of new records (for instruction counts of one path).
    let db_only = std::env::var_os("DB_ONLY").is_some();
    let db_stage = std::env::var("DB_ONLY").unwrap_or_default();
    let spool_dir = dir.path().join("spool");
    if !db_only {
        let spool = Spool::open(&spool_dir, 1, 64 * 1024 * 1024, false).unwrap();
        // The writer takes what arrived every 10 000 records (a lane queues at most 32 768).
        let (mut appending, mut taking) = (Duration::ZERO, Duration::ZERO);
        let mut spare = Queued::default();
        for chunk in records.chunks(10_000) {
            let t = Instant::now();
            for r in chunk {
                // The clone stands for the record the request path builds (and hands over).
                spool.append(r.clone()).map_err(|u| u.error).unwrap();
            }
            appending += t.elapsed();
            let t = Instant::now();
            let queued = spool.take_queued(spare);
            assert_eq!(queued.len(), chunk.len());
            spool.commit_queued(queued.slice(0, queued.len()));
            spare = queued; // emptied by the next take_queued, its room kept
            taking += t.elapsed();
        }
        println!(
            "append: encode, write, queue in memory (request path): {:.2} µs per record",
            appending.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "take from memory + commit offsets (writer): {:.2} µs per record",
            taking.as_secs_f64() * 1e6 / n as f64
        );
        drop(spool);

        // As after a crash: records spooled and never drained are read back from their files.
        let crashed = dir.path().join("crashed");
        {
            let spool = Spool::open(&crashed, 1, 1024 * 1024 * 1024, false).unwrap();
            for chunk in records.chunks(10_000) {
                for r in chunk {
                    spool.append(r.clone()).map_err(|u| u.error).unwrap();
                }
                // Dropped, as a crash loses memory.
                drop(spool.take_queued(Queued::default()));
            }
        }
        let spool = Spool::open(&crashed, 1, 1024 * 1024 * 1024, false).unwrap();
        let t = Instant::now();
        let mut read = 0;
        loop {
            let b = spool.read(1000).unwrap();
            if b.records.is_empty() {
                break;
            }
            read += b.records.len();
            spool.commit(&b);
        }
        assert_eq!(read, n);
        println!(
            "spool read + decode (recovery only): {} per record",
            per(n, t)
        );
    }

    // The records of a replayed spool into a fresh store: checked for stored ids first.
    if db_stage != "memory" {
        let store = fresh_store(&dir.path().join("checked")).await;
        println!(
            "database insert, new records checked for stored ids (spool replay), batches of 1000: {} per record",
            per(n, insert_all(&store, &records, false, true).await)
        );
    }
    if db_stage == "checked" {
        return;
    }
    // The writer's records from memory: new by construction, no check.
    let store = fresh_store(dir.path()).await;
    println!(
        "database insert, new records from memory, batches of 1000: {} per record",
        per(n, insert_all(&store, &records, true, true).await)
    );
    if db_stage == "memory" {
        return;
    }
    println!(
        "database insert, replayed records (all skipped): {} per record",
        per(n, insert_all(&store, &records, false, false).await)
    );
}

/// A migrated SQLite store in `dir`.
async fn fresh_store(dir: &std::path::Path) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    let store = Store::open(&rampart_store::sqlite_url(dir)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// `records` inserted in batches of 1000 or `BATCH` (unchecked as from memory, or checked); all of them new
/// or none. Returns when it started.
async fn insert_all(
    store: &Store,
    records: &[UsageRecord],
    from_memory: bool,
    new: bool,
) -> Instant {
    // BATCH=n: records per transaction (the writer's `batch_max`; 1000 unless set).
    let batch = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1000);
    let t = Instant::now();
    for chunk in records.chunks(batch) {
        let inserted = if from_memory {
            store.usage().insert_new_usage(chunk).await
        } else {
            store.usage().insert_usage(chunk).await
        };
        assert_eq!(inserted.unwrap(), if new { chunk.len() as u64 } else { 0 });
    }
    t
}
