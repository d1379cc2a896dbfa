//! Limits and budgets per key and team, on both engines (instantiated in `main.rs`).

use rampart_store::limits;
use rampart_store::*;
use uuid::Uuid;

use crate::harness::TestDb;

fn key(team_id: Uuid, hash: &[u8]) -> NewApiKey {
    NewApiKey {
        team_id,
        user_id: None,
        name: "limited".to_owned(),
        prefix: "rk_live_lmt".to_owned(),
        key_hash: hash.to_vec(),
        allowed_models: vec![],
        allowed_endpoints: vec![],
        expires_at: None,
    }
}

fn some_limits() -> LimitSettings {
    LimitSettings {
        rpm: Some(60),
        itpm: Some(40_000),
        otpm: None,
        concurrency: Some(4),
        budget: Some(BudgetSetting {
            micros: 12_500_000,
            period: BudgetPeriod::Day,
        }),
    }
}

pub async fn key_limits_are_created_with_the_key_and_replaced_whole(db: &TestDb) {
    let team = db.create_team("lim", None).await.unwrap();
    let audit = NewAuditEvent::new("cli:test", "key.create", "team:lim");
    let k = db
        .limits()
        .create_api_key_with_limits(&key(team.id, b"h1"), &some_limits(), Some(&audit))
        .await
        .unwrap();
    assert_eq!(db.limits().key_limits(k.id).await.unwrap(), some_limits());
    let only_rpm = LimitSettings {
        rpm: Some(5),
        ..LimitSettings::default()
    };
    db.limits()
        .set_key_limits(k.id, &only_rpm, None)
        .await
        .unwrap();
    assert_eq!(db.limits().key_limits(k.id).await.unwrap(), only_rpm);
    // Empty settings remove the row; the key reads as unlimited.
    db.limits()
        .set_key_limits(k.id, &LimitSettings::default(), None)
        .await
        .unwrap();
    assert!(db.limits().key_limits(k.id).await.unwrap().is_empty());
    assert!(db.limits().all_limits().await.unwrap().keys.is_empty());
    let plain = db.create_api_key(&key(team.id, b"h2"), None).await.unwrap();
    assert!(db.limits().key_limits(plain.id).await.unwrap().is_empty());
}

pub async fn team_limits_and_key_defaults_round_trip(db: &TestDb) {
    let team = db.create_team("lim", None).await.unwrap();
    assert_eq!(
        db.limits().team_limits(team.id).await.unwrap(),
        TeamLimitSettings::default()
    );
    let settings = TeamLimitSettings {
        team: LimitSettings {
            otpm: Some(90_000),
            budget: Some(BudgetSetting {
                micros: 500_000_000,
                period: BudgetPeriod::Month,
            }),
            ..LimitSettings::default()
        },
        key_defaults: LimitSettings {
            rpm: Some(30),
            ..LimitSettings::default()
        },
    };
    db.limits()
        .set_team_limits(team.id, &settings, None)
        .await
        .unwrap();
    assert_eq!(db.limits().team_limits(team.id).await.unwrap(), settings);
    let all = db.limits().all_limits().await.unwrap();
    assert_eq!(all.teams, vec![(team.id, settings)]);
    db.limits()
        .set_team_limits(team.id, &TeamLimitSettings::default(), None)
        .await
        .unwrap();
    assert!(db.limits().all_limits().await.unwrap().teams.is_empty());
}

pub async fn bad_limits_and_missing_owners_are_refused_without_writing(db: &TestDb) {
    let team = db.create_team("lim", None).await.unwrap();
    let k = db.create_api_key(&key(team.id, b"h1"), None).await.unwrap();
    for bad in [
        LimitSettings {
            rpm: Some(0),
            ..LimitSettings::default()
        },
        LimitSettings {
            concurrency: Some(limits::MAX_CONCURRENCY + 1),
            ..LimitSettings::default()
        },
        LimitSettings {
            budget: Some(BudgetSetting {
                micros: 0,
                period: BudgetPeriod::Day,
            }),
            ..LimitSettings::default()
        },
    ] {
        let err = db
            .limits()
            .set_key_limits(k.id, &bad, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    }
    let err = db
        .limits()
        .set_team_limits(
            team.id,
            &TeamLimitSettings {
                key_defaults: LimitSettings {
                    itpm: Some(limits::MAX_RATE + 1),
                    ..LimitSettings::default()
                },
                ..TeamLimitSettings::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key_defaults.itpm"), "{err}");
    let audit = NewAuditEvent::new("cli:test", "key.limits", "key:x");
    assert!(matches!(
        db.limits()
            .set_key_limits(Uuid::now_v7(), &some_limits(), Some(&audit))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.limits().team_limits(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
    // A key creation with bad limits creates no key either.
    let before = db
        .list_api_keys(ApiKeyFilter::default())
        .await
        .unwrap()
        .len();
    let bad = LimitSettings {
        otpm: Some(0),
        ..LimitSettings::default()
    };
    assert!(
        db.limits()
            .create_api_key_with_limits(&key(team.id, b"h9"), &bad, None)
            .await
            .is_err()
    );
    assert_eq!(
        db.list_api_keys(ApiKeyFilter::default())
            .await
            .unwrap()
            .len(),
        before
    );
    assert!(db.limits().all_limits().await.unwrap().keys.is_empty());
    let events = db
        .list_audit(&AuditQuery {
            action: Some("key.limits".to_owned()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(events.is_empty(), "a refused write leaves no audit row");
}

pub async fn a_rotated_key_keeps_its_limits(db: &TestDb) {
    let team = db.create_team("lim", None).await.unwrap();
    let old = db
        .limits()
        .create_api_key_with_limits(&key(team.id, b"h1"), &some_limits(), None)
        .await
        .unwrap();
    let (new, _) = db
        .rotate_api_key(
            old.id,
            "rk_live_new",
            b"h2",
            time::Duration::hours(1),
            time::OffsetDateTime::now_utc(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(db.limits().key_limits(new.id).await.unwrap(), some_limits());
}

pub async fn the_directory_version_moves_with_key_team_and_limit_writes_only(db: &TestDb) {
    let v = || async { db.limits().directory_version().await.unwrap() };
    let v0 = v().await;
    let team = db.create_team("lim", None).await.unwrap();
    let v1 = v().await;
    assert!(v1 > v0);
    let k = db.create_api_key(&key(team.id, b"h1"), None).await.unwrap();
    let v2 = v().await;
    assert!(v2 > v1);
    db.limits()
        .set_key_limits(k.id, &some_limits(), None)
        .await
        .unwrap();
    let v3 = v().await;
    assert!(v3 > v2);
    // Recording key use is not a change of the directory.
    db.touch_api_keys_last_used(&[(k.id, time::OffsetDateTime::now_utc())])
        .await
        .unwrap();
    assert_eq!(v().await, v3);
    db.set_api_key_enabled(k.id, false, None).await.unwrap();
    let v4 = v().await;
    assert!(v4 > v3);
    db.limits()
        .set_team_limits(team.id, &TeamLimitSettings::default(), None)
        .await
        .unwrap();
    assert!(v().await >= v4);
    db.set_team_disabled(team.id, true, None).await.unwrap();
    assert!(v().await > v4);
}
