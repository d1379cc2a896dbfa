//! Team webhooks and their delivery attempts on both engines (re-exported through `suite`): the
//! webhook round trip, and the dispatcher's contract — an ended batch is due until delivered,
//! each attempt is claimed by exactly one caller, a running attempt's lease hides it, a failed
//! one is due again at its next attempt time, and `max_attempts` ends the retries.

use rampart_store::batches::*;
use rampart_store::webhooks::*;
use rampart_store::*;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::harness::TestDb;

fn sealed(tag: u8) -> SealedSecret {
    SealedSecret {
        ciphertext: vec![tag; 48],
        nonce: vec![tag; 12],
        key_id: format!("k{tag}"),
    }
}

fn write(team: Uuid, url: &str, enabled: bool, secret: Option<SealedSecret>) -> WebhookWrite {
    WebhookWrite {
        team_id: team,
        url: url.to_owned(),
        enabled,
        secret,
    }
}

/// A one-item local batch of `team`, ended (by expiry) at `ended`.
async fn ended_batch(db: &TestDb, id: &str, team: Uuid, ended: OffsetDateTime) {
    let created = ended - Duration::hours(25);
    db.batches()
        .create_batch(&NewBatch {
            id: id.to_owned(),
            owner: format!("team:{team}"),
            team_id: Some(team),
            key_id: None,
            user_id: None,
            key_label: None,
            mode: BatchMode::Local,
            request_count: 1,
            reserved_micro_usd: 0,
            created_at: created,
            expires_at: created + Duration::hours(24),
            results_until: created + Duration::days(29),
            items: vec![NewBatchItem {
                custom_id: "only".to_owned(),
                params: r#"{"model":"m","max_tokens":5,"messages":[]}"#.to_owned(),
                worst_micro_usd: 0,
            }],
            item_models: ItemModels::default(),
        })
        .await
        .unwrap();
    let ended_ids = db.batches().expire_batches(ended).await.unwrap();
    assert!(ended_ids.contains(&id.to_owned()), "{ended_ids:?}");
}

fn failed(at: OffsetDateTime, next: Option<OffsetDateTime>) -> AttemptOutcome {
    AttemptOutcome {
        finished_at: at,
        status_code: Some(500),
        error: None,
        delivered: false,
        next_attempt_at: next,
    }
}

pub async fn team_webhooks_round_trip_and_keep_their_secret(db: &TestDb) {
    let team = db.create_team("hooked", None).await.unwrap().id;
    let hooks = db.webhooks();
    assert!(matches!(
        hooks
            .put_team_webhook(&write(team, "https://a.example/h", true, None), None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        hooks
            .put_team_webhook(
                &write(Uuid::now_v7(), "https://a.example/h", true, Some(sealed(1))),
                None
            )
            .await,
        Err(StoreError::NotFound)
    ));
    let (made, created) = hooks
        .put_team_webhook(
            &write(team, "https://a.example/h", true, Some(sealed(1))),
            None,
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(made.secret, sealed(1));
    let (changed, created) = hooks
        .put_team_webhook(&write(team, "https://b.example/h", false, None), None)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        changed.secret,
        sealed(1),
        "the secret is kept without a new one"
    );
    assert_eq!(changed.created_at, made.created_at);
    let read = hooks.get_team_webhook(team).await.unwrap();
    assert_eq!(
        (read.url.as_str(), read.enabled),
        ("https://b.example/h", false)
    );
    assert_eq!(read.secret, sealed(1));
    let (rotated, _) = hooks
        .put_team_webhook(
            &write(team, "https://b.example/h", true, Some(sealed(2))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rotated.secret, sealed(2));
    hooks.delete_team_webhook(team, None).await.unwrap();
    assert!(matches!(
        hooks.get_team_webhook(team).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        hooks.delete_team_webhook(team, None).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn an_ended_batch_is_due_until_delivered_and_each_attempt_is_claimed_once(db: &TestDb) {
    let team = db.create_team("receiver", None).await.unwrap().id;
    let quiet = db.create_team("no-webhook", None).await.unwrap().id;
    let hooks = db.webhooks();
    hooks
        .put_team_webhook(
            &write(team, "https://r.example/h", true, Some(sealed(3))),
            None,
        )
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    ended_batch(db, "msgbatch_hook1", team, now).await;
    ended_batch(db, "msgbatch_quiet", quiet, now).await;

    let due = hooks.due_webhooks(now, 3, 10).await.unwrap();
    assert_eq!(due.len(), 1, "only the team with a webhook: {due:?}");
    let d = &due[0];
    assert_eq!(
        (d.batch.id.as_str(), d.attempt, d.team_id),
        ("msgbatch_hook1", 1, team)
    );
    assert_eq!(d.batch.processing_status, "ended");
    assert_eq!((d.batch.request_count, d.batch.expired), (1, 1));
    assert_eq!(d.secret, sealed(3));

    // Two instances race for attempt 1: exactly one gets it.
    let lease = now + Duration::seconds(40);
    let (a, b) = tokio::join!(
        hooks.claim_webhook_attempt(d, now, lease),
        hooks.claim_webhook_attempt(d, now, lease)
    );
    let claims: Vec<Uuid> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(claims.len(), 1);
    // While it runs, its lease hides it; once the lease passes, attempt 2 is due.
    assert!(hooks.due_webhooks(now, 3, 10).await.unwrap().is_empty());
    let after_lease = hooks.due_webhooks(lease, 3, 10).await.unwrap();
    assert_eq!(after_lease.first().map(|d| d.attempt), Some(2));

    // It fails; the next attempt is due at its time, not before.
    let next = now + Duration::seconds(5);
    hooks
        .finish_webhook_attempt(claims[0], &failed(now, Some(next)))
        .await
        .unwrap();
    assert!(hooks.due_webhooks(now, 3, 10).await.unwrap().is_empty());
    let again = hooks.due_webhooks(next, 3, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    let second = hooks
        .claim_webhook_attempt(&again[0], next, next + Duration::seconds(40))
        .await
        .unwrap()
        .unwrap();
    hooks
        .finish_webhook_attempt(
            second,
            &AttemptOutcome {
                finished_at: next,
                status_code: Some(204),
                error: None,
                delivered: true,
                next_attempt_at: None,
            },
        )
        .await
        .unwrap();
    assert!(
        hooks
            .due_webhooks(next + Duration::days(1), 3, 10)
            .await
            .unwrap()
            .is_empty(),
        "delivered: never due again"
    );

    let rows = hooks
        .list_webhook_deliveries(team, Some("msgbatch_hook1"), 10)
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    assert!(
        rows[0].delivered && rows[0].status_code == Some(204) && rows[0].next_attempt_at.is_none()
    );
    assert!(
        !rows[1].delivered && rows[1].status_code == Some(500) && rows[1].next_attempt_at.is_some()
    );
    assert!(
        hooks
            .list_webhook_deliveries(quiet, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn retries_stop_at_max_attempts_and_disabled_or_later_webhooks_send_nothing(db: &TestDb) {
    let team = db.create_team("flaky", None).await.unwrap().id;
    let hooks = db.webhooks();
    let now = OffsetDateTime::now_utc();
    // Ended before the webhook existed: not announced.
    ended_batch(db, "msgbatch_before", team, now - Duration::hours(1)).await;
    hooks
        .put_team_webhook(
            &write(team, "https://f.example/h", true, Some(sealed(4))),
            None,
        )
        .await
        .unwrap();
    ended_batch(db, "msgbatch_flaky", team, now + Duration::seconds(1)).await;
    let mut t = now + Duration::seconds(2);
    for attempt in 1..=2 {
        let due = hooks.due_webhooks(t, 2, 10).await.unwrap();
        assert_eq!(
            due.iter()
                .map(|d| (d.batch.id.as_str(), d.attempt))
                .collect::<Vec<_>>(),
            [("msgbatch_flaky", attempt)]
        );
        let id = hooks
            .claim_webhook_attempt(&due[0], t, t + Duration::seconds(40))
            .await
            .unwrap()
            .unwrap();
        let next = (attempt < 2).then(|| t + Duration::seconds(1));
        hooks
            .finish_webhook_attempt(id, &failed(t, next))
            .await
            .unwrap();
        t += Duration::seconds(2);
    }
    assert!(
        hooks
            .due_webhooks(t + Duration::days(1), 2, 10)
            .await
            .unwrap()
            .is_empty(),
        "given up after 2"
    );
    // A disabled webhook sends nothing, even for a fresh batch.
    hooks
        .put_team_webhook(&write(team, "https://f.example/h", false, None), None)
        .await
        .unwrap();
    ended_batch(db, "msgbatch_disabled", team, t).await;
    assert!(
        hooks
            .due_webhooks(t + Duration::days(1), 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
