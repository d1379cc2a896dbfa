//! Message batches and the local queue on both engines (re-exported through `suite`).

use rampart_store::batches::*;
use rampart_store::*;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

use crate::harness::TestDb;

const T0: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

fn new_batch(id: &str, team: Option<Uuid>, n: usize, at: OffsetDateTime) -> NewBatch {
    NewBatch {
        id: id.to_owned(),
        owner: team.map_or_else(|| "cfg:test".to_owned(), |t| format!("team:{t}")),
        team_id: team,
        key_id: Some(Uuid::from_u128(7)),
        user_id: None,
        key_label: Some("rk_test".to_owned()),
        mode: BatchMode::Local,
        request_count: n as u64,
        reserved_micro_usd: 0,
        created_at: at,
        expires_at: at + Duration::hours(24),
        results_until: at + Duration::days(29),
        items: (0..n)
            .map(|i| NewBatchItem {
                custom_id: format!("item-{i}"),
                params: r#"{"model":"m","max_tokens":5,"messages":[]}"#.to_owned(),
                worst_micro_usd: 10,
            })
            .collect(),
        item_models: ItemModels::default(),
    }
}

fn claim(limit: u32, per_team: u32, now: OffsetDateTime) -> ClaimOptions {
    ClaimOptions {
        limit,
        per_team,
        lease: Duration::seconds(30),
        now,
        after_team: None,
        skip_batches: Vec::new(),
    }
}

fn usage(batch: &str, idx: u64) -> UsageRecord {
    UsageRecord {
        id: item_usage_id(batch, idx),
        at: T0,
        request_id: format!("{batch}:{idx}"),
        key_id: Some(Uuid::from_u128(7)),
        team_id: None,
        user_id: None,
        key_label: None,
        endpoint: "/v1/messages/batches".to_owned(),
        model_requested: Some("m".to_owned()),
        model_served: Some("m".to_owned()),
        status: 200,
        error_type: None,
        input_tokens: 1,
        output_tokens: 2,
        cache_write_5m_tokens: 0,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 0,
        cost_micro_usd: 3,
        priced: true,
        latency_us: 1,
        upstream_latency_us: None,
        upstream_attempts: 1,
        streamed: false,
        cache_hit: false,
        client_aborted: false,
        saved_micro_usd: 0,
    }
}

/// A new one-item batch `batch_id` whose first attempt (claimed at `T0`) failed with
/// "overloaded", to be retried from `not_before`.
async fn failed_once(db: &TestDb, batch_id: &str, not_before: OffsetDateTime) -> Completed {
    db.batches()
        .create_batch(&new_batch(batch_id, None, 1, T0))
        .await
        .unwrap();
    let c = db.batches().claim_items(&claim(1, 1, T0)).await.unwrap();
    assert_eq!((c.len(), c[0].attempt), (1, 1));
    let retry = Outcome::Retry {
        not_before,
        error: "overloaded".to_owned(),
    };
    db.batches()
        .complete_items(&[done(&c[0], retry)], T0)
        .await
        .unwrap()
}

/// The dead letters of `batch_id`.
async fn dead_letters(db: &TestDb, batch_id: &str) -> Vec<DeadLetter> {
    db.batches()
        .list_dead_letters(&DeadLetterQuery {
            batch_id: Some(batch_id.to_owned()),
            limit: 10,
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap()
}

fn done(c: &ClaimedItem, outcome: Outcome) -> rampart_store::batches::Completion {
    rampart_store::batches::Completion {
        batch_id: c.batch_id.clone(),
        idx: c.idx,
        attempt: c.attempt,
        outcome,
        usage: Some(usage(&c.batch_id, c.idx)),
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded(r#"{"type":"succeeded","message":{}}"#.to_owned())
}

async fn usage_rows(db: &TestDb) -> u64 {
    let q = UsageQuery {
        from: T0 - Duration::days(1),
        to: T0 + Duration::days(1),
        key_id: None,
        team_id: None,
        user_id: None,
        model: None,
        group_by: UsageGroupBy::default(),
    };
    db.usage()
        .usage_summary(&q)
        .await
        .unwrap()
        .first()
        .map_or(0, |r| r.requests)
}

pub async fn batches_are_listed_per_owner_newest_first_with_cursors(db: &TestDb) {
    let team = db.create_team("batchers", None).await.unwrap().id;
    for i in 0..5 {
        let b = new_batch(
            &format!("msgbatch_{i}"),
            Some(team),
            1,
            T0 + Duration::seconds(i),
        );
        db.batches().create_batch(&b).await.unwrap();
    }
    db.batches()
        .create_batch(&new_batch("msgbatch_other", None, 1, T0))
        .await
        .unwrap();
    let owner = format!("team:{team}");
    let page = db
        .batches()
        .list_batches(&owner, &Cursor::Start, 2)
        .await
        .unwrap();
    let ids: Vec<_> = page.batches.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["msgbatch_4", "msgbatch_3"]);
    assert!(page.has_more);
    let page = db
        .batches()
        .list_batches(&owner, &Cursor::After("msgbatch_3".to_owned()), 10)
        .await
        .unwrap();
    let ids: Vec<_> = page.batches.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["msgbatch_2", "msgbatch_1", "msgbatch_0"]);
    assert!(!page.has_more);
    let page = db
        .batches()
        .list_batches(&owner, &Cursor::Before("msgbatch_1".to_owned()), 2)
        .await
        .unwrap();
    let ids: Vec<_> = page.batches.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["msgbatch_3", "msgbatch_2"]);
    assert!(page.has_more);
    // Another owner's cursor is not found, and a duplicate custom_id is a conflict.
    assert!(matches!(
        db.batches()
            .list_batches(&owner, &Cursor::After("msgbatch_other".to_owned()), 2)
            .await,
        Err(StoreError::NotFound)
    ));
    let mut dup = new_batch("msgbatch_dup", None, 2, T0);
    dup.items[1].custom_id = "item-0".to_owned();
    assert!(matches!(
        db.batches().create_batch(&dup).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        db.batches().get_batch("msgbatch_dup").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn claims_keep_each_team_within_its_limit_and_share_slots_fairly(db: &TestDb) {
    let a = db.create_team("team-a", None).await.unwrap().id;
    let b = db.create_team("team-b", None).await.unwrap().id;
    db.batches()
        .create_batch(&new_batch("msgbatch_a", Some(a), 50, T0))
        .await
        .unwrap();
    db.batches()
        .create_batch(&new_batch(
            "msgbatch_b",
            Some(b),
            3,
            T0 + Duration::seconds(1),
        ))
        .await
        .unwrap();
    let now = T0 + Duration::seconds(2);
    let first = db.batches().claim_items(&claim(8, 4, now)).await.unwrap();
    let count = |items: &[ClaimedItem], id: &str| items.iter().filter(|c| c.batch_id == id).count();
    // Team A has 50 ready items, team B 3: B still gets its share, A stops at its limit.
    assert_eq!(count(&first, "msgbatch_a"), 4);
    assert_eq!(count(&first, "msgbatch_b"), 3);
    assert!(first.iter().all(|c| c.attempt == 1 && !c.maybe_duplicate));
    assert_eq!(first[0].key_label.as_deref(), Some("rk_test"));
    // Nothing more for A while its four run.
    let more = db.batches().claim_items(&claim(8, 4, now)).await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    // Two of A's finish: two more of A's are claimable.
    let finished: Vec<_> = first
        .iter()
        .filter(|c| c.batch_id == "msgbatch_a")
        .take(2)
        .map(|c| done(c, ok()))
        .collect();
    db.batches().complete_items(&finished, now).await.unwrap();
    let next = db.batches().claim_items(&claim(8, 4, now)).await.unwrap();
    assert_eq!(count(&next, "msgbatch_a"), 2);
}

pub async fn a_completion_writes_its_usage_once_and_the_last_one_ends_the_batch(db: &TestDb) {
    db.batches()
        .create_batch(&new_batch("msgbatch_c", None, 3, T0))
        .await
        .unwrap();
    let items = db.batches().claim_items(&claim(10, 10, T0)).await.unwrap();
    assert_eq!(items.len(), 3);
    let first = db
        .batches()
        .complete_items(&[done(&items[0], ok()), done(&items[1], ok())], T0)
        .await
        .unwrap();
    assert_eq!(first.applied, [true, true]);
    assert!(first.ended.is_empty());
    let b = db.batches().get_batch("msgbatch_c").await.unwrap();
    assert_eq!((b.succeeded, b.processing(), b.ended_at), (2, 1, None));
    // The same completion again is not applied and inserts nothing.
    let again = db
        .batches()
        .complete_items(&[done(&items[0], ok())], T0)
        .await
        .unwrap();
    assert_eq!(again.applied, [false]);
    let error = Outcome::Errored(r#"{"type":"errored","error":{}}"#.to_owned());
    let last = db
        .batches()
        .complete_items(&[done(&items[2], error)], T0 + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(last.ended, ["msgbatch_c"]);
    let b = db.batches().get_batch("msgbatch_c").await.unwrap();
    assert_eq!(b.processing_status, "ended");
    assert_eq!((b.succeeded, b.errored), (2, 1));
    assert_eq!(b.ended_at, Some(T0 + Duration::seconds(5)));
    assert_eq!(usage_rows(db).await, 3);
    let results = db
        .batches()
        .batch_results("msgbatch_c", 0, 100)
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.result.is_some()));
}

pub async fn a_lapsed_lease_is_reclaimed_as_maybe_duplicate_and_charged_once(db: &TestDb) {
    db.batches()
        .create_batch(&new_batch("msgbatch_d", None, 1, T0))
        .await
        .unwrap();
    let first = db.batches().claim_items(&claim(1, 1, T0)).await.unwrap();
    assert_eq!(first.len(), 1);
    // The claimer "crashes": nobody extends its lease. Before it lapses, nothing to claim.
    let early = T0 + Duration::seconds(10);
    assert!(
        db.batches()
            .claim_items(&claim(1, 1, early))
            .await
            .unwrap()
            .is_empty()
    );
    let late = T0 + Duration::seconds(31);
    let second = db.batches().claim_items(&claim(1, 1, late)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert!(second[0].maybe_duplicate);
    // Both attempts finish; only the current claim's completion counts.
    let out = db
        .batches()
        .complete_items(&[done(&second[0], ok()), done(&first[0], ok())], late)
        .await
        .unwrap();
    assert_eq!(out.applied, [true, false]);
    assert_eq!(out.usage_inserted, 1);
    assert_eq!(usage_rows(db).await, 1);
    let b = db.batches().get_batch("msgbatch_d").await.unwrap();
    assert_eq!((b.processing_status.as_str(), b.succeeded), ("ended", 1));
}

/// A claim leaves the batches it is asked to skip alone, and takes the others' items.
pub async fn claims_skip_the_batches_asked(db: &TestDb) {
    let team = Some(Uuid::from_u128(41));
    for id in ["msgbatch_s1", "msgbatch_s2"] {
        db.batches()
            .create_batch(&new_batch(id, team, 3, T0))
            .await
            .unwrap();
    }
    let mut o = claim(10, 10, T0);
    o.skip_batches = vec!["msgbatch_s1".to_owned()];
    let c = db.batches().claim_items(&o).await.unwrap();
    assert_eq!(c.len(), 3);
    assert!(c.iter().all(|i| i.batch_id == "msgbatch_s2"));
    o.skip_batches.push("msgbatch_s2".to_owned());
    assert!(db.batches().claim_items(&o).await.unwrap().is_empty());
    o.skip_batches.clear();
    let c = db.batches().claim_items(&o).await.unwrap();
    assert_eq!(c.len(), 3);
    assert!(c.iter().all(|i| i.batch_id == "msgbatch_s1"));
}

/// An item deferred by its key's rate limits is queued again as it was: not before the time
/// given, with the attempt it was claimed with given back and its last error kept, so deferrals
/// never use up the attempts of real failures.
pub async fn a_deferred_item_keeps_its_attempts_and_its_last_error(db: &TestDb) {
    let out = failed_once(db, "msgbatch_df", T0).await;
    assert_eq!(out.applied, [true]);
    let mut at = T0;
    for _ in 0..3 {
        let c = db.batches().claim_items(&claim(1, 1, at)).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].attempt, 2, "a deferral uses no attempt");
        let later = at + Duration::seconds(5);
        let out = db
            .batches()
            .complete_items(&[done(&c[0], Outcome::Deferred { not_before: later })], at)
            .await
            .unwrap();
        assert_eq!(
            (out.applied.as_slice(), out.usage_inserted),
            (&[true][..], 0)
        );
        assert!(out.ended.is_empty(), "a deferred item is not finished");
        // Not claimable before its time.
        assert!(
            db.batches()
                .claim_items(&claim(1, 1, later - Duration::seconds(1)))
                .await
                .unwrap()
                .is_empty()
        );
        at = later;
    }
    // A stale deferral (a claim that is no longer current) changes nothing.
    let c = db.batches().claim_items(&claim(1, 1, at)).await.unwrap();
    assert_eq!(c[0].attempt, 2);
    let mut stale = done(&c[0], Outcome::Deferred { not_before: at });
    stale.attempt = 1;
    let out = db.batches().complete_items(&[stale], at).await.unwrap();
    assert_eq!(out.applied, [false]);
    // The failure before the deferrals is still the item's last error.
    let kept = db
        .raw(
            "UPDATE batch_items SET last_error = last_error \
             WHERE batch_id = 'msgbatch_df' AND last_error = 'overloaded'",
        )
        .await
        .unwrap();
    assert_eq!(kept, 1);
    let dead = Outcome::DeadLetter {
        result: r#"{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"x"}}}"#.to_owned(),
        status: Some(529),
        error: "overloaded again".to_owned(),
    };
    let out = db
        .batches()
        .complete_items(&[done(&c[0], dead)], at)
        .await
        .unwrap();
    assert_eq!(out.ended, ["msgbatch_df"]);
    let letters = dead_letters(db, "msgbatch_df").await;
    assert_eq!(letters[0].attempts, 2, "two real attempts, three deferrals");
    assert_eq!(letters[0].last_error, "overloaded again");
}

pub async fn retries_end_in_a_dead_letter_that_can_be_replayed(db: &TestDb) {
    let out = failed_once(db, "msgbatch_e", T0 + Duration::seconds(2)).await;
    assert_eq!(out.applied, [true]);
    assert_eq!(out.usage_inserted, 0, "a retried attempt is not billed");
    // Backoff: not claimable before not_before.
    assert!(
        db.batches()
            .claim_items(&claim(1, 1, T0 + Duration::seconds(1)))
            .await
            .unwrap()
            .is_empty()
    );
    let c = db
        .batches()
        .claim_items(&claim(1, 1, T0 + Duration::seconds(2)))
        .await
        .unwrap();
    assert_eq!(c[0].attempt, 2);
    let dead = Outcome::DeadLetter {
        result: r#"{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"x"}}}"#.to_owned(),
        status: Some(529),
        error: r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#.to_owned(),
    };
    let out = db
        .batches()
        .complete_items(&[done(&c[0], dead)], T0 + Duration::seconds(3))
        .await
        .unwrap();
    assert_eq!(out.ended, ["msgbatch_e"]);
    let letters = dead_letters(db, "msgbatch_e").await;
    assert_eq!(letters.len(), 1);
    let dl = &letters[0];
    assert_eq!((dl.attempts, dl.last_status), (2, Some(529)));
    assert_eq!(dl.custom_id, "item-0");
    assert_eq!(db.batches().get_dead_letter(dl.id).await.unwrap(), *dl);
    // Replay: the item runs again; the batch's count moves from errored to succeeded.
    let replayed = db
        .batches()
        .replay_dead_letter(dl.id, T0 + Duration::seconds(4), None)
        .await
        .unwrap();
    assert_eq!(replayed.replay_count, 1);
    assert!(matches!(
        db.batches()
            .replay_dead_letter(dl.id, T0 + Duration::seconds(4), None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let c = db
        .batches()
        .claim_items(&claim(1, 1, T0 + Duration::seconds(5)))
        .await
        .unwrap();
    assert_eq!(c[0].attempt, 1);
    let mut fin = done(&c[0], ok());
    fin.usage = None;
    db.batches()
        .complete_items(&[fin], T0 + Duration::seconds(5))
        .await
        .unwrap();
    let b = db.batches().get_batch("msgbatch_e").await.unwrap();
    assert_eq!((b.succeeded, b.errored, b.processing()), (1, 0, 0));
    assert!(matches!(
        db.batches().get_dead_letter(Uuid::nil()).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn cancel_stops_unstarted_items_and_expiry_ends_the_rest(db: &TestDb) {
    db.batches()
        .create_batch(&new_batch("msgbatch_f", None, 4, T0))
        .await
        .unwrap();
    let running = db.batches().claim_items(&claim(1, 1, T0)).await.unwrap();
    let b = db.batches().cancel_batch("msgbatch_f", T0).await.unwrap();
    assert_eq!(b.processing_status, "canceling");
    assert_eq!((b.canceled, b.processing()), (3, 1));
    assert!(matches!(
        db.batches().delete_batch("msgbatch_f").await,
        Err(StoreError::Invalid(_))
    ));
    db.batches()
        .complete_items(&[done(&running[0], ok())], T0)
        .await
        .unwrap();
    let b = db.batches().get_batch("msgbatch_f").await.unwrap();
    assert_eq!(b.processing_status, "ended");
    assert!(b.ended_at.is_some());

    db.batches()
        .create_batch(&new_batch("msgbatch_g", None, 2, T0))
        .await
        .unwrap();
    assert!(
        db.batches()
            .expire_batches(T0 + Duration::hours(23))
            .await
            .unwrap()
            .is_empty()
    );
    let ended = db
        .batches()
        .expire_batches(T0 + Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(ended, ["msgbatch_g"]);
    let b = db.batches().get_batch("msgbatch_g").await.unwrap();
    assert_eq!((b.expired, b.processing_status.as_str()), (2, "ended"));
    let results = db
        .batches()
        .batch_results("msgbatch_g", 0, 10)
        .await
        .unwrap();
    assert_eq!(results[0].result.as_deref(), Some(r#"{"type":"expired"}"#));

    // Retention: the results go, the batch stays visible; then it can be deleted.
    assert_eq!(
        db.batches()
            .archive_batches(T0 + Duration::days(30))
            .await
            .unwrap(),
        2
    );
    let b = db.batches().get_batch("msgbatch_g").await.unwrap();
    assert!(b.archived_at.is_some());
    assert!(
        db.batches()
            .batch_results("msgbatch_g", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    db.batches().delete_batch("msgbatch_g").await.unwrap();
    assert!(matches!(
        db.batches().get_batch("msgbatch_g").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn an_upstream_batch_ends_with_its_usage_in_one_transaction(db: &TestDb) {
    let mut b = new_batch("msgbatch_up", None, 0, T0);
    b.mode = BatchMode::Upstream;
    b.request_count = 2;
    db.batches().create_batch(&b).await.unwrap();
    let open = db.batches().open_upstream_batches(10).await.unwrap();
    assert_eq!(open.len(), 1);
    let state = UpstreamState {
        processing_status: "ended".to_owned(),
        succeeded: 1,
        errored: 1,
        canceled: 0,
        expired: 0,
        cancel_initiated_at: None,
    };
    let records = [usage("msgbatch_up", 0), usage("msgbatch_up", 1)];
    assert!(
        db.batches()
            .end_upstream_batch("msgbatch_up", &state, &records, T0)
            .await
            .unwrap()
    );
    assert!(
        !db.batches()
            .end_upstream_batch("msgbatch_up", &state, &records, T0)
            .await
            .unwrap()
    );
    assert_eq!(usage_rows(db).await, 2);
    let b = db.batches().get_batch("msgbatch_up").await.unwrap();
    assert_eq!((b.succeeded, b.errored, b.ended_at), (1, 1, Some(T0)));
    assert!(
        db.batches()
            .open_upstream_batches(10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A new upstream-mode batch `id` of `n` items (`item-{i}`) asking `model(i)`.
fn upstream_batch(id: &str, n: usize, model: impl Fn(usize) -> Option<String>) -> NewBatch {
    let mut b = new_batch(id, None, 0, T0);
    b.mode = BatchMode::Upstream;
    b.request_count = n as u64;
    let items: Vec<(String, Option<String>)> =
        (0..n).map(|i| (format!("item-{i}"), model(i))).collect();
    b.item_models = ItemModels::from_items(items.iter().map(|(id, m)| (id.as_str(), m.as_deref())));
    b
}

pub async fn an_upstream_batch_keeps_its_items_models_until_it_ends(db: &TestDb) {
    // 5,000 items (more than one INSERT's worth of the 2,000 rows a statement takes), two in
    // three asking the common model, the rest another, every 7th none.
    let model = |i: usize| match (i % 7, i % 3) {
        (0, _) => None,
        (_, 0) => Some("claude-haiku-4-5".to_owned()),
        _ => Some("claude-sonnet-4-6".to_owned()),
    };
    let b = upstream_batch("msgbatch_models", 5000, model);
    db.batches().create_batch(&b).await.unwrap();
    let kept = db.batches().item_models("msgbatch_models").await.unwrap();
    assert_eq!(kept, b.item_models);
    for i in 0..5000 {
        assert_eq!(kept.asked(&format!("item-{i}")), model(i).as_deref(), "{i}");
    }
    assert!(
        db.batches()
            .item_models("msgbatch_other")
            .await
            .unwrap()
            .is_empty()
    );

    let state = UpstreamState {
        processing_status: "ended".to_owned(),
        succeeded: 5000,
        errored: 0,
        canceled: 0,
        expired: 0,
        cancel_initiated_at: None,
    };
    assert!(
        db.batches()
            .end_upstream_batch("msgbatch_models", &state, &[], T0)
            .await
            .unwrap()
    );
    // Read only for the usage records written as it ends: gone with them.
    assert!(
        db.batches()
            .item_models("msgbatch_models")
            .await
            .unwrap()
            .is_empty()
    );

    // A batch's row going first (an operator's delete) takes its models with it.
    db.batches()
        .create_batch(&upstream_batch("msgbatch_gone", 2, |_| {
            Some("claude-haiku-4-5".to_owned())
        }))
        .await
        .unwrap();
    db.raw("DELETE FROM message_batches WHERE id = 'msgbatch_gone'")
        .await
        .unwrap();
    assert_eq!(
        db.raw("DELETE FROM upstream_item_models").await.unwrap(),
        0,
        "no models outlive their batch"
    );
}

pub async fn a_batch_is_stored_with_all_its_items_models_or_not_at_all(db: &TestDb) {
    // The last item's model cannot be stored (over 200 characters): nor can the batch.
    let long = "m".repeat(MAX_MODEL_CHARS + 1);
    let bad = upstream_batch("msgbatch_bad", 3000, |i| {
        Some(if i == 2999 {
            long.clone()
        } else {
            format!("model-{}", i % 2)
        })
    });
    assert!(matches!(
        db.batches().create_batch(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        db.batches().get_batch("msgbatch_bad").await,
        Err(StoreError::NotFound)
    ));
    assert!(
        db.batches()
            .item_models("msgbatch_bad")
            .await
            .unwrap()
            .is_empty()
    );

    // A batch id already stored is a conflict, and its models are not touched.
    let first = upstream_batch("msgbatch_twice", 2, |_| Some("a".to_owned()));
    db.batches().create_batch(&first).await.unwrap();
    let second = upstream_batch("msgbatch_twice", 3, |i| Some(format!("b{i}")));
    assert!(matches!(
        db.batches().create_batch(&second).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        db.batches().item_models("msgbatch_twice").await.unwrap(),
        first.item_models
    );
}
