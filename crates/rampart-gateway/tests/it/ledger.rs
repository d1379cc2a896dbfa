//! The usage ledger seen from the gateway: exactly one record per request — successes, upstream
//! errors, refusals, streams and streams the client abandoned — with the calling key's ids, the
//! usage the upstream reported and its price.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_gateway::Gateway;
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::store_plane::{StorePlane, StorePlaneOptions};
use rampart_ledger::pricing::{PriceTable, TokenUsage};
use rampart_ledger::{Ledger, LedgerConfig};
use rampart_store::{UsageGroupBy, UsageQuery, UsageRecord, UsageRow};
use serde_json::json;
use time::OffsetDateTime;

use crate::harness::{TestGateway, TestStore, hasher, message, serve, settings, sim};

/// A gateway with keys from `db` and a usage ledger spooling under `spool`.
async fn gateway(
    db: &TestStore,
    upstream: &str,
    spool: &std::path::Path,
) -> (TestGateway, StorePlane) {
    let directory = Arc::new(KeyDirectory::new(hasher()));
    let (plane, parts) = ledger_plane(db, &directory, spool).await;
    let gw = Gateway::with_parts(settings(upstream, Some("sk-ant-up")), directory, parts).unwrap();
    (serve(gw).await, plane)
}

/// The store plane of keys from `db` in `directory`, running a usage ledger that spools under
/// `spool` (its writer drains into `db`), and the proxy's parts with the ledger.
pub(crate) async fn ledger_plane(
    db: &TestStore,
    directory: &Arc<KeyDirectory>,
    spool: &std::path::Path,
) -> (StorePlane, rampart_gateway::proxy::ProxyParts) {
    let (mut plane, mut parts) = StorePlane::start(
        db.store(),
        directory.clone(),
        None,
        StorePlaneOptions::default(),
    )
    .await
    .unwrap();
    let (ledger, writer) = Ledger::open(&LedgerConfig::default(), spool, 2).unwrap();
    parts.ledger = Some(ledger);
    plane.run_ledger(db.store(), writer);
    (plane, parts)
}

/// `POST /v1/messages`: the status, the request id Rampart returned and the body.
async fn call(gw: &TestGateway, key: &str, body: &serde_json::Value) -> (u16, String, String) {
    let resp = gw.send("/v1/messages", key, body).await;
    let status = resp.status().as_u16();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    (status, id, resp.text().await.unwrap())
}

/// Totals over the last day, from the rollups.
pub(crate) async fn total(db: &TestStore) -> UsageRow {
    let rows = db
        .usage()
        .usage_summary(&UsageQuery {
            from: OffsetDateTime::now_utc() - time::Duration::DAY,
            to: OffsetDateTime::now_utc() + time::Duration::HOUR,
            key_id: None,
            team_id: None,
            user_id: None,
            model: None,
            group_by: UsageGroupBy::default(),
        })
        .await
        .unwrap();
    rows.into_iter().next().unwrap()
}

async fn records(db: &TestStore) -> HashMap<String, UsageRecord> {
    let all = db
        .usage()
        .list_usage_records(
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::now_utc() + time::Duration::HOUR,
            10_000,
        )
        .await
        .unwrap();
    let n = all.len();
    let by_id: HashMap<String, UsageRecord> =
        all.into_iter().map(|r| (r.request_id.clone(), r)).collect();
    assert_eq!(by_id.len(), n, "one record per request id");
    by_id
}

fn tokens(r: &UsageRecord) -> TokenUsage {
    TokenUsage {
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cache_creation_input_tokens: r.cache_write_5m_tokens + r.cache_write_1h_tokens,
        cache_read_input_tokens: r.cache_read_tokens,
        cache_creation_5m: Some(r.cache_write_5m_tokens),
        cache_creation_1h: Some(r.cache_write_1h_tokens),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_exactly_one_priced_usage_record() {
    let db = TestStore::new().await;
    let team = db.team("payments").await;
    let (key, key_row) = db.key(&team, &[]).await;
    let (haiku_only, haiku_row) = db.key(&team, &["claude-haiku-*"]).await;
    let upstream = sim(Some("sk-ant-up")).await;
    let spool = tempfile::tempdir().unwrap();
    let (gw, plane) = gateway(&db, &upstream.url, spool.path()).await;
    let prices = PriceTable::builtin();

    // A success, with the usage the upstream reported.
    let (status, ok_id, body) = call(&gw, &key, &message("claude-haiku-4-5")).await;
    assert_eq!(status, 200, "{body}");
    let ok_body: serde_json::Value = serde_json::from_str(&body).unwrap();
    // A stream.
    let mut streamed = message("claude-sonnet-4-6");
    streamed["stream"] = json!(true);
    let (status, stream_id, _) = call(&gw, &key, &streamed).await;
    assert_eq!(status, 200);
    // A 1-hour cache write (Opus 5 caches prompts from 512 tokens).
    let cached = json!({
        "model": "claude-opus-5",
        "max_tokens": 16,
        "system": [{"type": "text", "text": "policy ".repeat(600), "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "echo: hi"}]
    });
    let (status, cached_id, body) = call(&gw, &key, &cached).await;
    assert_eq!(status, 200, "{body}");
    let cached_body: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Refusals: an unknown key (401) and a model outside the key's scope (403).
    let (status, unknown_id, _) =
        call(&gw, "rk_live_not-a-key", &message("claude-haiku-4-5")).await;
    assert_eq!(status, 401);
    let (status, scoped_id, _) = call(&gw, &haiku_only, &message("claude-opus-4-6")).await;
    assert_eq!(status, 403);
    // An upstream error (no max_tokens).
    let (status, invalid_id, _) = call(
        &gw,
        &key,
        &json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    // A stream the client abandons after the first bytes.
    let client = reqwest::Client::new();
    let faults = client
        .post(format!("{}/_sim/faults", upstream.url))
        .json(&json!({"kind": "stall_stream", "delay_ms": 3000, "after_events": 1}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let mut resp = client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let abandoned_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    tokio::time::sleep(Duration::from_millis(100)).await;

    gw.stop().await;
    plane.stop().await;
    let recs = records(&db).await;
    assert_eq!(recs.len(), 7, "{:?}", recs.keys().collect::<Vec<_>>());

    let ok = &recs[&ok_id];
    let usage = &ok_body["usage"];
    assert_eq!(ok.status, 200);
    assert_eq!(
        (ok.key_id, ok.team_id, ok.user_id),
        (Some(key_row.id), Some(team.id), None)
    );
    assert_eq!(ok.key_label.as_deref(), Some(key_row.prefix.as_str()));
    assert_eq!(ok.endpoint, "/v1/messages");
    assert_eq!(ok.model_requested.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(ok.model_served.as_deref(), ok_body["model"].as_str());
    assert_eq!(ok.input_tokens, usage["input_tokens"].as_u64().unwrap());
    assert_eq!(ok.output_tokens, usage["output_tokens"].as_u64().unwrap());
    assert!(ok.input_tokens > 0 && ok.output_tokens > 0);
    assert_eq!(
        ok.cost_micro_usd,
        prices.cost("claude-haiku-4-5", &tokens(ok), false)
    );
    assert!(ok.cost_micro_usd > 0 && ok.priced);
    assert_eq!(
        (ok.upstream_attempts, ok.streamed, ok.client_aborted),
        (1, false, false)
    );
    assert!(ok.upstream_latency_us.is_some() && ok.latency_us >= ok.upstream_latency_us.unwrap());
    assert_eq!(ok.error_type, None);

    let st = &recs[&stream_id];
    assert!(st.streamed && !st.client_aborted);
    assert!(st.input_tokens > 0 && st.output_tokens > 0);
    assert_eq!(
        st.cost_micro_usd,
        prices.cost("claude-sonnet-4-6", &tokens(st), false)
    );

    let c = &recs[&cached_id];
    let creation = &cached_body["usage"]["cache_creation"];
    assert!(c.cache_write_1h_tokens > 0, "{cached_body}");
    assert_eq!(
        (c.cache_write_5m_tokens, c.cache_write_1h_tokens),
        (
            creation["ephemeral_5m_input_tokens"].as_u64().unwrap(),
            creation["ephemeral_1h_input_tokens"].as_u64().unwrap()
        )
    );
    // Opus 5: the 1-hour write at $10/MTok, twice the base input price.
    assert_eq!(
        c.cost_micro_usd,
        prices.cost("claude-opus-5", &tokens(c), false)
    );
    assert!(c.cost_micro_usd >= c.cache_write_1h_tokens * 10);

    let unknown = &recs[&unknown_id];
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.error_type.as_deref(), Some("authentication_error"));
    assert_eq!(
        (
            unknown.key_id,
            unknown.upstream_attempts,
            unknown.cost_micro_usd
        ),
        (None, 0, 0)
    );

    let scoped = &recs[&scoped_id];
    assert_eq!(scoped.status, 403);
    assert_eq!(scoped.error_type.as_deref(), Some("permission_error"));
    assert_eq!(scoped.key_id, Some(haiku_row.id));
    assert_eq!(scoped.model_requested.as_deref(), Some("claude-opus-4-6"));

    let invalid = &recs[&invalid_id];
    assert_eq!((invalid.status, invalid.upstream_attempts), (400, 1));
    assert_eq!(invalid.cost_micro_usd, 0);

    let abandoned = &recs[&abandoned_id];
    assert!(abandoned.client_aborted && abandoned.streamed);
    assert_eq!(abandoned.status, 200);

    // The rollups hold the same totals.
    let total = total(&db).await;
    assert_eq!(total.requests, 7);
    assert_eq!(total.errors, 3);
    assert_eq!(
        total.cost_micro_usd,
        recs.values().map(|r| r.cost_micro_usd).sum::<u64>()
    );
    // Drained segments are deleted.
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What an unread request is charged: its input by the shared estimator and, for a whole
/// answer, its `max_tokens` of output.
fn estimate(body: &serde_json::Value, streamed: bool) -> (u64, u64) {
    let bytes = serde_json::to_vec(body).unwrap();
    let e = rampart_api::tokens::estimate_request(&bytes).unwrap();
    (e.input_tokens, if streamed { 0 } else { e.max_tokens })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_may_have_billed_unread_is_charged_an_estimate() {
    let db = TestStore::new().await;
    let team = db.team("payments").await;
    let (key, _) = db.key(&team, &[]).await;
    let upstream = sim(Some("sk-ant-up")).await;
    let spool = tempfile::tempdir().unwrap();
    let (gw, plane) = gateway(&db, &upstream.url, spool.path()).await;
    let prices = PriceTable::builtin();
    let client = reqwest::Client::new();
    let fault = |f: serde_json::Value| upstream.fault(f);
    let mut whole = message("claude-haiku-4-5");
    whole["max_tokens"] = json!(300);
    whole["messages"][0]["content"] = json!("echo: ".to_owned() + &"word ".repeat(80));
    let mut streamed = whole.clone();
    streamed["stream"] = json!(true);
    let send = |body: &serde_json::Value, id: &str, timeout: Option<Duration>| {
        let mut req = client
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-request-id", id)
            .json(body);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req.send()
    };

    // A whole answer the upstream cuts off halfway through its body.
    fault(json!({"kind": "abort_stream"})).await;
    let resp = send(&whole, "cut-json", None).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());
    // The client leaves while the upstream works on a whole answer, and on a stream.
    for (id, body) in [("left-json", &whole), ("left-stream", &streamed)] {
        fault(json!({"kind": "stall_headers", "delay_ms": 1500})).await;
        let err = send(body, id, Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    // Every attempt's connection is closed without an answer (three attempts by default).
    fault(json!({"kind": "reset", "count": 3})).await;
    let resp = send(&whole, "reset", None).await.unwrap();
    assert_eq!(resp.status(), 502);
    // The upstream's own error answer: billed nothing, charged nothing.
    fault(json!({"kind": "status", "status": 400, "error_type": "invalid_request_error"})).await;
    let resp = send(&whole, "refused", None).await.unwrap();
    assert_eq!(resp.status(), 400);
    // A stream cut after its message_start has its usage: no estimate.
    fault(json!({"kind": "abort_stream", "after_events": 3})).await;
    let resp = send(&streamed, "cut-stream", None).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    gw.stop().await;
    plane.stop().await;
    let recs = records(&db).await;
    assert_eq!(recs.len(), 6, "{:?}", recs.keys().collect::<Vec<_>>());
    let charged = |id: &str| {
        let r = &recs[id];
        assert_eq!(
            r.cost_micro_usd,
            prices.cost("claude-haiku-4-5", &tokens(r), false),
            "{id}"
        );
        (
            r.status,
            r.client_aborted,
            (r.input_tokens, r.output_tokens),
        )
    };
    let (json_estimate, stream_estimate) = (estimate(&whole, false), estimate(&streamed, true));
    assert!(
        json_estimate.0 > 80 && json_estimate.1 == 300,
        "{json_estimate:?}"
    );
    assert_eq!(charged("cut-json"), (200, false, json_estimate));
    assert_eq!(recs["cut-json"].error_type.as_deref(), Some("api_error"));
    assert_eq!(charged("left-json"), (499, true, json_estimate));
    assert_eq!(charged("left-stream"), (499, true, stream_estimate));
    assert_eq!(recs["left-json"].upstream_attempts, 1);
    assert_eq!(charged("reset"), (502, false, json_estimate));
    assert!(recs["reset"].upstream_attempts > 1);
    assert_eq!(charged("refused"), (400, false, (0, 0)));
    let (status, aborted, (input, output)) = charged("cut-stream");
    assert_eq!((status, aborted), (200, false));
    assert!(input > 0 && (1..300).contains(&output), "{input} {output}");
    // The model that served is known only where an answer's usage was read.
    assert!(recs["cut-stream"].model_served.is_some());
    for id in ["cut-json", "left-json", "left-stream", "reset"] {
        assert_eq!(recs[id].model_served, None, "{id}");
    }
    assert!(recs["cut-json"].cost_micro_usd > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spooled_before_a_crash_reach_the_database_at_the_next_start() {
    let db = TestStore::new().await;
    let team = db.team("t").await;
    let (key, _) = db.key(&team, &[]).await;
    let upstream = sim(Some("sk-ant-up")).await;
    let spool = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        // A gateway whose writer never runs: records stay in the spool, as after `kill -9`.
        let directory = Arc::new(KeyDirectory::new(hasher()));
        directory.refresh(&db).await.unwrap();
        let (ledger, _writer) = Ledger::open(&LedgerConfig::default(), spool.path(), 2).unwrap();
        let parts = rampart_gateway::proxy::ProxyParts {
            ledger: Some(ledger),
            ..Default::default()
        };
        let gw = serve(
            Gateway::with_parts(settings(&upstream.url, Some("sk-ant-up")), directory, parts)
                .unwrap(),
        )
        .await;
        for _ in 0..20 {
            let (status, id, _) = call(&gw, &key, &message("claude-haiku-4-5")).await;
            assert_eq!(status, 200);
            ids.push(id);
        }
        gw.stop().await;
    }
    assert!(records(&db).await.is_empty());
    // The next start replays the spool. A copy taken first is replayed too, as when a crash
    // comes after the database commit but before the drained segments are deleted: nothing
    // counts twice.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(spool.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "spool") {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    for dir in [spool.path(), copy.path()] {
        let (_, writer) = Ledger::open(&LedgerConfig::default(), dir, 2).unwrap();
        drain(writer, &db).await;
    }
    let recs = records(&db).await;
    assert_eq!(recs.len(), 20);
    assert!(ids.iter().all(|id| recs.contains_key(id)));
    let total = total(&db).await;
    assert_eq!(total.requests, 20, "the rollups counted each record once");
}

/// A key with `limits` in a new team, loaded into `directory`.
pub(crate) async fn limited_key(
    db: &TestStore,
    directory: &KeyDirectory,
    limits: rampart_store::LimitSettings,
) -> (String, uuid::Uuid) {
    let team = db
        .team(&format!("t-{}", uuid::Uuid::now_v7().simple()))
        .await;
    let (key, row) = db.key_with_limits(&team, &limits).await;
    directory.refresh(db).await.unwrap();
    (key, row.id)
}

/// Run `writer` until it has drained the spool (it drains once more when stopped).
async fn drain(writer: rampart_ledger::LedgerWriter, db: &TestStore) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(writer.run(db.store(), async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_budget_refusals_are_recorded_too() {
    let db = TestStore::new().await;
    let upstream = sim(Some("sk-ant-up")).await;
    let spool = tempfile::tempdir().unwrap();
    let directory = Arc::new(KeyDirectory::new(hasher()));
    let (ledger, writer) = Ledger::open(&LedgerConfig::default(), spool.path(), 2).unwrap();
    let s = settings(&upstream.url, Some("sk-ant-up"));
    let parts = rampart_gateway::proxy::ProxyParts {
        ledger: Some(ledger),
        limits: Some(rampart_gateway::admission::Limits {
            limiter: rampart_limits::Limiter::in_process(Arc::new(
                rampart_limits::TokioClock::new(),
            )),
            prices: s.prices.clone(),
        }),
        ..Default::default()
    };
    let gw = serve(Gateway::with_parts(s, directory.clone(), parts).unwrap()).await;
    let (one_a_minute, rpm_key) = limited_key(
        &db,
        &directory,
        rampart_store::LimitSettings {
            rpm: Some(1),
            ..Default::default()
        },
    )
    .await;
    // A budget of one micro-dollar: the first request may overshoot it (by at most its own
    // reservation), the next is refused.
    let (broke, budget_key) = limited_key(
        &db,
        &directory,
        rampart_store::LimitSettings {
            budget: Some(rampart_store::BudgetSetting {
                micros: 1,
                period: rampart_store::BudgetPeriod::Day,
            }),
            ..Default::default()
        },
    )
    .await;
    let (status, _, _) = call(&gw, &one_a_minute, &message("claude-haiku-4-5")).await;
    assert_eq!(status, 200);
    let (status, limited_id, _) = call(&gw, &one_a_minute, &message("claude-haiku-4-5")).await;
    assert_eq!(status, 429);
    let (status, _, _) = call(&gw, &broke, &message("claude-opus-4-6")).await;
    assert_eq!(status, 200);
    let (status, over_id, body) = call(&gw, &broke, &message("claude-opus-4-6")).await;
    assert_eq!(status, 402, "{body}");
    gw.stop().await;
    drain(writer, &db).await;

    let recs = records(&db).await;
    assert_eq!(recs.len(), 4);
    let limited = &recs[&limited_id];
    assert_eq!(
        (
            limited.status,
            limited.error_type.as_deref(),
            limited.key_id
        ),
        (429, Some("rate_limit_error"), Some(rpm_key))
    );
    assert_eq!((limited.upstream_attempts, limited.cost_micro_usd), (0, 0));
    let over = &recs[&over_id];
    assert_eq!(
        (over.status, over.error_type.as_deref(), over.key_id),
        (402, Some("billing_error"), Some(budget_key))
    );
    assert_eq!(over.model_requested.as_deref(), Some("claude-opus-4-6"));
}

/// A usage record like the gateway's, numbered `n`.
fn usage_record(n: u128) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::now_v7(),
        at: OffsetDateTime::now_utc(),
        request_id: format!("req_refused_{n}"),
        key_id: None,
        team_id: None,
        user_id: None,
        key_label: None,
        endpoint: "/v1/messages".to_owned(),
        model_requested: Some("claude-haiku-4-5".to_owned()),
        model_served: Some("claude-haiku-4-5-20251001".to_owned()),
        status: 200,
        error_type: None,
        input_tokens: 10,
        output_tokens: 5,
        cache_write_5m_tokens: 0,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 0,
        cost_micro_usd: 35,
        priced: true,
        latency_us: 900,
        upstream_latency_us: Some(800),
        upstream_attempts: 1,
        streamed: false,
        cache_hit: false,
        client_aborted: false,
        saved_micro_usd: 0,
    }
}

/// A record the database refuses (here a status outside 100–999, which the schema's check
/// refuses on both engines) is set aside in the spool directory, and the records of its batch
/// and those after it are written: one bad record never holds back the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_is_set_aside_and_the_others_are_written() {
    let db = TestStore::new().await;
    let spool = tempfile::tempdir().unwrap();
    let (ledger, writer) = Ledger::open(&LedgerConfig::default(), spool.path(), 1).unwrap();
    let mut bad = usage_record(3);
    bad.status = 42;
    let bad_id = bad.id;
    let mut batch: Vec<UsageRecord> = (0..3).map(usage_record).collect();
    batch.push(bad);
    batch.extend((4..6).map(usage_record));
    // A NUL in text is stored (PostgreSQL refuses it in `text`, so the store replaces it).
    batch[1].model_requested = Some("claude\0haiku".to_owned());
    for r in batch {
        ledger.record_prepared(rampart_ledger::Prepared::new(r), |_| {});
    }
    drain(writer, &db).await;
    let recs = records(&db).await;
    assert_eq!(recs.len(), 5, "{:?}", recs.keys());
    assert!(!recs.contains_key("req_refused_3"));
    assert_eq!(
        recs["req_refused_1"].model_requested.as_deref(),
        Some("claude\u{fffd}haiku")
    );
    let refused =
        std::fs::read_to_string(spool.path().join(rampart_ledger::ledger::REFUSED_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = refused
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{refused}");
    assert_eq!(lines[0]["record"]["id"], json!(bad_id));
    assert_eq!(lines[0]["record"]["status"], json!(42));
    assert!(lines[0]["reason"].as_str().unwrap().contains("schema"));
    // The spool is drained: a restart replays nothing.
    drop(ledger);
    let (ledger, writer) = Ledger::open(&LedgerConfig::default(), spool.path(), 1).unwrap();
    ledger.record_prepared(rampart_ledger::Prepared::new(usage_record(6)), |_| {});
    drain(writer, &db).await;
    assert_eq!(records(&db).await.len(), 6);
    assert_eq!(
        std::fs::read_to_string(spool.path().join(rampart_ledger::ledger::REFUSED_FILE))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// The text deltas of an SSE body: how many, and their text's characters.
fn text_deltas(body: &str) -> (u64, u64) {
    let mut n = 0;
    let mut chars = 0;
    for event in body.split("\n\n") {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        if data["type"] == "content_block_delta" {
            n += 1;
            chars += data["delta"]["text"].as_str().unwrap().chars().count() as u64;
        }
    }
    (n, chars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_is_charged_the_text_it_delivered() {
    let db = TestStore::new().await;
    let team = db.team("payments").await;
    let (key, _) = db.key(&team, &[]).await;
    let upstream = sim(Some("sk-ant-up")).await;
    let spool = tempfile::tempdir().unwrap();
    let (gw, plane) = gateway(&db, &upstream.url, spool.path()).await;
    let prices = PriceTable::builtin();
    let client = reqwest::Client::new();
    // Sixty words of three letters: the simulator's deltas carry three, 11 or 12 characters.
    let mut streamed = message("claude-sonnet-4-6");
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(300);
    streamed["messages"][0]["content"] = json!("echo: ".to_owned() + &["abc"; 60].join(" "));
    let send = |id: &str| {
        client
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-request-id", id)
            .json(&streamed)
            .send()
    };
    // message_start, content_block_start and ping, then nine text deltas (27 words).
    let events = 12;

    // The upstream breaks the stream after them (Rampart closes it with an error event).
    upstream
        .fault(json!({"kind": "abort_stream", "after_events": events}))
        .await;
    let resp = send("cut").await.unwrap();
    assert_eq!(resp.status(), 200);
    let cut_body = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert!(cut_body.contains("event: error") && !cut_body.contains("message_stop"));

    // The client reads as many and leaves (the upstream pauses after them).
    upstream
        .fault(json!({"kind": "stall_stream", "after_events": events, "delay_ms": 5000}))
        .await;
    let mut resp = send("left").await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut read = Vec::new();
    while read.windows(2).filter(|w| *w == b"\n\n").count() < events {
        read.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
    }
    drop(resp);
    let left_body = String::from_utf8(read).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    gw.stop().await;
    plane.stop().await;
    let recs = records(&db).await;
    for (id, body) in [("cut", &cut_body), ("left", &left_body)] {
        let r = &recs[id];
        let (deltas, chars) = text_deltas(body);
        assert_eq!(deltas, 9, "{id}: {body}");
        // The delivered text by the input estimator's rule (a token per delta was the floor):
        // here as many tokens as words, what the upstream would have reported for them.
        let delivered = chars.div_ceil(4);
        assert_eq!(delivered, 27, "{id}");
        assert_eq!(r.output_tokens, delivered, "{id}");
        assert!(r.input_tokens > 60, "{id}: {}", r.input_tokens);
        assert_eq!(r.client_aborted, id == "left", "{id}");
        assert_eq!(
            r.cost_micro_usd,
            prices.cost("claude-sonnet-4-6", &tokens(r), false),
            "{id}"
        );
    }
}
