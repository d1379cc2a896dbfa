//! `GET /admin/v1/usage`: sums from the ledger's rollups, grouped and filtered, in each role's
//! scope (admin all; team admin and viewer their team; developer their own keys; auditor none).

use http::StatusCode;
use rampart_store::{NewUser, Role, UsageRecord};
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

use crate::{PASSWORD, assert_error, call, env, instance, key};

const DAY: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);
const RANGE: &str = "from=2026-06-01T00:00:00Z&to=2026-06-03T00:00:00Z";

struct World {
    state: rampart_admin::AdminState,
    team_a: Uuid,
    team_b: Uuid,
    dev_key: Uuid,
    shared_key: Uuid,
    other_key: Uuid,
    _env: crate::Env,
}

async fn user(env: &crate::Env, email: &str, role: Role, team: Option<Uuid>) -> Uuid {
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
        .unwrap()
        .id
}

fn record(
    n: u128,
    key: Uuid,
    team: Uuid,
    user: Option<Uuid>,
    model: &str,
    cost: u64,
) -> UsageRecord {
    UsageRecord {
        id: Uuid::from_u128(n),
        at: DAY + time::Duration::hours(i64::try_from(n).unwrap() % 40),
        request_id: format!("req_{n}"),
        key_id: Some(key),
        team_id: Some(team),
        user_id: user,
        key_label: None,
        endpoint: "/v1/messages".into(),
        model_requested: Some(model.into()),
        model_served: Some(model.into()),
        status: 200,
        error_type: None,
        input_tokens: 10,
        output_tokens: 5,
        cache_write_5m_tokens: 0,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 0,
        cost_micro_usd: cost,
        priced: true,
        latency_us: 1000,
        upstream_latency_us: Some(900),
        upstream_attempts: 1,
        streamed: false,
        cache_hit: false,
        client_aborted: false,
        saved_micro_usd: 0,
    }
}

async fn world() -> World {
    let env = env().await;
    let team_a = env.store.create_team("a", None).await.unwrap().id;
    let team_b = env.store.create_team("b", None).await.unwrap().id;
    user(&env, "lead@a.example", Role::TeamAdmin, Some(team_a)).await;
    user(&env, "viewer@a.example", Role::Viewer, Some(team_a)).await;
    let dev = user(&env, "dev@a.example", Role::Developer, Some(team_a)).await;
    user(&env, "audit@example.com", Role::Auditor, None).await;
    let dev_key = key(&env, team_a, Some(dev), 1).await;
    let shared_key = key(&env, team_a, None, 2).await;
    let other_key = key(&env, team_b, None, 3).await;
    let records = [
        record(1, dev_key, team_a, Some(dev), "claude-haiku-4-5", 100),
        record(2, dev_key, team_a, Some(dev), "claude-opus-4-6", 1_000),
        record(30, shared_key, team_a, None, "claude-haiku-4-5", 200),
        record(4, other_key, team_b, None, "claude-haiku-4-5", 5_000),
    ];
    env.store.usage().insert_usage(&records).await.unwrap();
    World {
        state: instance(&env),
        team_a,
        team_b,
        dev_key,
        shared_key,
        other_key,
        _env: env,
    }
}

async fn token(w: &World, email: &str) -> String {
    let (status, _, body) = call(
        &w.state,
        "POST",
        "/admin/v1/auth/login",
        None,
        Some(serde_json::json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn usage(w: &World, token: &str, query: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(
        &w.state,
        "GET",
        &format!("/admin/v1/usage?{query}"),
        Some(token),
        None,
    )
    .await;
    (status, body)
}

/// `(dimension value, requests, cost)` per row, for one grouped dimension.
fn rows(body: &Value, dim: &str) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[dim].as_str().unwrap_or("-").to_owned(),
                r["requests"].as_u64().unwrap(),
                r["cost_micro_usd"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn admins_see_every_team_grouped_as_asked() {
    let w = world().await;
    let admin = token(&w, "root@example.com").await;
    let (status, body) = usage(&w, &admin, &format!("{RANGE}&group_by=team")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["group_by"], serde_json::json!(["team"]));
    assert_eq!(body["from"], "2026-06-01T00:00:00Z");
    assert_eq!(body["to"], "2026-06-03T00:00:00Z");
    let mut expected = vec![
        (w.team_a.to_string(), 3, 1_300),
        (w.team_b.to_string(), 1, 5_000),
    ];
    expected.sort();
    assert_eq!(rows(&body, "team_id"), expected);
    // By day and model: day 1 has three haiku requests' worth of rows, day 2 the one at 30 h.
    let (_, body) = usage(&w, &admin, &format!("{RANGE}&group_by=day,model")).await;
    let days: Vec<(String, String, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_owned(),
                r["model"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2026-06-01".into(), "claude-haiku-4-5".into(), 2),
            ("2026-06-01".into(), "claude-opus-4-6".into(), 1),
            ("2026-06-02".into(), "claude-haiku-4-5".into(), 1),
        ]
    );
    // No grouping: one total, with the dollars spelled out.
    let (_, body) = usage(&w, &admin, RANGE).await;
    assert_eq!(body["data"][0]["requests"], 4);
    assert_eq!(body["data"][0]["cost_usd"], "0.006300");
    assert!(body["data"][0].get("team_id").is_none());
    // A filter by model and by key.
    let (_, body) = usage(&w, &admin, &format!("{RANGE}&model=claude-opus-4-6")).await;
    assert_eq!(body["data"][0]["requests"], 1);
    let (_, body) = usage(&w, &admin, &format!("{RANGE}&key_id={}", w.other_key)).await;
    assert_eq!(body["data"][0]["cost_micro_usd"], 5_000);
    // An id that names nothing is 404 for every filter, not an empty report.
    for filter in ["key_id", "team_id", "user_id"] {
        let query = format!("{RANGE}&{filter}={}", Uuid::now_v7());
        let (status, body) = usage(&w, &admin, &query).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{query}: {body}");
        assert_error(&body, "not_found_error");
    }
}

#[tokio::test]
async fn team_roles_see_their_team_and_developers_their_own_keys() {
    let w = world().await;
    let dev_a = w
        ._env
        .store
        .get_user_by_email("dev@a.example")
        .await
        .unwrap()
        .id;
    let dev_b = user(&w._env, "dev@b.example", Role::Developer, Some(w.team_b)).await;
    for email in ["lead@a.example", "viewer@a.example"] {
        let t = token(&w, email).await;
        let (status, body) = usage(&w, &t, &format!("{RANGE}&group_by=key")).await;
        assert_eq!(status, StatusCode::OK, "{email}: {body}");
        let mut expected = vec![
            (w.dev_key.to_string(), 2, 1_100),
            (w.shared_key.to_string(), 1, 200),
        ];
        expected.sort();
        assert_eq!(rows(&body, "key_id"), expected, "{email}");
        // Another team, or a key of another team, is not found (not revealed).
        let (status, body) = usage(&w, &t, &format!("{RANGE}&team_id={}", w.team_b)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{email}");
        assert_error(&body, "not_found_error");
        let (status, _) = usage(&w, &t, &format!("{RANGE}&key_id={}", w.other_key)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{email}");
        let (status, _) = usage(&w, &t, &format!("{RANGE}&key_id={}", Uuid::now_v7())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{email}");
        // So is a user of another team, or no user at all; a teammate is in scope.
        for other in [dev_b, Uuid::now_v7()] {
            let (status, body) = usage(&w, &t, &format!("{RANGE}&user_id={other}")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{email}: {body}");
            assert_error(&body, "not_found_error");
        }
        let (status, body) = usage(&w, &t, &format!("{RANGE}&user_id={dev_a}&group_by=key")).await;
        assert_eq!(status, StatusCode::OK, "{email}: {body}");
        assert_eq!(rows(&body, "key_id"), [(w.dev_key.to_string(), 2, 1_100)]);
    }
    let dev = token(&w, "dev@a.example").await;
    let (status, body) = usage(&w, &dev, &format!("{RANGE}&group_by=key")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(rows(&body, "key_id"), [(w.dev_key.to_string(), 2, 1_100)]);
    let (status, _) = usage(&w, &dev, &format!("{RANGE}&key_id={}", w.shared_key)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a team key that is not theirs"
    );
    let (status, _) = usage(&w, &dev, &format!("{RANGE}&key_id={}", w.dev_key)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = usage(&w, &dev, &format!("{RANGE}&team_id={}", w.team_a)).await;
    assert_eq!(status, StatusCode::OK, "their own team");
    let (status, _) = usage(&w, &dev, &format!("{RANGE}&team_id={}", w.team_b)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another team");

    let auditor = token(&w, "audit@example.com").await;
    let (status, body) = usage(&w, &auditor, RANGE).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "permission_error");
}

#[tokio::test]
async fn bad_parameters_are_400_and_no_token_is_401() {
    let w = world().await;
    let admin = token(&w, "root@example.com").await;
    for query in [
        format!("{RANGE}&group_by=key,cost"),
        "from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z".to_owned(),
        "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
        "from=yesterday".to_owned(),
        format!("{RANGE}&model={}", "m".repeat(201)),
        format!("{RANGE}&key_id=not-a-uuid"),
        format!("{RANGE}&unknown=1"),
        // Whole hours outside what RFC 3339 can write (years 0000 to 9999): the default `from`
        // 30 days before year 0, the hour after the last one of year 9999.
        "to=0000-01-01T00:00:00Z".to_owned(),
        "from=9999-12-31T23:00:00Z&to=9999-12-31T23:30:00Z".to_owned(),
    ] {
        let (status, body) = usage(&w, &admin, &query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_error(&body, "invalid_request_error");
    }
    // Each message names the parameter and says what is wrong, as `rampart usage` does.
    for (query, says) in [
        (
            format!("{RANGE}&group_by=key,,team"),
            "group_by: an empty dimension",
        ),
        (
            format!("{RANGE}&group_by=key,"),
            "group_by: an empty dimension",
        ),
        (
            format!("{RANGE}&group_by=team,team"),
            "group_by: `team` is given twice",
        ),
        (
            format!("{RANGE}&model="),
            "model must be 1 to 200 characters",
        ),
        (
            format!("{RANGE}&model=claude%00"),
            "model must not contain control characters",
        ),
        (
            "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
            "from and to may be at most 400 days apart",
        ),
        // A `+` left unencoded reads as a space: the message says how to write it.
        (
            "from=2026-05-01T00:00:00+02:00".to_owned(),
            "write a time zone offset's `+` as %2B",
        ),
    ] {
        let (status, body) = usage(&w, &admin, &query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{query}: {body}");
    }
    let (status, _, body) = call(&w.state, "GET", "/admin/v1/usage", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "authentication_error");
    // Defaults: the last 30 days up to now (a total row, whatever it holds).
    let (status, body) = usage(&w, &admin, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"][0]["requests"].as_u64().is_some());
}
