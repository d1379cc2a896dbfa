//! The admin router in-process (no socket) over a real SQLite store: the error shape, the
//! OpenAPI document, sessions across two instances sharing one database, and the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rampart_admin::{AdminSettings, AdminState, NoCache};
use rampart_crypto::Secret;
use rampart_crypto::apikey::KeyHasher;
use rampart_crypto::envelope::MasterKeys;
use rampart_crypto::jwt::JwtKeys;
use rampart_store::{NewApiKey, NewUser, Role, Store};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

mod limits;
mod usage;

const PASSWORD: &str = "granite-orchid-voyage-77";

struct Env {
    store: Store,
    jwt_spec: Secret,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&rampart_store::sqlite_url(dir.path()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let hash = rampart_crypto::password::hash(&Secret::new(PASSWORD.into())).unwrap();
    store
        .create_user(
            &NewUser {
                email: "root@example.com".into(),
                password_hash: hash,
                role: Role::Admin,
                team_id: None,
            },
            None,
        )
        .await
        .unwrap();
    Env {
        store,
        jwt_spec: Secret::new(format!(
            "k1:{}",
            rampart_crypto::keyspec::generate().expose()
        )),
        _dir: dir,
    }
}

fn instance(env: &Env) -> AdminState {
    let jwt = JwtKeys::from_spec(
        &env.jwt_spec,
        "test",
        "rampart",
        "rampart-admin",
        Duration::from_secs(900),
    )
    .unwrap();
    let master =
        MasterKeys::from_spec(&rampart_crypto::keyspec::generate(), "test master").unwrap();
    let hasher = KeyHasher::new(Secret::new("p".repeat(40))).unwrap();
    AdminState::new(
        env.store.clone(),
        jwt,
        Arc::new(master),
        hasher,
        Arc::new(NoCache),
        AdminSettings::default(),
    )
}

async fn call(
    state: &AdminState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    call_raw(state, method, path, token, body.map(|b| b.to_string())).await
}

/// As [`call`], with the JSON body as written (for what [`Value`] cannot hold, such as an
/// integer too large for a `u64`).
async fn call_raw(
    state: &AdminState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = rampart_admin::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, value)
}

/// Key `n` of `team` (and `user`), with no limits of its own.
async fn key(env: &Env, team: Uuid, user: Option<Uuid>, n: u8) -> Uuid {
    env.store
        .create_api_key(
            &NewApiKey {
                team_id: team,
                user_id: user,
                name: format!("k{n}"),
                prefix: format!("rk_live_{n:04}"),
                key_hash: vec![n; 32],
                allowed_models: vec![],
                allowed_endpoints: vec![],
                expires_at: None,
            },
            None,
        )
        .await
        .unwrap()
        .id
}

async fn login(state: &AdminState) -> Value {
    let (status, _, body) = call(
        state,
        "POST",
        "/admin/v1/auth/login",
        None,
        Some(json!({"email": "ROOT@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn assert_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
}

#[tokio::test]
async fn every_failure_has_the_one_error_shape_and_the_security_headers() {
    let env = env().await;
    let s = instance(&env);
    let token = login(&s).await["access_token"].as_str().unwrap().to_owned();
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<Value>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/admin/v1/users",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            "GET",
            "/admin/v1/users",
            Some("not.a.jwt"),
            None,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            "GET",
            "/admin/v1/nope",
            Some(&token),
            None,
            StatusCode::NOT_FOUND,
            "not_found_error",
        ),
        (
            "DELETE",
            "/admin/v1/teams",
            Some(&token),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
        ),
        (
            "GET",
            "/admin/v1/users/not-a-uuid",
            Some(&token),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            "GET",
            "/admin/v1/users?bogus=1",
            Some(&token),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            "POST",
            "/admin/v1/teams",
            Some(&token),
            Some(json!({"name": "x", "extra": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            "POST",
            "/admin/v1/teams",
            Some(&token),
            Some(json!({"name": 5})),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            "POST",
            "/admin/v1/teams",
            Some(&token),
            Some(json!({"name": "a\u{0}b"})),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            "POST",
            "/admin/v1/teams",
            Some(&token),
            Some(json!({"name": "x".repeat(70_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "GET",
            "/admin/v1/teams/01a2158e-ff69-733f-8138-046b47159626",
            Some(&token),
            None,
            StatusCode::NOT_FOUND,
            "not_found_error",
        ),
    ];
    for (method, path, tok, body, want, kind) in cases {
        let (status, headers, got) = call(&s, method, path, tok, body).await;
        assert_eq!(status, want, "{method} {path}: {got}");
        assert_error(&got, kind);
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert_eq!(headers["x-request-id"].to_str().unwrap(), got["request_id"]);
        assert!(!headers.contains_key("access-control-allow-origin"));
        assert!(!headers.contains_key("strict-transport-security"));
    }
    // Nothing was written by any of them.
    assert!(env.store.list_teams().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_documents_every_operation_and_error() {
    let doc = serde_json::to_value(rampart_admin::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/admin/v1/auth/login", "post"),
        ("/admin/v1/auth/refresh", "post"),
        ("/admin/v1/auth/logout", "post"),
        ("/admin/v1/auth/me", "get"),
        ("/admin/v1/auth/revoke", "post"),
        ("/admin/v1/setup", "post"),
        ("/admin/v1/users", "get"),
        ("/admin/v1/users", "post"),
        ("/admin/v1/users/{id}", "get"),
        ("/admin/v1/users/{id}", "patch"),
        ("/admin/v1/teams", "get"),
        ("/admin/v1/teams", "post"),
        ("/admin/v1/teams/{id}", "get"),
        ("/admin/v1/teams/{id}", "patch"),
        ("/admin/v1/keys", "get"),
        ("/admin/v1/keys", "post"),
        ("/admin/v1/keys/{id}", "get"),
        ("/admin/v1/keys/{id}", "patch"),
        ("/admin/v1/keys/{id}/revoke", "post"),
        ("/admin/v1/keys/{id}/rotate", "post"),
        ("/admin/v1/keys/{id}/limits", "get"),
        ("/admin/v1/keys/{id}/limits", "put"),
        ("/admin/v1/teams/{id}/limits", "get"),
        ("/admin/v1/teams/{id}/limits", "put"),
        ("/admin/v1/keys/{id}/cache-policy", "get"),
        ("/admin/v1/keys/{id}/cache-policy", "put"),
        ("/admin/v1/teams/{id}/cache-policy", "get"),
        ("/admin/v1/teams/{id}/cache-policy", "put"),
        ("/admin/v1/upstreams", "get"),
        ("/admin/v1/upstreams", "post"),
        ("/admin/v1/upstreams/{id}", "get"),
        ("/admin/v1/upstreams/{id}", "delete"),
        ("/admin/v1/audit", "get"),
        ("/admin/v1/audit/verify", "get"),
        ("/admin/v1/usage", "get"),
        ("/admin/v1/teams/{id}/webhook", "get"),
        ("/admin/v1/teams/{id}/webhook", "put"),
        ("/admin/v1/teams/{id}/webhook", "delete"),
        ("/admin/v1/teams/{id}/webhook/deliveries", "get"),
        ("/admin/v1/dead-letters", "get"),
        ("/admin/v1/dead-letters/{id}", "get"),
        ("/admin/v1/dead-letters/{id}/replay", "post"),
    ];
    let mut count = 0;
    for (path, ops) in paths {
        count += ops.as_object().unwrap().len();
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                expected.contains(&(path.as_str(), method.as_str())),
                "undocumented in the test: {method} {path}"
            );
            for code in ["400", "401", "403", "404", "409", "413", "429", "500"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{method} {path} lacks {code}"
                );
            }
        }
    }
    assert_eq!(count, expected.len());
    let public = [
        "/admin/v1/auth/login",
        "/admin/v1/auth/refresh",
        "/admin/v1/setup",
    ];
    for p in public {
        assert_eq!(
            paths[p]["post"]["security"],
            json!([{}]),
            "{p} must need no token"
        );
    }
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn a_revoked_session_is_refused_by_every_instance_sharing_the_store() {
    let env = env().await;
    let a = instance(&env);
    let b = instance(&env);
    let tokens = login(&a).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        call(&b, "GET", "/admin/v1/auth/me", Some(access), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, _) = call(
        &a,
        "POST",
        "/admin/v1/auth/logout",
        Some(access),
        Some(json!({"refresh_token": tokens["refresh_token"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Instance A knows at once; B after its once-a-second reload.
    assert_eq!(
        call(&a, "GET", "/admin/v1/auth/me", Some(access), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    b.reload_revoked().await.unwrap();
    let (status, _, body) = call(&b, "GET", "/admin/v1/auth/me", Some(access), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "authentication_error");
    // The refresh family died with the logout.
    let (status, _, _) = call(
        &b,
        "POST",
        "/admin/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": tokens["refresh_token"]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let env = env().await;
    let s = instance(&env);
    let first = login(&s).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    assert!(r1.starts_with("rt_"));
    let refresh = |t: String| {
        let s = s.clone();
        async move {
            call(
                &s,
                "POST",
                "/admin/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": t})),
            )
            .await
        }
    };
    let (status, _, second) = refresh(r1.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // Replaying r1 is theft: 401, and r2 (the legitimate newest) dies too.
    assert_eq!(refresh(r1).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(r2).await.0, StatusCode::UNAUTHORIZED);
    let events = env
        .store
        .list_audit(&rampart_store::AuditQuery::default())
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "auth.refresh_reuse"));
    assert!(env.store.verify_audit_chain().await.unwrap().is_none());
}

#[tokio::test]
async fn writes_are_audited_with_actor_address_and_request_id_and_never_a_secret() {
    let env = env().await;
    let s = instance(&env);
    let token = login(&s).await["access_token"].as_str().unwrap().to_owned();
    let (status, _, team) = call(
        &s,
        "POST",
        "/admin/v1/teams",
        Some(&token),
        Some(json!({"name": "payments"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, key) = call(
        &s,
        "POST",
        "/admin/v1/keys",
        Some(&token),
        Some(json!({"name": "ci", "team_id": team["id"], "allowed_models": ["claude-haiku-*"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let secret_key = key["key"].as_str().unwrap();
    assert!(secret_key.starts_with("rk_live_"));
    let (status, _, up) = call(
        &s,
        "POST",
        "/admin/v1/upstreams",
        Some(&token),
        Some(json!({"name": "primary", "api_key": "sk-ant-api03-secretsecretsecret-wxyz"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    assert_eq!(up["key_hint"], "sk-ant-…wxyz");
    let events = env
        .store
        .list_audit(&rampart_store::AuditQuery::default())
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["auth.login", "team.create", "key.create", "upstream.create"]
    );
    for e in &events {
        assert!(
            e.request_id
                .as_deref()
                .is_some_and(|r| r.starts_with("req_"))
        );
        assert!(!e.details.contains(secret_key) && !e.details.contains("secretsecret"));
        assert!(!e.details.contains(PASSWORD));
    }
    assert_eq!(events[1].actor, "user:root@example.com");
    // The stored credential is ciphertext, bound to its name.
    let cred = &env.store.list_upstream_credentials().await.unwrap()[0];
    assert!(!String::from_utf8_lossy(&cred.ciphertext).contains("secretsecret"));
}

#[tokio::test]
async fn a_new_password_ends_every_existing_session_and_needs_the_current_one() {
    let env = env().await;
    let s = instance(&env);
    let old = login(&s).await;
    let access = old["access_token"].as_str().unwrap();
    let me = old["user"]["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/v1/users/{me}");
    let new_pw = "lunar-tractor-meadow-913";
    let (status, _, body) = call(
        &s,
        "PATCH",
        &path,
        Some(access),
        Some(json!({"password": new_pw})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("current_password")
    );
    // Sleep past the second boundary so the old token's `iat` is strictly older.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = call(
        &s,
        "PATCH",
        &path,
        Some(access),
        Some(json!({"password": new_pw, "current_password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(&s, "GET", "/admin/v1/auth/me", Some(access), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "authentication_error");
    let (status, _, _) = call(
        &s,
        "POST",
        "/admin/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": old["refresh_token"]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, fresh) = call(
        &s,
        "POST",
        "/admin/v1/auth/login",
        None,
        Some(json!({"email": "root@example.com", "password": new_pw})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let fresh_access = fresh["access_token"].as_str().unwrap();
    assert_eq!(
        call(&s, "GET", "/admin/v1/auth/me", Some(fresh_access), None)
            .await
            .0,
        StatusCode::OK
    );
}
