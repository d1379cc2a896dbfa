//! `GET|PUT /admin/v1/keys/{id}/limits` and `/teams/{id}/limits`: who may read and change them,
//! validation, and the audit row.

use http::StatusCode;
use rampart_store::{AuditQuery, NewUser, Role};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{PASSWORD, assert_error, call, call_raw, env, instance, key};

async fn person(env: &crate::Env, email: &str, role: Role, team: Option<Uuid>) {
    let hash =
        rampart_crypto::password::hash(&rampart_crypto::Secret::new(PASSWORD.into())).unwrap();
    env.store
        .create_user(
            &NewUser {
                email: email.into(),
                password_hash: hash,
                role,
                team_id: team,
            },
            None,
        )
        .await
        .unwrap();
}

async fn token(state: &rampart_admin::AdminState, email: &str) -> String {
    let (status, _, body) = call(
        state,
        "POST",
        "/admin/v1/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn key_and_team_limits_follow_the_role_rules_and_are_audited() {
    let env = env().await;
    let state = instance(&env);
    let team = env.store.create_team("payments", None).await.unwrap();
    let other = env.store.create_team("other", None).await.unwrap();
    for (email, role, t) in [
        ("ta@example.com", Role::TeamAdmin, Some(team.id)),
        ("dev@example.com", Role::Developer, Some(team.id)),
        ("view@example.com", Role::Viewer, Some(team.id)),
        ("audit@example.com", Role::Auditor, None),
        ("ta2@example.com", Role::TeamAdmin, Some(other.id)),
    ] {
        person(&env, email, role, t).await;
    }
    let key_id = key(&env, team.id, None, 1).await;
    let root = token(&state, "root@example.com").await;
    let ta = token(&state, "ta@example.com").await;
    let dev = token(&state, "dev@example.com").await;
    let view = token(&state, "view@example.com").await;
    let auditor = token(&state, "audit@example.com").await;
    let ta2 = token(&state, "ta2@example.com").await;
    let key_path = format!("/admin/v1/keys/{key_id}/limits");
    let team_path = format!("/admin/v1/teams/{}/limits", team.id);
    let limits =
        json!({"rpm": 60, "itpm": 40000, "budget_micros": 12_500_000, "budget_period": "day"});

    // Empty until set; readable by whoever sees the key.
    let (s, _, body) = call(&state, "GET", &key_path, Some(&view), None).await;
    assert_eq!((s, body), (StatusCode::OK, json!({})));
    // Team admins set their team's keys' limits; viewers may not; developers and outsiders do
    // not see a key that is not theirs; auditors are refused.
    let (s, _, body) = call(&state, "PUT", &key_path, Some(&ta), Some(limits.clone())).await;
    assert_eq!((s, &body), (StatusCode::OK, &limits));
    // A key's limits are the body itself: the message names `budget_micros`, in micro-dollars.
    let too_much = json!({"budget_micros": 1_000_000_000_000_001_u64, "budget_period": "day"});
    let (s, _, body) = call(&state, "PUT", &key_path, Some(&ta), Some(too_much)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "budget_micros must be between 1 and 1000000000000000 (micro-dollars: 1 US dollar is 1000000)",
        "{body}"
    );
    for (who, status, kind) in [
        (&dev, StatusCode::NOT_FOUND, "not_found_error"),
        (&view, StatusCode::FORBIDDEN, "permission_error"),
        (&auditor, StatusCode::FORBIDDEN, "permission_error"),
        (&ta2, StatusCode::NOT_FOUND, "not_found_error"),
    ] {
        let (s, _, body) = call(&state, "PUT", &key_path, Some(who), Some(json!({"rpm": 1}))).await;
        assert_eq!(s, status, "{body}");
        assert_error(&body, kind);
    }
    let (_, _, body) = call(&state, "GET", &key_path, Some(&view), None).await;
    assert_eq!(body, limits, "refused writes changed nothing");

    // Team limits: admins only; members read them.
    let team_limits =
        json!({"team": {"otpm": 90000}, "key_defaults": {"rpm": 30, "concurrency": 4}});
    let (s, _, body) = call(
        &state,
        "PUT",
        &team_path,
        Some(&ta),
        Some(team_limits.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, _, body) = call(
        &state,
        "PUT",
        &team_path,
        Some(&root),
        Some(team_limits.clone()),
    )
    .await;
    assert_eq!((s, &body), (StatusCode::OK, &team_limits));
    let (s, _, body) = call(&state, "GET", &team_path, Some(&view), None).await;
    assert_eq!((s, body), (StatusCode::OK, team_limits));

    // Every write is audited with the limits it set.
    let rows = env
        .store
        .list_audit(&AuditQuery {
            action: Some("key.limits".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "success").count(), 1);
    assert_eq!(
        outcomes.iter().filter(|o| **o == "denied").count(),
        1,
        "the viewer's"
    );
    let details: Value = serde_json::from_str(&rows[0].details).unwrap();
    assert_eq!(details["limits"]["rpm"], 60);
}

/// A store with team `t` (its id), an instance, and the admin's token.
async fn team_t() -> (crate::Env, rampart_admin::AdminState, Uuid, String) {
    let env = env().await;
    let state = instance(&env);
    let team = env.store.create_team("t", None).await.unwrap().id;
    let root = token(&state, "root@example.com").await;
    (env, state, team, root)
}

#[tokio::test]
async fn bad_limits_are_refused_with_nothing_written() {
    let (env, state, team, root) = team_t().await;
    let path = format!("/admin/v1/teams/{team}/limits");
    for bad in [
        json!({"team": {"rpm": 0}}),
        json!({"team": {"rpm": -1}}),
        json!({"team": {"budget_micros": 5}}),
        json!({"key_defaults": {"budget_period": "week", "budget_micros": 5}}),
        json!({"team": {"rpm": 1_000_000_001_u64}}),
        json!({"team": {"burst": 5}}),
        json!({"key_defaults": {"concurrency": "many"}}),
    ] {
        let (s, _, body) = call(&state, "PUT", &path, Some(&root), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert_error(&body, "invalid_request_error");
    }
    // Out-of-range messages name the body's real field, in its unit.
    for (bad, says) in [
        (
            json!({"team": {"budget_micros": 0, "budget_period": "day"}}),
            "team.budget_micros must be between 1 and 1000000000000000 (micro-dollars",
        ),
        (
            json!({"key_defaults": {"rpm": 0}}),
            "key_defaults.rpm must be between 1 and 1000000000",
        ),
    ] {
        let (s, _, body) = call(&state, "PUT", &path, Some(&root), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad} -> {body}");
    }
    // An integer too large for any limit gets the field's range, as a large one that fits a
    // u64 does, not serde's "floating point …, expected u64"; a fraction keeps serde's message.
    let key_path = format!("/admin/v1/keys/{}/limits", key(&env, team, None, 1).await);
    for (path, bad, says) in [
        (
            &key_path,
            r#"{"rpm": 18446744073709551616}"#,
            "rpm must be between 1 and 1000000000",
        ),
        (
            &key_path,
            r#"{"rpm": 9223372036854775808}"#,
            "rpm must be between 1 and 1000000000",
        ),
        (
            &path,
            r#"{"key_defaults": {"concurrency": 1e30}}"#,
            "key_defaults.concurrency must be between 1 and 1000000",
        ),
        (
            &path,
            r#"{"team": {"budget_micros": 99999999999999999999999, "budget_period": "day"}}"#,
            "team.budget_micros must be between 1 and 1000000000000000",
        ),
        (
            &key_path,
            r#"{"rpm": 1.5}"#,
            "invalid type: floating point `1.5`, expected u64",
        ),
    ] {
        let (s, _, body) = call_raw(&state, "PUT", path, Some(&root), Some(bad.into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad} -> {body}");
    }
    let (_, _, body) = call(&state, "GET", &path, Some(&root), None).await;
    assert_eq!(body, json!({"team": {}, "key_defaults": {}}));
    let (_, _, body) = call(&state, "GET", &key_path, Some(&root), None).await;
    assert_eq!(body, json!({}));
    let (s, _, body) = call(
        &state,
        "PUT",
        &format!("/admin/v1/keys/{}/limits", Uuid::now_v7()),
        Some(&root),
        Some(json!({"rpm": 5})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_null_team_or_key_defaults_removes_them_as_absence_does() {
    let (_env, state, team, root) = team_t().await;
    let path = format!("/admin/v1/teams/{team}/limits");
    let both = json!({"team": {"rpm": 5}, "key_defaults": {"otpm": 7}});
    for (body, left) in [
        (
            json!({"team": null, "key_defaults": {"otpm": 7}}),
            json!({"team": {}, "key_defaults": {"otpm": 7}}),
        ),
        (
            json!({"team": {"rpm": 5}, "key_defaults": null}),
            json!({"team": {"rpm": 5}, "key_defaults": {}}),
        ),
        (
            json!({"team": null, "key_defaults": null}),
            json!({"team": {}, "key_defaults": {}}),
        ),
    ] {
        let (s, _, saved) = call(&state, "PUT", &path, Some(&root), Some(both.clone())).await;
        assert_eq!(s, StatusCode::OK, "{saved}");
        let (s, _, saved) = call(&state, "PUT", &path, Some(&root), Some(body.clone())).await;
        assert_eq!(s, StatusCode::OK, "{body} -> {saved}");
        assert_eq!(saved, left, "{body}");
        let (_, _, read) = call(&state, "GET", &path, Some(&root), None).await;
        assert_eq!(read, left, "{body}");
    }
}
