//! Caching policies per key and team: stored, replaced, removed when empty, validated, audited,
//! and every write moves the directory version the gateways poll.

use rampart_store::*;
use uuid::Uuid;

use crate::harness::TestDb;

fn key(team_id: Uuid) -> NewApiKey {
    NewApiKey {
        team_id,
        user_id: None,
        name: "cached".to_owned(),
        prefix: "rk_live_cch".to_owned(),
        key_hash: vec![7; 32],
        allowed_models: vec![],
        allowed_endpoints: vec![],
        expires_at: None,
    }
}

pub async fn cache_policies_round_trip_per_key_and_team_and_move_the_directory(db: &TestDb) {
    let t = db.create_team("payments", None).await.unwrap();
    let k = db.create_api_key(&key(t.id), None).await.unwrap();
    let repo = db.cache_policies();
    assert_eq!(
        repo.key_cache_policy(k.id).await.unwrap(),
        CachePolicy::default()
    );
    assert_eq!(
        repo.team_cache_policy(t.id).await.unwrap(),
        CachePolicy::default()
    );
    let before = db.limits().directory_version().await.unwrap();
    let team_policy = CachePolicy {
        response_enabled: Some(true),
        ttl_secs: Some(600),
        breakpoints_enabled: None,
    };
    let e = NewAuditEvent::new("cli:test", "team.cache_policy", "team:payments");
    repo.set_team_cache_policy(t.id, &team_policy, Some(&e))
        .await
        .unwrap();
    let key_policy = CachePolicy {
        response_enabled: Some(false),
        ttl_secs: None,
        breakpoints_enabled: Some(true),
    };
    repo.set_key_cache_policy(k.id, &key_policy, None)
        .await
        .unwrap();
    assert!(db.limits().directory_version().await.unwrap() > before);
    assert_eq!(repo.team_cache_policy(t.id).await.unwrap(), team_policy);
    assert_eq!(repo.key_cache_policy(k.id).await.unwrap(), key_policy);
    let all = repo.all_cache_policies().await.unwrap();
    assert_eq!(all.keys, vec![(k.id, key_policy)]);
    assert_eq!(all.teams, vec![(t.id, team_policy)]);
    // Replacing changes every field; an empty policy removes the row.
    let replaced = CachePolicy {
        ttl_secs: Some(60),
        ..CachePolicy::default()
    };
    repo.set_team_cache_policy(t.id, &replaced, None)
        .await
        .unwrap();
    assert_eq!(repo.team_cache_policy(t.id).await.unwrap(), replaced);
    let before = db.limits().directory_version().await.unwrap();
    repo.set_key_cache_policy(k.id, &CachePolicy::default(), None)
        .await
        .unwrap();
    assert!(db.limits().directory_version().await.unwrap() > before);
    let all = repo.all_cache_policies().await.unwrap();
    assert!(all.keys.is_empty(), "{all:?}");
    assert_eq!(all.teams.len(), 1);
    // The audit event went in with the write.
    let events = db
        .list_audit(&AuditQuery {
            action: Some("team.cache_policy".to_owned()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

pub async fn a_bad_cache_policy_or_a_missing_owner_writes_nothing(db: &TestDb) {
    let t = db.create_team("risk", None).await.unwrap();
    let repo = db.cache_policies();
    for ttl in [0, cache_policy::MAX_CACHE_TTL_SECS + 1] {
        let bad = CachePolicy {
            response_enabled: Some(true),
            ttl_secs: Some(ttl),
            breakpoints_enabled: None,
        };
        assert!(matches!(
            repo.set_team_cache_policy(t.id, &bad, None).await,
            Err(StoreError::Invalid(_))
        ));
    }
    let good = CachePolicy {
        response_enabled: Some(true),
        ..CachePolicy::default()
    };
    assert!(matches!(
        repo.set_team_cache_policy(Uuid::now_v7(), &good, None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        repo.set_key_cache_policy(Uuid::now_v7(), &good, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        repo.key_cache_policy(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        repo.team_cache_policy(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        repo.all_cache_policies().await.unwrap(),
        AllCachePolicies::default()
    );
}
