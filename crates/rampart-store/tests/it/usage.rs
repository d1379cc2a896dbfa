//! The usage ledger's repository behaviour on both engines (re-exported through `suite`).

use rampart_store::*;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

use crate::harness::TestDb;

const DAY1: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

fn rec(
    n: u128,
    at: OffsetDateTime,
    key: Option<Uuid>,
    team: Option<Uuid>,
    model: &str,
) -> UsageRecord {
    UsageRecord {
        id: Uuid::from_u128(n),
        at,
        request_id: format!("req_{n}"),
        key_id: key,
        team_id: team,
        user_id: None,
        key_label: key.map(|k| k.simple().to_string()[..8].to_owned()),
        endpoint: "/v1/messages".to_owned(),
        model_requested: Some(model.to_owned()),
        model_served: Some(model.to_owned()),
        status: 200,
        error_type: None,
        input_tokens: 10,
        output_tokens: 20,
        cache_write_5m_tokens: 1,
        cache_write_1h_tokens: 2,
        cache_read_tokens: 3,
        cost_micro_usd: 1000,
        priced: true,
        latency_us: 1234,
        upstream_latency_us: Some(1000),
        upstream_attempts: 1,
        streamed: false,
        cache_hit: false,
        client_aborted: false,
        // Signed: breakpoints that only wrote the cache saved a negative amount.
        saved_micro_usd: if n.is_multiple_of(2) { 500 } else { -100 },
    }
}

fn query(from: OffsetDateTime, to: OffsetDateTime, group_by: UsageGroupBy) -> UsageQuery {
    UsageQuery {
        from,
        to,
        key_id: None,
        team_id: None,
        user_id: None,
        model: None,
        group_by,
    }
}

async fn total(db: &TestDb, q: &UsageQuery) -> UsageRow {
    let rows = db.usage().usage_summary(q).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

/// The writer's unchecked insert of records from memory: a record stored already, or twice in
/// the batch, fails the fast insert and the batch is redone checked, so it still counts once.
pub async fn inserting_new_usage_never_counts_a_stored_record_twice(db: &TestDb) {
    let key = Uuid::now_v7();
    let r = |n: u128, minute: i64| {
        rec(
            n,
            DAY1 + Duration::minutes(minute),
            Some(key),
            None,
            "claude-sonnet-4-6",
        )
    };
    assert_eq!(db.usage().insert_new_usage(&[]).await.unwrap(), 0);
    assert_eq!(
        db.usage()
            .insert_new_usage(&[r(1, 1), r(2, 2)])
            .await
            .unwrap(),
        2
    );
    // One stored already (a batch whose commit was reported failed, retried from memory).
    assert_eq!(
        db.usage()
            .insert_new_usage(&[r(3, 3), r(2, 2), r(4, 4)])
            .await
            .unwrap(),
        2
    );
    // The same record twice in one batch.
    assert_eq!(
        db.usage()
            .insert_new_usage(&[r(5, 5), r(5, 5)])
            .await
            .unwrap(),
        1
    );
    // A replay of everything.
    let all: Vec<UsageRecord> = (1..=5).map(|n| r(n, n as i64)).collect();
    assert_eq!(db.usage().insert_new_usage(&all).await.unwrap(), 0);
    assert_eq!(db.usage().insert_usage(&all).await.unwrap(), 0);
    let t = total(
        db,
        &query(DAY1, DAY1 + Duration::DAY, UsageGroupBy::default()),
    )
    .await;
    assert_eq!(t.requests, 5);
    assert_eq!(t.cost_micro_usd, 5000);
    let raw = db
        .usage()
        .list_usage_records(DAY1, DAY1 + Duration::DAY, 100)
        .await
        .unwrap();
    assert_eq!(raw, all);
}

pub async fn inserting_usage_twice_counts_it_once(db: &TestDb) {
    let key = Uuid::now_v7();
    let team = Uuid::now_v7();
    let a = rec(
        1,
        DAY1 + Duration::minutes(5),
        Some(key),
        Some(team),
        "claude-sonnet-4-6",
    );
    let b = rec(
        2,
        DAY1 + Duration::minutes(6),
        Some(key),
        Some(team),
        "claude-sonnet-4-6",
    );
    assert_eq!(
        db.usage()
            .insert_usage(&[a.clone(), b.clone()])
            .await
            .unwrap(),
        2
    );
    // A replay (crash after commit) with one new record: only that one counts.
    let c = rec(
        3,
        DAY1 + Duration::minutes(7),
        Some(key),
        Some(team),
        "claude-opus-4-6",
    );
    assert_eq!(db.usage().insert_usage(&[a, b, c]).await.unwrap(), 1);
    assert_eq!(db.usage().insert_usage(&[]).await.unwrap(), 0);
    // The same record twice in one batch counts once.
    let d = rec(
        4,
        DAY1 + Duration::minutes(8),
        Some(key),
        Some(team),
        "claude-opus-4-6",
    );
    assert_eq!(db.usage().insert_usage(&[d.clone(), d]).await.unwrap(), 1);
    let all = query(DAY1, DAY1 + Duration::DAY, UsageGroupBy::default());
    let t = total(db, &all).await;
    assert_eq!(t.requests, 4);
    assert_eq!(
        (
            t.input_tokens,
            t.output_tokens,
            t.cache_write_5m_tokens,
            t.cache_write_1h_tokens,
            t.cache_read_tokens
        ),
        (40, 80, 4, 8, 12)
    );
    assert_eq!(t.cost_micro_usd, 4000);
    assert_eq!(t.saved_micro_usd, -100 + 500 - 100 + 500);
    let raw = db
        .usage()
        .list_usage_records(DAY1, DAY1 + Duration::DAY, 100)
        .await
        .unwrap();
    assert_eq!(raw.len(), 4);
    assert_eq!(
        raw[0],
        rec(
            1,
            DAY1 + Duration::minutes(5),
            Some(key),
            Some(team),
            "claude-sonnet-4-6"
        )
    );
}

pub async fn usage_groups_by_key_team_model_and_day_from_the_rollups(db: &TestDb) {
    let (k1, k2, t1, t2) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let mut failed = rec(5, DAY1 + Duration::hours(36), None, None, "sonnet");
    failed.status = 401;
    failed.cost_micro_usd = 0;
    // Day 1 23:30 (k1/t1 sonnet), day 2 00:30 and 12:00 (k1 opus, k2/t2 sonnet), day 3 01:00,
    // and a refused request without a key on day 2.
    let records = [
        rec(
            1,
            DAY1 + Duration::minutes(23 * 60 + 30),
            Some(k1),
            Some(t1),
            "sonnet",
        ),
        rec(
            2,
            DAY1 + Duration::minutes(24 * 60 + 30),
            Some(k1),
            Some(t1),
            "opus",
        ),
        rec(3, DAY1 + Duration::hours(36), Some(k2), Some(t2), "sonnet"),
        rec(4, DAY1 + Duration::hours(49), Some(k2), Some(t2), "sonnet"),
        failed,
    ];
    db.usage().insert_usage(&records).await.unwrap();

    // The whole range, by day: three days, the error counted on day 2.
    let by_day = UsageGroupBy {
        day: true,
        ..UsageGroupBy::default()
    };
    let rows = db
        .usage()
        .usage_summary(&query(DAY1, DAY1 + Duration::days(3), by_day))
        .await
        .unwrap();
    let days: Vec<(time::Date, u64, u64)> = rows
        .iter()
        .map(|r| (r.day.unwrap(), r.requests, r.errors))
        .collect();
    assert_eq!(
        days,
        vec![
            (DAY1.date(), 1, 0),
            ((DAY1 + Duration::DAY).date(), 3, 1),
            ((DAY1 + Duration::days(2)).date(), 1, 0)
        ]
    );
    // A range that cuts days: 23:00 on day 1 to 01:00 on day 2 (hour rollups at both ends).
    let t = total(
        db,
        &query(
            DAY1 + Duration::hours(23),
            DAY1 + Duration::hours(25),
            UsageGroupBy::default(),
        ),
    )
    .await;
    assert_eq!(t.requests, 2);
    // Day-aligned middle plus partial ends: 12:00 day 1 to 02:00 day 3.
    let t = total(
        db,
        &query(
            DAY1 + Duration::hours(12),
            DAY1 + Duration::hours(50),
            UsageGroupBy::default(),
        ),
    )
    .await;
    assert_eq!(t.requests, 5);
    // Ranges widen to whole hours: 23:45 to 23:50 still covers the 23:30 record.
    let t = total(
        db,
        &query(
            DAY1 + Duration::minutes(23 * 60 + 45),
            DAY1 + Duration::minutes(23 * 60 + 50),
            UsageGroupBy::default(),
        ),
    )
    .await;
    assert_eq!(t.requests, 1);

    // By team and model; the key-less request is a group of its own with no team.
    let by_team_model = UsageGroupBy {
        team: true,
        model: true,
        ..UsageGroupBy::default()
    };
    let rows = db
        .usage()
        .usage_summary(&query(DAY1, DAY1 + Duration::days(3), by_team_model))
        .await
        .unwrap();
    let mut groups: Vec<(Option<Uuid>, Option<String>, u64)> = rows
        .iter()
        .map(|r| (r.team_id, r.model.clone(), r.requests))
        .collect();
    groups.sort();
    let mut expected = vec![
        (None, Some("sonnet".to_owned()), 1),
        (Some(t1), Some("opus".to_owned()), 1),
        (Some(t1), Some("sonnet".to_owned()), 1),
        (Some(t2), Some("sonnet".to_owned()), 2),
    ];
    expected.sort();
    assert_eq!(groups, expected);
    assert!(rows.iter().all(|r| r.key_id.is_none() && r.day.is_none()));

    // Filters: one key, one team, one model.
    let mut q = query(
        DAY1,
        DAY1 + Duration::days(3),
        UsageGroupBy {
            key: true,
            ..UsageGroupBy::default()
        },
    );
    q.key_id = Some(k1);
    let rows = db.usage().usage_summary(&q).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].key_id, rows[0].requests), (Some(k1), 2));
    let mut q = query(DAY1, DAY1 + Duration::days(3), UsageGroupBy::default());
    q.team_id = Some(t2);
    q.model = Some("sonnet".to_owned());
    assert_eq!(total(db, &q).await.requests, 2);
    q.model = Some("opus".to_owned());
    assert_eq!(total(db, &q).await.requests, 0, "no rows: a zero total");
}

pub async fn usage_filters_by_user(db: &TestDb) {
    let (u1, u2) = (Uuid::now_v7(), Uuid::now_v7());
    let mut a = rec(1, DAY1, Some(Uuid::now_v7()), None, "m");
    a.user_id = Some(u1);
    let mut b = rec(2, DAY1, Some(Uuid::now_v7()), None, "m");
    b.user_id = Some(u2);
    db.usage().insert_usage(&[a, b]).await.unwrap();
    let mut q = query(DAY1, DAY1 + Duration::HOUR, UsageGroupBy::default());
    q.user_id = Some(u1);
    assert_eq!(total(db, &q).await.requests, 1);
}

pub async fn a_large_batch_is_inserted_in_one_call(db: &TestDb) {
    let team = Uuid::now_v7();
    let keys: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
    let records: Vec<UsageRecord> = (0..2500u128)
        .map(|n| {
            let at = DAY1 + Duration::seconds(i64::try_from(n * 97).unwrap());
            rec(
                n + 1,
                at,
                Some(keys[n as usize % keys.len()]),
                Some(team),
                ["a", "b", "c"][n as usize % 3],
            )
        })
        .collect();
    assert_eq!(db.usage().insert_usage(&records).await.unwrap(), 2500);
    // The rollups agree with the raw rows.
    let t = total(
        db,
        &query(DAY1, DAY1 + Duration::days(4), UsageGroupBy::default()),
    )
    .await;
    assert_eq!(t.requests, 2500);
    assert_eq!(t.cost_micro_usd, 2_500_000);
    let by_key = UsageGroupBy {
        key: true,
        day: true,
        ..UsageGroupBy::default()
    };
    let rows = db
        .usage()
        .usage_summary(&query(DAY1, DAY1 + Duration::days(4), by_key))
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 2500);
    assert!(rows.len() >= keys.len());
}

pub async fn purging_deletes_old_raw_records_and_keeps_the_rollups(db: &TestDb) {
    let records: Vec<UsageRecord> = (0..5u128)
        .map(|n| {
            rec(
                n + 1,
                DAY1 + Duration::DAY * i32::try_from(n).unwrap(),
                None,
                None,
                "m",
            )
        })
        .collect();
    db.usage().insert_usage(&records).await.unwrap();
    let cutoff = DAY1 + Duration::days(3);
    assert_eq!(db.usage().purge_usage_records(cutoff, 2).await.unwrap(), 2);
    assert_eq!(
        db.usage().purge_usage_records(cutoff, 100).await.unwrap(),
        1
    );
    assert_eq!(
        db.usage().purge_usage_records(cutoff, 100).await.unwrap(),
        0
    );
    let left = db
        .usage()
        .list_usage_records(DAY1, DAY1 + Duration::days(10), 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|r| r.at >= cutoff));
    let t = total(
        db,
        &query(DAY1, DAY1 + Duration::days(10), UsageGroupBy::default()),
    )
    .await;
    assert_eq!(t.requests, 5);
}

/// Values the database could not take as they are (a NUL in text, which PostgreSQL refuses;
/// counts beyond any request's) are stored as they can be, and a rollup near the end of the
/// 64-bit range saturates instead of failing its batch (which would hold back every record
/// behind it).
pub async fn odd_values_are_stored_as_they_can_be_and_rollups_saturate(db: &TestDb) {
    let key = Some(Uuid::now_v7());
    let mut odd = rec(1, DAY1, key, None, "claude\0x");
    odd.request_id = "r".repeat(1000);
    odd.input_tokens = u64::MAX;
    odd.cost_micro_usd = u64::MAX;
    odd.saved_micro_usd = i64::MIN;
    assert_eq!(db.usage().insert_usage(&[odd]).await.unwrap(), 1);
    let stored = db
        .usage()
        .list_usage_records(DAY1, DAY1 + Duration::DAY, 10)
        .await
        .unwrap();
    let r = &stored[0];
    assert_eq!(r.model_requested.as_deref(), Some("claude\u{fffd}x"));
    assert_eq!(r.request_id.chars().count(), 256);
    assert_eq!(
        (r.input_tokens, r.cost_micro_usd, r.saved_micro_usd),
        (1 << 40, 1 << 50, -(1 << 50))
    );
    db.raw(
        "UPDATE usage_rollups SET cost_micro_usd = 9223372036854775000, \
         input_tokens = 9223372036854775000, saved_micro_usd = -9223372036854775000",
    )
    .await
    .unwrap();
    let mut more = rec(2, DAY1 + Duration::MINUTE, key, None, "claude\0x");
    more.cost_micro_usd = 1 << 50;
    more.input_tokens = 1 << 40;
    more.saved_micro_usd = -(1 << 50);
    assert_eq!(db.usage().insert_new_usage(&[more]).await.unwrap(), 1);
    let sum = total(
        db,
        &query(DAY1, DAY1 + Duration::DAY, UsageGroupBy::default()),
    )
    .await;
    assert_eq!(
        (
            sum.requests,
            sum.input_tokens,
            sum.cost_micro_usd,
            sum.saved_micro_usd
        ),
        (
            2,
            i64::MAX.unsigned_abs(),
            i64::MAX.unsigned_abs(),
            i64::MIN
        )
    );
}

pub async fn an_empty_or_inverted_usage_range_is_invalid(db: &TestDb) {
    let q = query(DAY1, DAY1, UsageGroupBy::default());
    assert!(matches!(
        db.usage().usage_summary(&q).await,
        Err(StoreError::Invalid(_))
    ));
}

/// An in-memory SQLite database is private to sqlx's pool, so the ledger's batches go through the
/// repository's statements there, with the same result as through the file's own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_database_takes_usage_through_the_pool() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let key = Uuid::now_v7();
    let r = |n: u128| {
        rec(
            n,
            DAY1 + Duration::minutes(n as i64),
            Some(key),
            None,
            "claude-sonnet-4-6",
        )
    };
    let usage = store.usage();
    assert_eq!(usage.insert_new_usage(&[r(1), r(2)]).await.unwrap(), 2);
    assert_eq!(usage.insert_new_usage(&[r(2), r(3)]).await.unwrap(), 1);
    assert_eq!(usage.insert_usage(&[r(1), r(3), r(4)]).await.unwrap(), 1);
    let rows = usage
        .usage_summary(&query(DAY1, DAY1 + Duration::DAY, UsageGroupBy::default()))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].cost_micro_usd), (4, 4000));
}
