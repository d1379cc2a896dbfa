//! Refused key uses leave audit rows (never the key), written off the request path and cut to a
//! budget under a flood.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rampart_gateway::denials::{DenialLimits, denial_audit};
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::proxy::{AppState, ProxyParts, handle_from};
use rampart_gateway::routes::Route;
use rampart_store::{AuditEvent, AuditQuery};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::harness::{TestStore, hasher, message, settings};

/// A proxy over `db`'s keys with a denial audit, its writer running until the returned sender fires.
async fn proxy(
    db: &TestStore,
    limits: DenialLimits,
) -> (
    Arc<AppState>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let dir = Arc::new(KeyDirectory::new(hasher()));
    dir.refresh(db).await.unwrap();
    let (audit, writer) = denial_audit(limits);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let written = tokio::spawn(writer.run(db.store(), async {
        let _ = stopped.await;
    }));
    // Nothing listens on port 9: a request that got past the checks would fail with 502.
    let state = AppState::with_parts(
        settings("http://127.0.0.1:9", Some("sk-ant-up")),
        dir,
        ProxyParts {
            denials: Some(audit),
            ..ProxyParts::default()
        },
    )
    .unwrap();
    (Arc::new(state), stop, written)
}

async fn call(state: &Arc<AppState>, route: Route, path: &str, key: &str, body: &Value) -> u16 {
    let req = http::Request::post(path)
        .header("x-api-key", key)
        .header("x-request-id", "req-test-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    handle_from(
        state.clone(),
        route,
        req,
        Some("10.0.0.9:40000".parse().unwrap()),
    )
    .await
    .status()
    .as_u16()
}

async fn denied_rows(db: &TestStore) -> Vec<AuditEvent> {
    db.list_audit(&AuditQuery {
        action: Some("key.denied".into()),
        limit: 1000,
        ..AuditQuery::default()
    })
    .await
    .unwrap()
}

fn details(row: &AuditEvent) -> Value {
    serde_json::from_str(&row.details).unwrap()
}

#[tokio::test]
async fn refusals_are_audited_with_reason_and_prefix_never_the_key() {
    let db = TestStore::new().await;
    let team = db.team("t").await;
    let (revoked, revoked_row) = db.key(&team, &[]).await;
    db.revoke_api_key(revoked_row.id, OffsetDateTime::now_utc(), None)
        .await
        .unwrap();
    let (scoped, scoped_row) = db.key(&team, &["claude-haiku-*"]).await;
    let (models_only, models_row) = db.key(&team, &[]).await;
    let only_models = rampart_store::ApiKeyUpdate {
        allowed_endpoints: Some(vec!["models".into()]),
        ..rampart_store::ApiKeyUpdate::default()
    };
    db.update_api_key(models_row.id, &only_models, None)
        .await
        .unwrap();
    let unknown = hasher().generate("live").key.expose().to_owned();
    let (state, stop, written) = proxy(&db, DenialLimits::default()).await;

    let body = message("claude-opus-4-1");
    assert_eq!(
        call(&state, Route::Messages, "/v1/messages", &revoked, &body).await,
        401
    );
    assert_eq!(
        call(&state, Route::Messages, "/v1/messages", &unknown, &body).await,
        401
    );
    assert_eq!(
        call(
            &state,
            Route::Messages,
            "/v1/messages",
            "sk-ant-api03-not-ours-at-all",
            &body
        )
        .await,
        401
    );
    assert_eq!(
        call(&state, Route::Messages, "/v1/messages", &scoped, &body).await,
        403
    );
    let batch = json!({"requests": [{"custom_id": "x", "params": message("claude-opus-5")}]});
    assert_eq!(
        call(
            &state,
            Route::Batches,
            "/v1/messages/batches",
            &scoped,
            &batch
        )
        .await,
        403
    );
    assert_eq!(
        call(
            &state,
            Route::Messages,
            "/v1/messages",
            &scoped,
            &message("claude-haiku-4-5")
        )
        .await,
        502,
        "allowed, so not audited (and nothing listens upstream)"
    );
    assert_eq!(
        call(&state, Route::Messages, "/v1/messages", &models_only, &body).await,
        403
    );
    let _ = stop.send(());
    written.await.unwrap();

    let rows = denied_rows(&db).await;
    let seen: Vec<(String, Value)> = rows.iter().map(|r| (r.actor.clone(), details(r))).collect();
    assert_eq!(
        seen,
        vec![
            (
                revoked[..12].to_owned(),
                json!({"status": 401, "reason": "revoked"})
            ),
            (
                unknown[..12].to_owned(),
                json!({"status": 401, "reason": "unknown_key"})
            ),
            (
                "unknown".to_owned(),
                json!({"status": 401, "reason": "unknown_key"})
            ),
            (
                scoped[..12].to_owned(),
                json!({"status": 403, "reason": "model_not_allowed", "model": "claude-opus-4-1", "key_id": scoped_row.id})
            ),
            (
                scoped[..12].to_owned(),
                json!({"status": 403, "reason": "model_not_allowed", "model": "claude-opus-5", "key_id": scoped_row.id})
            ),
            (
                models_only[..12].to_owned(),
                json!({"status": 403, "reason": "endpoint_not_allowed", "key_id": models_row.id})
            ),
        ]
    );
    for row in &rows {
        assert_eq!(row.outcome, rampart_store::AuditOutcome::Denied);
        assert_eq!(row.client_addr.as_deref(), Some("10.0.0.9"));
        assert_eq!(row.request_id.as_deref(), Some("req-test-1"));
        let text = format!("{row:?}");
        for secret in [&revoked, &unknown, &scoped, &models_only] {
            assert!(!text.contains(&secret[12..]), "a row holds a key: {text}");
        }
        assert!(!text.contains("echo: hi") && !text.contains("not-ours"));
    }
    assert_eq!(rows[4].target, "/v1/messages/batches");
    assert!(db.verify_audit_chain().await.unwrap().is_none());
}

#[tokio::test]
async fn a_flood_writes_the_budget_then_one_summary_row() {
    let db = TestStore::new().await;
    let limits = DenialLimits {
        per_window: 5,
        window: Duration::from_secs(3600),
        queue: 64,
    };
    let (state, stop, written) = proxy(&db, limits).await;
    for _ in 0..200 {
        assert_eq!(
            call(
                &state,
                Route::Messages,
                "/v1/messages",
                "rk_live_nope",
                &json!({})
            )
            .await,
            401
        );
    }
    let _ = stop.send(());
    written.await.unwrap();
    let rows = denied_rows(&db).await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    let summary = rows.last().unwrap();
    assert_eq!(summary.actor, "system");
    assert_eq!(details(summary)["suppressed"], 195);
}
