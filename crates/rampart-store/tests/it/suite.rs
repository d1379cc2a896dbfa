//! The repository behaviour both engines must share. Each function is one test, instantiated per
//! engine by `on_both_engines!` in `main.rs`.

use std::sync::Arc;

use rampart_store::*;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

pub use crate::batches::*;
pub use crate::cache_policy::*;
use crate::harness::TestDb;
pub use crate::limits::*;
pub use crate::usage::*;
pub use crate::webhooks::*;

const T0: OffsetDateTime = datetime!(2026-06-01 12:00:00.123456 UTC);

async fn team(db: &TestDb, name: &str) -> Team {
    db.create_team(name, None).await.unwrap()
}

fn new_user(email: &str, team_id: Option<Uuid>) -> NewUser {
    NewUser {
        email: email.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        role: Role::Developer,
        team_id,
    }
}

fn new_key(team_id: Uuid, hash: &[u8]) -> NewApiKey {
    NewApiKey {
        team_id,
        user_id: None,
        name: "ci".to_owned(),
        prefix: "rk_live_abcd".to_owned(),
        key_hash: hash.to_vec(),
        allowed_models: vec!["claude-sonnet-*".to_owned()],
        allowed_endpoints: vec!["messages".to_owned(), "count_tokens".to_owned()],
        expires_at: None,
    }
}

fn new_token(
    user_id: Uuid,
    family_id: Uuid,
    hash: &[u8],
    expires_at: OffsetDateTime,
) -> NewRefreshToken {
    NewRefreshToken {
        family_id,
        user_id,
        token_hash: hash.to_vec(),
        expires_at,
    }
}

async fn audit_count(db: &TestDb) -> usize {
    db.list_audit(&AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    })
    .await
    .unwrap()
    .len()
}

// --- migrations ----------------------------------------------------------------------------------

pub async fn migrating_twice_applies_nothing_the_second_time(db: &TestDb) {
    let again = db.migrate().await.unwrap();
    assert!(again.applied_now.is_empty(), "{again:?}");
    // Every migration file of the engine, in version order, was applied the first time.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(match db.engine() {
            rampart_store::Engine::Sqlite => "sqlite",
            rampart_store::Engine::Postgres => "postgres",
        });
    let mut files: Vec<(i64, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| {
            let stem = name.strip_suffix(".sql")?;
            let (version, description) = stem.split_once('_')?;
            Some((version.parse().ok()?, description.to_owned()))
        })
        .collect();
    files.sort();
    assert_eq!(files.first(), Some(&(1, "identity".to_owned())));
    assert_eq!(again.already_applied, files);
}

// --- teams ---------------------------------------------------------------------------------------

pub async fn creates_a_team_and_reads_it_back(db: &TestDb) {
    let created = team(db, "platform").await;
    assert_eq!(created.id.get_version_num(), 7, "ids are UUIDv7");
    assert!(!created.disabled);
    assert_eq!(db.get_team(created.id).await.unwrap(), created);
    assert_eq!(db.list_teams().await.unwrap(), vec![created]);
}

pub async fn a_duplicate_team_name_is_a_conflict(db: &TestDb) {
    team(db, "platform").await;
    let err = db.create_team("platform", None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "team name" }),
        "{err:?}"
    );
}

pub async fn renames_and_disables_a_team(db: &TestDb) {
    let t = team(db, "platform").await;
    let renamed = db.rename_team(t.id, "infra", None).await.unwrap();
    assert_eq!(renamed.name, "infra");
    let disabled = db.set_team_disabled(t.id, true, None).await.unwrap();
    assert!(disabled.disabled);
    assert!(db.get_team(t.id).await.unwrap().disabled);
}

pub async fn a_missing_team_is_not_found(db: &TestDb) {
    let missing = Uuid::now_v7();
    assert!(matches!(
        db.get_team(missing).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.rename_team(missing, "x", None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.set_team_disabled(missing, true, None).await,
        Err(StoreError::NotFound)
    ));
}

// --- users ---------------------------------------------------------------------------------------

pub async fn user_emails_are_unique_ignoring_case(db: &TestDb) {
    let ada = db
        .create_user(&new_user("Ada@Example.com", None), None)
        .await
        .unwrap();
    let err = db
        .create_user(&new_user("ada@example.COM", None), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "user email" }),
        "{err:?}"
    );
    let found = db.get_user_by_email("ADA@EXAMPLE.COM").await.unwrap();
    assert_eq!(found, ada);
    assert_eq!(found.email, "Ada@Example.com", "stored as given");
    assert!(matches!(
        db.get_user_by_email("bob@example.com").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn a_user_in_a_missing_team_is_invalid(db: &TestDb) {
    let err = db
        .create_user(&new_user("a@example.com", Some(Uuid::now_v7())), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

pub async fn an_unknown_role_is_refused_by_the_schema(db: &TestDb) {
    let u = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    assert_eq!("auditor".parse::<Role>().unwrap(), Role::Auditor);
    assert!("root".parse::<Role>().is_err());
    // Even written behind the repository's back, the CHECK constraint holds.
    let before = db.get_user(u.id).await.unwrap();
    assert!(db.raw("UPDATE users SET role = 'root'").await.is_err());
    assert_eq!(db.get_user(u.id).await.unwrap(), before);
}

pub async fn updates_only_the_user_fields_given(db: &TestDb) {
    let t = team(db, "platform").await;
    let u = db
        .create_user(&new_user("a@example.com", Some(t.id)), None)
        .await
        .unwrap();
    let promoted = db
        .update_user(
            u.id,
            &UserUpdate {
                role: Some(Role::TeamAdmin),
                ..UserUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::TeamAdmin);
    assert_eq!(promoted.email, u.email);
    assert_eq!(promoted.team_id, Some(t.id));
    assert!(promoted.updated_at >= u.updated_at);
    let moved = db
        .update_user(
            u.id,
            &UserUpdate {
                team_id: Some(None),
                password_hash: Some("$argon2id$new".to_owned()),
                ..UserUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(moved.team_id, None);
    assert_eq!(moved.password_hash, "$argon2id$new");
    assert_eq!(moved.role, Role::TeamAdmin);
    let err = db
        .update_user(Uuid::now_v7(), &UserUpdate::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound));
}

pub async fn disables_a_user_and_lists_users_by_team(db: &TestDb) {
    let t = team(db, "platform").await;
    let a = db
        .create_user(&new_user("a@example.com", Some(t.id)), None)
        .await
        .unwrap();
    let b = db
        .create_user(&new_user("b@example.com", None), None)
        .await
        .unwrap();
    let disabled = db.set_user_disabled(a.id, true, None).await.unwrap();
    assert!(disabled.disabled);
    let in_team: Vec<Uuid> = db
        .list_users(Some(t.id))
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(in_team, vec![a.id]);
    let all: Vec<Uuid> = db
        .list_users(None)
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(all, vec![a.id, b.id]);
    assert!(
        !format!("{disabled:?}").contains("argon2"),
        "Debug redacts the hash"
    );
}

// --- API keys ------------------------------------------------------------------------------------

pub async fn creates_a_key_and_finds_it_by_hash(db: &TestDb) {
    let t = team(db, "platform").await;
    let mut k = new_key(t.id, b"hash-1");
    k.expires_at = Some(T0);
    let created = db.create_api_key(&k, None).await.unwrap();
    assert_eq!(created.allowed_models, vec!["claude-sonnet-*"]);
    assert_eq!(created.allowed_endpoints, vec!["messages", "count_tokens"]);
    assert_eq!(created.expires_at, Some(T0));
    assert!(created.enabled && created.revoked_at.is_none() && created.last_used_at.is_none());
    assert_eq!(db.get_api_key_by_hash(b"hash-1").await.unwrap(), created);
    assert_eq!(db.get_api_key(created.id).await.unwrap(), created);
    assert!(matches!(
        db.get_api_key_by_hash(b"nope").await,
        Err(StoreError::NotFound)
    ));
    assert!(created.is_usable_at(T0 - Duration::SECOND));
    assert!(!created.is_usable_at(T0));
}

pub async fn a_duplicate_key_hash_is_a_conflict(db: &TestDb) {
    let t = team(db, "platform").await;
    db.create_api_key(&new_key(t.id, b"same"), None)
        .await
        .unwrap();
    let err = db
        .create_api_key(&new_key(t.id, b"same"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "api key" }),
        "{err:?}"
    );
    let err = db
        .create_api_key(&new_key(Uuid::now_v7(), b"other"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(_)),
        "a key needs an existing team: {err:?}"
    );
}

pub async fn lists_keys_by_team_and_by_user(db: &TestDb) {
    let t1 = team(db, "one").await;
    let t2 = team(db, "two").await;
    let u = db
        .create_user(&new_user("a@example.com", Some(t1.id)), None)
        .await
        .unwrap();
    let k1 = db
        .create_api_key(&new_key(t1.id, b"k1"), None)
        .await
        .unwrap();
    let k2 = db
        .create_api_key(
            &NewApiKey {
                user_id: Some(u.id),
                ..new_key(t1.id, b"k2")
            },
            None,
        )
        .await
        .unwrap();
    let k3 = db
        .create_api_key(&new_key(t2.id, b"k3"), None)
        .await
        .unwrap();
    let ids = |keys: Vec<ApiKey>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    let by_team = db
        .list_api_keys(ApiKeyFilter {
            team_id: Some(t1.id),
            user_id: None,
        })
        .await;
    assert_eq!(ids(by_team.unwrap()), vec![k1.id, k2.id]);
    let by_user = db
        .list_api_keys(ApiKeyFilter {
            team_id: None,
            user_id: Some(u.id),
        })
        .await;
    assert_eq!(ids(by_user.unwrap()), vec![k2.id]);
    let all = db.list_api_keys(ApiKeyFilter::default()).await;
    assert_eq!(ids(all.unwrap()), vec![k1.id, k2.id, k3.id]);
}

pub async fn updates_key_scopes_and_clears_the_expiry(db: &TestDb) {
    let t = team(db, "platform").await;
    let k = db
        .create_api_key(
            &NewApiKey {
                expires_at: Some(T0),
                ..new_key(t.id, b"k")
            },
            None,
        )
        .await
        .unwrap();
    let updated = db
        .update_api_key(
            k.id,
            &ApiKeyUpdate {
                allowed_models: Some(vec!["claude-haiku-*".to_owned()]),
                expires_at: Some(None),
                ..ApiKeyUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(updated.allowed_models, vec!["claude-haiku-*"]);
    assert_eq!(updated.allowed_endpoints, k.allowed_endpoints);
    assert_eq!(updated.name, k.name);
    assert_eq!(updated.expires_at, None);
}

pub async fn a_disabled_key_is_unusable_until_enabled_again(db: &TestDb) {
    let t = team(db, "platform").await;
    let k = db.create_api_key(&new_key(t.id, b"k"), None).await.unwrap();
    let off = db.set_api_key_enabled(k.id, false, None).await.unwrap();
    assert!(!off.is_usable_at(T0));
    let on = db.set_api_key_enabled(k.id, true, None).await.unwrap();
    assert!(on.is_usable_at(T0));
}

pub async fn revoking_twice_keeps_the_first_revocation_time(db: &TestDb) {
    let t = team(db, "platform").await;
    let k = db.create_api_key(&new_key(t.id, b"k"), None).await.unwrap();
    let first = db.revoke_api_key(k.id, T0, None).await.unwrap();
    let second = db
        .revoke_api_key(k.id, T0 + Duration::HOUR, None)
        .await
        .unwrap();
    assert_eq!(first.revoked_at, Some(T0));
    assert_eq!(second.revoked_at, Some(T0));
    assert!(!second.is_usable_at(T0 - Duration::HOUR));
    assert!(matches!(
        db.revoke_api_key(Uuid::now_v7(), T0, None).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn rotation_makes_a_successor_and_expires_the_old_key_after_the_overlap(db: &TestDb) {
    let t = team(db, "platform").await;
    let old = db
        .create_api_key(&new_key(t.id, b"old"), None)
        .await
        .unwrap();
    let (new, old_after) = db
        .rotate_api_key(
            old.id,
            "rk_live_wxyz",
            b"new",
            Duration::hours(24),
            T0,
            None,
        )
        .await
        .unwrap();
    assert_eq!(new.rotated_from, Some(old.id));
    assert_eq!(new.prefix, "rk_live_wxyz");
    assert_eq!(new.team_id, old.team_id);
    assert_eq!(new.allowed_models, old.allowed_models);
    assert_eq!(new.expires_at, None);
    assert_eq!(old_after.expires_at, Some(T0 + Duration::hours(24)));
    assert!(old_after.is_usable_at(T0 + Duration::hours(23)));
    assert!(!old_after.is_usable_at(T0 + Duration::hours(24)));
    assert_eq!(db.get_api_key_by_hash(b"new").await.unwrap(), new);
    // An overlap never extends an earlier expiry.
    let (_, again) = db
        .rotate_api_key(old.id, "rk_live_2", b"newer", Duration::days(7), T0, None)
        .await
        .unwrap();
    assert_eq!(again.expires_at, Some(T0 + Duration::hours(24)));
}

pub async fn a_revoked_key_cannot_be_rotated(db: &TestDb) {
    let t = team(db, "platform").await;
    let k = db.create_api_key(&new_key(t.id, b"k"), None).await.unwrap();
    db.revoke_api_key(k.id, T0, None).await.unwrap();
    let err = db
        .rotate_api_key(k.id, "rk_live_x", b"k2", Duration::HOUR, T0, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(matches!(
        db.get_api_key_by_hash(b"k2").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn touching_last_used_applies_a_batch_and_never_goes_backwards(db: &TestDb) {
    let t = team(db, "platform").await;
    let a = db.create_api_key(&new_key(t.id, b"a"), None).await.unwrap();
    let b = db.create_api_key(&new_key(t.id, b"b"), None).await.unwrap();
    let changed = db
        .touch_api_keys_last_used(&[
            (a.id, T0),
            (b.id, T0 + Duration::SECOND),
            (Uuid::now_v7(), T0),
        ])
        .await
        .unwrap();
    assert_eq!(changed, 2);
    assert_eq!(db.get_api_key(a.id).await.unwrap().last_used_at, Some(T0));
    let stale = db
        .touch_api_keys_last_used(&[(a.id, T0 - Duration::MINUTE)])
        .await
        .unwrap();
    assert_eq!(stale, 0);
    assert_eq!(db.get_api_key(a.id).await.unwrap().last_used_at, Some(T0));
    assert_eq!(db.touch_api_keys_last_used(&[]).await.unwrap(), 0);
}

// --- upstream credentials ------------------------------------------------------------------------

fn new_cred(name: &str) -> NewUpstreamCredential {
    NewUpstreamCredential {
        name: name.to_owned(),
        ciphertext: vec![1, 2, 3, 4],
        nonce: vec![9; 12],
        key_id: "mk1".to_owned(),
    }
}

async fn cred(db: &TestDb, name: &str) -> UpstreamCredential {
    db.create_upstream_credential(&new_cred(name), None)
        .await
        .unwrap()
}

pub async fn stores_lists_and_deletes_upstream_credentials(db: &TestDb) {
    let a = cred(db, "primary").await;
    let b = cred(db, "fallback").await;
    let err = db
        .create_upstream_credential(&new_cred("primary"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                what: "upstream credential name"
            }
        ),
        "{err:?}"
    );
    assert_eq!(db.get_upstream_credential(a.id).await.unwrap(), a);
    assert_eq!(
        db.list_upstream_credentials().await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert!(
        !format!("{a:?}").contains("[1, 2, 3, 4]"),
        "Debug masks the ciphertext"
    );
    db.delete_upstream_credential(a.id, None).await.unwrap();
    assert!(matches!(
        db.get_upstream_credential(a.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.delete_upstream_credential(a.id, None).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.list_upstream_credentials().await.unwrap(), vec![b]);
}

pub async fn reencrypting_credentials_is_all_or_nothing(db: &TestDb) {
    let a = cred(db, "a").await;
    let b = cred(db, "b").await;
    let item = |id, old: &str| Reencrypted {
        id,
        old_key_id: old.to_owned(),
        ciphertext: vec![7, 7],
        nonce: vec![8; 12],
        key_id: "mk2".to_owned(),
    };
    // The second row is not under the key the caller thinks: nothing changes.
    let err = db
        .reencrypt_upstream_credentials(&[item(a.id, "mk1"), item(b.id, "mk0")], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(db.get_upstream_credential(a.id).await.unwrap(), a);
    let n = db
        .reencrypt_upstream_credentials(&[item(a.id, "mk1"), item(b.id, "mk1")], None)
        .await
        .unwrap();
    assert_eq!(n, 2);
    for cred in db.list_upstream_credentials().await.unwrap() {
        assert_eq!(
            (cred.key_id.as_str(), cred.ciphertext.as_slice()),
            ("mk2", &[7, 7][..])
        );
    }
    let err = db
        .reencrypt_upstream_credentials(&[item(Uuid::now_v7(), "mk2")], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound));
}

// --- refresh tokens ------------------------------------------------------------------------------

pub async fn spends_a_refresh_token_once_then_reports_the_replay(db: &TestDb) {
    let u = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    let family = Uuid::now_v7();
    let stored = db
        .insert_refresh_token(&new_token(u.id, family, b"rt1", T0 + Duration::DAY))
        .await
        .unwrap();
    let err = db
        .insert_refresh_token(&new_token(u.id, family, b"rt1", T0 + Duration::DAY))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                what: "refresh token"
            }
        ),
        "{err:?}"
    );
    let SpendOutcome::Spent(spent) = db.spend_refresh_token(b"rt1", T0).await.unwrap() else {
        panic!("the first spend must succeed");
    };
    assert_eq!(spent.id, stored.id);
    assert_eq!(spent.spent_at, Some(T0));
    let replay = db
        .spend_refresh_token(b"rt1", T0 + Duration::SECOND)
        .await
        .unwrap();
    assert!(
        matches!(replay, SpendOutcome::AlreadySpent(ref t) if t.spent_at == Some(T0)),
        "{replay:?}"
    );
}

pub async fn revoking_a_family_stops_every_token_in_it(db: &TestDb) {
    let u = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    let family = Uuid::now_v7();
    let other = Uuid::now_v7();
    for (hash, fam) in [(&b"f1"[..], family), (b"f2", family), (b"o1", other)] {
        db.insert_refresh_token(&new_token(u.id, fam, hash, T0 + Duration::DAY))
            .await
            .unwrap();
    }
    assert_eq!(db.revoke_refresh_family(family, T0, None).await.unwrap(), 2);
    assert_eq!(db.revoke_refresh_family(family, T0, None).await.unwrap(), 0);
    assert!(matches!(
        db.spend_refresh_token(b"f2", T0).await.unwrap(),
        SpendOutcome::Revoked(_)
    ));
    assert!(matches!(
        db.spend_refresh_token(b"o1", T0).await.unwrap(),
        SpendOutcome::Spent(_)
    ));
}

pub async fn an_expired_or_unknown_refresh_token_is_not_spent(db: &TestDb) {
    let u = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    db.insert_refresh_token(&new_token(u.id, Uuid::now_v7(), b"old", T0))
        .await
        .unwrap();
    let outcome = db.spend_refresh_token(b"old", T0).await.unwrap();
    assert!(
        matches!(outcome, SpendOutcome::Expired(ref t) if t.spent_at.is_none()),
        "{outcome:?}"
    );
    assert!(matches!(
        db.spend_refresh_token(b"never", T0).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.purge_expired_refresh_tokens(T0).await.unwrap(), 1);
    assert!(matches!(
        db.spend_refresh_token(b"old", T0).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn concurrent_spends_of_one_refresh_token_succeed_exactly_once(db: &TestDb) {
    let u = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    db.insert_refresh_token(&new_token(u.id, Uuid::now_v7(), b"hot", T0 + Duration::DAY))
        .await
        .unwrap();
    let store: Store = (**db).clone();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let spenders: Vec<_> = (0..20)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.spend_refresh_token(b"hot", T0).await.unwrap()
            })
        })
        .collect();
    let mut spent = 0;
    for s in spenders {
        match s.await.unwrap() {
            SpendOutcome::Spent(_) => spent += 1,
            SpendOutcome::AlreadySpent(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(spent, 1, "exactly one concurrent spend wins");
}

// --- revoked access tokens -----------------------------------------------------------------------

pub async fn lists_unexpired_revoked_jtis_and_purges_expired_ones(db: &TestDb) {
    db.revoke_jti("past", T0 - Duration::MINUTE, None)
        .await
        .unwrap();
    db.revoke_jti("live", T0 + Duration::MINUTE, None)
        .await
        .unwrap();
    // Revoking again is fine and never shortens the revocation.
    db.revoke_jti("live", T0, None).await.unwrap();
    db.revoke_jti("live", T0 + Duration::HOUR, None)
        .await
        .unwrap();
    let live = db.list_revoked_jti(T0).await.unwrap();
    assert_eq!(
        live,
        vec![RevokedJti {
            jti: "live".to_owned(),
            expires_at: T0 + Duration::HOUR
        }]
    );
    assert_eq!(db.purge_expired_jti(T0).await.unwrap(), 1);
    assert_eq!(db.purge_expired_jti(T0).await.unwrap(), 0);
    assert_eq!(
        db.list_revoked_jti(T0 - Duration::DAY).await.unwrap().len(),
        1
    );
}

// --- audit log -----------------------------------------------------------------------------------

fn event(actor: &str, action: &str) -> NewAuditEvent {
    NewAuditEvent {
        client_addr: Some("192.0.2.7".to_owned()),
        request_id: Some("req_1".to_owned()),
        details: serde_json::json!({"z": 1, "a": [true, null], "n": 1.5}),
        ..NewAuditEvent::new(actor, action, "user:42")
    }
}

pub async fn appended_audit_events_form_a_verifiable_chain(db: &TestDb) {
    assert_eq!(
        db.verify_audit_chain().await.unwrap(),
        None,
        "an empty chain holds"
    );
    assert_eq!(db.audit_head().await.unwrap(), None);
    let first = db
        .append_audit(&event("admin", "user.create"))
        .await
        .unwrap();
    let second = db
        .append_audit(&NewAuditEvent {
            outcome: AuditOutcome::Denied,
            ..event("bob", "key.denied")
        })
        .await
        .unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(first.prev_hash, chain::GENESIS.to_vec());
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(
        first.details, r#"{"z":1,"a":[true,null],"n":1.5}"#,
        "details kept byte for byte"
    );
    let stored = db.list_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(stored, vec![first, second.clone()]);
    assert_eq!(db.audit_head().await.unwrap(), Some((2, second.hash)));
    assert_eq!(db.verify_audit_chain().await.unwrap(), None);
}

pub async fn lists_audit_events_by_filter_one_page_at_a_time(db: &TestDb) {
    for i in 0..7 {
        let actor = if i % 2 == 0 { "alice" } else { "bob" };
        db.append_audit(&event(
            actor,
            if i < 3 { "auth.login" } else { "key.create" },
        ))
        .await
        .unwrap();
    }
    let seqs = |events: Vec<AuditEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let page = |cursor, newest_first| AuditQuery {
        actor: Some("alice".to_owned()),
        cursor,
        newest_first,
        limit: 2,
        ..AuditQuery::default()
    };
    assert_eq!(
        seqs(db.list_audit(&page(None, false)).await.unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        seqs(db.list_audit(&page(Some(3), false)).await.unwrap()),
        vec![5, 7]
    );
    assert_eq!(
        seqs(db.list_audit(&page(Some(7), false)).await.unwrap()),
        Vec::<i64>::new()
    );
    assert_eq!(
        seqs(db.list_audit(&page(None, true)).await.unwrap()),
        vec![7, 5]
    );
    assert_eq!(
        seqs(db.list_audit(&page(Some(5), true)).await.unwrap()),
        vec![3, 1]
    );
    let logins = AuditQuery {
        action: Some("auth.login".to_owned()),
        ..AuditQuery::default()
    };
    assert_eq!(seqs(db.list_audit(&logins).await.unwrap()), vec![1, 2, 3]);
    let all = db.list_audit(&AuditQuery::default()).await.unwrap();
    let at4 = all[3].at;
    let window = AuditQuery {
        since: Some(at4),
        ..AuditQuery::default()
    };
    assert!(seqs(db.list_audit(&window).await.unwrap()).starts_with(&[4]));
    let before = AuditQuery {
        until: Some(all[0].at),
        ..AuditQuery::default()
    };
    assert!(db.list_audit(&before).await.unwrap().is_empty());
}

pub async fn concurrent_audit_appends_leave_one_unforked_chain(db: &TestDb) {
    let store: Store = (**db).clone();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let appenders: Vec<_> = (0..20)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append_audit(&event(&format!("actor{i}"), "concurrent"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for a in appenders {
        seqs.push(a.await.unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<i64>>(),
        "every append got its own seq"
    );
    let events = db.list_audit(&AuditQuery::default()).await.unwrap();
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "no fork at seq {}",
            pair[1].seq
        );
    }
    assert_eq!(db.verify_audit_chain().await.unwrap(), None);
}

pub async fn verification_finds_an_edited_audit_row(db: &TestDb) {
    for i in 0..4 {
        db.append_audit(&event("admin", &format!("a{i}")))
            .await
            .unwrap();
    }
    let edited = db.raw("UPDATE audit_log SET target = 'user:43' WHERE seq = 2");
    assert_eq!(edited.await.unwrap(), 1);
    let broken = db.verify_audit_chain().await.unwrap();
    assert_eq!(
        broken,
        Some(ChainBreak {
            seq: 2,
            reason: BreakReason::HashMismatch
        })
    );
}

pub async fn verification_finds_a_deleted_audit_row(db: &TestDb) {
    for i in 0..4 {
        db.append_audit(&event("admin", &format!("a{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        db.raw("DELETE FROM audit_log WHERE seq = 2").await.unwrap(),
        1
    );
    let broken = db.verify_audit_chain().await.unwrap().unwrap();
    assert_eq!(
        broken,
        ChainBreak {
            seq: 3,
            reason: BreakReason::SeqGap
        }
    );
    assert!(broken.to_string().contains("seq 3"));
}

pub async fn an_audited_write_commits_its_event_with_it(db: &TestDb) {
    let audit = NewAuditEvent::new("admin", "team.create", "team:platform");
    let t = db.create_team("platform", Some(&audit)).await.unwrap();
    let k = db
        .create_api_key(
            &new_key(t.id, b"k"),
            Some(&NewAuditEvent::new("admin", "key.create", "key")),
        )
        .await
        .unwrap();
    db.revoke_api_key(
        k.id,
        T0,
        Some(&NewAuditEvent::new("admin", "key.revoke", "key")),
    )
    .await
    .unwrap();
    let actions: Vec<String> = db
        .list_audit(&AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, vec!["team.create", "key.create", "key.revoke"]);
    assert_eq!(db.verify_audit_chain().await.unwrap(), None);
}

pub async fn a_failed_write_leaves_no_audit_event(db: &TestDb) {
    team(db, "platform").await;
    let audit = NewAuditEvent::new("admin", "team.create", "team:platform");
    assert!(db.create_team("platform", Some(&audit)).await.is_err());
    assert!(
        db.set_user_disabled(Uuid::now_v7(), true, Some(&audit))
            .await
            .is_err()
    );
    assert_eq!(
        audit_count(db).await,
        0,
        "the event rolled back with the change"
    );
}

pub async fn timestamps_round_trip_at_microsecond_precision(db: &TestDb) {
    let t = team(db, "platform").await;
    let odd = datetime!(2026-06-01 12:00:00.123456789 +02:00);
    let k = db
        .create_api_key(
            &NewApiKey {
                expires_at: Some(odd),
                ..new_key(t.id, b"k")
            },
            None,
        )
        .await
        .unwrap();
    let expected = datetime!(2026-06-01 10:00:00.123456 UTC);
    assert_eq!(k.expires_at, Some(expected));
    assert_eq!(k.expires_at.unwrap().offset(), time::UtcOffset::UTC);
    assert_eq!(
        db.get_api_key(k.id).await.unwrap().expires_at,
        Some(expected)
    );
    let now = OffsetDateTime::now_utc();
    assert!(
        (now - t.created_at).abs() < Duration::minutes(1),
        "created_at is the current time"
    );
}

pub async fn a_new_password_or_disabling_voids_the_users_sessions(db: &TestDb) {
    let a = db
        .create_user(&new_user("a@example.com", None), None)
        .await
        .unwrap();
    let b = db
        .create_user(&new_user("b@example.com", None), None)
        .await
        .unwrap();
    assert_eq!(a.sessions_valid_after, None);
    for (user, hash) in [
        (a.id, &b"a1"[..]),
        (a.id, b"a2"),
        (b.id, b"b1"),
        (b.id, b"b2"),
    ] {
        db.insert_refresh_token(&new_token(user, Uuid::now_v7(), hash, T0 + Duration::DAY))
            .await
            .unwrap();
    }
    // A role change keeps sessions; a new password voids them.
    let changed = db
        .update_user(
            a.id,
            &UserUpdate {
                role: Some(Role::Viewer),
                ..UserUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(changed.sessions_valid_after, None);
    let changed = db
        .update_user(
            a.id,
            &UserUpdate {
                password_hash: Some("$argon2id$new".into()),
                ..UserUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(
        changed
            .sessions_valid_after
            .is_some_and(|t| t >= a.created_at)
    );
    assert_eq!(
        db.get_user(a.id).await.unwrap().sessions_valid_after,
        changed.sessions_valid_after
    );
    assert!(matches!(
        db.spend_refresh_token(b"a1", T0).await.unwrap(),
        SpendOutcome::Revoked(_)
    ));
    // Disabling voids them too; other users are untouched.
    assert!(matches!(
        db.spend_refresh_token(b"b1", T0).await.unwrap(),
        SpendOutcome::Spent(_)
    ));
    let disabled = db.set_user_disabled(b.id, true, None).await.unwrap();
    assert!(disabled.sessions_valid_after.is_some());
    assert!(matches!(
        db.spend_refresh_token(b"b2", T0).await.unwrap(),
        SpendOutcome::Revoked(_)
    ));
    let enabled = db.set_user_disabled(b.id, false, None).await.unwrap();
    assert_eq!(enabled.sessions_valid_after, disabled.sessions_valid_after);
}
