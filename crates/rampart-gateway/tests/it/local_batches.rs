//! Message batches served from the store: local mode end to end against the simulator (mixed
//! items, one usage record per item, retries and dead letters, cancel), scoping between teams,
//! budgets refusing a batch up front, and items paced by their key's per-minute limits; the
//! usage records of upstream-mode items.

use std::sync::Arc;
use std::time::Duration;

use rampart_gateway::Gateway;
use rampart_gateway::admission::Limits;
use rampart_gateway::batches::Batches;
use rampart_gateway::keydir::KeyDirectory;
use rampart_gateway::proxy::ProxyParts;
use rampart_store::batches::DeadLetterQuery;
use serde_json::{Value, json};

use crate::harness::{TestGateway, TestSim, TestStore, hasher, sim};

struct Fixture {
    db: TestStore,
    gw: TestGateway,
    dir: Arc<KeyDirectory>,
    sim: TestSim,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

async fn fixture(batches_toml: &str) -> Fixture {
    let limiter = rampart_limits::Limiter::in_process(Arc::new(rampart_limits::TokioClock::new()));
    fixture_with(batches_toml, limiter).await
}

async fn fixture_with(batches_toml: &str, limiter: rampart_limits::Limiter) -> Fixture {
    let db = TestStore::new().await;
    let dir = Arc::new(KeyDirectory::new(hasher()));
    let upstream = sim(None).await;
    let s = rampart_gateway::config::load(&rampart_gateway::Sources {
        inline_toml: Some(format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n\
             [upstream]\nbase_url = \"{}\"\n[upstream.retry]\nmax_attempts = 1\n\
             [upstream.breaker]\nenabled = false\n\
             [batches]\nmode = \"local\"\nclaim_interval_ms = 20\nbackoff_base_ms = 10\n\
             backoff_max_ms = 50\n{batches_toml}\n",
            upstream.url
        )),
        upstream_api_key: Some(rampart_crypto::Secret::new("sk-ant-up".to_owned())),
        store_keys: true,
        store_credentials: true,
        ..rampart_gateway::Sources::default()
    })
    .unwrap();
    let limits = Limits {
        limiter,
        prices: s.prices.clone(),
    };
    let parts = ProxyParts {
        batches: Some(Batches::new(
            db.store(),
            s.batches.clone(),
            Some(limits.clone()),
            Some(dir.clone()),
        )),
        limits: Some(limits),
        ..ProxyParts::default()
    };
    let gateway = Gateway::with_parts(s, dir.clone(), parts).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = gateway.spawn_batch_workers(&stopped);
    let gw = crate::harness::serve(gateway).await;
    Fixture {
        db,
        gw,
        dir,
        sim: upstream,
        stop,
        workers,
    }
}

impl Fixture {
    async fn key(&self, team: &str) -> String {
        let team = self.db.team(team).await;
        let (key, _) = self.db.key(&team, &[]).await;
        self.dir.refresh(&self.db).await.unwrap();
        key
    }

    async fn get(&self, path: &str, key: &str) -> (u16, String) {
        let resp = self
            .gw
            .http
            .get(format!("{}{path}", self.gw.url))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn wait_ended(&self, id: &str, key: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/v1/messages/batches/{id}"), key).await;
            assert_eq!(status, 200, "{body}");
            let b: Value = serde_json::from_str(&body).unwrap();
            if b["processing_status"] == "ended" {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "batch {id} did not end: {b}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn results(&self, id: &str, key: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/messages/batches/{id}/results"), key)
            .await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `POST /v1/messages` of a small Sonnet request with `key`.
    async fn ask(&self, key: &str) -> (u16, Value) {
        self.gw
            .post(
                "/v1/messages",
                key,
                &crate::harness::message("claude-sonnet-4-6"),
            )
            .await
    }

    /// `POST /v1/messages/batches` of `requests` with `key`.
    async fn submit(&self, key: &str, requests: Value) -> (u16, Value) {
        self.gw
            .post(
                "/v1/messages/batches",
                key,
                &json!({ "requests": requests }),
            )
            .await
    }

    async fn fault(&self, fault: Value) {
        self.sim.fault(fault).await;
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            w.await.unwrap();
        }
        self.gw.stop().await;
    }
}

fn item(id: &str, text: &str) -> Value {
    json!({"custom_id": id, "params": {
        "model": "claude-sonnet-4-6", "max_tokens": 20,
        "messages": [{"role": "user", "content": format!("echo: {text}")}]}})
}

fn bad(id: &str) -> Value {
    json!({"custom_id": id, "params": {"model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hi"}]}})
}

async fn item_records(db: &TestStore) -> u64 {
    let now = time::OffsetDateTime::now_utc();
    let q = rampart_store::UsageQuery {
        from: now - time::Duration::hours(1),
        to: now + time::Duration::hours(1),
        key_id: None,
        team_id: None,
        user_id: None,
        model: None,
        group_by: rampart_store::UsageGroupBy::default(),
    };
    db.usage()
        .usage_summary(&q)
        .await
        .unwrap()
        .first()
        .map_or(0, |r| r.requests)
}

/// The usage records of batch items since `since`.
async fn item_usage(
    db: &TestStore,
    since: time::OffsetDateTime,
) -> Vec<rampart_store::UsageRecord> {
    let now = time::OffsetDateTime::now_utc();
    db.usage()
        .list_usage_records(since, now + time::Duration::seconds(1), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.endpoint == rampart_gateway::batches::runner::ITEM_ENDPOINT)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_batch_runs_good_and_bad_items_and_records_each_once() {
    let f = fixture("").await;
    let key = f.key("alpha").await;
    let mut requests: Vec<Value> = (0..30)
        .map(|i| item(&format!("g{i}"), &format!("n{i}")))
        .collect();
    requests.push(bad("bad"));
    let (status, created) = f.submit(&key, json!(requests)).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(created["request_counts"]["processing"], 31);
    assert!(created["results_url"].is_null());
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));

    let ended = f.wait_ended(&id, &key).await;
    assert_eq!(ended["request_counts"]["succeeded"], 30);
    assert_eq!(ended["request_counts"]["errored"], 1);
    assert_eq!(ended["request_counts"]["processing"], 0);
    assert!(ended["ended_at"].is_string());
    assert_eq!(
        ended["results_url"],
        format!("{}/v1/messages/batches/{id}/results", f.gw.url)
    );
    let lines = f.results(&id, &key).await;
    assert_eq!(lines.len(), 31);
    let g7 = lines.iter().find(|l| l["custom_id"] == "g7").unwrap();
    assert_eq!(g7["result"]["type"], "succeeded");
    assert_eq!(g7["result"]["message"]["content"][0]["text"], "n7");
    let b = lines.iter().find(|l| l["custom_id"] == "bad").unwrap();
    assert_eq!(b["result"]["type"], "errored");
    assert_eq!(b["result"]["error"]["type"], "error");
    assert_eq!(
        b["result"]["error"]["error"]["type"],
        "invalid_request_error"
    );
    // One usage record per item that ran (the batch's HTTP calls have no ledger here).
    assert_eq!(item_records(&f.db).await, 31);
    let row = f.db.batches().get_batch(&id).await.unwrap();
    assert!(row.ended_at.is_some());

    // Deleting: then it is gone.
    let resp =
        f.gw.http
            .delete(format!("{}/v1/messages/batches/{id}", f.gw.url))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let deleted: Value = resp.json().await.unwrap();
    assert_eq!(deleted, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, _) = f.get(&format!("/v1/messages/batches/{id}"), &key).await;
    assert_eq!(status, 404);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_batch_is_invisible_and_untouchable() {
    let f = fixture("").await;
    let mine = f.key("mine").await;
    let theirs = f.key("theirs").await;
    let (_, created) = f.submit(&mine, json!([item("a", "x")])).await;
    let id = created["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/messages/batches/{id}"),
        format!("/v1/messages/batches/{id}/results"),
    ] {
        let (status, body) = f.get(&path, &theirs).await;
        assert_eq!(status, 404, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
    }
    let (status, _) =
        f.gw.post(
            &format!("/v1/messages/batches/{id}/cancel"),
            &theirs,
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, listed) = f.get("/v1/messages/batches", &theirs).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["data"], json!([]));
    assert_eq!(listed["has_more"], false);
    let (_, listed) = f.get("/v1/messages/batches?limit=1", &mine).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(listed["first_id"], id.as_str());
    for bad_query in ["limit=0", "limit=1001", "limit=ten"] {
        let (status, body) = f
            .get(&format!("/v1/messages/batches?{bad_query}"), &mine)
            .await;
        assert_eq!(status, 400, "{bad_query}: {body}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_creations_get_the_api_envelope_and_store_nothing() {
    let f = fixture("max_requests = 3").await;
    let key = f.key("t").await;
    for (body, want) in [
        (json!({}), "requests: Field required"),
        (json!({"requests": []}), "at least 1 item"),
        (
            json!({"requests": [{"custom_id": "a b", "params": {}}]}),
            "pattern",
        ),
        (
            json!({"requests": [item("a", "x"), item("a", "y")]}),
            "'a' is repeated",
        ),
        (
            json!({"requests": [item("a", "x"), item("b", "x"), item("c", "x"), item("d", "x")]}),
            "at most 3",
        ),
    ] {
        let (status, resp) = f.gw.post("/v1/messages/batches", &key, &body).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["type"], "error");
        assert_eq!(resp["error"]["type"], "invalid_request_error");
        let m = resp["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{m} / {want}");
    }
    let resp =
        f.gw.http
            .post(format!("{}/v1/messages/batches", f.gw.url))
            .header("x-api-key", &key)
            .header("x-rampart-batch-mode", "sideways")
            .json(&json!({"requests": [item("a", "x")]}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 400);
    let (_, listed) = f.get("/v1/messages/batches", &key).await;
    assert_eq!(
        serde_json::from_str::<Value>(&listed).unwrap()["data"],
        json!([])
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_and_then_dead_lettered() {
    let f = fixture("max_attempts = 3").await;
    let key = f.key("t").await;
    // Two 529s for haiku: its item succeeds on the third attempt. Opus fails every time.
    f.fault(json!({"kind": "status", "status": 529, "count": 2, "model": "claude-haiku-4-5"}))
        .await;
    f.fault(json!({"kind": "status", "status": 503, "count": 100, "model": "claude-opus-4-6"}))
        .await;
    let mut flaky = item("flaky", "made it");
    flaky["params"]["model"] = json!("claude-haiku-4-5");
    let mut doomed = item("doomed", "never");
    doomed["params"]["model"] = json!("claude-opus-4-6");
    let (status, created) = f
        .submit(&key, json!([flaky, doomed, item("fine", "ok")]))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let ended = f.wait_ended(&id, &key).await;
    assert_eq!(ended["request_counts"]["succeeded"], 2, "{ended}");
    assert_eq!(ended["request_counts"]["errored"], 1, "{ended}");
    let lines = f.results(&id, &key).await;
    let doomed = lines.iter().find(|l| l["custom_id"] == "doomed").unwrap();
    assert_eq!(doomed["result"]["error"]["error"]["type"], "api_error");
    let letters =
        f.db.batches()
            .list_dead_letters(&DeadLetterQuery {
                batch_id: Some(id.clone()),
                limit: 10,
                ..DeadLetterQuery::default()
            })
            .await
            .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].custom_id, "doomed");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].last_status, Some(503));
    // Replayed once the upstream is healthy again: the item succeeds, the counts follow.
    reqwest::Client::new()
        .delete(format!("{}/_sim/faults", f.sim.url))
        .send()
        .await
        .unwrap();
    f.db.batches()
        .replay_dead_letter(letters[0].id, time::OffsetDateTime::now_utc(), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b = f.db.batches().get_batch(&id).await.unwrap();
        if b.succeeded == 3 {
            assert_eq!(b.errored, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay did not run: {b:?} {:?}",
            f.db.batches().batch_results(&id, 0, 10).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_unstarted_items_at_once() {
    let f = fixture("workers = 1\nteam_concurrency = 1").await;
    let key = f.key("t").await;
    // Every call takes 300 ms, so most items are still queued when the cancel arrives.
    f.fault(json!({"kind": "stall_headers", "delay_ms": 300, "count": 1000}))
        .await;
    let requests: Vec<Value> = (0..10).map(|i| item(&format!("i{i}"), "x")).collect();
    let (_, created) = f.submit(&key, json!(requests)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, canceled) =
        f.gw.post(
            &format!("/v1/messages/batches/{id}/cancel"),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["processing_status"], "canceling");
    assert!(canceled["cancel_initiated_at"].is_string());
    let ended = f.wait_ended(&id, &key).await;
    let c = &ended["request_counts"];
    assert!(c["canceled"].as_u64().unwrap() >= 8, "{ended}");
    assert_eq!(
        c["canceled"].as_u64().unwrap() + c["succeeded"].as_u64().unwrap(),
        10
    );
    let lines = f.results(&id, &key).await;
    assert!(
        lines
            .iter()
            .any(|l| l["result"] == json!({"type": "canceled"}))
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_its_budget_cannot_hold_is_refused_with_402_and_nothing_stored() {
    let f = fixture("").await;
    let team = f.db.team("thrifty").await;
    let (key, _) =
        f.db.key_with_limits(
            &team,
            &rampart_store::LimitSettings {
                budget: Some(rampart_store::BudgetSetting {
                    micros: 1_000,
                    period: rampart_store::BudgetPeriod::Month,
                }),
                ..rampart_store::LimitSettings::default()
            },
        )
        .await;
    f.dir.refresh(&f.db).await.unwrap();
    // 100 items of up to 20 output tokens on Sonnet: far over $0.001 in the worst case.
    let requests: Vec<Value> = (0..100).map(|i| item(&format!("i{i}"), "x")).collect();
    let (status, body) = f.submit(&key, json!(requests)).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["type"], "billing_error");
    // Nothing is spent: the message says the batch does not fit, not that the budget is spent.
    let msg = body["error"]["message"].as_str().unwrap();
    let next_month = {
        let today = time::OffsetDateTime::now_utc().date();
        let (y, m) = match today.month() {
            time::Month::December => (today.year() + 1, time::Month::January),
            m => (today.year(), m.next()),
        };
        time::Date::from_calendar_date(y, m, 1).unwrap()
    };
    assert!(
        msg.starts_with("budget exceeded: this batch's worst case of $")
            && msg.contains(" does not fit in what is left ($0.001) of this API key's monthly budget of $0.001; ")
            && msg.ends_with(&format!("it resets at {next_month}T00:00:00Z")),
        "{msg}"
    );
    assert!(!msg.contains("spent"), "{msg}");
    let (_, listed) = f.get("/v1/messages/batches", &key).await;
    assert_eq!(
        serde_json::from_str::<Value>(&listed).unwrap()["data"],
        json!([])
    );
    // One small item fits.
    let (status, body) = f.submit(&key, json!([item("one", "x")])).await;
    assert_eq!(status, 200, "{body}");
    // Once requests have spent the budget, a batch is refused as spent, not as too large.
    let spent = async {
        for _ in 0..200 {
            let (status, _) = f.ask(&key).await;
            if status == 402 {
                return true;
            }
        }
        false
    };
    assert!(spent.await, "200 requests did not spend $0.001");
    let (status, body) = f.submit(&key, json!([item("late", "x")])).await;
    assert_eq!(status, 402, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("budget exceeded: this API key's monthly budget of $0.001 is spent; "),
        "{msg}"
    );
    f.stop().await;
}

/// A local batch's items draw on the requests per minute of the key that made it, from the same
/// bucket as the key's own requests: the items with no room wait (queued again, their attempt
/// given back) until it refills, and then all succeed, each called upstream once.
async fn local_items_wait_for_their_keys_requests_per_minute(redis: bool) {
    let Some(limiter) = crate::limits::limiter(redis) else {
        return;
    };
    let f = fixture_with("", limiter).await;
    let team = f.db.team("paced").await;
    let (key, row) =
        f.db.key_with_limits(
            &team,
            &rampart_store::LimitSettings {
                rpm: Some(60),
                ..rampart_store::LimitSettings::default()
            },
        )
        .await;
    f.dir.refresh(&f.db).await.unwrap();
    // 60 a minute: a full bucket of 60, one more each second. The key's own requests take 58.
    let before = time::OffsetDateTime::now_utc();
    for _ in 0..58 {
        let (status, body) = f.ask(&key).await;
        assert_eq!(status, 200, "{body}");
    }
    let requests: Vec<Value> = (0..5).map(|i| item(&format!("p{i}"), "x")).collect();
    let (status, created) = f.submit(&key, json!(requests)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let ended = f.wait_ended(&id, &key).await;
    assert_eq!(ended["request_counts"]["succeeded"], 5, "{ended}");
    assert_eq!(ended["request_counts"]["errored"], 0, "{ended}");
    assert_eq!(
        f.sim.messages_served().await,
        58 + 5,
        "each item called upstream once"
    );
    let mut items = item_usage(&f.db, before).await;
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|r| r.upstream_attempts == 1 && r.status == 200 && r.key_id == Some(row.id))
    );
    // Item k is the key's (58 + k)-th request (0-based): it cannot start before the bucket,
    // full at the first request, has refilled (58 + k) − 59 requests, one a second.
    items.sort_by_key(|r| r.at);
    for (k, r) in items.iter().enumerate().skip(2) {
        let waited = r.at - before;
        let floor = time::Duration::seconds(k as i64 - 1) - time::Duration::milliseconds(50);
        assert!(
            waited >= floor,
            "item {k} started {waited} after the first request, before {floor}"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_items_wait_for_their_keys_requests_per_minute_in_process() {
    local_items_wait_for_their_keys_requests_per_minute(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_items_wait_for_their_keys_requests_per_minute_on_redis() {
    local_items_wait_for_their_keys_requests_per_minute(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_items_record_the_model_asked_and_the_model_that_answered() {
    let f = fixture("").await;
    let key = f.key("alpha").await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let ask =
        |id: &str, model: &str| json!({"custom_id": id, "params": crate::harness::message(model)});
    // The simulator answers an undated alias with its dated id; most items ask the same model.
    let mut requests: Vec<Value> = (0..3)
        .map(|i| ask(&format!("haiku{i}"), "claude-haiku-4-5"))
        .collect();
    requests.push(ask("opus", "claude-opus-4-5"));
    requests.push(ask("sonnet", "claude-sonnet-4-6"));
    // Errored: no max_tokens, and a model the upstream does not know.
    requests.push(
        json!({"custom_id": "bad", "params": {"model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hi"}]}}),
    );
    requests.push(ask("nope", "claude-nope"));
    let resp =
        f.gw.http
            .post(format!("{}/v1/messages/batches", f.gw.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-rampart-batch-mode", "upstream")
            .json(&json!({ "requests": requests }))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let created: Value = resp.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let row = f.db.batches().get_batch(&id).await.unwrap();
    assert_eq!(row.mode, rampart_store::batches::BatchMode::Upstream);

    let ended = f.wait_ended(&id, &key).await;
    assert_eq!(ended["request_counts"]["succeeded"], 5, "{ended}");
    assert_eq!(ended["request_counts"]["errored"], 2, "{ended}");
    let mut got: Vec<(String, Option<String>, Option<String>, u16)> = item_usage(&f.db, before)
        .await
        .into_iter()
        .map(|r| {
            let custom_id = r.request_id.rsplit(':').next().unwrap().to_owned();
            (custom_id, r.model_requested, r.model_served, r.status)
        })
        .collect();
    got.sort();
    let want = |id: &str, asked: &str, served: Option<&str>, status: u16| {
        (
            id.to_owned(),
            Some(asked.to_owned()),
            served.map(str::to_owned),
            status,
        )
    };
    let haiku = Some("claude-haiku-4-5-20251001");
    assert_eq!(
        got,
        [
            want("bad", "claude-sonnet-4-6", None, 400),
            want("haiku0", "claude-haiku-4-5", haiku, 200),
            want("haiku1", "claude-haiku-4-5", haiku, 200),
            want("haiku2", "claude-haiku-4-5", haiku, 200),
            want("nope", "claude-nope", None, 404),
            want(
                "opus",
                "claude-opus-4-5",
                Some("claude-opus-4-5-20251101"),
                200
            ),
            want(
                "sonnet",
                "claude-sonnet-4-6",
                Some("claude-sonnet-4-6"),
                200
            ),
        ]
    );
    // Kept only while the batch was open.
    assert!(f.db.batches().item_models(&id).await.unwrap().is_empty());
    f.stop().await;
}
